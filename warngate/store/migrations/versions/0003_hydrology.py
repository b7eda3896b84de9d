"""hydrology: gauge readings and per-station alert state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'hydro_readings',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=True, nullable=False),
        sa.Column('station', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('level_m', sa.Float(), nullable=False),
        sa.Column('received_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_hydro_readings')),
        sa.UniqueConstraint('station', 'at', name='uq_hydro_readings_station_at'),
    )
    op.create_table(
        'hydro_state',
        sa.Column('station', sa.String(length=64), nullable=False),
        sa.Column('colour', sa.String(length=8), nullable=True),
        sa.Column('pending', sa.String(length=8), nullable=True),
        sa.Column('pending_count', sa.Integer(), server_default='0', nullable=False),
        sa.Column('last_at', sa.Float(), nullable=True),
        sa.Column('episode', sa.Integer(), server_default='0', nullable=False),
        sa.Column('seq', sa.Integer(), server_default='0', nullable=False),
        sa.Column('last_ref', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('station', name=op.f('pk_hydro_state')),
    )


def downgrade() -> None:
    op.drop_table('hydro_state')
    op.drop_table('hydro_readings')

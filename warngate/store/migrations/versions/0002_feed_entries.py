"""feed entries: what each polled CAP feed has already been fetched

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'feed_entries',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=True, nullable=False),
        sa.Column('feed', sa.String(length=100), nullable=False),
        sa.Column('entry_key', sa.String(length=500), nullable=False),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('outcome', sa.String(length=500), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_feed_entries')),
        sa.UniqueConstraint('feed', 'entry_key', name='uq_feed_entries_feed_entry_key'),
    )


def downgrade() -> None:
    op.drop_table('feed_entries')

"""Quarantine (messages the ingest refused) and gap tracking: the scan's per-kiosk
sequence number, and per kiosk what it reported, what the fleet counted, what is missing.

The new kiosk columns are NOT NULL with a server default, so existing rows get 0 and
the ALTER works on both databases without rewriting data by hand.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('quarantine',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=True),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('detail', sa.String(length=300), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_quarantine_kiosk_received', 'quarantine', ['kiosk_id', 'received'],
                    unique=False)
    op.create_index('ix_quarantine_received', 'quarantine', ['received'], unique=False)
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_scan_kiosk_seq', ['kiosk_id', 'seq'], unique=False)
    with op.batch_alter_table('kiosk', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq_reported', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('seq_checked', sa.BigInteger(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('seq_missing', sa.BigInteger(), server_default='0',
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('kiosk', schema=None) as batch_op:
        batch_op.drop_column('seq_missing')
        batch_op.drop_column('seq_checked')
        batch_op.drop_column('seq_reported')
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_index('ix_scan_kiosk_seq')
        batch_op.drop_column('seq')
    op.drop_index('ix_quarantine_received', table_name='quarantine')
    op.drop_index('ix_quarantine_kiosk_received', table_name='quarantine')
    op.drop_table('quarantine')

"""The CRL each district broker applies (docs/scaling.md#retiring-a-kiosk-in-tiers), and
alert episodes of a district bridge that is down (alert kind bridge_down), and the
district broker a kiosk connects to first (`enrol --bridge`).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0013"
down_revision: Union[str, Sequence[str], None] = "0012"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('bridge') as batch:
        batch.add_column(sa.Column('crl_number', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('crl_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('crl_error', sa.String(length=200), nullable=True))
    with op.batch_alter_table('alert_episode') as batch:
        batch.add_column(sa.Column('bridge', sa.String(length=32), nullable=True))
    with op.batch_alter_table('kiosk') as batch:
        batch.add_column(sa.Column('bridge', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('kiosk') as batch:
        batch.drop_column('bridge')
    with op.batch_alter_table('alert_episode') as batch:
        batch.drop_column('bridge')
    with op.batch_alter_table('bridge') as batch:
        batch.drop_column('crl_error')
        batch.drop_column('crl_at')
        batch.drop_column('crl_number')

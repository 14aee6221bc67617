"""Scans counted per hour for the dashboard's day figures (fleet/scan_hours.py,
docs/scaling.md#the-hourly-rollup). Empty at first: the first `greengate-fleet scans
rollup` counts the hours the scan table holds; until then the dashboard reads the scans.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0014"
down_revision: Union[str, Sequence[str], None] = "0013"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'scan_hour',
        sa.Column('id', BIG, autoincrement=True, nullable=False),
        sa.Column('hour', sa.Integer(), nullable=False),
        sa.Column('district_id', sa.Integer(), nullable=True),
        sa.Column('location_id', sa.Integer(), nullable=True),
        sa.Column('decision', sa.String(length=8), nullable=False),
        sa.Column('reason', sa.String(length=40), nullable=False),
        sa.Column('sub_reason', sa.String(length=40), nullable=True),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_scan_hour_hour', 'scan_hour', ['hour'])
    op.create_table(
        'scan_hour_dirty',
        sa.Column('id', BIG, autoincrement=True, nullable=False),
        sa.Column('hour', sa.Integer(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_scan_hour_dirty_hour', 'scan_hour_dirty', ['hour'])
    op.create_table(
        'scan_rollup',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('through', sa.Integer(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'))


def downgrade() -> None:
    op.drop_table('scan_rollup')
    op.drop_index('ix_scan_hour_dirty_hour', table_name='scan_hour_dirty')
    op.drop_table('scan_hour_dirty')
    op.drop_index('ix_scan_hour_hour', table_name='scan_hour')
    op.drop_table('scan_hour')

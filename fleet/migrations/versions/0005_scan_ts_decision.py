"""The scan time index also holds the decision, so the hourly volumes are read from the
index alone (bench/dashboard.py: scans-per-hour p95 321 -> 243 ms at 10M scans). It
replaces ix_scan_ts, whose every use it serves: ingest keeps one index, not two.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from typing import Sequence, Union

from alembic import op


revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_scan_ts_decision', 'scan', ['ts', 'decision'], unique=False)
    op.drop_index('ix_scan_ts', table_name='scan')


def downgrade() -> None:
    op.create_index('ix_scan_ts', 'scan', ['ts'], unique=False)
    op.drop_index('ix_scan_ts_decision', table_name='scan')

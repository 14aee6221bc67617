"""A location may admit its organisation's roster only ("workers only", docs/rosters.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0010"
down_revision: Union[str, Sequence[str], None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # add_column, not a batch copy: SQLite adds a column with a constant default in place,
    # so the kiosks referencing location are untouched (0009's trouble with copies)
    op.add_column('location', sa.Column('workers_only', sa.Boolean(), nullable=False,
                                        server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('location', schema=None) as batch_op:
        batch_op.drop_column('workers_only')

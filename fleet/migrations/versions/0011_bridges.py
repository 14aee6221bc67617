"""District brokers' bridges to the core and their state (docs/scaling.md).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0011"
down_revision: Union[str, Sequence[str], None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('bridge',
                    sa.Column('name', sa.String(length=32), nullable=False),
                    sa.Column('address', sa.String(length=260), nullable=True),
                    sa.Column('connected', sa.Boolean(), nullable=True),
                    sa.Column('since', sa.Float(), nullable=True),
                    sa.Column('registered_at', sa.Float(), nullable=True),
                    sa.PrimaryKeyConstraint('name'))


def downgrade() -> None:
    op.drop_table('bridge')

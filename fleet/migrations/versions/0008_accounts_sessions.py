"""Accounts and sessions: a per-user session generation, so logout, disabling a user
and a password change end every login cookie of that user on the server
(docs/dashboard.md#ending-sessions); an index for the per-(account, address) login throttle.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), nullable=False,
                                      server_default='0'))
    op.create_index('ix_login_failure_username_address_at', 'login_failure',
                    ['username', 'address', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_login_failure_username_address_at', table_name='login_failure')
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.drop_column('session_generation')

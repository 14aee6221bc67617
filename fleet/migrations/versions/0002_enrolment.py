"""Enrolment: kiosk certificates, one-time enrolment tokens, failed-attempt log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('kiosk_certificate',
    sa.Column('serial', sa.String(length=40), nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('issued_at', sa.Float(), nullable=False),
    sa.Column('not_after', sa.Float(), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('serial')
    )
    op.create_index('ix_kiosk_certificate_kiosk', 'kiosk_certificate', ['kiosk_id'], unique=False)
    op.create_table('enrolment_token',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=True),
    sa.Column('used_from', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('enrolment_attempt',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_enrolment_attempt_address_at', 'enrolment_attempt', ['address', 'at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_enrolment_attempt_address_at', table_name='enrolment_attempt')
    op.drop_table('enrolment_attempt')
    op.drop_table('enrolment_token')
    op.drop_index('ix_kiosk_certificate_kiosk', table_name='kiosk_certificate')
    op.drop_table('kiosk_certificate')

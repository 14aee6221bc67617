"""Alerts: rules, episodes (what alerted), deliveries (each message to each target).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('alert_rule',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('district_id', sa.Integer(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('webhook_url', sa.String(length=500), nullable=False),
    sa.Column('emails', sa.String(length=1000), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_by', sa.String(length=100), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['district_id'], ['district.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('alert_episode',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=True),
    sa.Column('district_id', sa.Integer(), nullable=True),
    sa.Column('outage_id', sa.Integer(), nullable=True),
    sa.Column('started', sa.Float(), nullable=False),
    sa.Column('alerted_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('resolution', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['rule_id'], ['alert_rule.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rule_id', 'outage_id', name='uq_alert_episode_outage')
    )
    op.create_index('ix_alert_episode_open', 'alert_episode', ['rule_id', 'ended_at'],
                    unique=False)
    op.create_table('alert_delivery',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('episode_id', sa.Integer(), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('target', sa.String(length=500), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.Float(), nullable=True),
    sa.Column('sent_at', sa.Float(), nullable=True),
    sa.Column('last_error', sa.String(length=400), nullable=False),
    sa.ForeignKeyConstraint(['episode_id'], ['alert_episode.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('episode_id', 'event', 'channel', 'target',
                        name='uq_alert_delivery_message')
    )
    op.create_index('ix_alert_delivery_status_next', 'alert_delivery', ['status', 'next_at'],
                    unique=False)
    op.create_index('ix_alert_delivery_created', 'alert_delivery', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_alert_delivery_created', table_name='alert_delivery')
    op.drop_index('ix_alert_delivery_status_next', table_name='alert_delivery')
    op.drop_table('alert_delivery')
    op.drop_index('ix_alert_episode_open', table_name='alert_episode')
    op.drop_table('alert_episode')
    op.drop_table('alert_rule')

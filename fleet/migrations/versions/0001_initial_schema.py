"""Initial schema: districts, locations, kiosks, scans, presence, status lists, trust,
policies, list versions, bundles, users, API tokens, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_at', ['at'], unique=False)

    op.create_table('bundle',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('base', sa.Integer(), nullable=True),
    sa.Column('issued_at', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('etag', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.create_index('ix_bundle_dep_kind_version', ['deployment', 'kind', 'version'], unique=False)

    op.create_table('district',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_table('outage',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('started', sa.Float(), nullable=False),
    sa.Column('ended', sa.Float(), nullable=True),
    sa.Column('cause', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outage', schema=None) as batch_op:
        batch_op.create_index('ix_outage_kiosk_started', ['kiosk_id', 'started'], unique=False)

    op.create_table('policy',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('updated_by', sa.String(length=100), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('deployment', 'name', name='uq_policy_deployment_name')
    )
    op.create_table('presence_event',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('previous', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('session', sa.Integer(), nullable=False),
    sa.Column('detail', sa.String(length=400), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('presence_event', schema=None) as batch_op:
        batch_op.create_index('ix_presence_kiosk_at', ['kiosk_id', 'at'], unique=False)

    op.create_table('scan',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('scan_id', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('sub_reason', sa.String(length=40), nullable=True),
    sa.Column('cert_type', sa.String(length=1), nullable=True),
    sa.Column('cert_hash', sa.String(length=64), nullable=True),
    sa.Column('holder', sa.String(length=64), nullable=True),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.Column('district_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kiosk_id', 'scan_id', name='uq_scan_kiosk_scan')
    )
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.create_index('ix_scan_cert_hash', ['cert_hash'], unique=False)
        batch_op.create_index('ix_scan_district_ts', ['district_id', 'ts'], unique=False)
        batch_op.create_index('ix_scan_holder', ['holder'], unique=False)
        batch_op.create_index('ix_scan_kiosk_ts', ['kiosk_id', 'ts'], unique=False)
        batch_op.create_index('ix_scan_location_ts', ['location_id', 'ts'], unique=False)
        batch_op.create_index('ix_scan_ts', ['ts'], unique=False)

    op.create_table('scan_summary',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('summary_id', sa.String(length=64), nullable=False),
    sa.Column('hour', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first', sa.Float(), nullable=False),
    sa.Column('last', sa.Float(), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.Column('district_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kiosk_id', 'summary_id', name='uq_summary_kiosk_id')
    )
    with op.batch_alter_table('scan_summary', schema=None) as batch_op:
        batch_op.create_index('ix_summary_hour', ['hour'], unique=False)

    op.create_table('status_change',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('key', sa.LargeBinary(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('until', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('status_change', schema=None) as batch_op:
        batch_op.create_index('ix_status_change_dep_version', ['deployment', 'version'], unique=False)

    op.create_table('status_entry',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('key', sa.LargeBinary(length=16), nullable=False),
    sa.Column('ci', sa.String(length=200), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('until', sa.Float(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('deployment', 'key', name='uq_status_deployment_key')
    )
    op.create_table('trust_entry',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('kid', sa.String(length=16), nullable=False),
    sa.Column('certificate', sa.LargeBinary(), nullable=False),
    sa.Column('subject', sa.String(length=400), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('not_after', sa.Float(), nullable=True),
    sa.Column('added_by', sa.String(length=100), nullable=False),
    sa.Column('added_at', sa.Float(), nullable=False),
    sa.Column('removed_at', sa.Float(), nullable=True),
    sa.Column('removed_by', sa.String(length=100), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('list_version',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('changes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('deployment', 'kind', 'version', name='uq_list_version_dep_kind_version')
    )
    op.create_table('location',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('address', sa.String(length=400), nullable=False),
    sa.Column('district_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['district_id'], ['district.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_table('user_account',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.String(length=300), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('district_id', sa.Integer(), nullable=True),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['district_id'], ['district.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('api_token',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_used', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('kiosk',
    sa.Column('id', sa.String(length=63), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_since', sa.Float(), nullable=True),
    sa.Column('detail', sa.String(length=400), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('session', sa.Integer(), nullable=False),
    sa.Column('heartbeat', sa.JSON(), nullable=True),
    sa.Column('enrolled_at', sa.Float(), nullable=True),
    sa.Column('retired_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['location_id'], ['location.id'], ),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('kiosk')
    op.drop_table('api_token')
    op.drop_table('user_account')
    op.drop_table('location')
    op.drop_table('list_version')
    op.drop_table('trust_entry')
    op.drop_table('status_entry')
    with op.batch_alter_table('status_change', schema=None) as batch_op:
        batch_op.drop_index('ix_status_change_dep_version')

    op.drop_table('status_change')
    with op.batch_alter_table('scan_summary', schema=None) as batch_op:
        batch_op.drop_index('ix_summary_hour')

    op.drop_table('scan_summary')
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_index('ix_scan_ts')
        batch_op.drop_index('ix_scan_location_ts')
        batch_op.drop_index('ix_scan_kiosk_ts')
        batch_op.drop_index('ix_scan_holder')
        batch_op.drop_index('ix_scan_district_ts')
        batch_op.drop_index('ix_scan_cert_hash')

    op.drop_table('scan')
    with op.batch_alter_table('presence_event', schema=None) as batch_op:
        batch_op.drop_index('ix_presence_kiosk_at')

    op.drop_table('presence_event')
    op.drop_table('policy')
    with op.batch_alter_table('outage', schema=None) as batch_op:
        batch_op.drop_index('ix_outage_kiosk_started')

    op.drop_table('outage')
    op.drop_table('district')
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.drop_index('ix_bundle_dep_kind_version')

    op.drop_table('bundle')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_at')

    op.drop_table('audit_log')

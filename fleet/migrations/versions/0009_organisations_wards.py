"""Organisations, wards, worker rosters, reminders and weekly reports
(docs/organisations.md): district -> ward -> location; a location may be an
organisation's control point; ward officers and managers are scoped by user.ward_id and
user.organisation_id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0009"
down_revision: Union[str, Sequence[str], None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('weekly_report',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('scope_id', sa.Integer(), nullable=False),
    sa.Column('week', sa.String(length=10), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('made_at', sa.Float(), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=False),
    sa.Column('pdf', sa.LargeBinary(), nullable=False),
    sa.Column('csv', sa.Text(), nullable=False),
    sa.Column('emailed_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scope', 'scope_id', 'week', 'language', name='uq_weekly_report')
    )
    op.create_table('ward',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('district_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['district_id'], ['district.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    with op.batch_alter_table('ward', schema=None) as batch_op:
        batch_op.create_index('ix_ward_district', ['district_id'], unique=False)

    op.create_table('organisation',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=300), nullable=False),
    sa.Column('tax_code', sa.String(length=20), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('sector', sa.String(length=100), nullable=False),
    sa.Column('district_id', sa.Integer(), nullable=False),
    sa.Column('ward_id', sa.Integer(), nullable=True),
    sa.Column('contact_name', sa.String(length=200), nullable=False),
    sa.Column('contact_phone', sa.String(length=40), nullable=False),
    sa.Column('contact_email', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_since', sa.Float(), nullable=False),
    sa.Column('approved_at', sa.Float(), nullable=True),
    sa.Column('quota', sa.Integer(), nullable=True),
    sa.Column('suspended_reason', sa.String(length=400), nullable=False),
    sa.Column('lift_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['district_id'], ['district.id'], ),
    sa.ForeignKeyConstraint(['ward_id'], ['ward.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code'),
    sa.UniqueConstraint('tax_code')
    )
    with op.batch_alter_table('organisation', schema=None) as batch_op:
        batch_op.create_index('ix_organisation_district_status', ['district_id', 'status'], unique=False)
        batch_op.create_index('ix_organisation_ward_status', ['ward_id', 'status'], unique=False)

    op.create_table('organisation_status_change',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('old_status', sa.String(length=16), nullable=True),
    sa.Column('new_status', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.String(length=400), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisation.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('organisation_status_change', schema=None) as batch_op:
        batch_op.create_index('ix_org_status_change_org_at', ['organisation_id', 'at'], unique=False)

    op.create_table('reminder',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('note', sa.String(length=400), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisation.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reminder', schema=None) as batch_op:
        batch_op.create_index('ix_reminder_org_at', ['organisation_id', 'at'], unique=False)

    op.create_table('worker',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('job', sa.String(length=200), nullable=False),
    sa.Column('holder_key', sa.String(length=64), nullable=True),
    sa.Column('cert_key', sa.String(length=64), nullable=True),
    sa.Column('linked_at', sa.Float(), nullable=True),
    sa.Column('linked_via', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('removed_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisation.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.create_index('ix_worker_holder', ['organisation_id', 'holder_key'], unique=False)
        batch_op.create_index('ix_worker_org', ['organisation_id', 'removed_at'], unique=False)

    op.create_table('roster_enrolment',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('organisation_id', sa.Integer(), nullable=False),
    sa.Column('kiosk_id', sa.String(length=63), nullable=False),
    sa.Column('worker_id', sa.Integer(), nullable=True),
    sa.Column('opened_by', sa.String(length=100), nullable=False),
    sa.Column('opened_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('closed_at', sa.Float(), nullable=True),
    sa.Column('result', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisation.id'], ),
    sa.ForeignKeyConstraint(['worker_id'], ['worker.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('roster_enrolment', schema=None) as batch_op:
        batch_op.create_index('ix_roster_enrolment_kiosk_open', ['kiosk_id', 'closed_at'], unique=False)

    with op.batch_alter_table('location', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ward_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('organisation_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_location_organisation', 'organisation', ['organisation_id'], ['id'])
        batch_op.create_foreign_key('fk_location_ward', 'ward', ['ward_id'], ['id'])

    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ward_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('organisation_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_user_account_ward', 'ward', ['ward_id'], ['id'])
        batch_op.create_foreign_key('fk_user_account_organisation', 'organisation', ['organisation_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.drop_constraint('fk_user_account_organisation', type_='foreignkey')
        batch_op.drop_constraint('fk_user_account_ward', type_='foreignkey')
        batch_op.drop_column('organisation_id')
        batch_op.drop_column('ward_id')

    with op.batch_alter_table('location', schema=None) as batch_op:
        batch_op.drop_constraint('fk_location_organisation', type_='foreignkey')
        batch_op.drop_constraint('fk_location_ward', type_='foreignkey')
        batch_op.drop_column('organisation_id')
        batch_op.drop_column('ward_id')

    with op.batch_alter_table('roster_enrolment', schema=None) as batch_op:
        batch_op.drop_index('ix_roster_enrolment_kiosk_open')

    op.drop_table('roster_enrolment')
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.drop_index('ix_worker_org')
        batch_op.drop_index('ix_worker_holder')

    op.drop_table('worker')
    with op.batch_alter_table('reminder', schema=None) as batch_op:
        batch_op.drop_index('ix_reminder_org_at')

    op.drop_table('reminder')
    with op.batch_alter_table('organisation_status_change', schema=None) as batch_op:
        batch_op.drop_index('ix_org_status_change_org_at')

    op.drop_table('organisation_status_change')
    with op.batch_alter_table('organisation', schema=None) as batch_op:
        batch_op.drop_index('ix_organisation_ward_status')
        batch_op.drop_index('ix_organisation_district_status')

    op.drop_table('organisation')
    with op.batch_alter_table('ward', schema=None) as batch_op:
        batch_op.drop_index('ix_ward_district')

    op.drop_table('ward')
    op.drop_table('weekly_report')

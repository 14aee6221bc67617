"""The scan table by day on PostgreSQL; its idempotency key holds ts (docs/scaling.md).

PostgreSQL: `scan` becomes a table partitioned by RANGE (ts), one partition per UTC day
(fleet/partitions.py) and a default one; its rows move over, and the id sequence goes
on (bigint). The primary key is (id, ts), the unique key (kiosk_id, scan_id, ts): a
partitioned table's keys must hold the partition key. SQLite keeps one table, with the
same unique key.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""
import time
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0012"
down_revision: Union[str, Sequence[str], None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEXES = {"ix_scan_ts_decision": ["ts", "decision"],
           "ix_scan_location_ts": ["location_id", "ts"],
           "ix_scan_district_ts": ["district_id", "ts"],
           "ix_scan_kiosk_ts": ["kiosk_id", "ts"],
           "ix_scan_cert_hash": ["cert_hash"],
           "ix_scan_holder": ["holder"],
           "ix_scan_kiosk_seq": ["kiosk_id", "seq"]}
COLUMNS = ("id, kiosk_id, scan_id, ts, received, decision, reason, sub_reason, cert_type, "
           "cert_hash, holder, policy, location_id, district_id, seq")
DAY = 86400
KEEP_DAYS = 400  # days of existing rows that get a partition; older ones: the default


def _columns(id_type):
    return [sa.Column('id', id_type, nullable=False),
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
            sa.Column('seq', sa.BigInteger(), nullable=True)]


def _free_names(suffix: str) -> None:
    """Rename the old table's constraints and indexes: the new table takes their names."""
    for name in INDEXES:
        op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name}{suffix}")
    op.execute(f"ALTER TABLE scan_old RENAME CONSTRAINT scan_pkey TO scan_pkey{suffix}")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table('scan', schema=None) as batch_op:
            batch_op.drop_constraint('uq_scan_kiosk_scan', type_='unique')
            batch_op.create_unique_constraint('uq_scan_kiosk_scan_ts',
                                              ['kiosk_id', 'scan_id', 'ts'])
        return
    from fleet import partitions
    op.execute("ALTER TABLE scan RENAME TO scan_old")
    op.execute("ALTER TABLE scan_old RENAME CONSTRAINT uq_scan_kiosk_scan "
               "TO uq_scan_kiosk_scan_old")
    _free_names("_old")
    op.execute("ALTER SEQUENCE scan_id_seq OWNED BY NONE")
    op.execute("ALTER SEQUENCE scan_id_seq AS bigint")
    op.create_table('scan', *_columns(sa.BigInteger()),
                    sa.PrimaryKeyConstraint('id', 'ts', name='scan_pkey'),
                    sa.UniqueConstraint('kiosk_id', 'scan_id', 'ts',
                                        name='uq_scan_kiosk_scan_ts'),
                    postgresql_partition_by='RANGE (ts)')
    op.execute("ALTER TABLE scan ALTER COLUMN id SET DEFAULT nextval('scan_id_seq')")
    op.execute("ALTER SEQUENCE scan_id_seq OWNED BY scan.id")
    for name, columns in INDEXES.items():
        op.create_index(name, 'scan', columns, unique=False)
    op.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF scan DEFAULT")
    now = time.time()
    low, high = now - KEEP_DAYS * DAY, now + 8 * DAY
    starts = bind.execute(sa.text(
        "SELECT DISTINCT floor(ts / 86400)::bigint * 86400 FROM scan_old "
        "WHERE ts >= :low AND ts < :high"), {"low": low, "high": high}).scalars().all()
    for start in sorted(starts):
        partitions.create_day(bind, int(start))
    partitions.ensure(bind, now)
    op.execute(f"INSERT INTO scan ({COLUMNS}) SELECT {COLUMNS} FROM scan_old")
    op.execute("DROP TABLE scan_old")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table('scan', schema=None) as batch_op:
            batch_op.drop_constraint('uq_scan_kiosk_scan_ts', type_='unique')
            batch_op.create_unique_constraint('uq_scan_kiosk_scan', ['kiosk_id', 'scan_id'])
        return
    op.execute("ALTER TABLE scan RENAME TO scan_old")
    op.execute("ALTER TABLE scan_old RENAME CONSTRAINT uq_scan_kiosk_scan_ts "
               "TO uq_scan_kiosk_scan_ts_old")
    _free_names("_old")
    op.execute("ALTER SEQUENCE scan_id_seq OWNED BY NONE")
    op.create_table('scan', *_columns(sa.BigInteger()),
                    sa.PrimaryKeyConstraint('id', name='scan_pkey'),
                    sa.UniqueConstraint('kiosk_id', 'scan_id', name='uq_scan_kiosk_scan'))
    op.execute("ALTER TABLE scan ALTER COLUMN id SET DEFAULT nextval('scan_id_seq')")
    op.execute("ALTER SEQUENCE scan_id_seq OWNED BY scan.id")
    for name, columns in INDEXES.items():
        op.create_index(name, 'scan', columns, unique=False)
    # a scan stored twice under one id with two times cannot go back: the first is kept
    op.execute(f"INSERT INTO scan ({COLUMNS}) SELECT {COLUMNS} FROM scan_old "
               "ON CONFLICT DO NOTHING")
    op.execute("DROP TABLE scan_old CASCADE")

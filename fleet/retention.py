"""Retention: scans (and the counted-only summaries beside them) older than
`[fleet] retention_days` are deleted (DESIGN: 21 days by default). They hold a
holder's pseudonym and where and when they were seen; past the tracing window
nobody may keep that.

`greengate-fleet scans purge`, run hourly by systemd/greengate-fleet-maintain.timer.
On PostgreSQL the scan table is partitioned by day (fleet/partitions.py): every day
wholly older than the cutoff is DROPPED, one statement whatever its size, and the
purge also makes the days ahead (PARTITIONS_AHEAD). What is left to go (the older
hours of the boundary day, old rows in the default partition, SQLite's one table)
goes in chunks, each its own short transaction, so the ingest worker sharing a
SQLite file waits at most one chunk, never the whole purge. Age is the kiosk's
decision time (`ts`), the moment the person stood there.

Quarantined messages (fleet/quarantine.py) go by the same rule, aged by when the fleet
received them: their first bytes may hold a pseudonym too, and a hostile kiosk must not
be able to grow the table without end.
"""

from __future__ import annotations

import logging
import sys
import time

from sqlalchemy import delete, select

from . import audit, partitions, scan_hours
from .models import QuarantinedMessage, Scan, ScanSummary

log = logging.getLogger(__name__)

DAY = 86400.0
CHUNK = 5000
PARTITIONS_AHEAD = 7  # days of scan partitions made ahead of today (PostgreSQL)


def cutoff(config, now: float | None = None, days: float | None = None) -> float:
    days = config.fleet.retention_days if days is None else days
    return (time.time() if now is None else now) - days * DAY


def _purge_table(sessions, table, id_column, where, chunk: int) -> int:
    total = 0
    while True:
        with sessions() as session:
            ids = session.scalars(select(id_column).where(where)
                                  .order_by(id_column).limit(chunk)).all()
            if not ids:
                return total
            # `where` again: on a partitioned table it keeps the delete to the old days
            session.execute(delete(table).where(id_column.in_(ids), where))
            session.commit()
        total += len(ids)


def purge(sessions, before: float, *, actor: str = "system", chunk: int = CHUNK) -> dict:
    """Delete scans decided before `before` (epoch seconds) and summaries of hours that
    ended before it, and quarantined messages received before it; audited with the counts.
    Returns {"scans": n, "summaries": m, "quarantined": q, "partitions": p} (n: with the
    rows of the p day partitions dropped)."""
    with sessions() as session:
        connection = session.connection()
        partitions.ensure(connection, time.time(), PARTITIONS_AHEAD)
        dropped = partitions.drop_before(connection, before)
        session.commit()
    scans = sum(rows for _, rows in dropped)
    scans += _purge_table(sessions, Scan, Scan.id, Scan.ts < before, chunk)
    # a summary's hour (epoch seconds of its start) goes once all of it is older
    summaries = _purge_table(sessions, ScanSummary, ScanSummary.id,
                             ScanSummary.hour + 3600 <= before, chunk)
    with sessions() as session:  # the hourly counts go with their scans
        scan_hours.forget_before(session.connection(), before)
        session.commit()
    quarantined = _purge_table(sessions, QuarantinedMessage, QuarantinedMessage.id,
                               QuarantinedMessage.received < before, chunk)
    counts = {"scans": scans, "summaries": summaries, "quarantined": quarantined,
              "partitions": len(dropped)}
    if scans or summaries or quarantined or dropped:
        with sessions() as session:
            audit.record(session, actor, "scans.purge", "", before=before,
                         dropped=[name for name, _ in dropped], **counts)
            session.commit()
        log.info("purged %d scan(s), %d summary row(s) and %d quarantined message(s) from "
                 "before %s", scans, summaries, quarantined,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before)))
    return counts


def run(config, args) -> int:
    """greengate-fleet scans purge [--days N]."""
    from .db import make_engine, make_sessions

    if args.days is not None and args.days < 1:
        print("greengate-fleet: --days must be at least 1", file=sys.stderr)
        return 2
    engine = make_engine(config.database_url)
    try:
        before = cutoff(config, days=args.days)
        counts = purge(make_sessions(engine), before, actor="cli")
    finally:
        engine.dispose()
    days = config.fleet.retention_days if args.days is None else args.days
    dropped = f" ({counts['partitions']} day partition(s) dropped)" if counts["partitions"] \
        else ""
    print(f"purged {counts['scans']} scan(s){dropped}, {counts['summaries']} summary row(s) "
          f"and {counts['quarantined']} quarantined message(s) older than {days:g} days")
    return 0

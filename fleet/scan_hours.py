"""Scans counted per closed hour (docs/scaling.md#the-hourly-rollup): what the
dashboard's day figures read instead of every scan of the day.

A day's volumes read from `scan` cost a pass over the day: 0.6 s at 3.9 million scans
a day, some 6 s at a city's 27 million (`python -m bench partitions`). The rollup
(`greengate-fleet scans rollup`, hourly from systemd/greengate-fleet-maintain.service)
counts each closed hour once into `scan_hour`, per district, location, decision, reason
and sub-reason; counted() reads those rows for the hours rolled up and the scans for
the rest. The figures stay exact, whatever arrives late:

- every hour before `scan_rollup.through` is counted; later hours are read from `scan`;
- a scan stored for an hour that closed more than half an hour before by the ingest's
  clock (a kiosk's outbox replayed after days offline) makes the ingest, in the same
  transaction, add a `scan_hour_dirty` row for its hour. A dirty hour is read from `scan` until the rollup
  counts it again and deletes the dirty rows it read before counting (a row added
  meanwhile stays, and its hour is counted again next time);
- the rollup counts an hour only once it closed more than an hour ago, so the clocks of
  the ingest and rollup hosts may differ by up to half an hour, and a batch's
  transaction may take as long, without a scan being missed;
- retention deletes the counts of the hours it deleted wholly and marks the hour it cut.

Rollers serialise on the scan_rollup row (PostgreSQL: FOR UPDATE; SQLite: its one
writer), one transaction per hour, so a backlog never holds the ingest for long.
"""

from __future__ import annotations

import logging
import math
import time

from sqlalchemy import (Integer, and_, cast, delete, func, insert, literal, literal_column, or_,
                        select, update)

from .models import Scan, ScanHour, ScanHourDirty, ScanRollup
from .sqlinsert import insert_ignore

log = logging.getLogger(__name__)

HOUR = 3600
# the columns the rollup keeps: what counted() can group or filter by
KEPT = ("district_id", "location_id", "decision", "reason", "sub_reason")
SETTLE = HOUR  # an hour is counted once it closed this long ago
MAX_RAW_RANGES = 200  # dirty hours read from the scans in one statement, merged into ranges


def hour_of(ts: float) -> int:
    return int(ts // HOUR) * HOUR


def bucket(session, column):
    """SQL for the start of the UTC hour of epoch seconds `column` (a portable floor:
    PostgreSQL's cast rounds, SQLite's truncates, and epoch times are positive)."""
    hour = literal_column(str(HOUR))
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(column / hour), Integer) * hour
    return cast(column / hour, Integer) * hour


# --- the ingest's side -----------------------------------------------------------------
def late_hours(times, received: float) -> list[int]:
    """The hours of `times` (scan ts) the rollup may have counted by `received`, the
    ingest's clock, less half SETTLE for the clocks and the transaction."""
    return sorted({h for h in map(hour_of, times) if h + HOUR + SETTLE / 2 <= received})


def mark(connection, hours, at: float) -> None:
    """Dirty rows for `hours`, in the caller's transaction (the batch's)."""
    if hours:
        connection.execute(insert(ScanHourDirty.__table__),
                           [{"hour": h, "at": at} for h in hours])


# --- the rollup -----------------------------------------------------------------------
def _begin(connection):
    """Take the rollup's lock; the scan_rollup row's (through, at), None before the first
    run."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        lock = select(ScanRollup.through, ScanRollup.at)
    else:
        lock = select(ScanRollup.through, ScanRollup.at).with_for_update()
    return connection.execute(lock.where(ScanRollup.id == 1)).first()


def _count(connection, hour: int) -> None:
    connection.execute(delete(ScanHour).where(ScanHour.hour == hour))
    columns = [getattr(Scan, c) for c in KEPT]
    connection.execute(insert(ScanHour).from_select(
        ["hour", *KEPT, "count"],
        select(literal(hour), *columns, func.count())
        .where(Scan.ts >= hour, Scan.ts < hour + HOUR).group_by(*columns)))


def roll(engine, now: float | None = None) -> dict:
    """Count every hour that closed more than SETTLE ago and is not counted yet, then
    count again the dirty hours. {"hours": n counted first, "recounted": m, "through"}."""
    now = time.time() if now is None else now
    limit = hour_of(now - SETTLE)  # the hours h with h + HOUR <= now - SETTLE
    counted = recounted = 0
    with engine.begin() as connection:
        row = _begin(connection)
        if row is None:
            oldest = connection.execute(select(func.min(Scan.ts))).scalar()
            start = min(limit, hour_of(oldest)) if oldest is not None else limit
            # two first runs at once: the second finds the row made, and waits its turn
            connection.execute(insert_ignore(connection, ScanRollup.__table__, ["id"])
                               .values(id=1, through=start, at=now))
    while True:
        with engine.begin() as connection:
            through = _begin(connection).through
            if through >= limit:
                break
            # hours without a scan are skipped in one step (a fleet idle for days)
            following = connection.execute(select(func.min(Scan.ts)).where(
                Scan.ts >= through, Scan.ts < limit)).scalar()
            hour = limit if following is None else max(through, hour_of(following))
            connection.execute(delete(ScanHour).where(ScanHour.hour >= through,
                                                      ScanHour.hour < hour))
            if hour < limit:
                _count(connection, hour)
                counted += 1
                hour += HOUR
            connection.execute(update(ScanRollup).where(ScanRollup.id == 1)
                               .values(through=hour, at=now))
    with engine.connect() as connection:
        # the marks there are now: a kiosk whose clock runs hours behind marks an hour
        # with every batch, and must not keep this run going for ever
        top = connection.execute(select(func.max(ScanHourDirty.id))).scalar()
    while top is not None:
        with engine.begin() as connection:
            through = _begin(connection).through
            ours = (ScanHourDirty.id <= top, ScanHourDirty.hour < through)
            hour = connection.execute(select(func.min(ScanHourDirty.hour)).where(
                *ours)).scalar()
            if hour is None:
                break
            # the marks first, then the count, each statement on a fresh snapshot: every
            # mark the DELETE sees was committed with its scans, which the count then
            # sees; a mark committed after the DELETE stays for the next run
            connection.execute(delete(ScanHourDirty).where(ScanHourDirty.hour == hour,
                                                           *ours))
            _count(connection, hour)
        recounted += 1
    if counted or recounted:
        log.info("rollup: %d hour(s) counted, %d counted again", counted, recounted)
    return {"hours": counted, "recounted": recounted, "through": limit}


def run(config, args) -> int:
    """greengate-fleet scans rollup."""
    from .db import make_engine

    engine = make_engine(config.database_url)
    try:
        done = roll(engine)
    finally:
        engine.dispose()
    print(f"counted {done['hours']} hour(s) and {done['recounted']} again; every hour before "
          f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime(done['through']))} is counted")
    return 0


def forget_before(connection, before: float) -> int:
    """Retention: delete the counts of the hours wholly before `before`, and mark the
    hour it cuts (its older scans are gone, its count with them). Rows deleted."""
    gone = connection.execute(delete(ScanHour).where(ScanHour.hour + HOUR <= before)).rowcount
    connection.execute(delete(ScanHourDirty).where(ScanHourDirty.hour + HOUR <= before))
    cut = hour_of(before)
    if cut < before:
        mark(connection, [cut], before)
    return gone


# --- the readers' side ----------------------------------------------------------------
def _ranges(hours: list[int]) -> list[tuple[int, int]]:
    """Sorted hours merged into [start, end) ranges."""
    out: list[list[int]] = []
    for h in hours:
        if out and out[-1][1] == h:
            out[-1][1] = h + HOUR
        else:
            out.append([h, h + HOUR])
    return [(a, b) for a, b in out]


def plan(session, first: float, end: float) -> tuple[tuple[int, int] | None, list]:
    """Where the scans decided in [first, end) are counted: ((a, b) of the rollup's hours
    or None, [(start, end) ranges read from `scan`]), the dirty hours inside (a, b)
    left out of the rollup and read from the scans."""
    row = session.execute(select(ScanRollup.through).where(ScanRollup.id == 1)).first()
    a, b = math.ceil(first / HOUR) * HOUR, hour_of(end)
    b = min(b, row.through) if row is not None else a
    if a >= b:
        return None, [(first, end)]
    dirty = list(session.scalars(select(ScanHourDirty.hour).distinct().where(
        ScanHourDirty.hour >= a, ScanHourDirty.hour < b).order_by(ScanHourDirty.hour)))
    raw = [(first, a)] if first < a else []
    raw += _ranges(dirty)
    if b < end:
        raw.append((b, end))
    if len(raw) > MAX_RAW_RANGES:
        return None, [(first, end)]  # so many late hours: one pass over the scans
    return (a, b), [(x, y) for x, y in raw if x < y]


def counted(session, columns, first: float, end: float, limit, *, rollup: bool = True,
            extra=lambda table: ()) -> dict[tuple, int]:
    """Scans decided in [first, end) counted by `columns` (names of KEPT, or "hour" for
    the UTC hour's start), exactly. `limit(stmt, table)` narrows both tables alike (the
    caller's scope and filters); `extra(table)` gives further conditions on KEPT columns.
    `rollup=False`: the scans only (a filter the rollup cannot apply, such as a kiosk)."""
    out: dict[tuple, int] = {}

    def add(stmt, table) -> None:
        for row in session.execute(limit(stmt, table)).all():
            key = tuple(int(v) if c == "hour" else v for c, v in zip(columns, row[:-1]))
            out[key] = out.get(key, 0) + int(row[-1] or 0)

    rolled, raw = plan(session, first, end) if rollup else (None, [(first, end)])
    if raw:
        cols = [bucket(session, Scan.ts) if c == "hour" else getattr(Scan, c)
                for c in columns]
        span = or_(*(and_(Scan.ts >= x, Scan.ts < y) for x, y in raw))
        add(select(*cols, func.count()).where(span, *extra(Scan)).group_by(*cols), Scan)
    if rolled:
        a, b = rolled
        cols = [getattr(ScanHour, c) for c in columns]  # "hour" is a column here
        stmt = (select(*cols, func.sum(ScanHour.count))
                .where(ScanHour.hour >= a, ScanHour.hour < b, *extra(ScanHour)).group_by(*cols))
        # the dirty hours: plan()'s ranges inside the rolled ones, read from the scans
        dirty = [h for x, y in raw if a <= x and y <= b for h in range(int(x), int(y), HOUR)]
        if dirty:
            stmt = stmt.where(ScanHour.hour.not_in(dirty))
        add(stmt, ScanHour)
    return out

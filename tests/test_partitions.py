"""The scan table by day on a real PostgreSQL (fleet/partitions.py, migration 0012,
docs/scaling.md#storage): partitions made ahead and idempotent, rows in their day, a day
made late takes its rows out of the default partition, retention drops whole days,
queries over a day or a tracing window touch only their days (EXPLAIN), and a database
with scans upgrades to the partitioned table keeping them, still storing each scan once.
SQLite keeps one table: the idempotency key is the same there."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, inspect, select, text

from fleet import migrate, partitions, retention
from fleet.db import make_engine, make_sessions
from fleet.ingest_store import SCAN, SCAN_KEY
from fleet.models import Scan
from fleet.sqlinsert import BulkInsert

DAY = partitions.DAY
NOW = time.time()
TODAY = partitions.day_start(NOW)
COLUMNS = ["kiosk_id", "scan_id", "ts", "received", "decision", "reason", "policy", "holder"]


@pytest.fixture
def pg(database):
    if database.backend != "postgresql":
        pytest.skip("partitions are PostgreSQL's; SQLite keeps one table")
    engine = make_engine(database.url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def add(engine, rows):
    """rows: (kiosk, scan id, ts[, holder]) through the ingest's own insert."""
    bulk = BulkInsert(engine, SCAN, SCAN_KEY, COLUMNS)
    with engine.begin() as connection:
        return bulk.execute(connection, [(k, s, ts, NOW, "green", "ok", "p",
                                          extra[0] if extra else None)
                                         for k, s, ts, *extra in rows])


def where(engine, ts: float) -> str:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT tableoid::regclass::text FROM scan WHERE ts = :ts"), {"ts": ts}).scalar()


def test_days_are_made_ahead_once_and_rows_land_in_their_day(pg):
    with pg.begin() as connection:
        names = [name for name, _, _ in partitions.days(connection)]
        assert partitions.name_of(TODAY - DAY) in names and partitions.name_of(TODAY) in names
        assert partitions.name_of(TODAY + 7 * DAY) in names  # db upgrade made a week ahead
        assert partitions.ensure(connection, NOW, ahead=7) == []  # nothing twice
        assert partitions.ensure(connection, NOW, ahead=9) == [
            partitions.name_of(TODAY + 8 * DAY), partitions.name_of(TODAY + 9 * DAY)]
    assert add(pg, [("k1", "scan-0001", NOW), ("k1", "scan-0002", TODAY - DAY + 5)]) == 2
    assert where(pg, NOW) == partitions.name_of(TODAY)
    assert where(pg, TODAY - DAY + 5) == partitions.name_of(TODAY - DAY)
    # a redelivery (same bytes, so the same ts) is stored once; the key holds ts
    assert add(pg, [("k1", "scan-0001", NOW)]) == 0


def test_a_day_nobody_made_goes_to_the_default_and_moves_out_when_made(pg):
    far = TODAY + 30 * DAY + 60
    assert add(pg, [("k2", "scan-far-1", far), ("k2", "scan-far-2", far + 1)]) == 2
    assert where(pg, far) == partitions.DEFAULT
    with pg.begin() as connection:
        assert partitions.create_day(connection, TODAY + 30 * DAY)
    assert where(pg, far) == partitions.name_of(TODAY + 30 * DAY)
    with pg.connect() as connection:
        assert connection.execute(text(f"SELECT count(*) FROM {partitions.DEFAULT}")).scalar() == 0
        assert connection.execute(select(func.count()).select_from(Scan)).scalar() == 2
    assert add(pg, [("k2", "scan-far-1", far)]) == 0  # still once


def test_retention_drops_whole_days_and_deletes_only_the_rest(pg):
    old = TODAY - 30 * DAY
    with pg.begin() as connection:
        for day in range(30, 19, -1):
            partitions.create_day(connection, TODAY - day * DAY)
    rows = [("k3", f"scan-old-{d:02d}-{i}", TODAY - d * DAY + 100 + i)
            for d in range(30, 19, -1) for i in range(3)]
    add(pg, rows + [("k3", "scan-young-1", NOW), ("k3", "scan-ancient", old - 400 * DAY)])
    before = TODAY - 21 * DAY + 3600  # mid-day: that day's first hour goes by DELETE
    counts = retention.purge(make_sessions(pg), before)
    with pg.connect() as connection:
        names = [n for n, _, _ in partitions.days(connection)]
        kept = connection.execute(select(Scan.scan_id).order_by(Scan.ts)).scalars().all()
        attached = set(connection.execute(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'scan'")).scalars())
        exists = connection.execute(text("SELECT to_regclass(:n)"),
                                    {"n": partitions.name_of(TODAY - 30 * DAY)}).scalar()
    for day in range(30, 21, -1):  # whole days before the cutoff: gone, not emptied
        assert partitions.name_of(TODAY - day * DAY) not in names
    assert exists is None and partitions.name_of(TODAY - 30 * DAY) not in attached
    assert partitions.name_of(TODAY - 21 * DAY) in names  # the boundary day stays
    assert counts["partitions"] == 9
    assert counts["scans"] == 9 * 3 + 3 + 1  # the 9 days, the boundary's 3, the ancient one
    assert kept == ["scan-old-20-0", "scan-old-20-1", "scan-old-20-2", "scan-young-1"]


def explain(engine, sql: str, **params) -> str:
    with engine.connect() as connection:
        return "\n".join(connection.execute(text("EXPLAIN " + sql), params).scalars())


def test_queries_over_a_day_or_a_tracing_window_touch_only_their_days(pg):
    with pg.begin() as connection:
        for day in range(1, 40):
            partitions.create_day(connection, TODAY - day * DAY)
    add(pg, [("k4", f"scan-ex-{d:03d}", TODAY - d * DAY + 60, "ab" * 16) for d in range(40)])
    with pg.connect() as connection:
        connection.execute(text("ANALYZE scan"))
    one_day = explain(pg, "SELECT decision, count(*) FROM scan WHERE ts >= :a AND ts < :b "
                          "GROUP BY decision", a=TODAY, b=TODAY + DAY)
    scanned = {n for n in partitions_in(one_day)}
    assert scanned == {partitions.name_of(TODAY)}, one_day
    trace = explain(pg, "SELECT ts, kiosk_id FROM scan WHERE holder = :h AND ts >= :a "
                        "AND ts < :b", h="ab" * 16, a=TODAY - 21 * DAY, b=TODAY + DAY)
    scanned = partitions_in(trace)
    assert scanned == {partitions.name_of(TODAY - d * DAY) for d in range(0, 22)}, trace
    # the app's own tracing query prunes too (fleet/tracing.py: Scan.ts bounds)
    from sqlalchemy.dialects import postgresql
    stmt = select(Scan.ts).where(Scan.holder == "ab" * 16, Scan.ts >= TODAY - 21 * DAY,
                                 Scan.ts < TODAY + DAY)
    sql = str(stmt.compile(dialect=postgresql.dialect(),
                           compile_kwargs={"literal_binds": True}))
    assert partitions_in(explain(pg, sql)) == scanned


def partitions_in(plan: str) -> set[str]:
    import re
    return set(re.findall(r"on (scan_p\d{8}|scan_default)", plan))


def test_a_database_with_scans_upgrades_keeping_them_once(database):
    if database.backend != "postgresql":
        pytest.skip("the conversion is PostgreSQL's")
    engine = make_engine(database.url)
    try:
        migrate.upgrade(engine, "0011")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO scan (kiosk_id, scan_id, ts, received, decision, reason, policy) "
                "VALUES ('k5', 'scan-up-1', :a, :a, 'green', 'ok', 'p'), "
                "('k5', 'scan-up-2', :b, :b, 'red', 'expired', 'p'), "
                "('k5', 'scan-up-3', 1600000000, 1600000000, 'green', 'ok', 'p')"),
                {"a": NOW - 3 * DAY, "b": NOW})
        migrate.upgrade(engine)
        assert where(engine, NOW) == partitions.name_of(TODAY)
        assert where(engine, NOW - 3 * DAY) == partitions.name_of(TODAY - 3 * DAY)
        assert where(engine, 1600000000) == partitions.DEFAULT  # too old for a day of its own
        assert add(engine, [("k5", "scan-up-2", NOW), ("k5", "scan-up-4", NOW)]) == 1
        with engine.connect() as connection:
            ids = connection.execute(select(Scan.id).order_by(Scan.id)).scalars().all()
        assert len(ids) == 4 and len(set(ids)) == 4 and ids[-1] > 3  # the sequence goes on
    finally:
        engine.dispose()


def test_scans_per_decision_come_from_the_statistics_never_a_count_of_the_table(pg):
    """greengate_fleet_scans_stored on PostgreSQL (fleet/metrics.py): partitions ANALYZE
    has seen are estimated from its statistics (so a scrape reads no rows of them); one
    it has not seen yet is counted exactly."""
    def decided(n, start, ts, red_every=4):
        bulk = BulkInsert(pg, SCAN, SCAN_KEY, COLUMNS)
        with pg.begin() as connection:
            bulk.execute(connection, [
                ("k1", f"scan-{i:06d}", ts + i * 0.001, NOW,
                 "red" if i % red_every == 0 else "green", "ok", "p", None)
                for i in range(start, start + n)])

    def counts():
        with pg.connect() as connection:
            return partitions.decision_counts(connection)

    decided(400, 0, TODAY - DAY + 10)  # yesterday: 100 red, 300 green
    with pg.connect() as connection:
        connection.execute(text(f"ANALYZE {partitions.name_of(TODAY - DAY)}"))
        connection.commit()
    decided(40, 1000, TODAY + 10)  # today, never analyzed: counted
    assert counts() == {"red": 110, "green": 330}
    decided(400, 2000, TODAY - DAY + 100)  # yesterday again, not analyzed since
    assert counts() == {"red": 110, "green": 330}  # the statistics, not the rows
    with pg.connect() as connection:
        connection.execute(text(f"ANALYZE {partitions.name_of(TODAY - DAY)}"))
        connection.commit()
    assert counts() == {"red": 210, "green": 630}


def test_the_schema_goes_back_to_before_partitions_with_its_scans_and_up_again(database):
    """Downgrades 0014, 0013 and 0012 (a release rolled back): the scans stay, once each, in
    one plain table (SQLite: its unique key again without ts), and upgrading again
    partitions them anew."""
    engine = make_engine(database.url)
    try:
        migrate.upgrade(engine)
        assert add(engine, [("k6", "scan-dn-1", NOW), ("k6", "scan-dn-2", NOW - 2 * DAY),
                            ("k6", "scan-dn-3", TODAY - DAY + 7)]) == 3
        migrate.downgrade(engine, "0011")
        with engine.connect() as connection:
            assert not partitions.partitioned(connection)
            assert connection.execute(text("SELECT count(*) FROM scan")).scalar() == 3
            columns = {c["name"] for c in inspect(connection).get_columns("bridge")}
            assert "crl_number" not in columns
        migrate.upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM scan")).scalar() == 3
            assert partitions.partitioned(connection) == (database.backend == "postgresql")
        if database.backend == "postgresql":
            assert where(engine, NOW - 2 * DAY) == partitions.name_of(TODAY - 2 * DAY)
        assert add(engine, [("k6", "scan-dn-1", NOW), ("k6", "scan-dn-4", NOW)]) == 1
    finally:
        engine.dispose()

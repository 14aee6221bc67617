"""python -m bench partitions [--scans N] [--days D] [--dir PATH]: the scan table by day on
a real PostgreSQL with fsync on (docs/scaling.md#storage).

A throw-away cluster on disk (--dir, default /var/tmp) is upgraded to the fleet's
schema (migration 0012: partitioned by day), then:

- load N scans spread over D days into their day partitions with every index, by
  INSERT ... SELECT generate_series (the bulk rate), and 50,000 more through the
  ingest's own statement (fleet/sqlinsert.py BulkInsert, ON CONFLICT DO NOTHING, 500
  rows a transaction: the ingest's rate on one connection);
- bytes per scan on disk, tables and indexes together (pg_total_relation_size);
- retention of one day: DELETE of the oldest day's rows against DROP of the next day's
  partition (same size), both timed;
- the dashboard's scan queries (hourly volumes of a day by decision, a day's scans per
  district, a kiosk's last scan) and a tracing query (one holder over 21 days), p95 of
  many runs each;
- the metrics scrape's scans per decision: a count of the whole table against the
  estimate from ANALYZE's statistics (fleet/partitions.decision_counts);
- the hourly rollup (fleet/scan_hours.py): its first run over the days held, one hour
  counted (the hourly upkeep's share), and the day's figures read from it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

DAY = 86400


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def _timed(connection, sql: str, params: dict) -> float:
    start = time.perf_counter()
    connection.execute(text(sql), params).all()
    return time.perf_counter() - start


def _timed_call(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench partitions")
    parser.add_argument("--scans", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=23)
    parser.add_argument("--kiosks", type=int, default=10_000)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args(argv)

    from sqlalchemy.orm import Session

    from fleet import migrate, partitions, scan_hours
    from fleet.db import make_engine
    from fleet.ingest_store import SCAN, SCAN_KEY
    from fleet.sqlinsert import BulkInsert
    from tests.databases import PostgresCluster

    base = Path(tempfile.mkdtemp(prefix="gg-bench-pg-", dir=args.dir))
    base.chmod(0o755)  # the server runs as postgres when we are root
    cluster = PostgresCluster(base / "pg", settings={
        "fsync": "on", "full_page_writes": "on", "wal_level": "replica",
        "shared_buffers": "1GB", "max_wal_size": "4GB", "autovacuum": "on",
        "max_wal_senders": "2"})
    try:
        cluster.init().start()
        url = cluster.url(cluster.create_database("bench"))
        engine = make_engine(url)
        migrate.upgrade(engine)
        now = time.time()
        today = partitions.day_start(now)
        first = today - (args.days - 1) * DAY
        per_day = args.scans // args.days
        people = max(1000, args.scans // 20)  # each person scanned ~20 times in the window
        with engine.begin() as connection:
            for d in range(args.days):
                partitions.create_day(connection, first + d * DAY)
        print(f"PostgreSQL {cluster.version}, fsync on, data in {base} (disk); "
              f"{args.scans:,} scans over {args.days} days, {args.kiosks:,} kiosks, "
              f"{people:,} people")

        load = time.perf_counter()
        for d in range(args.days):
            start = first + d * DAY
            with engine.begin() as connection:
                connection.execute(text(
                    "INSERT INTO scan (kiosk_id, scan_id, ts, received, decision, reason, "
                    "policy, location_id, district_id, holder, cert_hash, cert_type, seq) "
                    "SELECT 'k' || (g % :k), md5(g::text || :day), "
                    ":start + (g * 86399.0 / :n), :start + (g * 86399.0 / :n) + 1, "
                    "CASE WHEN (g / 5000) % 20 = 0 THEN 'red' ELSE 'green' END, "
                    "CASE WHEN (g / 5000) % 20 = 0 THEN 'expired' ELSE 'ok' END, 'hcmc-2021', "
                    "g % 5000, (g % 5000) % 24, md5(((g * 7919 + :day) % :people)::text), "
                    "md5(((g * 104729 + :day) % :people)::text || 'c'), 'v', g "
                    "FROM generate_series(1::bigint, :n) AS g"),
                    {"k": args.kiosks, "day": d, "start": start, "n": per_day,
                     "people": people})
            print(f"  day {d + 1}/{args.days} loaded ({(d + 1) * per_day:,} scans, "
                  f"{(d + 1) * per_day / (time.perf_counter() - load):,.0f} scans/s)",
                  flush=True)
        loaded = per_day * args.days
        bulk_rate = loaded / (time.perf_counter() - load)
        with engine.connect() as connection:
            connection.execute(text("ANALYZE scan"))
            connection.commit()

        insert = BulkInsert(engine, SCAN, SCAN_KEY,
                            ["kiosk_id", "scan_id", "ts", "received", "decision", "reason",
                             "policy", "holder", "location_id", "district_id"])
        rows = [(f"k{i % args.kiosks}", f"ingest-{i:010d}", now - 60 + i / 1000, now,
                 "green", "ok", "hcmc-2021", f"{i % people:032x}", i % 5000, (i % 5000) % 24)
                for i in range(50_000)]
        start = time.perf_counter()
        for at in range(0, len(rows), 500):
            with engine.begin() as connection:
                insert.execute(connection, rows[at:at + 500])
        ingest_rate = len(rows) / (time.perf_counter() - start)

        with engine.connect() as connection:
            names = [n for n, _, _ in partitions.days(connection)]
            size = int(connection.execute(text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = 'scan'")).scalar())
            count = connection.execute(text("SELECT count(*) FROM scan")).scalar()
            heap = int(connection.execute(text(
                "SELECT sum(pg_relation_size(c.oid)) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = 'scan'")).scalar())
        per_scan = size / count

        # retention: the oldest day by DELETE, the next by DROP (the same number of rows)
        with engine.begin() as connection:
            start = time.perf_counter()
            deleted = connection.execute(text("DELETE FROM scan WHERE ts >= :a AND ts < :b"),
                                         {"a": first, "b": first + DAY}).rowcount
            delete_s = time.perf_counter() - start
        with engine.begin() as connection:
            start = time.perf_counter()
            dropped = partitions.drop_before(connection, first + 2 * DAY)
            drop_s = time.perf_counter() - start
            start = time.perf_counter()
            connection.execute(text(f"SELECT count(*) FROM {names[2]}")).scalar()
            count_s = time.perf_counter() - start

        queries = {
            "hourly volumes of a day by decision": (
                "SELECT floor(ts / 3600), decision, count(*) FROM scan WHERE ts >= :a AND "
                "ts < :b GROUP BY 1, 2", lambda: {"a": today - DAY, "b": today}),
            "a day's scans per district": (
                "SELECT district_id, decision, count(*) FROM scan WHERE ts >= :a AND ts < :b "
                "GROUP BY 1, 2", lambda: {"a": today - DAY, "b": today}),
            "a kiosk's last scan": (
                "SELECT max(ts) FROM scan WHERE kiosk_id = :k AND ts >= :a",
                lambda: {"k": f"k{random.randrange(args.kiosks)}", "a": now - 2 * DAY}),
            "tracing: one holder over 21 days": (
                "SELECT ts, kiosk_id, location_id FROM scan WHERE holder = md5(:h) "
                "AND ts >= :a AND ts < :b ORDER BY ts",
                lambda: {"h": str(random.randrange(people)), "a": now - 21 * DAY,
                         "b": now + 60}),
        }
        timings = {}
        with engine.connect() as connection:
            for label, (sql, params) in queries.items():
                runs = 5 if "hourly" in label or "per district" in label else 50
                _timed(connection, sql, params())  # warm
                timings[label] = [_timed(connection, sql, params()) for _ in range(runs)]
            # the metrics scrape's scans per decision: a count of the whole table (what it
            # did) against the statistics (fleet/partitions.decision_counts, what it does)
            connection.execute(text("ANALYZE scan"))
            connection.commit()
            for label, run in (
                    ("metrics: scans per decision, count of the whole table", lambda: _timed(
                        connection, "SELECT decision, count(*) FROM scan GROUP BY decision",
                        {})),
                    ("metrics: scans per decision, from the statistics", lambda: _timed_call(
                        partitions.decision_counts, connection))):
                run()
                timings[label] = [run() for _ in range(3 if "whole" in label else 20)]

        # the hourly rollup (fleet/scan_hours.py): its first run over every day held, one
        # hour's count (the hourly upkeep's share), then the day figures read from it
        start = time.perf_counter()
        rolled = scan_hours.roll(engine, now)
        roll_s = time.perf_counter() - start
        hour_s = []
        for h in range(5):
            with engine.begin() as connection:
                hour_s.append(_timed_call(scan_hours._count, connection,
                                          today - DAY + 3600 * (3 + h)))
        timings["rollup: one hour counted again (the hourly upkeep's share)"] = hour_s
        with engine.connect() as connection:
            hour_rows = connection.execute(text(
                "SELECT count(*) FROM scan_hour WHERE hour >= :a AND hour < :b"),
                {"a": today - DAY, "b": today}).scalar()
        with Session(engine) as session:
            for label, columns in (
                    ("hourly volumes of a day by decision, from the rollup",
                     ("hour", "decision")),
                    ("a day's scans per district, from the rollup",
                     ("district_id", "decision"))):
                def run():
                    return _timed_call(scan_hours.counted, session, columns, today - DAY,
                                       today, lambda stmt, _table: stmt)
                run()  # warm
                timings[label] = [run() for _ in range(20)]
                assert scan_hours.plan(session, today - DAY, today)[1] == []  # all rolled

        print()
        print("| what | figure |")
        print("|---|---|")
        print(f"| scans stored | {count:,} in {args.days} days (and {len(names)} day "
              f"partitions with those made ahead) |")
        print(f"| bulk load (INSERT ... SELECT, every index) | {bulk_rate:,.0f} scans/s |")
        print(f"| the ingest's insert, 500 a transaction, one connection | "
              f"{ingest_rate:,.0f} scans/s |")
        print(f"| on disk, tables + indexes | {size / 1e9:.2f} GB: {per_scan:.0f} bytes a scan "
              f"({heap / count:.0f} of it the rows) |")
        print(f"| retention of one day by DELETE ({deleted:,} rows) | {delete_s:.2f} s |")
        print(f"| rollup, first run: {rolled['hours']:,} hours counted | {roll_s:.1f} s "
              f"({roll_s / max(1, rolled['hours']) * 1000:.0f} ms an hour) |")
        print(f"| rollup rows of one day (what the day's figures read) | {hour_rows:,} |")
        print(f"| retention of one day by DROP ({dropped[-1][1]:,} rows) | {drop_s:.3f} s "
              f"(of which counting the rows for the audit {count_s:.2f} s per day) |")
        for label, values in timings.items():
            print(f"| {label} | p50 {statistics.median(values) * 1000:.1f} ms, "
                  f"p95 {_p95(values) * 1000:.1f} ms ({len(values)} runs) |")
        engine.dispose()
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0

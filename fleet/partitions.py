"""The scan table by day on PostgreSQL (docs/scaling.md#storage).

`scan` is partitioned by RANGE (ts), one partition per UTC day named scan_pYYYYMMDD,
plus scan_default for a ts no day partition takes (a kiosk clock the ingest's window
accepts on a day nobody created yet): stored, never refused. The upkeep
(`greengate-fleet scans purge`, hourly, and `db upgrade`) creates the days from
yesterday to `[fleet] partitions_ahead` days ahead; retention drops whole days
(fleet/retention.py). SQLite keeps one plain table: nothing here applies to it.

    ensure(connection, now, ahead)   create the missing days; rows of such a day that sit
                                     in the default partition move into it
    days(connection)                 [(name, start, end)] of the day partitions, oldest first
    drop_before(connection, before)  drop the day partitions wholly before `before`
    decision_counts(connection)      scans per decision from ANALYZE's statistics (metrics)
"""

from __future__ import annotations

import calendar
import re
import time

from sqlalchemy import text

DAY = 86400
DEFAULT = "scan_default"
NAME = re.compile(r"^scan_p(\d{8})$")


def schema_name(name, type_, _parents) -> bool:
    """Alembic's include_name: the day and default partitions are the database's own
    business, not tables of the models (autogenerate and the schema test skip them)."""
    return not (type_ == "table" and (NAME.match(name or "") or name == DEFAULT))


def partitioned(connection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    return bool(connection.execute(text(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = 'scan' AND c.relnamespace = to_regnamespace(current_schema())"
    )).first())


def name_of(day_start: int) -> str:
    return "scan_p" + time.strftime("%Y%m%d", time.gmtime(day_start))


def day_start(ts: float) -> int:
    return int(ts // DAY) * DAY


def days(connection) -> list[tuple[str, int, int]]:
    """The day partitions attached to scan, oldest first."""
    rows = connection.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'scan' "
        "AND p.relnamespace = to_regnamespace(current_schema())")).scalars().all()
    out = []
    for name in rows:
        match = NAME.match(name)
        if match:
            start = calendar.timegm(time.strptime(match[1], "%Y%m%d"))
            out.append((name, start, start + DAY))
    return sorted(out, key=lambda row: row[1])


def decision_counts(connection) -> dict[str, int]:
    """Scans per decision over every partition, from the statistics ANALYZE keeps (row
    count x the decision's frequency): a count of the whole table would read it all, at
    a city's 21 days some 380 GB, on every metrics scrape. A partition never analyzed
    yet (a new day) is counted exactly. Decisions outside a partition's most common
    values (none: there are two) would be missed."""
    rows = connection.execute(text(
        "SELECT c.relname, c.reltuples, s.most_common_vals::text::text[], "
        "s.most_common_freqs FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent LEFT JOIN pg_stats s ON "
        "s.schemaname = current_schema() AND s.tablename = c.relname "
        "AND s.attname = 'decision' WHERE p.relname = 'scan' "
        "AND p.relnamespace = to_regnamespace(current_schema())")).all()
    out: dict[str, int] = {}
    for name, tuples, values, freqs in rows:
        if tuples is None or tuples < 0 or (tuples > 0 and values is None):
            for decision, n in connection.execute(text(
                    f"SELECT decision, count(*) FROM {name} GROUP BY decision")):
                out[decision] = out.get(decision, 0) + n
            continue
        for decision, freq in zip(values or [], freqs or []):
            out[decision] = out.get(decision, 0) + round(tuples * freq)
    return out


def create_day(connection, start: int) -> bool:
    """The partition of the day starting at `start`; False if it exists. Rows of that day
    in the default partition move into it (PostgreSQL refuses a new partition while the
    default holds rows of its range). The default is detached meanwhile, inside this
    transaction: the ingest waits on the table's lock, it is never refused."""
    name = name_of(start)
    if connection.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar():
        return False
    end = start + DAY
    stray = connection.execute(text(
        f"SELECT count(*) FROM {DEFAULT} WHERE ts >= :a AND ts < :b"),
        {"a": start, "b": end}).scalar()
    if stray:
        connection.execute(text(f"ALTER TABLE scan DETACH PARTITION {DEFAULT}"))
    connection.execute(text(
        f"CREATE TABLE {name} PARTITION OF scan FOR VALUES FROM ({start}) TO ({end})"))
    if stray:
        connection.execute(text(
            f"INSERT INTO scan SELECT * FROM {DEFAULT} WHERE ts >= :a AND ts < :b"),
            {"a": start, "b": end})
        connection.execute(text(f"DELETE FROM {DEFAULT} WHERE ts >= :a AND ts < :b"),
                           {"a": start, "b": end})
        connection.execute(text(f"ALTER TABLE scan ATTACH PARTITION {DEFAULT} DEFAULT"))
    return True


def ensure(connection, now: float | None = None, ahead: int = 7) -> list[str]:
    """Create the day partitions from yesterday to `ahead` days from now; their names."""
    if not partitioned(connection):
        return []
    today = day_start(time.time() if now is None else now)
    made = []
    for offset in range(-1, max(0, int(ahead)) + 1):
        start = today + offset * DAY
        if create_day(connection, start):
            made.append(name_of(start))
    return made


def drop_before(connection, before: float) -> list[tuple[str, int]]:
    """Drop every day partition that ends at or before `before`: [(name, its rows)]. The
    count reads the day once (seconds for a city's day); the audit says what went."""
    if not partitioned(connection):
        return []
    dropped = []
    for name, _start, end in days(connection):
        if end > before:
            break
        rows = connection.execute(text(f"SELECT count(*) FROM {name}")).scalar()
        connection.execute(text(f"ALTER TABLE scan DETACH PARTITION {name}"))
        connection.execute(text(f"DROP TABLE {name}"))
        dropped.append((name, int(rows)))
    return dropped

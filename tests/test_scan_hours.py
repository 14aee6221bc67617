"""The dashboard's hourly counts (fleet/scan_hours.py) on SQLite and PostgreSQL: what
they give always equals a count of the scans themselves, through late scans stored by
the ingest, retention cutting an hour, and two rollups at once."""

from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import func, select

from fleet import retention, scan_hours
from fleet.cli import main
from fleet.db import make_engine
from fleet.ingest_store import ScanStore
from fleet.models import Scan, ScanHour, ScanHourDirty, ScanRollup
from tests.fleetdata import scan

HOUR = 3600
NOW = 1_700_000_000.0 - 1_700_000_000.0 % HOUR + 1234.5  # 20 min into an hour
FIRST = NOW - 30 * HOUR
REASONS = {"green": ["ok"], "red": ["expired", "revoked", "too_soon"], "error": ["bad_qr"]}


def random_scans(rng, n, start, end, first_id=0):
    out = []
    for i in range(n):
        decision = rng.choice(["green", "green", "red", "error"])
        s = scan(first_id + i, f"k{rng.randrange(6)}", rng.choice([None, 11, 12, 13]),
                 rng.choice([None, 1, 2]), rng.uniform(start, end), decision,
                 rng.choice(REASONS[decision]))
        s.sub_reason = rng.choice([None, "dose 2"]) if decision == "red" else None
        out.append(s)
    return out


def truth(session, columns, first, end, district=None, location=None, red_only=False):
    """The same figures counted from the scans alone."""
    cols = [scan_hours.bucket(session, Scan.ts) if c == "hour" else getattr(Scan, c)
            for c in columns]
    stmt = select(*cols, func.count()).where(Scan.ts >= first, Scan.ts < end).group_by(*cols)
    if district is not None:
        stmt = stmt.where(Scan.district_id == district)
    if location is not None:
        stmt = stmt.where(Scan.location_id == location)
    if red_only:
        stmt = stmt.where(Scan.decision == "red")
    return {tuple(row[:-1]): row[-1] for row in session.execute(stmt)}


def counted(session, columns, first, end, district=None, location=None, red_only=False):
    def limit(stmt, table):
        if district is not None:
            stmt = stmt.where(table.district_id == district)
        if location is not None:
            stmt = stmt.where(table.location_id == location)
        return stmt
    red = (lambda t: (t.decision == "red",)) if red_only else (lambda t: ())
    return scan_hours.counted(session, columns, first, end, limit, extra=red)


WINDOWS = [  # (first, end): whole hours, cut hours, reaching past what is rolled up
    (FIRST, NOW), (FIRST - FIRST % HOUR, NOW - NOW % HOUR), (NOW - 24 * HOUR, NOW + 1),
    (FIRST + 1800.25, NOW - 5 * HOUR + 17), (NOW - 3 * HOUR, NOW), (NOW - HOUR, NOW)]
GROUPINGS = [("hour", "decision"), ("district_id", "location_id", "decision"),
             ("reason", "sub_reason"), ()]


def assert_exact(sessions):
    with sessions() as s:
        for first, end in WINDOWS:
            for columns in GROUPINGS:
                for district, location, red in ((None, None, False), (1, None, False),
                                                (None, 12, True), (2, 13, False)):
                    want = truth(s, columns, first, end, district, location, red)
                    got = counted(s, columns, first, end, district, location, red)
                    assert got == want, (first, end, columns, district, location, red)


def test_the_hourly_counts_equal_the_scans_and_are_what_is_read(fleet_config, fleet_db):
    rng = random.Random(7)
    with fleet_db() as s:
        s.add_all(random_scans(rng, 3000, FIRST, NOW))
        s.commit()
    assert_exact(fleet_db)  # nothing rolled up yet: all from the scans
    engine = make_engine(fleet_config.database_url)
    try:
        done = scan_hours.roll(engine, NOW)
    finally:
        engine.dispose()
    through = scan_hours.hour_of(NOW) - HOUR
    assert done == {"hours": 29, "recounted": 0, "through": through}
    with fleet_db() as s:
        assert s.scalar(select(ScanRollup.through)) == through
        # the closed hours are read from the counts...
        assert scan_hours.plan(s, FIRST, NOW) == (
            (scan_hours.hour_of(FIRST) + HOUR, through),
            [(FIRST, scan_hours.hour_of(FIRST) + HOUR), (through, NOW)])
        assert s.scalar(select(func.sum(ScanHour.count))) == s.scalar(
            select(func.count()).select_from(Scan).where(Scan.ts < through))
        # ...so a scan slipped in behind the ingest's back (no dirty mark) is not seen:
        # the counts really are what the figures come from
        inside = scan_hours.hour_of(FIRST) + 3 * HOUR + 60  # a whole hour of the window
        s.add(scan(99999, "k1", 11, 1, inside))
        s.commit()
        assert counted(s, (), FIRST + 2 * HOUR, FIRST + 4 * HOUR) != truth(
            s, (), FIRST + 2 * HOUR, FIRST + 4 * HOUR)
        s.execute(ScanHourDirty.__table__.insert().values(
            hour=scan_hours.hour_of(inside), at=NOW))
        s.commit()
    assert_exact(fleet_db)


def doc(n, ts, decision="green", reason="ok"):
    return {"id": f"late{n:06d}", "ts": ts, "decision": decision, "reason": reason,
            "sub": None, "type": "v", "cert": None, "holder": None, "policy": "hcmc-2021",
            "seq": n}


@pytest.fixture
def rolled(fleet_config, fleet_db):
    """2000 scans over the last 30 hours, rolled up at NOW: an engine on them."""
    with fleet_db() as s:
        s.add_all(random_scans(random.Random(5), 2000, FIRST, NOW))
        s.commit()
    engine = make_engine(fleet_config.database_url)
    scan_hours.roll(engine, NOW)
    yield engine
    engine.dispose()


def test_late_scans_from_the_ingest_are_counted_at_once_and_once(rolled, fleet_db):
    """A kiosk back after a day offline replays its outbox into hours rolled up long
    ago: the ingest marks them in the batch's transaction, the figures read those hours
    from the scans until the next rollup counts them again."""
    rng = random.Random(11)
    store = ScanStore(rolled, deployment="test", clock=lambda: NOW + 60)
    batch = [("k-late", doc(i, FIRST + 3 * HOUR + i * 97, *rng.choice(
        [("green", "ok"), ("red", "expired")])), b"") for i in range(80)]
    batch.append(("k-late", doc(900, NOW - 10), b""))  # this hour: no mark needed
    assert store.write(batch, []).scans == 81
    assert store.write(batch[:5], []).scan_duplicates == 5  # a replay: stored once
    with fleet_db() as s:
        marked = set(s.scalars(select(ScanHourDirty.hour)))
    assert marked == {scan_hours.hour_of(d["ts"]) for _, d, _ in batch[:80]}
    assert_exact(fleet_db)
    done = scan_hours.roll(rolled, NOW + 120)
    assert done["hours"] == 0 and done["recounted"] == len(marked)
    with fleet_db() as s:
        assert s.scalar(select(func.count()).select_from(ScanHourDirty)) == 0
    assert_exact(fleet_db)


def test_retention_takes_the_counts_with_the_scans_and_cuts_an_hour_exactly(
        rolled, fleet_db):
    before = FIRST + 6 * HOUR + 1000  # in the middle of an hour
    retention.purge(fleet_db, before)
    with fleet_db() as s:
        assert s.scalar(select(func.min(ScanHour.hour))) == scan_hours.hour_of(before)
        assert s.scalar(select(func.min(Scan.ts))) >= before
    assert_exact(fleet_db)  # the cut hour is read from what is left of it
    assert scan_hours.roll(rolled, NOW)["recounted"] == 1
    assert_exact(fleet_db)


def test_two_rollups_at_once_count_every_hour_once(fleet_config, fleet_db):
    rng = random.Random(3)
    with fleet_db() as s:
        s.add_all(random_scans(rng, 2000, FIRST, NOW))
        s.add(ScanHourDirty(hour=scan_hours.hour_of(FIRST + 4 * HOUR), at=NOW))
        s.commit()
    engines = [make_engine(fleet_config.database_url) for _ in range(3)]
    errors = []

    def run(engine):
        try:
            scan_hours.roll(engine, NOW)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for e in engines:
        e.dispose()
    assert errors == []
    with fleet_db() as s:
        rows = s.execute(select(ScanHour.hour, ScanHour.district_id, ScanHour.location_id,
                                ScanHour.decision, ScanHour.reason, ScanHour.sub_reason,
                                func.count()).group_by(
            ScanHour.hour, ScanHour.district_id, ScanHour.location_id, ScanHour.decision,
            ScanHour.reason, ScanHour.sub_reason)).all()
        assert rows and all(row[-1] == 1 for row in rows)  # no group counted twice
    assert_exact(fleet_db)


def test_the_rollup_command(fleet_config, fleet_db, tmp_path, capsys):
    config = tmp_path / "fleet.toml"
    config.write_text(f'[fleet]\ndatabase_url = "{fleet_config.database_url}"\n'
                      f'data_dir = "{tmp_path / "data"}"\ndeployments = ["test"]\n')
    with fleet_db() as s:  # the command runs on the wall clock
        s.add(scan(1, "k1", 11, 1, time.time() - 3 * HOUR))
        s.commit()
    assert main(["--config", str(config), "scans", "rollup"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("counted ") and "every hour before" in out
    with fleet_db() as s:
        assert s.scalar(select(func.sum(ScanHour.count))) == 1
    assert main(["--config", str(config), "scans", "rollup"]) == 0
    assert capsys.readouterr().out.startswith("counted 0 hour(s) and 0 again")

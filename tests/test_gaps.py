"""Gap detection (fleet/gaps.py through fleet/presence.py's writer): decisions a kiosk
says the fleet confirmed (heartbeat `confirmed`) that the scan table does not hold, on
SQLite and PostgreSQL, with the presence tracker's real flush path."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, insert, select

from fleet import gaps
from fleet import presence as presence_db
from fleet.models import NEVER_SEEN, Kiosk, Scan
from fleet.presence import Tracker
from greengate import messages

T0 = 1_700_000_000.0
SCAN = Scan.__table__


def beat(kiosk, seq=None, confirmed=None, session=1):
    return messages.heartbeat(kiosk=kiosk, session=session, ts=T0, uptime=5.0,
                              bundles={"trust": 1, "policy": 1, "status": 1}, outbox=0,
                              clock="synced", lists="fresh", cpu_temp=None, seq=seq,
                              confirmed=confirmed)


def store_scans(sessions, kiosk, seqs, prefix="s"):
    with sessions.kw["bind"].begin() as c:
        c.execute(insert(SCAN), [
            {"kiosk_id": kiosk, "scan_id": f"{prefix}{n:06d}", "ts": T0, "received": T0,
             "decision": "green", "reason": "ok", "policy": "hcmc-2021", "seq": n}
            for n in seqs])


def gap(sessions, kiosk):
    with sessions() as s:
        k = s.get(Kiosk, kiosk)
        return k.seq_reported, k.seq_checked, k.seq_missing


class Flusher:
    """The presence tracker and its periodic write, as the ingest worker drives them."""

    def __init__(self, sessions, kiosks):
        self.sessions = sessions
        self.tracker = Tracker(keepalive=10.0, backlog=100)
        with sessions() as s:
            for kid in kiosks:
                s.add(Kiosk(id=kid, state=NEVER_SEEN, detail="", session=0))
            s.commit()
        with sessions.kw["bind"].connect() as c:
            self.tracker.load(presence_db.load_rows(c))
        self.tracker.resume(T0)
        self.now = T0

    def heartbeat(self, kiosk, seq=None, confirmed=None, session=1):
        self.now += 1
        self.tracker.heartbeat(kiosk, beat(kiosk, seq, confirmed, session), self.now)
        self.flush()

    def flush(self):
        with self.sessions.kw["bind"].begin() as c:
            presence_db.write(c, self.tracker.take_changes(), "test")
            presence_db.write_seen(c, self.tracker.take_seen())


def test_a_gap_is_counted_once_and_stays_when_the_watermark_moves_on(fleet_db):
    f = Flusher(fleet_db, ["k1"])
    store_scans(fleet_db, "k1", [n for n in range(1, 11) if n not in (4, 7)])
    f.heartbeat("k1", seq=10, confirmed=10)  # the first one: a transition (write())
    assert gap(fleet_db, "k1") == (10, 10, 2)
    f.heartbeat("k1", seq=10, confirmed=10)  # the same again (write_seen): nothing new
    assert gap(fleet_db, "k1") == (10, 10, 2)
    store_scans(fleet_db, "k1", [11, 12])
    f.heartbeat("k1", seq=13, confirmed=12)
    assert gap(fleet_db, "k1") == (13, 12, 2)
    # retention purges the old scans: a counted window is not counted again
    with fleet_db.kw["bind"].begin() as c:
        c.execute(delete(SCAN).where(SCAN.c.seq <= 12))
    f.heartbeat("k1", seq=13, confirmed=12)
    assert gap(fleet_db, "k1") == (13, 12, 2)
    # and 13 arrives, 14 never does
    store_scans(fleet_db, "k1", [13])
    f.heartbeat("k1", seq=14, confirmed=14)
    assert gap(fleet_db, "k1") == (14, 14, 3)


def test_a_duplicate_seq_is_not_held_twice(fleet_db):
    f = Flusher(fleet_db, ["k1"])
    store_scans(fleet_db, "k1", [1, 2, 3])
    store_scans(fleet_db, "k1", [3], prefix="again")  # another scan id with seq 3
    f.heartbeat("k1", seq=4, confirmed=4)
    assert gap(fleet_db, "k1") == (4, 4, 1)  # 4 is missing, whatever 3 does twice


def test_a_replaced_outbox_starts_again_without_going_negative(fleet_db):
    f = Flusher(fleet_db, ["k1"])
    store_scans(fleet_db, "k1", range(1, 6))
    f.heartbeat("k1", seq=5, confirmed=5)
    assert gap(fleet_db, "k1") == (5, 5, 0)
    # a new outbox: seq 1, 2, 3 again (new scan ids), 3 lost in the new numbering but
    # held from the old one: the documented limit, not a negative or double count
    store_scans(fleet_db, "k1", [1, 2], prefix="new")
    f.heartbeat("k1", seq=3, confirmed=3, session=2)
    assert gap(fleet_db, "k1") == (3, 3, 0)
    # beyond the old numbering the new one is counted exactly: 6 held, 7 missing
    store_scans(fleet_db, "k1", [4, 5, 6], prefix="new")
    f.heartbeat("k1", seq=7, confirmed=7, session=2)
    assert gap(fleet_db, "k1") == (7, 7, 1)


def test_first_sight_starts_at_the_lowest_seq_held(fleet_db):
    # the fleet learned to store seq after the kiosk had numbered 1000 decisions
    f = Flusher(fleet_db, ["k1", "k2", "k3"])
    store_scans(fleet_db, "k1", [1001, 1002, 1004])
    f.heartbeat("k1", seq=1004, confirmed=1004)
    assert gap(fleet_db, "k1") == (1004, 1004, 1)  # 1003, not 1..1000
    # nothing held at all: nothing can be said about the past, from here on all is
    f.heartbeat("k2", seq=50, confirmed=40)
    assert gap(fleet_db, "k2") == (50, 40, 0)
    f.heartbeat("k2", seq=50, confirmed=50)
    assert gap(fleet_db, "k2") == (50, 50, 10)
    # a kiosk that reports a seq before anything is confirmed is counted from 1
    f.heartbeat("k3", seq=2, confirmed=0)
    f.heartbeat("k3", seq=2, confirmed=2)
    assert gap(fleet_db, "k3") == (2, 2, 2)


def test_heartbeats_without_numbers_and_other_kiosks_change_nothing(fleet_db):
    f = Flusher(fleet_db, ["old", "k1"])
    store_scans(fleet_db, "k1", [1, 2])
    f.heartbeat("old")
    assert gap(fleet_db, "old") == (None, 0, 0)
    f.heartbeat("k1", seq=2, confirmed=2)
    store_scans(fleet_db, "old", [1])  # another kiosk's seq 1 is not k1's
    assert gap(fleet_db, "k1") == (2, 2, 0)
    assert gap(fleet_db, "old") == (None, 0, 0)


@pytest.mark.parametrize("doc, expected", [
    ({"seq": 5, "confirmed": 4}, {"k": (5, 4)}),
    ({"seq": 5}, {"k": (5, None)}),
    ({"seq": 3, "confirmed": 9}, {"k": (3, None)}),  # beyond seq: not trusted
    ({"seq": "5", "confirmed": 4.0}, {}),
    ({"seq": True, "confirmed": -1}, {}),
    ({"seq": 1e300, "confirmed": float("nan")}, {}),
    (None, {}),
    ("text", {}),
])
def test_only_well_formed_counts_are_used(doc, expected):
    assert gaps.positions([("k", doc)]) == expected


def test_a_stored_heartbeat_replayed_after_a_restart_counts_nothing_twice(fleet_db):
    f = Flusher(fleet_db, ["k1"])
    store_scans(fleet_db, "k1", [1, 3])
    f.heartbeat("k1", seq=3, confirmed=3)
    assert gap(fleet_db, "k1") == (3, 3, 1)
    again = Flusher.__new__(Flusher)  # a restarted tracker loads the kiosk and its heartbeat
    again.sessions, again.now = fleet_db, f.now
    again.tracker = Tracker(keepalive=10.0, backlog=100)
    with fleet_db.kw["bind"].connect() as c:
        again.tracker.load(presence_db.load_rows(c))
    again.tracker.resume(f.now)
    again.heartbeat("k1", seq=3, confirmed=3)
    with fleet_db() as s:
        assert s.scalar(select(Kiosk.seq_missing).where(Kiosk.id == "k1")) == 1

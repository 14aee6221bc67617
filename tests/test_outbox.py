"""The durable outbox: order, idempotence, bounds, threads, and kill -9."""

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device.outbox import Outbox, OutboxClosed
from greengate import messages

ROOT = Path(__file__).resolve().parents[1]
TOPIC = messages.scan_topic("k1")


def scan(scan_id: str, decision="green", reason="ok", ts=1633420800.0) -> bytes:
    return messages.encode(messages.scan(
        scan_id=scan_id, kiosk="k1", ts=ts, decision=decision, reason=reason, sub_reason=None,
        cert_type="v", cert_hash=None, holder=None, policy="hcmc-2021"))


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite", max_rows=100)
    yield box
    box.close()


def test_wal_and_full_sync(outbox):
    db = outbox._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_add_pending_oldest_first_and_remove_is_idempotent(outbox):
    ids = [f"scan-{i:04d}" for i in (3, 1, 2, 0)]  # insertion order, not id order
    for sid in ids:
        assert outbox.add(sid, TOPIC, scan(sid)) is True
    assert outbox.depth() == 4
    rows = outbox.pending(10)
    assert [r.scan_id for r in rows] == ids
    assert rows[0].topic == TOPIC and rows[0].payload == scan(ids[0]) and rows[0].attempts == 0
    assert [r.scan_id for r in outbox.pending(2)] == ids[:2]
    outbox.remove(ids[1])
    outbox.remove(ids[1])
    outbox.remove("never-added")
    assert [r.scan_id for r in outbox.pending(10)] == [ids[0], ids[2], ids[3]]
    assert outbox.depth() == 3
    assert outbox.remove_many([ids[0], ids[2], "nope"]) == 2
    assert outbox.depth() == 1


def test_adding_the_same_scan_twice_keeps_one_row(outbox):
    assert outbox.add("scan-0001", TOPIC, scan("scan-0001"))
    assert outbox.add("scan-0001", TOPIC, b"something else")
    assert outbox.depth() == 1
    assert outbox.pending(5)[0].payload == scan("scan-0001")


def test_rows_survive_reopening(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path, 100) as box:
        for i in range(5):
            box.add(f"scan-{i:04d}", TOPIC, scan(f"scan-{i:04d}"))
        box.remove("scan-0002")
        box.attempted(["scan-0000"])
    with Outbox(path, 100) as box:
        assert box.depth() == 4
        rows = box.pending(10)
        assert [r.scan_id for r in rows] == ["scan-0000", "scan-0001", "scan-0003", "scan-0004"]
        assert rows[0].attempts == 1


def test_closed_outbox_raises(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 100)
    box.close()
    box.close()
    with pytest.raises(OutboxClosed):
        box.add("scan-0001", TOPIC, b"{}")


def test_full_outbox_counts_decisions_in_hourly_summaries(tmp_path):
    path = tmp_path / "o.sqlite"
    hour = 1633420800  # 2021-10-05 08:00 UTC
    with Outbox(path, max_rows=3) as box:
        for i in range(3):
            assert box.add(f"scan-{i:04d}", TOPIC, scan(f"scan-{i:04d}")) is True
        # full: these are recorded as counts, never silently dropped
        assert box.add("scan-0100", TOPIC, scan("scan-0100", "red", "expired", hour + 10)) is False
        assert box.add("scan-0101", TOPIC, scan("scan-0101", "red", "expired", hour + 20)) is False
        assert box.add("scan-0102", TOPIC, scan("scan-0102", "green", "ok", hour + 30)) is False
        assert box.add("scan-0103", TOPIC, scan("scan-0103", "red", "expired", hour + 3700)) is False
        assert box.add("scan-0104", TOPIC, b"not json", decision="red", reason="unreadable",
                       ts=hour + 40) is False
        assert box.depth() == 3 and box.overflow() == 5
        # an existing row is not an overflow
        assert box.add("scan-0001", TOPIC, scan("scan-0001")) is True
        assert box.overflow() == 5
    with Outbox(path, max_rows=3) as box:  # durable like the rows
        assert box.overflow() == 5 and box.summaries() == 4
        taken = box.take_summaries(10)
        counts = {(s.hour, s.decision, s.reason): s.count for s in taken}
        assert counts == {(hour, "red", "expired"): 2, (hour, "green", "ok"): 1,
                          (hour, "red", "unreadable"): 1, (hour + 3600, "red", "expired"): 1}
        first = next(s for s in taken if s.reason == "expired" and s.hour == hour)
        assert (first.first, first.last) == (hour + 10, hour + 20)
        # sealed: a later overflow of the same hour starts a new summary, the
        # taken one is frozen (a retry sends the same id with the same count)
        box.add("scan-0105", TOPIC, scan("scan-0105", "red", "expired", hour + 50))
        again = {s.id: s for s in box.take_summaries(10)}
        assert again[first.id].count == 2
        assert len(again) == 5
        for s in taken:
            box.remove_summary(s.id)
            box.remove_summary(s.id)
        assert box.summaries() == 1 and box.overflow() == 6
        # room again: full rows again
        box.remove("scan-0000")
        assert box.add("scan-0200", TOPIC, scan("scan-0200")) is True


def test_threads_add_while_another_removes(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 10_000)
    added: list[str] = []
    removed: set[str] = set()
    done = threading.Event()
    lock = threading.Lock()

    def producer(n):
        for i in range(40):
            sid = f"scan-{n}-{i:04d}"
            box.add(sid, TOPIC, scan(sid))
            with lock:
                added.append(sid)

    def consumer():
        while not done.is_set() or box.depth():
            rows = box.pending(7)
            box.remove_many(r.scan_id for r in rows)
            removed.update(r.scan_id for r in rows)
            time.sleep(0.001)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
    reader = threading.Thread(target=consumer)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(20)
    assert not reader.is_alive()
    assert box.depth() == 0
    assert removed == set(added) and len(added) == 120
    box.close()


_KILLED_WRITER = r"""
import sys
from device.outbox import Outbox
box = Outbox(sys.argv[1], 1_000_000)
i = 0
while True:
    sid = f"{sys.argv[2]}-{i:06d}"
    box.add(sid, "gg/v1/kiosk/k1/scan", b'{"id":"%s"}' % sid.encode())
    sys.stdout.write(sid + "\n")   # only after add() returned
    sys.stdout.flush()
    i += 1
"""


def test_every_returned_add_survives_kill_9(tmp_path):
    path = tmp_path / "o.sqlite"
    seen: list[str] = []
    for round_ in range(2):  # the second run appends to a file that was killed into
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path), f"run{round_}"],
                                stdout=subprocess.PIPE, cwd=ROOT, text=True)
        lines = []
        while len(lines) < 40 + 20 * round_:
            line = proc.stdout.readline()
            assert line, "writer died early"
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rest = proc.stdout.read()
        proc.stdout.close()
        lines += rest.splitlines(keepends=True)
        # a line cut by the kill has no newline: its add() returned, but we cannot
        # be sure which id it names, so only complete lines count
        seen += [ln.strip() for ln in lines if ln.endswith("\n")]
        with Outbox(path, 1_000_000) as box:
            present = {r.scan_id for r in box.pending(100_000)}
        missing = [sid for sid in seen if sid not in present]
        assert not missing, f"round {round_}: adds that returned but are gone: {missing[:5]}"
        # nothing half-written: every row is a whole message
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for (payload,) in db.execute("SELECT payload FROM outbox"):
            json.loads(payload)
        db.close()

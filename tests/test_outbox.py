"""The durable outbox: order, idempotence, sequence numbers, confirmations, bounds,
migration, threads, and kill -9."""

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


def test_add_pending_oldest_first_and_confirm_is_idempotent(outbox):
    ids = [f"scan-{i:04d}" for i in (3, 1, 2, 0)]  # insertion order, not id order
    for sid in ids:
        assert outbox.add(sid, TOPIC, scan(sid)) is True
    assert outbox.depth() == 4
    rows = outbox.pending(10)
    assert [r.scan_id for r in rows] == ids
    assert rows[0].topic == TOPIC and rows[0].payload == scan(ids[0]) and rows[0].attempts == 0
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert [r.scan_id for r in outbox.pending(2)] == ids[:2]
    assert set(outbox.confirm([ids[1]])) == {ids[1]}
    assert outbox.confirm([ids[1]]) == {}
    assert outbox.confirm(["never-added"]) == {}
    assert [r.scan_id for r in outbox.pending(10)] == [ids[0], ids[2], ids[3]]
    assert outbox.depth() == 3
    gone = outbox.confirm([ids[0], ids[2], "nope", ids[0]])
    assert set(gone) == {ids[0], ids[2]} and outbox.depth() == 1
    # the time each row was added: the reporter's confirmation latency starts there
    assert all(time.time() - 60 < created <= time.time() for created in gone.values())


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
        box.confirm(["scan-0002"])
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
        # only a sealed (sent) summary can be confirmed: the open one's count may grow
        box.add("scan-0106", TOPIC, scan("scan-0106", "red", "expired", hour + 60))
        (open_id,) = box._conn().execute("SELECT id FROM overflow WHERE sealed=0").fetchone()
        assert box.confirm_summaries([open_id]) == 0
        assert box.confirm_summaries([s.id for s in taken]) == 4
        assert box.confirm_summaries([s.id for s in taken] + ["s0000000000000000"]) == 0
        assert box.summaries() == 2 and box.overflow() == 7
        assert box.seq() == 3  # overflowed decisions get no seq: they are no rows
        # room again: full rows again
        box.confirm(["scan-0000"])
        assert box.add("scan-0200", TOPIC, scan("scan-0200")) is True
        assert box.get("scan-0200").seq == 4


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
            box.confirm(r.scan_id for r in rows)
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
    assert box.seq() == 120 and box.confirmed() == 120
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
        # every row kept its number, none was given twice, the last one is on record
        seqs = [s for (s,) in db.execute("SELECT seq FROM outbox ORDER BY rowid")]
        assert seqs == list(range(1, len(seqs) + 1))
        assert db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0] == len(seqs)
        db.close()


# --- sequence numbers, the reporter's cursor, the watermark, the migration ------------------
def built(scan_id: str, seq, ts=1633420800.0) -> bytes:
    return messages.encode(messages.scan(
        scan_id=scan_id, kiosk="k1", ts=ts, decision="red", reason="expired", sub_reason=None,
        cert_type="v", cert_hash=None, holder=None, policy="hcmc-2021", seq=seq))


def test_the_payload_carries_the_seq_given_inside_add(outbox):
    calls = []

    def builder(sid):
        def build(seq):
            calls.append((sid, seq))
            return built(sid, seq)
        return build

    for i in range(3):
        assert outbox.add(f"scan-{i:04d}", TOPIC, builder(f"scan-{i:04d}"))
    assert calls == [("scan-0000", 1), ("scan-0001", 2), ("scan-0002", 3)]
    for row in outbox.pending(10):
        doc = messages.parse_scan(row.payload, "k1")
        assert doc["seq"] == row.seq == row.cursor and doc["id"] == row.scan_id
    # idempotent: the same scan again is not built again and takes no number
    assert outbox.add("scan-0001", TOPIC, builder("scan-0001"))
    assert len(calls) == 3 and outbox.seq() == 3
    # a builder that fails leaves nothing behind and uses up no number
    with pytest.raises(RuntimeError):
        outbox.add("scan-0009", TOPIC, lambda seq: (_ for _ in ()).throw(RuntimeError("x")))
    assert outbox.get("scan-0009") is None and outbox.seq() == 3
    assert outbox.add("scan-0010", TOPIC, builder("scan-0010")) and outbox.seq() == 4
    with pytest.raises(TypeError):
        outbox.add("scan-0011", TOPIC, lambda seq: "not bytes")
    assert outbox.seq() == 4 and outbox.depth() == 4


def test_an_overflowing_builder_is_described_without_a_seq(tmp_path):
    with Outbox(tmp_path / "o.sqlite", max_rows=1) as box:
        assert box.add("scan-0000", TOPIC, lambda seq: built("scan-0000", seq))
        seen = []
        assert box.add("scan-0001", TOPIC, lambda seq: seen.append(seq) or built(
            "scan-0001", seq, ts=1633424400.5)) is False
        assert seen == [None] and box.seq() == 1
        (summary,) = box.take_summaries()
        assert (summary.hour, summary.decision, summary.reason) == (1633424400, "red", "expired")


def test_seq_is_never_given_twice_and_the_cursor_never_skips_a_row(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path, 100) as box:
        for i in range(3):
            box.add(f"a-{i:04d}", TOPIC, scan(f"a-{i:04d}"))
        rows = box.pending_after(None, 10)
        cursor = rows[-1].cursor
        assert box.pending_after(cursor, 10) == []
        # the newest row is confirmed: SQLite would give its rowid to the next row
        box.confirm([rows[-1].scan_id])
        box.add("b-0000", TOPIC, scan("b-0000"))
        assert [(r.scan_id, r.seq) for r in box.pending_after(cursor, 10)] == [("b-0000", 4)]
        box.confirm([r.scan_id for r in box.pending(10)])
        assert box.depth() == 0 and box.seq() == 4 and box.confirmed() == 4
    with Outbox(path, 100) as box:  # the number is durable, also with no row left
        assert box.seq() == 4 and box.confirmed() == 4
        box.add("c-0000", TOPIC, scan("c-0000"))
        assert box.get("c-0000").seq == 5 and box.confirmed() == 4
        # paging through with the cursor: each row once, in order
        for i in range(1, 8):
            box.add(f"c-{i:04d}", TOPIC, scan(f"c-{i:04d}"))
        got, cursor = [], None
        while page := box.pending_after(cursor, 3):
            got += [r.seq for r in page]
            cursor = page[-1].cursor
        assert got == list(range(5, 13))
        assert box.pending_after(cursor, 0) == []


def test_the_watermark_with_confirmations_out_of_order(outbox):
    assert outbox.watermarks() == (0, 0)
    ids = [f"scan-{i:04d}" for i in range(1, 6)]  # seq 1..5
    for sid in ids:
        outbox.add(sid, TOPIC, scan(sid))
    steps = [("scan-0003", 0), ("scan-0001", 1), ("scan-0005", 1), ("scan-0002", 3),
             ("scan-0002", 3), ("scan-0004", 5)]
    for sid, expected in steps:
        outbox.confirm([sid])
        assert outbox.confirmed() == expected, sid
        assert outbox.watermarks() == (5, expected)
    outbox.add("scan-0006", TOPIC, scan("scan-0006"))
    assert outbox.watermarks() == (6, 5)


_OLD_SCHEMA = """
CREATE TABLE outbox (scan_id TEXT PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
                     created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE overflow (id TEXT PRIMARY KEY, hour INTEGER NOT NULL, decision TEXT NOT NULL,
                       reason TEXT NOT NULL, count INTEGER NOT NULL, first REAL NOT NULL,
                       last REAL NOT NULL, sealed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX overflow_open ON overflow (hour, decision, reason, sealed);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_an_outbox_older_than_seq_is_migrated_in_place(tmp_path):
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    old = [f"old-{i:04d}" for i in range(4)]
    for sid in old:
        db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, 2)", (sid, TOPIC, scan(sid), 1.0e9))
    db.execute("INSERT INTO meta VALUES ('overflow', 7)")
    db.commit()
    db.close()
    with Outbox(path, 100) as box:
        assert box.depth() == 4 and box.overflow() == 7 and box.seq() == 0
        rows = box.pending(10)
        assert [(r.scan_id, r.seq, r.payload, r.attempts) for r in rows] == \
            [(sid, None, scan(sid), 2) for sid in old]
        assert box.watermarks() == (0, 0)  # rows without seq are outside the watermark
        for i in range(3):
            box.add(f"new-{i:04d}", TOPIC, lambda seq, i=i: built(f"new-{i:04d}", seq))
        # the old rows still go first, then the new ones, and a cursor walks across both
        got, cursor = [], None
        while page := box.pending_after(cursor, 3):
            got += [(r.scan_id, r.seq) for r in page]
            cursor = page[-1].cursor
        assert got == [(sid, None) for sid in old] + [(f"new-{i:04d}", i + 1) for i in range(3)]
        box.confirm(["old-0003", "new-0000"])
        assert box.watermarks() == (3, 1)
        box.confirm(["old-0000"])
        box.add("new-0003", TOPIC, scan("new-0003"))
        assert [r.scan_id for r in box.pending_after(rows[0].cursor, 10)] == \
            ["old-0001", "old-0002", "new-0001", "new-0002", "new-0003"]
    with Outbox(path, 100) as box:  # migrated once: opening again changes nothing
        assert box.seq() == 4 and box.depth() == 5
        assert box.get("old-0001").seq is None and box.get("new-0003").seq == 4

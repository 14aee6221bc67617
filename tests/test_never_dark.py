"""Never dark (issue 14): a kiosk whose disk is full still answers every person, shows the
storage fault when nobody scans, tells the fleet in its heartbeats, keeps the decisions
in memory (bounded, the loss counted) and delivers them once the disk takes writes again.

Real parts: the kiosk in this process (device.kiosk.Kiosk) with gpiozero's MockFactory
lights, its data directory on a small tmpfs that the test fills (we run as root), a real
Mosquitto, and tests/helpers/confirmer.py standing in for the ingest. Where mounting is
refused, the outbox's SQLite is held at its size with PRAGMA max_page_count instead
(the test says so in its output): the same "database or disk is full" error, for the
outbox alone. GG_TEST_NO_TMPFS=1 forces that fallback.
"""

import json
import os
import sqlite3
import subprocess
import threading
import time
import uuid

import pytest

from device import config as config_module
from device.faults import Faults
from device.kiosk import Kiosk
from device.outbox import Outbox
from greengate import messages
from tests.broker import Subscriber, wait_until
from tests.test_kiosk_e2e import KIOSK, Site, mint

HEARTBEATS = messages.heartbeat_topic(KIOSK)


class Disk:
    """The kiosk's data directory on a tmpfs of `size`; fill() leaves it no free byte,
    free() gives the space back."""

    def __init__(self, path, size="4m"):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        if os.environ.get("GG_TEST_NO_TMPFS"):  # to exercise the fallback where mount works
            self.mounted, self.why = False, "GG_TEST_NO_TMPFS is set"
        else:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                   str(path)], capture_output=True, text=True)
            self.mounted = done.returncode == 0
            self.why = done.stderr.strip()
        self.outbox = None  # the fallback holds this outbox's file at its size

    def fill(self) -> None:
        if not self.mounted:
            with self.outbox._lock:  # the kiosk's threads use this connection too
                db = self.outbox._db
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={pages}")
            return
        # An empty WAL: the next commit must grow it, and there is no room to grow into.
        with sqlite3.connect(self.path / "outbox.sqlite") as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (65536, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free(self) -> None:
        if not self.mounted:
            with self.outbox._lock:
                self.outbox._db.execute("PRAGMA max_page_count=1073741823")
            return
        (self.path / "filler").unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "data")
    if not d.mounted:
        print(f"tmpfs refused ({d.why}): the outbox is held full with PRAGMA max_page_count")
    yield d
    d.close()


@pytest.fixture
def running(tmp_path, broker, es256, disk):
    """A kiosk running in this process on the tmpfs data directory, lists in hand."""
    from tests.helpers.confirmer import Confirmer
    fleet = Confirmer(broker).start()
    beats = Subscriber(broker, [HEARTBEATS]).start()
    site = Site(tmp_path, broker, es256)
    assert site.data == disk.path
    site.publish_lists()
    text, _ = mint(es256)
    site.frame("first", text)
    path = site.config(heartbeat=1.0, cooldown=0.2)
    path.write_text(path.read_text().replace(
        'backend = "mock"', 'backend = "mock"\ngreen_seconds = 0.3\nred_seconds = 0.3'))
    kiosk = Kiosk(config_module.load(path))
    disk.outbox = kiosk.outbox
    kiosk.reporter.summary_poll = 1.0  # the loss's summary goes out within a second, not 30
    shown: list[str] = []
    show = kiosk.indicator.show
    kiosk.indicator.show = lambda d: (shown.append(d.decision), show(d))
    thread = threading.Thread(target=kiosk.run, kwargs={"keep_running": True}, daemon=True)
    thread.start()
    wait_until(lambda: shown and kiosk.outbox.depth() == 0 and fleet.scan_ids(), 30,
               "the first frame decided and confirmed")
    yield kiosk, fleet, beats, es256, shown
    kiosk.stop()
    thread.join(15)
    assert not thread.is_alive()
    beats.close()
    fleet.close()


def pins(kiosk):
    devices = kiosk.indicator._devices
    return devices["green"].pin, devices["red"].pin


def decide(kiosk, text) -> str:
    """One person at the kiosk: returns the pattern lit at once, checked on the pins."""
    decision = kiosk.pipeline.process(text, time.time())
    assert decision is not None
    green, red = pins(kiosk)
    assert kiosk.indicator.pattern == decision.decision
    assert (green.state, red.state) == (decision.green, not decision.green)
    return decision.decision


def heartbeat_with(beats, since, predicate):
    for m in reversed(beats.messages):
        if m.topic == HEARTBEATS and m.at >= since:
            doc = messages.parse_heartbeat(m.payload, KIOSK)
            if predicate(doc):
                return doc
    return None


def test_a_full_disk_never_leaves_the_kiosk_dark_or_silent(running, disk):
    kiosk, fleet, beats, issuer, shown = running
    greens = [mint(issuer)[0] for _ in range(6)]
    reds = [f"HC1:NOT-A-CODE-{uuid.uuid4().hex}" for _ in range(6)]

    # --- phase 1: the disk fills; every decision still lights, and is kept in memory
    # (the fleet holds its confirmations back, or the rows would leave memory at once)
    fleet.hold()
    disk.fill()
    t0 = time.monotonic()
    made = []
    for i in range(40):  # until the outbox meets the full disk (the WAL may have room)
        made.append(decide(kiosk, f"HC1:NOT-A-CODE-{uuid.uuid4().hex}"))
        if kiosk.outbox.failing:
            break
    assert kiosk.outbox.failing and "full" in kiosk.outbox.failing
    assert kiosk.faults.worst() == ("storage", kiosk.outbox.failing)
    for g, r in zip(greens[:3], reds[:3]):
        assert decide(kiosk, g) == "green"
        assert decide(kiosk, r) == "red"
    assert kiosk.outbox.memory() >= 7 and kiosk.outbox.lost() == 0
    held = {row.scan_id for row in kiosk.outbox.pending(10_000)}
    assert len(held) == kiosk.outbox.depth() >= 7

    # nobody scans: the storage pattern, red flashes only, never green
    wait_until(lambda: kiosk.indicator.pattern == "storage_fault", 5, "the storage pattern")
    green, red = pins(kiosk)
    green.clear_states()
    red.clear_states()
    time.sleep(2.3)
    assert not any(s.state for s in green.states)
    flashes = [s for s in red.states if s.state]
    assert len(flashes) >= 2, red.states

    # the fleet is told: a heartbeat on the broker names the fault and the count
    wait_until(lambda: heartbeat_with(beats, t0, lambda d: any(
        f["kind"] == "storage" for f in d.get("faults", [])) and d["memory"] >= 6), 10,
        "a heartbeat carrying the storage fault")
    doc = heartbeat_with(beats, t0, lambda d: d.get("faults"))
    assert {"kind": "storage", "detail": kiosk.outbox.failing} in doc["faults"]

    # the memory rows went out at once: the link works, only the disk does not
    wait_until(lambda: held <= fleet.scan_ids(), 20, "the memory rows reached the broker")

    # --- space comes back: the memory moves to disk, the fault ends, nothing lost
    disk.free()
    wait_until(lambda: kiosk.faults.worst() is None, 10, "the storage fault to end")
    assert kiosk.outbox.memory() == 0 and kiosk.outbox.lost() == 0
    with sqlite3.connect(disk.path / "outbox.sqlite") as db:
        on_disk = {r[0] for r in db.execute("SELECT scan_id FROM outbox")}
    assert held <= on_disk
    fleet.release()
    wait_until(lambda: kiosk.outbox.depth() == 0, 20, "every decision confirmed")
    wait_until(lambda: kiosk.indicator.pattern is None, 5, "the light to go idle")
    t1 = time.monotonic()
    wait_until(lambda: heartbeat_with(beats, t1, lambda d: d.get("faults") == []), 10,
               "a clean heartbeat")

    # --- phase 2: full again, with room in memory for 2: the rest is lost, and counted
    kiosk.outbox.memory_rows = 2
    fleet.hold()  # so the memory rows are still there when the disk comes back
    disk.fill()
    for i in range(40):
        decide(kiosk, f"HC1:NOT-A-CODE-{uuid.uuid4().hex}")
        if kiosk.outbox.failing:
            break
    assert kiosk.outbox.failing
    before = kiosk.outbox.memory()
    for g in greens[3:]:
        assert decide(kiosk, g) == "green"  # lost or not, the person gets the answer
    assert kiosk.outbox.memory() == 2
    lost = 3 - (2 - before)
    assert kiosk.outbox.lost() == lost
    t2 = time.monotonic()
    wait_until(lambda: heartbeat_with(beats, t2, lambda d: d.get("lost") == lost), 10,
               "a heartbeat counting the loss")
    memory_ids = {row.scan_id for row in kiosk.outbox.pending(10_000)} - fleet.scan_ids()
    disk.free()
    wait_until(lambda: kiosk.outbox.memory() == 0 and kiosk.outbox.failing is None, 10,
               "the memory rows moved to disk")
    assert kiosk.outbox.lost() == lost  # now on disk, and in the overflow count
    with sqlite3.connect(disk.path / "outbox.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key='lost'").fetchone()[0] == lost
    fleet.release()
    wait_until(lambda: memory_ids <= fleet.scan_ids(), 20, "the memory rows delivered")
    wait_until(lambda: sum(fleet.summaries.values()) >= 1 and kiosk.outbox.summaries() == 0,
               60, "the loss reported as a summary and confirmed")
    wait_until(lambda: kiosk.outbox.depth() == 0, 20, "every decision confirmed")
    assert shown.count("green") >= 7


def test_the_outbox_holds_rows_in_memory_while_sqlite_refuses(tmp_path):
    """The outbox alone, held full with max_page_count: memory rows are read, confirmed
    and flushed like disk rows; seqs stay unique and in order."""
    faults = Faults()
    box = Outbox(tmp_path / "o.sqlite", 1000, faults=faults, memory_rows=3)
    try:
        box.add("a1", "t", b"one")
        box._db.execute(f"PRAGMA max_page_count={box._db.execute('PRAGMA page_count').fetchone()[0]}")
        added = []
        for i in range(200):
            added.append(box.add(f"b{i}", "t", lambda seq: json.dumps({"seq": seq}).encode(),
                                 decision="green", reason="ok", ts=1633420800.0))
            if box.failing:
                break
        assert faults.is_set("storage") and box.failing
        assert box.add("c1", "t", b"{}", decision="red", reason="x", ts=1633420800.0)
        assert box.add("c2", "t", b"{}", decision="red", reason="x", ts=1633420800.0)
        assert not box.add("c3", "t", b"{}", decision="red", reason="x", ts=1633420800.0)
        assert box.memory() == 3 and box.lost() == 1
        rows = box.pending(10_000)
        seqs = [r.seq for r in rows]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert box.seq() == seqs[-1]
        memory = rows[-3:]
        assert box.get(memory[0].scan_id) == memory[0]
        # a confirmed memory row goes at once; a confirmed disk row is not resent
        box.confirm([memory[0].scan_id, "a1"])
        assert box.get(memory[0].scan_id) is None and box.get("a1") is None
        assert "a1" not in {r.scan_id for r in box.pending(10_000)}
        assert box.depth() == len(rows) - 2
        assert box.take_summaries() == []  # nothing sealed while the disk cannot seal
        box._db.execute("PRAGMA max_page_count=1073741823")
        assert box.flush() and not faults.is_set("storage")
        assert box.memory() == 0 and box.lost() == 1 and box.overflow() == 1
        assert [r.seq for r in box.pending(10_000)] == seqs[1:][:-3] + [memory[1].seq,
                                                                        memory[2].seq]
        [summary] = box.take_summaries()
        assert (summary.decision, summary.reason, summary.count) == ("red", "x", 1)
    finally:
        box.close()
    again = Outbox(tmp_path / "o.sqlite", 1000)
    try:
        assert again.seq() == seqs[-1] and again.lost() == 1
        assert again.get("a1") is None
    finally:
        again.close()


def test_an_outbox_that_cannot_be_opened_holds_rows_in_memory(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the data directory should be")
    faults = Faults()
    box = Outbox(blocked / "o.sqlite", 100, faults=faults)
    try:
        assert faults.is_set("storage")
        assert box.add("x1", "t", b"{}") and box.memory() == 1
        assert [r.scan_id for r in box.pending()] == ["x1"]
        assert box.watermarks() == (1, 0) and box.overflow() == 0
        assert not box.flush()
    finally:
        box.close()
    with pytest.raises(OSError):  # without a fault registry (tools): an error, as before
        Outbox(blocked / "o.sqlite", 100)


def test_heartbeat_faults_are_validated():
    base = dict(kiosk="k1", session=1, ts=1633420800.0, uptime=1.0, bundles={}, outbox=0,
                clock="synced", lists="fresh", cpu_temp=None)
    doc = messages.heartbeat(**base, faults=[{"kind": "storage", "detail": "disk full"}],
                             memory=3, lost=1)
    parsed = messages.parse_heartbeat(messages.encode(doc), "k1")
    assert parsed["faults"] == [{"kind": "storage", "detail": "disk full"}]
    assert (parsed["memory"], parsed["lost"]) == (3, 1)
    # an old kiosk's heartbeat has none of the fields
    assert "faults" not in messages.parse_heartbeat(messages.encode(messages.heartbeat(**base)),
                                                    "k1")
    bad = [
        [{"kind": "disk", "detail": "x"}],  # unknown kind
        [{"kind": "storage", "detail": "x" * 201}],
        [{"kind": "storage", "detail": "a\nb"}],
        [{"kind": "storage", "detail": "x"}, {"kind": "storage", "detail": "y"}],
        [{"kind": k, "detail": "x"} for k in messages.FAULT_KINDS] + [{"kind": "clock",
                                                                       "detail": "x"}],
        [{"kind": "storage"}],
        [{"kind": "storage", "detail": "x", "more": 1}],
        ["storage"],
        {"kind": "storage", "detail": "x"},
        [{"kind": 1, "detail": "x"}],
    ]
    for faults in bad:
        doc = dict(messages.heartbeat(**base), faults=faults)
        with pytest.raises(messages.MessageError):
            messages.parse_heartbeat(messages.encode(doc), "k1")
    for field, value in (("memory", -1), ("lost", True), ("lost", 1.5)):
        with pytest.raises(messages.MessageError):
            messages.parse_heartbeat(messages.encode(dict(messages.heartbeat(**base),
                                                          **{field: value})), "k1")


def test_the_other_writers_report_a_full_disk_instead_of_raising(disk, es256):
    """clock.json, the session counter and bundle files on the full tmpfs: each reports
    to its hook and carries on; the same writers without a hook raise as before."""
    from datetime import timedelta

    from device.clock import Clock
    from device.session import SessionCounter
    from device.state import BundleStore
    from greengate.bundle import load_public_key
    from tests.fleetkit import FleetKit

    if not disk.mounted:
        pytest.skip(f"needs a tmpfs to fill ({disk.why})")
    fleet = FleetKit("e2e")
    seen = []
    clock = Clock(disk.path / "clock.json", 3600)
    clock.on_write = seen.append
    session = SessionCounter(disk.path / "session", on_write=seen.append)
    store = BundleStore(disk.path / "bundles", load_public_key(fleet.public_pem), "e2e",
                        "hcmc-2021", timedelta(hours=72))
    store.on_write = seen.append
    issued = int(time.time()) - 60
    assert session() == 1 and seen == [None]
    clock.raise_floor(issued)
    assert seen == [None, None]
    seen.clear()

    disk.outbox = None
    with sqlite3.connect(disk.path / "outbox.sqlite") as db:  # fill() checkpoints it
        db.execute("PRAGMA journal_mode=WAL")
    disk.fill()
    clock.raise_floor(issued + 10)  # no exception: reported, the floor holds in memory
    assert clock.floor == issued + 10
    number = session()
    assert number >= int(time.time()) - 5  # above every number counted from 1
    assert session() == number + 1  # and still increasing without the disk
    ok, why = store.offer(fleet.trust(1, issued, es256))
    assert not ok and why.startswith("cannot store")
    assert seen and all(isinstance(e, OSError) and e.errno == 28 for e in seen)
    with pytest.raises(OSError):
        Clock(disk.path / "clock.json", 3600).raise_floor(issued + 20)

    disk.free()
    seen.clear()
    clock.persist()
    assert session() == number + 2  # the number in memory, now saved
    ok, why = store.offer(fleet.trust(1, issued, es256))
    assert ok, why
    assert seen == [None, None]
    assert json.loads((disk.path / "clock.json").read_text())["floor"] == issued + 10
    assert int((disk.path / "session").read_text()) == number + 2

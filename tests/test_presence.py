"""Kiosk presence (fleet/presence.py): the state machine on its own, its database
writer on SQLite and PostgreSQL, and the whole path with a real Mosquitto, real
kiosks (device.reporter.Reporter, tests/helpers/scan_producer.py) and the ingest
worker tracking presence.
"""

import signal
import subprocess
import sys
import time

import pytest

from device.outbox import Outbox
from device.reporter import Reporter
from fleet import presence as presence_db
from fleet.models import DEGRADED, NEVER_SEEN, OFFLINE, ONLINE, RETIRED, Kiosk, Outage
from fleet.presence import LOST, SILENT, STOPPED, Tracker, degradation
from greengate import messages
from tests.ingestkit import (ROOT, KioskClient, Workers, events, ingest_config, kiosk, outages,
                             settle, wait_for)

T0 = 1_700_000_000.0


def online(session):
    return {"session": session, "state": "online"}


def offline(session, cause=None):
    doc = {"session": session, "state": "offline"}
    if cause:
        doc["cause"] = cause
    return doc


def beat(session, lists="fresh", clock="synced", outbox=0):
    return messages.heartbeat(kiosk="k1", session=session, ts=T0, uptime=5.0,
                              bundles={"trust": 1, "policy": 1, "status": 1}, outbox=outbox,
                              clock=clock, lists=lists, cpu_temp=None)


def transitions(tracker):
    return [(c.previous, c.state, c.detail) for c in tracker.take_changes()
            if c.previous is not None]


@pytest.fixture
def tracker():
    t = Tracker(keepalive=10.0, backlog=100)  # timeout 15 s
    t.resume(T0)
    return t


# --- the wire: a stop says so, a will does not ------------------------------------------
def test_a_graceful_stop_is_marked_and_the_will_is_not():
    stop = messages.presence(kiosk="k1", session=2, state="offline", cause="stopped")
    will = messages.presence(kiosk="k1", session=2, state="offline")
    assert messages.parse_presence(messages.encode(stop), "k1")["cause"] == "stopped"
    assert "cause" not in will  # byte for byte what kiosks without the field sent
    for bad in ("x" * 41, 5):
        with pytest.raises(messages.MessageError, match="cause"):
            messages.parse_presence(messages.encode({**stop, "cause": bad}), "k1")


# --- the state machine ----------------------------------------------------------------
def test_first_contact_then_heartbeats_change_nothing(tracker):
    tracker.presence("k1", online(3), T0)
    changes = tracker.take_changes()
    assert [(c.previous, c.state, c.session, c.create) for c in changes] == \
        [(NEVER_SEEN, ONLINE, 3, True)]  # a kiosk the database did not have: created
    # the connection's first heartbeat is written at once (the pages show its bundles)
    tracker.heartbeat("k1", beat(3), T0)
    assert [(c.previous, c.state, c.heartbeat) for c in tracker.take_changes()] == \
        [(None, ONLINE, beat(3))]
    for i in range(1, 5):
        tracker.heartbeat("k1", beat(3), T0 + 5 * i)
        assert tracker.sweep(T0 + 5 * i + 1) == []
    assert tracker.take_changes() == []  # nothing written per heartbeat...
    seen = tracker.take_seen()  # ... only last_seen / heartbeat, flushed in bulk
    assert seen == [("k1", T0 + 20, beat(3))]
    assert tracker.take_seen() == []


def test_bundles_arriving_after_the_first_heartbeat_are_written_at_once(tracker):
    """A kiosk's first heartbeat goes out on connecting, before its retained bundles are
    applied: the heartbeat that first holds them must reach the database at once, not at
    the next flush, or its page shows "missing" for minutes. Later versions (every status
    update) are flushed in bulk as before."""
    tracker.presence("k1", online(3), T0)
    tracker.take_changes()
    empty = {**beat(3), "bundles": {"trust": None, "policy": None, "status": None}}
    tracker.heartbeat("k1", empty, T0 + 1)
    assert [c.heartbeat["bundles"] for c in tracker.take_changes()] == [empty["bundles"]]
    tracker.heartbeat("k1", beat(3), T0 + 1.3)
    assert [c.heartbeat["bundles"] for c in tracker.take_changes()] == \
        [{"trust": 1, "policy": 1, "status": 1}]
    newer = {**beat(3), "bundles": {"trust": 1, "policy": 1, "status": 2}}
    tracker.heartbeat("k1", newer, T0 + 60)
    assert tracker.take_changes() == []
    assert tracker.take_seen() == [("k1", T0 + 60, newer)]


@pytest.mark.parametrize("kwargs, detail", [
    ({"lists": "stale"}, "lists stale"),
    ({"lists": "missing"}, "lists missing"),
    ({"clock": "unknown"}, "clock unknown"),
    ({"outbox": 101}, "outbox over 100"),
    ({"lists": "stale", "clock": "unknown", "outbox": 5000},
     "lists stale; clock unknown; outbox over 100"),
])
def test_degraded_from_heartbeat_content(tracker, kwargs, detail):
    tracker.heartbeat("k1", beat(1), T0)
    tracker.heartbeat("k1", beat(1, **kwargs), T0 + 1)
    tracker.heartbeat("k1", beat(1, **kwargs), T0 + 2)  # the same reason: not written again
    tracker.heartbeat("k1", beat(1), T0 + 3)
    assert transitions(tracker) == [(NEVER_SEEN, ONLINE, ""), (ONLINE, DEGRADED, detail),
                                    (DEGRADED, ONLINE, "")]


def test_clock_floor_and_a_backlog_at_the_limit_are_not_degraded():
    assert degradation(beat(1, clock="floor", outbox=100), 100) == ""


def test_the_kiosks_own_faults_are_the_cause(tracker):
    def faulty(*faults, **kwargs):
        doc = messages.heartbeat(kiosk="k1", session=1, ts=T0, uptime=5.0,
                                 bundles={"trust": 1, "policy": 1, "status": 1}, outbox=0,
                                 clock=kwargs.get("clock", "synced"),
                                 lists=kwargs.get("lists", "fresh"), cpu_temp=None,
                                 faults=[{"kind": k, "detail": d} for k, d in faults],
                                 memory=3, lost=0)
        return messages.parse_heartbeat(messages.encode(doc), "k1")

    tracker.heartbeat("k1", faulty(), T0)  # a new kiosk without faults: online
    tracker.heartbeat("k1", faulty(("storage", "database or disk is full")), T0 + 1)
    tracker.heartbeat("k1", faulty(("storage", "database or disk is full"),
                                   ("lists", "missing trust bundle"), lists="missing"), T0 + 2)
    tracker.heartbeat("k1", faulty(), T0 + 3)
    assert transitions(tracker) == [
        (NEVER_SEEN, ONLINE, ""),
        (ONLINE, DEGRADED, "storage: database or disk is full"),
        (DEGRADED, ONLINE, "")]
    # the detail changed with the second fault (written, no transition): no "lists missing"
    # twice, the kiosk's own words win over the derived ones
    assert degradation(faulty(("storage", "database or disk is full"),
                              ("lists", "missing trust bundle"), lists="missing"), 100) == \
        "storage: database or disk is full; lists: missing trust bundle"
    assert degradation(faulty(("source", "no camera"), clock="unknown"), 100) == \
        "source: no camera; clock unknown"


def test_will_and_graceful_stop_open_outages_that_close_on_return(tracker):
    tracker.presence("k1", online(1), T0)
    tracker.presence("k1", offline(1), T0 + 10)  # the last will: no cause
    tracker.presence("k1", online(2), T0 + 25)
    tracker.presence("k1", offline(2, "stopped"), T0 + 40)  # the kiosk said goodbye
    changes = tracker.take_changes()
    assert [(c.previous, c.state, c.detail, c.session) for c in changes] == [
        (NEVER_SEEN, ONLINE, "", 1), (ONLINE, OFFLINE, LOST, 1), (OFFLINE, ONLINE, "", 2),
        (ONLINE, OFFLINE, STOPPED, 2)]
    assert [(c.open_outage, c.cause, c.close_outage) for c in changes] == [
        (None, "", False), (T0 + 10, LOST, False), (None, "", True), (T0 + 40, STOPPED, False)]


def test_presence_of_an_older_session_is_ignored(tracker):
    tracker.presence("k1", online(5), T0)
    tracker.presence("k1", offline(4), T0 + 1)  # the will of the connection before
    tracker.heartbeat("k1", beat(4), T0 + 2)  # a late heartbeat of that one
    assert tracker.kiosks["k1"].state == ONLINE and tracker.kiosks["k1"].session == 5
    assert tracker.stats["stale"] == 2
    assert transitions(tracker) == [(NEVER_SEEN, ONLINE, "")]


def test_the_online_of_a_session_that_ended_does_not_bring_it_back(tracker):
    tracker.presence("k1", online(1), T0)
    tracker.presence("k1", offline(1), T0 + 1)
    tracker.presence("k1", online(1), T0 + 2, retained=True)  # the broker's stored copy
    tracker.presence("k1", offline(1), T0 + 3)  # and the will again
    tracker.heartbeat("k1", beat(1), T0 + 4)  # nothing of an ended session can follow
    assert transitions(tracker) == [(NEVER_SEEN, ONLINE, ""), (ONLINE, OFFLINE, LOST)]
    assert tracker.stats["stale"] == 1


def test_a_reconnect_keeps_the_state_and_writes_the_new_session(tracker):
    tracker.heartbeat("k1", beat(1, lists="stale"), T0)
    tracker.take_changes()
    tracker.presence("k1", online(2), T0 + 1)  # the will of 1 was lost or comes later
    changes = tracker.take_changes()
    assert [(c.previous, c.state, c.session) for c in changes] == [(None, DEGRADED, 2)]
    tracker.presence("k1", offline(1), T0 + 2)
    assert tracker.kiosks["k1"].state == DEGRADED


def test_silence_times_out_and_the_outage_starts_at_the_last_message(tracker):
    tracker.heartbeat("k1", beat(1), T0)
    tracker.heartbeat("k1", beat(1), T0 + 10)
    assert tracker.sweep(T0 + 24.9) == []  # 1.5 x keepalive = 15 s after the last one
    assert tracker.sweep(T0 + 25.0) == ["k1"]
    assert tracker.sweep(T0 + 60) == []
    tracker.presence("k1", offline(1), T0 + 61)  # the will after our verdict: no news
    tracker.heartbeat("k1", beat(1), T0 + 62)  # it was alive after all (same session)
    changes = tracker.take_changes()
    assert [(c.previous, c.state) for c in changes] == [
        (NEVER_SEEN, ONLINE), (ONLINE, OFFLINE), (OFFLINE, ONLINE)]
    assert changes[1].detail == f"{SILENT}: nothing heard for 15 s"
    assert changes[1].cause == SILENT
    assert changes[1].open_outage == T0 + 10 and changes[1].at == T0 + 25
    assert changes[2].close_outage and changes[2].at == T0 + 62


def test_no_verdicts_while_the_broker_is_out_of_reach(tracker):
    tracker.heartbeat("k1", beat(1), T0)
    tracker.suspend()
    assert tracker.sweep(T0 + 100) == []
    tracker.resume(T0 + 100)  # everyone gets a full timeout from now
    assert tracker.sweep(T0 + 114) == []
    assert tracker.sweep(T0 + 115) == ["k1"]


def test_retired_kiosks_stay_retired(tracker):
    tracker.load([("k9", RETIRED, T0 - 100, "retired", 3, None, None)])
    tracker.presence("k9", online(4), T0)
    tracker.heartbeat("k9", beat(4), T0 + 1)
    tracker.presence("k9", offline(4), T0 + 2)
    assert tracker.kiosks["k9"].state == RETIRED and tracker.take_changes() == []
    assert tracker.stats["retired"] == 3
    tracker.heartbeat("k1", beat(1), T0)  # retired by the API while we run
    tracker.retired(["k1"])
    tracker.heartbeat("k1", beat(1), T0 + 1)
    assert tracker.sweep(T0 + 100) == [] and tracker.kiosks["k1"].state == RETIRED


def restarted(state, session=7, last_seen=T0 - 30):
    """A tracker as a fleet restart makes it: the kiosk as the database had it."""
    t = Tracker(keepalive=10.0, backlog=100)
    t.load([("k1", state, T0 - 3600, "", session, last_seen, None)])
    t.resume(T0)
    return t


def test_restart_a_kiosk_still_there_makes_no_fake_outage():
    t = restarted(ONLINE)
    t.presence("k1", online(7), T0 + 0.1, retained=True)  # what the broker still holds
    assert t.sweep(T0 + 14) == []  # the restart does not count as silence
    t.heartbeat("k1", beat(7), T0 + 14)
    assert t.sweep(T0 + 28) == [] and transitions(t) == []


def test_restart_an_outage_during_the_downtime_is_not_hidden():
    t = restarted(ONLINE)
    t.presence("k1", offline(7), T0 + 0.1, retained=True)  # its will, kept by the broker
    changes = t.take_changes()
    assert [(c.previous, c.state, c.detail) for c in changes] == [(ONLINE, OFFLINE, LOST)]


def test_restart_a_kiosk_that_died_without_a_will_times_out_from_its_last_message():
    t = restarted(DEGRADED, last_seen=T0 - 30)
    assert t.sweep(T0 + 14.9) == []
    assert t.sweep(T0 + 15) == ["k1"]
    change = t.take_changes()[0]
    assert (change.previous, change.state) == (DEGRADED, OFFLINE)
    assert change.open_outage == T0 - 30  # when the fleet last heard it, before the restart
    assert "since the fleet (re)connected" in change.detail


def test_restart_a_kiosk_back_with_a_new_session_while_offline():
    t = restarted(OFFLINE)
    t.presence("k1", online(7), T0 + 0.1, retained=True)  # the same session: no news
    assert transitions(t) == []
    t.presence("k1", online(8), T0 + 0.2, retained=True)
    assert transitions(t) == [(OFFLINE, ONLINE, "")]


# --- the database writer (SQLite and PostgreSQL) -------------------------------------------
def test_writer_stores_transitions_events_and_outages(fleet_db, tracker):
    with fleet_db() as s:
        s.add_all([Kiosk(id="k1", state=NEVER_SEEN, detail="", session=0),
                   Kiosk(id="k3", state=RETIRED, detail="retired", session=2)])
        s.commit()
    tracker.load([("k1", NEVER_SEEN, None, "", 0, None, None)])
    tracker.heartbeat("k1", beat(1), T0)
    tracker.sweep(T0 + 16)
    tracker.presence("k1", online(2), T0 + 20)
    tracker.heartbeat("k2", beat(1), T0 + 21)  # not in the database: created
    tracker.heartbeat("k3", beat(3), T0 + 22)  # the API retired it: our memory is stale
    with fleet_db.kw["bind"].begin() as c:
        retired = presence_db.write(c, tracker.take_changes(), "test")
        presence_db.write_seen(c, tracker.take_seen())
    assert retired == ["k3"]
    k1 = kiosk(fleet_db, "k1")
    assert (k1.state, k1.state_since, k1.session, k1.last_seen) == (ONLINE, T0 + 20, 2, T0 + 20)
    assert k1.heartbeat is None  # a new session: the old heartbeat no longer describes it
    assert events(fleet_db, "k1") == [
        (NEVER_SEEN, ONLINE, 1, ""), (ONLINE, OFFLINE, 1, f"{SILENT}: nothing heard for 15 s"),
        (OFFLINE, ONLINE, 2, "")]
    (outage,) = outages(fleet_db, "k1")
    assert (outage.started, outage.ended, outage.cause) == (T0, T0 + 20, SILENT)
    k2 = kiosk(fleet_db, "k2")
    assert (k2.state, k2.heartbeat, k2.location_id, k2.deployment) == (ONLINE, beat(1), None,
                                                                       "test")
    k3 = kiosk(fleet_db, "k3")
    assert (k3.state, k3.session, events(fleet_db, "k3")) == (RETIRED, 2, [])


# --- end to end: real kiosks, real broker, the worker tracking presence ---------------------
@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite", max_rows=1000)
    yield box
    box.close()


@pytest.fixture
def reporters(broker, outbox):
    """reporters(kiosk id, **Reporter options) -> a started Reporter (stopped at the end)."""
    made = []

    def make(kid="k1", **options):
        options.setdefault("backoff", (0.25, 1.0))
        r = Reporter(outbox, kid, "localhost", broker.port, tls=broker.client_tls(kid),
                     **options)
        made.append(r)
        r.start()
        wait_for(lambda: r.connected, 10, f"kiosk {kid} connected")
        return r

    yield make
    for r in made:
        r.stop(timeout=10)


def state(fleet_db, kid="k1"):
    k = kiosk(fleet_db, kid)
    return None if k is None else (k.state, k.session)


def test_graceful_stop_and_return(fleet_config, broker, fleet_db, workers, reporters):
    workers.start(ingest_config(fleet_config, broker))
    r = reporters("k1")
    wait_for(lambda: state(fleet_db) == (ONLINE, 1), 15, "online, session 1")
    r.stop()
    wait_for(lambda: state(fleet_db) == (OFFLINE, 1), 15, "offline after the stop")
    r.start()
    wait_for(lambda: state(fleet_db) == (ONLINE, 2), 15, "online, session 2")
    assert events(fleet_db, "k1") == [(NEVER_SEEN, ONLINE, 1, ""), (ONLINE, OFFLINE, 1, STOPPED),
                                      (OFFLINE, ONLINE, 2, "")]
    (outage,) = outages(fleet_db, "k1")
    assert outage.cause == STOPPED and outage.ended is not None
    assert outage.ended > outage.started


def _producer(tmp_path, broker, *extra):
    files = broker.client_tls("k1")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "scan_producer.py"),
         "--outbox", str(tmp_path / "producer.sqlite"), "--log", str(tmp_path / "added.txt"),
         "--session-file", str(tmp_path / "session"), "--kiosk", "k1", "--port",
         str(broker.port), "--ca", files.ca, "--cert", files.cert, "--key", files.key,
         "--then", "hold", "--timeout", "60", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def test_kiosk_killed_the_will_opens_an_outage_and_its_return_closes_it(
        fleet_config, broker, fleet_db, workers, tmp_path):
    worker = workers.start(ingest_config(fleet_config, broker))
    for session in (1, 2):
        proc = _producer(tmp_path, broker, "--count", "5", "--prefix", f"run{session}")
        try:
            wait_for(lambda: state(fleet_db) == (ONLINE, session), 20, f"online {session}")
            proc.send_signal(signal.SIGKILL)  # no goodbye: the broker publishes the will
            proc.wait(10)
            wait_for(lambda: state(fleet_db) == (OFFLINE, session), 15, "offline (will)")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [e[:3] for e in events(fleet_db, "k1")] == [
        (NEVER_SEEN, ONLINE, 1), (ONLINE, OFFLINE, 1), (OFFLINE, ONLINE, 2), (ONLINE, OFFLINE, 2)]
    first, second = outages(fleet_db, "k1")
    assert first.cause == second.cause == LOST
    assert first.ended is not None and first.ended >= first.started
    assert second.ended is None  # still out
    # the gauges follow the database write: counted a moment after the row is there
    wait_for(lambda: worker.metrics.value("greengate_presence_kiosks", state=OFFLINE) == 1, 10,
             "the offline gauge")
    assert worker.metrics.value("greengate_presence_transitions_total", state=OFFLINE) == 2


# Mosquitto checks keepalives every few seconds (about 5 s here): one database is enough
# for what is the broker's behaviour
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_frozen_kiosk_is_offline_when_the_broker_gives_up_on_it(fleet_config, broker,
                                                                  fleet_db, workers, tmp_path):
    """A kiosk that stops answering without closing its connection (a hung Pi, a cable
    pulled somewhere upstream): the broker publishes the will after 1.5 x the kiosk's
    keepalive. The fleet's own silence timer is long here, so the will is what counts."""
    workers.start(ingest_config(fleet_config, broker))
    proc = _producer(tmp_path, broker, "--keepalive", "1")
    try:
        wait_for(lambda: state(fleet_db) == (ONLINE, 1), 20, "online")
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: state(fleet_db) == (OFFLINE, 1), 15, "offline (will after keepalive)")
        proc.send_signal(signal.SIGCONT)  # it wakes up, finds its connection gone, reconnects
        wait_for(lambda: state(fleet_db) == (ONLINE, 2), 20, "online, session 2")
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
    (outage,) = outages(fleet_db, "k1")
    assert (outage.cause, outage.ended is not None) == (LOST, True)


def test_a_stale_will_from_an_older_session_is_ignored(fleet_config, broker, fleet_db, workers,
                                                       reporters):
    worker = workers.start(ingest_config(fleet_config, broker))
    reporters("k1", session_source=iter(range(5, 99)).__next__)
    wait_for(lambda: state(fleet_db) == (ONLINE, 5), 15, "online, session 5")
    # the will of session 4's dead connection, delivered late (sent here with the kiosk's
    # own certificate, exactly as the broker would publish it)
    ghost = KioskClient(broker, "k1", client_id="k1-ghost")
    try:
        ghost.publish(messages.presence_topic("k1"),
                      messages.presence(kiosk="k1", session=4, state="offline"), retain=True)
        wait_for(lambda: worker.metrics.value("greengate_presence_stale_messages_total",
                                              kind="presence") == 1, 10, "the stale will seen")
    finally:
        ghost.close()
    settle()
    assert state(fleet_db) == (ONLINE, 5)
    assert outages(fleet_db, "k1") == [] and len(events(fleet_db, "k1")) == 1


def test_silence_times_out_and_a_heartbeat_brings_it_back(fleet_config, broker, fleet_db,
                                                          workers, reporters):
    config = ingest_config(fleet_config, broker, presence={"keepalive": 0.6, "sweep": 0.1})
    workers.start(config)
    # the kiosk's own MQTT keepalive is long: the broker sends no will, only the fleet's
    # heartbeat timer can notice that it went quiet (0.9 s here)
    r = reporters("k1", keepalive=60)

    def history():  # judged on the events, not on a state that changes again in 0.9 s
        return [e[:2] for e in events(fleet_db, "k1")]

    wait_for(lambda: history()[:2] == [(NEVER_SEEN, ONLINE), (ONLINE, OFFLINE)], 15,
             "online, then silent")
    (outage,) = outages(fleet_db, "k1")
    assert outage.cause == SILENT and outage.ended is None
    heartbeat = messages.heartbeat(kiosk="k1", session=0, ts=time.time(), uptime=1.0,
                                   bundles={"trust": 1, "policy": 1, "status": 1}, outbox=0,
                                   clock="synced", lists="fresh", cpu_temp=None)
    assert r.publish_heartbeat(heartbeat)
    wait_for(lambda: history()[:3] == [(NEVER_SEEN, ONLINE), (ONLINE, OFFLINE),
                                       (OFFLINE, ONLINE)], 10, "back with a heartbeat")
    outage = outages(fleet_db, "k1")[0]  # (it goes quiet again 0.9 s later)
    assert outage.ended is not None and outage.ended > outage.started
    assert events(fleet_db, "k1")[1][3].startswith(SILENT)


def test_degraded_from_a_real_heartbeat(fleet_config, broker, fleet_db, workers, reporters):
    workers.start(ingest_config(fleet_config, broker, presence={"backlog": 10}))
    r = reporters("k1")
    wait_for(lambda: state(fleet_db) == (ONLINE, 1), 15, "online")

    def send(**fields):
        doc = messages.heartbeat(kiosk="k1", session=0, ts=time.time(), uptime=1.0,
                                 bundles={"trust": 1, "policy": 1, "status": None}, outbox=0,
                                 clock="synced", lists="fresh", cpu_temp=48.0)
        doc.update(fields)
        assert r.publish_heartbeat(doc)

    send(lists="stale", outbox=11)
    wait_for(lambda: state(fleet_db) == (DEGRADED, 1), 10, "degraded")
    assert kiosk(fleet_db, "k1").detail == "lists stale; outbox over 10"
    assert kiosk(fleet_db, "k1").heartbeat["outbox"] == 11
    send()
    wait_for(lambda: state(fleet_db) == (ONLINE, 1), 10, "online again")
    assert [e[1] for e in events(fleet_db, "k1")] == [ONLINE, DEGRADED, ONLINE]


def test_a_kiosk_fault_is_the_cause_on_the_api_and_the_pages(fleet_config, broker, fleet_db,
                                                            workers, reporters, api,
                                                            fleet_app):
    """A storage fault in a real heartbeat: degraded with the kiosk's words, in the
    database, GET /api/v1/kiosks(/k1), the kiosk list and the kiosk's page."""
    from tests.test_dashboard_pages import PASSWORD, client_for
    workers.start(ingest_config(fleet_config, broker))
    r = reporters("k1")
    wait_for(lambda: state(fleet_db) == (ONLINE, 1), 15, "online")
    doc = messages.heartbeat(kiosk="k1", session=0, ts=time.time(), uptime=1.0,
                             bundles={"trust": 1, "policy": 1, "status": 1}, outbox=7,
                             clock="synced", lists="fresh", cpu_temp=48.0,
                             faults=[{"kind": "storage", "detail": "database or disk is full"}],
                             memory=7, lost=2)
    assert r.publish_heartbeat(doc)
    wait_for(lambda: state(fleet_db) == (DEGRADED, 1), 10, "degraded")
    cause = "storage: database or disk is full"
    assert kiosk(fleet_db, "k1").detail == cause
    one = api.client.get("/api/v1/kiosks/k1", headers=api.admin).get_json()
    assert (one["state"], one["detail"]) == (DEGRADED, cause)
    assert one["faults"] == [{"kind": "storage", "detail": "database or disk is full"}]
    assert (one["memory"], one["lost"]) == (7, 2)
    listed = api.client.get("/api/v1/kiosks?state=degraded", headers=api.admin).get_json()
    assert [(k["id"], k["detail"]) for k in listed["items"]] == [("k1", cause)]
    with fleet_db() as session:
        from fleet import auth
        auth.create_user(session, "viewer", PASSWORD, "operator")
        session.commit()
    web = client_for(fleet_app, "viewer")
    for url in ("/kiosks", "/kiosks/k1"):  # the stored cause, in the reader's language
        page = web.get(url).get_data(as_text=True)
        assert "bộ nhớ lưu trữ: cơ sở dữ liệu hoặc ổ đĩa đã đầy" in page, url
        assert cause in web.get(url + "?lang=en").get_data(as_text=True), url
        web.get("/?lang=vi")
    page = web.get("/kiosks/k1").get_data(as_text=True)
    assert "7 giữ trong bộ nhớ" in page and "2 bị mất" in page  # the pages speak Vietnamese
    r.publish_heartbeat(dict(doc, faults=[], memory=0, outbox=0))
    wait_for(lambda: state(fleet_db) == (ONLINE, 1), 10, "online again")


def test_a_fleet_restart_makes_no_fake_outage_and_hides_no_real_one(
        fleet_config, broker, fleet_db, workers, reporters, outbox, tmp_path):
    config = ingest_config(fleet_config, broker)
    worker = workers.start(config)
    stays = reporters("k1")
    goes = Reporter(Outbox(tmp_path / "k2.sqlite", 100), "k2", "localhost", broker.port,
                    tls=broker.client_tls("k2"), backoff=(0.25, 1.0))
    goes.start()
    try:
        wait_for(lambda: state(fleet_db, "k1") == (ONLINE, 1)
                 and state(fleet_db, "k2") == (ONLINE, 1), 15, "both online")
        worker.stop()  # the fleet is down ...
        goes.stop()  # ... while k2 stops for good
    finally:
        goes.stop()
        goes.outbox.close()
    settle()
    workers.start(config)  # the fleet is back: retained presence arrives at once
    wait_for(lambda: state(fleet_db, "k2") == (OFFLINE, 1), 15, "k2's stop seen after all")
    settle(0.5)
    assert state(fleet_db, "k1") == (ONLINE, 1) and outages(fleet_db, "k1") == []
    assert [e[:2] for e in events(fleet_db, "k1")] == [(NEVER_SEEN, ONLINE)]
    assert stays.connected
    (outage,) = outages(fleet_db, "k2")
    assert outage.cause == STOPPED


def test_no_presence_workers_leave_presence_alone(fleet_config, broker, fleet_db, workers,
                                                  reporters):
    config = ingest_config(fleet_config, broker)
    worker = workers.start(config, worker="scans", presence=False)
    reporters("k1")
    settle(0.5)
    assert kiosk(fleet_db, "k1") is None  # nobody tracked it
    assert worker.metrics.value("greengate_ingest_messages_total", kind="presence") == 0
    with fleet_db() as s:
        assert s.query(Outage).count() == 0


def test_a_second_tracker_is_refused_until_the_first_is_gone(fleet_config, broker, fleet_db,
                                                             workers):
    """Two trackers would write every transition twice (docs/fleet.md#one-tracker): the
    second is refused at start, with what to do; the lock dies with the first, kill -9
    included, so a replacement starts without anything to clean up."""
    config = ingest_config(fleet_config, broker)
    first = workers.spawn(config, "w1")
    wait_for(lambda: "subscribed" in workers.log("w1"), 20, "first tracker subscribed")
    second = workers.spawn(config, "w2")
    assert second.wait(20) == 2
    assert "another ingest worker already tracks presence for this database" in \
        workers.log("w2") and "--no-presence" in workers.log("w2")
    scans_only = workers.start(config, worker="w3", presence=False)  # these may join
    wait_for(lambda: scans_only.ready, 15, "scans-only worker subscribed")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    replacement = workers.start(config, worker="w4")
    wait_for(lambda: replacement.ready, 15, "the replacement tracks presence")
    assert replacement.tracker is not None

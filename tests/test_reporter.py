"""The reporter against a real Mosquitto (tests/broker.py): no mocks.

Each test starts its own broker on a free port (TLS with client certificates
unless it says plain), a recording paho subscriber standing in for the fleet,
and a Reporter on a real outbox file.
"""

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.outbox import Outbox
from device.reporter import Reporter
from greengate.messages import parse_summary, summary_topic
from greengate import messages
from tests.broker import Subscriber, wait_until

ROOT = Path(__file__).resolve().parents[1]
PRODUCER = ROOT / "tests" / "helpers" / "scan_producer.py"
KIOSK = "k1"
SCANS = messages.scan_topic(KIOSK)
PRESENCE = messages.presence_topic(KIOSK)


def scan_payload(scan_id: str, decision="green", reason="ok") -> bytes:
    return messages.encode(messages.scan(
        scan_id=scan_id, kiosk=KIOSK, ts=1633420800.0, decision=decision, reason=reason,
        sub_reason=None, cert_type="v", cert_hash="ab" * 16, holder=None, policy="hcmc-2021"))


def add_scans(outbox, prefix: str, n: int, reporter=None) -> list[str]:
    ids = []
    for i in range(n):
        sid = f"{prefix}-{i:05d}"
        assert outbox.add(sid, SCANS, scan_payload(sid))
        if reporter is not None:
            reporter.notify(sid)
        ids.append(sid)
    return ids


def scan_ids(msgs) -> list[str]:
    return [json.loads(m.payload)["id"] for m in msgs if m.topic == SCANS]


def presences(msgs) -> list[tuple[int, str]]:
    return [(d["session"], d["state"]) for d in
            (messages.parse_presence(m.payload, KIOSK) for m in msgs if m.topic == PRESENCE)]


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite", max_rows=1000)
    yield box
    box.close()


@pytest.fixture
def make_reporter(outbox):
    """make_reporter(broker, start=True, **Reporter options) -> Reporter (stopped at the end)."""
    made = []

    def make(broker, *, start=True, box=None, kiosk=KIOSK, **options):
        options.setdefault("tls", broker.client_tls(kiosk))
        options.setdefault("backoff", (0.25, 1.0))
        r = Reporter(box or outbox, kiosk, "localhost", broker.port, **options)
        made.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in made:
        r.stop(timeout=10)


def test_scans_arrive_with_qos1_exactly_as_added(broker, subscriber, make_reporter, outbox):
    sub = subscriber(broker, f"gg/v1/kiosk/{KIOSK}/#")
    reporter = make_reporter(broker)
    wait_until(lambda: reporter.connected, 10, "reporter connected")
    ids = add_scans(outbox, "scan", 10, reporter)
    msgs = sub.wait_for(lambda m: len(scan_ids(m)) >= 10, 10, "10 scans")
    got = [m for m in msgs if m.topic == SCANS]
    assert [m.payload for m in got] == [scan_payload(sid) for sid in ids]
    assert all(m.qos == 1 and not m.retain for m in got)
    for m in got:
        messages.parse_scan(m.payload, KIOSK)
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied by PUBACKs")
    assert presences(msgs)[0] == (1, "online") and reporter.session == 1
    assert reporter.stats["published"] == 10 and reporter.stats["acked"] == 10


def test_rows_leave_the_outbox_only_after_the_puback(broker, subscriber, make_reporter, outbox):
    sub = subscriber(broker, SCANS)
    reporter = make_reporter(broker)
    wait_until(lambda: reporter.connected, 10, "reporter connected")

    # 1. connected, but the broker answers nothing (SIGSTOP): published, not acked, kept
    broker.pause()
    try:
        first = add_scans(outbox, "paused", 3, reporter)
        wait_until(lambda: reporter.stats["published"] >= 3, 5, "publishes written")
        time.sleep(1.0)
        assert outbox.depth() == 3 and reporter.stats["acked"] == 0
    finally:
        broker.resume()
    sub.wait_for(lambda m: set(first) <= set(scan_ids(m)), 10, "paused scans after SIGCONT")
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied after the PUBACKs")

    # 2. the broker is down before publishing: rows stay until it is back
    broker.stop()
    wait_until(lambda: not reporter.connected, 5, "reporter noticed the outage")
    second = add_scans(outbox, "down", 3, reporter)
    time.sleep(1.5)
    assert outbox.depth() == 3 and not reporter.connected
    broker.start()
    sub.wait_for(lambda m: set(second) <= set(scan_ids(m)), 15, "scans after the restart")
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied after the restart")


def test_broker_outage_every_scan_arrives_once(broker, subscriber, make_reporter, outbox):
    sub = subscriber(broker, [SCANS, PRESENCE])  # persistent session, QoS 1
    reporter = make_reporter(broker)
    before = add_scans(outbox, "before", 10, reporter)
    sub.wait_for(lambda m: len(scan_ids(m)) >= 10, 10, "scans before the outage")
    wait_until(lambda: outbox.depth() == 0, 5, "outbox empty before the outage")
    time.sleep(0.3)  # let the subscriber's PUBACKs reach the broker

    broker.stop()
    during = add_scans(outbox, "during", 30, reporter)
    time.sleep(2.0)  # a while: several reconnect attempts fail
    assert outbox.depth() == 30
    broker.start()

    expected = set(before + during)
    sub.wait_for(lambda m: set(scan_ids(m)) >= expected, 20, "every scan after the outage")
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied")
    time.sleep(0.5)  # late duplicates, if any, would show up now
    counts = collections.Counter(scan_ids(sub.snapshot()))
    assert set(counts) == expected
    assert [sid for sid, n in counts.items() if n > 1] == []
    assert reporter.stats["published"] == 40  # nothing was sent twice either
    assert (2, "online") in presences(sub.snapshot()) and reporter.session == 2


def test_replay_is_rate_limited_but_live_scans_go_first(make_broker, subscriber, make_reporter,
                                                        outbox):
    broker = make_broker(tls=False)  # the plain listener works the same way
    sub = subscriber(broker, SCANS)
    rate, n = 20.0, 40
    backlog = add_scans(outbox, "backlog", n)  # e.g. after a long outage or at boot
    reporter = make_reporter(broker, replay_rate=rate)
    msgs = sub.wait_for(lambda m: len(scan_ids(m)) >= 5, 10, "replay under way")
    live = add_scans(outbox, "live", 1, reporter)[0]
    msgs = sub.wait_for(lambda m: live in scan_ids(m), 2, "the live scan")
    assert len(scan_ids(msgs)) < n, "the live scan waited for the whole backlog"
    msgs = sub.wait_for(lambda m: set(backlog) <= set(scan_ids(m)), 30, "whole backlog")
    times = [m.at for m in msgs if m.topic == SCANS and m.payload != scan_payload(live)]
    burst = max(1.0, 0.2 * rate)  # the token bucket's capacity
    span = times[-1] - times[0]
    assert span >= (n - burst - 1) / rate - 0.1, f"{n} replayed in {span:.2f} s at {rate}/s"
    assert scan_ids(msgs)[:n + 1].count(live) == 1


def test_in_flight_window_is_bounded(broker, subscriber, make_reporter, outbox):
    sub = subscriber(broker, SCANS)
    reporter = make_reporter(broker, window=5, replay_rate=0)  # 0: no rate limit
    wait_until(lambda: reporter.connected, 10, "reporter connected")
    broker.pause()
    try:
        ids = add_scans(outbox, "win", 20, reporter)
        wait_until(lambda: reporter.stats["published"] >= 5, 5, "window filled")
        time.sleep(0.8)
        assert reporter.stats["published"] == 5 and outbox.depth() == 20
    finally:
        broker.resume()
    sub.wait_for(lambda m: set(ids) <= set(scan_ids(m)), 10, "all 20 after SIGCONT")
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied")
    assert reporter.stats["published"] == 20


def _producer(tmp_path, broker, *extra) -> subprocess.Popen:
    files = broker.client_tls(KIOSK)
    tls = ["--ca", files.ca, "--cert", files.cert, "--key", files.key] if files else []
    err = open(tmp_path / "producer.log", "ab")
    return subprocess.Popen(
        [sys.executable, str(PRODUCER), "--outbox", str(tmp_path / "producer.sqlite"),
         "--log", str(tmp_path / "added.txt"), "--session-file", str(tmp_path / "session"),
         "--kiosk", KIOSK, "--port", str(broker.port), *tls, *extra],
        stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)


def test_last_will_on_kill_9_and_sessions_increase(broker, subscriber, tmp_path):
    sub = subscriber(broker, PRESENCE, persistent=False)
    for session in (1, 2):
        proc = _producer(tmp_path, broker, "--then", "hold")
        try:
            sub.wait_for(lambda m: (session, "online") in presences(m), 15,
                         f"online, session {session}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            sub.wait_for(lambda m: (session, "offline") in presences(m), 10,
                         f"last will, session {session}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
    assert presences(sub.snapshot()) == [(1, "online"), (1, "offline"), (2, "online"),
                                         (2, "offline")]
    # the will is retained: a dashboard starting now sees the kiosk offline, session 2
    with Subscriber(broker, PRESENCE, persistent=False) as late:
        msgs = late.wait_for(lambda m: len(m) >= 1, 5, "retained presence")
        assert presences(msgs) == [(2, "offline")] and msgs[0].retain


def test_dropped_connection_reconnects_with_a_new_session(broker, subscriber, make_reporter):
    sub = subscriber(broker, PRESENCE, persistent=False)
    reporter = make_reporter(broker, backoff=(0.5, 1.0))
    sub.wait_for(lambda m: (1, "online") in presences(m), 10, "online 1")
    # kill the TCP connection under the client (no DISCONNECT): the broker sends the will
    sock = reporter._client.socket()
    raw = socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    sub.wait_for(lambda m: (2, "online") in presences(m), 10, "online 2")
    assert presences(sub.snapshot()) == [(1, "online"), (1, "offline"), (2, "online")]
    assert reporter.connected and reporter.session == 2


def test_stop_is_graceful(broker, subscriber, make_reporter, outbox):
    sub = subscriber(broker, PRESENCE, persistent=False)
    reporter = make_reporter(broker)
    sub.wait_for(lambda m: (1, "online") in presences(m), 10, "online")
    reporter.stop()
    assert not reporter.connected
    sub.wait_for(lambda m: (1, "offline") in presences(m), 5, "offline")
    time.sleep(0.5)
    assert presences(sub.snapshot()) == [(1, "online"), (1, "offline")]  # no will after it
    assert "disconnected" in broker.log()


def test_heartbeat_is_published(broker, subscriber, make_reporter, outbox):
    sub = subscriber(broker, messages.heartbeat_topic(KIOSK), persistent=False)
    reporter = make_reporter(broker, start=False)
    beat = messages.heartbeat(kiosk=KIOSK, session=0, ts=time.time(), uptime=12.0,
                              bundles={"trust": 3, "policy": 1, "status": None}, outbox=0,
                              clock="synced", lists="fresh", cpu_temp=48.5)
    assert reporter.publish_heartbeat(beat) is False  # not connected: dropped
    reporter.start()
    wait_until(lambda: reporter.connected, 10, "reporter connected")
    assert reporter.publish_heartbeat(beat) is True
    msgs = sub.wait_for(lambda m: len(m) >= 1, 5, "heartbeat")
    doc = messages.parse_heartbeat(msgs[0].payload, KIOSK)
    assert doc["session"] == reporter.session == 1  # the connection's session
    assert doc["bundles"] == {"trust": 3, "policy": 1, "status": None}
    assert msgs[0].qos == 1 and not msgs[0].retain and len(msgs) == 1


def test_client_certificate_from_another_ca_is_refused(broker, foreign_pki, subscriber,
                                                       make_reporter, outbox, caplog):
    sub = subscriber(broker, "gg/v1/#", persistent=False)
    add_scans(outbox, "scan", 2)
    caplog.set_level("WARNING", logger="greengate.reporter")
    reporter = make_reporter(broker, tls=foreign_pki.client(KIOSK), backoff=(0.2, 0.4))
    wait_until(lambda: reporter.stats["attempts"] >= 3, 10, "several attempts")
    assert not reporter.connected and reporter.stats["connects"] == 0
    assert reporter._thread.is_alive()
    assert outbox.depth() == 2
    assert not [m for m in sub.snapshot() if m.topic.startswith("gg/v1/kiosk/")]
    assert any("MQTT broker" in r.getMessage() for r in caplog.records)
    # nor does a kiosk connect to a broker whose certificate it cannot verify
    other = make_reporter(broker, box=outbox, tls=(foreign_pki.ca, *broker.client_tls(KIOSK)[1:]),
                          backoff=(0.2, 0.4))
    wait_until(lambda: other.stats["attempts"] >= 2, 10, "attempts")
    assert not other.connected and other.stats["connects"] == 0 and other.session == 0
    t0 = time.monotonic()
    reporter.stop()
    other.stop()
    assert time.monotonic() - t0 < 5


def test_broker_rejection_keeps_the_row(make_broker, subscriber, make_reporter, outbox):
    acl = (f"user {KIOSK}\ntopic readwrite {PRESENCE}\n\n"  # may not publish scans
           "pattern readwrite gg/test/%u/#\n")
    broker = make_broker(acl=acl)
    reporter = make_reporter(broker)
    wait_until(lambda: reporter.connected, 10, "reporter connected")
    add_scans(outbox, "denied", 1, reporter)
    wait_until(lambda: reporter.stats["rejected"] == 1, 5, "PUBACK 'not authorized'")
    time.sleep(0.3)
    assert outbox.depth() == 1 and reporter.stats["acked"] == 0 and reporter.connected


def test_subscriptions_get_retained_bundles_again_after_reconnect(broker, make_reporter):
    topic = messages.bundle_topic("default", "trust")
    fleet = Subscriber(broker, "gg/test/none", persistent=False).start()
    try:
        fleet.client.publish(topic, b"bundle-v1", qos=1, retain=True).wait_for_publish(5)
    finally:
        fleet.close()
    got = []

    def broken(_topic, _payload):
        raise RuntimeError("a failing callback must not stop the reporter")

    reporter = make_reporter(broker, subscriptions={messages.bundle_topic("default", "#"): broken})
    reporter.subscribe(topic, lambda t, p: got.append((t, p)))
    wait_until(lambda: got == [(topic, b"bundle-v1")], 10, "retained bundle")
    broker.restart()
    wait_until(lambda: len(got) == 2, 15, "retained bundle after re-subscribing")
    assert got[1] == (topic, b"bundle-v1") and reporter.session == 2


def test_overflow_summaries_are_reported(broker, subscriber, make_reporter, tmp_path):
    box = Outbox(tmp_path / "small.sqlite", max_rows=3)
    try:
        kept = add_scans(box, "kept", 3)
        for i, (decision, reason) in enumerate([("red", "expired")] * 3 + [("green", "ok")]):
            sid = f"over-{i:05d}"
            assert box.add(sid, SCANS, scan_payload(sid, decision, reason)) is False
        sub = subscriber(broker, [SCANS, summary_topic(KIOSK)])
        make_reporter(broker, box=box)
        msgs = sub.wait_for(lambda m: len(m) >= 5, 10, "3 scans and 2 summaries")
        assert sorted(scan_ids(msgs)) == kept
        summaries = [parse_summary(m.payload, KIOSK) for m in msgs if m.topic == summary_topic(KIOSK)]
        assert {(s["decision"], s["reason"]): s["count"] for s in summaries} == \
            {("red", "expired"): 3, ("green", "ok"): 1}
        assert all(s["kiosk"] == KIOSK and s["hour"] == 1633420800 and s["v"] == 1
                   and s["id"] for s in summaries)
        wait_until(lambda: box.summaries() == 0 and box.depth() == 0, 5, "all acknowledged")
        assert box.overflow() == 4  # the heartbeat's counter is cumulative
    finally:
        box.close()


# --- a producing process killed (the whole kiosk: tests/test_kiosk_e2e.py) -------
def test_producer_killed_mid_stream_and_broker_restart_lose_nothing(broker, subscriber, tmp_path):
    """SIGKILL the producing kiosk mid-stream, stop the broker, restart both:
    every scan whose add() returned arrives, and counting by scan id (as the
    fleet ingest does) counts each once."""
    sub = subscriber(broker, SCANS)  # persistent session, QoS 1: queued while it is down
    log = tmp_path / "added.txt"

    def logged() -> int:
        return len(log.read_text().split()) if log.exists() else 0

    first = _producer(tmp_path, broker, "--prefix", "run1", "--count", "400", "--rate", "50")
    try:
        wait_until(lambda: logged() >= 40, 20, "first producer under way")
        sub.wait_for(lambda m: len(m) >= 20, 10, "scans flowing")
        # the broker hangs (SIGSTOP): a window of publishes waits for PUBACKs, a backlog
        # grows in the outbox; then the kiosk dies mid-stream
        broker.pause()
        wait_until(lambda: logged() >= 70, 10, "a backlog while the broker hangs")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        first.stdout.close()
        broker.resume()
    killed_at = len(log.read_text().split())
    assert killed_at < 400, "the producer finished before it was killed"

    broker.stop()
    second = _producer(tmp_path, broker, "--prefix", "run2", "--count", "60", "--rate", "30",
                       "--then", "drain", "--timeout", "40")
    try:
        time.sleep(3.0)  # the broker stays down while the kiosk runs and adds scans
        broker.start()
        out, _ = second.communicate(timeout=45)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    assert second.returncode == 0, f"producer: {out}\n{(tmp_path / 'producer.log').read_text()}"

    added = log.read_text().split()
    assert len(added) == killed_at + 60 and len(set(added)) == len(added)
    msgs = sub.wait_for(lambda m: set(added) <= set(scan_ids(m)), 20, "every returned add")
    time.sleep(0.5)
    received = collections.Counter(scan_ids(sub.snapshot()))
    # nothing unknown: at most the one scan whose add() committed right before the kill
    extra = set(received) - set(added)
    assert extra <= {f"run1-{killed_at:06d}"}, extra
    # QoS 1 is at least once. The restarted kiosk sends again only what was in flight at
    # the SIGKILL (published, PUBACK not yet processed): at most one window (20) of run 1.
    # The broker may also redeliver to the subscriber across its restart (DUP flag set).
    # The fleet counts by scan id, so each scan counts once.
    fresh = collections.Counter(scan_ids(m for m in sub.snapshot() if not m.dup))
    resent = {sid: n - 1 for sid, n in fresh.items() if n > 1}
    assert all(sid.startswith("run1-") for sid in resent) and sum(resent.values()) <= 20, resent
    assert len(received) == len(set(added) | extra)
    assert all(m.qos == 1 for m in msgs)

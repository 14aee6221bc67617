"""The reporter against a real Mosquitto (tests/broker.py): no mocks.

Each test starts its own broker on a free port (TLS with client certificates
unless it says plain), a recording paho subscriber, a confirming one standing in
for the fleet's ingest (tests/helpers/confirmer.py: rows leave the outbox only on
its confirmations), and a Reporter on a real outbox file.
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
from tests.helpers.confirmer import Confirmer

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
def confirmer():
    """confirmer(broker, **Confirmer options) -> a started stand-in for the ingest."""
    made: list[Confirmer] = []

    def make(broker, **options) -> Confirmer:
        fleet = Confirmer(broker, **options)
        made.append(fleet)
        return fleet.start()

    yield make
    for fleet in made:
        try:
            fleet.close()
        except Exception:
            pass


def copies(fleet: Confirmer, ids) -> list[int]:
    with fleet._lock:
        return [fleet.scans[i] for i in ids]


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


def test_scans_arrive_with_qos1_exactly_as_added(broker, subscriber, confirmer, make_reporter,
                                                outbox):
    sub = subscriber(broker, f"gg/v1/kiosk/{KIOSK}/#")
    confirmer(broker)
    reporter = make_reporter(broker)
    wait_until(lambda: reporter.connected, 10, "reporter connected")
    ids = add_scans(outbox, "scan", 10, reporter)
    msgs = sub.wait_for(lambda m: len(scan_ids(m)) >= 10, 10, "10 scans")
    got = [m for m in msgs if m.topic == SCANS]
    assert [m.payload for m in got] == [scan_payload(sid) for sid in ids]
    assert all(m.qos == 1 and not m.retain for m in got)
    for m in got:
        messages.parse_scan(m.payload, KIOSK)
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied by the confirmations")
    assert presences(msgs)[0] == (1, "online") and reporter.session == 1
    assert reporter.stats["published"] == 10 and reporter.stats["acked"] == 10
    assert reporter.stats["confirmed"] == 10 and reporter.stats["resent"] == 0
    # decision (add) -> row deleted on the confirmation, kept for the benchmark
    assert len(reporter.latencies()) == 10 and 0 <= reporter.latency(0.95) < 5


def test_rows_leave_the_outbox_only_on_the_fleets_confirmation(broker, subscriber, confirmer,
                                                               make_reporter, outbox):
    sub = subscriber(broker, SCANS)
    fleet = confirmer(broker)
    fleet.hold()
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
    # 2. acknowledged by the broker, read by the fleet, not confirmed: still kept
    wait_until(lambda: reporter.stats["acked"] == 3 and fleet.scan_ids() >= set(first), 5,
               "PUBACKs and the fleet read them")
    time.sleep(1.0)
    assert outbox.depth() == 3 and reporter.stats["confirmed"] == 0
    assert reporter.awaiting() == 3
    fleet.release()
    wait_until(lambda: outbox.depth() == 0, 5, "outbox emptied by the confirmations")
    assert reporter.awaiting() == 0 and reporter.stats["confirmed"] == 3

    # 3. the broker is down before publishing: rows stay until it is back
    broker.stop()
    wait_until(lambda: not reporter.connected, 5, "reporter noticed the outage")
    second = add_scans(outbox, "down", 3, reporter)
    time.sleep(1.5)
    assert outbox.depth() == 3 and not reporter.connected
    broker.start()
    sub.wait_for(lambda m: set(second) <= set(scan_ids(m)), 15, "scans after the restart")
    wait_until(lambda: outbox.depth() == 0, 10, "outbox emptied after the restart")
    assert fleet.scan_ids() == set(first + second)


def test_unconfirmed_rows_go_again_after_the_timeout_and_after_a_reconnect(
        broker, confirmer, make_reporter, outbox):
    fleet = confirmer(broker)
    fleet.hold()  # the fleet reads them but never commits (e.g. its database is down)
    reporter = make_reporter(broker, confirm_timeout=1.0, backoff=(0.2, 0.5))
    wait_until(lambda: reporter.connected, 10, "reporter connected")
    ids = add_scans(outbox, "late", 3, reporter)
    t0 = time.monotonic()
    wait_until(lambda: copies(fleet, ids) == [1, 1, 1], 5, "first copies")
    wait_until(lambda: min(copies(fleet, ids)) >= 2, 5, "copies after the timeout")
    assert time.monotonic() - t0 >= 0.9, "sent again before the timeout"
    wait_until(lambda: reporter.stats["acked"] >= 6, 5, "the broker acknowledged the copies")
    assert outbox.depth() == 3  # PUBACKed twice, still kept
    # still nothing confirmed: the repeats back off (1, 2, 4 ... s, at most 8 x), they do
    # not keep the broker busy at the timeout's pace
    time.sleep(5.5 - (time.monotonic() - t0))
    assert max(copies(fleet, ids)) <= 4, copies(fleet, ids)
    assert reporter.stats["resent"] == sum(copies(fleet, ids)) - 3

    # a new connection sends everything unconfirmed again at once, whatever the timeout
    before = copies(fleet, ids)
    sock = reporter._client.socket()
    raw = socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    wait_until(lambda: reporter.session == 2 and reporter.connected, 10, "reconnected")
    wait_until(lambda: all(a > b for a, b in zip(copies(fleet, ids), before)), 3,
               "every unconfirmed row again after the reconnect")
    assert outbox.depth() == 3

    fleet.release()
    wait_until(lambda: outbox.depth() == 0, 5, "confirmed at last")
    settled = copies(fleet, ids)
    time.sleep(2.5)  # past the timeout: nothing is sent again once confirmed
    assert copies(fleet, ids) == settled and reporter.awaiting() == 0


def test_broker_outage_every_scan_arrives_once(broker, subscriber, confirmer, make_reporter,
                                               outbox):
    sub = subscriber(broker, [SCANS, PRESENCE])  # persistent session, QoS 1
    confirmer(broker)
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


def test_in_flight_window_is_bounded(broker, subscriber, confirmer, make_reporter, outbox):
    sub = subscriber(broker, SCANS)
    confirmer(broker)
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
    add_scans(outbox, "beat", 2)  # nobody confirms them here
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
    # filled in when the caller left them out: two decisions, none confirmed
    assert (doc["seq"], doc["confirmed"]) == (2, 0)


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


def test_overflow_summaries_are_reported(broker, subscriber, confirmer, make_reporter, tmp_path):
    box = Outbox(tmp_path / "small.sqlite", max_rows=3)
    try:
        kept = add_scans(box, "kept", 3)
        for i, (decision, reason) in enumerate([("red", "expired")] * 3 + [("green", "ok")]):
            sid = f"over-{i:05d}"
            assert box.add(sid, SCANS, scan_payload(sid, decision, reason)) is False
        sub = subscriber(broker, [SCANS, summary_topic(KIOSK)])
        fleet = confirmer(broker)
        fleet.hold()
        reporter = make_reporter(broker, box=box, summary_poll=1.0)
        msgs = sub.wait_for(lambda m: len(m) >= 5, 10, "3 scans and 2 summaries")
        assert sorted(scan_ids(msgs)) == kept
        summaries = [parse_summary(m.payload, KIOSK) for m in msgs if m.topic == summary_topic(KIOSK)]
        assert {(s["decision"], s["reason"]): s["count"] for s in summaries} == \
            {("red", "expired"): 3, ("green", "ok"): 1}
        assert all(s["kiosk"] == KIOSK and s["hour"] == 1633420800 and s["v"] == 1
                   and s["id"] for s in summaries)
        # unconfirmed summaries are sent again (every summary_poll), the same ids and counts
        sub.wait_for(lambda m: len([x for x in m if x.topic == summary_topic(KIOSK)]) >= 4, 5,
                     "the summaries again")
        again = [parse_summary(m.payload, KIOSK) for m in sub.snapshot()
                 if m.topic == summary_topic(KIOSK)]
        assert {(s["id"], s["count"]) for s in again} == {(s["id"], s["count"]) for s in summaries}
        assert box.summaries() == 2 and box.depth() == 3
        fleet.release()
        wait_until(lambda: box.summaries() == 0 and box.depth() == 0, 5, "all confirmed")
        assert reporter.stats["confirmed_summaries"] == 2
        assert box.overflow() == 4  # the heartbeat's counter is cumulative
    finally:
        box.close()


# --- confirmations: hostile ones, the ACL, the awaiting bound -----------------------------
def test_bad_and_foreign_confirmations_change_nothing(broker, confirmer, make_reporter, outbox):
    fleet = confirmer(broker)
    fleet.hold()
    reporter = make_reporter(broker)
    ids = add_scans(outbox, "kept", 4, reporter)
    wait_until(lambda: fleet.scan_ids() >= set(ids), 10, "the fleet read them")
    valid = messages.encode(messages.confirm(kiosk=KIOSK, scans=ids))
    hostile = [
        b"", b"not json", b"\xff\xfe{}", b"[" * 4000, b"[]", b"null",
        b'{"v":1,"kiosk":"k1","scans":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"v":1,"kiosk":"k1","scans":["kept-00000"],"n":NaN}',
        b'{"v":2,"kiosk":"k1","scans":["kept-00000"]}',
        b'{"v":true,"kiosk":"k1","scans":["kept-00000"]}',
        b'{"v":1,"kiosk":"k1","scans":"kept-00000"}',
        b'{"v":1,"kiosk":"k1","scans":[1e300]}',
        b'{"v":1,"kiosk":"k1","scans":["kept-00000", {"id": 1}]}',
        b'{"v":1,"kiosk":"k1","scans":["kept%00000"]}',
        b'{"v":1,"kiosk":"k1","summaries":["kept-00000"]}',  # not a summary id
        b'{"v":1,"kiosk":"k1","scans":["kept-00000"]' + b" " * 4100 + b"}",  # oversized
        # the right ids for another kiosk, or too many at once
        messages.encode(messages.confirm(kiosk="k2", scans=ids)),
        messages.encode(messages.confirm(kiosk=KIOSK,
                                         scans=ids + [f"x{i:09d}" for i in range(47)])),
    ]
    for payload in hostile:
        fleet.send(KIOSK, payload)
    # valid, but on another kiosk's topic (no ACL on this broker): not ours to read
    fleet.send("k2", messages.encode(messages.confirm(kiosk="k2", scans=ids)))
    # valid, for ids this kiosk does not have (and a summary it never had): harmless
    fleet.send(KIOSK, messages.encode(messages.confirm(
        kiosk=KIOSK, scans=["unknown-0001", "unknown-0002"], summaries=["s0123456789abcdef"])))
    wait_until(lambda: reporter.stats["confirmations"] == 1, 10, "the valid one (last) read")
    assert reporter.stats["confirm_invalid"] == len(hostile)
    assert reporter.stats["confirmed"] == 0 and outbox.depth() == 4
    assert reporter.connected and reporter._thread.is_alive() and reporter.session == 1
    fleet.send(KIOSK, valid)
    wait_until(lambda: outbox.depth() == 0, 5, "the real confirmation")
    fleet.send(KIOSK, valid)  # again: idempotent
    wait_until(lambda: reporter.stats["confirmations"] == 3, 5, "the repeat read")
    assert reporter.stats["confirmed"] == 4 and reporter.connected


def test_only_the_kiosk_itself_reads_or_is_sent_its_confirmations(make_broker, make_reporter,
                                                                  outbox):
    """The broker ACL that `greengate-provision mosquitto-config` writes: another kiosk can
    neither read this kiosk's confirmations nor forge one for it."""
    from provisioning.mosquitto_config import acl_text

    broker = make_broker(acl=acl_text(None, {"ingest-t": "ingest"}))
    fleet = Confirmer(broker, client_id="ingest-t").start()
    spy = Subscriber(broker, ["gg/v1/confirm/#", messages.confirm_topic(KIOSK)], client_id="k2",
                     persistent=False).start()
    try:
        fleet.hold()
        reporter = make_reporter(broker)
        ids = add_scans(outbox, "mine", 3, reporter)
        wait_until(lambda: fleet.scan_ids() >= set(ids), 10, "the ingest read them")
        forged = messages.encode(messages.confirm(kiosk=KIOSK, scans=ids))
        spy.client.publish(messages.confirm_topic(KIOSK), forged, qos=1).wait_for_publish(5)
        time.sleep(1.0)
        assert outbox.depth() == 3 and reporter.stats["confirmations"] == 0
        fleet.release()
        wait_until(lambda: outbox.depth() == 0, 10, "the ingest's confirmation")
        assert reporter.stats["confirmations"] == 1
        time.sleep(0.5)
        assert [m.topic for m in spy.snapshot() if m.topic.startswith("gg/v1/confirm/")] == []
    finally:
        spy.close()
        fleet.close()


def test_the_awaiting_bound_holds_the_backlog_back(broker, confirmer, make_reporter, outbox):
    fleet = confirmer(broker)
    fleet.hold()  # broker up, fleet not committing
    backlog = add_scans(outbox, "backlog", 20)
    reporter = make_reporter(broker, max_awaiting=5, replay_rate=0, confirm_timeout=60)
    wait_until(lambda: len(fleet.scan_ids()) == 5, 10, "the first five")
    time.sleep(1.0)
    assert fleet.scan_ids() == set(backlog[:5]) and reporter.stats["published"] == 5
    assert reporter.awaiting() == 5
    # a live scan still goes, ahead of the waiting backlog
    live = add_scans(outbox, "live", 1, reporter)
    wait_until(lambda: live[0] in fleet.scan_ids(), 5, "the live scan")
    time.sleep(0.5)
    assert reporter.stats["published"] == 6
    # three confirmed: the live one counts in the bound too, so two more, oldest first
    fleet.confirm(KIOSK, backlog[:3])
    wait_until(lambda: len(fleet.scan_ids()) == 8, 5, "two more")
    time.sleep(0.5)
    assert fleet.scan_ids() == set(backlog[:7] + live) and reporter.stats["published"] == 8
    fleet.release()
    wait_until(lambda: outbox.depth() == 0, 15, "the rest, five at a time")
    assert reporter.stats["published"] == 21 and reporter.stats["resent"] == 0
    assert copies(fleet, backlog + live) == [1] * 21


# --- a producing process killed (the whole kiosk: tests/test_kiosk_e2e.py) -------
def test_producer_killed_mid_stream_and_broker_restart_lose_nothing(broker, confirmer, tmp_path):
    """SIGKILL the producing kiosk mid-stream, stop the broker, restart both:
    every scan whose add() returned reaches the confirming fleet, each seq is given
    once, and the outbox ends empty (every row confirmed)."""
    fleet = confirmer(broker)  # persistent session, QoS 1: queued while it is down
    log = tmp_path / "added.txt"

    def logged() -> int:
        return len(log.read_text().split()) if log.exists() else 0

    first = _producer(tmp_path, broker, "--prefix", "run1", "--count", "400", "--rate", "50")
    try:
        wait_until(lambda: logged() >= 40, 20, "first producer under way")
        wait_until(lambda: len(fleet.scan_ids()) >= 20, 10, "scans flowing")
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
    assert "drained 0" in out  # the producer waited for the confirmations, not PUBACKs

    added = log.read_text().split()
    assert len(added) == killed_at + 60 and len(set(added)) == len(added)
    assert fleet.scan_ids() >= set(added)
    with Outbox(tmp_path / "producer.sqlite") as box:
        assert box.depth() == 0 and box.summaries() == 0
        assert box.seq() == box.confirmed() == len(fleet.scan_ids())
    # nothing unknown: at most the one scan whose add() committed right before the kill
    extra = fleet.scan_ids() - set(added)
    assert extra <= {f"run1-{killed_at:06d}"}, extra
    # one seq per scan, none given twice, the restarted kiosk went on from the killed one
    seqs = collections.defaultdict(set)
    for m in fleet.snapshot(SCANS):
        doc = messages.parse_scan(m.payload, KIOSK)
        seqs[doc["id"]].add(doc["seq"])
    assert all(len(v) == 1 for v in seqs.values())
    numbers = {sid: v.pop() for sid, v in seqs.items()}
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))
    assert max(n for sid, n in numbers.items() if sid.startswith("run1-")) < \
        min(n for sid, n in numbers.items() if sid.startswith("run2-"))
    # QoS 1 plus confirmations is at least once. The restarted kiosk sends again what was
    # sent and not confirmed at the SIGKILL: a window (20) waiting for PUBACKs and the
    # few whose confirmation was on its way. The run that ended normally repeats nothing.
    # The fleet counts by scan id, so each scan counts once.
    fresh = collections.Counter(scan_ids(m for m in fleet.snapshot() if not m.dup))
    resent = {sid: n - 1 for sid, n in fresh.items() if n > 1}
    assert all(sid.startswith("run1-") for sid in resent) and sum(resent.values()) <= 40, resent
    assert all(m.qos == 1 for m in fleet.snapshot(SCANS))

"""A kiosk with several brokers (docs/scaling.md#kiosk-failover), against real Mosquitto
brokers on one PKI: the reporter moves on when a broker cannot be reached, and when the
fleet stays silent through one (a district cut off from the core); it goes back to the
first; it does not flap when every broker is silent. A confirming subscriber stands in
for the fleet's ingest on each broker that has a fleet behind it
(tests/helpers/confirmer.py); rows leave the outbox only on its confirmations."""

from __future__ import annotations

import time

import pytest

from device import config as kiosk_config
from device.reporter import Reporter
from greengate import messages
from tests.broker import wait_until
from tests.test_reporter import KIOSK, PRESENCE, add_scans, outbox  # noqa: F401 (fixture)

HEARTBEAT = messages.heartbeat_topic(KIOSK)


@pytest.fixture
def two(make_broker):
    return make_broker(), make_broker()


@pytest.fixture
def reporter(two, outbox, pki):
    made = []

    def make(**options) -> Reporter:
        a, b = two
        options.setdefault("backoff", (0.2, 1.0))
        r = Reporter(outbox, KIOSK, tls=a.client_tls(KIOSK),
                     brokers=[("localhost", a.port), ("localhost", b.port)], **options)
        made.append(r)
        r.start()
        return r

    yield make
    for r in made:
        r.stop(timeout=10)


@pytest.fixture
def confirmers():
    from tests.helpers.confirmer import Confirmer
    made = []

    def make(broker):
        c = Confirmer(broker).start()
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def on(reporter, broker) -> bool:
    return reporter.connected and reporter.port == broker.port


def test_a_first_broker_down_at_start_and_mid_stream_moves_to_the_next(
        two, reporter, confirmers, outbox, subscriber):
    a, b = two
    a.stop()
    confirmers(b)
    seen_b = subscriber(b, [PRESENCE, HEARTBEAT])
    r = reporter()
    wait_until(lambda: on(r, b), 10, "connected to the second broker")
    add_scans(outbox, "fail-x", 5, r)
    wait_until(lambda: outbox.depth() == 0, 10, "confirmed through the second broker")
    online = [messages.parse_presence(m.payload, KIOSK) for m in seen_b.snapshot(PRESENCE)]
    assert online[-1]["state"] == "online" and online[-1]["broker"] == f"localhost:{b.port}"
    r.publish_heartbeat(messages.heartbeat(
        kiosk=KIOSK, session=0, ts=time.time(), uptime=1, bundles={}, outbox=0,
        clock="synced", lists="fresh", cpu_temp=None))
    beat = seen_b.wait_for(lambda m: any(x.topic == HEARTBEAT for x in m), 10, "heartbeat")
    assert [messages.parse_heartbeat(x.payload, KIOSK)["broker"] for x in beat
            if x.topic == HEARTBEAT] == [f"localhost:{b.port}"]
    # now the other way: the broker in use goes away mid-stream, scans keep coming
    a.start()
    confirmers(a)
    add_scans(outbox, "fail-y", 5, r)
    b.stop()
    add_scans(outbox, "fail-z", 5, r)
    wait_until(lambda: on(r, a), 15, "moved to the first broker")
    wait_until(lambda: outbox.depth() == 0, 15, "every scan confirmed after the move")


def test_a_broker_whose_fleet_is_silent_is_left_for_one_that_confirms(
        two, reporter, confirmers, outbox):
    a, b = two
    confirmers(b)  # nothing confirms on the first: its bridge to the fleet is cut
    r = reporter(failover_after=1.5, confirm_timeout=0.5)
    wait_until(lambda: on(r, a), 10, "connected to the first broker")
    add_scans(outbox, "fail-s", 10, r)
    wait_until(lambda: on(r, b), 10, "moved on for the fleet's silence")
    wait_until(lambda: outbox.depth() == 0, 10, "confirmed through the second broker")


def test_it_goes_back_to_the_first_broker_once_it_is_there_again(two, reporter, confirmers,
                                                                 outbox):
    a, b = two
    a.stop()
    confirmers(b)
    r = reporter(primary_retry=1.5)
    wait_until(lambda: on(r, b), 10, "on the second broker while the first is down")
    time.sleep(2.5)  # a try of the first fails: straight back to the second
    wait_until(lambda: on(r, b), 5, "still on the second")
    a.start()
    confirmers(a)
    wait_until(lambda: on(r, a), 10, "back on the first broker")
    add_scans(outbox, "fail-p", 3, r)
    wait_until(lambda: outbox.depth() == 0, 10, "confirmed on the first broker")


def test_when_every_broker_is_silent_the_moves_slow_down(two, reporter, outbox):
    r = reporter(failover_after=0.5, confirm_timeout=0.3)
    wait_until(lambda: r.connected, 10, "connected")
    add_scans(outbox, "fail-q", 3, r)
    time.sleep(6.0)
    # without the back-off: a move every 0.5 s (about 12); with it 0.5, 0.5, 1, 1, 2, ...
    moves = r.stats["moves"]
    assert 3 <= moves <= 6, moves
    assert outbox.depth() == 3  # nothing lost, nothing confirmed


def test_the_broker_list_is_checked_line_by_line(tmp_path):
    base = '[kiosk]\nid = "k1"\n[bundles]\nfleet_key = "f.pem"\n[mqtt]\ntls = false\n'
    ok = kiosk_config.parse(base + 'brokers = ["d1.example.org:8883", "[fd00::1]:8883"]\n')
    assert kiosk_config.brokers(ok) == [("d1.example.org", 8883), ("fd00::1", 8883)]
    assert kiosk_config.brokers(kiosk_config.parse(base)) == [("localhost", 8883)]
    for line, said in (('brokers = ["d1.example.org"]', "is not host:port"),
                       ('brokers = "d1.example.org:8883"', "must be a list"),
                       ('brokers = ["a:1"]\nhost = "b"', "not both"),
                       ('brokers = ["a:99999"]', "1-65535"),
                       ('brokers = [8883]', "is not host:port"),
                       ('failover_after = 1', "at least 5 s"),
                       ('primary_retry = 2.5', "at least 10 s")):
        with pytest.raises(kiosk_config.ConfigError) as caught:
            kiosk_config.parse(base + line + "\n")
        assert said in str(caught.value) and "line 7" in str(caught.value), caught.value

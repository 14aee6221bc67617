"""Alerts (fleet/alerts.py, fleet/web/alerts_views.py): the dispatcher against a real
HTTP receiver and a real SMTP server (aiosmtpd), on SQLite and PostgreSQL, with the
kiosks' outages written by the real presence tracker (fleet/presence.py). The
dispatcher's clock is the test's: `tick(now)` decides and sends, `settle(now)` waits
for the sends and records them, so grace periods and back-offs need no sleeping."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet import alerts, auth, kiosks
from fleet.alerts import Dispatcher, RuleError, apply_rule
from fleet.db_lock import DatabaseLock, LockBusy
from fleet.app import create_app
from fleet.config import load
from fleet.db import make_engine
from fleet.models import (AlertDelivery, AlertEpisode, AlertRule, AuditLog, District, Kiosk,
                          Location)
from fleet.presence import Tracker, load_rows, write

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
GRACE = 60.0
RETRY = 10.0


# --- real receivers ------------------------------------------------------------------------
class Receiver:
    """An HTTP server on a free port that records every POST; `fail` answers the next
    n requests with 500."""

    def __init__(self):
        self.posts: list[dict] = []
        self.headers: list = []
        self.bodies: list[bytes] = []
        self.fail = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(500, "Broken on purpose")
                    self.end_headers()
                    return
                outer.posts.append(json.loads(body))
                outer.headers.append(self.headers)  # case-insensitive look-ups
                outer.bodies.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self):
        return [(p["event"], p.get("kiosk") or p.get("bridge") or p["district"]["code"])
                for p in self.posts]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def dead_url() -> str:
    """A URL nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# --- a fleet with kiosks whose presence the real tracker writes -----------------------------
class Fleet:
    def __init__(self, config):
        self.config = config
        self.engine = make_engine(config.database_url)
        from fleet.db import make_sessions
        self.sessions = make_sessions(self.engine)
        with self.sessions() as s:
            q1, q3 = District(code="q1", name="Quận 1"), District(code="q3", name="Quận 3")
            s.add_all([q1, q3])
            s.flush()
            market = Location(code="q1-market", name="Bến Thành", district_id=q1.id)
            station = Location(code="q3-station", name="Station", district_id=q3.id)
            s.add_all([market, station])
            s.flush()
            for kid, loc in (("q1-a", market), ("q1-b", market), ("q1-c", market),
                             ("q1-d", market), ("q3-a", station), ("q3-b", station)):
                s.add(Kiosk(id=kid, location_id=loc.id, deployment="test", state="never_seen",
                            state_since=T0 - 3600, session=0, enrolled_at=T0 - 86400))
            s.commit()
        self.tracker = Tracker(keepalive=30.0)
        with self.engine.connect() as c:
            self.tracker.load(load_rows(c))
        self.tracker.resume(T0 - 600)
        self.session = {}
        for kid in self.tracker.kiosks:
            self.online(kid, T0 - 600)

    def _flush(self):
        with self.engine.begin() as c:
            write(c, self.tracker.take_changes(), "test")

    def online(self, kid, at):
        self.session[kid] = self.session.get(kid, 0) + 1
        self.tracker.presence(kid, {"session": self.session[kid], "state": "online"}, at)
        self._flush()

    def offline(self, kid, at):  # the kiosk's last will: "connection lost"
        self.tracker.presence(kid, {"session": self.session[kid], "state": "offline"}, at)
        self._flush()

    def rule(self, **values):
        with self.sessions() as s:
            rule = apply_rule(s, None, {"name": "ops", **values}, actor="test", now=T0 - 3000)
            s.commit()
            return rule.id

    def deliveries(self):
        with self.sessions() as s:
            return s.scalars(select(AlertDelivery).order_by(AlertDelivery.id)).all()

    def close(self):
        self.engine.dispose()


@pytest.fixture
def alert_config(fleet_config, smtp):
    return load(None, env={}, fleet=fleet_config.sections["fleet"],
                alerts={"grace_seconds": GRACE, "retry_seconds": RETRY, "max_attempts": 3,
                        "webhook_timeout": 2.0, "dashboard_url": "https://fleet.example/",
                        "webhook_secret": "s3cret", "smtp_host": "127.0.0.1",
                        "smtp_port": smtp.port, "smtp_starttls": False,
                        "smtp_from": "alerts@fleet.example"})


@pytest.fixture
def fleet(alert_config):
    f = Fleet(alert_config)
    yield f
    f.close()


@pytest.fixture
def dispatcher(alert_config):
    made = []

    def make():
        d = Dispatcher(alert_config)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def step(d: Dispatcher, now: float) -> None:
    d.tick(now)
    d.settle(now)


# --- the dispatcher ----------------------------------------------------------------------
def test_an_outage_alerts_once_after_the_grace_period_and_recovers_once(
        fleet, dispatcher, receiver, smtp):
    fleet.rule(webhook_url=receiver.url, emails="ops@example.org, lan@example.org")
    d = dispatcher()
    step(d, T0)
    fleet.offline("q1-a", T0 + 5)
    step(d, T0 + 5 + GRACE - 1)  # still inside the grace period
    assert receiver.posts == [] and smtp.messages == []
    step(d, T0 + 5 + GRACE)
    for later in (1, 2, 30):
        step(d, T0 + 5 + GRACE + later)
    assert receiver.events() == [("alert", "q1-a")]
    alert = receiver.posts[0]
    assert alert["kind"] == "kiosk_offline" and alert["state"] == "offline"
    assert alert["location"] == {"code": "q1-market", "name": "Bến Thành"}
    assert alert["district"] == {"code": "q1", "name": "Quận 1"}
    assert alert["since"] == alerts.iso(T0 + 5) and alert["detail"] == "connection lost"
    assert alert["recovered"] is False and alert["url"] == "https://fleet.example/kiosks/q1-a"
    # the body is signed with [alerts] webhook_secret
    assert receiver.headers[0]["X-GreenGate-Signature"] == \
        "sha256=" + hmac.new(b"s3cret", receiver.bodies[0], hashlib.sha256).hexdigest()
    assert receiver.headers[0]["Content-Type"] == "application/json; charset=utf-8"
    assert sorted(to for (to,), _ in smtp.messages) == ["lan@example.org", "ops@example.org"]
    mail = smtp.messages[0][1]
    assert mail["Subject"].startswith("[GreenGate] ALERT: Kiosk q1-a")
    assert "https://fleet.example/kiosks/q1-a" in mail.get_payload(decode=True).decode()

    fleet.online("q1-a", T0 + 500)
    for later in (1, 2, 60):
        step(d, T0 + 500 + later)
    assert receiver.events() == [("alert", "q1-a"), ("recovery", "q1-a")]
    recovery = receiver.posts[1]
    assert recovery["recovered"] is True and recovery["state"] == "online"
    assert recovery["recovered_at"] == alerts.iso(T0 + 500)
    assert recovery["duration_seconds"] == 495.0 and recovery["episode"] == alert["episode"]
    assert len(smtp.messages) == 4
    replies = [m for _, m in smtp.messages if m["Subject"].startswith("[GreenGate] RECOVERED")]
    assert len(replies) == 2 and replies[0]["In-Reply-To"] == mail["Message-ID"]
    assert {x.status for x in fleet.deliveries()} == {"sent"}


def test_a_reboot_inside_the_grace_period_says_nothing(fleet, dispatcher, receiver):
    fleet.rule(webhook_url=receiver.url)
    d = dispatcher()
    fleet.offline("q1-b", T0)
    step(d, T0 + 20)
    fleet.online("q1-b", T0 + 40)
    for t in (T0 + 41, T0 + GRACE + 1, T0 + 1000):
        step(d, t)
    assert receiver.posts == []
    # a second, longer outage of the same kiosk is a new outage: it alerts
    fleet.offline("q1-b", T0 + 2000)
    step(d, T0 + 2000 + GRACE)
    assert receiver.events() == [("alert", "q1-b")]


def test_district_loss_alerts_above_the_threshold_and_recovers_below(fleet, dispatcher,
                                                                     receiver):
    fleet.rule(kind="district_loss", threshold=50, district="q1", webhook_url=receiver.url)
    d = dispatcher()
    for kid in ("q1-a", "q1-b"):
        fleet.offline(kid, T0)
    for kid in ("q3-a", "q3-b"):  # 100 % of q3, but the rule is about q1
        fleet.offline(kid, T0)
    step(d, T0 + GRACE + 1)
    assert receiver.posts == []  # 2 of 4 = 50 %: not more than 50 %
    fleet.offline("q1-c", T0 + 100)
    step(d, T0 + 100 + GRACE - 1)
    assert receiver.posts == []  # the third kiosk may be rebooting
    step(d, T0 + 100 + GRACE)
    step(d, T0 + 300)
    assert receiver.events() == [("alert", "q1")]
    loss = receiver.posts[0]
    assert (loss["offline"], loss["total"], loss["percent"], loss["threshold"]) == (3, 4, 75.0, 50)
    assert loss["kiosks"] == ["q1-a", "q1-b", "q1-c"] and loss["state"] == "loss"
    assert loss["url"] == "https://fleet.example/kiosks?district=q1"
    fleet.online("q1-a", T0 + 400)
    step(d, T0 + 401)
    step(d, T0 + 402)
    assert receiver.events() == [("alert", "q1"), ("recovery", "q1")]
    assert receiver.posts[1]["offline"] == 2 and receiver.posts[1]["recovered"] is True
    fleet.offline("q1-a", T0 + 500)  # over the threshold again: a new episode
    step(d, T0 + 500 + GRACE)
    assert receiver.events() == [("alert", "q1"), ("recovery", "q1"), ("alert", "q1")]
    assert receiver.posts[2]["episode"] != receiver.posts[0]["episode"]


def test_a_cut_bridge_is_no_districts_loss_and_says_so_in_one(fleet, dispatcher, receiver):
    """Kiosks unreachable through a district bridge that is down (docs/scaling.md) are
    in service and not lost: a cut bridge neither turns a district's one offline kiosk
    into 100 % of the rest, nor hides a real loss; the alert names them."""
    fleet.rule(kind="district_loss", threshold=40, district="q1", webhook_url=receiver.url)
    d = dispatcher()
    d1 = "10.0.1.5:8883"
    fleet.tracker.known_bridges([("d1", d1, True, T0 - 600)])
    for kid in ("q1-a", "q1-b", "q1-c"):  # these three connect through district broker d1
        fleet.session[kid] += 1
        fleet.tracker.presence(kid, {"session": fleet.session[kid], "state": "online",
                                     "broker": d1}, T0 - 500)
    fleet._flush()
    fleet.offline("q1-d", T0)  # 1 of 4: 25 %
    fleet.tracker.bridge("d1", False, T0 + 10)
    fleet._flush()
    with fleet.sessions() as s:
        assert {k.id: k.state for k in s.scalars(select(Kiosk).where(
            Kiosk.id.like("q1-%")))} == {"q1-a": "unreachable", "q1-b": "unreachable",
                                         "q1-c": "unreachable", "q1-d": "offline"}
    step(d, T0 + GRACE + 20)
    step(d, T0 + GRACE + 30)
    assert receiver.posts == []  # 1 offline of 4 in service, not 1 of 1
    # a real loss while the bridge is down: alerted, the unreachable ones named apart
    fleet.tracker.bridge("d1", True, T0 + 100)
    fleet.tracker.bridge("d1", False, T0 + 101)  # (the bridge flaps)
    fleet.online("q1-a", T0 + 110)  # q1-a failed over to the core
    fleet.offline("q1-a", T0 + 120)
    step(d, T0 + 120 + GRACE)
    assert receiver.events() == [("alert", "q1")]
    loss = receiver.posts[0]
    assert (loss["offline"], loss["total"], loss["unreachable"]) == (2, 4, 2)
    assert "2 unreachable through a district bridge that is down" in loss["text"]


def test_a_district_bridge_down_alerts_with_its_unreachable_kiosks_then_recovers(
        fleet, dispatcher, receiver):
    """A cut bridge makes its kiosks unreachable, not offline, so no kiosk rule fires:
    the bridge_down rule says it (after the grace period: a link that drops for seconds
    reconnects by itself), and says when it is back."""
    from fleet import bridges
    from fleet.presence import write_bridges
    d1 = "10.0.1.5:8883"
    with fleet.sessions() as s:
        for name, address in (("d1", d1), ("d2", "10.0.2.5:8883")):
            b = bridges.register(s, name, address, at=T0 - 700)
            b.connected, b.since = True, T0 - 600  # as the tracker is told below
        with pytest.raises(RuleError, match="every district bridge"):
            apply_rule(s, None, {"name": "b", "kind": "bridge_down", "district": "q1",
                                 "webhook_url": receiver.url}, actor="test", now=T0)
        s.commit()
    fleet.rule(kind="bridge_down", webhook_url=receiver.url)
    fleet.rule(kind="kiosk_offline", webhook_url=receiver.url)
    d = dispatcher()
    fleet.tracker.known_bridges([("d1", d1, True, T0 - 600), ("d2", "10.0.2.5:8883", True,
                                                               T0 - 600)])
    for kid in ("q1-a", "q1-b"):
        fleet.session[kid] += 1
        fleet.tracker.presence(kid, {"session": fleet.session[kid], "state": "online",
                                     "broker": d1}, T0 - 500)

    def bridge(name, up, at):
        fleet.tracker.bridge(name, up, at)
        fleet._flush()
        with fleet.engine.begin() as c:
            write_bridges(c, fleet.tracker.take_bridge_changes())

    bridge("d2", False, T0)  # down for less than the grace period: nothing
    step(d, T0 + GRACE - 1)
    bridge("d2", True, T0 + GRACE - 1)
    bridge("d1", False, T0 + 100)
    step(d, T0 + 100 + GRACE - 1)
    assert receiver.posts == []
    step(d, T0 + 100 + GRACE)
    step(d, T0 + 100 + GRACE + 30)  # told once
    assert receiver.events() == [("alert", "d1")]
    down = receiver.posts[0]
    assert (down["kind"], down["bridge"], down["address"], down["state"],
            down["unreachable"]) == ("bridge_down", "d1", d1, "down", 2)
    assert down["text"].startswith("District bridge d1 (10.0.1.5:8883) is down since")
    assert down["url"] == "https://fleet.example/#bridges"
    bridge("d1", True, T0 + 400)
    step(d, T0 + 401)
    assert receiver.events() == [("alert", "d1"), ("recovery", "d1")]
    back = receiver.posts[1]
    assert back["recovered"] is True and back["duration_seconds"] == 300.0
    assert "is back after 5 min" in back["text"]
    message = alerts.email_message(down, "gg@fleet.example", "ops@example.org")
    assert "bridge: d1" in message.get_content() and "unreachable: 2" in message.get_content()


def test_a_registered_bridge_never_heard_of_alerts_until_it_connects(
        fleet, dispatcher, receiver):
    """A district broker set up wrong never connects, so it never says "0": the rule
    tells of a registered bridge silent for the grace period after its registration."""
    from fleet import bridges
    from fleet.presence import write_bridges
    with fleet.sessions() as s:
        bridges.register(s, "d3", "10.0.3.5:8883", at=T0)
        bridges.register(s, "d4", "10.0.4.5:8883", at=T0)
        s.commit()
    fleet.rule(kind="bridge_down", webhook_url=receiver.url)
    d = dispatcher()
    fleet.tracker.known_bridges([("d3", "10.0.3.5:8883", None, None),
                                 ("d4", "10.0.4.5:8883", None, None)])

    def bridge(name, up, at):
        fleet.tracker.bridge(name, up, at)
        fleet._flush()
        with fleet.engine.begin() as c:
            write_bridges(c, fleet.tracker.take_bridge_changes())

    bridge("d4", True, T0 + 5)  # set up right: connects at once
    step(d, T0 + GRACE - 1)
    assert receiver.posts == []
    step(d, T0 + GRACE)
    step(d, T0 + GRACE + 30)  # told once
    assert receiver.events() == [("alert", "d3")]
    never = receiver.posts[0]
    assert (never["bridge"], never["state"]) == ("d3", "never connected")
    assert "has not connected to the core since it was registered" in never["text"]
    bridge("d3", False, T0 + 200)  # it connected and dropped: still the same episode
    step(d, T0 + 201)
    assert receiver.events() == [("alert", "d3")]
    bridge("d3", True, T0 + 300)
    step(d, T0 + 301)
    assert receiver.events() == [("alert", "d3"), ("recovery", "d3")]
    assert receiver.posts[1]["duration_seconds"] == 300.0


def test_a_failing_webhook_is_retried_with_back_off_then_delivered(fleet, dispatcher, receiver):
    fleet.rule(webhook_url=receiver.url)
    other = Receiver()
    try:
        fleet.rule(webhook_url=dead_url())  # never answers: must hold nobody up
        fleet.rule(webhook_url=other.url)
        receiver.fail = 2
        d = dispatcher()
        fleet.offline("q3-a", T0)
        now = T0 + GRACE
        step(d, now)
        assert other.events() == [("alert", "q3-a")] and receiver.posts == []
        failing = [x for x in fleet.deliveries() if x.target == receiver.url][0]
        assert failing.status == "pending" and failing.attempts == 1
        assert failing.last_error == "HTTP 500 Broken on purpose"
        assert failing.next_at == now + RETRY
        step(d, now + RETRY - 1)  # not due yet
        assert receiver.fail == 1
        step(d, now + RETRY)  # second try fails, next in 2 x RETRY
        failing = [x for x in fleet.deliveries() if x.target == receiver.url][0]
        assert failing.attempts == 2 and failing.next_at == now + 3 * RETRY
        step(d, now + 3 * RETRY)
        assert receiver.events() == [("alert", "q3-a")]
        by_target = {x.target: x for x in fleet.deliveries()}
        assert by_target[receiver.url].status == "sent" and by_target[receiver.url].attempts == 3
        dead = by_target[[t for t in by_target if t not in (receiver.url, other.url)][0]]
        assert dead.status == "failed" and dead.attempts == 3  # max_attempts: given up
        assert dead.last_error.startswith("cannot reach 127.0.0.1:")
        step(d, now + 10_000)
        assert len(receiver.posts) == 1 and len(other.posts) == 1
    finally:
        other.close()


def test_a_recovery_waits_for_its_alert_on_the_same_target(fleet, dispatcher, receiver):
    fleet.rule(webhook_url=receiver.url)
    d = dispatcher()
    receiver.fail = 1
    fleet.offline("q1-a", T0)
    step(d, T0 + GRACE)  # the alert fails once
    fleet.online("q1-a", T0 + GRACE + 1)
    step(d, T0 + GRACE + 2)  # the recovery is decided, but its alert is still pending
    assert receiver.posts == []
    step(d, T0 + GRACE + RETRY)
    step(d, T0 + GRACE + RETRY + 1)
    assert receiver.events() == [("alert", "q1-a"), ("recovery", "q1-a")]


def test_a_retired_kiosk_never_alerts(fleet, dispatcher, receiver):
    fleet.rule(webhook_url=receiver.url)
    fleet.rule(kind="district_loss", threshold=40, webhook_url=receiver.url)
    d = dispatcher()
    for kid in ("q3-a", "q3-b", "q1-a"):
        fleet.offline(kid, T0)
    step(d, T0 + GRACE)  # three kiosks, and q3 (2 of 2 offline > 40 %)
    alerted = [("alert", "q1-a"), ("alert", "q3"), ("alert", "q3-a"), ("alert", "q3-b")]
    assert sorted(receiver.events()) == alerted
    with fleet.sessions() as s:
        for kid in ("q3-a", "q1-a"):  # retired while offline, after their alerts
            kiosks.retire(s, s.get(Kiosk, kid), reason="broken", actor="test", at=T0 + 100)
        s.commit()
    for t in (T0 + 101, T0 + 200 + GRACE, T0 + 5000):
        step(d, t)
    # no "recovered" for a retired kiosk; q3 is 1 of 1 offline now: still in its episode
    assert sorted(receiver.events()) == alerted
    with fleet.sessions() as s:
        ended = {e.kiosk_id: e.resolution for e in s.scalars(select(AlertEpisode))
                 if e.kiosk_id}
    assert ended == {"q1-a": "kiosk retired", "q3-a": "kiosk retired", "q3-b": None}


def test_a_retired_kiosk_s_outage_before_the_grace_period_is_silent(fleet, dispatcher,
                                                                    receiver):
    fleet.rule(webhook_url=receiver.url)
    d = dispatcher()
    fleet.offline("q1-d", T0)
    with fleet.sessions() as s:
        kiosks.retire(s, s.get(Kiosk, "q1-d"), reason="stolen", actor="test", at=T0 + 10)
        s.commit()
    for t in (T0 + 11, T0 + GRACE + 10, T0 + 10_000):
        step(d, t)
    assert receiver.posts == []


def test_a_restarted_dispatcher_sends_nothing_twice(fleet, dispatcher, receiver, smtp):
    fleet.rule(webhook_url=receiver.url, emails="ops@example.org")
    first = dispatcher()
    fleet.offline("q1-a", T0)
    receiver.fail = 1
    step(first, T0 + GRACE)  # e-mail sent, webhook failed once (pending)
    first.close()
    second = dispatcher()
    step(second, T0 + GRACE + 1)
    assert receiver.posts == [] and len(smtp.messages) == 1  # not due yet, not re-decided
    step(second, T0 + GRACE + RETRY)
    step(second, T0 + GRACE + 2 * RETRY)
    assert receiver.events() == [("alert", "q1-a")] and len(smtp.messages) == 1
    second.close()
    third = dispatcher()
    fleet.online("q1-a", T0 + 1000)
    step(third, T0 + 1001)
    step(third, T0 + 1002)
    assert receiver.events() == [("alert", "q1-a"), ("recovery", "q1-a")]
    assert len(smtp.messages) == 2


def test_a_disabled_rule_sends_nothing_more(fleet, dispatcher, receiver):
    rule_id = fleet.rule(webhook_url=receiver.url)
    d = dispatcher()
    fleet.offline("q1-a", T0)
    step(d, T0 + GRACE)
    with fleet.sessions() as s:
        apply_rule(s, s.get(AlertRule, rule_id), {"enabled": False}, actor="test", now=T0)
        s.commit()
    fleet.online("q1-a", T0 + 100)
    fleet.offline("q1-b", T0 + 100)
    step(d, T0 + 100 + GRACE)
    assert receiver.events() == [("alert", "q1-a")]


def test_one_dispatcher_per_database(alert_config):
    engine = make_engine(alert_config.database_url)
    first, second = (DatabaseLock(engine, "alerts", b"GGALERTS"),
                     DatabaseLock(engine, "alerts", b"GGALERTS"))
    try:
        first.acquire()
        with pytest.raises(LockBusy):
            second.acquire()
        first.release()
        second.acquire()  # free again once the holder is gone
        # the presence tracker's lock is another one: both processes run side by side
        presence = DatabaseLock(engine, "presence", b"GGPRESNC")
        presence.acquire()
        presence.release()
    finally:
        second.release()
        first.release()
        engine.dispose()


def test_the_command_runs_as_a_notify_service_and_stops_on_sigterm(fleet, receiver, tmp_path):
    """`greengate-fleet alerts` as systemd runs it: READY=1, watchdog pings, an alert
    sent, SIGTERM ends it cleanly; a second one is refused."""
    fleet.rule(webhook_url=receiver.url)
    now = time.time()
    fleet.offline("q1-a", now - 3600)  # offline for an hour
    notify = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "2000000",
           "GREENGATE_FLEET_DATABASE_URL": fleet.config.database_url,
           "GREENGATE_FLEET_DATA_DIR": str(fleet.config.data_dir),
           "GREENGATE_ALERTS_POLL": "0.2"}
    env.pop("GREENGATE_FLEET_CONFIG", None)
    process = subprocess.Popen([sys.executable, "-m", "fleet.cli", "alerts"], env=env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert sock.recv(4096).startswith(b"READY=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
        deadline = time.monotonic() + 15
        while not receiver.posts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.events() == [("alert", "q1-a")]
        again = subprocess.run([sys.executable, "-m", "fleet.cli", "alerts"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 2 and "another alerts dispatcher" in again.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        sock.close()
    assert receiver.events() == [("alert", "q1-a")]


# --- rules: checks, page, API ---------------------------------------------------------------
BAD_RULES = [
    ({"webhook_url": "ftp://example.org/x"}, "must start with https://"),
    ({"webhook_url": "https:///path"}, "names no host"),
    ({"webhook_url": "https://user:pw@example.org/"}, "must not carry a user name"),
    ({"webhook_url": "https://example.org:99999/"}, "bad port"),
    ({"webhook_url": "", "emails": "ops@example.org, not-an-address"},
     "'not-an-address' is not an e-mail address"),
    ({"webhook_url": "", "emails": ""}, "needs a webhook URL or at least one e-mail"),
    ({"kind": "district_loss"}, "needs a threshold"),
    ({"kind": "district_loss", "threshold": 100}, "out of range"),
    ({"district": "q9"}, "no district with code 'q9'"),
    ({"name": " "}, "give the rule a name"),
    ({"kind": "sunspots"}, "unknown kind"),
]


def test_bad_rules_are_refused_with_a_reason(fleet):
    with fleet.sessions() as s:
        for values, words in BAD_RULES:
            with pytest.raises(RuleError) as info:
                apply_rule(s, None, {"name": "x", "webhook_url": "https://hooks.example/a",
                                     **values}, actor="test", now=T0)
            assert words in str(info.value), values
        assert s.scalars(select(AlertRule)).all() == []


@pytest.fixture
def web(fleet):
    config = load(None, env={}, fleet=fleet.config.sections["fleet"],
                  web={"secure_cookies": False, "language": "en"})
    app = create_app(config)
    with fleet.sessions() as s:
        for name, role in (("admin", "admin"), ("operator", "operator")):
            user = auth.create_user(s, name, "correct horse battery", role)
            s.flush()
            fleet.__dict__[f"{name}_token"] = auth.create_token(s, user, "tests")
        s.commit()
    yield app
    app.extensions["greengate"].engine.dispose()


def _login(app, name):
    client = app.test_client()
    client.get("/login")  # the login form carries the session's CSRF token too
    with client.session_transaction() as session:
        token = session["csrf"]
    assert client.post("/login", data={"username": name, "password": "correct horse battery",
                                       "csrf_token": token}).status_code == 302
    with client.session_transaction() as session:
        return client, session["csrf"]


def test_admins_edit_rules_on_the_page_and_every_change_is_audited(web, fleet):
    client, csrf = _login(web, "admin")
    page = client.get("/alerts")
    assert page.status_code == 200 and b"No rules yet" in page.data
    form = {"csrf_token": csrf, "name": "district watch", "kind": "district_loss",
            "threshold": "30", "district": "q1", "webhook_url": "ftp://nope",
            "emails": "", "enabled": "1"}
    refused = client.post("/alerts", data=form)
    assert refused.status_code == 422 and b"must start with https://" in refused.data
    assert b'value="district watch"' in refused.data  # the form keeps what was typed
    assert client.post("/alerts", data={**form, "csrf_token": "forged"}).status_code == 403
    assert client.post("/alerts", data={**form, "webhook_url": "https://hooks.example/gg"}
                       ).status_code == 302
    with fleet.sessions() as s:
        rule = s.scalars(select(AlertRule)).one()
        assert (rule.kind, rule.threshold, rule.enabled) == ("district_loss", 30.0, True)
    page = client.get("/alerts").data.decode()
    assert "more than 30 % of a district" in page and "https://hooks.example/gg" in page
    assert "Edit rule" in client.get(f"/alerts?edit={rule.id}").data.decode()
    edited = client.post("/alerts", data={**form, "rule_id": rule.id, "threshold": "45",
                                          "webhook_url": "https://hooks.example/gg",
                                          "emails": "ops@example.org"})
    assert edited.status_code == 302
    assert client.post(f"/alerts/{rule.id}/enabled", data={"csrf_token": csrf,
                                                           "enabled": "0"}).status_code == 302
    with fleet.sessions() as s:
        rule = s.get(AlertRule, rule.id)
        assert (rule.threshold, rule.emails, rule.enabled) == (45.0, "ops@example.org", False)
        log = [(a.action, a.actor, a.detail) for a in s.scalars(
            select(AuditLog).where(AuditLog.action.like("alert_rule.%")).order_by(AuditLog.id))]
    assert [a[:2] for a in log] == [("alert_rule.create", "admin"),
                                    ("alert_rule.update", "admin"),
                                    ("alert_rule.update", "admin")]
    assert log[1][2]["changes"]["threshold"] == [30.0, 45.0]
    assert log[2][2]["changes"] == {"enabled": [True, False]}


def test_only_admins_see_alerts(web, fleet):
    client, _ = _login(web, "operator")
    assert client.get("/alerts").status_code == 403
    assert b'href="/alerts"' not in client.get("/").data
    admin, _ = _login(web, "admin")
    assert b'href="/alerts"' in admin.get("/").data
    anonymous = web.test_client().get("/alerts")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]


def test_the_page_shows_failures(web, fleet, dispatcher):
    fleet.rule(webhook_url=dead_url())
    d = dispatcher()
    fleet.offline("q1-a", T0)
    step(d, T0 + GRACE)
    client, _ = _login(web, "admin")
    problems = client.get("/alerts").data.decode().split('id="problems"')[1].split("</table>")[0]
    assert "Kiosk q1-a" in problems and "cannot reach 127.0.0.1" in problems


def test_rules_api(web, fleet):
    client = web.test_client()
    admin = {"Authorization": f"Bearer {fleet.admin_token}"}
    made = client.post("/api/v1/alerts/rules", headers=admin,
                       json={"name": "all", "kind": "kiosk_offline",
                             "webhook_url": "https://hooks.example/x"})
    assert made.status_code == 201 and made.json["district"] is None
    bad = client.patch(f"/api/v1/alerts/rules/{made.json['id']}", headers=admin,
                       json={"webhook_url": "hooks.example"})
    assert bad.status_code == 422 and "https://" in bad.json["message"]
    ok = client.patch(f"/api/v1/alerts/rules/{made.json['id']}", headers=admin,
                      json={"enabled": False})
    assert ok.status_code == 200 and ok.json["enabled"] is False
    assert [r["id"] for r in client.get("/api/v1/alerts/rules", headers=admin).json["rules"]] \
        == [made.json["id"]]
    assert client.get("/api/v1/alerts/rules/999", headers=admin).status_code == 404
    operator = {"Authorization": f"Bearer {fleet.operator_token}"}
    refused = client.get("/api/v1/alerts/rules", headers=operator)
    assert refused.status_code == 403 and refused.json["error"] == "forbidden"
    assert client.get("/api/v1/alerts/deliveries", headers=admin).json == {"deliveries": []}

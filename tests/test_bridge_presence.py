"""Presence across broker tiers (docs/scaling.md#presence-across-tiers): the tracker's
rules for kiosks behind a district bridge, on their own, and the bridge rows written on
SQLite and PostgreSQL. The whole path on real bridged brokers: tests/test_tiers_presence.py.
"""

from __future__ import annotations

import re

import pytest

from fleet import bridges
from fleet import presence as presence_db
from fleet.models import OFFLINE, ONLINE, UNREACHABLE, Bridge
from fleet.presence import Tracker
from greengate import messages

T0 = 1_700_000_000.0
D1, CORE = "10.0.1.5:8883", "core.example.org:8883"


def beat(session, broker=D1, kid="k1"):
    return messages.heartbeat(kiosk=kid, session=session, ts=T0, uptime=5.0,
                              bundles={"trust": 1, "policy": 1, "status": 1}, outbox=0,
                              clock="synced", lists="fresh", cpu_temp=None, broker=broker)


def online(session, broker=D1):
    return {"session": session, "state": "online", "broker": broker}


def states(tracker):
    return {kid: (k.state, k.detail) for kid, k in tracker.kiosks.items()}


@pytest.fixture
def tracker():
    t = Tracker(keepalive=10.0, backlog=100)  # timeout 15 s
    t.known_bridges([("d1", D1, None, None), ("d2", "10.0.2.5:8883", None, None)])
    t.resume(T0)
    t.bridge("d1", True, T0)
    t.bridge("d2", True, T0)
    for kid in ("k1", "k2"):
        t.presence(kid, online(1), T0)
        t.heartbeat(kid, beat(1, kid=kid), T0)
    t.presence("k3", online(1, broker="10.0.2.5:8883"), T0)
    t.presence("k4", online(1, broker=CORE), T0)
    t.take_changes()
    t.take_bridge_changes()
    return t


def test_a_bridge_down_makes_its_kiosks_unreachable_not_offline_and_silence_does_not(tracker):
    tracker.bridge("d1", False, T0 + 1)
    assert states(tracker)["k1"] == (UNREACHABLE, "through bridge d1")
    assert states(tracker)["k2"][0] == UNREACHABLE
    assert states(tracker)["k3"][0] == ONLINE and states(tracker)["k4"][0] == ONLINE
    changes = tracker.take_changes()
    assert {(c.kiosk, c.previous, c.state) for c in changes} == {
        ("k1", ONLINE, UNREACHABLE), ("k2", ONLINE, UNREACHABLE)}
    assert not any(c.open_outage for c in changes)  # not an outage: nobody knows it is down
    # long past the silence timeout: still unreachable while the bridge is down
    assert tracker.sweep(T0 + 600) == ["k3", "k4"]
    assert states(tracker)["k1"][0] == UNREACHABLE
    [change] = tracker.take_bridge_changes()
    assert (change.name, change.up, change.since) == ("d1", False, T0 + 1)


def test_when_the_bridge_is_back_its_kiosks_get_one_timeout_to_be_heard(tracker):
    tracker.bridge("d1", False, T0 + 1)
    tracker.bridge("d1", True, T0 + 100)
    assert states(tracker)["k1"][0] == UNREACHABLE
    tracker.heartbeat("k1", beat(1), T0 + 101)  # queued in d1, up the bridge now
    assert states(tracker)["k1"] == (ONLINE, "")
    assert "k2" not in tracker.sweep(T0 + 114)  # k2 has until T0 + 115
    assert tracker.sweep(T0 + 115.5) == ["k2"]
    k2 = [c for c in tracker.take_changes() if c.kiosk == "k2"][-1]
    assert (k2.previous, k2.state) == (UNREACHABLE, OFFLINE)
    assert k2.open_outage == T0  # the outage starts at the last message heard


def test_its_will_after_the_bridge_is_back_is_an_outage(tracker):
    tracker.bridge("d1", False, T0 + 1)
    tracker.bridge("d1", True, T0 + 50)
    tracker.presence("k1", {"session": 1, "state": "offline"}, T0 + 51)
    assert states(tracker)["k1"] == (OFFLINE, "connection lost")


def test_a_kiosk_that_failed_over_to_the_core_is_judged_as_any_other(tracker):
    tracker.bridge("d1", False, T0 + 1)
    tracker.presence("k1", online(2, broker=CORE), T0 + 20)  # a new connection, on the core
    tracker.heartbeat("k1", beat(2, broker=CORE), T0 + 21)
    assert states(tracker)["k1"] == (ONLINE, "")
    assert "k1" in tracker.sweep(T0 + 37)  # silent on the core: offline as usual
    assert tracker.kiosks["k2"].state == UNREACHABLE
    # the late will of its old connection through d1 is older: ignored
    tracker.presence("k1", {"session": 1, "state": "offline"}, T0 + 40)
    assert tracker.kiosks["k1"].session == 2


def test_a_fleet_restart_with_a_bridge_down_keeps_its_kiosks_unreachable(tracker):
    tracker.bridge("d1", False, T0 + 1)
    rows = [(kid, k.state, k.since, k.detail, k.session, k.last_seen, k.heartbeat)
            for kid, k in tracker.kiosks.items()]
    again = Tracker(keepalive=10.0, backlog=100)
    again.load(rows)
    again.known_bridges([("d1", D1, False, T0 + 1)])
    again.resume(T0 + 200)
    # the retained copies the broker hands a new subscriber
    again.presence("k1", online(1), T0 + 200, retained=True)
    again.bridge("d1", False, T0 + 200)
    assert states(again)["k1"][0] == UNREACHABLE
    assert not {"k1", "k2"} & set(again.sweep(T0 + 900))  # k3, k4: silent, offline
    assert not [c for c in again.take_changes()
                if c.previous is not None and c.kiosk in ("k1", "k2")]
    assert states(again)["k2"][0] == UNREACHABLE


def test_a_kiosk_known_online_behind_a_bridge_down_at_restart_is_unreachable():
    t = Tracker(keepalive=10.0, backlog=100)
    t.known_bridges([("d1", D1, False, T0)])
    t.resume(T0 + 5)
    t.presence("k9", online(3), T0 + 5, retained=True)
    assert states(t)["k9"] == (UNREACHABLE, "through bridge d1")


def test_a_bridge_nobody_registered_is_recorded_and_changes_no_kiosk(tracker):
    tracker.bridge("q9", False, T0 + 1)
    assert all(state == ONLINE for state, _ in states(tracker).values())
    assert [(c.name, c.up, c.address) for c in tracker.take_bridge_changes()] == [
        ("q9", False, None)]


def test_kiosks_that_do_not_name_their_broker_are_judged_by_silence(tracker):
    tracker.presence("old", {"session": 1, "state": "online"}, T0)
    tracker.bridge("d1", False, T0 + 1)
    assert states(tracker)["old"][0] == ONLINE
    assert "old" in tracker.sweep(T0 + 16)


def test_bridge_rows_are_written_and_registered(fleet_db):
    with fleet_db() as s:
        bridges.register(s, "d1", D1, at=T0)
        s.commit()
    t = Tracker(keepalive=10.0)
    t.bridge("d1", False, T0 + 5)
    t.bridge("q9", True, T0 + 6)
    with fleet_db() as s:
        connection = s.connection()
        presence_db.write_bridges(connection, t.take_bridge_changes())
        s.commit()
        rows = {b.name: (b.address, b.connected, b.since) for b in bridges.listed(s)}
    assert rows == {"d1": (D1, False, T0 + 5), "q9": (None, True, T0 + 6)}
    with fleet_db() as s:
        assert sorted(presence_db.load_bridges(s.connection())) == [
            ("d1", D1, False, T0 + 5), ("q9", None, True, T0 + 6)]
        with pytest.raises(bridges.BridgeError):
            bridges.register(s, "D1!", D1)
        with pytest.raises(bridges.BridgeError):
            bridges.register(s, "d3", "no-port")
        assert s.get(Bridge, "d3") is None


def test_each_districts_crl_is_shown_and_one_behind_the_others_is_flagged(fleet_app, fleet_db,
                                                                         api):
    """The CRL each district broker applies (its crl-follow's report, written by the
    presence worker) on GET /api/v1/bridges and the home page: a district behind the
    others still lets in a kiosk retired since."""
    with fleet_db() as s:
        for name, address in (("d1", D1), ("d2", "10.0.2.5:8883"), ("d3", "10.0.3.5:8883")):
            bridges.register(s, name, address, at=T0)
        s.commit()
    t = Tracker(keepalive=10.0)
    t.bridge_crl("d1", {"number": 1_700_000_000_500, "at": T0 + 1})
    t.bridge_crl("d2", {"number": 1_700_000_000_100, "at": T0 + 2})  # replaced below
    t.bridge_crl("d2", {"number": 1_700_000_000_200, "at": T0 + 3,
                        "error": "reload 'systemctl reload mosquitto' exited with 1"})
    t.bridge_crl("q9", {"number": 1_700_000_000_000, "at": T0 + 4})  # not registered
    with fleet_db() as s:
        presence_db.write_crl_reports(s.connection(), t.take_crl_reports())
        s.commit()
    assert t.take_crl_reports() == {}
    rows = {b["name"]: b for b in api.client.get("/api/v1/bridges",
                                                 headers=api.operator).get_json()["bridges"]}
    assert rows["d1"]["crl"]["number"] == 1_700_000_000_500 and not rows["d1"]["crl_behind"]
    assert rows["d2"]["crl"]["error"].startswith("reload") and rows["d2"]["crl_behind"]
    assert rows["d3"]["crl"] is None and rows["d3"]["crl_behind"]  # never reported
    assert rows["q9"]["address"] is None and not rows["q9"]["crl_behind"]
    from tests.test_dashboard_findings import PASSWORD, _login
    from fleet import auth
    with fleet_db() as s:
        auth.create_user(s, "lan", PASSWORD, "operator")
        s.commit()
    home = _login(fleet_app).get("/?lang=en").get_data(as_text=True)
    cells = {name: re.search(rf'<tr data-bridge="{name}".*?class="bridge-crl([^"]*)">(.*?)</td>',
                             home, re.S).groups() for name in ("d1", "d2", "d3")}
    assert cells["d1"][0] == "" and "1700000000500" in cells["d1"][1]
    assert "outage" in cells["d2"][0] and "behind the others" in cells["d2"][1] \
        and "exited with 1" in cells["d2"][1]
    assert "not reported" in cells["d3"][1]

"""A case closes the workplace, as the kiosk sees it (issue 16 part 5).

- the decision table row: a kiosk listed in the policy bundle's `closed` answers every
  scan red `place_closed` (detail: the organisation), before any certificate is read;
  the state survives a restart (the bundle is stored) and a bundle without the kiosk
  reopens it; the `closed` map is read tolerantly;
- the light: the place-closed pattern (gpiozero MockFactory) repeats, is red only, never
  green, never the relay, and differs from every other pattern;
- end to end: the real parts (Mosquitto with TLS, the fleet's publisher, the Flask app, a
  `greengate-kiosk run` process): a health official suspends the organisation after a
  case through the API, the kiosk answers a green certificate `place_closed` within
  seconds, keeps doing so after a restart, and the ward officer's lifting restores green.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from device.indicator import OUTPUTS
from device.kiosk import LiveVerifier
from device.state import BundleStore, closed_entry
from greengate.bundle import load_public_key
from greengate.decision import Reason
from tests.broker import wait_until
from tests.fleetkit import FleetKit, at
from tests.test_indicator import CLOCK, GREEN, OOS, RED, make_kiosk

T0 = at("2021-10-05T00:00:00")
CHECK = at("2021-10-05T08:00:00")
BUDGET = timedelta(hours=72)
DOCS = {n: json.loads((Path(__file__).resolve().parents[1] / "greengate" / "policies" /
                       f"{n}.json").read_text()) for n in ("hcmc-2021", "accept-valid")}
SHUT = {"organisation": "xuong-may", "since": "2021-10-04T09:30:00Z"}


# --- the decision table row -----------------------------------------------------------------
@pytest.fixture
def fleet():
    return FleetKit()


def store_for(tmp_path, fleet, kiosk_id="k-gate"):
    return BundleStore(tmp_path / kiosk_id, load_public_key(fleet.public_pem), fleet.deployment,
                       "hcmc-2021", BUDGET, kiosk_id=kiosk_id)


def policy(fleet, version, closed=None):
    body = {"policies": DOCS, "assigned": {}}
    if closed is not None:
        body["closed"] = closed
    return fleet.seal("policy", version, T0, body)


def fill(store, fleet, es256, closed=None):
    for raw in (fleet.trust(1, T0, es256), policy(fleet, 1, closed), fleet.status(1, T0)):
        ok, why = store.offer(raw)
        assert ok, why


def green_cert(es256):
    return es256.mint(es256.vaccination(date="2021-08-01"), iat="2021-09-01", exp="2022-09-01")


def test_a_closed_kiosk_answers_place_closed_to_every_scan(tmp_path, fleet, es256):
    store = store_for(tmp_path, fleet)
    fill(store, fleet, es256, closed={"k-gate": SHUT, "k-elsewhere": SHUT})
    live = LiveVerifier(store)
    for text in (green_cert(es256), "HC1:garbage", "not a certificate at all", ""):
        d = live.verify(text, CHECK)
        assert (d.decision, d.reason, d.detail) == ("red", Reason.PLACE_CLOSED, "xuong-may")
        assert d.holder is None and d.cert_hash is None  # nothing of the person was read
    # before the clock and the lists too: the place is closed whatever the kiosk knows
    assert live.verify(green_cert(es256), None).reason == Reason.PLACE_CLOSED
    assert live.verify(green_cert(es256), CHECK + timedelta(days=30)).reason == \
        Reason.PLACE_CLOSED
    # another kiosk of the same deployment, not listed: decides as usual
    other = store_for(tmp_path, fleet, "k-open")
    fill(other, fleet, es256, closed={"k-gate": SHUT})
    assert other.closed is None and LiveVerifier(other).verify(green_cert(es256), CHECK).green


def test_closed_survives_a_restart_and_a_new_bundle_reopens(tmp_path, fleet, es256):
    store = store_for(tmp_path, fleet)
    fill(store, fleet, es256, closed={"k-gate": SHUT})
    again = store_for(tmp_path, fleet)  # the kiosk restarts: the stored bundle is read back
    assert again.closed == SHUT
    assert LiveVerifier(again).verify(green_cert(es256), CHECK).reason == Reason.PLACE_CLOSED
    # an older policy bundle without the kiosk is a rollback: refused, still closed
    ok, why = again.offer(policy(fleet, 0, closed={}))
    assert not ok and again.closed == SHUT
    ok, why = again.offer(policy(fleet, 2, closed={}))
    assert ok, why
    assert again.closed is None and LiveVerifier(again).verify(green_cert(es256), CHECK).green
    assert store_for(tmp_path, fleet).closed is None  # and stays open after a restart


@pytest.mark.parametrize("closed, expected", [
    (None, None),  # a fleet older than closures
    ({}, None),
    ("k-gate", None),  # not a map: nothing names this kiosk
    (["k-gate"], None),
    ({"k-gate": SHUT}, SHUT),
    ({"k-gate": "xuong-may"}, {"organisation": "", "since": ""}),  # named: closed
    ({"k-gate": {"organisation": 7, "since": None}}, {"organisation": "", "since": ""}),
    ({"k-gate": {"organisation": "x" * 500}}, {"organisation": "x" * 64, "since": ""}),
])
def test_the_closed_map_is_read_tolerantly(closed, expected):
    body = {"policies": {}} if closed is None else {"policies": {}, "closed": closed}
    assert closed_entry(body, "k-gate") == expected
    assert closed_entry(body, None) is None
    assert closed_entry("not a body", "k-gate") is None


def test_a_policy_bundle_with_an_odd_closed_map_is_still_applied(tmp_path, fleet, es256):
    store = store_for(tmp_path, fleet)
    fill(store, fleet, es256, closed="everything")
    assert store.closed is None and store.verifier.verify(green_cert(es256), CHECK).green


# --- the light --------------------------------------------------------------------------------
def test_the_place_closed_pattern_is_red_only_repeats_and_is_told_apart():
    k = make_kiosk()
    ind = k.indicator
    try:
        ind.closed_on, ind.closed_off = 0.15, 0.05
        pattern = ind.closed_pattern()
        steps = pattern.steps + pattern.loop
        assert pattern.name == "place_closed" and pattern.loop
        assert not any({"green", "relay", "buzzer"} & s.on for s in steps)
        ind.place_closed()
        assert ind.pattern == "place_closed"
        assert k.states() == {"green": False, "red": True, "buzzer": False, "relay": False}
        time.sleep(0.7)
        assert ind.pattern == "place_closed"  # still going
        reds = [length for _, length in k.pulses("red")]
        assert len(reds) >= 3 and all(length is None or length >= 0.1 for length in reds)
        assert k.pulses("green") == [] and k.pulses("relay") == [] and k.pulses("buzzer") == []
        # a scan replaces it at once with the ordinary answer, red
        ind.show(RED)
        assert ind.pattern == "red"
        # told apart from every decision and every fault: no other pattern has its steps
        everything = [ind.pattern_for(d) for d in (GREEN, RED, CLOCK, OOS)] + [
            ind.fault_pattern(kind) for kind in ("config", "storage", "source", "lists",
                                                 "clock")]
        assert all((p.steps, p.loop) != (pattern.steps, pattern.loop) for p in everything)
        assert "place_closed" not in {p.name for p in everything} | {"starting", "lamp_test"}
        # and not by a hair: by default it is red 92 % of the time; out_of_service is red
        # half of it, the faults' short flashes leave them dark most of the time
        default = type(ind)
        assert default.closed_on / (default.closed_on + default.closed_off) > 0.9
        assert 2 * default.flash * 3 < default.flash_period and default.flicker < 0.5
        # the duty cycle a guard reads: red most of the time, with a short dark gap
        k.indicator.idle()
        k.clear()
        ind.place_closed()
        time.sleep(0.65)
        ons = [length for _, length in k.pulses("red") if length is not None]
        assert ons and all(abs(length - 0.15) < 0.05 for length in ons)
        ind.idle()
        assert k.states() == dict.fromkeys(OUTPUTS, False)
    finally:
        k.indicator.close()
        k.factory.reset()


# --- the kiosk's light follows the bundle -----------------------------------------------------------
def test_the_kiosk_shows_the_place_closed_light_while_closed_and_idles_once_reopened(
        tmp_path, broker, es256):
    """The kiosk in this process (not run: its parts called directly), mock pins."""
    from device import config as config_module
    from device.kiosk import Kiosk
    from tests.test_kiosk_e2e import KIOSK, Site

    site = Site(tmp_path, broker, es256)
    kiosk = Kiosk(config_module.load(site.config()))
    try:
        fleet = site.fleet
        closed = fleet.seal("policy", 1, site.issued,
                            {"policies": DOCS, "closed": {KIOSK: SHUT}})
        for raw in (fleet.trust(1, site.issued, es256), closed, fleet.status(1, site.issued)):
            assert kiosk.store.offer(raw)[0]
        assert kiosk._fault_wake.is_set()  # a bundle wakes the light's loop at once
        kiosk._show_fault()
        assert kiosk.faults.worst() is None
        devices = kiosk.indicator._devices
        assert kiosk.indicator.pattern == "place_closed"
        assert (devices["green"].value, devices["red"].value) == (0, 1)

        # a scan: the ordinary red answer, stored for the fleet with its reason
        decision = LiveVerifier(kiosk.store, kiosk.clock).verify(
            green_cert(es256), kiosk.clock.validation_time())
        assert decision.reason == Reason.PLACE_CLOSED
        kiosk.on_decision(decision, time.time())
        assert kiosk.indicator.pattern == "red"
        kiosk._last_show = 0.0  # the answer has been shown long enough
        kiosk._show_fault()
        assert kiosk.indicator.pattern == "place_closed"

        reopened = fleet.seal("policy", 2, site.issued, {"policies": DOCS, "closed": {}})
        assert kiosk.store.offer(reopened)[0]
        kiosk._show_fault()
        assert kiosk.indicator.pattern is None
        assert all(not d.value for d in devices.values())
    finally:
        kiosk.close()


# --- end to end ------------------------------------------------------------------------------------
def test_a_suspension_after_a_case_reaches_a_running_kiosk_and_lifting_restores_green(
        tmp_path, make_broker, es256):
    from sqlalchemy import select

    from fleet import auth, kiosks, organisations, rosters
    from fleet.app import create_app
    from fleet.models import District, Location, Scan, Worker
    from greengate.status import cert_hash
    from tests.drillkit import Fleet, KioskProc, mint
    from tests.ingestkit import Workers

    broker = make_broker()
    fleet = Fleet(tmp_path, broker, es256)
    fleet.start_publisher()
    kiosk = KioskProc(tmp_path, broker, fleet.public_pem, "xm-gate-1", heartbeat=1.0)
    case_text, case_ci = mint(es256)
    worker_text, _ = mint(es256, dose_days_ago=60)
    with fleet.sessions() as s:
        q7 = District(code="q7", name="Quận 7")
        s.add(q7)
        s.flush()
        ward = organisations.create_ward(s, code="tan-thuan-dong", name="Tân Thuận Đông",
                                         district=q7, actor="t")
        s.flush()
        org = organisations.create(s, code="xuong-may", name="Xưởng may", kind="business",
                                   district=q7, ward=ward, actor="t")
        s.flush()
        organisations.set_status(s, org, "approved", actor="t", role="district_officer",
                                 quota=20)
        gate = Location(code="xm-cong", name="Cổng", address="", district_id=q7.id,
                        ward_id=ward.id, organisation_id=org.id)
        s.add(gate)
        s.flush()
        kiosks.register(s, fleet.config, kiosk_id="xm-gate-1", deployment="drill",
                        policy="hcmc-2021", location=gate, actor="t", at=1.0)
        # its roster (the gate is not workers-only: the kiosk holds it all the same); the
        # fleet's roster secret exists before any worker is linked with it
        rosters.roster_secret(fleet.config)
        s.add(Worker(organisation_id=org.id, display_name="An", created_at=1.0,
                     created_by="t", holder_key="00" * 16))
        s.flush()
        placed = rosters.publish(s, fleet.config, org, actor="t")
        # the case was scanned at the gate yesterday (as the ingest would have stored it)
        s.add(Scan(kiosk_id="xm-gate-1", scan_id="case", ts=time.time() - 86400,
                   received=time.time(), decision="green", reason="ok",
                   cert_hash=cert_hash(case_ci).hex(), policy="hcmc-2021",
                   location_id=gate.id, district_id=q7.id))
        tokens = {}
        for name, role, extra in (("health", "health_official", {}),
                                  ("ward", "ward_officer", {"ward_id": ward.id}),
                                  ("op", "operator", {})):
            user = auth.create_user(s, name, "correct horse battery", role, **extra)
            s.flush()
            tokens[name] = {"Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
        s.commit()
        roster_version = rosters.current(s, "drill")["xm-gate-1"][0]
    rosters.notify(fleet.publisher, placed)
    app = create_app(fleet.config, publisher=fleet.publisher)
    app.testing = True
    client = app.test_client()
    workers = Workers(tmp_path)

    def seen():  # the kiosk as the API shows it, from its heartbeats through the ingest
        r = client.get("/api/v1/kiosks/xm-gate-1", headers=tokens["op"])
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    try:
        workers.start(fleet.config, seen_flush=0.3)
        kiosk.start()
        kiosk.wait_ready()
        assert kiosk.decide(worker_text)[1:] == ("green", "ok")
        wait_until(lambda: seen()["roster"] is not None, 20, "the roster in a heartbeat")
        assert (seen()["roster"], seen()["closed"]) == (
            {"organisation": "xuong-may", "version": roster_version}, None)

        r = client.post("/api/v1/organisations/xuong-may/suspend-for-case",
                        json={"qr": case_text, "case_ref": "BN-1"}, headers=tokens["health"])
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["published"] == "queued"
        posted = time.monotonic()
        wait_until(lambda: "applied policy bundle v2" in kiosk.log(), 15, "the closing bundle")
        applied = time.monotonic() - posted
        assert kiosk.decide(worker_text)[1:] == ("red", "place_closed")
        assert kiosk.decide(case_text)[1:] == ("red", "place_closed")
        wait_until(lambda: "place closed (organisation xuong-may" in kiosk.log(), 10,
                   "the place-closed light")
        print(f"suspension applied by the kiosk {applied:.2f} s after the API answered")
        wait_until(lambda: seen()["closed"] == "xuong-may", 20, "closed in a heartbeat")
        assert seen()["roster"] == {"organisation": "xuong-may", "version": roster_version}
        # the kiosk page says both (English, and Vietnamese: the default)
        page = app.test_client()
        form = page.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        assert page.post("/login", data={"csrf_token": csrf, "username": "op",
                                         "password": "correct horse battery"}).status_code == 302
        html = page.get("/kiosks/xm-gate-1?lang=en").get_data(as_text=True)
        assert re.search(r'<dd id="roster">(.*?)</dd>', html, re.S).group(1) == \
            f"roster xuong-may v{roster_version}"
        assert "place closed (xuong-may)" in re.search(r'<dd id="closed">(.*?)</dd>', html,
                                                       re.S).group(1)
        html = page.get("/kiosks/xm-gate-1?lang=vi").get_data(as_text=True)
        assert "cơ sở tạm đóng (xuong-may)" in html
        assert f"danh sách của xuong-may, phiên bản {roster_version}" in html

        # a restart keeps the place closed (the stored bundle)
        assert kiosk.stop() == 0, kiosk.log()
        kiosk.start()
        wait_until(lambda: kiosk.log().count("kiosk xm-gate-1 running") == 2, 30, "restart")
        assert kiosk.decide(worker_text)[1:] == ("red", "place_closed")

        # the ward officer reopens it through the status path
        r = client.post("/api/v1/organisations/xuong-may/status", json={"status": "approved"},
                        headers=tokens["ward"])
        assert r.status_code == 200, r.get_json()
        wait_until(lambda: "applied policy bundle v3" in kiosk.log(), 15, "the reopening bundle")
        assert kiosk.decide(worker_text)[1:] == ("green", "ok")
        wait_until(lambda: "place open again" in kiosk.log(), 10, "the light back to normal")
        with fleet.sessions() as s:
            assert s.scalar(select(Scan.id).where(Scan.scan_id == "case")) is not None
        wait_until(lambda: seen()["closed"] is None, 20, "open again in a heartbeat")
        assert kiosk.stop() == 0, kiosk.log()
    finally:
        kiosk.close()
        workers.close()
        app.extensions["greengate"].engine.dispose()
        fleet.close()

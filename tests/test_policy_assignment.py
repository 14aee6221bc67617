"""Per-kiosk policy assignment reaching the kiosk (issue 15, item 4).

The end-to-end test runs the real parts: Mosquitto (TLS), the fleet's publisher, an
ingest worker, a `greengate-kiosk run` process and the Flask app: PATCH /api/v1/kiosks/<id>
{"policy": ...} signs a new policy bundle, the kiosk applies it and says so in its
heartbeat, and the API and the kiosk page show the applied policy beside the assigned
one. A kiosk that keeps applying another policy past the grace period is degraded with
the cause. The tracker's rule, the heartbeat field and the bulk assignment API are
tested on their own too (SQLite and PostgreSQL where a database is involved).
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, update

from fleet import bundles, kiosks
from fleet.models import AuditLog, District, Kiosk, Location
from fleet.presence import Tracker
from greengate import bundle as gg_bundle
from greengate import messages
from tests.broker import wait_until


# --- the heartbeat field ------------------------------------------------------------------
def beat(policy=None, held=3, **extra) -> dict:
    return messages.heartbeat(kiosk="k1", session=1, ts=1_700_000_000.0, uptime=5.0,
                              bundles={"trust": 1, "policy": held, "status": 1}, outbox=0,
                              clock="synced", lists="fresh", cpu_temp=None, policy=policy,
                              **extra)


def test_heartbeat_carries_the_applied_policy_and_old_kiosks_parse_as_before():
    doc = messages.parse_heartbeat(messages.encode(beat("accept-valid")), "k1")
    assert doc["policy"] == "accept-valid"
    old = messages.parse_heartbeat(messages.encode(beat()), "k1")
    assert "policy" not in old
    for bad in ("", "has space", "x" * 65, 7, ["a"], "bad\nline", "-lead"):
        raw = messages.encode({**beat(), "policy": bad})
        with pytest.raises(messages.MessageError, match="policy"):
            messages.parse_heartbeat(raw, "k1")


# --- the tracker's rule -------------------------------------------------------------------
def test_mismatch_past_the_grace_period_is_degraded_and_clears_when_they_match():
    t = Tracker(keepalive=30.0)
    assert t.grace == 60.0  # two heartbeat intervals by default
    t.assign([("k1", "accept-valid", 3, 1000.0)])
    t.heartbeat("k1", beat("hcmc-2021", held=2), 1030.0)  # the bundle is on its way
    assert (t.kiosks["k1"].state, t.kiosks["k1"].detail) == ("online", "")
    t.heartbeat("k1", beat("hcmc-2021", held=2), 1061.0)  # past the grace period
    assert (t.kiosks["k1"].state, t.kiosks["k1"].detail) == (
        "degraded", "policy accept-valid assigned, hcmc-2021 applied")
    t.heartbeat("k1", beat("accept-valid", held=3), 1062.0)
    assert (t.kiosks["k1"].state, t.kiosks["k1"].detail) == ("online", "")
    # with another cause, both are named
    t.heartbeat("k1", beat("hcmc-2021", held=3, faults=[]) | {"clock": "unknown"}, 1063.0)
    assert t.kiosks["k1"].detail == "clock unknown; policy accept-valid assigned, " \
                                    "hcmc-2021 applied"


def test_what_the_tracker_cannot_judge_is_left_alone():
    t = Tracker(keepalive=30.0, policy_grace=0.0)
    t.assign([("new", "accept-valid", 3, 1000.0), ("nobundle", "accept-valid", None, None)])
    # a kiosk holding a newer policy bundle than the tracker loaded knows more than it
    t.heartbeat("new", {**beat("hcmc-2021", held=4), "kiosk": "new"}, 2000.0)
    # no policy bundle yet: nothing could have carried the assignment
    t.heartbeat("nobundle", {**beat("hcmc-2021"), "kiosk": "nobundle"}, 2000.0)
    # a kiosk older than the field, and one the tracker has no assignment for
    t.heartbeat("old", {**beat(), "kiosk": "old"}, 2000.0)
    t.heartbeat("unknown", {**beat("x"), "kiosk": "unknown"}, 2000.0)
    assert {k: (p.state, p.detail) for k, p in t.kiosks.items()} == {
        k: ("online", "") for k in ("new", "nobundle", "old", "unknown")}


# --- the API --------------------------------------------------------------------------------
@pytest.fixture
def fleet(api, fleet_config):
    bundles.ensure_signing_key(fleet_config)
    with api.sessions() as s:
        q1 = District(code="q1", name="Quận 1")
        q3 = District(code="q3", name="Quận 3")
        s.add_all([q1, q3])
        s.flush()
        market = Location(code="q1-market", name="Chợ", address="", district_id=q1.id)
        station = Location(code="q3-station", name="Ga", address="", district_id=q3.id)
        s.add_all([market, station])
        s.flush()
        bundles.ensure_issued(s, fleet_config, "test")
        for kid, loc in (("q1-a", market), ("q1-b", market), ("q3-a", station),
                         ("q3-gone", station)):
            kiosks.register(s, fleet_config, kiosk_id=kid, deployment="test",
                            policy="hcmc-2021", location=loc, actor="admin", at=1.0)
        s.commit()
        s.execute(update(Kiosk).where(Kiosk.id == "q3-gone").values(state="retired"))
        s.commit()
    api.config = fleet_config
    api.pub = bundles.load_signing_key(fleet_config).public_key()
    return api


def policy_bundle(fleet):
    r = fleet.client.get("/api/v1/bundles/test/policy")
    assert r.status_code == 200
    return gg_bundle.open_bundle(r.data, fleet.pub, "test")


def test_patch_signs_a_bundle_that_carries_the_assignment(fleet):
    before = policy_bundle(fleet).version
    r = fleet.client.patch("/api/v1/kiosks/q1-a", json={"policy": "accept-valid",
                                                        "reason": "pilot"},
                           headers=fleet.operator)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["policy"], body["policy_applied"]) == ("accept-valid", None)
    b = policy_bundle(fleet)
    assert b.version == before + 1 and b.body["assigned"]["q1-a"] == "accept-valid"
    with fleet.sessions() as s:
        (entry,) = s.scalars(select(AuditLog).where(AuditLog.action == "kiosk.update")).all()
        assert (entry.actor, entry.target, entry.detail) == (
            "operator", "q1-a", {"reason": "pilot", "policy": ["hcmc-2021", "accept-valid"]})
    # the same again changes nothing and signs nothing
    assert fleet.client.patch("/api/v1/kiosks/q1-a", json={"policy": "accept-valid"},
                              headers=fleet.operator).status_code == 200
    assert policy_bundle(fleet).version == before + 1
    r = fleet.client.patch("/api/v1/kiosks/q1-a", json={"policy": "nope"}, headers=fleet.admin)
    assert r.status_code == 422 and "has no policy 'nope'" in r.get_json()["message"]


def test_assigning_to_a_district_or_location_is_one_bundle(fleet):
    before = policy_bundle(fleet).version
    url = "/api/v1/policies/test/accept-valid/assign"
    r = fleet.client.post(url, json={"district": "q3"}, headers=fleet.officer)
    assert r.status_code == 403  # officers read, they do not assign
    r = fleet.client.post(url, json={"district": "q1", "location": "q1-market"},
                          headers=fleet.admin)
    assert r.status_code == 422 and "exactly one" in r.get_json()["message"]
    r = fleet.client.post(url, json={"district": "q3", "reason": "trial"}, headers=fleet.admin)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["assigned"] == ["q3-a"]  # the retired kiosk is left out
    r = fleet.client.post(url, json={"location": "q1-market"}, headers=fleet.operator)
    assert r.get_json()["assigned"] == ["q1-a", "q1-b"] and r.get_json()["unchanged"] == []
    r = fleet.client.post(url, json={"kiosks": ["q1-a", "q3-a"]}, headers=fleet.operator)
    assert r.get_json()["assigned"] == [] and r.get_json()["unchanged"] == ["q1-a", "q3-a"]
    b = policy_bundle(fleet)
    assert b.version == before + 2
    assert {k: b.body["assigned"][k] for k in ("q1-a", "q1-b", "q3-a")} == dict.fromkeys(
        ("q1-a", "q1-b", "q3-a"), "accept-valid")
    r = fleet.client.post(url, json={"kiosks": ["q3-gone"]}, headers=fleet.admin)
    assert r.status_code == 409 and "retired" in r.get_json()["message"]
    r = fleet.client.post(url, json={"kiosks": ["nobody"]}, headers=fleet.admin)
    assert r.status_code == 404


# --- end to end: a real kiosk -----------------------------------------------------------
def test_assignment_reaches_a_running_kiosk_and_a_mismatch_is_degraded(tmp_path, make_broker,
                                                                       es256):
    from fleet import auth
    from fleet.app import create_app
    from tests.drillkit import Fleet, KioskProc
    from tests.ingestkit import Workers

    broker = make_broker()
    fleet = Fleet(tmp_path, broker, es256)
    fleet.start_publisher()
    workers = Workers(tmp_path)
    kiosk = KioskProc(tmp_path, broker, fleet.public_pem, "pa-k1", heartbeat=1.0)
    with fleet.sessions() as s:
        kiosks.register(s, fleet.config, kiosk_id="pa-k1", deployment="drill",
                        policy="hcmc-2021", location=None, actor="t", at=1.0)
        user = auth.create_user(s, "op", "correct horse battery", "operator")
        s.flush()
        token = auth.create_token(s, user, "t")
        s.commit()
    app = create_app(fleet.config, publisher=fleet.publisher)
    app.testing = True
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def seen():
        r = client.get("/api/v1/kiosks/pa-k1", headers=headers)
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    try:
        worker = workers.start(fleet.config, seen_flush=0.3)
        worker.store.directory.refresh = 0.5  # assignments reloaded often (30 s in service)
        worker.tracker.policy_grace = 3.0
        kiosk.start()
        kiosk.wait_ready()
        wait_until(lambda: seen()["policy_applied"] == "hcmc-2021", 20, "the first heartbeat")
        assert seen()["state"] == "online"

        r = client.patch("/api/v1/kiosks/pa-k1", json={"policy": "accept-valid"}, headers=headers)
        assert r.status_code == 200, r.get_json()
        wait_until(lambda: "applied policy bundle v2" in kiosk.log(), 15, "the new bundle")
        wait_until(lambda: seen()["policy_applied"] == "accept-valid", 15, "the new policy")
        k = seen()
        assert (k["policy"], k["policy_applied"], k["state"], k["detail"]) == (
            "accept-valid", "accept-valid", "online", "")
        assert k["bundles"]["applied"]["policy"] == 2

        # the kiosk page shows both, and no difference
        page = app.test_client()
        form = page.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        assert page.post("/login", data={"csrf_token": csrf, "username": "op",
                                         "password": "correct horse battery"}).status_code == 302
        html = page.get("/kiosks/pa-k1?lang=en").get_data(as_text=True)
        cell = re.search(r'<dd id="policy">(.*?)</dd>', html, re.S).group(1)
        assert '<code class="assigned">accept-valid</code>' in cell
        assert '<code class="applied">accept-valid</code>' in cell and "differs" not in cell

        # the old way: the record changed, no bundle signed; the kiosk keeps accept-valid
        with fleet.sessions() as s:
            s.execute(update(Kiosk).where(Kiosk.id == "pa-k1").values(policy="hcmc-2021"))
            s.commit()
        wait_until(lambda: seen()["state"] == "degraded", 20, "the mismatch flagged")
        assert seen()["detail"] == "policy hcmc-2021 assigned, accept-valid applied"
        html = page.get("/kiosks/pa-k1?lang=en").get_data(as_text=True)
        assert "differs" in re.search(r'<dd id="policy">(.*?)</dd>', html, re.S).group(1)

        # the same policy assigned again through the API: the record does not change,
        # but the kiosk applies another, so a bundle is signed anew and the kiosk is well
        r = client.patch("/api/v1/kiosks/pa-k1", json={"policy": "hcmc-2021"}, headers=headers)
        assert r.status_code == 200
        wait_until(lambda: "applied policy bundle v3" in kiosk.log(), 15, "bundle v3")
        wait_until(lambda: seen()["state"] == "online", 20, "the mismatch cleared")
        k = seen()
        assert (k["policy"], k["policy_applied"], k["detail"]) == ("hcmc-2021", "hcmc-2021", "")
        with fleet.sessions() as s:
            assert s.scalars(select(AuditLog.action).where(AuditLog.target == "pa-k1")
                             .order_by(AuditLog.id)).all()[-2:] == ["kiosk.update",
                                                                     "policy.resend"]
        assert kiosk.stop() == 0, kiosk.log()
    finally:
        kiosk.close()
        workers.close()
        app.extensions["greengate"].engine.dispose()
        fleet.close()

"""A case closes the workplace (issue 16 part 5): fleet/closures.py, the suspend-for-case
API, the tracing page's action, the managers' alert. SQLite and PostgreSQL.

The kiosk's side (a real kiosk process over a real Mosquitto, the light, the decision
table row) is tests/test_closure_kiosk.py.
"""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select, update

from fleet import auth, bundles, closures, kiosks, organisations
from fleet.alerts import Dispatcher
from fleet.models import (AlertDelivery, AlertEpisode, AuditLog, District, Kiosk, Location,
                          Organisation, OrganisationStatusChange, Scan, Ward)
from greengate import bundle as gg_bundle
from greengate.status import cert_hash

CI = "URN:UVCI:01:VN:CASE0001"
KEY = cert_hash(CI).hex()
HOLDER = "5e" * 16
NOW = time.time()
PASSWORD = "correct horse battery"


@pytest.fixture
def world(api, fleet_config):
    """District q7 with wards w1 and w2; organisation xuong-may (approved, ward w1) with its
    gate location and kiosks xm-1, xm-2 (and a retired one); another organisation, cho-q7,
    in ward w2; the case scanned at xuong-may's gate two days ago; users: two ward
    officers, the manager (an address) and a manager of another organisation."""
    bundles.ensure_signing_key(fleet_config)
    api.config = fleet_config
    api.pub = bundles.load_signing_key(fleet_config).public_key()
    with api.sessions() as s:
        q7 = District(code="q7", name="Quận 7")
        s.add(q7)
        s.flush()
        w1 = organisations.create_ward(s, code="tan-thuan-dong", name="Tân Thuận Đông",
                                       district=q7, actor="t")
        w2 = organisations.create_ward(s, code="tan-phong", name="Tân Phong", district=q7,
                                       actor="t")
        s.flush()
        org = organisations.create(s, code="xuong-may", name="Xưởng may Tân Thuận",
                                   kind="business", district=q7, ward=w1, actor="t",
                                   contact_email="lien.he@xuongmay.vn")
        other = organisations.create(s, code="cho-q7", name="Chợ Tân Phong", kind="household",
                                     district=q7, ward=w2, actor="t")
        s.flush()
        for o in (org, other):
            organisations.set_status(s, o, "approved", actor="t", role="district_officer",
                                     quota=50)
        gate = Location(code="xm-cong", name="Cổng xưởng", address="", district_id=q7.id,
                        ward_id=w1.id, organisation_id=org.id)
        stall = Location(code="cho-cua", name="Cửa chợ", address="", district_id=q7.id,
                         ward_id=w2.id, organisation_id=other.id)
        s.add_all([gate, stall])
        s.flush()
        bundles.ensure_issued(s, fleet_config, "test")
        for kid, loc in (("xm-1", gate), ("xm-2", gate), ("xm-old", gate), ("cho-1", stall)):
            kiosks.register(s, fleet_config, kiosk_id=kid, deployment="test",
                            policy="hcmc-2021", location=loc, actor="t", at=1.0)
        s.flush()
        s.execute(update(Kiosk).where(Kiosk.id == "xm-old").values(state="retired"))
        s.add(Scan(kiosk_id="xm-1", scan_id="case-visit", ts=NOW - 2 * 86400,
                   received=NOW - 2 * 86400, decision="green", reason="ok", cert_hash=KEY,
                   holder=HOLDER, policy="hcmc-2021", location_id=gate.id,
                   district_id=q7.id))
        # the same person at the market with another certificate (a test)
        s.add(Scan(kiosk_id="cho-1", scan_id="case-test", ts=NOW - 86400, received=NOW,
                   decision="green", reason="ok", cert_hash="cd" * 16, holder=HOLDER,
                   policy="hcmc-2021", location_id=stall.id, district_id=q7.id))
        s.add(Scan(kiosk_id="xm-2", scan_id="contact", ts=NOW - 2 * 86400 + 60,
                   received=NOW, decision="green", reason="ok", cert_hash="ab" * 16,
                   policy="hcmc-2021", location_id=gate.id, district_id=q7.id))
        tokens = {}
        for name, role, extra in (
                ("ward1", "ward_officer", {"ward_id": w1.id}),
                ("ward2", "ward_officer", {"ward_id": w2.id}),
                ("quan.ly@xuongmay.vn", "manager", {"organisation_id": org.id}),
                ("boss@cho.vn", "manager", {"organisation_id": other.id})):
            user = auth.create_user(s, name, PASSWORD, role, **extra)
            s.flush()
            tokens[name] = {"Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
        s.commit()
    api.ward1, api.ward2 = tokens["ward1"], tokens["ward2"]
    api.manager, api.other_manager = tokens["quan.ly@xuongmay.vn"], tokens["boss@cho.vn"]
    return api


def policy_bundle(api):
    r = api.client.get("/api/v1/bundles/test/policy")
    assert r.status_code == 200
    return gg_bundle.open_bundle(r.data, api.pub, "test")


def suspend(api, headers, code="xuong-may", **body):
    body = {"key": KEY, **body}
    return api.client.post(f"/api/v1/organisations/{code}/suspend-for-case", json=body,
                           headers=headers)


def org_row(api, code="xuong-may"):
    with api.sessions() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == code))
        s.expunge(org)
        return org


# --- closed_kiosks and change_status ----------------------------------------------------------
def test_closed_kiosks_lists_the_kiosks_of_suspended_and_closed_organisations(world):
    with world.sessions() as s:
        assert closures.closed_kiosks(s, "test") == {}
        org = organisations.by_code(s, "xuong-may")
        change, deployments = closures.change_status(
            s, world.config, org, "suspended", actor="t", role="district_officer",
            reason="inspection", at=1_700_000_000.0)
        s.commit()
        assert deployments == ["test"]
        since = "2023-11-14T22:13:20Z"
        closed = {"organisation": "xuong-may", "since": since}
        assert closures.closed_kiosks(s, "test") == {"xm-1": closed, "xm-2": closed}
        assert closures.closed_kiosks(s, "other") == {}
        # suspended -> closed: still closed, nothing to re-sign
        before = bundles.current_version(s, "test", "policy")
        _, deployments = closures.change_status(s, world.config, org, "closed", actor="t",
                                                role="district_officer", reason="gone")
        s.commit()
        assert deployments == [] and bundles.current_version(s, "test", "policy") == before
        assert set(closures.closed_kiosks(s, "test")) == {"xm-1", "xm-2"}


def test_a_change_that_does_not_close_or_open_signs_nothing(world):
    with world.sessions() as s:
        ward = s.scalar(select(Ward).where(Ward.code == "tan-phong"))
        fresh = organisations.create(s, code="moi", name="Mới", kind="business",
                                     district=s.get(District, ward.district_id), actor="t")
        s.flush()
        before = bundles.current_version(s, "test", "policy")
        _, deployments = closures.change_status(s, world.config, fresh, "approved", actor="t",
                                                role="district_officer", quota=3)
        s.commit()
        assert deployments == [] and bundles.current_version(s, "test", "policy") == before


# --- the API: suspend after a case, lift by the ward --------------------------------------------
def test_suspend_for_case_closes_the_kiosks_and_the_ward_officer_reopens(world):
    before = policy_bundle(world).version
    r = suspend(world, world.health, case_ref="BN-4512", reason="F0 at the sewing line")
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert (out["status"], out["lift_by"], out["case_ref"]) == ("suspended", "ward_officer",
                                                                "BN-4512")
    assert out["reason"] == "case BN-4512: F0 at the sewing line"
    assert out["locations"] == ["xm-cong"] and out["closed_kiosks"] == ["xm-1", "xm-2"]
    assert out["published"].startswith("not configured")  # no MQTT here: HTTP serves it
    b = policy_bundle(world)
    assert b.version == before + 1
    assert set(b.body["closed"]) == {"xm-1", "xm-2"}
    assert b.body["closed"]["xm-1"]["organisation"] == "xuong-may"
    # suspending again: the path refuses (409), nothing signed
    r = suspend(world, world.health)
    assert r.status_code == 409 and policy_bundle(world).version == before + 1

    # the district officer may not lift what names the ward officer; nor the other ward
    url = "/api/v1/organisations/xuong-may/status"
    r = world.client.post(url, json={"status": "approved"}, headers=world.ward2)
    assert r.status_code in (403, 404), r.get_json()
    for who in ("health", "operator", "manager"):  # only the ward (or an admin) lifts it
        r = world.client.post(url, json={"status": "approved"}, headers=getattr(world, who))
        assert r.status_code == 403, (who, r.get_json())
    assert policy_bundle(world).version == before + 1
    r = world.client.post(url, json={"status": "approved"}, headers=world.ward1)
    assert r.status_code == 200, r.get_json()
    b = policy_bundle(world)
    assert b.version == before + 2 and b.body["closed"] == {}

    # audited both ways; the case itself only in the audit log, not in the history
    with world.sessions() as s:
        log = s.scalars(select(AuditLog).where(AuditLog.target == "xuong-may")
                        .order_by(AuditLog.id)).all()
        actions = [(e.action, e.actor, (e.detail or {}).get("new")) for e in log]
        assert ("organisation.status", "health", "suspended") in actions
        assert ("organisation.status", "ward1", "approved") in actions
        case_entry = next(e for e in log if e.action == "organisation.suspend_for_case")
        assert case_entry.detail["case"]["key"] == KEY
        assert case_entry.detail["locations"] == ["xm-cong"]
        history = s.scalars(select(OrganisationStatusChange).join(
            Organisation, Organisation.id == OrganisationStatusChange.organisation_id)
            .where(Organisation.code == "xuong-may")
            .order_by(OrganisationStatusChange.id)).all()
        assert [(h.new_status, h.actor) for h in history][-2:] == [("suspended", "health"),
                                                                   ("approved", "ward1")]
        assert KEY not in repr(history[-2].detail) and KEY not in history[-2].reason
        policy_actions = s.scalars(select(bundles.ListVersion.action).where(
            bundles.ListVersion.kind == "policy").order_by(bundles.ListVersion.version)).all()
        assert policy_actions[-2:] == ["organisation.status", "organisation.status"]


def test_only_those_who_trace_may_suspend_for_a_case(world):
    for who in ("operator", "officer", "ward1", "manager"):
        r = suspend(world, getattr(world, who))
        assert r.status_code == 403, (who, r.get_json())
    assert org_row(world).status == "approved"
    r = world.client.post("/api/v1/organisations/xuong-may/suspend-for-case", json={"key": KEY})
    assert r.status_code == 401
    assert suspend(world, world.admin).status_code == 200


def test_a_case_that_never_visited_the_organisation_cannot_close_it(world):
    r = suspend(world, world.health, code="cho-q7")
    assert r.status_code == 409 and "not scanned at any control point" in r.get_json()["message"]
    # outside the period
    r = suspend(world, world.health, **{"from": "2020-01-01T00:00:00Z",
                                        "to": "2020-01-02T00:00:00Z"})
    assert r.status_code == 409
    r = suspend(world, world.health, key="zz")
    assert r.status_code == 400 and "32 hexadecimal" in r.get_json()["message"]
    r = suspend(world, world.health, code="nobody")
    assert r.status_code == 404
    r = suspend(world, world.health, surprise=1)
    assert r.status_code == 400 and "unknown field" in r.get_json()["message"]
    r = suspend(world, world.health, case_ref="x" * 41)
    assert r.status_code == 422
    r = world.client.post("/api/v1/organisations/xuong-may/suspend-for-case", data=b"\xff",
                          headers={**world.health, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert org_row(world).status == "approved"
    # the holder's other certificate was at the market: with same_holder, as the trace
    r = suspend(world, world.health, code="cho-q7", same_holder=True)
    assert r.status_code == 200 and r.get_json()["locations"] == ["cho-cua"], r.get_json()
    # by the holder pseudonym, every certificate counts
    r = suspend(world, world.health, code="xuong-may", key=None, holder=HOLDER,
                **{"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"})
    assert r.status_code == 409
    # the case named by its certificate identifier, with the default period: accepted
    r = suspend(world, world.health, key=None, ci=CI)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["case_ref"].startswith("confirmed 20")


def test_without_a_signing_key_nothing_changes(world):
    bundles.signing_key_path(world.config).unlink()
    r = suspend(world, world.health)
    assert r.status_code == 503, r.get_json()
    assert org_row(world).status == "approved"


# --- the managers' alert ---------------------------------------------------------------------------
def test_the_managers_get_the_alert_and_the_reopening_through_the_dispatcher(world, smtp):
    world.config.sections["alerts"].update(smtp_host="127.0.0.1", smtp_port=smtp.port,
                                           smtp_starttls=False)
    assert suspend(world, world.health, case_ref="BN-4512").status_code == 200
    r = world.client.post("/api/v1/organisations/xuong-may/status", json={"status": "approved"},
                          headers=world.ward1)
    assert r.status_code == 200, r.get_json()
    with world.sessions() as s:
        rows = s.scalars(select(AlertDelivery).order_by(AlertDelivery.id)).all()
        assert [(d.event, d.channel, d.target) for d in rows] == [
            ("alert", "email", "quan.ly@xuongmay.vn"), ("alert", "email", "lien.he@xuongmay.vn"),
            ("recovery", "email", "quan.ly@xuongmay.vn"),
            ("recovery", "email", "lien.he@xuongmay.vn")]
        assert len({d.episode_id for d in rows}) == 1  # the reopening answers the closing
        episode = s.get(AlertEpisode, rows[0].episode_id)
        assert episode.resolution == "recovered" and episode.ended_at is not None
    dispatcher = Dispatcher(world.config, clock=time.time)
    try:
        for _ in range(2):  # a recovery goes out after its alert, a round later
            dispatcher.tick()
            dispatcher.settle()
    finally:
        dispatcher.close()
    assert sorted(to for to, _ in smtp.messages) == [
        ["lien.he@xuongmay.vn"], ["lien.he@xuongmay.vn"], ["quan.ly@xuongmay.vn"],
        ["quan.ly@xuongmay.vn"]]
    mine = [m for to, m in smtp.messages if to == ["quan.ly@xuongmay.vn"]]
    alert = next(m for m in mine if "ALERT" in m["Subject"])
    reopened = next(m for m in mine if "RECOVERED" in m["Subject"])
    assert "Xưởng may Tân Thuận (xuong-may) is suspended" in alert["Subject"]
    body = alert.get_content()
    assert "case BN-4512" in body and "xm-1, xm-2" in body and KEY not in body
    assert "open again" in reopened["Subject"]
    assert reopened["In-Reply-To"] == alert["Message-ID"]
    with world.sessions() as s:
        assert {d.status for d in s.scalars(select(AlertDelivery))} == {"sent"}
    # nobody else was told (the other organisation's manager)
    assert not any("boss@cho.vn" in to for to, _ in smtp.messages)


def test_without_a_mail_server_the_suspension_still_happens(world, fleet_app):
    assert not world.config.alerts.smtp_host
    assert suspend(world, world.health).status_code == 200
    with world.sessions() as s:
        assert s.scalars(select(AlertDelivery)).all() == []
        assert len(s.scalars(select(AlertEpisode)).all()) == 1
    # the admins' alerts page names the managers' rule for what it is, without a form
    page = fleet_app.test_client()
    login(page, "admin")
    html = page.get("/alerts?lang=en").get_data(as_text=True)
    row = re.search(r'<tr data-rule="\d+"[^>]*>(.*?)</tr>', html, re.S).group(1)
    assert "an organisation is suspended, closed or reopened" in row and "Edit" not in row


# --- the tracing page ---------------------------------------------------------------------------------
def login(app_client, username):
    form = app_client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    r = app_client.post("/login", data={"csrf_token": csrf, "username": username,
                                        "password": PASSWORD})
    assert r.status_code == 302
    # the login makes a new session, with its own token
    page = app_client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_the_tracing_page_offers_to_suspend_the_workplaces_the_case_visited(world, fleet_app):
    page = fleet_app.test_client()
    csrf = login(page, "health")
    fields = {"csrf_token": csrf, "certificate": KEY, "holder": "",
              "from": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(NOW - 7 * 86400 + 7 * 3600)),
              "to": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(NOW + 3600 + 7 * 3600)),
              "minutes": "30", "same_holder": "", "format": "page"}
    r = page.post("/trace?lang=en", data=fields)
    html = r.get_data(as_text=True)
    assert r.status_code == 200, html
    rows = re.findall(r'<tr data-organisation="([^"]+)">(.*?)</tr>', html, re.S)
    assert [code for code, _ in rows] == ["xuong-may"]  # cho-q7 was not visited
    assert "Suspend Xưởng may Tân Thuận (case)" in rows[0][1]
    hidden = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">',
                             rows[0][1]))
    assert hidden["organisation"] == "xuong-may" and hidden["certificate"] == KEY
    r = page.post("/trace/suspend?lang=en", data={**hidden, "case_ref": "BN-77"})
    html = r.get_data(as_text=True)
    assert r.status_code == 200, html
    assert 'id="suspended"' in html and "case BN-77" in html
    assert org_row(world).status == "suspended"
    assert set(policy_bundle(world).body["closed"]) == {"xm-1", "xm-2"}
    # the same again: the status path refuses, said on the page
    r = page.post("/trace/suspend?lang=en", data={**hidden, "case_ref": "BN-77"})
    assert r.status_code == 409 and 'role="alert"' in r.get_data(as_text=True)
    # without the CSRF token: refused before anything runs
    r = page.post("/trace/suspend", data={k: v for k, v in hidden.items()
                                          if k != "csrf_token"})
    assert r.status_code == 403

"""The status-list and audit-log pages (fleet/web/lists_views.py, fleet/web/audit_views.py)
on SQLite and PostgreSQL, through the Flask test client: the confirmation step changes
nothing until confirmed, applies exactly what was previewed and only once; suspension
times in Vietnam time; QR texts of real certificates; the audit page's order, filters
and pages. The browser round trip is in tests/test_lists_trace_browser.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from fleet import auth, bundles, trust_list
from fleet.models import AuditLog, StatusEntry
from greengate.status import cert_hash
from tests.conftest_fleet import assign_officer_a_district

PASSWORD = "correct horse battery"
CI = "URN:UVCI:01:VN:PAGE0001"
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def token_of(client, path="/lists/status") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name):
    response = client.post("/login", data={"csrf_token": token_of(client, "/login"),
                                           "username": name, "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)
    client.get("/lists/status?lang=en")
    return token_of(client)


@pytest.fixture
def site(fleet_app, fleet_db, fleet_config):
    bundles.ensure_signing_key(fleet_config)
    with fleet_db() as s:
        for name, role in (("admin", "admin"), ("operator", "operator"),
                           ("health", "health_official"), ("officer", "district_officer")):
            auth.create_user(s, name, PASSWORD, role)
        s.commit()
    return fleet_app


def entries(fleet_db):
    with fleet_db() as s:
        return {(e.ci, e.kind, e.until, e.reason, e.created_by) for e in s.scalars(select(StatusEntry))}


def status_audits(fleet_db):
    with fleet_db() as s:
        return s.scalars(select(AuditLog).where(AuditLog.action.like("status.%"))
                         .order_by(AuditLog.id)).all()


def test_a_change_is_previewed_then_confirmed_exactly_once(site, fleet_db):
    client = site.test_client()
    token = login(client, "operator")
    form = {"csrf_token": token, "deployment": "test", "action": "revoke",
            "certificates": f"{CI}\r\n\r\n{cert_hash('URN:UVCI:01:VN:OTHER').hex()}\r\n",
            "until": "", "reason": "reported stolen"}
    preview = client.post("/lists/status/preview", data=form)
    html = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "Revoke 2 of 2 certificates in test." in html
    assert CI in html and "not listed" in html and "Confirm: change 2 certificates" in html
    assert entries(fleet_db) == set() and status_audits(fleet_db) == []  # nothing yet

    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                             html.split('class="confirm"')[1]))
    assert fields["confirm"] == "yes" and fields["reason"] == "reported stolen"
    # the confirm must carry what was previewed: a field changed on the way is refused
    tampered = client.post("/lists/status/apply", data={**fields, "reason": "other"})
    assert tampered.status_code == 409 and "not previewed" in tampered.get_data(as_text=True)
    without = client.post("/lists/status/apply", data={**fields, "confirm": ""})
    assert without.status_code == 409
    no_csrf = client.post("/lists/status/apply", data={**fields, "csrf_token": ""})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.get_data(as_text=True)
    assert entries(fleet_db) == set()

    done = client.post("/lists/status/apply", data=fields)
    text = done.get_data(as_text=True)
    assert done.status_code == 200, text
    assert "2 certificates changed; the list is now version 1" in text  # the first change
    assert "not configured (kiosks get it over HTTP)" in text  # no MQTT publisher here
    assert entries(fleet_db) == {(CI, "revoked", None, "reported stolen", "operator"),
                                 (None, "revoked", None, "reported stolen", "operator")}
    (entry,) = status_audits(fleet_db)
    assert (entry.actor, entry.action, entry.detail["changed"]) == ("operator", "status.revoke", 2)
    # a second submit (a reload) changes nothing and says why
    again = client.post("/lists/status/apply", data=fields)
    assert again.status_code == 409 and len(status_audits(fleet_db)) == 1

    listing = client.get("/lists/status").get_data(as_text=True)
    assert CI in listing and "revoked" in listing and "version 1." in listing
    # reinstating a revoked certificate is for admins: the preview says so already
    refused = client.post("/lists/status/preview", data={**form, "action": "reinstate",
                                                         "certificates": CI})
    assert refused.status_code == 409 and "only an admin" in refused.get_data(as_text=True)


def test_suspension_in_vietnam_time_by_qr_text_and_bad_input(site, fleet_db, fleet_config,
                                                            es256, clock):
    dcc = es256.vaccination(date=clock.dose_date)
    qr = es256.mint(dcc, iat=clock.issued, exp=clock.expires)
    with fleet_db() as s:
        trust_list.add(s, fleet_config, "test", es256.pem, actor="op")
    client = site.test_client()
    token = login(client, "health")
    # a month ahead of the real clock: the service refuses past and far-future ends
    end = (datetime.now(ZONE) + timedelta(days=30)).replace(hour=0, minute=0, second=0,
                                                            microsecond=0)
    base = {"csrf_token": token, "deployment": "test", "action": "suspend", "reason": "case",
            "until": end.strftime("%Y-%m-%dT%H:%M")}
    for certificates, words in (("", "Name at least one certificate"),
                                ("has spaces in it", "line 1: not a certificate identifier"),
                                (f"{CI}\nHC1:NOT-BASE45!", "line 2: not a readable HC1")):
        bad = client.post("/lists/status/preview", data={**base, "certificates": certificates})
        assert bad.status_code == 422 and words in bad.get_data(as_text=True), words
    no_until = client.post("/lists/status/preview", data={**base, "certificates": CI, "until": ""})
    assert "needs its end" in no_until.get_data(as_text=True)
    # the scanner's QR text, with the 2D scanner's Enter at its end
    preview = client.post("/lists/status/preview", data={**base, "certificates": qr + "\r\n"})
    html = preview.get_data(as_text=True)
    assert "QR text (signature verified)" in html and dcc["v"][0]["ci"] in html
    assert f"until {end:%Y-%m-%d} 00:00:00 (Vietnam time)" in html
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                             html.split('class="confirm"')[1]))
    assert client.post("/lists/status/apply", data=fields).status_code == 200
    # midnight in Ho Chi Minh City is 17:00 UTC the day before
    assert end.astimezone(timezone.utc).hour == 17
    assert entries(fleet_db) == {(dcc["v"][0]["ci"], "suspended", end.timestamp(), "case",
                                  "health")}


def test_who_may_see_and_change_the_list_and_the_audit_log(site, fleet_db):
    # (an officer without a district gets 403 on every page: tests/test_authorisation.py)
    assign_officer_a_district(fleet_db)
    officer = site.test_client()
    token = login(officer, "officer")
    page = officer.get("/lists/status").get_data(as_text=True)
    assert "Entries" in page and "Check the change" not in page  # reads, no change form
    assert officer.post("/lists/status/preview", data={"csrf_token": token}).status_code == 403
    assert officer.get("/audit").status_code == 403 and officer.get("/trace").status_code == 403
    nav = re.search(r'<nav class="main">(.*?)</nav>', page, re.S).group(1)
    assert "/lists/status" in nav and "/audit" not in nav and "/trace" not in nav

    # the audit page: newest first, filters, pages of 50
    with fleet_db() as s:
        for i in range(120):
            s.add(AuditLog(at=1_633_420_800 + i, actor="bot" if i % 2 else "lan",
                           action="kiosk.update" if i % 3 else "kiosk.retire", target=f"k{i}",
                           detail={"n": i}))
        s.commit()
    admin = site.test_client()
    login(admin, "admin")
    first = admin.get("/audit").get_data(as_text=True)
    nav = re.search(r'<nav class="main">(.*?)</nav>', first, re.S).group(1)
    assert "/audit" in nav and "/trace" in nav
    targets = re.findall(r'<td data-label="Target" class="target">(k\d+)</td>', first)
    # the admin's login is newer than them all and takes the first row of the 50
    assert targets == [f"k{i}" for i in range(119, 70, -1)]
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = admin.get(older).get_data(as_text=True)
    assert re.findall(r'class="target">(k\d+)</td>', second)[0] == "k70"
    filtered = admin.get("/audit?action=kiosk.retire&actor=lan").get_data(as_text=True)
    assert re.findall(r'class="target">(k\d+)</td>', filtered) == [
        f"k{i}" for i in range(114, -1, -6)]
    assert 'rel="next"' not in filtered
    with fleet_db() as s:
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 122  # and 2 logins

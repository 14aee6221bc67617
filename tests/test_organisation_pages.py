"""The organisation and ward pages (fleet/web/organisation_views.py) on SQLite and
PostgreSQL: the list with its counts and filters, a new organisation, the status actions
through preview and confirm, reminders, wards; each role's scope (another district's or
ward's organisation is a 404, a manager sees its own and changes nothing). Then a real
Chromium (tests/conftest_browser.py) approves an organisation with its quota through the
confirm page, in Vietnamese."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from fleet import auth, bundles
from fleet.models import (AuditLog, District, Kiosk, Location, Organisation,
                          OrganisationStatusChange, Reminder, Ward)

PASSWORD = "correct horse battery"
NOW = 1_633_420_800.0  # 2021-10-05T08:00:00Z


def seed(sessions, users=True) -> dict:
    """Quận 7 (wards tan-phong, tan-quy) with an-phat (tan-phong, one kiosk at its gate) and
    binh-minh (tan-quy, a household business); Quận 1 with sai-gon. Accounts: the district
    officer of q7, the ward officer of tan-quy, the manager of an-phat."""
    with sessions() as s:
        q7, q1 = District(code="q7", name="Quận 7"), District(code="q1", name="Quận 1")
        s.add_all([q7, q1])
        s.flush()
        tp = Ward(code="tan-phong", name="Tân Phong", district_id=q7.id)
        tq = Ward(code="tan-quy", name="Tân Quy", district_id=q7.id)
        bn = Ward(code="ben-nghe", name="Bến Nghé", district_id=q1.id)
        s.add_all([tp, tq, bn])
        s.flush()
        orgs = {}
        for code, name, kind, district, ward in (
                ("an-phat", "Công ty An Phát", "business", q7, tp),
                ("binh-minh", "Hộ kinh doanh Bình Minh", "household", q7, tq),
                ("sai-gon", "HTX Sài Gòn", "cooperative", q1, bn)):
            orgs[code] = Organisation(code=code, name=name, kind=kind, district_id=district.id,
                                      ward_id=ward.id, status="applied", status_since=NOW,
                                      suspended_reason="", created_at=NOW)
        s.add_all(orgs.values())
        s.flush()
        for org in orgs.values():
            s.add(OrganisationStatusChange(organisation_id=org.id, at=NOW, old_status=None,
                                           new_status="applied", actor="seed", reason=""))
        gate = Location(code="an-phat-gate", name="Cổng An Phát", address="", district_id=q7.id,
                        ward_id=tp.id, organisation_id=orgs["an-phat"].id)
        s.add(gate)
        s.flush()
        s.add(Kiosk(id="k-gate", location_id=gate.id, deployment="test", policy="hcmc-2021",
                    state="online", state_since=NOW, detail="", last_seen=NOW, session=1,
                    enrolled_at=NOW))
        if users:
            for name, role, extra in (
                    ("admin", "admin", {}), ("officer", "district_officer", {"district": q7.id}),
                    ("ward", "ward_officer", {"ward_id": tq.id}),
                    ("manager", "manager", {"organisation_id": orgs["an-phat"].id}),
                    ("health", "health_official", {})):
                auth.create_user(s, name, PASSWORD, role, extra.pop("district", None), **extra)
        s.commit()
        return {"q7": q7.id, "tan-phong": tp.id}


@pytest.fixture
def site(fleet_app, fleet_db, fleet_config):
    seed(fleet_db)
    bundles.ensure_signing_key(fleet_config)
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    return type("Site", (), {"app": fleet_app, "sessions": fleet_db})


def login(site, name):
    client = site.app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/login", data={"csrf_token": token, "username": name,
                                           "password": PASSWORD})
    assert response.status_code == 302
    html = client.get("/organisations").get_data(as_text=True)  # the logged-in session's
    client.csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    return client


def text(response, status=200):
    assert response.status_code == status, (response.status_code,
                                            response.get_data(as_text=True)[:600])
    return response.get_data(as_text=True)


def rows(html, attribute="data-org"):
    return re.findall(rf'<tr {attribute}="([^"]+)"', html)


def test_list_counts_filters_and_scope_in_vietnamese(site):
    officer = login(site, "officer")
    html = text(officer.get("/organisations"))
    assert "<h1>Tổ chức</h1>" in html
    assert sorted(rows(html)) == ["an-phat", "binh-minh"]  # not Quận 1's
    assert re.search(r'data-status="applied"[^>]*>Đã đăng ký: <span class="count">2<', html)
    assert rows(text(officer.get("/organisations?ward=tan-quy"))) == ["binh-minh"]
    assert rows(text(officer.get("/organisations?q=an+ph"))) == ["an-phat"]
    assert rows(text(officer.get("/organisations?status=approved"))) == []
    text(officer.get("/organisations?district=q1"), 403)
    assert sorted(rows(text(login(site, "admin").get("/organisations")))) == [
        "an-phat", "binh-minh", "sai-gon"]
    ward = login(site, "ward")
    assert rows(text(ward.get("/organisations"))) == ["binh-minh"]
    text(ward.get("/organisations/an-phat"), 404)
    manager = login(site, "manager")
    assert rows(text(manager.get("/organisations"))) == ["an-phat"]
    html = text(manager.get("/organisations/an-phat"))
    assert 'id="actions"' not in html and 'id="remind-form"' not in html
    assert 'href="/organisations/an-phat/roster"' in html
    text(manager.get("/organisations/binh-minh"), 404)
    text(officer.get("/organisations/sai-gon"), 404)


def test_paging_follows_the_cursor(site, monkeypatch):
    from fleet.web import organisation_views
    monkeypatch.setattr(organisation_views, "PAGE_SIZE", 2)
    admin = login(site, "admin")
    first = text(admin.get("/organisations"))
    assert rows(first) == ["sai-gon", "binh-minh"]
    next_url = re.search(r'<a href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = text(admin.get(next_url))
    assert rows(second) == ["an-phat"] and 'rel="next"' not in second


def post(client, url, **data):
    return client.post(url, data={"csrf_token": client.csrf, **data})


def test_new_organisation_and_ward(site):
    officer = login(site, "officer")
    form = text(officer.get("/organisations/new"))
    assert 'name="district"' not in form  # its own district, implied
    html = text(post(officer, "/organisations/new", code="dong-a", name="Công ty Đông Á",
                     kind="business", ward="tan-quy", tax_code="123"), 422)
    # the service's refusal, in the page's language
    assert "không phải mã số thuế Việt Nam" in html and 'value="Công ty Đông Á"' in html
    response = post(officer, "/organisations/new", code="dong-a", name="Công ty Đông Á",
                    kind="business", ward="tan-quy", tax_code="0312345678")
    assert response.status_code == 302
    html = text(officer.get(response.headers["Location"]))
    assert "Đã tạo tổ chức." in html and 'data-status="applied"' in html
    text(login(site, "ward").get("/organisations/new"), 403)

    wards = text(officer.get("/wards"))
    assert rows(wards, "data-ward") == ["tan-phong", "tan-quy"]
    response = post(officer, "/wards", code="tan-hung", name="Tân Hưng", kind="phuong")
    assert response.status_code == 302
    assert "tan-hung" in rows(text(officer.get(response.headers["Location"])), "data-ward")
    assert "đã có phường/xã với mã &#39;tan-hung&#39;" in text(
        post(officer, "/wards", code="tan-hung", name="X"), 409)
    assert rows(text(login(site, "ward").get("/wards")), "data-ward") == ["tan-quy"]
    text(post(login(site, "ward"), "/wards", code="x", name="X"), 403)


def test_status_changes_need_a_preview_and_a_confirm(site):
    officer = login(site, "officer")
    html = text(officer.get("/organisations/an-phat"))
    assert re.findall(r'data-action="(\w+)"', html) == ["approve", "close"]
    # no quota: back on the page with the reason, nothing changed
    html = text(post(officer, "/organisations/an-phat/status/preview", action="approve",
                     quota=""), 422)
    assert "định mức" in html
    fields = {"action": "approve", "quota": "25", "reason": "đủ điều kiện", "lift_by": ""}
    # an apply without its preview is refused
    text(post(officer, "/organisations/an-phat/status/apply", confirm="yes", **fields), 409)
    html = text(post(officer, "/organisations/an-phat/status/preview", **fields))
    assert "Phê duyệt Công ty An Phát với định mức 25 người lao động." in html
    # the confirm page's form, as sent: a changed field is refused
    text(post(officer, "/organisations/an-phat/status/apply", confirm="yes",
              **dict(fields, quota="250")), 409)
    text(post(officer, "/organisations/an-phat/status/preview", **fields))
    response = post(officer, "/organisations/an-phat/status/apply", confirm="yes", **fields)
    assert response.status_code == 302
    html = text(officer.get(response.headers["Location"]))
    assert 'data-status="approved"' in html and "Doanh nghiệp xanh" in html
    # one confirm, one change
    text(post(officer, "/organisations/an-phat/status/apply", confirm="yes", **fields), 409)
    assert re.findall(r'data-action="(\w+)"', html) == ["suspend", "close"]

    # the health official suspends it, to be lifted by the ward officer: not by the
    # district officer, and another ward's officer does not even see it
    health = login(site, "health")
    suspend = {"action": "suspend", "reason": "F0", "lift_by": "ward_officer", "quota": ""}
    html = text(post(health, "/organisations/an-phat/status/preview", **suspend))
    assert "1 thiết bị quét" in html  # its one kiosk
    assert post(health, "/organisations/an-phat/status/apply", confirm="yes",
                **suspend).status_code == 302
    html = text(officer.get("/organisations/an-phat"))
    assert 'data-status="suspended"' in html and "cán bộ phường" in html
    assert "Doanh nghiệp xanh" not in html
    assert re.findall(r'data-action="(\w+)"', html) == ["close"]  # not the district's to lift
    text(post(officer, "/organisations/an-phat/status/preview", action="lift", reason=""), 403)
    text(post(login(site, "ward"), "/organisations/an-phat/status/preview", action="lift"), 404)
    text(post(login(site, "manager"), "/organisations/an-phat/status/preview", action="lift"),
         403)
    with site.sessions() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == "an-phat"))
        assert (org.status, org.quota, org.lift_by) == ("suspended", 25, "ward_officer")
        changes = [(c.new_status, c.actor) for c in s.scalars(
            select(OrganisationStatusChange).where(
                OrganisationStatusChange.organisation_id == org.id)
            .order_by(OrganisationStatusChange.id))]
        assert changes == [("applied", "seed"), ("approved", "officer"), ("suspended", "health")]


def test_a_reminder_from_the_organisation_page(site):
    officer = login(site, "officer")
    for n in range(4):
        response = post(officer, "/organisations/binh-minh/remind", note=f"lần {n + 1}")
        assert response.status_code == 302
    html = text(officer.get("/organisations/binh-minh"))
    assert '<span id="reminder-count">4</span>' in html and 'id="flagged"' in html
    text(post(officer, "/organisations/sai-gon/remind", note="x"), 404)
    text(post(login(site, "manager"), "/organisations/an-phat/remind", note="x"), 403)
    with site.sessions() as s:
        assert len(s.scalars(select(Reminder)).all()) == 4
        assert s.scalar(select(AuditLog).where(AuditLog.action == "organisation.remind")
                        .order_by(AuditLog.id.desc()).limit(1)).detail["flagged"] is True


def test_a_district_officer_approves_with_a_quota_in_chromium(dashboard, page):
    dashboard.app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(dashboard.sessions, users=False)
    bundles.ensure_signing_key(dashboard.config)
    dashboard.add_user("chief", "district_officer", ids["q7"])
    dashboard.login(page, "chief", lang="vi")
    page.goto(dashboard.url + "/organisations")
    assert page.locator("#counts a[data-status='applied'] .count").inner_text() == "2"
    page.locator("tr[data-org='an-phat'] a").click()
    page.wait_for_url("**/organisations/an-phat")
    assert page.locator("#status").get_attribute("data-status") == "applied"
    form = page.locator("form[data-action='approve']")
    form.locator("input[name=quota]").fill("40")
    form.locator("input[name=reason]").fill("Đủ điều kiện hoạt động")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#confirm-form")
    assert page.locator(".confirm-summary").inner_text() == \
        "Phê duyệt Công ty An Phát với định mức 40 người lao động."
    page.locator("#confirm-form button[type=submit]").click()
    page.wait_for_selector("#done")
    assert page.locator("#status").get_attribute("data-status") == "approved"
    assert page.locator("#sticker").inner_text() == "Doanh nghiệp xanh"
    assert page.locator("#quota").inner_text().startswith("40")
    assert page.locator("#history tr[data-new]").first.get_attribute("data-new") == "approved"
    assert "Đủ điều kiện hoạt động" in page.locator("#history").inner_text()
    # back in the list: counted as approved
    page.goto(dashboard.url + "/organisations")
    assert page.locator("#counts a[data-status='approved'] .count").inner_text() == "1"
    with dashboard.sessions() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == "an-phat"))
        assert (org.status, org.quota, org.approved_at) == ("approved", 40, NOW)

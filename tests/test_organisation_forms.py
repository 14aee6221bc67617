"""The organisation page's forms beyond the status (fleet/web/organisation_views.py) on
SQLite and PostgreSQL: the record edited through the API's PATCH rules; control points
attached, detached and made workers only through preview and confirm, re-signing the
policy bundle; the services' refusals (fleet/organisations.py, fleet/roster_workers.py)
in Vietnamese on the pages and in English in the API. Then a real Chromium makes a
control point workers only and the signed policy bundle names its kiosk."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from fleet import auth, bundles
from fleet.models import AuditLog, Location, Organisation, PublishedBundle, User
from greengate import bundle as gg_bundle
from tests.test_organisation_pages import NOW, login, post, seed, text


@pytest.fixture
def site(fleet_app, fleet_db, fleet_config):
    seed(fleet_db)
    bundles.ensure_signing_key(fleet_config)
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    return type("Site", (), {"app": fleet_app, "sessions": fleet_db, "config": fleet_config})


def token(site, name: str) -> dict:
    with site.sessions() as s:
        user = s.scalar(select(User).where(User.username == name))
        header = {"Authorization": f"Bearer {auth.create_token(s, user, 'tests')}"}
        s.commit()
    return header


def policy_body(sessions, config) -> dict:
    """The newest signed policy bundle of deployment test, its signature checked."""
    with sessions() as s:
        raw = s.scalar(select(PublishedBundle.raw).where(
            PublishedBundle.deployment == "test", PublishedBundle.kind == "policy")
            .order_by(PublishedBundle.version.desc()).limit(1))
    assert raw is not None, "no policy bundle signed"
    return gg_bundle.open_bundle(bytes(raw), bundles.load_signing_key(config).public_key(),
                                 "test").body


def add_location(sessions, code: str, district: str = "q7", organisation: str | None = None):
    from fleet.models import District, Kiosk
    with sessions() as s:
        d = s.scalar(select(District).where(District.code == district))
        org = s.scalar(select(Organisation).where(Organisation.code == organisation)) \
            if organisation else None
        loc = Location(code=code, name=f"Cổng {code}", address="", district_id=d.id,
                       organisation_id=org.id if org else None)
        s.add(loc)
        s.flush()
        s.add(Kiosk(id=f"k-{code}", location_id=loc.id, deployment="test", policy="hcmc-2021",
                    state="online", state_since=NOW, detail="", last_seen=NOW, session=1,
                    enrolled_at=NOW))
        s.commit()


def workers_only(sessions, code: str) -> bool:
    with sessions() as s:
        return bool(s.scalar(select(Location.workers_only).where(Location.code == code)))


# --- the record ------------------------------------------------------------------------------
def test_the_record_is_edited_on_the_page_by_the_apis_rules(site):
    officer = login(site, "officer")
    html = text(officer.get("/organisations/an-phat"))
    assert 'id="edit-form"' in html and 'value="Công ty An Phát"' in html
    fields = {"name": "Công ty TNHH An Phát", "tax_code": "0312345678", "kind": "business",
              "sector": "may mặc", "ward": "tan-quy", "contact_name": "Chị Hoa",
              "contact_phone": "0909000111", "contact_email": "hoa@anphat.vn"}
    # a tax code that is none: the service's refusal, in Vietnamese, the form as sent
    html = text(post(officer, "/organisations/an-phat/edit", **dict(fields, tax_code="12")),
                422)
    assert "không phải mã số thuế Việt Nam" in html and "is not a Vietnamese" not in html
    assert 'value="Chị Hoa"' in html and "<details id=\"edit\" open>" in html
    # a ward of another district does not exist for it
    assert "ben-nghe" not in html
    html = text(post(officer, "/organisations/an-phat/edit", **dict(fields, ward="ben-nghe")),
                422)
    assert "không có phường/xã mã" in html
    response = post(officer, "/organisations/an-phat/edit", **fields)
    assert response.status_code == 302 and response.headers["Location"].endswith("done=edited")
    html = text(officer.get(response.headers["Location"]))
    assert "Đã lưu thông tin." in html and "Công ty TNHH An Phát" in html
    assert "Tân Quy" in html and "hoa@anphat.vn" in html
    response = post(officer, "/organisations/an-phat/edit", **fields)
    assert response.headers["Location"].endswith("done=unchanged")
    # emptied optional fields are cleared
    response = post(officer, "/organisations/an-phat/edit",
                    **dict(fields, tax_code="", ward="", sector=""))
    assert response.status_code == 302
    with site.sessions() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == "an-phat"))
        assert (org.name, org.tax_code, org.ward_id, org.sector, org.contact_email) == (
            "Công ty TNHH An Phát", None, None, "", "hoa@anphat.vn")
        edits = s.scalars(select(AuditLog).where(AuditLog.action == "organisation.update")
                          .order_by(AuditLog.id)).all()
        assert len(edits) == 2 and edits[0].detail["ward"] == ["tan-phong", "tan-quy"]
    # who may: the district (not a ward officer, not its manager); another district's: 404
    manager = login(site, "manager")
    assert 'id="edit-form"' not in text(manager.get("/organisations/an-phat"))
    text(post(manager, "/organisations/an-phat/edit", **fields), 403)
    text(post(officer, "/organisations/sai-gon/edit", **dict(fields, ward="")), 404)


# --- refusals in the page's language ---------------------------------------------------------
def test_refusals_are_vietnamese_on_pages_and_english_in_the_api(site):
    officer = login(site, "officer")
    # an approval without its quota: the page says it in Vietnamese ...
    html = text(post(officer, "/organisations/an-phat/status/preview", action="approve",
                     quota="", reason="x"), 422)
    assert "định mức người lao động" in html and "needs the worker quota" not in html
    # ... the API in English, from the service
    r = site.app.test_client().post("/api/v1/organisations/an-phat/status",
                                    json={"status": "approved"}, headers=token(site, "officer"))
    assert r.status_code == 422
    assert r.get_json()["message"] == "approving needs the worker quota (a whole number >= 1)"
    # a transition the path refuses names both statuses in the caller's language
    r = site.app.test_client().post("/api/v1/organisations/an-phat/status",
                                    json={"status": "suspended", "reason": "x"},
                                    headers=token(site, "officer"))
    assert r.status_code == 409 and r.get_json()["message"] == (
        "organisation 'an-phat' is applied: it cannot become suspended")
    from fleet.organisations import OrganisationError, by_code, set_status
    with site.app.test_request_context("/?lang=vi"):
        from fleet.refusals import translated
        with site.sessions() as s:
            try:
                set_status(s, by_code(s, "an-phat"), "suspended", actor="t", role="admin",
                           reason="x")
            except OrganisationError as exc:
                said = translated(exc.message)
    assert said == ("cơ sở 'an-phat' đang ở trạng thái đã đăng ký: không thể chuyển sang "
                    "tạm dừng hoạt động")

    # approved with a quota of 1: a CSV of two is past it
    with site.sessions() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == "an-phat"))
        org.status, org.quota, org.approved_at = "approved", 1, NOW
        s.commit()
    manager = login(site, "manager")
    csv = "display_name;job\nNguyễn Văn An;thợ may\nLê Thị Bình;bảo vệ\n".encode()
    import io
    r = manager.post("/organisations/an-phat/roster/import/preview",
                     data={"csrf_token": manager.csrf, "file": (io.BytesIO(csv), "r.csv")},
                     content_type="multipart/form-data")
    html = text(r, 409)
    assert ("2 người lao động cùng 0 người đã có trong danh sách thành 2, vượt định mức 1: "
            "không thêm ai") in html
    assert "more than the quota" not in html
    r = site.app.test_client().post("/api/v1/organisations/an-phat/workers/import", data=csv,
                                    headers=token(site, "manager"))
    assert r.status_code == 409
    assert r.get_json()["message"] == ("2 workers and the 0 on the roster make 2, more than "
                                       "the quota of 1: nothing was added")
    assert r.get_json()["errors"][0]["message"] == r.get_json()["message"]
    # one worker fills it; the next is refused in the page's language too
    r = post(manager, "/organisations/an-phat/roster/add", display_name="Trần Văn Cường")
    assert r.status_code == 302
    html = text(post(manager, "/organisations/an-phat/roster/add", display_name="Người nữa"),
                409)
    assert "danh sách người lao động của an-phat đã đủ: 1 người" in html
    # and in English when the page is asked in English
    html = text(manager.get("/organisations/an-phat/roster?lang=en"))
    html = text(post(manager, "/organisations/an-phat/roster/add", display_name="Người nữa"),
                409)
    assert "the roster of an-phat is full: 1 workers" in html


# --- control points ---------------------------------------------------------------------------
def place(client, action: str, location: str, reason: str = "theo quyết định của quận"):
    """Preview then confirm one control-point change; the confirm's response."""
    fields = {"action": action, "location": location, "reason": reason}
    html = text(post(client, "/organisations/an-phat/places/preview", **fields))
    assert 'id="confirm-form"' in html
    return post(client, "/organisations/an-phat/places/apply", confirm="yes", **fields)


def test_control_points_attach_detach_and_workers_only_through_a_confirm(site):
    add_location(site.sessions, "an-phat-kho")            # free, in Quận 7
    add_location(site.sessions, "sai-gon-cho", "q1")       # another district's
    operator_name = "operator"
    with site.sessions() as s:
        auth.create_user(s, operator_name, "correct horse battery", "operator")
        s.commit()
    operator = login(site, operator_name)
    html = text(operator.get("/organisations/an-phat"))
    assert re.findall(r'<option value="([^"]+)">Cổng', html) == ["an-phat-kho"]
    assert 'data-location="an-phat-gate" data-workers-only="no"' in html

    # a reason is asked; nothing changes without the confirm
    html = text(post(operator, "/organisations/an-phat/places/preview", action="attach",
                     location="an-phat-kho", reason=""), 422)
    assert "Hãy nêu lý do thay đổi." in html
    text(post(operator, "/organisations/an-phat/places/preview", action="attach",
              location="sai-gon-cho", reason="x"), 404)
    fields = {"action": "attach", "location": "an-phat-kho", "reason": "kho mới"}
    html = text(post(operator, "/organisations/an-phat/places/preview", **fields))
    assert "Gắn Cổng an-phat-kho làm điểm kiểm soát của Công ty An Phát." in html
    with site.sessions() as s:
        assert s.scalar(select(Location.organisation_id)
                        .where(Location.code == "an-phat-kho")) is None
    text(post(operator, "/organisations/an-phat/places/apply", confirm="yes",
              **dict(fields, reason="khác")), 409)
    text(post(operator, "/organisations/an-phat/places/preview", **fields))
    response = post(operator, "/organisations/an-phat/places/apply", confirm="yes", **fields)
    assert response.status_code == 302
    html = text(operator.get(response.headers["Location"]))
    assert 'data-location="an-phat-kho" data-workers-only="no"' in html
    text(post(operator, "/organisations/an-phat/places/apply", confirm="yes", **fields), 409)

    # workers only: the policy bundle's workers_only map names its kiosk
    assert place(operator, "workers_only", "an-phat-kho").status_code == 302
    assert workers_only(site.sessions, "an-phat-kho")
    body = policy_body(site.sessions, site.config)
    assert body["workers_only"] == {"k-an-phat-kho": "an-phat"}
    html = text(operator.get("/organisations/an-phat"))
    assert 'data-location="an-phat-kho" data-workers-only="yes"' in html
    # a workers-only place cannot leave its organisation (whose roster?): the API's rule,
    # in Vietnamese
    html = text(post(operator, "/organisations/an-phat/places/preview", action="detach",
                     location="an-phat-kho", reason="x"), 422)
    assert "phải là điểm kiểm soát của một cơ sở" in html
    assert place(operator, "open", "an-phat-kho").status_code == 302
    assert policy_body(site.sessions, site.config)["workers_only"] == {}
    assert place(operator, "detach", "an-phat-kho").status_code == 302
    with site.sessions() as s:
        assert s.scalar(select(Location.organisation_id)
                        .where(Location.code == "an-phat-kho")) is None
        entries = s.scalars(select(AuditLog).where(AuditLog.action == "location.update",
                                                   AuditLog.target == "an-phat-kho")
                            .order_by(AuditLog.id)).all()
        assert [sorted(set(e.detail) - {"reason"}) for e in entries] == [
            ["organisation"], ["workers_only"], ["workers_only"], ["organisation"]]
        assert entries[0].detail["reason"] == "kho mới"
    # who may: those who may change a location in the API
    officer = login(site, "officer")
    assert 'id="attach-form"' not in text(officer.get("/organisations/an-phat"))
    text(post(officer, "/organisations/an-phat/places/preview", action="attach",
              location="an-phat-kho", reason="x"), 403)


def test_a_control_point_made_workers_only_in_chromium(dashboard, page):
    dashboard.app.config["GREENGATE_CLOCK"] = lambda: NOW
    seed(dashboard.sessions, users=False)
    bundles.ensure_signing_key(dashboard.config)
    dashboard.login(page, "operator", lang="vi")
    page.goto(dashboard.url + "/organisations/an-phat")
    row = page.locator("tr[data-location='an-phat-gate']")
    assert row.get_attribute("data-workers-only") == "no"
    form = row.locator("form[data-action='workers_only']")
    form.locator("input[name=reason]").fill("Chỉ công nhân vào xưởng")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#confirm-form")
    assert page.locator(".confirm-summary").inner_text() == \
        "Đặt Cổng An Phát chỉ cho người lao động."
    page.locator("#confirm-form button[type=submit]").click()
    page.wait_for_selector("#done")
    row = page.locator("tr[data-location='an-phat-gate']")
    assert row.get_attribute("data-workers-only") == "yes"
    assert row.locator("td.admitted").inner_text() == "Chỉ người lao động (theo danh sách)"
    assert policy_body(dashboard.sessions, dashboard.config)["workers_only"] == {
        "k-gate": "an-phat"}

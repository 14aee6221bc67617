"""The trust list, policy and value-set pages (fleet/web/trust_views.py, policy_views.py,
valuesets_views.py) on SQLite and PostgreSQL: through the Flask test client (the
confirmation step changes nothing until confirmed, refuses a changed field and a second
submit; roles), and in a real Chromium (tests/conftest_browser.py): an operator adds an
issuer certificate by uploading it and removes it, imports an EU rule set by uploading
its files and assigns it to a district; the value-set page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet import auth, bundles, kiosks
from fleet.models import AuditLog, District, Kiosk, Location, TrustEntry
from greengate import bundle as gg_bundle
from provisioning.issuer import Issuer

PASSWORD = "correct horse battery"
RULES = Path(__file__).parent / "data" / "eu-rules"


def token_of(client, path) -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name, path="/lists/trust"):
    response = client.post("/login", data={"csrf_token": token_of(client, "/login"),
                                           "username": name, "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)
    client.get(path + "?lang=en")
    return token_of(client, path)


def confirm_fields(html: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                           html.split('class="confirm"')[1]))


def unescape(value: str) -> str:
    import html
    return html.unescape(value)


@pytest.fixture
def site(fleet_app, fleet_db, fleet_config):
    bundles.ensure_signing_key(fleet_config)
    with fleet_db() as s:
        for name, role in (("admin", "admin"), ("operator", "operator"),
                           ("health", "health_official")):
            auth.create_user(s, name, PASSWORD, role)
        s.commit()
    return fleet_app


def audits(fleet_db, prefix):
    with fleet_db() as s:
        return s.scalars(select(AuditLog).where(AuditLog.action.like(prefix + "%"))
                         .order_by(AuditLog.id)).all()


# --- trust list ---------------------------------------------------------------------------
def test_trust_add_and_remove_are_previewed_confirmed_once_and_audited(site, fleet_db):
    issuer = Issuer.create(name="Bộ Y tế DSC 7", usage="v")
    client = site.test_client()
    token = login(client, "operator")
    form = {"csrf_token": token, "deployment": "test", "action": "add",
            "certificate": issuer.pem.decode(), "reason": "new national signer"}
    preview = client.post("/lists/trust/preview", data=form)
    html = preview.get_data(as_text=True)
    assert preview.status_code == 200, html
    kid = issuer.kid.hex()
    assert kid in html and "Bộ Y tế DSC 7" in html and "vaccination" in html
    assert "1.3.6.1.4.1.1847.2021.1.2" in html  # the DCC EKU, named and with its OID
    with fleet_db() as s:
        assert s.scalars(select(TrustEntry)).all() == []  # nothing yet
    fields = {k: unescape(v) for k, v in confirm_fields(html).items()}
    assert client.post("/lists/trust/apply", data={**fields, "reason": "x"}).status_code == 409
    done = client.post("/lists/trust/apply", data=fields)
    assert done.status_code == 200, done.get_data(as_text=True)
    assert f"Certificate {kid} added; the trust list is now version" in done.get_data(as_text=True)
    assert client.post("/lists/trust/apply", data=fields).status_code == 409  # once only
    (added,) = audits(fleet_db, "trust.")
    assert (added.actor, added.action, added.detail["kid"]) == ("operator", "trust.add", kid)

    listing = client.get("/lists/trust").get_data(as_text=True)
    row = re.search(rf'<tr class="" data-kid="{kid}">(.*?)</tr>', listing, re.S).group(1)
    assert "VN" in row and "vaccination" in row and "expired" not in row
    again = client.post("/lists/trust/preview", data=form)
    assert again.status_code == 422 and "in the trust list already" in again.get_data(as_text=True)

    remove = {"csrf_token": token, "deployment": "test", "action": "remove", "kid": kid,
              "reason": "key compromised"}
    preview = client.post("/lists/trust/preview", data=remove).get_data(as_text=True)
    assert "Remove 1 certificate(s) with kid" in preview
    done = client.post("/lists/trust/apply", data={k: unescape(v) for k, v in
                                                   confirm_fields(preview).items()})
    assert done.status_code == 200 and "removed" in done.get_data(as_text=True)
    assert [a.action for a in audits(fleet_db, "trust.")] == ["trust.add", "trust.remove"]
    assert kid not in client.get("/lists/trust").get_data(as_text=True)


def test_trust_page_flags_expired_and_refuses_bad_input_and_readers(site, fleet_db,
                                                                    fleet_config):
    old = Issuer.create(name="Old DSC", not_before="2020-01-01T00:00:00Z",
                        not_after="2021-01-01T00:00:00Z")
    with fleet_db() as s:  # stored before it expired (the service refuses expired ones now)
        s.add(TrustEntry(deployment="test", kid=old.kid.hex(), certificate=old.der,
                         subject="CN=Old DSC", country="VN", not_after=1609459200.0,
                         added_by="t", added_at=1.0))
        s.commit()
    client = site.test_client()
    token = login(client, "operator")
    listing = client.get("/lists/trust").get_data(as_text=True)
    row = re.search(rf'<tr class="expired" data-kid="{old.kid.hex()}">(.*?)</tr>', listing, re.S)
    assert row and "expired-flag" in row.group(1)
    for data, words in (({"certificate": "not a cert"}, "not a certificate"),
                        ({"certificate": ""}, "Upload the certificate file"),
                        ({"certificate": old.pem.decode()}, "expired on 2021-01-01")):
        r = client.post("/lists/trust/preview", data={"csrf_token": token, "deployment": "test",
                                                      "action": "add", "reason": "r", **data})
        assert r.status_code == 422 and words in r.get_data(as_text=True), words
    reader = site.test_client()
    token = login(reader, "health")
    assert "Add an issuer certificate" not in reader.get("/lists/trust").get_data(as_text=True)
    r = reader.post("/lists/trust/preview", data={"csrf_token": token, "deployment": "test",
                                                  "action": "remove", "kid": old.kid.hex(),
                                                  "reason": "r"})
    assert r.status_code == 403


# --- policies -----------------------------------------------------------------------------
@pytest.fixture
def places(site, fleet_db, fleet_config):
    with fleet_db() as s:
        q1 = District(code="q1", name="Quận 1")
        s.add(q1)
        s.flush()
        market = Location(code="q1-market", name="Chợ Bến Thành", address="",
                          district_id=q1.id)
        s.add(market)
        s.flush()
        bundles.ensure_issued(s, fleet_config, "test")
        for kid, loc in (("q1-a", market.id), ("q1-b", market.id), ("free", None)):
            kiosks.register(s, fleet_config, kiosk_id=kid, deployment="test", policy="hcmc-2021",
                            location=s.get(Location, loc) if loc else None, actor="t", at=1.0)
        s.commit()
    return site


def upload(*paths):
    return [(open(p, "rb"), p.name) for p in paths]


def test_import_then_assign_to_a_location_with_confirmation(places, fleet_db, fleet_config):
    client = places.test_client()
    token = login(client, "operator", "/policies")
    files = sorted(RULES.glob("*.json"))
    preview = client.post("/policies/import/preview", content_type="multipart/form-data",
                          data={"csrf_token": token, "deployment": "test", "name": "vn-eu",
                                "title": "EU rules", "reason": "the ministry's rules",
                                "rules": upload(*files)})
    html = preview.get_data(as_text=True)
    assert preview.status_code == 200, html
    assert "Create policy vn-eu in test from 2 rules in 2 files." in html
    assert "VR-VN-0001" in html and "VR-VN-0002" in html
    fields = {k: unescape(v) for k, v in confirm_fields(html).items()}
    assert client.post("/policies/import/apply",
                       data={**fields, "document": fields["document"].replace(
                           "VR-VN-0001", "VR-VN-0009")}).status_code == 409  # tampered
    done = client.post("/policies/import/apply", data=fields)
    assert done.status_code == 200 and "Policy vn-eu created" in done.get_data(as_text=True)
    assert [a.action for a in audits(fleet_db, "policy.")] == ["policy.create"]

    view = client.get("/policies/test/vn-eu").get_data(as_text=True)
    assert "The vaccine must be in the value set of authorised vaccines." in view
    form = {"csrf_token": token, "deployment": "test", "name": "vn-eu", "target": "location",
            "location": "q1-market", "kiosks": "", "district": "", "reason": "pilot market"}
    preview = client.post("/policies/assign/preview", data=form).get_data(as_text=True)
    assert "Assign policy vn-eu to 2 of 2 kiosks" in preview and 'data-kiosk="free"' not in preview
    with fleet_db() as s:
        assert {k.policy for k in s.scalars(select(Kiosk))} == {"hcmc-2021"}  # nothing yet
    fields = {k: unescape(v) for k, v in confirm_fields(preview).items()}
    done = client.post("/policies/assign/apply", data=fields)
    assert done.status_code == 200, done.get_data(as_text=True)
    assert "Policy vn-eu assigned to 2 kiosks" in done.get_data(as_text=True)
    assert client.post("/policies/assign/apply", data=fields).status_code == 409
    with fleet_db() as s:
        assert {k.id: k.policy for k in s.scalars(select(Kiosk))} == {
            "q1-a": "vn-eu", "q1-b": "vn-eu", "free": "hcmc-2021"}
        raw = bundles.latest(s, "test", "policy").raw
    body = gg_bundle.open_bundle(raw, bundles.load_signing_key(fleet_config).public_key(),
                                 "test").body
    assert body["assigned"]["q1-a"] == body["assigned"]["q1-b"] == "vn-eu"
    assert "vn-eu" in body["policies"]
    listing = client.get("/policies").get_data(as_text=True)
    assert re.search(r'data-policy="vn-eu">.*?class="num">2</td>\s*<td[^>]*class="num">2</td>',
                     listing, re.S)

    bad = client.post("/policies/import/preview", content_type="multipart/form-data",
                      data={"csrf_token": token, "deployment": "test", "name": "broken",
                            "reason": "r", "rules": [(__import__("io").BytesIO(b"{not json"),
                                                      "x.json")]})
    assert bad.status_code == 422 and "rule file x.json: not JSON" in bad.get_data(as_text=True)
    reader = places.test_client()
    token = login(reader, "health", "/policies")
    assert reader.post("/policies/assign/preview", data={**form, "csrf_token": token}) \
        .status_code == 403


def test_value_set_page_shows_sets_and_version(site):
    client = site.test_client()
    login(client, "health", "/valuesets")
    html = client.get("/valuesets").get_data(as_text=True)
    assert "bundle version 1" in html
    row = re.search(r'data-valueset="vaccines-covid-19-names">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'class="num">\d+</td>', row)


# --- in a real Chromium -----------------------------------------------------------------------
def test_browser_trust_add_by_upload_and_remove(dashboard, page, tmp_path):
    bundles.ensure_signing_key(dashboard.config)
    issuer = Issuer.create(name="Browser DSC", usage="vt")
    der = tmp_path / "signer.der"
    der.write_bytes(issuer.der)
    kid = issuer.kid.hex()
    dashboard.login(page, "operator")
    page.click("nav.main >> text=Trust list")
    page.set_input_files("section.trust-add input[type=file]", str(der))
    page.fill("section.trust-add input[name=reason]", "new signer")
    page.click("section.trust-add button:has-text('Check the change')")
    page.wait_for_url(re.compile(r".*/lists/trust/preview$"))
    assert kid in page.inner_text("table.preview") and "Browser DSC" in page.inner_text(
        "table.preview")
    page.click("button:has-text('Confirm: add the certificate')")
    assert f"Certificate {kid} added" in page.inner_text(".done-summary")
    page.click("text=Back to the trust list")
    row = page.locator(f"tr[data-kid='{kid}']")
    assert "test" in row.inner_text() and "vaccination" in row.inner_text()
    row.locator("input[name=reason]").fill("retired signer")
    row.locator("button:has-text('Remove')").click()
    page.wait_for_url(re.compile(r".*/lists/trust/preview$"))
    page.click("button:has-text('Confirm: remove the certificate')")
    assert f"Certificate {kid} removed" in page.inner_text(".done-summary")
    page.click("text=Back to the trust list")
    assert page.locator(f"tr[data-kid='{kid}']").count() == 0
    with dashboard.sessions() as s:
        assert [a.action for a in s.scalars(select(AuditLog).where(
            AuditLog.action.like("trust.%")).order_by(AuditLog.id))] == ["trust.add",
                                                                       "trust.remove"]


def test_browser_policy_import_and_assign_to_a_district(dashboard, page):
    bundles.ensure_signing_key(dashboard.config)
    with dashboard.sessions() as s:
        q1 = District(code="q1", name="Quận 1")
        s.add(q1)
        s.flush()
        market = Location(code="q1-market", name="Chợ", address="", district_id=q1.id)
        s.add(market)
        s.flush()
        bundles.ensure_issued(s, dashboard.config, "test")
        kiosks.register(s, dashboard.config, kiosk_id="q1-a", deployment="test",
                        policy="hcmc-2021", location=market, actor="t", at=1.0)
        s.commit()
    dashboard.login(page, "operator")
    page.click("nav.main >> text=Policies")
    page.fill("section.policy-import input[name=name]", "vn-eu")
    page.set_input_files("section.policy-import input[type=file]",
                         [str(p) for p in sorted(RULES.glob("*.json"))])
    page.fill("section.policy-import input[name=reason]", "ministry rules")
    page.click("button:has-text('Check the rules')")
    assert "from 2 rules in 2 files" in page.inner_text(".confirm-summary")
    page.click("button:has-text('Confirm: import the rules')")
    assert "Policy vn-eu created" in page.inner_text(".done-summary")
    page.click("text=Back to the policy")
    assert page.locator("tr[data-rule='VR-VN-0001']").count() == 1
    page.check("input[name=target][value=district]")
    page.select_option("select[name=district]", "q1")
    page.fill("section.policy-assign input[name=reason]", "district pilot")
    page.click("section.policy-assign button:has-text('Check the change')")
    assert "Assign policy vn-eu to 1 of 1 kiosks" in page.inner_text(".confirm-summary")
    page.click("button:has-text('Confirm: assign to 1 kiosks')")
    assert "Policy vn-eu assigned to 1 kiosks" in page.inner_text(".done-summary")
    page.click(".done-summary ~ p >> text=q1-a")
    assert "vn-eu" in page.inner_text("#policy")


def test_browser_value_sets_page(dashboard, page):
    bundles.ensure_signing_key(dashboard.config)
    dashboard.login(page, "health", lang="vi")
    page.goto(dashboard.url + "/valuesets?lang=en")
    assert "bundle version 1" in page.inner_text("main")
    assert page.locator("tr[data-valueset]").count() >= 5

"""The compliance page in a real Chromium (tests/conftest_browser.py) on the seeded city
(tests/compliancekit.py), SQLite and PostgreSQL: a district officer reads its wards'
figures in Vietnamese, follows a silent place, records reminders until the organisation
is flagged; a ward officer sees its ward only; a weekly report is made and downloaded."""

from __future__ import annotations

from tests.compliancekit import NOW, expected, seed

COLUMNS = ("locations", "online", "today", "week", "silent", "reminders", "flagged")
KEYS = ("locations", "locations_online", "locations_scanned_today", "locations_scanned_7d",
        "locations_silent", "reminders", "organisations_flagged")


def _row(page, ward: str) -> dict:
    row = page.locator(f"#figures tr[data-ward='{ward}']")
    return {key: int(row.locator(f"td.{col}").inner_text()) for col, key in zip(COLUMNS, KEYS)}


def test_district_officer_watches_and_reminds(dashboard, page):
    dashboard.app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(dashboard.sessions)
    want = expected(dashboard.sessions, district_id=ids["q1"])
    dashboard.login(page, "chief@q1.example", lang="vi")
    page.goto(dashboard.url + "/compliance")
    assert page.locator("h1").inner_text().startswith("Giám sát tuân thủ: Quận 1")
    for ward in ("w1", "w2", ""):
        got = _row(page, ward)
        assert got == {k: want[ward][k] for k in KEYS}, ward
    assert _row(page, "*") == {k: want["total"][k] for k in KEYS}
    assert page.locator(".flagged-orgs tr[data-org]").evaluate_all(
        "rows => rows.map(r => r.dataset.org)") == ["org-b"]
    assert sorted(page.locator(".silent-places tr[data-location]").evaluate_all(
        "rows => rows.map(r => r.dataset.location)")) == sorted(want["silent"])
    # a silent place's link leads to its kiosks
    page.locator(".silent-places tr[data-location='l3'] a").click()
    page.wait_for_url("**/kiosks?location=l3")
    assert "k3" in page.locator("main").inner_text()
    page.go_back()
    # remind org-d from its silent place, then once more by the form: the fourth flags it
    page.locator("button[data-remind='org-d']").click()
    page.wait_for_selector("#reminded")
    assert "org-d" in page.locator("#reminded").inner_text()
    assert _row(page, "w2")["reminders"] == want["w2"]["reminders"] + 1
    page.fill("#remind-form input[name=organisation]", "org-d")
    page.fill("#remind-form input[name=note]", "lần thứ tư")
    page.click("#remind-form button[type=submit]")
    page.wait_for_selector(".flagged-orgs tr[data-org='org-d']")
    assert page.locator(".flagged-orgs tr[data-org='org-d'] td.count").inner_text() == "4"
    assert _row(page, "w2")["organisations_flagged"] == 1
    # an organisation outside the district cannot be reminded
    page.fill("#remind-form input[name=organisation]", "org-g")
    page.click("#remind-form button[type=submit]")
    assert "org-g" in page.locator("main").inner_text()
    assert page.locator("#figures").count() == 0  # the error page, not the figures
    # a weekly report, made from the page and downloaded
    page.goto(dashboard.url + "/reports")
    page.fill("#make-report input[name=week]", "2021-09-08")
    page.click("#make-report button[type=submit]")
    row = page.locator("tr[data-week='2021-09-06'][data-code='q1']")
    row.wait_for()
    with page.expect_download() as download:
        row.locator("a", has_text="PDF").click()
    assert download.value.suggested_filename == "greengate-district-q1-2021-09-06-vi.pdf"
    with open(download.value.path(), "rb") as f:
        assert f.read(5) == b"%PDF-"


def test_ward_officer_sees_its_ward_only(dashboard, page):
    dashboard.app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(dashboard.sessions)
    want = expected(dashboard.sessions, ward_id=ids["w1"])
    dashboard.login(page, "ward1@q1.example", lang="vi")
    page.goto(dashboard.url + "/compliance")
    assert page.locator("#figures tr[data-ward]").evaluate_all(
        "rows => rows.map(r => r.dataset.ward)") == ["w1"]
    assert _row(page, "w1") == {k: want["w1"][k] for k in KEYS}
    assert page.locator("select[name=district], select[name=ward]").count() == 0
    page.goto(dashboard.url + "/compliance?ward=w2")
    assert page.locator("#figures").count() == 0

"""The status-list, audit and tracing pages in a real Chromium (tests/conftest_browser.py),
on SQLite and PostgreSQL: an operator revokes a certificate through the confirmation
step and an admin finds it in the audit log; a health official traces a case and
downloads the CSV."""

from __future__ import annotations

import csv
import io
import re

from sqlalchemy import select

from fleet import bundles
from fleet.models import AuditLog
from greengate.status import cert_hash
from tests.fleetdata import HOUR, NOW, scan, seed

CI = "URN:UVCI:01:VN:BROWSER0001"
MIN = 60.0


def test_operator_revokes_with_confirmation_and_admin_sees_the_audit(dashboard, page,
                                                                    chromium):
    bundles.ensure_signing_key(dashboard.config)
    dashboard.login(page, "operator")
    page.click("nav.main >> text=Status list")
    page.check("input[name=action][value=revoke]")
    page.fill("textarea[name=certificates]", CI)
    page.fill("input[name=reason]", "reported sold online")
    page.click("button:has-text('Check the change')")
    page.wait_for_url(re.compile(r".*/lists/status/preview$"))
    assert "Revoke 1 of 1 certificates in test." in page.inner_text(".confirm-summary")
    assert page.inner_text("table.preview td.ci") == CI
    page.click("button:has-text('Confirm: change 1 certificates')")
    page.wait_for_url(re.compile(r".*/lists/status/apply$"))
    assert "1 certificates changed" in page.inner_text(".done-summary")
    page.click("text=Back to the status list")
    row = page.locator("table.entries tr", has_text=CI)
    assert row.locator("td.kind").inner_text() == "revoked"
    assert "reported sold online" in row.inner_text()
    assert page.locator("nav.main a[href='/audit']").count() == 0  # not for operators

    context = chromium.new_context(locale="en-GB")
    admin = context.new_page()
    admin.set_default_timeout(10_000)
    dashboard.login(admin, "admin")
    admin.click("nav.main >> text=Audit log")
    admin.fill("input[name=action]", "status.revoke")
    admin.click("button:has-text('Filter')")
    entry = admin.locator("table.audit tbody tr")
    assert entry.count() == 1
    assert entry.locator("td.actor").inner_text() == "operator"
    assert entry.locator("td.target").inner_text() == "test"
    entry.locator("summary").click()
    assert cert_hash(CI).hex() in entry.locator("td.detail code").inner_text()
    context.close()


def test_health_official_traces_a_case_and_downloads_csv(dashboard, page):
    ids = seed(dashboard.sessions)
    key = cert_hash(CI).hex()
    with dashboard.sessions() as s:
        s.add_all([scan(1, "q1-a", ids.market, ids.q1, NOW - 2 * HOUR, cert=key, holder="a" * 32),
                   scan(2, "q1-b", ids.market, ids.q1, NOW - 2 * HOUR + 12 * MIN,
                        cert="b" * 32, holder="b" * 32),
                   scan(3, "q3-a", ids.station, ids.q3, NOW - 2 * HOUR, cert="c" * 32,
                        holder="c" * 32)])
        s.commit()
    dashboard.login(page, "health")
    page.click("nav.main >> text=Tracing")
    page.fill("textarea[name=certificate]", CI)
    page.fill("input[name=from]", "2021-10-04T00:00")  # Vietnam time
    page.fill("input[name=to]", "2021-10-06T00:00")
    page.click("button:has-text('Trace')")
    assert "1 scans of the case, 1 other holders" in page.inner_text(".trace-summary")
    assert "b" * 32 in page.inner_text("article.visit table.contacts")
    assert "c" * 32 not in page.content()  # another place
    with page.expect_download() as info:
        page.click("button:has-text('Download CSV')")
    download = info.value
    assert re.match(r"trace-[0-9a-f]{24}-2021-10-03-2021-10-05\.csv$", download.suggested_filename)
    with open(download.path(), encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert [(r["case_kiosk"], r["location"], r["contact_holder"], r["minutes_apart"])
            for r in rows] == [("q1-a", "q1-market", "b" * 32, "12.0")]
    with dashboard.sessions() as s:
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "trace.query")
                           .order_by(AuditLog.id)).all()
    assert [(a.actor, a.target, a.detail["format"], a.detail["contacts"]) for a in logged] == [
        ("health", key, "page", 1), ("health", key, "csv", 1)]

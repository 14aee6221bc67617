"""The roster page in a real Chromium (tests/conftest_browser.py), SQLite and PostgreSQL:
a manager adds a worker, opens enrolment mode on a kiosk, uploads a CSV (a preview, then
the confirmation), sees the count against the quota; a file over the quota is refused
whole; a ward officer reads the roster without the forms; another manager gets 404."""

from __future__ import annotations

from sqlalchemy import select

from fleet import roster_workers
from fleet.models import RosterEnrolment, Worker
from greengate.sealing import identity_bytes
from tests.rosterkit import AN, BINH, CUONG, holder, qr, seed


def count_line(page) -> str:
    return page.locator("#quota").inner_text()


def test_a_manager_keeps_the_roster(dashboard, page, es256, tmp_path):
    seed(dashboard.sessions, dashboard.config, es256)
    dashboard.login(page, "manager-a")
    page.locator("nav.main a", has_text="Roster").click()  # the manager's own roster
    page.wait_for_url("**/organisations/org-a/roster")
    assert "0 of 3" in count_line(page)
    # add a worker with a certificate identifier
    page.fill("#add-worker input[name=display_name]", "Phạm Thị Dung")
    page.fill("#add-worker input[name=job]", "kế toán")
    page.fill("#add-worker textarea[name=link]", "URN:UVCI:01:VN:DUNG1")
    page.click("#add-worker button[type=submit]")
    page.wait_for_selector("#done")
    assert "1 of 3" in count_line(page)
    row = page.locator("table.roster tr[data-worker]")
    assert row.count() == 1 and "Phạm Thị Dung" in row.inner_text()
    assert "one certificate only" in row.locator("td.link").inner_text()
    # enrolment mode on one of the organisation's kiosks for that worker
    page.select_option("#enrol select[name=kiosk]", "ka2")
    page.select_option("#enrol select[name=worker]", label="Phạm Thị Dung")
    page.click("#enrol button[type=submit]")
    page.wait_for_selector("table.enrolments tr[data-outcome=open]")
    assert "ka2" in page.locator("table.enrolments").inner_text()
    # the scan at ka2 (what the ingest does on it: tests/test_roster_enrolment.py)
    with dashboard.sessions() as s:
        assert s.scalars(select(RosterEnrolment.kiosk_id)).one() == "ka2"
        outcome, _org, _deps = roster_workers.link_enrolment(
            s, dashboard.config, "ka2", identity_bytes(holder(CUONG)))
        s.commit()
    assert outcome == "linked"
    page.reload()
    assert page.locator("table.enrolments tr[data-outcome=linked]").count() == 1
    assert "every certificate" in page.locator("table.roster td.link").inner_text()
    # a CSV: previewed, nothing added yet; then confirmed
    csv = tmp_path / "roster.csv"
    csv.write_text(f"display_name;job;qr\nNguyễn Văn An;thợ may;{qr(es256, AN)}\n"
                   f"Lê Thị Bình;bảo vệ;{qr(es256, BINH)}\n", encoding="utf-8")
    page.set_input_files("#upload-csv input[name=file]", str(csv))
    page.click("#upload-csv button[type=submit]")
    page.wait_for_selector("#summary")
    assert "1 on the roster now, 3 after, of 3 allowed" in page.locator("#summary").inner_text()
    assert page.locator("table.preview tr[data-line]").count() == 2
    with dashboard.sessions() as s:
        assert len(s.scalars(select(Worker)).all()) == 1
    page.click("#confirm-import button[type=submit]")
    page.wait_for_selector("#done")
    assert "3 of 3" in count_line(page)
    names = page.locator("table.roster td.name").all_inner_texts()
    assert sorted(names) == ["Lê Thị Bình", "Nguyễn Văn An", "Phạm Thị Dung"]
    # one more is past the quota: the file is refused whole and says why
    csv.write_text("display_name\nMột người nữa\n", encoding="utf-8")
    page.set_input_files("#upload-csv input[name=file]", str(csv))
    page.click("#upload-csv button[type=submit]")
    page.wait_for_selector("#refused")
    assert "quota of 3" in page.locator("table.errors").inner_text()
    page.goto(dashboard.url + "/organisations/org-a/roster")
    assert "3 of 3" in count_line(page)
    # a removal frees a place
    page.locator("table.roster tr[data-worker]", has_text="Lê Thị Bình") \
        .locator("button[data-remove]").click()
    page.wait_for_selector("#done")
    assert "2 of 3" in count_line(page)
    # another organisation's roster is not there for this manager
    page.goto(dashboard.url + "/organisations/org-b/roster")
    assert page.locator("#quota").count() == 0


def test_a_ward_officer_reads_the_roster_in_vietnamese(dashboard, page, es256):
    seed(dashboard.sessions, dashboard.config, es256)
    dashboard.login(page, "ward1", lang="vi")
    page.goto(dashboard.url + "/organisations/org-a/roster")
    assert page.locator("h1").inner_text().startswith("Danh sách người lao động")
    assert page.locator("#add-worker, #upload-csv, #enrol").count() == 0
    page.goto(dashboard.url + "/organisations/org-b/roster")  # another ward's
    assert page.locator("#quota").count() == 0

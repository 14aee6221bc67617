"""Compliance watch, reminders and weekly reports (docs/reports.md) on a seeded city
(tests/compliancekit.py), on SQLite and PostgreSQL: every figure against a row-by-row
count of the database, the PDF's text extracted with pypdfium2, the CSV parsed, the
e-mail received by a real SMTP server (aiosmtpd), the ward officer's scope."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from fleet import cli, compliance, reports
from fleet.models import AuditLog, District, Ward, WeeklyReport
from tests.compliancekit import NOW, VN, expected, expected_week, seed

LAST_MONDAY = datetime(2021, 9, 6, tzinfo=VN)


@pytest.fixture
def city(api, fleet_app):
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(api.sessions)
    return ids


def _row_dict(row: compliance.Row) -> dict:
    d = row.as_dict()
    return {"organisations": d["organisations"], "locations": d["locations"],
            "locations_online": d["locations_online"],
            "locations_scanned_today": d["locations_scanned_today"],
            "locations_scanned_7d": d["locations_scanned_7d"],
            "locations_silent": d["locations_silent"], "reminders": d["reminders"],
            "organisations_flagged": d["organisations_flagged"]}


@pytest.mark.parametrize("place", ["q1", "q2", "w1", "w2"])
def test_every_figure_matches_the_database_row_by_row(api, city, place):
    kw = {"ward_id": city[place]} if place.startswith("w") else {"district_id": city[place]}
    want = expected(api.sessions, **kw)
    with api.sessions() as s:
        got = compliance.figures(s, now=NOW, silent_hours=2.0, **kw)
    rows = {r.code: _row_dict(r) for r in got.wards}
    assert set(rows) == set(want) - {"total", "silent", "flagged"}
    for code, row in rows.items():
        assert row == want[code], code
    if got.district is not None:
        assert _row_dict(got.district) == want["total"]
    assert {x["code"] for x in got.silent} == want["silent"]
    assert {x["code"] for x in got.flagged} == want["flagged"]


def test_the_seeded_city_exercises_every_case(api, city):
    """The reference above is only worth something if the city has each case."""
    with api.sessions() as s:
        got = compliance.figures(s, district_id=city["q1"], now=NOW, silent_hours=2.0)
    assert got.district.organisations == {"applied": 1, "approved": 3, "suspended": 1, "closed": 1}
    assert (got.district.locations, got.district.online, got.district.scanned_today,
            got.district.scanned_7d) == (6, 4, 3, 4)
    assert {x["code"]: x["why"] for x in got.silent} == {
        "l2": "online_no_scan", "l3": "no_scan_7d", "l6": "online_no_scan"}
    assert [(f["code"], f["reminders"]) for f in got.flagged] == [("org-b", 4)]
    assert got.district.reminders == 6 and got.district.flagged == 1
    assert [r.code for r in got.wards] == ["w1", "w2", ""]  # l5 and org-f are in no ward


def test_reminders_are_counted_and_the_fourth_flags_the_organisation(api, city):
    officer = city["token:ward2@q1.example"]
    url = "/api/v1/organisations/org-d/reminders"
    assert api.client.get(url, headers=officer).get_json()["count"] == 2
    answer = api.client.post(url, json={"note": "chưa quét mã"}, headers=officer)
    assert answer.status_code == 201
    body = answer.get_json()
    assert body["count"] == 3 and body["flagged"] is False
    assert body["reminders"][0]["note"] == "chưa quét mã"
    assert body["reminders"][0]["by"] == "ward2@q1.example"
    body = api.client.post(url, json={}, headers=officer).get_json()
    assert body["count"] == 4 and body["flagged"] is True
    with api.sessions() as s:
        org_id = s.scalar(select(compliance.Organisation.id)
                          .where(compliance.Organisation.code == "org-d"))
        assert compliance.reminder_counts(s, [org_id]) == {org_id: 4}
        assert org_id in compliance.flagged(s)
        audits = s.scalars(select(AuditLog).where(AuditLog.action == "organisation.remind")).all()
        assert [(a.actor, a.target, a.detail["count"]) for a in audits] == [
            ("ward2@q1.example", "org-d", 3), ("ward2@q1.example", "org-d", 4)]
    figures = api.client.get("/api/v1/reports/compliance", headers=officer).get_json()
    assert [f["code"] for f in figures["flagged"]] == ["org-d"]


def test_ward_officer_sees_its_ward_only(api, city):
    w1 = city["token:ward1@q1.example"]
    figures = api.client.get("/api/v1/reports/compliance", headers=w1).get_json()
    assert figures["scope"]["code"] == "w1" and figures["district"] is None
    assert [w["code"] for w in figures["wards"]] == ["w1"]
    assert {s["code"] for s in figures["silent"]} == {"l2", "l6"}
    for query in ("?ward=w2", "?ward=w3", "?ward=nope"):
        answer = api.client.get(f"/api/v1/reports/compliance{query}", headers=w1)
        assert answer.status_code == 404, query
    assert api.client.get("/api/v1/reports/compliance?district=q1", headers=w1).status_code == 403
    # organisations of another ward, or of no ward: not found, reminders refused
    for code in ("org-d", "org-f", "org-g"):
        assert api.client.get(f"/api/v1/organisations/{code}/reminders",
                              headers=w1).status_code == 404
        assert api.client.post(f"/api/v1/organisations/{code}/reminders", json={},
                               headers=w1).status_code == 404
    assert api.client.get("/api/v1/organisations/org-a/reminders", headers=w1).status_code == 200
    # a district officer: its district and its wards, never the other district
    q2 = city["token:chief@q2.example"]
    assert api.client.get("/api/v1/reports/compliance", headers=q2).get_json()["scope"]["code"] == "q2"
    assert api.client.get("/api/v1/reports/compliance?ward=w1", headers=q2).status_code == 404
    assert api.client.get("/api/v1/reports/compliance?district=q1", headers=q2).status_code == 404
    # a health official and a manager are not compliance watchers
    assert api.client.get("/api/v1/reports/compliance?district=q1",
                          headers=api.health).status_code == 403
    # an admin must say which
    assert api.client.get("/api/v1/reports/compliance", headers=api.admin).status_code == 400


def test_weekly_report_reports_what_the_database_holds(api, city):
    answer = api.client.post("/api/v1/reports/weekly", json={"district": "q1", "week": "2021-09-08"},
                             headers=api.admin)
    assert answer.status_code == 201, answer.get_json()
    made = answer.get_json()
    assert made["made"] is True and made["report"]["week"] == "2021-09-06"
    want = expected_week(api.sessions, district_id=city["q1"], monday=LAST_MONDAY)
    # the figures kept
    with api.sessions() as s:
        report = s.get(WeeklyReport, made["report"]["id"])
        fig = report.figures
        pdf, text = report.pdf, report.csv
    assert {d["day"]: {"green": d["green"], "red": d["red"]} for d in fig["per_day"]} \
        == want["per_day"]
    assert want["per_day"]["2021-09-07"] == {"green": 7, "red": 0}  # 2 scans + 5 counted
    assert fig["summary"]["locations_scanned_week"] == want["scanned"] == 2
    assert fig["summary"]["scans_week"] == sum(v["green"] + v["red"]
                                               for v in want["per_day"].values())
    at_end = expected(api.sessions, district_id=city["q1"],
                      now=LAST_MONDAY.timestamp() + 7 * 86400 - 1)
    assert fig["summary"]["locations_silent"] == at_end["total"]["locations_silent"]
    assert fig["summary"]["org_approved"] == at_end["total"]["organisations"]["approved"]
    # the CSV, parsed
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["section", "key", "value", "green", "red"]
    days = {r[1]: (int(r[3]), int(r[4])) for r in rows if r[0] == "day"}
    assert days == {d: (v["green"], v["red"]) for d, v in want["per_day"].items()}
    summary = {r[1]: int(r[2]) for r in rows if r[0] == "summary"}
    assert summary == fig["summary"]
    ward_rows = {(r[0], r[1]): int(r[2]) for r in rows if r[0].startswith("ward:")}
    assert ward_rows[("ward:w1", "locations")] == 3
    w1 = expected_week(api.sessions, ward_id=city["w1"], monday=LAST_MONDAY)
    assert ward_rows[("ward:w1", "scans_week")] == sum(
        v["green"] + v["red"] for v in w1["per_day"].values())
    assert ward_rows[("ward:w1", "locations_scanned_week")] == w1["scanned"] == 2
    # the PDF, its text extracted
    words = pdf_text(pdf)
    assert "Báo cáo tuân thủ hằng tuần" in words and "Quận 1 (q1)" in words
    assert "2021-09-06 – 2021-09-12" in words
    for d, v in want["per_day"].items():
        assert f"{d} {v['green']} {v['red']} {v['green'] + v['red']}" in words, d
    assert f"Lượt quét trong tuần {fig['summary']['scans_week']}" in words
    assert "Phường Bến Nghé" in words
    assert "org-b Công ty ORG-B Đã duyệt 4" in words  # flagged, listed, its status in words
    # made once: asked again, the kept one comes back
    again = api.client.post("/api/v1/reports/weekly", json={"district": "q1", "week": "2021-09-12"},
                            headers=api.admin).get_json()
    assert again["made"] is False and again["report"]["id"] == made["report"]["id"]
    # downloadable, in scope only
    got = api.client.get(made["report"]["pdf"], headers=city["token:chief@q1.example"])
    assert got.status_code == 200 and got.data == pdf
    assert api.client.get(made["report"]["csv"],
                          headers=city["token:chief@q2.example"]).status_code == 404
    assert api.client.get(made["report"]["pdf"],
                          headers=city["token:ward1@q1.example"]).status_code == 404


def test_english_report(api, city):
    body = api.client.post("/api/v1/reports/weekly",
                           json={"ward": "w1", "week": "2021-09-06", "language": "en"},
                           headers=api.admin).get_json()
    with api.sessions() as s:
        pdf = s.get(WeeklyReport, body["report"]["id"]).pdf
    words = pdf_text(pdf)
    assert "Weekly compliance report" in words and "Ward: Phường Bến Nghé (w1)" in words


def pdf_text(data: bytes) -> str:
    import pypdfium2
    doc = pypdfium2.PdfDocument(data)
    try:
        text = "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()
    return " ".join(text.replace("\r", " ").split())


def test_upkeep_makes_last_weeks_reports_once_and_mails_the_officers(api, city, fleet_config,
                                                                     smtp, tmp_path, monkeypatch):
    """`greengate-fleet reports weekly --due`, as the hourly timer runs it: every district
    and ward, e-mailed to the officers with an address, then nothing more."""
    config_file = tmp_path / "fleet.toml"
    config_file.write_text(
        f'[fleet]\ndata_dir = "{fleet_config.data_dir}"\n'
        f'database_url = "{fleet_config.database_url}"\ndeployments = ["test"]\n'
        f'[alerts]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\nsmtp_starttls = false\n'
        f'smtp_from = "reports@fleet.example"\n')
    monkeypatch.setattr(reports.time, "time", lambda: NOW)
    assert cli.main(["--config", str(config_file), "reports", "weekly", "--due"]) == 0
    with api.sessions() as s:
        kept = s.scalars(select(WeeklyReport)).all()
        assert sorted((r.scope, r.scope_id) for r in kept) == sorted(
            [("district", d) for d in s.scalars(select(District.id))]
            + [("ward", w) for w in s.scalars(select(Ward.id))])
        assert {r.week for r in kept} == {"2021-09-06"} and {r.language for r in kept} == {"vi"}
    got = sorted((to[0], m["Subject"]) for to, m in smtp.messages)
    assert got == [
        ("chief@q1.example", "[GreenGate] Báo cáo tuần 2021-09-06: Quận 1 (q1)"),
        ("chief@q2.example", "[GreenGate] Báo cáo tuần 2021-09-06: Quận 2 (q2)"),
        ("ward1@q1.example", "[GreenGate] Báo cáo tuần 2021-09-06: Phường Bến Nghé (w1)"),
        ("ward2@q1.example", "[GreenGate] Báo cáo tuần 2021-09-06: Phường Đa Kao (w2)")]
    mail = next(m for to, m in smtp.messages if to == ["ward1@q1.example"])
    parts = {p.get_filename(): p.get_payload(decode=True) for p in mail.iter_attachments()}
    assert set(parts) == {"greengate-ward-w1-2021-09-06-vi.pdf",
                          "greengate-ward-w1-2021-09-06-vi.csv"}
    assert "Phường Bến Nghé (w1)" in pdf_text(parts["greengate-ward-w1-2021-09-06-vi.pdf"])
    # the next hourly run: nothing made, nothing sent
    assert cli.main(["--config", str(config_file), "reports", "weekly", "--due"]) == 0
    assert len(smtp.messages) == 4
    with api.sessions() as s:
        assert s.scalar(select(func.count()).select_from(WeeklyReport)) == 5


def test_week_argument_is_checked(api, city, fleet_config, tmp_path, capsys):
    assert reports.parse_week("2021-09-12").isoformat() == "2021-09-06"
    with pytest.raises(reports.ReportError):
        reports.parse_week("next week")
    answer = api.client.post("/api/v1/reports/weekly", json={"district": "q1", "week": "12/09/2021"},
                             headers=api.admin)
    assert answer.status_code == 422 and "YYYY-MM-DD" in answer.get_json()["message"]


def test_a_name_outside_the_fast_font_subset_still_prints(api, city):
    """The PDF uses a Latin+Vietnamese subset of the font for speed; a name with other
    letters (Greek here) falls back to the whole font instead of losing them."""
    with api.sessions() as s:
        fig = reports.build(s, reports.WARD, city["w1"], LAST_MONDAY.date(), now=NOW)
    fig["name"] = "Phường Ωμέγα"
    assert "Ward: Phường Ωμέγα (w1)" in pdf_text(reports.render_pdf(fig, "en"))
    fig["name"] = "Phường Bến Nghé"
    assert "Phường Bến Nghé (w1)" in pdf_text(reports.render_pdf(fig, "vi"))


# --- the report's languages ------------------------------------------------------------------
def test_every_report_label_has_its_vietnamese_in_the_catalogue():
    """The report's words are msgids of the dashboard's catalogue: a label with no
    Vietnamese (or only a fuzzy one) would print in English in a Vietnamese report."""
    from babel.messages.pofile import read_po

    from fleet.i18n import SOURCE
    with (SOURCE / "vi" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalogue = read_po(f, locale="vi")
    for key, msgid in reports.LABELS.items():
        entry = catalogue.get(msgid)
        assert entry is not None and entry.string and not entry.fuzzy, (key, msgid)
        if "{" in msgid:  # the placeholders survive the translation
            assert sorted(part.split("}")[0] for part in entry.string.split("{")[1:]) == \
                sorted(part.split("}")[0] for part in msgid.split("{")[1:]), key
    vi, en = reports.texts("vi"), reports.texts("en")
    assert en == reports.LABELS  # English is the msgids themselves
    assert vi["title"] == "Báo cáo tuân thủ hằng tuần" and vi["green"] == "Xanh"
    with pytest.raises(reports.ReportError):
        reports.texts("fr")


@pytest.mark.parametrize("language", ["vi", "en"])
def test_the_pdf_and_the_mail_speak_the_language_asked(api, city, smtp, language):
    t = reports.texts(language)
    other = reports.texts("en" if language == "vi" else "vi")
    config = SimpleNamespace(alerts=SimpleNamespace(
        smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_timeout=10.0, smtp_starttls=False,
        smtp_user="", smtp_password="", smtp_from="reports@fleet.example"))
    with api.sessions() as s:
        report, made = reports.make(s, reports.DISTRICT, city["q1"], LAST_MONDAY.date(),
                                    language=language, now=NOW)
        assert reports.send(config, s, report, now=NOW) == ["chief@q1.example"]
        s.commit()
        pdf = report.pdf
    assert made
    (to, mail), = smtp.messages
    assert mail["Subject"] == t["subject"].format(week="2021-09-06", scope="Quận 1 (q1)")
    assert mail.get_body().get_content().strip() == t["body"].format(week="2021-09-06",
                                                                     scope="Quận 1 (q1)")
    words = pdf_text(pdf)
    for key in ("title", "summary", "per_day", "per_ward", "flagged", "silent",
                "locations_scanned_week", "scans_week", "online_no_scan", "no_scan_7d"):
        assert t[key] in words, key
        assert other[key] not in words, key
    # the table headings, in order, in one line of text each
    assert f"{t['day']} {t['green']} {t['red']} {t['total']}" in words
    assert f"{t['code']} {t['name']} {t['status']} {t['reminders']}" in words
    # the district's locations in no ward: the ward table's last row
    assert t["no_ward"] in words


# --- speed: figures read once per district, PDFs in a pool ------------------------------
def test_figures_read_once_per_district_are_what_each_report_reads_alone(api, city):
    """make_all cuts a ward's figures out of its district's (reports.Gather); here every
    report of the week against the figures build() reads for it alone, with a data slip
    (a location of q2 filed under q1's ward w2) that the cut must not get wrong."""
    with api.sessions() as s:
        slip = compliance.Location(code="l8", name="Cổng l8", district_id=city["q2"],
                                   ward_id=city["w2"])
        s.add(slip)
        s.commit()
    week = LAST_MONDAY.date()
    with api.sessions() as s:
        gather = reports.Gather(s, week, now=NOW)
        assert gather.slipped() == {city["w2"]}
        alone = {}
        for scope, ids in ((reports.DISTRICT, ("q1", "q2")), (reports.WARD, ("w1", "w2", "w3"))):
            for code in ids:
                alone[scope, code] = reports.build(s, scope, city[code], week, now=NOW)
                shared = reports.build(s, scope, city[code], week, now=NOW, gather=gather)
                assert shared == alone[scope, code], (scope, code)
        # the cut path was taken for w1 and w3, the direct one for w2
        assert gather._figures.keys() == {city["q1"], city["q2"]}
        # the cut has something to cut: w1 has silent places and a flagged organisation
        assert alone[reports.WARD, "w1"]["silent"]
        assert [x["code"] for x in alone[reports.WARD, "w1"]["flagged"]] == ["org-b"]
        assert alone[reports.WARD, "w2"]["summary"]["locations"] == 3  # l3, l4 and the slip
    with api.sessions() as s:
        config = SimpleNamespace(reports=SimpleNamespace(language="vi", font=reports.FONT,
                                                         workers=1),
                                 web=SimpleNamespace(silent_hours=2.0))
        done = reports.make_all(config, s, week, now=NOW)
        assert {(r.scope, r.figures["code"]): r.figures for r, made, _ in done if made} \
            == {(scope, code): fig for (scope, code), fig in alone.items()}


def test_pdfs_made_in_a_pool_are_the_pdfs_made_here(api, city, monkeypatch):
    monkeypatch.setattr(reports, "POOL_FROM", 4)  # a pool for a few, to keep the test short
    with api.sessions() as s:
        fig = reports.build(s, reports.WARD, city["w1"], LAST_MONDAY.date(), now=NOW)
    t = reports.texts("vi")
    jobs = []
    for i in range(reports.POOL_FROM):
        f = json.loads(json.dumps(fig))
        f["name"] = f"Phường số {i}"
        jobs.append((f, t, reports._pick_font(f, t, reports.FONT)))
    here = reports.render_many(jobs, workers=1)
    pooled = reports.render_many(jobs, workers=2)
    assert len(pooled) == len(here) == len(jobs)
    for i, (a, b) in enumerate(zip(here, pooled)):
        assert pdf_text(a) == pdf_text(b)
        assert f"Phường/xã: Phường số {i} (w1)" in pdf_text(b)  # in the order given


def test_long_names_are_cut_and_long_tables_go_on_with_their_heading(api, city):
    with api.sessions() as s:
        fig = reports.build(s, reports.WARD, city["w1"], LAST_MONDAY.date(), now=NOW)
    long_name = ("Công ty trách nhiệm hữu hạn một thành viên "
                 "sản xuất thương mại dịch vụ ") * 3
    fig["flagged"] = [{"code": f"org-{i:03d}", "name": f"Doanh nghiệp {i}", "status": "approved",
                       "reminders": 4 + i % 3, "ward": "w1"} for i in range(120)]
    fig["flagged"][0]["name"] = long_name
    t = reports.texts("vi")
    import pypdfium2
    data = reports.render_pdf(fig, "vi")
    doc = pypdfium2.PdfDocument(data)
    try:
        pages = [" ".join(doc[i].get_textpage().get_text_range().split())
                 for i in range(len(doc))]
    finally:
        doc.close()
    words = " ".join(pages)
    heading = f"{t['code']} {t['name']} {t['status']} {t['reminders']}"
    holding = [p for p in pages if "org-0" in p]
    assert len(holding) >= 2  # 120 rows do not fit one page
    assert all(heading in p for p in holding)  # the heading again on each
    for i in range(120):
        assert f"org-{i:03d} " in words, i
    cut = words.split("org-000 ", 1)[1].split(f" {t['status_approved']}", 1)[0]
    assert cut.endswith("…") and long_name.startswith(cut[:-1].rstrip())
    assert len(cut) < len(long_name.strip()) / 2

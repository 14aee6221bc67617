"""Weekly compliance reports (docs/reports.md): per district and per ward, the week
Monday-Sunday in Vietnam time (UTC+7), its figures (fleet/compliance.py) and decisions
per day, as a PDF (tables and a bar chart, fpdf2 with a Vietnamese-capable TTF) and a
CSV; kept in weekly_report (the figures JSON beside them), made once per scope, week and
language unless forced; e-mailed to the officers of that scope when SMTP is configured.

    greengate-fleet reports weekly [--week YYYY-MM-DD] [--district CODE] [--ward CODE]
                                   [--language vi|en] [--force] [--send] [--due]

--due (the hourly upkeep): last week's reports of every district and ward, made only if
missing and sent only if not sent yet, so every hour after Monday 00:00 it is a no-op.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select

from . import audit, compliance
from .models import (DISTRICT_OFFICER, ORG_STATUSES, WARD_OFFICER, District, Location, User,
                     Ward, WeeklyReport)

log = logging.getLogger(__name__)

DISTRICT, WARD = "district", "ward"
LANGUAGES = ("vi", "en")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

TEXT = {
    "vi": {
        "title": "Báo cáo tuân thủ hằng tuần", "district": "Quận/huyện", "ward": "Phường/xã",
        "week": "Tuần", "made": "Lập lúc", "summary": "Tổng hợp", "figure": "Chỉ số",
        "value": "Giá trị", "per_day": "Lượt quét theo ngày", "day": "Ngày",
        "green": "Xanh", "red": "Đỏ", "total": "Tổng", "per_ward": "Theo phường/xã",
        "flagged": "Cơ sở bị nhắc nhở quá 3 lần (đề nghị tạm dừng)",
        "silent": "Điểm kiểm soát im lặng", "code": "Mã", "name": "Tên",
        "reminders": "Lần nhắc", "why": "Lý do", "none": "Không có", "status": "Trạng thái",
        "no_ward": "(chưa thuộc phường)",
        "organisations_total": "Tổ chức", "org_applied": "Tổ chức: đã đăng ký",
        "org_approved": "Tổ chức: đã duyệt", "org_suspended": "Tổ chức: tạm dừng",
        "org_closed": "Tổ chức: đóng cửa", "locations": "Điểm kiểm soát",
        "locations_online": "Điểm có kiosk trực tuyến",
        "locations_scanned_week": "Điểm có lượt quét trong tuần",
        "locations_silent": "Điểm im lặng", "reminders_total": "Lần nhắc nhở",
        "organisations_flagged": "Tổ chức đề nghị tạm dừng",
        "scans_week": "Lượt quét trong tuần", "no_scan_7d": "không quét 7 ngày",
        "online_no_scan": "trực tuyến nhưng không quét",
        "subject": "[GreenGate] Báo cáo tuần {week}: {scope}",
        "body": "Báo cáo tuân thủ tuần {week} của {scope} đính kèm (PDF và CSV).",
    },
    "en": {
        "title": "Weekly compliance report", "district": "District", "ward": "Ward",
        "week": "Week", "made": "Made", "summary": "Summary", "figure": "Figure",
        "value": "Value", "per_day": "Scans per day", "day": "Day", "green": "Green",
        "red": "Red", "total": "Total", "per_ward": "Per ward",
        "flagged": "Organisations reminded more than 3 times (for a stop)",
        "silent": "Silent control points", "code": "Code", "name": "Name",
        "reminders": "Reminders", "why": "Why", "none": "None", "status": "Status",
        "no_ward": "(in no ward)",
        "organisations_total": "Organisations", "org_applied": "Organisations: applied",
        "org_approved": "Organisations: approved", "org_suspended": "Organisations: suspended",
        "org_closed": "Organisations: closed", "locations": "Control points",
        "locations_online": "Control points with an online kiosk",
        "locations_scanned_week": "Control points that scanned this week",
        "locations_silent": "Silent control points", "reminders_total": "Reminders given",
        "organisations_flagged": "Organisations flagged for a stop",
        "scans_week": "Scans this week", "no_scan_7d": "no scan in 7 days",
        "online_no_scan": "online but not scanning",
        "subject": "[GreenGate] Weekly report {week}: {scope}",
        "body": "The compliance report of {scope} for the week of {week} is attached "
                "(PDF and CSV).",
    },
}

SUMMARY_KEYS = ("organisations_total", "org_applied", "org_approved", "org_suspended",
                "org_closed", "locations", "locations_online", "locations_scanned_week",
                "locations_silent", "reminders_total", "organisations_flagged", "scans_week")


class ReportError(ValueError):
    pass


# --- weeks -----------------------------------------------------------------------------
def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def parse_week(text: str) -> date:
    """YYYY-MM-DD (any day of the week) -> its Monday; else ReportError."""
    try:
        return monday(date.fromisoformat(text.strip()))
    except (ValueError, AttributeError):
        raise ReportError(f"week {text!r} is not a date: give YYYY-MM-DD (any day of the "
                          "week; the report covers Monday to Sunday)") from None


def last_week(now: float) -> date:
    """The Monday of the last full week (Vietnam time) before `now`."""
    today = datetime.fromtimestamp(now + compliance.VN_OFFSET, timezone.utc).date()
    return monday(today) - timedelta(days=7)


def week_bounds(week: date) -> tuple[float, float]:
    start = datetime(week.year, week.month, week.day, tzinfo=timezone.utc).timestamp() \
        - compliance.VN_OFFSET
    return start, start + 7 * compliance.DAY


# --- the figures ------------------------------------------------------------------------
def build(session, scope: str, scope_id: int, week: date, *, now: float | None = None,
          silent_hours: float = 2.0, scans: dict | None = None) -> dict:
    """The report's figures (JSON-ready). `scans`: week_scans of the district, when the
    caller makes many reports of one district (computed here otherwise)."""
    now = time.time() if now is None else now
    start, end = week_bounds(week)
    # the state as at the end of the week (or now, for the running week); kiosks' online
    # state has no history: it is the state when the report is made
    at = min(now, end - 1)
    if scope == DISTRICT:
        district = session.get(District, scope_id)
        if district is None:
            raise ReportError(f"no district with id {scope_id}")
        fig = compliance.figures(session, district_id=scope_id, now=at, silent_hours=silent_hours)
        district_id, head = scope_id, {"code": district.code, "name": district.name}
        locations = None
    else:
        ward = session.get(Ward, scope_id)
        if ward is None:
            raise ReportError(f"no ward with id {scope_id}")
        fig = compliance.figures(session, ward_id=scope_id, now=at, silent_hours=silent_hours)
        district_id, head = ward.district_id, {"code": ward.code, "name": ward.name}
        locations = set(session.scalars(select(Location.id).where(Location.ward_id == scope_id)))
    if scans is None:
        scans = compliance.week_scans(session, district_id=district_id, start=start, end=end)
    first_day = int((start + compliance.VN_OFFSET) // compliance.DAY)
    days = {first_day + i: {"green": 0, "red": 0} for i in range(7)}
    scanned_locations = set()
    loc_ward = dict(session.execute(select(Location.id, Location.ward_id)
                                    .where(Location.district_id == district_id)).all())
    ward_scans: dict = {}
    for (lid, day, decision), n in scans.items():
        if locations is not None and lid not in locations:
            continue
        if day in days and decision in ("green", "red"):
            days[day][decision] += n
        if n and lid is not None:
            scanned_locations.add(lid)
            wid = loc_ward.get(lid)
            ward_scans[wid] = ward_scans.get(wid, 0) + n
    rows = fig.wards
    total = fig.district if scope == DISTRICT else (fig.wards[0] if fig.wards else None)
    total_d = total.as_dict() if total else {}
    wards = []
    for r in rows:
        d = r.as_dict()
        d["locations_scanned_week"] = len({lid for lid in scanned_locations
                                           if loc_ward.get(lid) == r.id})
        d["scans_week"] = ward_scans.get(r.id, 0)
        wards.append(d)
    per_day = [{"day": compliance.day_label(d), "green": v["green"], "red": v["red"]}
               for d, v in sorted(days.items())]
    summary = {
        "organisations_total": total_d.get("organisations_total", 0),
        **{f"org_{s}": total_d.get("organisations", {}).get(s, 0) for s in ORG_STATUSES},
        "locations": total_d.get("locations", 0),
        "locations_online": total_d.get("locations_online", 0),
        "locations_scanned_week": len(scanned_locations),
        "locations_silent": total_d.get("locations_silent", 0),
        "reminders_total": total_d.get("reminders", 0),
        "organisations_flagged": total_d.get("organisations_flagged", 0),
        "scans_week": sum(v["green"] + v["red"] for v in days.values()),
    }
    return {"scope": scope, "code": head["code"], "name": head["name"],
            "week": week.isoformat(), "week_end": (week + timedelta(days=6)).isoformat(),
            "made_at": now, "summary": summary, "per_day": per_day,
            "wards": wards if scope == DISTRICT else [],
            "flagged": fig.flagged, "silent": fig.silent}


# --- CSV and PDF --------------------------------------------------------------------------
def render_csv(fig: dict, language: str = "vi") -> str:
    """section,key,...: one table after another, each row labelled, so one csv reader
    reads it all (docs/reports.md#csv)."""
    t = TEXT[language]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "key", "value", "green", "red"])
    w.writerow(["report", "scope", fig["scope"], "", ""])
    w.writerow(["report", "code", fig["code"], "", ""])
    w.writerow(["report", "name", fig["name"], "", ""])
    w.writerow(["report", "week", fig["week"], "", ""])
    for key in SUMMARY_KEYS:
        w.writerow(["summary", key, fig["summary"][key], "", ""])
    for d in fig["per_day"]:
        w.writerow(["day", d["day"], d["green"] + d["red"], d["green"], d["red"]])
    for r in fig["wards"]:
        for key in ("organisations_total", "locations", "locations_online",
                    "locations_scanned_week", "locations_silent", "reminders",
                    "organisations_flagged", "scans_week"):
            w.writerow([f"ward:{r['code'] or t['no_ward']}", key, r[key], "", ""])
    for f in fig["flagged"]:
        w.writerow(["flagged", f["code"], f["reminders"], "", ""])
    for s in fig["silent"]:
        w.writerow(["silent", s["code"], s["why"], "", ""])
    return out.getvalue()


def _clean(text) -> str:
    import unicodedata
    return unicodedata.normalize("NFC", str(text))


# Loading the whole DejaVu Sans is half of a report's time (fpdf2 parses every glyph);
# a subset with Latin, Vietnamese and punctuation is parsed in half the time. It is made
# once per font file (cached in the temporary directory) and used only when it holds
# every character of the report; otherwise the full font.
SUBSET_RANGES = ((0x20, 0x250), (0x300, 0x370), (0x1EA0, 0x1F00), (0x2000, 0x2070),
                 (0x20AB, 0x20AC), (0x2190, 0x2194), (0x2212, 0x2213))
_subsets: dict = {}


def _subset_font(font: str) -> tuple[str, set] | None:
    import hashlib
    import os
    import tempfile
    try:
        st = os.stat(font)
        key = hashlib.sha256(f"{font}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        if key in _subsets:
            return _subsets[key]
        from fontTools import subset
        from fontTools.ttLib import TTFont
        path = Path(tempfile.gettempdir()) / f"greengate-report-font-{key}.ttf"
        if not path.exists():
            options = subset.Options()
            options.layout_features, options.name_IDs = ["*"], ["*"]
            logging.getLogger("fontTools").setLevel(logging.ERROR)
            ttf = TTFont(font)
            subsetter = subset.Subsetter(options)
            subsetter.populate(unicodes=[c for a, b in SUBSET_RANGES for c in range(a, b)])
            subsetter.subset(ttf)
            part = path.with_suffix(f".{os.getpid()}.part")
            ttf.save(part)
            part.replace(path)  # several processes may make it at once: each its own file
        with TTFont(path, lazy=True) as ttf:
            _subsets[key] = (str(path), set(ttf.getBestCmap()))
        return _subsets[key]
    except Exception:  # noqa: BLE001 - any trouble: the full font, slower but right
        log.warning("no font subset for %s; the reports use the full font", font, exc_info=True)
        return None


def render_pdf(fig: dict, language: str = "vi", font: str = FONT) -> bytes:
    import json
    import unicodedata

    from fpdf import FPDF
    from fpdf.fonts import FontFace

    t = TEXT[language]
    if not Path(font).is_file():
        raise ReportError(f"font {font} not found: install the Debian package "
                          "fonts-dejavu-core (scripts/setup.sh does) or set [reports] font")
    subset = _subset_font(font)
    if subset is not None:
        text = unicodedata.normalize("NFC", json.dumps([fig, t], ensure_ascii=False))
        if all(ord(c) in subset[1] for c in text if c >= " "):
            font = subset[0]
    pdf = FPDF(unit="mm", format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_font("r", fname=font)
    pdf.add_page()
    pdf.set_font("r", size=16)
    pdf.cell(0, 9, _clean(t["title"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("r", size=11)
    scope_label = t["district"] if fig["scope"] == DISTRICT else t["ward"]
    for line in (f"{scope_label}: {fig['name']} ({fig['code']})",
                 f"{t['week']}: {fig['week']} – {fig['week_end']}",
                 f"{t['made']}: {compliance.vn_day(fig['made_at'])} "
                 f"{time.strftime('%H:%M', time.gmtime(fig['made_at'] + compliance.VN_OFFSET))}"
                 " (UTC+7)"):
        pdf.cell(0, 6, _clean(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)

    def table(title, header, rows, widths):
        pdf.set_font("r", size=12)
        pdf.cell(0, 8, _clean(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("r", size=9)
        # one font file (no bold face needed): headings shaded instead
        with pdf.table(col_widths=widths, text_align="LEFT", line_height=5,
                       headings_style=FontFace(emphasis=None, fill_color=(225, 232, 225))) as tbl:
            for row in [header] + rows:
                r = tbl.row()
                for cell in row:
                    r.cell(_clean(cell))
        pdf.ln(3)

    table(t["summary"], [t["figure"], t["value"]],
          [[t[k], str(fig["summary"][k])] for k in SUMMARY_KEYS], (3, 1))
    table(t["per_day"], [t["day"], t["green"], t["red"], t["total"]],
          [[d["day"], str(d["green"]), str(d["red"]), str(d["green"] + d["red"])]
           for d in fig["per_day"]], (2, 1, 1, 1))
    _chart(pdf, fig["per_day"], t)
    if fig["wards"]:
        table(t["per_ward"], [t["ward"], t["organisations_total"], t["locations"],
                              t["locations_online"], t["locations_scanned_week"],
                              t["locations_silent"], t["reminders"], t["organisations_flagged"],
                              t["scans_week"]],
              [[r["name"] or t["no_ward"], *(str(r[k]) for k in (
                  "organisations_total", "locations", "locations_online",
                  "locations_scanned_week", "locations_silent", "reminders",
                  "organisations_flagged", "scans_week"))] for r in fig["wards"]],
              (3, 1, 1, 1, 1, 1, 1, 1, 1))
    table(t["flagged"], [t["code"], t["name"], t["status"], t["reminders"]],
          [[f["code"], f["name"], f["status"], str(f["reminders"])] for f in fig["flagged"]]
          or [[t["none"], "", "", ""]], (1, 3, 1, 1))
    table(t["silent"], [t["code"], t["name"], t["why"]],
          [[s["code"], s["name"], t.get(s["why"], s["why"])] for s in fig["silent"]]
          or [[t["none"], "", ""]], (1, 3, 2))
    return bytes(pdf.output())


def _chart(pdf, per_day, t) -> None:
    """Green and red bars per day, drawn with fpdf2's rectangles (no image to embed)."""
    height, left = 40.0, pdf.l_margin + 10
    width = pdf.w - pdf.r_margin - left
    top = pdf.get_y() + 2
    if top + height + 14 > pdf.h - pdf.b_margin:
        pdf.add_page()
        top = pdf.get_y() + 2
    peak = max([max(d["green"], d["red"]) for d in per_day] + [1])
    slot = width / len(per_day)
    bar = slot * 0.35
    pdf.set_draw_color(120)
    pdf.line(left, top + height, left + width, top + height)
    pdf.set_font("r", size=7)
    pdf.set_xy(pdf.l_margin, top - 1)
    pdf.cell(10, 3, str(peak))
    for i, d in enumerate(per_day):
        x = left + i * slot + slot * 0.15
        for j, (key, rgb) in enumerate((("green", (46, 139, 87)), ("red", (200, 40, 40)))):
            h = height * d[key] / peak
            if h > 0:
                pdf.set_fill_color(*rgb)
                pdf.rect(x + j * bar, top + height - h, bar, h, style="F")
        pdf.set_xy(left + i * slot, top + height + 1)
        pdf.cell(slot, 4, d["day"][5:], align="C")
    pdf.set_xy(pdf.l_margin, top + height + 6)
    pdf.set_fill_color(46, 139, 87)
    pdf.rect(left, pdf.get_y() + 1, 3, 3, style="F")
    pdf.set_x(left + 4)
    pdf.cell(20, 5, _clean(t["green"]))
    pdf.set_fill_color(200, 40, 40)
    pdf.rect(left + 25, pdf.get_y() + 1, 3, 3, style="F")
    pdf.set_x(left + 29)
    pdf.cell(20, 5, _clean(t["red"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.ln(3)


# --- made and kept -------------------------------------------------------------------------
def make(session, scope: str, scope_id: int, week: date, *, language: str = "vi",
         force: bool = False, now: float | None = None, silent_hours: float = 2.0,
         font: str = FONT, actor: str = "system", scans: dict | None = None) -> tuple[WeeklyReport, bool]:
    """The report of (scope, week, language): the kept one, or made now (force: made again).
    Returns (report, made). The caller commits."""
    if scope not in (DISTRICT, WARD):
        raise ReportError(f"scope {scope!r}: district or ward")
    if language not in LANGUAGES:
        raise ReportError(f"language {language!r}: vi or en")
    kept = session.scalar(select(WeeklyReport).where(
        WeeklyReport.scope == scope, WeeklyReport.scope_id == scope_id,
        WeeklyReport.week == week.isoformat(), WeeklyReport.language == language))
    if kept is not None and not force:
        return kept, False
    now = time.time() if now is None else now
    fig = build(session, scope, scope_id, week, now=now, silent_hours=silent_hours, scans=scans)
    pdf, text = render_pdf(fig, language, font), render_csv(fig, language)
    if kept is None:
        kept = WeeklyReport(scope=scope, scope_id=scope_id, week=week.isoformat(),
                            language=language)
        session.add(kept)
    kept.made_at, kept.figures, kept.pdf, kept.csv, kept.emailed_at = now, fig, pdf, text, None
    session.flush()
    audit.record(session, actor, "report.make", f"{scope}:{fig['code']}:{week.isoformat()}",
                 language=language, forced=force)
    return kept, True


def file_name(report: WeeklyReport, ext: str) -> str:
    code = (report.figures or {}).get("code", str(report.scope_id))
    return f"greengate-{report.scope}-{code}-{report.week}-{report.language}.{ext}"


# --- e-mail ---------------------------------------------------------------------------------
def recipients(session, report: WeeklyReport) -> list[str]:
    """The officers of the report's scope with an address: users with the role and the
    district/ward, not disabled, whose username is an e-mail address (docs/reports.md)."""
    if report.scope == DISTRICT:
        where = (User.role == DISTRICT_OFFICER, User.district_id == report.scope_id)
    else:
        where = (User.role == WARD_OFFICER, User.ward_id == report.scope_id)
    names = session.scalars(select(User.username).where(*where, User.disabled.is_(False))
                            .order_by(User.username))
    return [n for n in names if _is_address(n)]


def _is_address(text: str) -> bool:
    local, at, domain = text.partition("@")
    return bool(at and local and "." in domain and " " not in text and len(text) <= 254)


def send(config, session, report: WeeklyReport, *, now: float | None = None) -> list[str]:
    """E-mail the report to its officers (one message each); returns whom it reached.
    Nothing when [alerts] smtp_host is empty or nobody has an address. A refused address
    is logged and skipped: the others still get theirs."""
    import smtplib
    import ssl

    a = config.alerts
    if not a.smtp_host:
        return []
    t = TEXT[report.language]
    scope = f"{(report.figures or {}).get('name', '')} ({(report.figures or {}).get('code', '')})"
    sent = []
    for address in recipients(session, report):
        message = EmailMessage()
        message["Subject"] = t["subject"].format(week=report.week, scope=scope)
        message["From"], message["To"] = a.smtp_from, address
        message.set_content(t["body"].format(week=report.week, scope=scope))
        message.add_attachment(report.pdf, maintype="application", subtype="pdf",
                               filename=file_name(report, "pdf"))
        message.add_attachment(report.csv.encode("utf-8"), maintype="text", subtype="csv",
                               filename=file_name(report, "csv"))
        try:
            with smtplib.SMTP(a.smtp_host, a.smtp_port, timeout=a.smtp_timeout) as smtp:
                if a.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if a.smtp_user:
                    smtp.login(a.smtp_user, a.smtp_password)
                smtp.send_message(message, a.smtp_from, [address])
        except (smtplib.SMTPException, OSError) as exc:
            log.warning("weekly report %s to %s: %s", file_name(report, "pdf"), address, exc)
            continue
        sent.append(address)
    if sent:
        report.emailed_at = time.time() if now is None else now
        audit.record(session, "system", "report.email", file_name(report, "pdf"), to=sent)
    return sent


# --- all of them ----------------------------------------------------------------------------
def make_all(config, session, week: date, *, districts=None, wards=None, force=False,
             language=None, now=None, do_send=False, actor="system") -> list[tuple]:
    """Reports of every district and ward (or those given), each district's scans read
    once. Returns [(report, made, sent)]."""
    language = language or config.reports.language
    start, end = week_bounds(week)
    if districts is None and wards is None:
        districts = list(session.scalars(select(District).order_by(District.code)))
        wards = list(session.scalars(select(Ward).order_by(Ward.code)))
    districts, wards = list(districts or []), list(wards or [])
    scans_of: dict = {}

    def scans(district_id):
        if district_id not in scans_of:
            scans_of[district_id] = compliance.week_scans(session, district_id=district_id,
                                                          start=start, end=end)
        return scans_of[district_id]

    out = []
    for scope, items in ((DISTRICT, districts), (WARD, wards)):
        for item in items:
            did = item.id if scope == DISTRICT else item.district_id
            report, made = make(session, scope, item.id, week, language=language, force=force,
                                now=now, silent_hours=config.web.silent_hours,
                                font=config.reports.font, actor=actor, scans=scans(did))
            sent = send(config, session, report, now=now) \
                if do_send and (made or report.emailed_at is None) else []
            session.commit()
            out.append((report, made, sent))
    return out


def run(config, args) -> int:
    """greengate-fleet reports weekly ..."""
    from .db import make_engine, make_sessions

    try:
        week = parse_week(args.week) if args.week else last_week(time.time())
    except ReportError as exc:
        print(f"greengate-fleet: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(config.database_url)
    try:
        with make_sessions(engine)() as session:
            districts = wards = None
            if args.district or args.ward:
                districts, wards = [], []
                if args.district:
                    d = session.scalar(select(District).where(District.code == args.district))
                    if d is None:
                        print(f"greengate-fleet: no district {args.district!r}", file=sys.stderr)
                        return 2
                    districts.append(d)
                if args.ward:
                    w = session.scalar(select(Ward).where(Ward.code == args.ward))
                    if w is None:
                        print(f"greengate-fleet: no ward {args.ward!r}", file=sys.stderr)
                        return 2
                    wards.append(w)
            try:
                done = make_all(config, session, week, districts=districts, wards=wards,
                                force=args.force and not args.due, language=args.language,
                                do_send=args.send or args.due, actor="cli")
            except ReportError as exc:
                print(f"greengate-fleet: {exc}", file=sys.stderr)
                return 2
    finally:
        engine.dispose()
    made = sum(1 for _, m, _ in done if m)
    mailed = sum(len(s) for _, _, s in done)
    print(f"week {week.isoformat()}: {len(done)} report(s), {made} made now, "
          f"{mailed} e-mail(s) sent")
    return 0

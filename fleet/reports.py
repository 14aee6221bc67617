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

from sqlalchemy import or_, select

from . import audit, compliance
from .models import (DISTRICT_OFFICER, ORG_STATUSES, WARD_OFFICER, District, Location,
                     Organisation, User, Ward, WeeklyReport)

log = logging.getLogger(__name__)

DISTRICT, WARD = "district", "ward"
LANGUAGES = ("vi", "en")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

def N_(message: str) -> str:
    """Marks a msgid for `pybabel extract` (a default keyword); translated when used."""
    return message


# The report's words: English msgids, the Vietnamese in the dashboard's catalogue
# (fleet/translations/vi/LC_MESSAGES/messages.po), so one file holds every translation.
LABELS = {
    "title": N_("Weekly compliance report"), "district": N_("District"), "ward": N_("Ward"),
    "week": N_("Week"), "made": N_("Made"), "summary": N_("Summary"), "figure": N_("Figure"),
    "value": N_("Value"), "per_day": N_("Scans per day"), "day": N_("Day"),
    "green": N_("Green"), "red": N_("Red"), "total": N_("Total"), "per_ward": N_("Per ward"),
    "flagged": N_("Organisations reminded more than 3 times (for a stop)"),
    "silent": N_("Silent control points"), "code": N_("Code"), "name": N_("Name"),
    "reminders": N_("Reminders"), "why": N_("Why"), "none": N_("None"), "status": N_("Status"),
    "no_ward": N_("(in no ward)"),
    "organisations_total": N_("Organisations"), "org_applied": N_("Organisations: applied"),
    "org_approved": N_("Organisations: approved"),
    "org_suspended": N_("Organisations: suspended"), "org_closed": N_("Organisations: closed"),
    "locations": N_("Control points"),
    "locations_online": N_("Control points with an online kiosk"),
    "locations_scanned_week": N_("Control points that scanned this week"),
    "locations_silent": N_("Silent control points"), "reminders_total": N_("Reminders given"),
    "organisations_flagged": N_("Organisations flagged for a stop"),
    "scans_week": N_("Scans this week"), "no_scan_7d": N_("no scan in 7 days"),
    "online_no_scan": N_("online but not scanning"),
    "subject": N_("[GreenGate] Weekly report {week}: {scope}"),
    "body": N_("The compliance report of {scope} for the week of {week} is attached "
               "(PDF and CSV)."),
    # the organisation page's status names (fleet/web/organisation_views.py STATUS_NAMES)
    "status_applied": N_("Applied"), "status_approved": N_("Approved"),
    "status_suspended": N_("Suspended"), "status_closed": N_("Closed"),
}

_catalogues: dict = {}


def translations(language: str):
    """gettext translations of `language` from the dashboard's .po, outside any request
    (the upkeep runs without an app): compiled in memory, cached until the .po changes.
    English is the msgids themselves."""
    import gettext

    if language == "en":
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import Translations

    from .i18n import SOURCE
    po = SOURCE / language / "LC_MESSAGES" / "messages.po"
    key = (language, po.stat().st_mtime_ns)
    if key not in _catalogues:
        with po.open("rb") as f:
            catalogue = read_po(f, locale=language)
        mo = io.BytesIO()
        write_mo(mo, catalogue)  # fuzzy entries left out, as the dashboard does
        mo.seek(0)
        _catalogues.clear()
        _catalogues[key] = Translations(mo)
    return _catalogues[key]


def texts(language: str) -> dict:
    """{label key: the words in `language`}."""
    if language not in LANGUAGES:
        raise ReportError(f"language {language!r}: vi or en")
    gettext = translations(language).gettext
    return {k: gettext(v) for k, v in LABELS.items()}


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
class Gather:
    """What the reports of one week share, read once per district: its scans of the week
    (one GROUP BY), where its locations stand, and its compliance figures, from which its
    wards' figures are cut (a ward's row, silent places and flagged organisations) instead
    of asking the database again for each ward. A ward with a location or an organisation
    filed under another district (a data slip) is asked on its own, as compliance.figures
    does it, so the cut never differs from the direct answer."""

    def __init__(self, session, week: date, *, now: float, silent_hours: float = 2.0):
        self.session, self.week, self.now, self.silent_hours = session, week, now, silent_hours
        self.start, self.end = week_bounds(week)
        # the state as at the end of the week (or now, for the running week); kiosks'
        # online state has no history: it is the state when the report is made
        self.at = min(now, self.end - 1)
        self._scans: dict = {}
        self._loc_ward: dict = {}
        self._figures: dict = {}
        self._slipped: set | None = None

    def scans(self, district_id: int) -> dict:
        if district_id not in self._scans:
            self._scans[district_id] = compliance.week_scans(
                self.session, district_id=district_id, start=self.start, end=self.end)
        return self._scans[district_id]

    def loc_ward(self, district_id: int) -> dict:
        if district_id not in self._loc_ward:
            self._loc_ward[district_id] = dict(self.session.execute(
                select(Location.id, Location.ward_id)
                .where(Location.district_id == district_id)).all())
        return self._loc_ward[district_id]

    def district_figures(self, district_id: int) -> compliance.Figures:
        if district_id not in self._figures:
            self._figures[district_id] = compliance.figures(
                self.session, district_id=district_id, now=self.at,
                silent_hours=self.silent_hours)
        return self._figures[district_id]

    def slipped(self) -> set:
        """Wards holding a location or an organisation of another district (or of none)."""
        if self._slipped is None:
            self._slipped = set()
            for model in (Location, Organisation):
                self._slipped.update(self.session.scalars(
                    select(model.ward_id).distinct().join(Ward, Ward.id == model.ward_id)
                    .where(or_(model.district_id.is_(None),
                               model.district_id != Ward.district_id))))
        return self._slipped

    def ward_figures(self, ward: Ward) -> compliance.Figures:
        if ward.id in self.slipped():
            return compliance.figures(self.session, ward_id=ward.id, now=self.at,
                                      silent_hours=self.silent_hours)
        whole = self.district_figures(ward.district_id)
        rows = [r for r in whole.wards if r.kind == "ward" and r.id == ward.id]
        return compliance.Figures(
            at=whole.at, district=None, wards=rows,
            silent=[x for x in whole.silent if x["ward"] == ward.code],
            flagged=[x for x in whole.flagged if x["ward"] == ward.code])


def build(session, scope: str, scope_id: int, week: date, *, now: float | None = None,
          silent_hours: float = 2.0, scans: dict | None = None,
          gather: Gather | None = None) -> dict:
    """The report's figures (JSON-ready). `gather`: what the reports of the week share,
    when the caller makes many (make_all); `scans`: week_scans of the district."""
    now = time.time() if now is None else now
    if gather is None:
        gather = Gather(session, week, now=now, silent_hours=silent_hours)
    if scope == DISTRICT:
        district = session.get(District, scope_id)
        if district is None:
            raise ReportError(f"no district with id {scope_id}")
        fig = gather.district_figures(scope_id)
        district_id, head = scope_id, {"code": district.code, "name": district.name}
        locations = None
    else:
        ward = session.get(Ward, scope_id)
        if ward is None:
            raise ReportError(f"no ward with id {scope_id}")
        fig = gather.ward_figures(ward)
        district_id, head = ward.district_id, {"code": ward.code, "name": ward.name}
        locations = set(session.scalars(select(Location.id).where(Location.ward_id == scope_id)))
    if scans is None:
        scans = gather.scans(district_id)
    start = gather.start
    first_day = int((start + compliance.VN_OFFSET) // compliance.DAY)
    days = {first_day + i: {"green": 0, "red": 0} for i in range(7)}
    scanned_locations = set()
    loc_ward = gather.loc_ward(district_id)
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
    if scope == DISTRICT:
        scanned_of: dict = {}
        for lid in scanned_locations:
            wid = loc_ward.get(lid)
            scanned_of[wid] = scanned_of.get(wid, 0) + 1
        for r in rows:
            d = r.as_dict()
            d["locations_scanned_week"] = scanned_of.get(r.id, 0)
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
            "wards": wards, "flagged": fig.flagged, "silent": fig.silent}


# --- CSV and PDF --------------------------------------------------------------------------
def render_csv(fig: dict, language: str = "vi") -> str:
    """section,key,...: one table after another, each row labelled, so one csv reader
    reads it all (docs/reports.md#csv)."""
    t = texts(language)
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
    return _render_pdf(fig, texts(language), font)


def _pick_font(fig: dict, t: dict, font: str) -> str:
    import json
    import unicodedata

    if not Path(font).is_file():
        raise ReportError(f"font {font} not found: install the Debian package "
                          "fonts-dejavu-core (scripts/setup.sh does) or set [reports] font")
    subset = _subset_font(font)
    if subset is not None:
        text = unicodedata.normalize("NFC", json.dumps([fig, t], ensure_ascii=False))
        if all(ord(c) in subset[1] for c in text if c >= " "):
            return subset[0]
    return font


# Tables are drawn as fixed-height rows of text plus one grid of lines per page: fpdf2's
# pdf.table() lays out every cell as a paragraph (0.15 s a report, most of the weekly
# run); here a cell is one pdf.text() and a text too wide for its column is cut with "…".
ROW_H, HEAD_LINE_H, PAD = 5.0, 4.0, 1.0
HEAD_FILL = (225, 232, 225)


def _fit(pdf, text: str, width: float) -> str:
    if pdf.get_string_width(text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if pdf.get_string_width(text[:mid] + "…") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


def _wrap(pdf, text: str, width: float) -> list[str]:
    """Words to lines within `width` (a word longer than the width is cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and pdf.get_string_width(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(_fit(pdf, word, width))
    return lines or [""]


def _table(pdf, title: str, header: list, rows: list, weights) -> None:
    pdf.set_font("r", size=12)
    if pdf.get_y() + 8 + 2 * ROW_H + 8 > pdf.page_break_trigger:
        pdf.add_page()  # a title with no row under it
    pdf.cell(0, 8, _clean(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("r", size=9)
    total = float(sum(weights))
    widths = [pdf.epw * w / total for w in weights]
    xs = [pdf.l_margin]
    for w in widths:
        xs.append(xs[-1] + w)
    head = [_wrap(pdf, _clean(h), w - 2 * PAD) for h, w in zip(header, widths)]
    head_h = max(len(lines) for lines in head) * HEAD_LINE_H + 1.5
    pdf.set_draw_color(0)
    pdf.set_line_width(0.2)

    def draw_head(y):
        pdf.set_fill_color(*HEAD_FILL)
        pdf.rect(xs[0], y, xs[-1] - xs[0], head_h, style="F")
        for x, lines in zip(xs, head):
            for i, line in enumerate(lines):
                pdf.text(x + PAD, y + 3.2 + i * HEAD_LINE_H, line)
        return y + head_h

    def grid(top, lines_y):
        for y in lines_y:
            pdf.line(xs[0], y, xs[-1], y)
        for x in xs:
            pdf.line(x, top, x, lines_y[-1])

    top = pdf.get_y()
    y = draw_head(top)
    ys = [top, y]
    for row in rows:
        if y + ROW_H > pdf.page_break_trigger:
            grid(top, ys)
            pdf.add_page()
            top = pdf.get_y()
            y = draw_head(top)  # the heading again on every page
            ys = [top, y]
        for x, w, cell in zip(xs, widths, row):
            text = _fit(pdf, _clean(cell), w - 2 * PAD)
            if text:
                pdf.text(x + PAD, y + 3.6, text)
        y += ROW_H
        ys.append(y)
    grid(top, ys)
    pdf.set_xy(pdf.l_margin, y)
    pdf.ln(3)


def _render_pdf(fig: dict, t: dict, font: str = FONT) -> bytes:
    return _draw_pdf(fig, t, _pick_font(fig, t, font))


def _draw_pdf(fig: dict, t: dict, font: str) -> bytes:
    """The PDF with `font`, a file that holds every letter of it (_pick_font)."""
    from fpdf import FPDF

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

    _table(pdf, t["summary"], [t["figure"], t["value"]],
           [[t[k], str(fig["summary"][k])] for k in SUMMARY_KEYS], (3, 1))
    _table(pdf, t["per_day"], [t["day"], t["green"], t["red"], t["total"]],
           [[d["day"], str(d["green"]), str(d["red"]), str(d["green"] + d["red"])]
            for d in fig["per_day"]], (2, 1, 1, 1))
    _chart(pdf, fig["per_day"], t)
    if fig["wards"]:
        _table(pdf, t["per_ward"], [t["ward"], t["organisations_total"], t["locations"],
                                    t["locations_online"], t["locations_scanned_week"],
                                    t["locations_silent"], t["reminders"],
                                    t["organisations_flagged"], t["scans_week"]],
               [[r["name"] or t["no_ward"], *(str(r[k]) for k in (
                   "organisations_total", "locations", "locations_online",
                   "locations_scanned_week", "locations_silent", "reminders",
                   "organisations_flagged", "scans_week"))] for r in fig["wards"]],
               (3, 1, 1, 1, 1, 1, 1, 1, 1))
    _table(pdf, t["flagged"], [t["code"], t["name"], t["status"], t["reminders"]],
           [[f["code"], f["name"], t.get(f"status_{f['status']}", f["status"]),
             str(f["reminders"])] for f in fig["flagged"]]
           or [[t["none"], "", "", ""]], (1, 3, 1, 1))
    _table(pdf, t["silent"], [t["code"], t["name"], t["why"]],
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
def _kept(session, scope: str, scope_id: int, week: date, language: str):
    return session.scalar(select(WeeklyReport).where(
        WeeklyReport.scope == scope, WeeklyReport.scope_id == scope_id,
        WeeklyReport.week == week.isoformat(), WeeklyReport.language == language))


def _store(session, kept, scope, scope_id, week, language, *, now, fig, pdf, text, actor,
           force) -> WeeklyReport:
    if kept is None:
        kept = WeeklyReport(scope=scope, scope_id=scope_id, week=week.isoformat(),
                            language=language)
        session.add(kept)
    kept.made_at, kept.figures, kept.pdf, kept.csv, kept.emailed_at = now, fig, pdf, text, None
    session.flush()
    audit.record(session, actor, "report.make", f"{scope}:{fig['code']}:{week.isoformat()}",
                 language=language, forced=force)
    return kept


def make(session, scope: str, scope_id: int, week: date, *, language: str = "vi",
         force: bool = False, now: float | None = None, silent_hours: float = 2.0,
         font: str = FONT, actor: str = "system", scans: dict | None = None) -> tuple[WeeklyReport, bool]:
    """The report of (scope, week, language): the kept one, or made now (force: made again).
    Returns (report, made). The caller commits."""
    if scope not in (DISTRICT, WARD):
        raise ReportError(f"scope {scope!r}: district or ward")
    if language not in LANGUAGES:
        raise ReportError(f"language {language!r}: vi or en")
    kept = _kept(session, scope, scope_id, week, language)
    if kept is not None and not force:
        return kept, False
    now = time.time() if now is None else now
    fig = build(session, scope, scope_id, week, now=now, silent_hours=silent_hours, scans=scans)
    kept = _store(session, kept, scope, scope_id, week, language, now=now, fig=fig,
                  pdf=render_pdf(fig, language, font), text=render_csv(fig, language),
                  actor=actor, force=force)
    return kept, True


# A pool starts in about a second (each process imports fpdf2 and the fleet's modules):
# fewer PDFs than this are made in the calling process.
POOL_FROM = 16


def _cores() -> int:
    import os
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def render_many(jobs: list, workers: int = 1) -> list[bytes]:
    """PDFs of [(figures, texts, font file)], in order: in a pool of `workers` processes
    (0: one per core) when there are many; 1 (the default): here. A PDF costs ~50 ms of CPU, most of it in
    fpdf2's font handling (parsing the font, then subsetting it into the document), which
    documents cannot share. The processes are spawned, not forked: the caller may hold
    database connections and threads."""
    n = min(workers if workers > 0 else _cores(), len(jobs))
    if n <= 1 or len(jobs) < POOL_FROM:
        return [_draw_pdf(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    try:
        with ProcessPoolExecutor(max_workers=n,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            chunk = max(1, min(8, len(jobs) // (4 * n)))
            return list(pool.map(_draw_job, jobs, chunksize=chunk))
    except (BrokenProcessPool, OSError) as exc:
        # no processes to be had (limits, a sandbox): slower, still made
        log.warning("weekly report PDFs made in one process: no pool (%s)", exc)
        return [_draw_pdf(*job) for job in jobs]


def _draw_job(job) -> bytes:
    return _draw_pdf(*job)


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
    t = texts(report.language)
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
             language=None, now=None, do_send=False, actor="system",
             workers: int | None = None) -> list[tuple]:
    """Reports of every district and ward (or those given). The figures first, read once
    per district (Gather), then the PDFs (render_many, in `[reports] workers` processes),
    then each report kept, audited, e-mailed and committed in turn.
    Returns [(report, made, sent)]."""
    language = language or config.reports.language
    t = texts(language)
    now = time.time() if now is None else now
    if districts is None and wards is None:
        districts = list(session.scalars(select(District).order_by(District.code)))
        wards = list(session.scalars(select(Ward).order_by(Ward.code)))
    clock = time.perf_counter()
    gather = Gather(session, week, now=now, silent_hours=config.web.silent_hours)
    plan = []
    for scope, items in ((DISTRICT, districts or []), (WARD, wards or [])):
        for item in items:
            kept = _kept(session, scope, item.id, week, language)
            fig = None
            if kept is None or force:
                fig = build(session, scope, item.id, week, now=now,
                            silent_hours=config.web.silent_hours, gather=gather)
            plan.append((scope, item, kept, fig))
    todo = [p for p in plan if p[3] is not None]
    took = {"figures": time.perf_counter() - clock}
    clock = time.perf_counter()
    pdfs = render_many([(fig, t, _pick_font(fig, t, config.reports.font))
                        for _s, _i, _k, fig in todo],
                       config.reports.workers if workers is None else workers)
    pdf_of = {id(p): pdf for p, pdf in zip(todo, pdfs)}
    took["pdfs"] = time.perf_counter() - clock
    clock = time.perf_counter()
    out = []
    for p in plan:
        scope, item, kept, fig = p
        made = fig is not None
        if made:
            kept = _store(session, kept, scope, item.id, week, language, now=now, fig=fig,
                          pdf=pdf_of[id(p)], text=render_csv(fig, language), actor=actor,
                          force=force)
        sent = send(config, session, kept, now=now) \
            if do_send and (made or kept.emailed_at is None) else []
        session.commit()
        out.append((kept, made, sent))
    took["kept"] = time.perf_counter() - clock
    log.info("weekly reports %s: %d made of %d; figures %.1f s, PDFs %.1f s, CSVs kept, "
             "sent and committed %.1f s", week.isoformat(), len(todo), len(plan),
             took["figures"], took["pdfs"], took["kept"])
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

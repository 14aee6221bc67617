"""Compliance figures, weekly reports and reminders over the API (docs/reports.md,
docs/api.md#reports). Scoped like the pages: a ward officer sees its ward only, a district
officer its district and its wards; admins and operators name the district or ward.

    GET  /api/v1/reports/compliance?district=CODE|ward=CODE
    GET  /api/v1/reports/weekly?district=CODE|ward=CODE[&week=YYYY-MM-DD]
    POST /api/v1/reports/weekly  {"district"|"ward": CODE, "week", "language", "force", "send"}
    GET  /api/v1/reports/weekly/<id>/pdf | /csv
    GET  /api/v1/organisations/<code>/reminders
    POST /api/v1/organisations/<code>/reminders  {"note": "..."}
"""

from __future__ import annotations

from flask import Response, g, jsonify, request
from sqlalchemy import select

from .. import compliance, reports
from ..app import current_fleet, db
from ..auth import require
from ..models import (ADMIN, DISTRICT_OFFICER, OPERATOR, WARD_OFFICER, District, Organisation,
                      Reminder, Ward, WeeklyReport)
from . import ApiError, bp
from .common import (CODE, CODE_RULE, iso, json_body, now, pattern_arg, scope, text_field,
                     ward_scope)

WATCHERS = (ADMIN, OPERATOR, DISTRICT_OFFICER, WARD_OFFICER)


# --- whose figures ------------------------------------------------------------------------
def target(session, district_code: str | None, ward_code: str | None, *, required=True):
    """(reports.DISTRICT, District) or (reports.WARD, Ward) the caller asked for and may
    see; a ward officer gets its ward, a district officer its district by default.
    ApiError 404 for one outside the caller's scope (as if it did not exist)."""
    limited, ward_only = scope(), ward_scope()
    if ward_code:
        ward = session.scalar(select(Ward).where(Ward.code == ward_code))
        if ward is None or (limited is not None and ward.district_id != limited) \
                or (ward_only is not None and ward.id != ward_only):
            raise ApiError(404, f"no ward with code {ward_code!r}")
        return reports.WARD, ward
    if ward_only is not None:
        if district_code:
            raise ApiError(403, "a ward officer sees its own ward only: leave out district=",
                           "forbidden")
        return reports.WARD, session.get(Ward, ward_only)
    if district_code:
        district = session.scalar(select(District).where(District.code == district_code))
        if district is None or (limited is not None and district.id != limited):
            raise ApiError(404, f"no district with code {district_code!r}")
        return reports.DISTRICT, district
    if limited is not None:
        return reports.DISTRICT, session.get(District, limited)
    if required:
        raise ApiError(400, "name the district or the ward: ?district=CODE or ?ward=CODE")
    return None, None


def visible_report(session, report: WeeklyReport | None) -> bool:
    if report is None:
        return False
    limited, ward_only = scope(), ward_scope()
    if report.scope == reports.WARD:
        ward = session.get(Ward, report.scope_id)
        return ward is not None and (limited is None or ward.district_id == limited) \
            and (ward_only is None or ward.id == ward_only)
    return ward_only is None and (limited is None or report.scope_id == limited)


def organisation_in_scope(session, code: str) -> Organisation:
    org = session.scalar(select(Organisation).where(Organisation.code == code))
    limited, ward_only = scope(), ward_scope()
    if org is None or (limited is not None and org.district_id != limited) \
            or (ward_only is not None and org.ward_id != ward_only):
        raise ApiError(404, f"no organisation with code {code!r}")
    return org


def _codes():
    return (pattern_arg("district", CODE, CODE_RULE), pattern_arg("ward", CODE, CODE_RULE))


# --- figures --------------------------------------------------------------------------------
@bp.get("/reports/compliance")
@require(*WATCHERS)
def compliance_figures():
    session = db()
    kind, item = target(session, *_codes())
    silent_hours = current_fleet().config.web.silent_hours
    fig = compliance.figures(session, now=now(), silent_hours=silent_hours,
                             **({"ward_id": item.id} if kind == reports.WARD
                                else {"district_id": item.id}))
    out = fig.as_dict()
    out["at"] = iso(fig.at)
    out["scope"] = {"kind": kind, "code": item.code, "name": item.name}
    for s in out["silent"]:
        s["last_scan"] = iso(s["last_scan"])
        s.pop("organisation_id", None)
    return jsonify(out)


# --- weekly reports ---------------------------------------------------------------------------
def report_dict(r: WeeklyReport) -> dict:
    fig = r.figures or {}
    return {"id": r.id, "scope": r.scope, "code": fig.get("code"), "name": fig.get("name"),
            "week": r.week, "language": r.language, "made_at": iso(r.made_at),
            "emailed_at": iso(r.emailed_at), "summary": fig.get("summary"),
            "pdf": f"/api/v1/reports/weekly/{r.id}/pdf", "csv": f"/api/v1/reports/weekly/{r.id}/csv"}


def reports_in_scope(session, kind=None, item=None, week: str | None = None, limit=200):
    """Kept reports the caller may see (of one district/ward when given), newest first."""
    stmt = select(WeeklyReport).order_by(WeeklyReport.week.desc(), WeeklyReport.scope,
                                         WeeklyReport.id.desc())
    if week:
        stmt = stmt.where(WeeklyReport.week == week)
    if item is not None:
        if kind == reports.WARD:
            stmt = stmt.where(WeeklyReport.scope == reports.WARD, WeeklyReport.scope_id == item.id)
        else:
            wards = select(Ward.id).where(Ward.district_id == item.id)
            stmt = stmt.where(((WeeklyReport.scope == reports.DISTRICT)
                               & (WeeklyReport.scope_id == item.id))
                              | ((WeeklyReport.scope == reports.WARD)
                                 & WeeklyReport.scope_id.in_(wards)))
    return [r for r in session.scalars(stmt.limit(limit * 4)) if visible_report(session, r)][:limit]


@bp.get("/reports/weekly")
@require(*WATCHERS)
def weekly_list():
    session = db()
    kind, item = target(session, *_codes(), required=False)
    week = request.args.get("week")
    if week:
        try:
            week = reports.parse_week(week).isoformat()
        except reports.ReportError as exc:
            raise ApiError(400, str(exc)) from None
    return jsonify(reports=[report_dict(r) for r in reports_in_scope(session, kind, item, week)])


def make_report(session, kind, item, week_text, language, force, send) -> tuple[WeeklyReport, bool, list]:
    """Shared with the /reports page: make (or find) a report, optionally e-mail it."""
    config = current_fleet().config
    try:
        week = reports.parse_week(week_text) if week_text else reports.last_week(now())
        report, made = reports.make(session, kind, item.id, week,
                                    language=language or config.reports.language, force=force,
                                    now=now(), silent_hours=config.web.silent_hours,
                                    font=config.reports.font, actor=g.actor)
    except reports.ReportError as exc:
        raise ApiError(422, str(exc)) from None
    sent = reports.send(config, session, report, now=now()) if send else []
    session.commit()
    return report, made, sent


@bp.post("/reports/weekly")
@require(*WATCHERS)
def weekly_make():
    session = db()
    body = json_body({"district", "ward", "week", "language", "force", "send"})
    district = text_field(body, "district", required=False, max_length=64, pattern=CODE,
                          rule=CODE_RULE)
    ward = text_field(body, "ward", required=False, max_length=64, pattern=CODE, rule=CODE_RULE)
    week = text_field(body, "week", required=False, max_length=10)
    language = text_field(body, "language", required=False, max_length=2)
    if language is not None and language not in reports.LANGUAGES:
        raise ApiError(422, "'language' must be vi or en")
    for flag in ("force", "send"):
        if flag in body and not isinstance(body[flag], bool):
            raise ApiError(422, f"'{flag}' must be true or false")
    kind, item = target(session, district, ward)
    report, made, sent = make_report(session, kind, item, week, language,
                                     bool(body.get("force")), bool(body.get("send")))
    return jsonify(report=report_dict(report), made=made, emailed_to=sent), 201 if made else 200


def _download(report_id: int, ext: str):
    session = db()
    report = session.get(WeeklyReport, report_id)
    if not visible_report(session, report):
        raise ApiError(404, f"no weekly report {report_id}")
    if ext == "pdf":
        body, mime = report.pdf, "application/pdf"
    else:
        body, mime = report.csv.encode("utf-8"), "text/csv; charset=utf-8"
    return Response(body, mimetype=mime, headers={
        "Content-Disposition": f'attachment; filename="{reports.file_name(report, ext)}"'})


@bp.get("/reports/weekly/<int:report_id>/pdf")
@require(*WATCHERS)
def weekly_pdf(report_id: int):
    return _download(report_id, "pdf")


@bp.get("/reports/weekly/<int:report_id>/csv")
@require(*WATCHERS)
def weekly_csv(report_id: int):
    return _download(report_id, "csv")


# --- reminders ---------------------------------------------------------------------------------
def reminders_dict(session, org: Organisation) -> dict:
    rows = session.scalars(select(Reminder).where(Reminder.organisation_id == org.id)
                           .order_by(Reminder.at.desc(), Reminder.id.desc())).all()
    return {"organisation": org.code, "count": len(rows),
            "flagged": len(rows) > compliance.FLAG_AFTER, "flag_after": compliance.FLAG_AFTER,
            "reminders": [{"id": r.id, "at": iso(r.at), "by": r.actor, "note": r.note}
                          for r in rows]}


@bp.get("/organisations/<code>/reminders")
@require(*WATCHERS)
def reminders_list(code: str):
    session = db()
    return jsonify(reminders_dict(session, organisation_in_scope(session, code)))


@bp.post("/organisations/<code>/reminders")
@require(*WATCHERS)
def reminders_add(code: str):
    session = db()
    org = organisation_in_scope(session, code)
    body = json_body({"note"})
    note = text_field(body, "note", required=False, max_length=400) or ""
    compliance.remind(session, org, actor=g.actor, note=note, at=now())
    session.commit()
    return jsonify(reminders_dict(session, org)), 201

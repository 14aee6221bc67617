"""Compliance watch (/compliance) and weekly reports (/reports), docs/reports.md.

A district officer sees its district's wards, a ward officer its ward, admins and
operators choose a district (or a ward). Reminders are recorded from the page; the
fourth flags the organisation for a stop. Scope and figures are the API's
(fleet/api/reports.py), so page and API cannot disagree."""

from __future__ import annotations

from flask import Response, g, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from sqlalchemy import select

from .. import compliance, reports
from ..api import ApiError
from ..api import reports as api_reports
from ..api.common import CODE, now, scope, ward_scope
from ..app import current_fleet, db
from ..auth import AuthError
from ..models import District, Organisation, Ward, WeeklyReport
from . import bp, page

WATCHERS = api_reports.WATCHERS


def _code(name: str) -> str | None:
    value = (request.values.get(name) or "").strip()
    return value if value and CODE.match(value) else None


def _target(session):
    """The district or ward shown; admins and operators default to the first district."""
    district, ward = _code("district"), _code("ward")
    try:
        kind, item = api_reports.target(session, district, ward, required=False)
    except ApiError as exc:
        raise AuthError(exc.status, exc.message) from None
    if item is None:
        item = session.scalar(select(District).order_by(District.code).limit(1))
        kind = reports.DISTRICT
    return kind, item


def _choices(session):
    """Districts and wards the caller may pick (a ward officer: none to pick)."""
    if ward_scope() is not None:
        return [], []
    limited = scope()
    districts = [] if limited is not None else list(
        session.scalars(select(District).order_by(District.code)))
    wards = select(Ward).order_by(Ward.code)
    if limited is not None:
        wards = wards.where(Ward.district_id == limited)
    return districts, list(session.scalars(wards))


@bp.get("/compliance")
@page(*WATCHERS)
def compliance_page():
    session = db()
    kind, item = _target(session)
    districts, wards = _choices(session)
    fig = None
    org_codes = {}
    if item is not None:
        fig = compliance.figures(session, now=now(),
                                 silent_hours=current_fleet().config.web.silent_hours,
                                 **({"ward_id": item.id} if kind == reports.WARD
                                    else {"district_id": item.id}))
        ids = {s["organisation_id"] for s in fig.silent if s["organisation_id"]}
        if ids:
            org_codes = dict(session.execute(select(Organisation.id, Organisation.code)
                                             .where(Organisation.id.in_(ids))).all())
    return render_template("compliance.html", kind=kind, item=item, fig=fig,
                           districts=districts, wards=wards, org_codes=org_codes,
                           flag_after=compliance.FLAG_AFTER,
                           silent_hours=f"{current_fleet().config.web.silent_hours:g}",
                           done=request.args.get("done"), statuses=compliance.ORG_STATUSES,
                           status_names=_status_names())


def _status_names() -> dict:
    return {"applied": _("Applied"), "approved": _("Approved"), "suspended": _("Suspended"),
            "closed": _("Closed")}


@bp.post("/compliance/remind")
@page(*WATCHERS)
def compliance_remind():
    session = db()
    code = (request.form.get("organisation") or "").strip()
    try:
        org = api_reports.organisation_in_scope(session, code)
    except ApiError:
        raise AuthError(404, _("No organisation with code %(code)s in your area.",
                               code=code[:64])) from None
    note = (request.form.get("note") or "").strip()[:400]
    compliance.remind(session, org, actor=g.actor, note=note, at=now())
    session.commit()
    back = {k: v for k in ("district", "ward") if (v := _code(k))}
    return redirect(url_for("web.compliance_page", done=org.code, **back) + "#flagged")


@bp.get("/reports")
@page(*WATCHERS)
def reports_page():
    session = db()
    kind, item = _target(session)
    districts, wards = _choices(session)
    kept = api_reports.reports_in_scope(session, None if item is None else kind, item)
    return render_template("reports.html", kind=kind, item=item, reports=kept,
                           districts=districts, wards=wards,
                           last_week=reports.last_week(now()).isoformat(),
                           language=str(get_locale()) if str(get_locale()) in reports.LANGUAGES
                           else "vi")


@bp.post("/reports")
@page(*WATCHERS)
def reports_make():
    session = db()
    kind, item = _target(session)
    if item is None:
        raise AuthError(400, _("There is no district yet."))
    language = request.form.get("language") or None
    if language not in (None, *reports.LANGUAGES):
        language = None
    try:
        report, _made, _sent = api_reports.make_report(
            session, kind, item, request.form.get("week") or None, language,
            request.form.get("force") == "1", request.form.get("send") == "1")
    except ApiError as exc:
        raise AuthError(exc.status, exc.message) from None
    back = {"ward" if kind == reports.WARD else "district": item.code}
    return redirect(url_for("web.reports_page", **back) + f"#report-{report.id}")


@bp.get("/reports/<int:report_id>.<ext>")
@page(*WATCHERS)
def report_file(report_id: int, ext: str):
    session = db()
    report = session.get(WeeklyReport, report_id)
    if ext not in ("pdf", "csv") or not api_reports.visible_report(session, report):
        raise AuthError(404, _("No such report."))
    body = report.pdf if ext == "pdf" else report.csv.encode("utf-8")
    mime = "application/pdf" if ext == "pdf" else "text/csv; charset=utf-8"
    return Response(body, mimetype=mime, headers={
        "Content-Disposition": f'attachment; filename="{reports.file_name(report, ext)}"'})

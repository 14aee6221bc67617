"""The roster page /organisations/<code>/roster (docs/dashboard.md, docs/rosters.md):
the organisation's workers, the quota used and allowed, adding (with a QR text or a
certificate identifier, or none: linked later by a scan), removing, a CSV upload shown
as a preview and applied only when confirmed, and enrolment mode on one of the
organisation's kiosks with its outcome.

The manager keeps its own organisation's roster, admins and operators any; district and
ward officers read those of their district / ward. Scope and rules are the API's
(fleet/api/rosters.py, fleet/roster_workers.py), so page and API cannot disagree."""

from __future__ import annotations

import base64
import binascii

from flask import g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import organisations, roster_workers
from ..api import ApiError
from ..api.common import now, org_scope
from ..api.rosters import KEEPERS, READERS, organisation_for
from ..app import current_fleet, db
from ..auth import AuthError
from ..models import MANAGER, Organisation
from ..refusals import translated
from ..roster_workers import WorkerError
from . import bp, page
from .confirmation import confirmed, remember

IMPORT_KEY = "roster_import_preview"


def _org(session, code: str):
    try:
        return organisation_for(session, code)
    except ApiError:
        raise AuthError(404, _("No organisation with code %(code)s in your area.",
                               code=code[:64])) from None


def _may_keep() -> bool:
    return g.user.role in KEEPERS


def _render(session, org, *, error: str | None = None, status: int = 200, done=None):
    at = now()
    workers = roster_workers.list_workers(session, org)
    kiosks = organisations.kiosks_of(session, org)
    enrolments = roster_workers.recent_enrolments(session, org, 10)
    names = {w.id: w.display_name for w in workers}
    outcomes = {e.id: roster_workers.enrolment_outcome(e, at) for e in enrolments}
    return render_template(
        "roster.html", org=org, workers=workers, count=len(workers), kiosks=kiosks,
        enrolments=enrolments, outcomes=outcomes, names=names, may_keep=_may_keep(),
        error=translated(error), done=done, minutes=roster_workers.ENROL_DEFAULT,
        enrol_minutes=roster_workers.ENROL_MINUTES,
        any_open=any(o == "open" for o in outcomes.values()),
        columns=", ".join(roster_workers.CSV_COLUMNS)), status


@bp.get("/roster")
@page(MANAGER)
def my_roster():
    """The manager's own roster (the nav's link); others choose an organisation."""
    own = org_scope()
    org = db().get(Organisation, own) if own is not None else None
    if org is None:
        return redirect(url_for("web.home"))
    return redirect(url_for("web.roster_page", code=org.code))


@bp.get("/organisations/<code>/roster")
@page(*READERS)
def roster_page(code: str):
    session = db()
    return _render(session, _org(session, code), done=request.args.get("done"))


def _form_text(name: str, limit: int = 10_000) -> str | None:
    value = (request.form.get(name) or "").strip()
    return value[:limit] or None


@bp.post("/organisations/<code>/roster/add")
@page(*KEEPERS)
def roster_add_page(code: str):
    session = db()
    org = _org(session, code)
    link = _form_text("link")
    qr, ci = (link, None) if link and link.upper().startswith("HC1:") else (None, link)
    try:
        _worker, published = roster_workers.add_worker(
            session, current_fleet().config, org, display_name=request.form.get("display_name"),
            job=request.form.get("job") or "", qr=qr, ci=ci, actor=g.actor, via="page",
            at=now())
    except WorkerError as exc:
        session.rollback()
        return _render(session, org, error=exc.message, status=exc.status)
    session.commit()
    roster_workers.notify(current_fleet().publisher, published)
    return redirect(url_for("web.roster_page", code=org.code, done="added") + "#workers")


@bp.post("/organisations/<code>/roster/<int:worker_id>/remove")
@page(*KEEPERS)
def roster_remove_page(code: str, worker_id: int):
    session = db()
    org = _org(session, code)
    try:
        worker = roster_workers.worker_of(session, org, worker_id)
        published = roster_workers.remove_worker(session, current_fleet().config, org, worker,
                                                 actor=g.actor, at=now())
    except WorkerError as exc:
        session.rollback()
        return _render(session, org, error=exc.message, status=exc.status)
    session.commit()
    roster_workers.notify(current_fleet().publisher, published)
    return redirect(url_for("web.roster_page", code=org.code, done="removed") + "#workers")


@bp.post("/organisations/<code>/roster/<int:worker_id>/link")
@page(*KEEPERS)
def roster_link_page(code: str, worker_id: int):
    """Re-link a worker by a QR text or a certificate identifier."""
    session = db()
    org = _org(session, code)
    link = _form_text("link")
    if link is None:
        return _render(session, org, error=_("Paste a QR text or a certificate identifier."),
                       status=422)
    qr, ci = (link, None) if link.upper().startswith("HC1:") else (None, link)
    try:
        worker = roster_workers.worker_of(session, org, worker_id)
        _w, published = roster_workers.update_worker(
            session, current_fleet().config, org, worker, actor=g.actor, qr=qr, ci=ci,
            via="page", at=now())
    except WorkerError as exc:
        session.rollback()
        return _render(session, org, error=exc.message, status=exc.status)
    session.commit()
    roster_workers.notify(current_fleet().publisher, published)
    return redirect(url_for("web.roster_page", code=org.code, done="linked") + "#workers")


@bp.post("/organisations/<code>/roster/import/preview")
@page(*KEEPERS)
def roster_import_preview(code: str):
    session = db()
    org = _org(session, code)
    upload = request.files.get("file")
    data = upload.read(roster_workers.MAX_CSV_BYTES + 1) if upload is not None else b""
    result = roster_workers.import_csv(session, current_fleet().config, org, data,
                                       actor=g.actor, dry_run=True, at=now())
    session.rollback()
    fields = {"organisation": org.code,
              "csv": base64.b64encode(data).decode("ascii") if result.ok else ""}
    if result.ok:
        remember(IMPORT_KEY, fields)
    return render_template("roster_import_preview.html", org=org, result=result,
                           fields=fields), (200 if result.ok else result.status)


@bp.post("/organisations/<code>/roster/import/apply")
@page(*KEEPERS)
def roster_import_apply(code: str):
    session = db()
    org = _org(session, code)
    fields = {"organisation": org.code, "csv": request.form.get("csv") or ""}
    confirmed(IMPORT_KEY, fields, _("This upload was not previewed as it is, or was applied "
                                    "already: upload the file again from the roster page."))
    try:
        data = base64.b64decode(fields["csv"], validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(400, _("The upload was damaged on the way; upload it again.")) from None
    result = roster_workers.import_csv(session, current_fleet().config, org, data,
                                       actor=g.actor, at=now())
    if not result.ok:  # the roster changed since the preview (another manager, the quota)
        session.rollback()
        return render_template("roster_import_preview.html", org=org, result=result,
                               fields={"organisation": org.code, "csv": ""}), result.status
    session.commit()
    roster_workers.notify(current_fleet().publisher, result.published)
    return redirect(url_for("web.roster_page", code=org.code, done="imported") + "#workers")


@bp.post("/organisations/<code>/roster/enrol")
@page(*KEEPERS)
def roster_enrol_page(code: str):
    session = db()
    org = _org(session, code)
    choice = request.form.get("worker") or ""
    worker_id = int(choice) if choice.isdigit() else None
    name = None if worker_id is not None else (request.form.get("display_name") or "")
    try:
        minutes = int(request.form.get("minutes") or roster_workers.ENROL_DEFAULT)
    except ValueError:
        minutes = -1  # refused below with the allowed range
    try:
        _e, published = roster_workers.open_enrolment(
            session, current_fleet().config, org, kiosk_id=request.form.get("kiosk") or "",
            worker_id=worker_id, display_name=name, job=request.form.get("job") or "",
            minutes=minutes, actor=g.actor, at=now())
    except WorkerError as exc:
        session.rollback()
        return _render(session, org, error=exc.message, status=exc.status)
    session.commit()
    roster_workers.notify(current_fleet().publisher, published)
    return redirect(url_for("web.roster_page", code=org.code, done="enrolment") + "#enrolments")

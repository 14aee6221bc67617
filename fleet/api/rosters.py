"""An organisation's roster (docs/rosters.md#managing-the-roster, docs/api.md#rosters):

    GET    /api/v1/organisations/<code>/workers            the roster, quota used/allowed
    POST   /api/v1/organisations/<code>/workers            add {display_name, job, qr|ci}
    PATCH  /api/v1/organisations/<code>/workers/<id>       rename, job, (re-)link by qr|ci
    DELETE /api/v1/organisations/<code>/workers/<id>       off the roster
    POST   /api/v1/organisations/<code>/workers/import     a CSV, all or nothing (?dry_run=1)
    POST   /api/v1/organisations/<code>/enrolments         enrolment mode on one kiosk
    GET    /api/v1/organisations/<code>/enrolments         recent enrolments and outcomes

Who: the organisation's manager keeps its roster, admins and operators any; district
and ward officers read the rosters in their district / ward (the district approves the
list in the reopening programme), never change them; health officials do not see
rosters. An organisation outside the caller's scope is a 404, as if it did not exist.
The API never shows a worker's keys, only whether and how it is linked.
"""

from __future__ import annotations

from flask import g, jsonify, request
from sqlalchemy import select

from .. import roster_workers
from ..app import current_fleet, db
from ..auth import require
from ..models import (ADMIN, DISTRICT_OFFICER, MANAGER, OPERATOR, WARD_OFFICER, Organisation)
from ..roster_workers import WorkerError
from . import ApiError, bp
from .common import bool_arg, iso, json_body, now, org_scope, scope, ward_scope

READERS = (ADMIN, OPERATOR, DISTRICT_OFFICER, WARD_OFFICER, MANAGER)
KEEPERS = (ADMIN, OPERATOR, MANAGER)


def organisation_for(session, code: str) -> Organisation:
    """The organisation `code` if the caller may see it (a manager: its own only; a ward
    officer: its ward's; a district officer: its district's); else 404."""
    org = session.scalar(select(Organisation).where(Organisation.code == code))
    district, ward, own = scope(), ward_scope(), org_scope()
    if org is None or (district is not None and org.district_id != district) \
            or (ward is not None and org.ward_id != ward) \
            or (own is not None and org.id != own):
        raise ApiError(404, f"no organisation with code {code!r}")
    return org


def _worker_json(worker) -> dict:
    out = roster_workers.worker_dict(worker)
    for name in ("linked_at", "created_at", "removed_at"):
        out[name] = iso(out[name])
    return out


def _enrolment_json(enrolment, at: float) -> dict:
    out = roster_workers.enrolment_dict(enrolment, at)
    for name in ("opened_at", "expires_at", "closed_at"):
        out[name] = iso(out[name])
    return out


def _roster_json(session, org) -> dict:
    workers = roster_workers.list_workers(session, org, bool_arg("removed", False))
    return {"organisation": org.code, "status": org.status, "quota": org.quota,
            "count": roster_workers.active_count(session, org),
            "workers": [_worker_json(w) for w in workers]}


def _done(session, published) -> None:
    session.commit()
    roster_workers.notify(current_fleet().publisher, published)


def _optional_text(body: dict, name: str):
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(422, f"'{name}' must be a string, not {type(value).__name__}")
    return value


@bp.get("/organisations/<code>/workers")
@require(*READERS)
def roster_list(code: str):
    session = db()
    return jsonify(_roster_json(session, organisation_for(session, code)))


@bp.post("/organisations/<code>/workers")
@require(*KEEPERS)
def roster_add(code: str):
    session = db()
    org = organisation_for(session, code)
    body = json_body({"display_name", "job", "qr", "ci"})
    try:
        worker, published = roster_workers.add_worker(
            session, current_fleet().config, org, display_name=body.get("display_name"),
            job=_optional_text(body, "job") or "", qr=_optional_text(body, "qr"),
            ci=_optional_text(body, "ci"), actor=g.actor, via="api", at=now())
    except WorkerError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message) from None
    _done(session, published)
    return jsonify(_worker_json(worker)), 201


def _worker(session, org, worker_id: int):
    try:
        return roster_workers.worker_of(session, org, worker_id)
    except WorkerError as exc:
        raise ApiError(exc.status, exc.message) from None


@bp.patch("/organisations/<code>/workers/<int:worker_id>")
@require(*KEEPERS)
def roster_update(code: str, worker_id: int):
    session = db()
    org = organisation_for(session, code)
    worker = _worker(session, org, worker_id)
    body = json_body({"display_name", "job", "qr", "ci"})
    try:
        worker, published = roster_workers.update_worker(
            session, current_fleet().config, org, worker, actor=g.actor,
            display_name=body.get("display_name"), job=_optional_text(body, "job"),
            qr=_optional_text(body, "qr"), ci=_optional_text(body, "ci"), via="api", at=now())
    except WorkerError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message) from None
    _done(session, published)
    return jsonify(_worker_json(worker))


@bp.delete("/organisations/<code>/workers/<int:worker_id>")
@require(*KEEPERS)
def roster_remove(code: str, worker_id: int):
    session = db()
    org = organisation_for(session, code)
    worker = _worker(session, org, worker_id)
    try:
        published = roster_workers.remove_worker(session, current_fleet().config, org, worker,
                                                 actor=g.actor, at=now())
    except WorkerError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message) from None
    _done(session, published)
    return jsonify(_worker_json(worker))


def csv_bytes() -> bytes:
    """The CSV of a request: a multipart upload's `file`, else the body itself."""
    upload = request.files.get("file")
    return upload.read() if upload is not None else request.get_data(cache=False)


@bp.post("/organisations/<code>/workers/import")
@require(*KEEPERS)
def roster_import(code: str):
    session = db()
    org = organisation_for(session, code)
    dry_run = bool_arg("dry_run", False)
    result = roster_workers.import_csv(session, current_fleet().config, org, csv_bytes(),
                                       actor=g.actor, dry_run=dry_run, at=now())
    out = result.as_dict()
    out["dry_run"] = dry_run
    if not result.ok:
        session.rollback()
        out.update(error="conflict" if result.status == 409 else "invalid",
                   message=result.errors[0][1] if result.errors[0][0] == 0 else
                   f"{len(result.errors)} rows refused; nothing was added")
        return jsonify(out), result.status
    if dry_run:
        session.rollback()
        return jsonify(out)
    _done(session, result.published)
    out["workers"] = [_worker_json(w) for w in result.workers]
    return jsonify(out), 201


@bp.post("/organisations/<code>/enrolments")
@require(*KEEPERS)
def enrolment_open(code: str):
    session = db()
    org = organisation_for(session, code)
    body = json_body({"kiosk", "worker", "display_name", "job", "minutes"})
    kiosk, worker = body.get("kiosk"), body.get("worker")
    if not isinstance(kiosk, str):
        raise ApiError(422, "'kiosk' (the id of one of the organisation's kiosks) is required")
    if worker is not None and (type(worker) is not int):
        raise ApiError(422, "'worker' must be a worker's id (a whole number)")
    minutes = body.get("minutes", roster_workers.ENROL_DEFAULT)
    at = now()
    try:
        enrolment, published = roster_workers.open_enrolment(
            session, current_fleet().config, org, kiosk_id=kiosk, worker_id=worker,
            display_name=_optional_text(body, "display_name"),
            job=_optional_text(body, "job") or "", minutes=minutes, actor=g.actor, at=at)
    except WorkerError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message) from None
    _done(session, published)
    return jsonify(_enrolment_json(enrolment, at)), 201


@bp.get("/organisations/<code>/enrolments")
@require(*READERS)
def enrolment_list(code: str):
    session = db()
    org = organisation_for(session, code)
    at = now()
    return jsonify({"organisation": org.code, "enrolments": [
        _enrolment_json(e, at) for e in roster_workers.recent_enrolments(session, org, 50)]})

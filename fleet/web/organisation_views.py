"""Organisations and wards on the dashboard (docs/dashboard.md#organisations-and-wards).

    GET  /organisations                      the list: filters, counts by status, pages
    GET  /organisations/new, POST            a new organisation (status applied)
    GET  /organisations/<code>               its record, status and history, control
                                             points and kiosks, quota and roster size,
                                             reminders, the status actions
    POST /organisations/<code>/status/preview  approve / suspend / lift / close: what it
    POST /organisations/<code>/status/apply    would do, then the change after a confirm
    POST /organisations/<code>/remind        record a reminder
    POST /organisations/<code>/edit          its record (PATCH's rules)
    POST /organisations/<code>/places/preview  its control points: attach, detach, make
    POST /organisations/<code>/places/apply    workers only or open (the locations API's
                                               rules), then the change after a confirm
    GET  /wards, POST /wards                 the wards, a new one

Scope, rules and answers are the API's (fleet/api/organisations.py), so page and API
cannot disagree; status changes go through the same change_status (the policy bundle
re-signed and handed to the publisher). The confirm step is fleet/web/confirmation.py's.
"""

from __future__ import annotations

from flask import g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select

from .. import audit, compliance, organisations, rosters
from ..api import ApiError, fleet_objects
from ..api import organisations as api
from ..api.common import CODE, caller, now, scope, ward_scope
from ..api.reports import WATCHERS
from ..app import current_fleet, db
from ..auth import AuthError
from ..models import (ADMIN, APPLIED, APPROVED, CLOSED, DISTRICT_OFFICER, OPERATOR, ORG_KINDS,
                      ORG_STATUSES, RETIRED, ROLES, SUSPENDED, WARD_KINDS, District, Kiosk,
                      Location, Ward)
from ..organisations import LIFTERS, OrganisationError
from ..refusals import translated
from . import bp, page
from .confirmation import confirmed, remember

PAGE_SIZE = 50
_PREVIEWED = "organisation_status_preview"
STATUS_NAMES = {APPLIED: _l("Applied"), APPROVED: _l("Approved"), SUSPENDED: _l("Suspended"),
                CLOSED: _l("Closed")}
KIND_NAMES = {"business": _l("Business"), "cooperative": _l("Cooperative"),
              "household": _l("Household business"), "agency": _l("Agency")}
WARD_KIND_NAMES = {"phuong": _l("phường"), "xa": _l("xã"), "thi_tran": _l("thị trấn")}
# what each action does, from which statuses (fleet/organisations.py's path)
ACTIONS = {"approve": (APPROVED, (APPLIED,)), "suspend": (SUSPENDED, (APPROVED,)),
           "lift": (APPROVED, (SUSPENDED,)), "close": (CLOSED, (APPLIED, APPROVED, SUSPENDED))}


def _names() -> dict:
    return {"status_names": STATUS_NAMES, "kind_names": KIND_NAMES,
            "ward_kind_names": WARD_KIND_NAMES}


def _code(name: str) -> str | None:
    value = (request.values.get(name) or "").strip()
    return value if value and CODE.match(value) else None


def _not_found(code: str):
    return AuthError(404, _("No organisation with code %(code)s in your area.", code=code[:64]))


def _organisation(session, code: str):
    try:
        return api.organisation_by_code(session, code)
    except ApiError:
        raise _not_found(code) from None


def _districts(session) -> list[District]:
    """The districts the caller may choose (a scoped role: none, its own is implied)."""
    if scope() is not None:
        return []
    return list(session.scalars(select(District).order_by(District.code)))


def _wards(session) -> list[Ward]:
    if ward_scope() is not None:
        return []
    stmt = select(Ward).order_by(Ward.code)
    if scope() is not None:
        stmt = stmt.where(Ward.district_id == scope())
    return list(session.scalars(stmt))


# --- the list ------------------------------------------------------------------------------
@bp.get("/organisations")
@page(*ROLES)  # a manager too: its own organisation
def organisations_page():
    session = db()
    statuses = request.args.get("status") or ""
    filters = {"district": _code("district"), "ward": _code("ward"),
               "status": statuses if statuses in ORG_STATUSES else "",
               "q": (request.args.get("q") or "").strip()[:api.SEARCH_MAX]}
    after = request.args.get("after") or ""
    items, cursor, counts = api.find_organisations(
        session, district=filters["district"], ward=filters["ward"],
        statuses=[filters["status"]] if filters["status"] else None, q=filters["q"] or None,
        limit=PAGE_SIZE, after=int(after) if after.isdigit() and len(after) < 12 else None)
    kept = {k: v for k, v in filters.items() if v}
    return render_template(
        "organisation_list.html", items=items, counts=counts, filters=filters,
        next_url=url_for("web.organisations_page", after=cursor, **kept) if cursor else None,
        first_url=url_for("web.organisations_page", **kept) if after else None,
        status_urls={s: url_for("web.organisations_page", **dict(kept, status=s))
                     for s in ORG_STATUSES},
        districts=_districts(session), wards=_wards(session), statuses=ORG_STATUSES,
        may_create=caller().role in api.DECIDERS, **_names())


# --- a new one -----------------------------------------------------------------------------
NEW_FIELDS = ("code", "name", "kind", "district", "ward", "tax_code", "sector", "contact_name",
              "contact_phone", "contact_email")


def _new_page(session, fields: dict, error: str | None = None, status: int = 200):
    return render_template("organisation_new.html", fields=fields, error=translated(error),
                           districts=_districts(session), wards=_wards(session),
                           kinds=ORG_KINDS, **_names()), status


@bp.get("/organisations/new")
@page(*api.DECIDERS)
def organisation_new():
    return _new_page(db(), {"kind": "business"})


@bp.post("/organisations/new")
@page(*api.DECIDERS)
def organisation_create():
    session = db()
    fields = {name: (request.form.get(name) or "").strip() for name in NEW_FIELDS}
    body = {k: v for k, v in fields.items() if v}
    try:
        org = api.create_organisation(session, body)
    except ApiError as exc:
        session.rollback()
        return _new_page(session, fields, exc.message, exc.status)
    return redirect(url_for("web.organisation_page", code=org.code, done="created"))


# --- one organisation ------------------------------------------------------------------------
def _actions(org, role: str) -> list[str]:
    """The status actions this caller may take on `org` now."""
    if role not in api.SUSPENDERS:
        return []
    out = []
    for action, (_new, froms) in ACTIONS.items():
        if org.status not in froms:
            continue
        if action in ("approve", "close") and role not in api.DECIDERS:
            continue
        if action == "lift" and role != "admin" and role != org.lift_by:
            continue
        out.append(action)
    return out


FREE_SHOWN = 500  # a choice list, not a directory: a district's free places are few


def _free_locations(session, org) -> list[Location]:
    """The locations of the organisation's district no organisation holds: what may be
    attached as its control points."""
    return list(session.scalars(
        select(Location).where(Location.district_id == org.district_id,
                               Location.organisation_id.is_(None))
        .order_by(Location.code).limit(FREE_SHOWN)))


def _org_view(session, org, error: str | None = None, status: int = 200,
              edit: dict | None = None):
    detail = api.organisation_detail(session, org)
    role = caller().role
    may_edit, may_place = role in api.DECIDERS, role in PLACERS
    edit_open = edit is not None  # an edit refused: the form again, as it was sent
    if edit is None:
        edit = {"name": org.name, "tax_code": org.tax_code or "", "kind": org.kind,
                "sector": org.sector or "", "ward": detail["ward"]["code"] if detail["ward"]
                else "", "contact_name": org.contact_name or "",
                "contact_phone": org.contact_phone or "",
                "contact_email": org.contact_email or ""}
    return render_template("organisation_view.html", org=detail,
                           actions=_actions(org, role), lifters=LIFTERS,
                           may_remind=role in WATCHERS, error=translated(error),
                           done=request.args.get("done"), may_edit=may_edit,
                           edit=edit, edit_open=edit_open, kinds=ORG_KINDS,
                           edit_wards=_district_wards(session, org) if may_edit else [],
                           may_place=may_place,
                           free_locations=_free_locations(session, org) if may_place else [],
                           **_names()), status


@bp.get("/organisations/<code>")
@page(*ROLES)
def organisation_page(code):
    session = db()
    return _org_view(session, _organisation(session, code))


def _status_form(code: str) -> dict:
    form = request.form
    return {"code": code, "action": form.get("action", ""),
            "reason": " ".join((form.get("reason") or "").split())[:400],
            "quota": (form.get("quota") or "").strip()[:9],
            "lift_by": form.get("lift_by", "") if form.get("action") == "suspend" else ""}


def _body(fields: dict) -> dict:
    """The form as the API's body; AuthError 422 for an action or a quota that is none."""
    if fields["action"] not in ACTIONS:
        raise AuthError(422, _("Choose what to do."))
    body = {"status": ACTIONS[fields["action"]][0], "reason": fields["reason"] or None,
            "lift_by": fields["lift_by"] or None}
    if fields["action"] == "approve":
        if not fields["quota"].isdigit() or int(fields["quota"]) < 1:
            raise AuthError(422, _("Approving needs the worker quota: a whole number, 1 or "
                                   "more."))
        body["quota"] = int(fields["quota"])
    return body


def _describe(org, fields: dict, kiosks: int) -> tuple[str, str]:
    action = fields["action"]
    if action == "approve":
        return (_("Approve %(name)s with a quota of %(n)s workers.", name=org.name,
                  n=fields["quota"]),
                _("Its posters may carry the green sticker; its manager may fill its roster "
                  "up to the quota."))
    if action == "suspend":
        return (_("Suspend %(name)s: %(reason)s", name=org.name, reason=fields["reason"]),
                _("Its %(n)s kiosks answer red (place closed) from their next policy bundle, "
                  "within seconds; only a %(role)s may lift it.", n=kiosks,
                  role=_(fields["lift_by"] or DISTRICT_OFFICER)))
    if action == "lift":
        return (_("Lift the suspension of %(name)s.", name=org.name),
                _("Its %(n)s kiosks answer as before from their next policy bundle.", n=kiosks))
    return (_("Close %(name)s for good.", name=org.name),
            _("A closed organisation cannot be reopened: a new application is needed."))


def _check(session, org, fields: dict) -> None:
    """The service's refusals before the confirm page: the change in a transaction that
    is rolled back (the bundles are signed only by the real one)."""
    body = _body(fields)
    try:
        organisations.set_status(session, org, body["status"], actor=g.actor,
                                 role=caller().role, reason=body.get("reason") or "",
                                 quota=body.get("quota"), lift_by=body.get("lift_by"), at=now())
        session.flush()
    except OrganisationError as exc:
        raise AuthError(exc.status, exc.message) from None
    finally:
        session.rollback()


@bp.post("/organisations/<code>/status/preview")
@page(*api.SUSPENDERS)
def organisation_status_preview(code):
    session = db()
    org = _organisation(session, code)
    fields = _status_form(org.code)
    if fields["action"] not in _actions(org, caller().role):
        action = ACTIONS.get(fields["action"])
        return _org_view(session, org, _("You may not do this to this organisation now."),
                         422 if action is None else 403 if org.status in action[1] else 409)
    try:
        _check(session, org, fields)
    except AuthError as exc:
        return _org_view(session, _organisation(session, code), exc.message, exc.status)
    org = _organisation(session, code)
    summary, consequence = _describe(org, fields, len(organisations.kiosks_of(session, org)))
    remember(_PREVIEWED, fields)
    return render_template("organisation_confirm.html", fields=fields, summary=summary,
                           consequence=consequence,
                           apply=url_for("web.organisation_status_apply", code=org.code),
                           names=("action", "reason", "quota", "lift_by"),
                           back=url_for("web.organisation_page", code=org.code))


@bp.post("/organisations/<code>/status/apply")
@page(*api.SUSPENDERS)
def organisation_status_apply(code):
    session = db()
    org = _organisation(session, code)
    fields = _status_form(org.code)
    confirmed(_PREVIEWED, fields,
              _("This change was not previewed as it stands, or it has been applied "
                "already. Start again from the organisation's page, check the preview, "
                "then confirm."))
    try:
        api.change_status(session, org, _body(fields))
    except ApiError as exc:
        raise AuthError(exc.status, exc.message) from None
    return redirect(url_for("web.organisation_page", code=org.code, done=fields["action"]))


# --- its record ------------------------------------------------------------------------------
EDIT_FIELDS = ("name", "tax_code", "kind", "sector", "ward", "contact_name", "contact_phone",
               "contact_email")


def _district_wards(session, org) -> list[Ward]:
    return list(session.scalars(select(Ward).where(Ward.district_id == org.district_id)
                                .order_by(Ward.code)))


@bp.post("/organisations/<code>/edit")
@page(*api.DECIDERS)
def organisation_edit(code):
    """The record (not its code, district or status) through the API's PATCH rules."""
    session = db()
    org = _organisation(session, code)
    fields = {name: (request.form.get(name) or "").strip() for name in EDIT_FIELDS}
    # an emptied optional field clears it; the ward and the tax code are then none
    body = {name: (value or None) if name in ("ward", "tax_code") else value
            for name, value in fields.items()}
    try:
        changes = api.update_organisation(session, org, body)
    except ApiError as exc:
        session.rollback()
        return _org_view(session, _organisation(session, code), exc.message, exc.status,
                         edit=fields)
    return redirect(url_for("web.organisation_page", code=org.code,
                            done="edited" if changes else "unchanged"))


# --- its control points ---------------------------------------------------------------------
# The locations API's rules (fleet/api/fleet_objects.py place_location): who may change a
# location there may attach, detach or make one workers-only here.
PLACERS = (ADMIN, OPERATOR)
_PLACED = "organisation_place_preview"
# what each action asks of the location (the locations API's body)
PLACES = {"attach": lambda org: {"organisation": org.code},
          "detach": lambda org: {"organisation": None},
          "workers_only": lambda org: {"workers_only": True},
          "open": lambda org: {"workers_only": False}}


def _place_form(code: str) -> dict:
    form = request.form
    return {"code": code, "action": form.get("action", ""),
            "location": (form.get("location") or "").strip()[:64],
            "reason": " ".join((form.get("reason") or "").split())[:400]}


def _place(session, org, fields: dict) -> tuple[Location, dict]:
    """The change asked, applied by the locations API's rules (not committed):
    (location, {field: [old, new]}). AuthError on a refusal."""
    if fields["action"] not in PLACES:
        raise AuthError(422, _("Choose what to do."))
    if not fields["reason"]:
        raise AuthError(422, _("Give the reason for this change."))
    location = session.scalar(select(Location).where(Location.code == fields["location"]))
    if location is None or location.district_id != org.district_id:
        raise AuthError(404, _("No location with code %(code)s in the organisation's "
                               "district.", code=fields["location"][:64] or "–"))
    if fields["action"] == "attach":
        if location.organisation_id not in (None, org.id):
            raise AuthError(409, _("%(code)s is a control point of another organisation: "
                                   "detach it there first.", code=location.code))
    elif location.organisation_id != org.id:
        raise AuthError(409, _("%(code)s is not a control point of this organisation.",
                               code=location.code))
    try:
        changes = fleet_objects.place_location(session, location,
                                               PLACES[fields["action"]](org))
    except ApiError as exc:
        raise AuthError(exc.status, exc.message) from None
    if not changes:
        raise AuthError(409, _("Nothing to change: %(code)s is so already.",
                               code=location.code))
    return location, changes


def _describe_place(org, location: Location, action: str, kiosks: int) -> tuple[str, str]:
    if action == "attach":
        return (_("Make %(location)s a control point of %(name)s.", location=location.name,
                  name=org.name),
                _("Its %(n)s kiosks close and reopen with the organisation, and may be made "
                  "workers only.", n=kiosks))
    if action == "detach":
        return (_("%(location)s is no longer a control point of %(name)s.",
                  location=location.name, name=org.name),
                _("Its %(n)s kiosks no longer follow the organisation's status.", n=kiosks))
    if action == "workers_only":
        return (_("Make %(location)s workers only.", location=location.name),
                _("Its %(n)s kiosks admit a green certificate only if its holder is on the "
                  "roster of %(name)s, from their next policy bundle, within seconds.",
                  n=kiosks, name=org.name))
    return (_("Open %(location)s to everyone.", location=location.name),
            _("Its %(n)s kiosks admit every green certificate again, from their next policy "
              "bundle.", n=kiosks))


def _kiosk_count(session, location: Location) -> int:
    return int(session.scalar(select(func.count(Kiosk.id)).where(
        Kiosk.location_id == location.id, Kiosk.state != RETIRED)))


@bp.post("/organisations/<code>/places/preview")
@page(*PLACERS)
def organisation_place_preview(code):
    session = db()
    org = _organisation(session, code)
    fields = _place_form(org.code)
    refused = None
    try:
        _place(session, org, fields)
    except AuthError as exc:
        refused = exc
    # a preview changes nothing: the rules were applied to be checked, not kept
    session.rollback()
    org = _organisation(session, code)
    if refused is not None:
        return _org_view(session, org, refused.message, refused.status)
    location = session.scalar(select(Location).where(Location.code == fields["location"]))
    summary, consequence = _describe_place(org, location, fields["action"],
                                           _kiosk_count(session, location))
    remember(_PLACED, fields)
    return render_template("organisation_confirm.html", fields=fields, summary=summary,
                           consequence=consequence,
                           apply=url_for("web.organisation_place_apply", code=org.code),
                           names=("action", "location", "reason"),
                           back=url_for("web.organisation_page", code=org.code) + "#places")


@bp.post("/organisations/<code>/places/apply")
@page(*PLACERS)
def organisation_place_apply(code):
    session = db()
    org = _organisation(session, code)
    fields = _place_form(org.code)
    confirmed(_PLACED, fields,
              _("This change was not previewed as it stands, or it has been applied "
                "already. Start again from the organisation's page, check the preview, "
                "then confirm."))
    try:
        location, changes = _place(session, org, fields)
    except AuthError:
        session.rollback()
        raise
    audit.record(session, g.actor, "location.update", location.code, reason=fields["reason"],
                 **changes)
    try:
        reissued = fleet_objects.replaced(session, location, changes)
    except ApiError as exc:
        raise AuthError(exc.status, exc.message) from None
    session.commit()
    rosters.hand_over(current_fleet().publisher, *reissued)
    return redirect(url_for("web.organisation_page", code=org.code, done=fields["action"])
                    + "#places")


@bp.post("/organisations/<code>/remind")
@page(*WATCHERS)
def organisation_remind(code):
    session = db()
    try:
        from ..api.reports import organisation_in_scope
        org = organisation_in_scope(session, code)
    except ApiError:
        raise _not_found(code) from None
    note = (request.form.get("note") or "").strip()[:400]
    compliance.remind(session, org, actor=g.actor, note=note, at=now())
    session.commit()
    return redirect(url_for("web.organisation_page", code=org.code, done="reminded")
                    + "#reminders")


# --- wards ---------------------------------------------------------------------------------------
def _wards_page(session, fields: dict | None = None, error: str | None = None,
                status: int = 200):
    return render_template("ward_list.html", wards=api.find_wards(session),
                           districts=_districts(session), kinds=WARD_KINDS,
                           may_create=caller().role in api.DECIDERS, fields=fields or {},
                           error=translated(error), done=request.args.get("done"),
                           **_names()), status


@bp.get("/wards")
@page()
def wards_page():
    return _wards_page(db())


@bp.post("/wards")
@page(*api.DECIDERS)
def ward_create():
    session = db()
    fields = {name: (request.form.get(name) or "").strip()
              for name in ("code", "name", "kind", "district")}
    try:
        ward = api.create_ward(session, {k: v for k, v in fields.items() if v})
    except ApiError as exc:
        session.rollback()
        return _wards_page(session, fields, exc.message, exc.status)
    return redirect(url_for("web.wards_page", done=ward.code))

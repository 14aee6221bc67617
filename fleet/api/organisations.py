"""Organisations and wards over the API (docs/api.md#organisations-and-wards,
docs/organisations.md). The rules are fleet/organisations.py's; this module adds who may
see and change what.

    GET   /api/v1/wards[?district=]            POST /api/v1/wards
    GET   /api/v1/wards/<code>                  PATCH /api/v1/wards/<code>
    GET   /api/v1/organisations[?district=&ward=&status=&q=&limit=&after=]
    POST  /api/v1/organisations
    GET   /api/v1/organisations/<code>          PATCH /api/v1/organisations/<code>
    POST  /api/v1/organisations/<code>/status  {"status", "reason", "quota", "lift_by"}

(The reminders, GET/POST /api/v1/organisations/<code>/reminders, are fleet/api/reports.py's.)

Scope: a district officer sees its district's wards and organisations, a ward officer its
ward's, a manager its own organisation (read only); anything outside is a 404, as if it did
not exist. Health officials read everything. The district decides: admins, operators and
the district officer of the organisation's district create, change, approve and close; a
suspension may also come from a ward officer (its ward) or a health official (after a
case), and is lifted by the role it names (the service checks it).
"""

from __future__ import annotations

from flask import g, jsonify, request
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from .. import compliance, organisations
from ..app import current_fleet, db
from ..auth import require
from ..models import (ADMIN, APPLIED, APPROVED, CLOSED, DISTRICT_OFFICER, HEALTH_OFFICIAL,
                      OPERATOR, ORG_STATUSES, RETIRED, ROLES, SUSPENDED, WARD_OFFICER, District,
                      Kiosk, Location, Organisation, Ward, Worker)
from ..organisations import OrganisationError
from ..refusals import N_, Text
from . import ApiError, bp
from .common import (CODE, CODE_RULE, caller, choice_arg, iso, json_body, keyset_page, now,
                     org_scope, page_args, pattern_arg, scope, text_field, ward_scope)

DECIDERS = (ADMIN, OPERATOR, DISTRICT_OFFICER)  # create, change, approve, close
SUSPENDERS = DECIDERS + (WARD_OFFICER, HEALTH_OFFICIAL)  # and lift, when the suspension names them
READERS = ROLES  # a manager reads its own organisation
ORG_FIELDS = {"code", "name", "kind", "district", "ward", "tax_code", "sector", "contact_name",
              "contact_phone", "contact_email"}
STATUS_FIELDS = {"status", "reason", "quota", "lift_by"}
SEARCH_MAX = 100


def _error(exc: OrganisationError) -> ApiError:
    return ApiError(exc.status, exc.message, "forbidden" if exc.status == 403 else None)


def _commit(session, conflict: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, conflict) from None


# --- scope ---------------------------------------------------------------------------------
def org_clause():
    """The conditions on Organisation for the caller's limits ([]: sees them all)."""
    conditions = []
    district, ward, organisation = scope(), ward_scope(), org_scope()
    if district is not None:
        conditions.append(Organisation.district_id == district)
    if ward is not None:
        conditions.append(Organisation.ward_id == ward)
    if organisation is not None:
        conditions.append(Organisation.id == organisation)
    return conditions


def org_visible(org: Organisation | None) -> bool:
    if org is None:
        return False
    district, ward, organisation = scope(), ward_scope(), org_scope()
    return ((district is None or org.district_id == district)
            and (ward is None or org.ward_id == ward)
            and (organisation is None or org.id == organisation))


def organisation_by_code(session, code: str) -> Organisation:
    """The organisation the caller may see; 404 otherwise (never a hint that it exists)."""
    org = session.scalar(select(Organisation).where(Organisation.code == code))
    if not org_visible(org):
        raise ApiError(404, f"no organisation with code {code!r}")
    return org


def ward_visible(ward: Ward | None) -> bool:
    if ward is None:
        return False
    district, only = scope(), ward_scope()
    return (district is None or ward.district_id == district) and (only is None or ward.id == only)


def ward_by_code(session, code: str, what: str = "ward") -> Ward:
    ward = session.scalar(select(Ward).where(Ward.code == code))
    if not ward_visible(ward):
        if ward is not None and what == "filter":
            raise ApiError(403, f"you may only see your own district or ward; ward={code!r} "
                                "is outside it", "forbidden")
        raise ApiError(404, f"no ward with code {code!r}")
    return ward


def _district_of_body(session, body) -> District:
    """The district a body names; a district officer's own one when it names none. One
    outside the caller's district is a 404 (it does not exist for them)."""
    code = text_field(body, "district", required=scope() is None, max_length=64)
    if code is None:
        return session.get(District, scope())
    district = session.scalar(select(District).where(District.code == code))
    limited = scope()
    if limited is not None and (district is None or district.id != limited):
        raise ApiError(404, Text(N_("no district with code '%(code)s'"), code=code))
    if district is None:
        raise ApiError(422, Text(N_("no district with code '%(code)s': create it first "
                                    "(POST /api/v1/districts)"), code=code))
    return district


def _ward_of_body(session, body, district_id: int) -> Ward | None:
    if body.get("ward") is None:
        return None
    code = text_field(body, "ward", required=True, max_length=64)
    ward = session.scalar(select(Ward).where(Ward.code == code))
    if ward is None or not ward_visible(ward):
        raise ApiError(422, Text(N_("no ward with code '%(code)s': create it first "
                                    "(POST /api/v1/wards)"), code=code))
    if ward.district_id != district_id:
        raise ApiError(422, Text(N_("ward '%(code)s' is in another district"), code=code))
    return ward


# --- JSON ------------------------------------------------------------------------------------
def _place(row) -> dict | None:
    return None if row is None else {"code": row.code, "name": row.name}


def ward_json(ward: Ward, district: District | None, counts: dict | None = None) -> dict:
    out = {"id": ward.id, "code": ward.code, "name": ward.name, "kind": ward.kind,
           "district": _place(district)}
    if counts is not None:
        out.update(counts)
    return out


def organisation_json(org: Organisation, district: District | None, ward: Ward | None) -> dict:
    return {"id": org.id, "code": org.code, "name": org.name, "tax_code": org.tax_code,
            "kind": org.kind, "sector": org.sector, "district": _place(district),
            "ward": _place(ward),
            "contact": {"name": org.contact_name, "phone": org.contact_phone,
                        "email": org.contact_email},
            "status": org.status, "status_since": iso(org.status_since),
            "approved_at": iso(org.approved_at), "quota": org.quota,
            "suspended_reason": (org.suspended_reason or None) if org.status == SUSPENDED
            else None,
            "lift_by": org.lift_by, "sticker": organisations.sticker(org),
            "created_at": iso(org.created_at)}


def roster_size(session, org: Organisation) -> int:
    return int(session.scalar(select(func.count(Worker.id)).where(
        Worker.organisation_id == org.id, Worker.removed_at.is_(None))))


def organisation_detail(session, org: Organisation) -> dict:
    """GET /organisations/<code>'s object (the organisation page shows the same)."""
    out = organisation_json(org, session.get(District, org.district_id),
                            session.get(Ward, org.ward_id) if org.ward_id else None)
    kiosk_count = (select(func.count(Kiosk.id))
                   .where(Kiosk.location_id == Location.id, Kiosk.state != RETIRED)
                   .correlate(Location).scalar_subquery())
    rows = session.execute(
        select(Location, Ward, kiosk_count).outerjoin(Ward, Location.ward_id == Ward.id)
        .where(Location.organisation_id == org.id).order_by(Location.code)).all()
    out["locations"] = [{"code": loc.code, "name": loc.name, "address": loc.address,
                         "ward": _place(ward), "kiosks": n,
                         "workers_only": bool(loc.workers_only)} for loc, ward, n in rows]
    codes = {loc.id: loc.code for loc, _w, _n in rows}
    out["kiosks"] = [{"id": k.id, "location": codes.get(k.location_id), "state": k.state,
                      "last_seen": iso(k.last_seen), "deployment": k.deployment,
                      "policy": k.policy} for k in organisations.kiosks_of(session, org)]
    out["history"] = [{"at": iso(c.at), "old": c.old_status, "new": c.new_status,
                       "by": c.actor, "reason": c.reason, "detail": c.detail or {}}
                      for c in organisations.history(session, org)]
    size = roster_size(session, org)
    out["roster"] = {"size": size, "quota": org.quota,
                     "room": None if org.quota is None else max(0, org.quota - size)}
    count = compliance.reminder_counts(session, [org.id]).get(org.id, 0)
    out["reminders"] = {"count": count, "flagged": org.id in compliance.flagged(session, [org.id]),
                        "flag_after": compliance.FLAG_AFTER}
    return out


# --- wards -------------------------------------------------------------------------------------
def _ward_counts():
    locations = (select(func.count(Location.id)).where(Location.ward_id == Ward.id)
                 .correlate(Ward).scalar_subquery())
    orgs = (select(func.count(Organisation.id)).where(Organisation.ward_id == Ward.id)
            .correlate(Ward).scalar_subquery())
    return locations, orgs


def find_wards(session, district: str | None = None) -> list[dict]:
    """The wards the caller may see (of one district, a code), with their counts; shared
    with the /wards page."""
    locations, orgs = _ward_counts()
    stmt = (select(Ward, District, locations, orgs)
            .join(District, Ward.district_id == District.id)
            .order_by(District.code, Ward.code))
    if scope() is not None:
        stmt = stmt.where(Ward.district_id == scope())
    if ward_scope() is not None:
        stmt = stmt.where(Ward.id == ward_scope())
    if district is not None:
        found = session.scalar(select(District).where(District.code == district))
        if found is None or (scope() is not None and found.id != scope()):
            if found is not None:
                raise ApiError(403, f"you may only see your own district; district="
                                    f"{district!r} is another one", "forbidden")
            raise ApiError(404, f"no district with code {district!r}")
        stmt = stmt.where(Ward.district_id == found.id)
    return [ward_json(w, d, {"locations": n_loc, "organisations": n_org})
            for w, d, n_loc, n_org in session.execute(stmt).all()]


def _ward_response(session, ward: Ward) -> dict:
    locations, orgs = _ward_counts()
    n_loc, n_org = session.execute(select(locations, orgs).where(Ward.id == ward.id)).one()
    return ward_json(ward, session.get(District, ward.district_id),
                     {"locations": n_loc, "organisations": n_org})


@bp.get("/wards")
@require()
def list_wards():
    return jsonify(items=find_wards(db(), pattern_arg("district", CODE, CODE_RULE)))


@bp.get("/wards/<code>")
@require()
def get_ward(code):
    session = db()
    return jsonify(_ward_response(session, ward_by_code(session, code)))


def create_ward(session, body: dict) -> Ward:
    """POST /wards's work, shared with the /wards page: ApiError on a refusal."""
    district = _district_of_body(session, body)
    code = text_field(body, "code", required=True, max_length=64)
    name = text_field(body, "name", required=True, max_length=200)
    kind = text_field(body, "kind", required=False, max_length=16) or "phuong"
    try:
        ward = organisations.create_ward(session, code=code, name=name, district=district,
                                         kind=kind, actor=g.actor)
    except OrganisationError as exc:
        raise _error(exc) from None
    _commit(session, f"a ward with code {code!r} exists already")
    return ward


@bp.post("/wards")
@require(*DECIDERS)
def post_ward():
    session = db()
    ward = create_ward(session, json_body({"code", "name", "kind", "district"}))
    return jsonify(_ward_response(session, ward)), 201


@bp.patch("/wards/<code>")
@require(*DECIDERS)
def patch_ward(code):
    session = db()
    ward = ward_by_code(session, code)
    body = json_body({"name", "kind"})
    name = text_field(body, "name", required=False, max_length=200)
    kind = text_field(body, "kind", required=False, max_length=16)
    try:
        organisations.update_ward(session, ward, actor=g.actor, name=name, kind=kind)
    except OrganisationError as exc:
        raise _error(exc) from None
    session.commit()
    return jsonify(_ward_response(session, ward))


# --- organisations -------------------------------------------------------------------------------
def _filtered(session, stmt, *, district: str | None, ward: str | None, q: str | None):
    for condition in org_clause():
        stmt = stmt.where(condition)
    if district is not None:
        found = session.scalar(select(District).where(District.code == district))
        if found is None or (scope() is not None and found.id != scope()):
            if found is not None:
                raise ApiError(403, f"you may only see your own district; district="
                                    f"{district!r} is another one", "forbidden")
            raise ApiError(404, f"no district with code {district!r}")
        stmt = stmt.where(Organisation.district_id == found.id)
    if ward is not None:
        stmt = stmt.where(Organisation.ward_id == ward_by_code(session, ward, "filter").id)
    if q:
        # a part of the name, the code or the tax code; LIKE's wildcards taken literally
        text = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        like = f"%{text}%"
        stmt = stmt.where(or_(func.lower(Organisation.name).like(like, escape="\\"),
                              Organisation.code.like(like, escape="\\"),
                              func.coalesce(Organisation.tax_code, "").like(like, escape="\\")))
    return stmt


def find_organisations(session, *, district=None, ward=None, statuses=None, q=None,
                       limit: int = 100, after: int | None = None):
    """(items, next cursor, counts by status) of the organisations the caller may see,
    newest first; counts ignore the status filter (the page's tabs). Shared with the
    /organisations page."""
    stmt = _filtered(session, select(Organisation, District, Ward)
                     .join(District, Organisation.district_id == District.id)
                     .outerjoin(Ward, Organisation.ward_id == Ward.id),
                     district=district, ward=ward, q=q)
    counted = _filtered(session, select(Organisation.status, func.count(Organisation.id))
                        .group_by(Organisation.status), district=district, ward=ward, q=q)
    counts = dict.fromkeys(ORG_STATUSES, 0)
    counts.update({s: int(n) for s, n in session.execute(counted).all()})
    if statuses:
        stmt = stmt.where(Organisation.status.in_(statuses))
    rows, cursor = keyset_page(session, stmt, Organisation.id, limit, after)
    return [organisation_json(o, d, w) for o, d, w in rows], cursor, counts


@bp.get("/organisations")
@require(*READERS)
def list_organisations():
    session = db()
    limit, after = page_args()
    q = request.args.get("q", "").strip()
    if len(q) > SEARCH_MAX:
        raise ApiError(400, f"q is {len(q)} characters long; at most {SEARCH_MAX} are allowed")
    items, cursor, counts = find_organisations(
        session, district=pattern_arg("district", CODE, CODE_RULE),
        ward=pattern_arg("ward", CODE, CODE_RULE),
        statuses=choice_arg("status", ORG_STATUSES, many=True), q=q or None,
        limit=limit, after=after)
    return jsonify(items=items, next=cursor, counts=counts)


def create_organisation(session, body: dict) -> Organisation:
    """POST /organisations's work, shared with the /organisations/new page."""
    district = _district_of_body(session, body)
    ward = _ward_of_body(session, body, district.id)
    fields = {name: text_field(body, name, required=False, max_length=200) or ""
              for name in ("sector", "contact_name", "contact_phone", "contact_email")}
    code = text_field(body, "code", required=True, max_length=64)
    try:
        org = organisations.create(
            session, code=code, name=text_field(body, "name", required=True, max_length=300),
            kind=text_field(body, "kind", required=True, max_length=16), district=district,
            ward=ward, tax_code=text_field(body, "tax_code", required=False, max_length=20),
            actor=g.actor, at=now(), **fields)
    except OrganisationError as exc:
        raise _error(exc) from None
    _commit(session, f"an organisation with code {code!r} or its tax code exists already")
    return org


@bp.post("/organisations")
@require(*DECIDERS)
def post_organisation():
    session = db()
    org = create_organisation(session, json_body(ORG_FIELDS))
    return jsonify(organisation_detail(session, org)), 201


@bp.get("/organisations/<code>")
@require(*READERS)
def get_organisation(code):
    session = db()
    return jsonify(organisation_detail(session, organisation_by_code(session, code)))


@bp.patch("/organisations/<code>")
@require(*DECIDERS)
def patch_organisation(code):
    session = db()
    org = organisation_by_code(session, code)
    update_organisation(session, org, json_body(ORG_FIELDS - {"code", "district"}))
    return jsonify(organisation_detail(session, org))


def update_organisation(session, org: Organisation, body: dict) -> dict:
    """PATCH /organisations/<code>'s work, shared with the organisation page's edit form:
    committed; returns {field: [old, new]}."""
    fields = {}
    for name in body:
        if name == "ward":
            fields["ward"] = _ward_of_body(session, body, org.district_id)
        elif name == "tax_code":
            fields[name] = text_field(body, name, required=False, max_length=20)
        else:
            fields[name] = text_field(body, name, required=name in ("name", "kind"),
                                      max_length=300 if name == "name" else 200)
    try:
        changes = organisations.update(session, org, actor=g.actor, **fields)
    except OrganisationError as exc:
        session.rollback()
        raise _error(exc) from None
    _commit(session, "an organisation with that tax code exists already")
    return changes


def change_status(session, org: Organisation, body: dict) -> tuple[dict, str]:
    """POST /organisations/<code>/status's work, shared with the organisation page: the
    change through fleet/closures.py (which re-signs the policy bundle of the kiosks it
    touches), committed, then the new bundles handed to the publisher. Returns (the
    history entry, what the publisher said)."""
    from .. import closures
    from ..bundles import ListError
    status = text_field(body, "status", required=True, max_length=16)
    if status not in ORG_STATUSES:
        raise ApiError(422, f"'status' is one of {', '.join(ORG_STATUSES)}")
    reason = text_field(body, "reason", required=False, max_length=400) or ""
    quota = body.get("quota")
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int)):
        raise ApiError(422, "'quota' is the number of workers allowed, a whole number >= 1")
    lift_by = text_field(body, "lift_by", required=False, max_length=32)
    role = caller().role
    deciding = status == CLOSED or (status == APPROVED and org.status == APPLIED)
    if deciding and role not in DECIDERS:
        raise ApiError(403, f"approving and closing are the district's (admin, operator or "
                            f"district officer), not a {role}'s", "forbidden")
    if role not in SUSPENDERS:
        raise ApiError(403, f"your role ({role}) may not change an organisation's status",
                       "forbidden")
    try:
        change, deployments = closures.change_status(
            session, current_fleet().config, org, status, actor=g.actor, role=role,
            reason=reason, quota=quota, lift_by=lift_by, at=now())
    except OrganisationError as exc:
        session.rollback()
        raise _error(exc) from None
    except ListError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message,
                       "not_set_up" if exc.status == 503 else None) from None
    session.commit()
    published = closures.publish(current_fleet().publisher, deployments)
    entry = {"at": iso(change.at), "old": change.old_status, "new": change.new_status,
             "by": change.actor, "reason": change.reason, "detail": change.detail or {}}
    return entry, published


@bp.post("/organisations/<code>/status")
@require(*SUSPENDERS)
def post_status(code):
    session = db()
    org = organisation_by_code(session, code)
    entry, published = change_status(session, org, json_body(STATUS_FIELDS))
    out = organisation_detail(session, org)
    out["change"], out["published"] = entry, published
    return jsonify(out)


"""Districts, locations, kiosks, presence and outages (docs/api.md).

Everyone logged in reads; a district officer reads only their district (every
query here filters on `common.scope()`); admins and operators create and change,
and every change is written to the audit log in the same transaction.
"""

from __future__ import annotations

import re

from flask import g, jsonify, request
from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.exc import IntegrityError

from .. import audit, bridges, kiosks, quarantine
from ..presence import BRIDGE_DETAIL
from ..app import current_fleet, db
from ..auth import require
from ..refusals import N_, Text
from ..models import (ADMIN, DEGRADED, NEVER_SEEN, OFFLINE, ONLINE, OPERATOR, RETIRED, ROLES,
                      STATES, UNREACHABLE, District, Kiosk, Location, Organisation, Outage,
                      PresenceEvent, PublishedBundle, Scan, Ward)
from . import ApiError, bp
from .common import (CODE, CODE_RULE, bool_arg, choice_arg, district_by_code, int_arg, iso,
                     json_body, keyset_page, location_by_code, location_clause, now, page_args,
                     pattern_arg,
                     scope, text_field, time_range)

KIOSK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # docs/protocol.md
KIOSK_RULE = "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# what a heartbeat reports as applied; a kiosk without a valuesets bundle uses its
# vendored copy (docs/protocol.md#heartbeat), so only the first three can be missing
BUNDLE_KINDS = ("trust", "policy", "status", "valuesets")
REQUIRED_KINDS = ("trust", "policy", "status")
# order=attention: outages first, then problems, then the quiet ones.
ATTENTION = (OFFLINE, UNREACHABLE, DEGRADED, NEVER_SEEN, ONLINE, RETIRED)
KIOSK_PAGE = 500
CONNECTED = (ONLINE, DEGRADED)


# --- shared pieces ---------------------------------------------------------------------
def _district_json(d: District | None, counts: dict | None = None) -> dict | None:
    if d is None:
        return None
    out = {"id": d.id, "code": d.code, "name": d.name}
    if counts is not None:
        out.update(counts)
    return out


def _location_json(loc: Location, district: District | None, kiosks: int | None = None,
                   ward=None, organisation=None) -> dict:
    out = {"id": loc.id, "code": loc.code, "name": loc.name, "address": loc.address,
           "district": _district_json(district),
           "ward": None if ward is None else {"code": ward.code, "name": ward.name},
           "organisation": None if organisation is None else {
               "code": organisation.code, "name": organisation.name,
               "status": organisation.status},
           "workers_only": bool(loc.workers_only)}
    if kiosks is not None:
        out["kiosks"] = kiosks
    return out


def current_versions(session) -> dict[str, dict[str, int]]:
    """The fleet's newest published version per deployment of trust, policy, status and
    valuesets (a status delta's version is a status version too)."""
    rows = session.execute(
        select(PublishedBundle.deployment, PublishedBundle.kind, func.max(PublishedBundle.version))
        .where(PublishedBundle.kind.in_(BUNDLE_KINDS + ("status-delta",)))
        .group_by(PublishedBundle.deployment, PublishedBundle.kind)).all()
    versions: dict[str, dict[str, int]] = {}
    for deployment, kind, version in rows:
        kind = "status" if kind == "status-delta" else kind
        per = versions.setdefault(deployment, {})
        per[kind] = max(version, per.get(kind, version))
    return versions


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _faults(value) -> list[dict] | None:
    if not isinstance(value, list):
        return None
    return [{"kind": f.get("kind"), "detail": f.get("detail")} for f in value
            if isinstance(f, dict)]


def _roster_held(value) -> dict | None:
    if not isinstance(value, dict):
        return None
    org, version = value.get("organisation"), value.get("version")
    if not isinstance(org, str) or type(version) is not int:
        return None
    return {"organisation": org, "version": version}


def kiosk_json(k: Kiosk, loc: Location | None, district: District | None, versions: dict,
               at: float, quarantined: int = 0) -> dict:
    """A kiosk object. quarantined: its messages in the quarantine table (the caller
    counts them for a whole page at once: quarantined_counts)."""
    hb = k.heartbeat if isinstance(k.heartbeat, dict) else {}
    applied_raw = hb.get("bundles") if isinstance(hb.get("bundles"), dict) else {}
    current = versions.get(k.deployment, {})
    applied, behind = {}, {}
    for kind in BUNDLE_KINDS:
        have = applied_raw.get(kind)
        have = have if isinstance(have, int) and not isinstance(have, bool) else None
        applied[kind] = have
        fleet = current.get(kind)
        if fleet is None:
            behind[kind] = 0  # nothing published yet: nothing to be behind
        elif have is None:
            # the kiosk holds none (or never reported): see `applied`; value sets: it
            # uses its vendored copy, not counted as behind
            behind[kind] = None if kind in REQUIRED_KINDS else 0
        else:
            behind[kind] = max(0, fleet - have)
    known = [b for b in behind.values() if b is not None]
    missing = [kind for kind in REQUIRED_KINDS if behind[kind] is None]
    return {
        "id": k.id,
        "location": None if loc is None else {"id": loc.id, "code": loc.code, "name": loc.name},
        "district": _district_json(district),
        "deployment": k.deployment,
        "policy": k.policy,
        # the policy the kiosk says it applies (None: never reported, or a kiosk older
        # than the field); a lasting difference makes it degraded (fleet/presence.py)
        "policy_applied": hb.get("policy") if isinstance(hb.get("policy"), str) else None,
        # what the kiosk said it holds (None: nothing, or a kiosk older than the fields):
        # its organisation's roster, and the organisation whose closing closes the place
        "roster": _roster_held(hb.get("roster")),
        "closed": hb.get("closed") if isinstance(hb.get("closed"), str) else None,
        "state": k.state,
        "state_since": iso(k.state_since),
        "detail": k.detail,
        "last_seen": iso(k.last_seen),
        "seconds_since_seen": None if k.last_seen is None else round(max(0.0, at - k.last_seen), 1),
        "session": k.session,
        "enrolled_at": iso(k.enrolled_at),
        "retired_at": iso(k.retired_at),
        "bundles": {"applied": applied,
                    "current": {kind: current.get(kind) for kind in BUNDLE_KINDS},
                    "behind": behind,
                    "behind_total": sum(known),
                    "missing": missing},
        "outbox": _number(hb.get("outbox")),
        "overflow": _number(hb.get("overflow")),
        # the kiosk's own faults, most urgent first ([] from a kiosk without any; None
        # from a kiosk older than the field), and its decisions held only in memory /
        # lost in full (kept as a count) because its storage failed
        "faults": _faults(hb.get("faults")),
        "memory": _number(hb.get("memory")),
        "lost": _number(hb.get("lost")),
        "clock": hb.get("clock"),
        "lists": hb.get("lists"),
        "cpu_temp": _number(hb.get("cpu_temp")),
        "uptime": _number(hb.get("uptime")),
        "heartbeat_ts": iso(_number(hb.get("ts"))),
        # decisions the kiosk says the fleet confirmed that the fleet does not hold
        # (fleet/gaps.py): seq_missing > 0 is data lost for good
        "gap": {"seq_reported": k.seq_reported, "seq_checked": k.seq_checked or 0,
                "seq_missing": k.seq_missing or 0},
        "quarantined": quarantined,
    }


def quarantined_counts(session, ids) -> dict[str, int]:
    """Quarantined messages per kiosk of `ids` (one grouped query for a page of kiosks)."""
    ids = set(ids)
    if not ids:
        return {}
    # a long IN list costs more than the grouped index scan of the whole (small) table
    counts = quarantine.count_by_kiosk(session, ids if len(ids) <= 500 else None)
    return {k: n for k, n in counts.items() if k in ids}


def _kiosk_select():
    return (select(Kiosk, Location, District)
            .outerjoin(Location, Kiosk.location_id == Location.id)
            .outerjoin(District, Location.district_id == District.id))


def _scoped_kiosks(stmt):
    """`stmt` (joining Location) limited to the caller's district, ward or organisation."""
    clause = location_clause()
    return stmt if clause is None else stmt.where(clause)


def _get_kiosk(session, kiosk_id: str):
    row = session.execute(_scoped_kiosks(_kiosk_select()).where(Kiosk.id == kiosk_id)).first()
    if row is None:
        raise ApiError(404, f"no kiosk {kiosk_id!r}")
    return row


def _commit(session, conflict: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, conflict) from None


# --- districts ---------------------------------------------------------------------------
@bp.get("/districts")
@require()
def list_districts():
    session = db()
    clause = location_clause()  # a ward officer counts only its ward's
    mine = [Location.district_id == District.id] + ([clause] if clause is not None else [])
    locations = (select(func.count(Location.id)).where(*mine)
                 .correlate(District).scalar_subquery())
    kiosks = (select(func.count(Kiosk.id)).join(Location, Kiosk.location_id == Location.id)
              .where(*mine).correlate(District).scalar_subquery())
    stmt = select(District, locations, kiosks).order_by(District.code)
    limited = scope()
    if limited is not None:
        stmt = stmt.where(District.id == limited)
    items = [_district_json(d, {"locations": n_loc, "kiosks": n_k})
             for d, n_loc, n_k in session.execute(stmt).all()]
    return jsonify(items=items)


@bp.get("/districts/<code>")
@require()
def get_district(code):
    session = db()
    return jsonify(_district_response(session, district_by_code(session, code)))


def _district_response(session, district: District) -> dict:
    # a ward officer counts only its ward's locations and kiosks
    clause = location_clause()
    mine = [Location.district_id == district.id] + ([clause] if clause is not None else [])
    n_loc = session.scalar(select(func.count(Location.id)).where(*mine))
    n_k = session.scalar(select(func.count(Kiosk.id))
                         .join(Location, Kiosk.location_id == Location.id).where(*mine))
    return _district_json(district, {"locations": n_loc, "kiosks": n_k})


@bp.post("/districts")
@require(ADMIN, OPERATOR)
def create_district():
    session = db()
    body = json_body({"code", "name"})
    code = text_field(body, "code", required=True, max_length=64, pattern=CODE, rule=CODE_RULE)
    name = text_field(body, "name", required=True, max_length=200)
    if session.scalar(select(District.id).where(District.code == code)) is not None:
        raise ApiError(409, f"a district with code {code!r} exists already")
    district = District(code=code, name=name)
    session.add(district)
    audit.record(session, _actor(), "district.create", code, name=name)
    _commit(session, f"a district with code {code!r} exists already")
    return jsonify(_district_json(district, {"locations": 0, "kiosks": 0})), 201


def _code_and_name(session, row, model, body, what: str) -> dict:
    """A PATCH of a district's or location's code and name, applied to row: the changes
    as {field: [old, new]} for the audit log."""
    changes = {}
    new_code = text_field(body, "code", required=False, max_length=64, pattern=CODE, rule=CODE_RULE)
    if new_code is not None and new_code != row.code:
        if session.scalar(select(model.id).where(model.code == new_code)) is not None:
            raise ApiError(409, f"a {what} with code {new_code!r} exists already")
        changes["code"] = [row.code, new_code]
        row.code = new_code
    if "name" in body:
        name = text_field(body, "name", required=True, max_length=200)
        if name != row.name:
            changes["name"] = [row.name, name]
            row.name = name
    return changes


@bp.patch("/districts/<code>")
@require(ADMIN, OPERATOR)
def update_district(code):
    session = db()
    district = district_by_code(session, code)
    body = json_body({"code", "name"})
    changes = _code_and_name(session, district, District, body, "district")
    if changes:
        audit.record(session, _actor(), "district.update", code, **changes)
        _commit(session, f"a district with code {district.code!r} exists already")
    return jsonify(_district_response(session, district))


# --- locations ---------------------------------------------------------------------------
@bp.get("/locations")
@require()
def list_locations():
    session = db()
    kiosks = (select(func.count(Kiosk.id)).where(Kiosk.location_id == Location.id)
              .correlate(Location).scalar_subquery())
    stmt = (select(Location, District, kiosks, Ward, Organisation)
            .outerjoin(District, Location.district_id == District.id)
            .outerjoin(Ward, Location.ward_id == Ward.id)
            .outerjoin(Organisation, Location.organisation_id == Organisation.id)
            .order_by(District.code.nulls_last(), Location.code))
    clause = location_clause()
    if clause is not None:
        stmt = stmt.where(clause)
    code = pattern_arg("district", CODE, CODE_RULE)
    if code is not None:
        stmt = stmt.where(Location.district_id == district_by_code(session, code, "filter").id)
    items = [_location_json(loc, d, n, w, o) for loc, d, n, w, o in session.execute(stmt).all()]
    return jsonify(items=items)


def _location_response(session, location: Location):
    district = session.get(District, location.district_id) if location.district_id else None
    n = session.scalar(select(func.count(Kiosk.id)).where(Kiosk.location_id == location.id))
    return _location_json(
        location, district, n, session.get(Ward, location.ward_id) if location.ward_id else None,
        session.get(Organisation, location.organisation_id) if location.organisation_id else None)


def _place_fields(session, body, location: Location) -> dict:
    """The body's "ward" and "organisation" (codes, or null for none) applied to
    `location` after its district: both must be of that district, and the ward must be the
    organisation's when it has one. Returns {field: [old, new]} for the audit log."""
    changes = {}
    for field, model in (("ward", Ward), ("organisation", Organisation)):
        if field not in body:
            continue
        row = None
        if body[field] is not None:
            code = text_field(body, field, required=True, max_length=64)
            row = session.scalar(select(model).where(model.code == code))
            if row is None:
                raise ApiError(422, f"no {field} with code {code!r}: create it first "
                                    f"(POST /api/v1/{field}s)")
        column = f"{field}_id"
        old_id = getattr(location, column)
        if (row.id if row else None) != old_id:
            old = session.get(model, old_id) if old_id else None
            changes[field] = [old.code if old else None, row.code if row else None]
            setattr(location, column, row.id if row else None)
    ward = session.get(Ward, location.ward_id) if location.ward_id else None
    org = session.get(Organisation, location.organisation_id) if location.organisation_id \
        else None
    # a move to another district must take (or drop) its ward and organisation with it
    for what, row in (("ward", ward), ("organisation", org)):
        if row is not None and row.district_id != location.district_id:
            raise ApiError(422, Text(N_("%(what)s '%(code)s' is not in the location's "
                                        "district: name one of that district, or null for "
                                        "none"), what=what, code=row.code))
    if ward is not None and org is not None and org.ward_id is not None \
            and org.ward_id != ward.id:
        raise ApiError(422, Text(N_("organisation '%(code)s' is in another ward than "
                                    "'%(ward)s': a control point is in its organisation's "
                                    "ward"), code=org.code, ward=ward.code))
    return changes


@bp.get("/locations/<code>")
@require()
def get_location(code):
    session = db()
    return jsonify(_location_response(session, location_by_code(session, code)))


def _referenced(session, body, field: str, model=None):
    """The district or location a body names by its code; 422 saying how to create it."""
    model = model or {"location": Location, "district": District}[field]
    code = text_field(body, field, required=True, max_length=64)
    row = session.scalar(select(model).where(model.code == code))
    if row is None:
        raise ApiError(422, f"no {field} with code {code!r}: create it first "
                            f"(POST /api/v1/{field}s)")
    return row


def _district_field(session, body) -> District:
    return _referenced(session, body, "district", District)


@bp.post("/locations")
@require(ADMIN, OPERATOR)
def create_location():
    session = db()
    body = json_body({"code", "name", "address", "district", "ward", "organisation",
                      "workers_only"})
    code = text_field(body, "code", required=True, max_length=64, pattern=CODE, rule=CODE_RULE)
    name = text_field(body, "name", required=True, max_length=200)
    address = text_field(body, "address", required=False, max_length=400) or ""
    district = _district_field(session, body)
    if session.scalar(select(Location.id).where(Location.code == code)) is not None:
        raise ApiError(409, f"a location with code {code!r} exists already")
    location = Location(code=code, name=name, address=address, district_id=district.id)
    placed = {k: v[1] for k, v in _place_fields(session, body, location).items()}
    placed.update({k: v[1] for k, v in _workers_only_field(body, location).items()})
    session.add(location)
    audit.record(session, _actor(), "location.create", code, name=name, district=district.code,
                 **placed)
    _commit(session, f"a location with code {code!r} exists already")
    return jsonify(_location_response(session, location)), 201


@bp.patch("/locations/<code>")
@require(ADMIN, OPERATOR)
def update_location(code):
    session = db()
    location = location_by_code(session, code)
    body = json_body({"code", "name", "address", "district", "ward", "organisation",
                      "workers_only"})
    changes = _code_and_name(session, location, Location, body, "location")
    if "address" in body:
        address = text_field(body, "address", required=False, max_length=400) or ""
        if address != location.address:
            changes["address"] = [location.address, address]
            location.address = address
    if "district" in body:
        district = _district_field(session, body)
        if district.id != location.district_id:
            old = session.get(District, location.district_id) if location.district_id else None
            changes["district"] = [old.code if old else None, district.code]
            location.district_id = district.id
    changes.update(place_location(session, location, body))
    reissued = ([], [])
    if changes:
        audit.record(session, _actor(), "location.update", code, **changes)
        reissued = replaced(session, location, changes)
        _commit(session, f"a location with code {location.code!r} exists already")
        _hand_over(reissued)
    return jsonify(_location_response(session, location))


def place_location(session, location: Location, body: dict) -> dict:
    """The body's "ward", "organisation" and "workers_only" applied to `location` by the
    rules of a control point (no commit, no bundle): {field: [old, new]}. ApiError on a
    refusal. Shared with the organisation page's control points."""
    changes = _place_fields(session, body, location)
    changes.update(_workers_only_field(body, location))
    return changes


def replaced(session, location: Location, changes: dict) -> tuple[list[str], list[str]]:
    """After place_location's `changes`: its kiosks' policy bundle (workers_only map) and
    rosters (the kiosks they name) re-signed when they need it, for _hand_over after the
    commit."""
    if not {"workers_only", "organisation"} & set(changes):
        return [], []
    return _placement_changed(session, session.scalars(
        select(Kiosk.id).where(Kiosk.location_id == location.id)).all())


def _workers_only_field(body, location: Location) -> dict:
    """The body's "workers_only" (true: only its organisation's roster is admitted);
    {"workers_only": [old, new]} when it changes. A workers-only place needs an
    organisation (whose roster?)."""
    if "workers_only" in body:
        value = body["workers_only"]
        if not isinstance(value, bool):
            raise ApiError(422, "'workers_only' must be true or false")
    else:
        value = bool(location.workers_only)
    if value and location.organisation_id is None:
        raise ApiError(422, Text(N_("a workers-only location must be an organisation's "
                                    "control point: name its organisation")))
    if value != bool(location.workers_only):
        old = bool(location.workers_only)
        location.workers_only = value
        return {"workers_only": [old, value]}
    return {}


def _placement_changed(session, kiosk_ids) -> tuple[list[str], list[str]]:
    from .. import rosters
    from ..bundles import ListError
    try:
        return rosters.placement_changed(session, current_fleet().config, kiosk_ids,
                                         actor=_actor(), at=now())
    except ListError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message,
                       "not_set_up" if exc.status == 503 else None) from None


def _hand_over(reissued) -> str:
    from .. import rosters
    return rosters.hand_over(current_fleet().publisher, *reissued)


# --- kiosks --------------------------------------------------------------------------------
@bp.get("/kiosks")
@require(*ROLES)  # a manager too: its organisation's kiosks (location_clause)
def list_kiosks():
    """The fleet map: filters district, location, state (comma list), deployment, behind;
    order=map (district, location, id; default) or attention (outages first, longest first)."""
    session = db()
    at = now()
    # Pages of `limit` (default 500): a whole 10,000-kiosk fleet in one answer is 7 MB
    # and about a second of work (bench/dashboard.py). Offsets, not a keyset: the orders
    # are by place and state, and a fleet's kiosk list changes slowly.
    limit = int_arg("limit", KIOSK_PAGE, 1, 10_000)
    offset = int_arg("offset", 0, 0)
    items = find_kiosks(
        session, at, district=pattern_arg("district", CODE, CODE_RULE),
        location=pattern_arg("location", CODE, CODE_RULE),
        states=choice_arg("state", STATES, many=True),
        deployment=pattern_arg("deployment", CODE, CODE_RULE),
        order=choice_arg("order", ("map", "attention", "id"), "map"),
        behind=bool_arg("behind", None), limit=limit + 1, offset=offset)
    more = len(items) > limit
    return jsonify(items=items[:limit], at=iso(at), next_offset=offset + limit if more else None)


def find_kiosks(session, at: float, *, district: str | None = None, location: str | None = None,
                states=None, deployment: str | None = None, order: str = "map",
                behind: bool | None = None, limit: int | None = None, offset: int = 0,
                search: str | None = None, ids=None, count: bool = False,
                only_ids: bool = False):
    """Kiosk objects in the caller's scope, filtered and ordered as GET /kiosks does; shared
    with the dashboard's pages (fleet/web/) so both show the same fleet. `district` and
    `location` are codes (another district's: ApiError 403); `search` is a case-insensitive
    part of the kiosk id (the dashboard's search box); `ids` keeps only those kiosks.
    count=True: how many match (no `behind` filter), not the objects (the paged list);
    only_ids=True: the matching ids in order, not the objects."""
    stmt = _scoped_kiosks(_kiosk_select())
    if district is not None:
        stmt = stmt.where(Location.district_id == district_by_code(session, district, "filter").id)
    if location is not None:
        stmt = stmt.where(Kiosk.location_id == location_by_code(session, location, "filter").id)
    if states:
        stmt = stmt.where(Kiosk.state.in_(states))
    if deployment is not None:
        stmt = stmt.where(Kiosk.deployment == deployment)
    if search:
        # ids are letters, digits, '_', '.', '-': escape LIKE's own wildcards all the same
        text = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(Kiosk.id).like(f"%{text}%", escape="\\"))
    if ids is not None:  # a list, or a Select of ids (the dashboard's silent filter)
        stmt = stmt.where(Kiosk.id.in_(ids if isinstance(ids, Select) else list(ids)))
    if count:
        only_ids = stmt.with_only_columns(Kiosk.id, maintain_column_froms=True)
        return int(session.scalar(select(func.count()).select_from(only_ids.subquery())))
    if order == "attention":
        rank = case(*((Kiosk.state == s, i) for i, s in enumerate(ATTENTION)), else_=len(ATTENTION))
        stmt = stmt.order_by(rank, func.coalesce(Kiosk.state_since, Kiosk.enrolled_at, 0.0),
                             Kiosk.id)
    elif order == "map":
        stmt = stmt.order_by(District.code.nulls_last(), Location.code.nulls_last(), Kiosk.id)
    else:
        stmt = stmt.order_by(Kiosk.id)
    if only_ids:
        return list(session.scalars(stmt.with_only_columns(Kiosk.id,
                                                            maintain_column_froms=True)))
    if limit is not None and behind is None:
        # the page's ids first, sorting narrow rows; then those rows in full: sorting whole
        # rows (heartbeat JSON) to skip thousands took 100 ms at 10,000 kiosks (bench)
        page = stmt.with_only_columns(Kiosk.id, maintain_column_froms=True) \
            .limit(limit).offset(offset)
        stmt = stmt.where(Kiosk.id.in_(page.scalar_subquery()))
    versions = current_versions(session)
    rows = session.execute(stmt).all()
    counts = quarantined_counts(session, [k.id for k, _, _ in rows])
    items = [kiosk_json(k, loc, d, versions, at, counts.get(k.id, 0)) for k, loc, d in rows]
    if behind is not None:  # computed from the versions: filtered here, then paged
        items = [i for i in items if (i["bundles"]["behind_total"] > 0 or bool(i["bundles"]["missing"]))
                 == behind]
        items = items[offset:offset + limit] if limit is not None else items[offset:]
    return items


@bp.get("/kiosks/<kiosk_id>")
@require(*ROLES)
def get_kiosk(kiosk_id):
    """One kiosk, its recent presence events (newest first), outages and scan activity."""
    return jsonify(kiosk_detail(db(), kiosk_id, now(), events=int_arg("events", 50, 0, 1000),
                                outages=int_arg("outages", 20, 0, 1000)))


def kiosk_detail(session, kiosk_id: str, at: float, *, events: int = 50,
                 outages: int = 20) -> dict:
    """GET /kiosks/<id>'s object (also the dashboard's kiosk page): a kiosk outside the
    caller's scope is ApiError 404, as if it did not exist."""
    k, loc, d = _get_kiosk(session, kiosk_id)
    out = kiosk_json(k, loc, d, current_versions(session), at,
                     quarantined_counts(session, [k.id]).get(k.id, 0))
    rows = session.scalars(select(PresenceEvent).where(PresenceEvent.kiosk_id == k.id)
                           .order_by(PresenceEvent.at.desc(), PresenceEvent.id.desc())
                           .limit(events)).all()
    out["events"] = [{"at": iso(e.at), "previous": e.previous, "state": e.state,
                      "session": e.session, "detail": e.detail} for e in rows]
    rows = session.scalars(select(Outage).where(Outage.kiosk_id == k.id)
                           .order_by(Outage.started.desc(), Outage.id.desc())
                           .limit(outages)).all()
    out["outages"] = [_outage_json(o, at) for o in rows]
    out["last_scan"] = iso(session.scalar(select(func.max(Scan.ts)).where(Scan.kiosk_id == k.id)))
    out["scans_last_hour"] = session.scalar(select(func.count(Scan.id)).where(
        Scan.kiosk_id == k.id, Scan.ts >= at - 3600, Scan.ts <= at))
    return out


def _check_deployment(deployment: str) -> None:
    try:
        kiosks.check_deployment(current_fleet().config, deployment)
    except kiosks.KioskError as exc:
        raise ApiError(exc.status, exc.message) from None


def _check_policy(session, deployment: str, name: str) -> None:
    try:
        kiosks.check_policy(session, deployment, name)
    except kiosks.KioskError as exc:
        raise ApiError(exc.status, exc.message) from None


def _location_field(session, body) -> Location | None:
    if body.get("location") is None:
        return None
    return _referenced(session, body, "location", Location)


@bp.post("/kiosks")
@require(ADMIN, OPERATOR)
def create_kiosk():
    """Enrol a kiosk's record (its certificate comes from provisioning)."""
    session = db()
    body = json_body({"id", "location", "deployment", "policy"})
    kiosk_id = text_field(body, "id", required=True, max_length=63, pattern=KIOSK_ID,
                          rule=KIOSK_RULE)
    deployments = current_fleet().config.fleet.deployments
    deployment = text_field(body, "deployment", required=len(deployments) > 1, max_length=64)
    deployment = deployment or deployments[0]
    _check_deployment(deployment)
    policy = text_field(body, "policy", required=False, max_length=64, pattern=POLICY_NAME,
                        rule=CODE_RULE) or "hcmc-2021"
    _check_policy(session, deployment, policy)
    location = _location_field(session, body)
    at = now()
    try:
        kiosks.register(session, current_fleet().config, kiosk_id=kiosk_id,
                        deployment=deployment, policy=policy, location=location,
                        actor=_actor(), at=at)
    except kiosks.KioskError as exc:
        raise ApiError(exc.status, exc.message) from None
    reissued = ([], [])
    if location is not None and location.organisation_id:
        # at an organisation's control point: named in its roster (and in the policy
        # bundle's workers_only map) before its first scan
        reissued = _placement_changed(session, [kiosk_id])
    _commit(session, f"a kiosk {kiosk_id!r} exists already")
    _hand_over(reissued)
    return jsonify(_kiosk_response(session, kiosk_id, at)), 201


def _kiosk_response(session, kiosk_id: str, at: float) -> dict:
    k, loc, d = _get_kiosk(session, kiosk_id)
    return kiosk_json(k, loc, d, current_versions(session), at,
                      quarantined_counts(session, [k.id]).get(k.id, 0))


@bp.patch("/kiosks/<kiosk_id>")
@require(ADMIN, OPERATOR)
def update_kiosk(kiosk_id):
    """Move a kiosk to another location ({"location": CODE or null}) or assign it a policy
    ({"policy": NAME}, as `greengate-fleet policies assign`: a new policy bundle carries
    the assignment and is handed to the publisher)."""
    session = db()
    kiosk = _get_kiosk(session, kiosk_id)[0]
    body = json_body({"location", "policy", "reason"})
    reason = text_field(body, "reason", required=False, max_length=400) or ""
    if kiosk.state == RETIRED:
        raise ApiError(409, f"kiosk {kiosk_id!r} is retired; enrol a new kiosk instead")
    changes = {}
    if "location" in body:
        location = _location_field(session, body)
        new_id = location.id if location else None
        if new_id != kiosk.location_id:
            old = session.get(Location, kiosk.location_id) if kiosk.location_id else None
            changes["location"] = [old.code if old else None, location.code if location else None]
            kiosk.location_id = new_id
            # at or from an organisation's control point: its rosters and closures follow
            placed = any(p is not None and p.organisation_id for p in (old, location))
    policy, resend = None, []
    if "policy" in body:
        policy = text_field(body, "policy", required=True, max_length=64, pattern=POLICY_NAME,
                            rule=CODE_RULE)
        _check_policy(session, kiosk.deployment, policy)
        beat = kiosk.heartbeat if isinstance(kiosk.heartbeat, dict) else {}
        applied = beat.get("policy")
        # the same policy again, while the kiosk applies another: sign it anew (a record
        # changed before assignments went into the bundle never reached the kiosk)
        resend = [kiosk_id] if isinstance(applied, str) and applied != policy else []
        if policy != kiosk.policy or resend:
            _signing_key()  # 503 now, before the location is changed, when there is none
    reissued = ([], [])
    if changes:
        if reason:
            changes["reason"] = reason
        audit.record(session, _actor(), "kiosk.update", kiosk_id, **changes)
        if "location" in changes and placed:
            reissued = _placement_changed(session, [kiosk_id])
        session.commit()
        _hand_over(reissued)
    if policy is not None and (policy != kiosk.policy or resend):
        assign_policy(session, policy, [kiosk_id], reason, resend=resend)
    return jsonify(_kiosk_response(session, kiosk_id, now()))


def _signing_key():
    from .. import bundles
    from ..bundles import ListError
    try:
        return bundles.load_signing_key(current_fleet().config)
    except ListError as exc:
        raise ApiError(exc.status, exc.message,
                       "not_set_up" if exc.status == 503 else None) from None


def assign_policy(session, policy: str, kiosk_ids, reason: str,
                  resend=()) -> tuple[int | None, str]:
    """Assign through fleet/policies.py (audited, a new policy bundle version), then hand
    the bundle to the publisher; (policy version, what the publisher said)."""
    from .. import policies
    from ..bundles import ListError
    from ..publisher import hand_off
    config = current_fleet().config
    try:
        version, changed = policies.assign(session, config, policy, kiosk_ids, actor=_actor(),
                                           reason=reason, now=now(), resend=resend)
    except ListError as exc:
        raise ApiError(exc.status, exc.message,
                       "not_set_up" if exc.status == 503 else None) from None
    if not changed:
        return version, "nothing changed"
    published = "nothing changed"
    for deployment in sorted({session.get(Kiosk, k).deployment for k in changed}):
        published = hand_off(current_fleet().publisher, deployment, {"policy"})
    return version, published


@bp.post("/policies/<deployment>/<name>/assign")
@require(ADMIN, OPERATOR)
def assign_policy_many(deployment, name):
    """Assign policy `name` to kiosks of `deployment`: {"kiosks": [id, ...]} or
    {"location": CODE} or {"district": CODE} (every kiosk there not retired), and
    "reason". One new policy bundle carries them all."""
    from .. import policies
    from ..bundles import ListError
    session = db()
    _check_deployment(deployment)
    body = json_body({"kiosks", "location", "district", "reason"})
    reason = text_field(body, "reason", required=False, max_length=400) or ""
    named = [f for f in ("kiosks", "location", "district") if body.get(f) is not None]
    if len(named) != 1:
        raise ApiError(422, "name exactly one of 'kiosks' (a list of kiosk ids), 'location' "
                            "or 'district' (a code)")
    _check_policy(session, deployment, name)
    try:
        if named[0] == "kiosks":
            ids = body["kiosks"]
            if not isinstance(ids, list) or not ids or len(ids) > 10_000 or not all(
                    isinstance(i, str) and KIOSK_ID.match(i) for i in ids):
                raise ApiError(422, f"'kiosks' is a list of 1 to 10000 kiosk ids ({KIOSK_RULE})")
            found = policies.targets(session, deployment, kiosks=ids)
        else:
            found = policies.place_targets(session, deployment, named[0],
                                           _referenced(session, body, named[0]).code)
    except ListError as exc:
        raise ApiError(exc.status, exc.message) from None
    before = {k.id: k.policy for k in found}
    if not found:
        raise ApiError(404, f"no kiosk of deployment {deployment!r} is there (retired ones "
                            "are left out)")
    version, published = assign_policy(session, name, list(before), reason)
    return jsonify(policy=name, version=version, published=published,
                   assigned=sorted(k for k, p in before.items() if p != name),
                   unchanged=sorted(k for k, p in before.items() if p == name))


@bp.post("/kiosks/<kiosk_id>/retire")
@require(ADMIN, OPERATOR)
def retire_kiosk(kiosk_id):
    """Mark a kiosk retired and its certificates revoked in the database (the broker's
    CRL and the live session are provisioning's: `greengate-provision retire`).
    Body (optional): {"reason": "..."}."""
    session = db()
    kiosk = _get_kiosk(session, kiosk_id)[0]
    body = json_body({"reason"}) if _has_body() else {}
    reason = text_field(body, "reason", required=False, max_length=400) or ""
    at = now()
    try:
        kiosks.retire(session, kiosk, reason=reason, actor=_actor(), at=at)
    except kiosks.KioskError as exc:
        raise ApiError(exc.status, exc.message) from None
    session.commit()
    return jsonify(_kiosk_response(session, kiosk_id, at))


def _has_body() -> bool:
    return bool(request.get_data(cache=True))


def _actor() -> str:
    return g.actor


# --- presence ------------------------------------------------------------------------------
@bp.get("/presence")
@require()
def presence():
    """Kiosks by state, in total and per district."""
    session = db()
    stmt = (select(District, Kiosk.state, func.count(Kiosk.id))
            .select_from(Kiosk)
            .outerjoin(Location, Kiosk.location_id == Location.id)
            .outerjoin(District, Location.district_id == District.id)
            .group_by(District.id, District.code, District.name, Kiosk.state))
    stmt = _scoped_kiosks(stmt)
    totals = dict.fromkeys(STATES, 0)
    per: dict = {}
    for district, state, count in session.execute(stmt).all():
        key = district.id if district is not None else None
        entry = per.setdefault(key, {"district": _district_json(district),
                                     "states": dict.fromkeys(STATES, 0), "total": 0})
        entry["states"][state] = entry["states"].get(state, 0) + count
        entry["total"] += count
        totals[state] = totals.get(state, 0) + count
    districts = sorted(per.values(), key=lambda e: (e["district"] is None,
                                                    e["district"]["code"] if e["district"] else ""))
    # Districts without kiosks are listed too (a map shows them empty).
    listed = {e["district"]["id"] for e in districts if e["district"]}
    empty = select(District).order_by(District.code)
    limited = scope()
    if limited is not None:
        empty = empty.where(District.id == limited)
    for d in session.scalars(empty):
        if d.id not in listed:
            districts.append({"district": _district_json(d), "states": dict.fromkeys(STATES, 0),
                              "total": 0})
    districts.sort(key=lambda e: (e["district"] is None,
                                  e["district"]["code"] if e["district"] else ""))
    return jsonify(at=iso(now()), states=totals, total=sum(totals.values()), districts=districts)


@bp.get("/bridges")
@require()
def list_bridges():
    """District brokers' bridges to the core (docs/scaling.md): state, since, how many
    of the caller's kiosks are unreachable through each, and the CRL each applies."""
    return jsonify(at=iso(now()), bridges=bridge_rows(db()))


def bridge_rows(session) -> list[dict]:
    """The district bridges (docs/scaling.md) with their kiosks unreachable through them,
    in the caller's scope (an officer counts its district's kiosks)."""
    rows = [bridges.as_json(b) for b in bridges.listed(session)]
    if not rows:
        return []
    counts = unreachable_by_bridge(session)
    # a district whose broker applies an older CRL than another's still lets in a kiosk
    # retired since: shown as behind (provisioning/crl_follow.py)
    newest = max((r["crl"]["number"] for r in rows if r["crl"] and r["crl"]["number"]),
                 default=None)
    for row in rows:
        row["since"] = iso(row["since"]) if row["since"] is not None else None
        row["unreachable"] = counts.get(row["name"], 0)
        crl = row["crl"]
        if crl is not None:
            crl["at"] = iso(crl["at"])
        row["crl_behind"] = newest is not None and row["address"] is not None and (
            crl is None or (crl["number"] or 0) < newest)
    return rows


def unreachable_by_bridge(session) -> dict[str, int]:
    ids = find_kiosks(session, now(), states=[UNREACHABLE], only_ids=True)
    out: dict[str, int] = {}
    if ids:
        for detail, n in session.execute(select(Kiosk.detail, func.count()).where(
                Kiosk.id.in_(ids)).group_by(Kiosk.detail)):
            if (detail or "").startswith(BRIDGE_DETAIL):
                name = detail[len(BRIDGE_DETAIL):]
                out[name] = out.get(name, 0) + n
    return out


# --- outages --------------------------------------------------------------------------------
def _outage_json(o: Outage, at: float, place: tuple | None = None) -> dict:
    """An outage; `place` = (location, district) adds where the kiosk stands now."""
    end = o.ended if o.ended is not None else at
    out = {"id": o.id, "kiosk": o.kiosk_id, "started": iso(o.started), "ended": iso(o.ended),
           "open": o.ended is None, "duration_seconds": round(max(0.0, end - o.started), 1),
           "cause": o.cause}
    if place is not None:
        loc, district = place
        out["location"] = None if loc is None else {"id": loc.id, "code": loc.code, "name": loc.name}
        out["district"] = _district_json(district)
    return out


@bp.get("/outages")
@require()
def list_outages():
    """Outage history, newest first, keyset-paginated. Filters: kiosk, location, district,
    open=true (still running), since/until (outages overlapping that window)."""
    session = db()
    at = now()
    stmt = (select(Outage, Location, District)
            .outerjoin(Kiosk, Kiosk.id == Outage.kiosk_id)
            .outerjoin(Location, Kiosk.location_id == Location.id)
            .outerjoin(District, Location.district_id == District.id))
    stmt = _scoped_kiosks(stmt)
    kiosk_id = pattern_arg("kiosk", KIOSK_ID, KIOSK_RULE)
    if kiosk_id is not None:
        stmt = stmt.where(Outage.kiosk_id == kiosk_id)
    code = pattern_arg("district", CODE, CODE_RULE)
    if code is not None:
        stmt = stmt.where(Location.district_id == district_by_code(session, code, "filter").id)
    code = pattern_arg("location", CODE, CODE_RULE)
    if code is not None:
        stmt = stmt.where(Kiosk.location_id == location_by_code(session, code, "filter").id)
    if bool_arg("open", False):
        stmt = stmt.where(Outage.ended.is_(None))
    since, until = time_range()
    if since is not None:
        stmt = stmt.where(or_(Outage.ended.is_(None), Outage.ended >= since))
    if until is not None:
        stmt = stmt.where(Outage.started <= until)
    limit, after = page_args()
    rows, cursor = keyset_page(session, stmt, Outage.id, limit, after)
    items = [_outage_json(o, at, (loc, d)) for o, loc, d in rows]
    return jsonify(items=items, next=cursor, at=iso(at))


# Scans, statistics and the audit log live in their own module.
from . import activity  # noqa: E402,F401

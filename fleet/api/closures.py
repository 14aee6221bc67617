"""Suspending an organisation after a case (fleet/closures.py, docs/api.md#organisations).

    POST /api/v1/organisations/<code>/suspend-for-case
         {"ci"|"qr"|"key"|"holder": the case as /api/v1/trace names it,
          "from", "to": the period its visits are looked for in (default: the last 14 days),
          "same_holder": also the holder's other certificates (as the trace),
          "case_ref": the health service's case number (optional), "reason": a note}

Health officials and admins. Refused (409) unless the case was scanned at one of the
organisation's control points in the period. The suspension is lifted by the ward
officer through POST /api/v1/organisations/<code>/status {"status": "approved"}.
"""

from __future__ import annotations

from flask import g, jsonify, request

from .. import bundles, closures, organisations, tracing
from ..app import current_fleet, db
from ..auth import require
from ..bundles import ListError
from ..models import HEALTH_OFFICIAL
from ..organisations import OrganisationError
from . import ApiError, bp
from .common import caller, now
from .trace import period_fields

CASE_FIELDS = {"ci", "qr", "key", "holder"}
FIELDS = CASE_FIELDS | {"from", "to", "same_holder", "case_ref", "reason"}
DEFAULT_DAYS = 14  # the usual look-back of an exposure, as the tracing page


def suspend(session, code: str, params: dict) -> dict:
    """The route's work, shared with the tracing page: check, suspend, commit, hand the
    policy bundles to the publisher. Raises ListError / OrganisationError."""
    unknown = sorted(set(params) - FIELDS)
    if unknown:
        raise ListError(f"unknown field{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)}; allowed: {', '.join(sorted(FIELDS))}", 400)
    config = current_fleet().config
    organisations.by_code(session, code)  # 404 before the case is looked at
    case = tracing.name_case(session, config.fleet.deployments,
                             **{k: params.get(k) for k in CASE_FIELDS})
    at = now()
    times = period_fields(params)
    until = times["to"] if times["to"] is not None else at
    since = times["from"] if times["from"] is not None else until - DEFAULT_DAYS * 86400
    tracing.check_period(since, until)
    for name in ("case_ref", "reason"):
        if params.get(name) is not None and not isinstance(params[name], str):
            raise ListError(f"'{name}' must be a string", 422)
    note = (params.get("reason") or "").strip()
    if len(note) > 300:
        raise ListError(f"'reason' is {len(note)} characters long; at most 300", 422)
    role = caller().role
    same_holder = str(params.get("same_holder", "")).strip().lower() in ("1", "true", "yes",
                                                                          "on")

    def work():
        # the organisation read again on each try: a policy version lost to a concurrent
        # change rolls everything back, and in_transaction runs this again
        org = organisations.by_code(session, code)
        change, deployments = closures.suspend_for_case(
            session, config, org, case, since, until, actor=g.actor, role=role,
            case_ref=params.get("case_ref"), note=note, same_holder=same_holder, at=at)
        return org, change, deployments, [k.id for k in organisations.kiosks_of(session, org)]

    org, change, deployments, closed = bundles.in_transaction(session, work)
    published = closures.publish(current_fleet().publisher, deployments)
    return {"organisation": org.code, "name": org.name, "status": org.status,
            "lift_by": org.lift_by, "reason": org.suspended_reason,
            "case_ref": (change.detail or {}).get("case_ref"),
            "locations": (change.detail or {}).get("locations", []),
            "closed_kiosks": closed, "published": published}


@bp.post("/organisations/<code>/suspend-for-case")
@require(HEALTH_OFFICIAL)  # and admins: the roles that trace cases
def suspend_for_case(code):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object naming the case (ci, qr, key or holder), "
                            "with 'Content-Type: application/json'")
    try:
        out = suspend(db(), code, {k: v for k, v in body.items() if v is not None})
    except (ListError, OrganisationError) as exc:
        raise ApiError(exc.status, exc.message,
                       "not_set_up" if exc.status == 503 else None) from None
    response = jsonify(out)
    response.headers["Cache-Control"] = "no-store"
    return response

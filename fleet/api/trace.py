"""Contact tracing over the API (fleet/tracing.py, docs/api.md#tracing).

    GET  /api/v1/trace?ci=…|qr=…|key=…|holder=…&from=…&to=…[&minutes=][&same_holder=true][&format=csv]
    POST /api/v1/trace   the same fields as a JSON object or a form

POST exists because a certificate identifier or QR text in a URL ends up in proxy and
access logs: tracing data should not. Health officials and admins only; every query is
in the audit log (`trace.query`) before its answer is sent.
"""

from __future__ import annotations

from flask import Response, g, jsonify, request

from .. import tracing
from ..app import current_fleet, db, primary_db
from ..auth import require
from ..bundles import ListError
from ..models import HEALTH_OFFICIAL
from . import ApiError, bp
from .common import now, parse_time

FIELDS = {"ci", "qr", "key", "holder", "from", "to", "minutes", "same_holder", "format"}


def _params() -> dict:
    if request.method == "GET":
        return request.args.to_dict()
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "send a JSON object with the fields: " + ", ".join(sorted(FIELDS)))
        return {k: v for k, v in body.items() if v is not None}
    return request.form.to_dict()


def period_fields(params: dict) -> dict[str, float | None]:
    """"from" and "to" of a form or body (blank: None); ListError naming a bad one."""
    times = {}
    for name in ("from", "to"):
        text = params.get(name)
        if text is None or str(text).strip() == "":
            times[name] = None
            continue
        try:
            times[name] = parse_time(str(text), name)
        except ApiError as exc:
            raise ListError(exc.message, 400) from None
    return times


def run_trace(params: dict, how: str) -> tracing.Trace:
    """Read the fields, trace, audit (committed). Shared with the dashboard page; raises
    ListError (status, message) for anything a person must fix."""
    unknown = sorted(set(params) - FIELDS - {"csrf_token", "run"})
    if unknown:
        raise ListError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"allowed: {', '.join(sorted(FIELDS))}", 400)
    session = db()
    config = current_fleet().config
    case = tracing.name_case(session, config.fleet.deployments, ci=params.get("ci"),
                             qr=params.get("qr"), key=params.get("key"),
                             holder=params.get("holder"))
    times = period_fields(params)
    if times["from"] is None:
        raise ListError("give the start of the period: from=2021-09-21T00:00:00+07:00 (ISO "
                        "8601 with a time zone, or epoch seconds)", 400)
    until = times["to"] if times["to"] is not None else now()
    minutes = params.get("minutes")
    if minutes is None or str(minutes).strip() == "":
        minutes = config.web.trace_minutes
    try:
        minutes = float(minutes)
    except (TypeError, ValueError):
        raise ListError(f"minutes={str(minutes)[:20]!r} is not a number of minutes", 400) from None
    same_holder = str(params.get("same_holder", "")).strip().lower() in ("1", "true", "yes", "on")
    result = tracing.trace(session, case, times["from"], until, minutes, same_holder)
    # read where reads go (a replica, for a GET); the audit row on the primary, always
    tracing.audit_query(primary_db(), g.actor, result, how)
    return result


@bp.route("/trace", methods=["GET", "POST"])
@require(HEALTH_OFFICIAL)  # and admins (require lets them in): the roles that see pseudonyms
def trace():
    params = _params()
    how = str(params.get("format") or "json").strip().lower()
    if how not in ("json", "csv"):
        raise ApiError(400, f"format={how[:20]!r} is not known; use json or csv")
    try:
        result = run_trace(params, how)
    except ListError as exc:
        raise ApiError(exc.status, exc.message) from None
    if how == "csv":
        return csv_response(result)
    response = jsonify(result.as_dict())
    response.headers["Cache-Control"] = "no-store"  # pseudonyms: no copies in caches
    return response


def csv_response(result: tracing.Trace) -> Response:
    return Response(tracing.to_csv(result), mimetype="text/csv",
                    headers={"Content-Disposition":
                             f'attachment; filename="{tracing.csv_filename(result)}"',
                             "Cache-Control": "no-store"})

"""Signed bundles over HTTP: the kiosks' fallback when MQTT does not deliver (docs/lists.md).

Unauthenticated on purpose: bundles are public and signed; a kiosk trusts
the signature (its pinned fleet key), not the transport.

    GET /api/v1/bundles/<deployment>/<kind>           trust | policy | status | status-head
                                                      | valuesets
    GET /api/v1/bundles/<deployment>/status?from=V    the delta from V if published, else
                                                      the snapshot (304 if V is current)
    GET /api/v1/bundles/<deployment>/status-delta/<base>

The answer is the raw bundle (application/octet-stream) with a strong ETag
(hex SHA-256 of the bytes); `If-None-Match` with that ETag gets 304.

Also the value sets' management (logged in to read; admins and operators change):

    GET /api/v1/valuesets/<deployment>     ids, dates, code counts, version
    PUT /api/v1/valuesets/<deployment>     {"valueSets": [EU value-set document, ...]}:
                                           replaces the value sets of those ids
"""

from __future__ import annotations

import json

from flask import Response, g, jsonify, request
from sqlalchemy import select

from .. import bundles, value_sets
from .. import publisher as publisher_module
from ..app import current_fleet, db
from ..auth import require
from ..bundles import ListError
from ..models import OPERATOR, ValueSet
from . import ApiError, bp
from .common import iso, now

CONTENT_TYPE = "application/octet-stream"


def _deployment(deployment: str) -> None:
    try:
        bundles.check_deployment(current_fleet().config, deployment)
    except ListError as exc:
        raise ApiError(exc.status, exc.message) from None


def _issued(session, deployment: str) -> None:
    """First request of a deployment nobody changed yet: issue version 1 of its lists."""
    if bundles.missing(session, deployment):
        try:
            bundles.ensure_issued(session, current_fleet().config, deployment, now=now())
        except ListError as exc:
            raise ApiError(exc.status, exc.message, "not_set_up" if exc.status == 503 else None) \
                from None


def _matches(etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == "*" or candidate.strip('"') == etag:
            return True
    return False


def _send(row, status: int = 200) -> Response:
    headers = {"ETag": f'"{row.etag}"', "Cache-Control": "no-cache",
               "X-Bundle-Kind": row.kind, "X-Bundle-Version": str(row.version)}
    if row.base is not None:
        headers["X-Bundle-Base"] = str(row.base)
    if status == 304 or _matches(row.etag):
        return Response(status=304, headers=headers)
    return Response(row.raw, status=status, mimetype=CONTENT_TYPE, headers=headers)


@bp.get("/bundles/<deployment>/<kind>")
def get_bundle(deployment: str, kind: str):
    _deployment(deployment)
    if kind not in bundles.SERVED:
        hint = " (a delta: /status-delta/<base>, or /status?from=<version>)" \
            if kind == "status-delta" else ""
        raise ApiError(404, f"no bundle kind {kind!r}; kinds: {', '.join(bundles.SERVED)}{hint}")
    session = db()
    _issued(session, deployment)
    row = bundles.latest(session, deployment, kind)
    if row is None:  # pragma: no cover - _issued made them
        raise ApiError(404, f"no {kind} bundle is published for deployment {deployment!r}")
    since = request.args.get("from")
    if kind == "status" and since not in (None, ""):
        try:
            held = int(since)
        except ValueError:
            raise ApiError(400, f"from={since!r} is not a status version (a whole number)") \
                from None
        if held == row.version:
            return _send(row, 304)  # the caller is up to date
        if held < row.version:
            delta = bundles.delta_from(session, deployment, held)
            if delta is not None:
                return _send(delta)
        # behind the delta window, or ahead of the fleet (it refuses the rollback): snapshot
    return _send(row)


@bp.get("/bundles/<deployment>/status-delta/<int:base>")
def get_delta(deployment: str, base: int):
    _deployment(deployment)
    session = db()
    _issued(session, deployment)
    row = bundles.delta_from(session, deployment, base)
    if row is None:
        current = bundles.latest(session, deployment, "status")
        published = [d.base for d in bundles.deltas(session, deployment)]
        raise ApiError(404, f"no delta from status version {base} to the current version "
                            f"{current.version if current else '-'} is published (deltas from: "
                            f"{', '.join(map(str, published)) or 'none'}); fetch the full "
                            f"snapshot: /api/v1/bundles/{deployment}/status")
    return _send(row)


# --- value sets ---------------------------------------------------------------------------
@bp.get("/valuesets/<deployment>")
@require()
def value_set_list(deployment: str):
    _deployment(deployment)
    session = db()
    _issued(session, deployment)
    rows = session.scalars(select(ValueSet).where(ValueSet.deployment == deployment)
                           .order_by(ValueSet.value_set_id)).all()
    return jsonify(value_sets=[{"id": r.value_set_id, "date": r.document.get("valueSetDate"),
                                "codes": len(r.document.get("valueSetValues", {})),
                                "updated_by": r.updated_by, "updated_at": iso(r.updated_at)}
                               for r in rows],
                   version=bundles.current_version(session, deployment, "valuesets"))


@bp.put("/valuesets/<deployment>")
@require(OPERATOR)
def value_set_replace(deployment: str):
    _deployment(deployment)
    body = request.get_json(silent=True)
    docs = body.get("valueSets") if isinstance(body, dict) else None
    if not isinstance(docs, list) or not docs:
        raise ApiError(400, "send {\"valueSets\": [EU value-set document, ...]} as JSON with "
                            "'Content-Type: application/json'")
    try:
        parsed = {}
        for i, doc in enumerate(docs):
            one = value_sets.parse(f"#{i + 1}", json.dumps(doc).encode())
            if one["valueSetId"] in parsed:
                raise ListError(f"value set {one['valueSetId']!r} is sent twice")
            parsed[one["valueSetId"]] = one
        version, changed = value_sets.replace(db(), current_fleet().config, deployment, parsed,
                                              actor=g.actor, reason=request.args.get("reason", ""),
                                              now=now())
    except ListError as exc:
        raise ApiError(exc.status, exc.message, "not_set_up" if exc.status == 503 else None) \
            from None
    published = publisher_module.hand_off(current_fleet().publisher, deployment,
                                          {"valuesets"}) if changed else "nothing changed"
    return jsonify(version=version, changed=changed, published=published)

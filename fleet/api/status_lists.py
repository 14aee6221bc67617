"""Managing what the fleet signs for its kiosks: status lists, trust list, policies
(docs/lists.md, docs/api.md).

    GET  /api/v1/status/<dep>/entries[?kind=revoked|suspended&limit=&after=<key hex>]
    GET  /api/v1/status/<dep>/entries/<key hex>
    POST /api/v1/status/<dep>/revoke | suspend | reinstate
         {"entries": [{"ci"|"qr"|"key": ..., "reason": ...}, ...], "until": ISO 8601, "reason": ...}
    GET  /api/v1/status/<dep>/versions[?kind=status|trust|policy&limit=&after=<version>]
    GET  /api/v1/trust/<dep>[?removed=true]      POST /api/v1/trust/<dep>
    DELETE /api/v1/trust/<dep>/<kid hex>
    GET  /api/v1/policies/<dep>                  GET|PUT /api/v1/policies/<dep>/<name>

Everyone logged in reads. Status lists are changed by admins, operators and
health officials; the trust list and policies by admins and operators. Each
change is audited, signed as a new list version and handed to the MQTT
publisher (when the app has one); the HTTP bundle endpoints serve it at once.
"""

from __future__ import annotations

import logging
import re

from flask import g, jsonify, request
from sqlalchemy import select

from .. import bundles, policies, status_lists, trust_list
from .. import publisher as publisher_module
from ..app import current_fleet, db
from ..auth import require
from ..bundles import ListError
from ..models import (ADMIN, HEALTH_OFFICIAL, OPERATOR, REVOKED, SUSPENDED, ListVersion,
                      PublishedBundle, StatusChange)
from . import ApiError, bp
from .common import bool_arg, choice_arg, int_arg, iso, json_body, now

log = logging.getLogger(__name__)

STATUS_EDITORS = (OPERATOR, HEALTH_OFFICIAL)  # admin always may
LIST_EDITORS = (OPERATOR,)
_KEY = re.compile(r"^[0-9a-fA-F]{32}$")
_CODES = {413: "too_large", 503: "not_set_up"}


def _fail(exc: ListError) -> ApiError:
    return ApiError(exc.status, exc.message, _CODES.get(exc.status))


def _config():
    return current_fleet().config


def _deployment(deployment: str) -> None:
    try:
        bundles.check_deployment(_config(), deployment)
    except ListError as exc:
        raise _fail(exc) from None


def _publish(deployment: str, kinds) -> str:
    """Hand the new version to the MQTT publisher (shared with the dashboard)."""
    return publisher_module.hand_off(current_fleet().publisher, deployment, kinds)


# --- status lists ------------------------------------------------------------------------
@bp.get("/status/<deployment>/entries")
@require()
def status_entries(deployment: str):
    _deployment(deployment)
    kind = choice_arg("kind", (REVOKED, SUSPENDED))
    limit = int_arg("limit", 100, 1, 1000)
    after_text = request.args.get("after")
    after = None
    if after_text:
        if not _KEY.match(after_text.strip()):
            raise ApiError(400, f"after={after_text[:40]!r} is not a status key: send the 'next' "
                                "value of the previous page (32 hex digits)")
        after = bytes.fromhex(after_text.strip())
    rows = status_lists.entries(db(), deployment, kind=kind, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    at = now()
    return jsonify(entries=[status_lists.entry_dict(r, at) for r in rows],
                   next=bytes(rows[-1].key).hex() if more else None,
                   version=bundles.current_version(db(), deployment, "status"))


@bp.get("/status/<deployment>/entries/<key>")
@require()
def status_entry(deployment: str, key: str):
    _deployment(deployment)
    if not _KEY.match(key):
        raise ApiError(400, f"{key[:40]!r} is not a status key: 32 hex digits, the first 16 "
                            "bytes of SHA-256 of the certificate identifier (ci)")
    session = db()
    raw = bytes.fromhex(key)
    row = status_lists.entry(session, deployment, raw)
    history = [{"version": c.version, "kind": c.kind, "until": iso(c.until)}
               for c in session.scalars(select(StatusChange).where(
                   StatusChange.deployment == deployment, StatusChange.key == raw)
                   .order_by(StatusChange.version, StatusChange.id))]
    if row is None:
        raise ApiError(404, f"certificate {key.lower()} is not on the status list of "
                            f"{deployment!r}" + (f" (its last change: {history[-1]['kind']} in "
                                                 f"version {history[-1]['version']})"
                                                 if history else ""))
    return jsonify(entry=status_lists.entry_dict(row, now()), history=history)


def _status_change(deployment: str, action: str):
    _deployment(deployment)
    body = json_body({"entries", "until", "reason"})
    reason = body.get("reason") or ""
    if not isinstance(reason, str):
        raise ApiError(422, "'reason' must be text")
    kwargs = {"actor": g.actor, "reason": reason, "now": now()}
    if action == "suspend":
        kwargs["until"] = body.get("until")
    elif body.get("until") is not None:
        raise ApiError(422, f"'until' belongs to a suspension; {action} takes no end date")
    if action == "reinstate":
        kwargs["allow_revoked"] = g.user.role == ADMIN
    operation = getattr(status_lists, action)
    try:
        result = operation(db(), _config(), deployment, body.get("entries"), **kwargs)
    except ListError as exc:
        raise _fail(exc) from None
    out = result.as_dict()
    out["published"] = _publish(deployment, {"status"}) if result.changed else "nothing changed"
    return jsonify(out), 200


@bp.post("/status/<deployment>/revoke")
@require(*STATUS_EDITORS)
def status_revoke(deployment: str):
    return _status_change(deployment, "revoke")


@bp.post("/status/<deployment>/suspend")
@require(*STATUS_EDITORS)
def status_suspend(deployment: str):
    return _status_change(deployment, "suspend")


@bp.post("/status/<deployment>/reinstate")
@require(*STATUS_EDITORS)
def status_reinstate(deployment: str):
    return _status_change(deployment, "reinstate")


@bp.get("/status/<deployment>/versions")
@require()
def list_versions(deployment: str):
    """The versions of a list (default status), newest first: who, when, why, how many."""
    _deployment(deployment)
    kind = choice_arg("kind", bundles.LISTS, "status")
    limit = int_arg("limit", 50, 1, 1000)
    after = int_arg("after", None, 0)  # the 'next' of the previous page: older than this
    session = db()
    query = select(ListVersion).where(ListVersion.deployment == deployment,
                                      ListVersion.kind == kind)
    if after is not None:
        query = query.where(ListVersion.version < after)
    rows = list(session.scalars(query.order_by(ListVersion.version.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    published = {}
    if rows:
        for b in session.scalars(select(PublishedBundle).where(
                PublishedBundle.deployment == deployment,
                PublishedBundle.kind.in_((kind, "status-delta") if kind == "status" else (kind,)),
                PublishedBundle.version.in_([r.version for r in rows]))):
            entry = published.setdefault(b.version, {"deltas_from": []})
            if b.kind == "status-delta":
                entry["deltas_from"].append(b.base)
            else:
                entry.update(issued_at=iso(b.issued_at), etag=b.etag, size=len(b.raw))
    versions = []
    for r in rows:
        item = {"version": r.version, "at": iso(r.at), "actor": r.actor, "action": r.action,
                "changes": r.changes}
        bundle_facts = published.get(r.version)
        if bundle_facts:
            if kind != "status":
                bundle_facts.pop("deltas_from")
            else:
                bundle_facts["deltas_from"].sort()
            item["bundle"] = bundle_facts
        versions.append(item)
    return jsonify(kind=kind, versions=versions, next=rows[-1].version if more else None)


# --- trust list ------------------------------------------------------------------------
@bp.get("/trust/<deployment>")
@require()
def trust_entries(deployment: str):
    _deployment(deployment)
    session = db()
    rows = trust_list.entries(session, deployment, include_removed=bool_arg("removed", False))
    return jsonify(certificates=[trust_list.entry_dict(r) for r in rows],
                   version=bundles.current_version(session, deployment, "trust"))


@bp.post("/trust/<deployment>")
@require(*LIST_EDITORS)
def trust_add(deployment: str):
    _deployment(deployment)
    reason = ""
    if request.is_json:
        body = json_body({"certificate", "reason"})
        data = body.get("certificate")
        reason = body.get("reason") or ""
        if not isinstance(data, str) or not data.strip():
            raise ApiError(422, "'certificate' is required: the signer certificate as PEM, or "
                                "its DER in base64")
        if not isinstance(reason, str):
            raise ApiError(422, "'reason' must be text")
    else:
        data = request.get_data(cache=False)
        if not data:
            raise ApiError(400, "send {\"certificate\": PEM or base64 DER} as JSON, or the "
                                "certificate itself (PEM or DER) as the body")
    try:
        entry, version = trust_list.add(db(), _config(), deployment, data, actor=g.actor,
                                        reason=reason, now=now())
    except ListError as exc:
        raise _fail(exc) from None
    return jsonify(certificate=trust_list.entry_dict(entry), version=version,
                   published=_publish(deployment, {"trust"})), 201


@bp.delete("/trust/<deployment>/<kid>")
@require(*LIST_EDITORS)
def trust_remove(deployment: str, kid: str):
    _deployment(deployment)
    reason = request.args.get("reason", "")
    try:
        removed, version = trust_list.remove(db(), _config(), deployment, kid, actor=g.actor,
                                             reason=reason, now=now())
    except ListError as exc:
        raise _fail(exc) from None
    return jsonify(removed=[trust_list.entry_dict(e) for e in removed], version=version,
                   published=_publish(deployment, {"trust"}))


# --- policies ----------------------------------------------------------------------------
def _policy_json(row) -> dict:
    return {"name": row.name, "document": row.document, "updated_by": row.updated_by,
            "updated_at": iso(row.updated_at)}


@bp.get("/policies/<deployment>")
@require()
def policy_list(deployment: str):
    _deployment(deployment)
    session = db()
    try:
        rows = policies.all_policies(session, _config(), deployment, now())
    except ListError as exc:
        raise _fail(exc) from None
    return jsonify(policies=[_policy_json(r) for r in rows],
                   version=bundles.current_version(session, deployment, "policy"))


@bp.get("/policies/<deployment>/<name>")
@require()
def policy_get(deployment: str, name: str):
    _deployment(deployment)
    try:
        rows = policies.all_policies(db(), _config(), deployment, now())
    except ListError as exc:
        raise _fail(exc) from None
    for row in rows:
        if row.name == name:
            return jsonify(_policy_json(row))
    raise ApiError(404, f"deployment {deployment!r} has no policy {name!r}; its policies: "
                        f"{', '.join(r.name for r in rows)}")


@bp.put("/policies/<deployment>/<name>")
@require(*LIST_EDITORS)
def policy_put(deployment: str, name: str):
    _deployment(deployment)
    document = request.get_json(silent=True)
    if not isinstance(document, dict):
        raise ApiError(400, "send the policy document as a JSON object with 'Content-Type: "
                            "application/json' (see docs/verification.md#policies)")
    reason = request.args.get("reason", "")
    try:
        row, version, outcome = policies.put(db(), _config(), deployment, name, document,
                                             actor=g.actor, reason=reason, now=now())
    except ListError as exc:
        raise _fail(exc) from None
    published = "nothing changed" if outcome == "unchanged" else _publish(deployment, {"policy"})
    return jsonify(policy=_policy_json(row), version=version, result=outcome,
                   published=published), 201 if outcome == "created" else 200

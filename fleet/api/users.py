"""Accounts and API tokens (admins only): /api/v1/users and /api/v1/tokens.

The rules and the audit entries are fleet/accounts.py's (shared with the CLI and the
dashboard); this module only turns JSON into calls and AccountError into API errors.
A token's text is shown once, in the answer that creates it; lists never show it.
"""

from __future__ import annotations

from flask import g, jsonify, request

from .. import accounts
from ..auth import require
from ..models import ADMIN
from . import ApiError, bp
from .common import bool_arg, json_body, text_field

_UNSET = accounts._UNSET


def _session():
    from ..app import db
    return db()


def _apply(work):
    """Run an accounts change and commit it; AccountError -> ApiError."""
    session = _session()
    try:
        result = work(session)
    except accounts.AccountError as exc:
        session.rollback()
        raise ApiError(exc.status, exc.message) from None
    session.commit()
    return result


def _password(body: dict) -> str:
    value = body.get("password")
    if not isinstance(value, str):
        raise ApiError(422, "'password' is required: a string of at least "
                            f"{accounts.MIN_PASSWORD} characters")
    return value


@bp.get("/users")
@require(ADMIN)
def list_users():
    session = _session()
    return jsonify(items=[accounts.user_dict(session, u) for u in accounts.list_users(session)])


@bp.get("/users/<username>")
@require(ADMIN)
def get_user(username):
    session = _session()
    try:
        return jsonify(accounts.user_dict(session, accounts.get_user(session, username)))
    except accounts.AccountError as exc:
        raise ApiError(exc.status, exc.message) from None


@bp.post("/users")
@require(ADMIN)
def create_user():
    body = json_body({"username", "password", "role", "district", "ward", "organisation"})
    username = text_field(body, "username", required=True, max_length=accounts.MAX_NAME)
    role = text_field(body, "role", required=True, max_length=32)
    district = text_field(body, "district", required=False, max_length=64)
    ward = text_field(body, "ward", required=False, max_length=64)
    organisation = text_field(body, "organisation", required=False, max_length=64)
    password = _password(body)
    user = _apply(lambda s: accounts.create_user(s, g.actor, username, password, role, district,
                                                 ward=ward, organisation=organisation))
    return jsonify(accounts.user_dict(_session(), user)), 201


@bp.patch("/users/<username>")
@require(ADMIN)
def update_user(username):
    """Any of role, district, ward, organisation (null: none), disabled, password."""
    body = json_body({"role", "district", "ward", "organisation", "disabled", "password"})
    role = text_field(body, "role", required=False, max_length=32)
    district = _UNSET
    if "district" in body:
        district = text_field(body, "district", required=False, max_length=64) or ""
    anchors = {name: (text_field(body, name, required=False, max_length=64) or "")
               if name in body else _UNSET for name in ("ward", "organisation")}
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise ApiError(422, "'disabled' must be true or false")
    password = _password(body) if "password" in body else None
    changing = role is not None or district is not _UNSET or any(
        v is not _UNSET for v in anchors.values())
    if not changing and disabled is None and password is None:
        raise ApiError(422, "nothing to change: send role, district, ward, organisation, "
                            "disabled or password")

    def work(session):
        if changing:
            accounts.update_user(session, g.actor, username, role, district, **anchors)
        if password is not None:
            accounts.set_password(session, g.actor, username, password)
        if disabled is not None:
            accounts.set_disabled(session, g.actor, username, disabled)
        return accounts.get_user(session, username)
    user = _apply(work)
    return jsonify(accounts.user_dict(_session(), user))


@bp.delete("/users/<username>")
@require(ADMIN)
def delete_user(username):
    tokens = _apply(lambda s: accounts.delete_user(s, g.actor, username))
    return jsonify(deleted=username, tokens_deleted=tokens)


@bp.get("/tokens")
@require(ADMIN)
def list_tokens():
    user = request.args.get("user") or None
    revoked = bool_arg("revoked")
    session = _session()
    try:
        rows = accounts.list_tokens(session, user)
    except accounts.AccountError as exc:
        raise ApiError(exc.status, exc.message) from None
    if revoked is not None:
        rows = [(t, o) for t, o in rows if (t.revoked_at is not None) == revoked]
    return jsonify(items=[accounts.token_dict(t, o) for t, o in rows])


@bp.post("/tokens")
@require(ADMIN)
def create_token():
    body = json_body({"user", "name"})
    user = text_field(body, "user", required=True, max_length=accounts.MAX_NAME)
    name = text_field(body, "name", required=True, max_length=accounts.MAX_NAME)
    token = _apply(lambda s: accounts.create_token(s, g.actor, user, name))
    row = accounts.list_tokens(_session(), user)[-1]
    return jsonify(token=token, **accounts.token_dict(*row)), 201


@bp.delete("/tokens/<int:token_id>")
@require(ADMIN)
def revoke_token(token_id):
    """Revokes (the row stays, for the list and the audit log); 401 for it at once."""
    token, owner = _apply(lambda s: accounts.revoke_token(s, g.actor, token_id))
    return jsonify(accounts.token_dict(token, owner))

"""Accounts and API tokens on the dashboard (admins; docs/dashboard.md#users-and-tokens).

    GET  /users            the accounts, a form for a new one, a change form per account
    POST /users/create     a new account (the password typed twice is its confirmation)
    POST /users/password   a new password for an account (typed twice; ends their sessions)
    POST /users/preview    disable, enable, delete, role/district, revoke a token: what it
                           would do, nothing changed yet
    POST /users/apply      the change shown, after an explicit confirm
    GET  /tokens           the API tokens (never the token text), revoke per token

The confirm step is the status lists' (fleet/web/lists_views.py): the session keeps a
digest of the previewed fields and the apply refuses anything else (a changed field, a
second submit, a skipped preview). Passwords are never put back into a page, so the two
password forms apply at once. The rules and the audit entries are fleet/accounts.py's.
"""

from __future__ import annotations

from flask import g, render_template, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from .. import accounts
from ..app import db
from ..models import ADMIN, ROLES, District
from . import bp, page
from .confirmation import confirmed, remember

_PREVIEWED = "users_preview"
CHANGES = ("disable", "enable", "delete", "set", "revoke")


def _districts():
    return db().scalars(select(District).order_by(District.code)).all()


def _users_page(error: str | None = None, fields: dict | None = None, status: int = 200):
    session_db = db()
    users = [accounts.user_dict(session_db, u) for u in accounts.list_users(session_db)]
    return render_template("users.html", users=users, roles=ROLES, districts=_districts(),
                           error=error, fields=fields or {}), status


def _tokens_page(error: str | None = None, status: int = 200):
    rows = accounts.list_tokens(db())
    tokens = [accounts.token_dict(t, owner) for t, owner in reversed(rows)]
    return render_template("tokens.html", tokens=tokens, error=error), status


def _form() -> dict:
    form = request.form
    return {"action": form.get("action", ""), "username": form.get("username", "").strip(),
            "role": form.get("role", ""), "district": form.get("district", ""),
            "ward": form.get("ward", "").strip(),
            "organisation": form.get("organisation", "").strip(),
            "token_id": form.get("token_id", "")}


def _passwords() -> str:
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        raise accounts.AccountError(422, accounts.N_("The two passwords differ; nothing "
                                                     "changed."))
    return password


def _said(exc: accounts.AccountError) -> str:
    """The refusal in the page's language."""
    return _(exc.template, **exc.params) if exc.params else _(exc.template)


def _done(title: str, message: str, back: str):
    return render_template("users_done.html", title=title, message=message, back=back)


@bp.get("/users")
@page(ADMIN)
def users_page():
    return _users_page()


@bp.get("/tokens")
@page(ADMIN)
def tokens_page():
    return _tokens_page()


@bp.post("/users/create")
@page(ADMIN)
def users_create():
    fields = _form()
    session_db = db()
    try:
        accounts.create_user(session_db, g.actor, fields["username"], _passwords(),
                             fields["role"], fields["district"] or None,
                             ward=fields["ward"] or None,
                             organisation=fields["organisation"] or None)
    except accounts.AccountError as exc:
        session_db.rollback()
        return _users_page(_said(exc), fields, exc.status)
    session_db.commit()
    return _done(_("Account created"), _("%(name)s can log in now as %(role)s.",
                                         name=fields["username"], role=_(fields["role"])),
                 url_for("web.users_page"))


@bp.post("/users/password")
@page(ADMIN)
def users_password():
    fields = _form()
    session_db = db()
    try:
        accounts.set_password(session_db, g.actor, fields["username"], _passwords())
    except accounts.AccountError as exc:
        session_db.rollback()
        return _users_page(_said(exc), fields, exc.status)
    session_db.commit()
    return _done(_("Password changed"),
                 _("%(name)s has a new password; every session of theirs has ended.",
                   name=fields["username"]), url_for("web.users_page"))


def _describe(fields: dict) -> tuple[str, str, str]:
    """(what the change does, its consequences, the page to go back to); AccountError if it
    cannot be done."""
    session_db = db()
    action, name = fields["action"], fields["username"]
    if action == "revoke":
        try:
            token_id = int(fields["token_id"])
        except ValueError:
            raise accounts.AccountError(422, accounts.N_("Choose a token to revoke.")) from None
        row = next(((t, o) for t, o in accounts.list_tokens(session_db) if t.id == token_id),
                   None)
        if row is None:
            raise accounts.AccountError(404, accounts.N_("No token %(id)s."), id=token_id)
        token, owner = row
        if token.revoked_at is not None:
            raise accounts.AccountError(409, accounts.N_("That token is revoked already."))
        return (_("Revoke the token %(name)s of %(user)s.", name=token.name, user=owner),
                _("Anything that uses it is refused from the next request on."),
                url_for("web.tokens_page"))
    if action not in CHANGES:
        raise accounts.AccountError(422, accounts.N_("Choose what to do."))
    user = accounts.get_user(session_db, name)
    tokens = sum(1 for t, _o in accounts.list_tokens(session_db, name) if t.revoked_at is None)
    back = url_for("web.users_page")
    if action == "disable":
        return (_("Disable the account %(name)s.", name=name),
                _("Their sessions end at once; their %(n)s API tokens stop working until the "
                  "account is enabled again.", n=tokens), back)
    if action == "enable":
        return (_("Enable the account %(name)s.", name=name),
                _("They can log in again and their tokens work again."), back)
    if action == "delete":
        return (_("Delete the account %(name)s.", name=name),
                _("Their %(n)s API tokens are deleted too. The audit log keeps their name on "
                  "every entry.", n=tokens), back)
    district = fields["district"] or _("none")
    return (_("Give %(name)s the role %(role)s and the district %(district)s.", name=name,
              role=_(fields["role"] or user.role), district=district),
            _("It applies from their next request."), back)


def _apply(fields: dict) -> None:
    session_db, action, name = db(), fields["action"], fields["username"]
    if action == "revoke":
        accounts.revoke_token(session_db, g.actor, int(fields["token_id"]))
    elif action in ("disable", "enable"):
        accounts.set_disabled(session_db, g.actor, name, action == "disable")
    elif action == "delete":
        accounts.delete_user(session_db, g.actor, name)
    else:
        accounts.update_user(session_db, g.actor, name, fields["role"] or None,
                             fields["district"], ward=fields["ward"],
                             organisation=fields["organisation"])


def _check(fields: dict) -> None:
    """The refusals of the real change, found before the confirm page: run it in a
    transaction that is rolled back."""
    session_db = db()
    try:
        _apply(fields)
        session_db.flush()
    finally:
        session_db.rollback()


def _back_with(fields: dict, exc: accounts.AccountError):
    session.pop(_PREVIEWED, None)
    if fields["action"] == "revoke":
        return _tokens_page(_said(exc), exc.status)
    return _users_page(_said(exc), fields, exc.status)


@bp.post("/users/preview")
@page(ADMIN)
def users_preview():
    fields = _form()
    try:
        summary, consequence, back = _describe(fields)
        _check(fields)
    except accounts.AccountError as exc:
        return _back_with(fields, exc)
    remember(_PREVIEWED, fields)
    return render_template("users_confirm.html", fields=fields, summary=summary,
                           consequence=consequence, back=back)


@bp.post("/users/apply")
@page(ADMIN)
def users_apply():
    fields = _form()
    confirmed(_PREVIEWED, fields,
              _("This change was not previewed as it stands, or it has been "
                "applied already. Start again from the list, check the "
                "preview, then confirm."))
    session_db = db()
    try:
        summary, _consequence, back = _describe(fields)
        _apply(fields)
    except accounts.AccountError as exc:
        session_db.rollback()
        return _back_with(fields, exc)
    session_db.commit()
    return _done(_("Done"), summary, back)

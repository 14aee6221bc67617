"""Accounts and API tokens: the one place users and tokens change (no Flask here).

The CLI (`greengate-fleet user|token`), the API (/api/v1/users, /api/v1/tokens) and the
dashboard (/users) all call these functions, so each change is checked and audited the
same way. A function adds to the caller's session and the caller commits; a refusal is
an AccountError with an HTTP status and a sentence a person can act on.

Rules kept here (docs/api.md#users-and-tokens):
- a district officer always has a district, a ward officer a ward, a manager an
  organisation (without its anchor every route would answer 403); a ward or an
  organisation is kept only on the role it anchors, so a change of role drops it;
- the fleet keeps at least one enabled admin: the last one cannot be disabled,
  deleted or given another role, so nobody can lock the fleet out of its own accounts;
- disabling a user, a new password and deleting a user end their sessions at once;
  deleting a user deletes their tokens (a token acts as its user), and the audit log,
  which names actors by user name, keeps every entry.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select

from . import audit, auth
from .models import (ADMIN, DISTRICT_OFFICER, MANAGER, ROLES, WARD_OFFICER, ApiToken, District,
                     Organisation, User, Ward)

MIN_PASSWORD = 10
MAX_NAME = 100


def N_(text: str) -> str:
    """Marks a message for the catalogue (pybabel); the dashboard translates it."""
    return text


class AccountError(Exception):
    """`message` is English (CLI, API); the dashboard shows gettext(template, **params)."""

    def __init__(self, status: int, template: str, **params):
        self.status, self.template, self.params = status, template, params
        self.message = template % params if params else template
        super().__init__(self.message)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def user_dict(session, user: User) -> dict:
    district = session.get(District, user.district_id) if user.district_id else None
    ward = session.get(Ward, user.ward_id) if user.ward_id else None
    organisation = session.get(Organisation, user.organisation_id) if user.organisation_id else None
    return {"username": user.username, "role": user.role,
            "district": district.code if district else None,
            "ward": ward.code if ward else None,
            "organisation": organisation.code if organisation else None,
            "disabled": bool(user.disabled), "created_at": _iso(user.created_at)}


def token_dict(token: ApiToken, owner: str) -> dict:
    """What may be shown of a token: never the token or its hash."""
    return {"id": token.id, "name": token.name, "user": owner,
            "created_at": _iso(token.created_at), "last_used": _iso(token.last_used),
            "revoked_at": _iso(token.revoked_at)}


def get_user(session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(404, N_("no user '%(name)s'; `greengate-fleet user list` shows "
                                   "them all"), name=username)
    return user


def list_users(session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def _district_id(session, code: str | None) -> int | None:
    if not code:
        return None
    district = session.scalar(select(District).where(District.code == code))
    if district is None:
        raise AccountError(422, N_("no district with code '%(code)s'"), code=code)
    return district.id


def _ward_id(session, code: str | None) -> int | None:
    if not code:
        return None
    ward = session.scalar(select(Ward).where(Ward.code == code))
    if ward is None:
        raise AccountError(422, N_("no ward with code '%(code)s'"), code=code)
    return ward.id


def _organisation_id(session, code: str | None) -> int | None:
    if not code:
        return None
    organisation = session.scalar(select(Organisation).where(Organisation.code == code))
    if organisation is None:
        raise AccountError(422, N_("no organisation with code '%(code)s'"), code=code)
    return organisation.id


def _check_anchors(role: str, ward_id: int | None, organisation_id: int | None) -> None:
    if role == WARD_OFFICER and ward_id is None:
        raise AccountError(422, N_("a ward officer needs a ward (--ward CODE): without one "
                                   "they may open nothing"))
    if role == MANAGER and organisation_id is None:
        raise AccountError(422, N_("a manager needs an organisation (--organisation CODE): "
                                   "without one they may open nothing"))
    if ward_id is not None and role != WARD_OFFICER:
        raise AccountError(422, N_("only a ward officer has a ward"))
    if organisation_id is not None and role != MANAGER:
        raise AccountError(422, N_("only a manager has an organisation"))


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(422, N_("a password needs at least %(n)s characters"),
                           n=MIN_PASSWORD)


def _check_role(role: str, district_id: int | None) -> None:
    if role not in ROLES:
        raise AccountError(422, N_("unknown role '%(role)s'; roles: %(roles)s"), role=role,
                           roles=", ".join(ROLES))
    if role == DISTRICT_OFFICER and district_id is None:
        raise AccountError(422, N_("a district officer needs a district (--district CODE): "
                                   "without one they may open nothing"))


def _other_enabled_admins(session, user: User) -> int:
    return session.scalar(select(func.count()).select_from(User).where(
        User.role == ADMIN, User.disabled.is_(False), User.id != user.id)) or 0


def _keep_an_admin(session, user: User) -> None:
    if user.role == ADMIN and not user.disabled and _other_enabled_admins(session, user) == 0:
        raise AccountError(409, N_("%(name)s is the only enabled admin: that would leave "
                                   "nobody to manage the fleet; make another admin first"),
                           name=user.username)


def create_user(session, actor: str, username: str, password: str, role: str,
                district: str | None = None, *, ward: str | None = None,
                organisation: str | None = None) -> User:
    username = (username or "").strip()
    if not username or len(username) > MAX_NAME or any(c.isspace() for c in username):
        raise AccountError(422, N_("a user name is 1 to %(n)s characters without spaces"),
                           n=MAX_NAME)
    district_id = _district_id(session, district)
    _check_role(role, district_id)
    ward_id, organisation_id = _ward_id(session, ward), _organisation_id(session, organisation)
    _check_anchors(role, ward_id, organisation_id)
    _check_password(password)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError(409, N_("user '%(name)s' exists already; change it with "
                                   "`greengate-fleet user set` or `user passwd`"),
                           name=username)
    user = auth.create_user(session, username, password, role, district_id, ward_id=ward_id,
                            organisation_id=organisation_id)
    session.flush()
    audit.record(session, actor, "user.create", username, role=role, district=district,
                 ward=ward or None, organisation=organisation or None)
    return user


def set_disabled(session, actor: str, username: str, disabled: bool) -> User:
    user = get_user(session, username)
    if disabled:
        if username == actor:
            raise AccountError(409, N_("you cannot disable your own account"))
        _keep_an_admin(session, user)
    if bool(user.disabled) != disabled:
        user.disabled = disabled
        auth.end_sessions(user)
        audit.record(session, actor, "user.disable" if disabled else "user.enable", username)
    return user


def delete_user(session, actor: str, username: str) -> int:
    """Deletes the user and their tokens; returns how many tokens went."""
    user = get_user(session, username)
    if username == actor:
        raise AccountError(409, N_("you cannot delete your own account"))
    _keep_an_admin(session, user)
    tokens = session.execute(delete(ApiToken).where(ApiToken.user_id == user.id)).rowcount
    session.delete(user)
    audit.record(session, actor, "user.delete", username, role=user.role, tokens=tokens)
    return tokens


def set_password(session, actor: str, username: str, password: str) -> User:
    user = get_user(session, username)
    _check_password(password)
    user.password_hash = auth._hasher.hash(password)
    auth.end_sessions(user)  # whoever knew the old one is logged out
    audit.record(session, actor, "user.password", username)
    return user


_UNSET = object()


def update_user(session, actor: str, username: str, role: str | None = None,
                district=_UNSET, *, ward=_UNSET, organisation=_UNSET) -> User:
    """A new role, district, ward and/or organisation (None or "": none). A role that
    does not keep a ward or an organisation drops the one it had."""
    user = get_user(session, username)
    new_role = role or user.role
    new_district = user.district_id if district is _UNSET else _district_id(session, district)
    _check_role(new_role, new_district)
    new_ward = (user.ward_id if new_role == WARD_OFFICER else None) if ward is _UNSET \
        else _ward_id(session, ward)
    new_organisation = (user.organisation_id if new_role == MANAGER else None) \
        if organisation is _UNSET else _organisation_id(session, organisation)
    _check_anchors(new_role, new_ward, new_organisation)
    if new_role != user.role and user.role == ADMIN:
        _keep_an_admin(session, user)
    changes = {}
    if new_role != user.role:
        changes["role"] = [user.role, new_role]
        user.role = new_role
    if new_district != user.district_id:
        old = session.get(District, user.district_id) if user.district_id else None
        new = session.get(District, new_district) if new_district else None
        changes["district"] = [old.code if old else None, new.code if new else None]
        user.district_id = new_district
    if new_ward != user.ward_id:
        old = session.get(Ward, user.ward_id) if user.ward_id else None
        new = session.get(Ward, new_ward) if new_ward else None
        changes["ward"] = [old.code if old else None, new.code if new else None]
        user.ward_id = new_ward
    if new_organisation != user.organisation_id:
        old = session.get(Organisation, user.organisation_id) if user.organisation_id else None
        new = session.get(Organisation, new_organisation) if new_organisation else None
        changes["organisation"] = [old.code if old else None, new.code if new else None]
        user.organisation_id = new_organisation
    if changes:
        audit.record(session, actor, "user.update", username, **changes)
    return user


def list_tokens(session, username: str | None = None) -> list[tuple[ApiToken, str]]:
    query = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id)
    if username:
        query = query.where(User.id == get_user(session, username).id)
    return [(token, owner) for token, owner in session.execute(query.order_by(ApiToken.id))]


def create_token(session, actor: str, username: str, name: str) -> str:
    user = get_user(session, username)
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        raise AccountError(422, N_("a token needs a name (what it is for), up to %(n)s "
                                   "characters"), n=MAX_NAME)
    if user.disabled:
        raise AccountError(409, N_("user '%(name)s' is disabled; enable them first"),
                           name=username)
    token = auth.create_token(session, user, name)
    audit.record(session, actor, "token.create", username, name=name)
    return token


def revoke_token(session, actor: str, token_id: int) -> tuple[ApiToken, str]:
    row = session.execute(select(ApiToken, User.username).join(User, User.id == ApiToken.user_id)
                          .where(ApiToken.id == token_id)).first()
    if row is None:
        raise AccountError(404, N_("no token %(id)s; `greengate-fleet token list` shows "
                                   "them"), id=token_id)
    token, owner = row
    if token.revoked_at is None:
        token.revoked_at = time.time()
        audit.record(session, actor, "token.revoke", owner, id=token.id, name=token.name)
    return token, owner

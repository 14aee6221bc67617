"""Who is calling: API bearer tokens (automation) and users with roles.

Roles (docs/fleet.md): admin (everything), operator (devices and lists),
district_officer (reads, limited to their district), health_official
(tracing and status lists). Tokens act as the user that created them; only
their SHA-256 is stored, so a database leak does not leak tokens.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time

from flask import g, request
from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from .models import ADMIN, ROLES, ApiToken, User

TOKEN_PREFIX = "ggt_"


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session, username: str, password: str, role: str, district_id=None) -> User:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if len(password) < 10:
        raise ValueError("a password needs at least 10 characters")
    user = User(username=username, password_hash=generate_password_hash(password), role=role,
                district_id=district_id, created_at=time.time())
    session.add(user)
    return user


def check_password(user: User | None, password: str) -> bool:
    return bool(user and not user.disabled and check_password_hash(user.password_hash, password))


def create_token(session, user: User, name: str) -> str:
    """A new token; the plain text is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, token_hash=hash_token(token),
                         created_at=time.time()))
    return token


def user_for_token(session, token: str) -> User | None:
    row = session.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                          .where(ApiToken.token_hash == hash_token(token))).first()
    if row is None:
        return None
    api_token, user = row
    if api_token.revoked_at is not None or user.disabled:
        return None
    api_token.last_used = time.time()
    return user


def current_user(session) -> User | None:
    """The caller: a bearer token, else the dashboard login session (later), else None."""
    if "user" in g:
        return g.user
    user = None
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        user = user_for_token(session, header[7:].strip())
        if user is None:
            raise AuthError(401, "the API token is unknown or revoked: create a new one with "
                                 "`greengate-fleet token create`")
    else:
        from flask import session as web_session
        user_id = web_session.get("user_id")
        if user_id is not None:
            user = session.get(User, user_id)
            if user is not None and user.disabled:
                user = None
    g.user = user
    return user


def require(*roles: str):
    """Decorator: the caller must be logged in with one of `roles` (admin always may)."""
    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            from .app import db
            user = current_user(db())
            if user is None:
                raise AuthError(401, "log in, or send an API token as 'Authorization: Bearer …'")
            if roles and user.role not in roles and user.role != ADMIN:
                raise AuthError(403, f"your role ({user.role}) may not do this; it needs "
                                     f"{' or '.join(roles)}")
            g.actor = user.username
            return view(*args, **kwargs)
        return wrapper
    return decorate


def district_scope(user: User) -> int | None:
    """The district a district officer is limited to; None: sees everything."""
    from .models import DISTRICT_OFFICER
    if user.role != DISTRICT_OFFICER:
        return None
    if user.district_id is None:  # None would mean "everything": refuse instead
        raise AuthError(403, "your district officer account has no district; ask an admin to "
                             "assign one")
    return user.district_id

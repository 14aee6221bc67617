"""Who is calling: API bearer tokens (automation) and users with roles.

Roles (docs/fleet.md): admin (everything), operator (devices and lists),
district_officer (reads, limited to their district), ward_officer (the
same, limited to their ward), manager (their organisation's kiosks, pages and roster
only), health_official (tracing and status lists). Tokens act as the user that created them; only
their SHA-256 is stored, so a database leak does not leak tokens.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import g, request
from sqlalchemy import delete, func, select, update
from werkzeug.security import check_password_hash

from .models import ADMIN, ROLES, ApiToken, LoginFailure, User

TOKEN_PREFIX = "ggt_"
_hasher = PasswordHasher()  # argon2id, the library's current recommended parameters
LOGIN_WINDOW = 900.0  # seconds over which failed logins count
# The longest wait the account-wide slowing asks of one address between two tries
# (docs/dashboard.md#login-throttling): long enough to make guessing slow, short enough
# that a real user who mistyped is not shut out.
MAX_ACCOUNT_GAP = 60.0
LAST_USED_STEP = 60.0  # a token's "last used" is written at most once a minute
ADDRESS_FACTOR = 4  # an address may fail this many times the per-account limit (an office)


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session, username: str, password: str, role: str, district_id=None,
                ward_id=None, organisation_id=None) -> User:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if len(password) < 10:
        raise ValueError("a password needs at least 10 characters")
    user = User(username=username, password_hash=_hasher.hash(password), role=role,
                district_id=district_id, ward_id=ward_id, organisation_id=organisation_id,
                created_at=time.time())
    session.add(user)
    return user


def check_password(user: User | None, password: str) -> bool:
    """Argon2id; an older werkzeug hash still verifies and is replaced on success (the
    caller commits)."""
    if user is None or user.disabled:
        _hasher.hash(password)  # the same work either way: no timing hint that it is unknown
        return False
    stored = user.password_hash
    if stored.startswith("$argon2"):
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
        if _hasher.check_needs_rehash(stored):
            user.password_hash = _hasher.hash(password)
        return True
    if check_password_hash(stored, password):
        user.password_hash = _hasher.hash(password)
        return True
    return False


def _failures(session, since: float, *conditions) -> tuple[int, float | None, float | None]:
    """(count, earliest, latest) of the failed logins since `since` matching `conditions`."""
    count, first, last = session.execute(
        select(func.count(), func.min(LoginFailure.at), func.max(LoginFailure.at))
        .where(LoginFailure.at > since, *conditions)).one()
    return count or 0, first, last


def login_wait(session, username: str, address: str, limit: int, now: float) -> float:
    """Seconds this address must wait before it may try this account again (0: try now).

    Three counts over the last LOGIN_WINDOW, none of which can shut the real user out
    from an address of their own (docs/dashboard.md#login-throttling):
    - per (account, address): `limit` failures stop that address for that account;
    - per address: ADDRESS_FACTOR × `limit` failures over any accounts stop the address;
    - per account, over all addresses: past `limit` failures every address that has
      failed on the account must wait a growing gap (1 s, 2 s, 4 s … MAX_ACCOUNT_GAP)
      after its own last failure. An address with no failure on the account is never
      held back, so an attacker cannot lock `admin` out, only slow themselves down.
    """
    username, address = username[:100], address[:64]
    since = now - LOGIN_WINDOW
    by_address, first_address, _ = _failures(session, since, LoginFailure.address == address)
    if by_address >= ADDRESS_FACTOR * limit:
        return max(1.0, first_address + LOGIN_WINDOW - now)
    by_pair, first_pair, last_pair = _failures(
        session, since, LoginFailure.username == username, LoginFailure.address == address)
    if by_pair == 0:
        return 0.0
    if by_pair >= limit:
        return max(1.0, first_pair + LOGIN_WINDOW - now)
    by_account, _, _ = _failures(session, since, LoginFailure.username == username)
    if by_account >= limit:
        gap = min(MAX_ACCOUNT_GAP, 2.0 ** (by_account - limit))
        if last_pair + gap > now:
            return max(1.0, last_pair + gap - now)
    return 0.0


def login_failed(session, username: str, address: str, now: float) -> None:
    session.add(LoginFailure(at=now, username=username[:100], address=address[:64]))


def login_succeeded(session, username: str, address: str) -> None:
    """The right password from this address: its own earlier typos no longer count."""
    session.execute(delete(LoginFailure).where(LoginFailure.username == username[:100],
                                               LoginFailure.address == address[:64]))


def end_sessions(user: User) -> None:
    """Every login cookie of `user` stops working at its next request (the caller
    commits): the cookie's generation no longer matches."""
    user.session_generation = (user.session_generation or 0) + 1


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
    now = time.time()
    if api_token.last_used is None or now - api_token.last_used > LAST_USED_STEP:
        # its own short transaction: a read request never commits its session, and the
        # token list must still show when a token was last used
        with session.get_bind().connect() as connection:
            connection.execute(update(ApiToken).where(ApiToken.id == api_token.id)
                               .values(last_used=now))
            connection.commit()
        api_token.last_used = now
    return user


def current_user(session) -> User | None:
    """The caller: a bearer token, else the dashboard login session, else None."""
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
            # a cookie from before a logout, a disabling or a new password: ended
            if user is not None and (user.disabled or web_session.get("generation")
                                     != (user.session_generation or 0)):
                user = None
            # a dashboard form's token was checked already (fleet/web: the form field)
            if user is not None and request.method not in SAFE_METHODS \
                    and not g.get("csrf_checked"):
                check_csrf(request.headers.get("X-CSRF-Token"))
    g.user = user
    return user


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def csrf_token() -> str:
    """The login session's CSRF token (made at first use)."""
    from flask import session as web_session
    token = web_session.get("csrf")
    if token is None:
        token = web_session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf(sent: str | None) -> None:
    """A change made with the login cookie must carry the session's CSRF token (a form
    field or the X-CSRF-Token header): another site can make the browser send the
    cookie, not the token."""
    from flask import session as web_session
    expected = web_session.get("csrf")
    if not expected or not sent or not secrets.compare_digest(expected, sent):
        raise AuthError(403, "the form was too old or did not come from this site (CSRF "
                             "check); reload the page and try again")


def admitted(user: User, roles: tuple[str, ...]) -> bool:
    """Whether `user`'s role may pass a require()/page() naming `roles` (admin always
    may). No roles: every logged-in role except the manager, whose world is its own
    organisation; a route a manager may use names MANAGER (or every role: ROLES)."""
    from .models import MANAGER
    if user.role == ADMIN:
        return True
    if not roles:
        return user.role != MANAGER
    return user.role in roles


def require(*roles: str):
    """Decorator: the caller must be logged in with one of `roles` (admin always may;
    no roles: every role but the manager, see admitted())."""
    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            from .app import primary_db  # who calls: never a lagging replica
            user = current_user(primary_db())
            if user is None:
                raise AuthError(401, "log in, or send an API token as 'Authorization: Bearer …'")
            if not admitted(user, roles):
                raise AuthError(403, f"your role ({user.role}) may not do this; it needs "
                                     f"{' or '.join(roles) or 'a fleet-wide role'}")
            require_district(user)
            g.actor = user.username
            return view(*args, **kwargs)
        return wrapper
    return decorate


NO_DISTRICT = "your district officer account has no district; ask an admin to assign one"
NO_WARD = "your ward officer account has no ward; ask an admin to assign one"
NO_ORGANISATION = "your manager account has no organisation; ask an admin to assign one"


def require_district(user: User, message: str = NO_DISTRICT) -> None:
    """A scoped role without its anchor may do nothing at all: a district officer without
    a district, a ward officer without a ward, a manager without an organisation. With
    nothing to limit them to, a route that forgot the scope would show them everything.
    `message` is the district officer's (the dashboard passes it translated)."""
    from .models import DISTRICT_OFFICER, MANAGER, WARD_OFFICER
    if user.role == DISTRICT_OFFICER and user.district_id is None:
        raise AuthError(403, message)
    if user.role == WARD_OFFICER and user.ward_id is None:
        raise AuthError(403, NO_WARD)
    if user.role == MANAGER and user.organisation_id is None:
        raise AuthError(403, NO_ORGANISATION)


def district_scope(user: User) -> int | None:
    """The district the caller is limited to; None: sees every district.

    A district officer: its district. A ward officer: its ward's district. A manager:
    its organisation's district. The ward and organisation limits come on top
    (ward_scope, organisation_scope); this one keeps district-level code correct."""
    from .app import db
    from .models import DISTRICT_OFFICER, MANAGER, WARD_OFFICER, Organisation, Ward
    require_district(user)  # None would mean "everything": refuse instead
    if user.role == DISTRICT_OFFICER:
        return user.district_id
    if user.role == WARD_OFFICER:
        ward = db().get(Ward, user.ward_id)
        if ward is None:
            raise AuthError(403, NO_WARD)
        return ward.district_id
    if user.role == MANAGER:
        organisation = db().get(Organisation, user.organisation_id)
        if organisation is None:
            raise AuthError(403, NO_ORGANISATION)
        return organisation.district_id
    return None


def ward_scope(user: User) -> int | None:
    """The ward a ward officer is limited to; None for every other role."""
    from .models import WARD_OFFICER
    require_district(user)
    return user.ward_id if user.role == WARD_OFFICER else None


def organisation_scope(user: User) -> int | None:
    """The organisation a manager is limited to; None for every other role."""
    from .models import MANAGER
    require_district(user)
    return user.organisation_id if user.role == MANAGER else None

"""Logging in and out. Failed logins are throttled per (account, address), per
address and, by slowing rather than locking, per account (fleet/auth.py login_wait,
docs/dashboard.md#login-throttling); a success starts a fresh session, and logout ends
every session of the user on the server (the user's session generation)."""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from flask import make_response, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from .. import audit, auth
from ..app import current_fleet, db
from ..models import User
from . import bp


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not target:
        return url_for("web.home")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.home")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        config = current_fleet().config
        session_db = db()
        username = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        address = request.remote_addr or "unknown"
        now = auth.time.time()
        wait = auth.login_wait(session_db, username, address, config.web.login_failures, now)
        if wait > 0:
            seconds = math.ceil(wait)
            error = _("Too many failed logins from here. Try again in %(seconds)s seconds, "
                      "or ask an admin.", seconds=seconds)
            response = make_response(render_template("login.html", error=error,
                                                     next=request.form.get("next", "")), 429)
            response.headers["Retry-After"] = str(seconds)
            return response
        user = session_db.scalar(select(User).where(User.username == username))
        if auth.check_password(user, password):
            lang = session.get("lang")
            session.clear()  # a fresh session: no fixation
            session.permanent = True
            session["user_id"] = user.id
            session["generation"] = user.session_generation or 0
            if lang:
                session["lang"] = lang
            auth.csrf_token()
            auth.login_succeeded(session_db, username, address)
            audit.record(session_db, user.username, "user.login", user.username,
                         address=address)
            session_db.commit()
            return redirect(_safe_next(request.form.get("next")))
        auth.login_failed(session_db, username, address, now)
        session_db.commit()
        error = _("Wrong user name or password.")
        status = 401
        return render_template("login.html", error=error,
                               next=request.form.get("next", "")), status
    return render_template("login.html", error=None, next=request.args.get("next", ""))


@bp.post("/logout")
def logout():
    """Ends every session of the user, not only this cookie: a copy of it taken earlier
    (another tab, a stolen cookie) stops working too."""
    session_db = db()
    try:
        user = auth.current_user(session_db)
    except auth.AuthError:
        user = None
    if user is not None:
        auth.end_sessions(user)
        session_db.commit()
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang
    return redirect(url_for("web.login"))

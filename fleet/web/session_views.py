"""Logging in and out. Failed logins are limited per account and per address
([web] login_failures in 15 minutes); a success starts a fresh session."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import redirect, render_template, request, session, url_for
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
        if auth.login_blocked(session_db, username, address, config.web.login_failures, now):
            error = _("Too many failed logins. Wait 15 minutes, or ask an admin.")
            status = 429
        else:
            user = session_db.scalar(select(User).where(User.username == username))
            if auth.check_password(user, password):
                lang = session.get("lang")
                session.clear()  # a fresh session: no fixation
                session.permanent = True
                session["user_id"] = user.id
                if lang:
                    session["lang"] = lang
                auth.csrf_token()
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
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang
    return redirect(url_for("web.login"))

"""The dashboard: server-rendered pages for operators, district officers, health
officials and admins (docs/dashboard.md). Each module registers its pages on `bp`.

Pages use the same login, roles and district scope as the JSON API (fleet/auth.py);
every POST form carries the session's CSRF token, checked before the view runs.
"""

from __future__ import annotations

import functools

from flask import Blueprint, g, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _

from ..auth import (AuthError, SAFE_METHODS, check_csrf, csrf_token, current_user,
                    admitted, require_district)

bp = Blueprint("web", __name__, template_folder="../templates", static_folder="../static",
               static_url_path="/static")


@bp.before_request
def _csrf():
    if request.method not in SAFE_METHODS:
        check_csrf(request.form.get("csrf_token") or request.headers.get("X-CSRF-Token"))
        g.csrf_checked = True  # current_user() need not ask for the header again


@bp.app_context_processor
def _template_globals():
    from ..app import primary_db
    try:
        user = current_user(primary_db())
    except AuthError:
        user = None
    return {"csrf_token": csrf_token, "user": user, "get_locale": get_locale}


def page(*roles: str):
    """Decorator for pages: logged in (else to the login page), with one of `roles`
    (admin always may; no roles: every role but the manager, see auth.admitted)."""
    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            from ..app import primary_db  # who calls: never a lagging replica
            user = current_user(primary_db())
            if user is None:
                return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
            if not admitted(user, roles):
                raise AuthError(403, _("Your role may not open this page."))
            require_district(user, _("Your district officer account has no district; ask "
                                     "an admin to assign one."))
            g.actor = user.username
            return view(*args, **kwargs)
        return wrapper
    return decorate


@bp.errorhandler(AuthError)
def _auth_error(exc: AuthError):
    from ..refusals import translated
    return render_template("error.html", status=exc.status,
                           message=translated(exc.message)), exc.status


@bp.app_template_filter("said")
def _said(message):
    """A service's refusal (fleet/refusals.py) in the page's language."""
    from ..refusals import translated
    return translated(message)


# Page modules, one per line (each registers its routes on bp).
from . import session_views  # noqa: E402,F401
from . import home  # noqa: E402,F401
from . import lists_views  # noqa: E402,F401
from . import audit_views  # noqa: E402,F401
from . import trace_views  # noqa: E402,F401
from . import kiosks  # noqa: E402,F401
from . import stats  # noqa: E402,F401
from . import alerts_views  # noqa: E402,F401
from . import trust_views  # noqa: E402,F401
from . import policy_views  # noqa: E402,F401
from . import valuesets_views  # noqa: E402,F401
from . import users_views  # noqa: E402,F401
from . import compliance_views  # noqa: E402,F401
from . import organisation_views  # noqa: E402,F401
from . import roster_views  # noqa: E402,F401

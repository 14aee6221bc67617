"""The home page: kiosks by state, the outages first (where, since when, for how long,
last heartbeat, bundles behind, outbox), then degraded and silent kiosks; all in the
caller's scope (docs/dashboard.md#home).

Live updates: the page polls GET /live/home every few seconds with the ETag of what it
shows (If-None-Match). The answer is computed from the database alone, so any gunicorn
worker gives the same body and the same ETag for the same fleet; nothing is kept in a
process. 304 when nothing shown has changed (durations are in whole minutes, so an open
outage changes the body once a minute), else the new fragment.
"""

from __future__ import annotations

import hashlib
import json

from flask import Response, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from ..api.activity import silent_kiosks, state_counts
from ..api.common import iso, now, scope
from ..api.fleet_objects import bridge_rows, find_kiosks
from ..app import current_fleet, db
from ..auth import AuthError, current_user
from ..models import DEGRADED, OFFLINE, ROLES, STATES, Outage
from . import bp, display, page  # noqa: F401  (display registers the filters)

# Rows per list: the longest outages first; the kiosk list (linked) shows the rest. A
# city-wide outage of hundreds of kiosks would otherwise make every poll of every open
# dashboard render hundreds of rows (bench/dashboard.py: 0.5 s per render at 10k kiosks).
LIST_LIMIT = 100
SILENT_LIMIT = 50
POLL_SECONDS = 3


def home_data(session, at: float) -> dict:
    """Everything the live part of the home page shows (the caller's scope applies)."""
    scope()  # an officer without a district: 403 before any query
    counts = state_counts(session)
    outages = find_kiosks(session, at, states=[OFFLINE], order="attention", limit=LIST_LIMIT)
    # The outage row says when the fleet last heard the kiosk (the outage's start), which
    # can be before the state changed (a silence is only noticed after the timeout).
    started = dict(session.execute(
        select(Outage.kiosk_id, Outage.started).where(
            Outage.ended.is_(None), Outage.kiosk_id.in_([k["id"] for k in outages]))).all())
    for kiosk in outages:
        since = started.get(kiosk["id"])
        kiosk["down_since"] = iso(since) if since is not None else kiosk["state_since"]
        begin = display._epoch(kiosk["down_since"])
        kiosk["down_seconds"] = None if begin is None else max(0.0, at - begin)
    outages.sort(key=lambda k: (-(k["down_seconds"] or 0), k["id"]))
    degraded = find_kiosks(session, at, states=[DEGRADED], order="attention", limit=LIST_LIMIT)
    for kiosk in degraded:
        begin = display._epoch(kiosk["state_since"])
        kiosk["state_seconds"] = None if begin is None else max(0.0, at - begin)
    silent_hours = current_fleet().config.web.silent_hours
    silent = silent_kiosks(session, at, silent_hours * 60, limit=SILENT_LIMIT)
    return {"counts": counts, "outages": outages, "degraded": degraded, "silent": silent,
            "silent_hours": silent_hours, "at": at, "bridges": bridge_rows(session)}


def live_payload(data: dict) -> tuple[bytes, str, str]:
    """The live fragment as JSON, its ETag (a hash of exactly these bytes) and the
    fragment's HTML (rendered once: the page embeds the same text)."""
    html = render_template("home_live.html", **data)
    counts = {state: data["counts"][state] for state in STATES}
    body = json.dumps({"counts": counts, "html": html}, sort_keys=True,
                      separators=(",", ":")).encode()
    return body, hashlib.sha256(body).hexdigest()[:32], html


@bp.get("/")
@page(*ROLES)  # a manager too: limited to its organisation's kiosks
def home():
    data = home_data(db(), now())
    _body, etag, html = live_payload(data)
    return render_template("home.html", etag=etag, poll_ms=POLL_SECONDS * 1000,
                           live_url=url_for("web.home_live"), live_html=html,
                           utc_offset=display.utc_offset(data["at"]), **data)


@bp.get("/live/home")
def home_live():
    """The home page's live fragment (JSON), conditional on If-None-Match."""
    user = current_user(db())
    if user is None:  # a script cannot follow a redirect to the login form: say so
        raise AuthError(401, _("Your session has ended: reload the page to log in again."))
    body, etag, _html = live_payload(home_data(db(), now()))
    response = Response(body, mimetype="application/json")
    response.set_etag(etag)
    # the browser must ask each time (the script sends If-None-Match itself); private:
    # the fragment depends on the user's district
    response.headers["Cache-Control"] = "no-cache, private"
    response.vary.add("Cookie")
    if etag in request.if_none_match:
        response = Response(status=304, headers={"ETag": response.headers["ETag"],
                                                 "Cache-Control": "no-cache, private"})
    return response

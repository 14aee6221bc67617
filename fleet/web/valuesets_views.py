"""The value sets on the dashboard (docs/dashboard.md#value-sets): each EU value set of a
deployment (id, date, number of codes, who changed it last), the valuesets bundle version
kiosks should hold and how many of them report it. Read only: value sets are replaced
with `greengate-fleet valuesets replace DIR` or PUT /api/v1/valuesets/<dep>.

    GET /valuesets[?deployment=]        everyone logged in (as GET /api/v1/valuesets)
"""

from __future__ import annotations

from flask import render_template, request
from sqlalchemy import select

from .. import bundles
from ..api.common import location_clause, scope
from ..app import current_fleet, db, primary_db
from ..bundles import ListError
from ..auth import AuthError
from ..models import DEGRADED, ONLINE, Kiosk, Location, ValueSet
from . import bp, page
from .lists_views import _deployment


@bp.get("/valuesets")
@page()
def valuesets_page():
    deployment = _deployment(request.args.get("deployment"))
    session_db = db()
    if bundles.missing(session_db, deployment):
        session_db = primary_db()  # issued there now, and read back from there
        try:  # a deployment nobody changed yet: version 1 of its lists, as the API does
            bundles.ensure_issued(session_db, current_fleet().config, deployment)
        except ListError as exc:
            raise AuthError(exc.status, exc.message) from None
    rows = session_db.scalars(select(ValueSet).where(ValueSet.deployment == deployment)
                              .order_by(ValueSet.value_set_id)).all()
    latest = bundles.latest(session_db, deployment, "valuesets")
    version = latest.version if latest is not None else None
    # the kiosks in the caller's scope, by the valuesets version they report
    held = {"current": 0, "older": 0, "vendored": 0}
    beats = (select(Kiosk.heartbeat).outerjoin(Location, Kiosk.location_id == Location.id)
             .where(Kiosk.deployment == deployment, Kiosk.state.in_((ONLINE, DEGRADED))))
    clause = location_clause()
    if clause is not None:
        beats = beats.where(clause)
    for beat in session_db.scalars(beats):
        applied = beat.get("bundles") if isinstance(beat, dict) else None
        have = applied.get("valuesets") if isinstance(applied, dict) else None
        have = have if isinstance(have, int) and not isinstance(have, bool) else None
        held["vendored" if have is None else "current" if have == version else "older"] += 1
    sets = [{"id": r.value_set_id, "date": r.document.get("valueSetDate"),
             "codes": len(r.document.get("valueSetValues") or {}),
             "updated_by": r.updated_by, "updated_at": r.updated_at} for r in rows]
    return render_template("valuesets.html", deployment=deployment,
                           deployments=current_fleet().config.fleet.deployments, sets=sets,
                           version=version, issued_at=latest.issued_at if latest else None,
                           held=held)

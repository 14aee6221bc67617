"""The home page: kiosks by state, in the caller's scope (docs/dashboard.md)."""

from __future__ import annotations

from flask import render_template
from sqlalchemy import func, select

from ..app import db
from ..auth import current_user, district_scope
from ..models import STATES, Kiosk, Location
from . import bp, page


@bp.get("/")
@page()
def home():
    session = db()
    stmt = select(Kiosk.state, func.count(Kiosk.id)).group_by(Kiosk.state)
    district = district_scope(current_user(session))
    if district is not None:
        stmt = stmt.join(Location, Kiosk.location_id == Location.id).where(
            Location.district_id == district)
    counts = dict.fromkeys(STATES, 0)
    counts.update(dict(session.execute(stmt).all()))
    return render_template("home.html", counts=counts)

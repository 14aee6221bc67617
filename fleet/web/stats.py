"""The statistics page (/stats): scans per hour over the last 24 hours or 7 days (an
inline SVG chart made on the server), green/red ratio, volumes per district and per
location, the most frequent red reasons. District and location are where each scan
was made (recorded at ingest), as in GET /api/v1/stats/scans-per-hour, whose hour
buckets this page shares (fleet/api/activity.py hourly_volumes)."""

from __future__ import annotations

import math

from flask import render_template, request
from sqlalchemy import func, null, select

from ..api.activity import hourly_volumes, scan_where
from ..api.common import district_by_code, location_by_code, now
from ..app import db
from .. import scan_hours
from ..models import District, Location, ScanSummary
from . import bp, display, page
from .kiosks import _code, places

RANGES = {"24h": 24, "7d": 7 * 24}
TOP_REASONS = 10


def _grouped(session, columns, first: int, end: int, where: dict, *, red_only=False):
    """Counts of scans plus summarized decisions over [first, end), grouped by `columns`,
    in the caller's scope and filters. A column the summaries lack (sub_reason) is None
    for them. The scans are counted from the hourly rollup where it has them
    (fleet/scan_hours.py)."""
    red = (lambda table: (table.decision == "red",)) if red_only else (lambda table: ())
    out = scan_hours.counted(session, columns, first, end,
                             lambda stmt, table: scan_where(stmt, table, **where), extra=red)
    cols = [getattr(ScanSummary, c, None) for c in columns]
    stmt = (select(*(null() if c is None else c for c in cols), func.sum(ScanSummary.count))
            .where(ScanSummary.hour >= first, ScanSummary.hour < end, *red(ScanSummary))
            .group_by(*(c for c in cols if c is not None)))
    for row in session.execute(scan_where(stmt, ScanSummary, **where)).all():
        key = tuple(row[:-1])
        out[key] = out.get(key, 0) + int(row[-1] or 0)
    return out


def _by_place(session, first, end, where) -> tuple[list[dict], list[dict]]:
    counts = _grouped(session, ("district_id", "location_id", "decision"), first, end, where)
    districts = {d.id: d for d in session.scalars(select(District))}
    locations = {loc.id: loc for loc in session.scalars(select(Location))}
    per_district: dict = {}
    per_location: dict = {}
    for (district_id, location_id, decision), n in counts.items():
        for table, key, name in (
                (per_district, district_id, districts.get(district_id)),
                (per_location, location_id, locations.get(location_id))):
            row = table.setdefault(key, {"name": name.name if name else None,
                                         "code": name.code if name else None,
                                         "district": districts.get(district_id),
                                         "total": 0, "green": 0, "red": 0})
            row["total"] += n
            if decision in ("green", "red"):
                row[decision] += n
    order = lambda row: (-row["total"], row["name"] or "")  # noqa: E731
    return sorted(per_district.values(), key=order), sorted(per_location.values(), key=order)


@bp.get("/stats")
@page()
def stats_page():
    session = db()
    at = now()
    window = request.args.get("range") if request.args.get("range") in RANGES else "24h"
    district_code, location_code = _code("district"), _code("location")
    # another district's code is the API's 403 (display.py shows it as a page)
    district = district_by_code(session, district_code, "filter") if district_code else None
    location = location_by_code(session, location_code, "filter") if location_code else None
    where = {"district_id": district.id if district else None,
             "location_id": location.id if location else None}
    end = math.ceil(at / 3600) * 3600
    first = end - RANGES[window] * 3600
    hours = hourly_volumes(session, first, end,
                           lambda stmt, table: scan_where(stmt, table, **where))
    totals = {key: sum(h[key] for h in hours) for key in ("total", "green", "red", "other")}
    per_district, per_location = _by_place(session, first, end, where)
    reasons = _grouped(session, ("reason", "sub_reason"), first, end, where, red_only=True)
    top = sorted(({"reason": r, "sub_reason": sub, "count": n}
                  for (r, sub), n in reasons.items()),
                 key=lambda row: (-row["count"], row["reason"], row["sub_reason"] or ""))
    top = top[:TOP_REASONS]
    chart = display.bar_chart(hours, label_every=3 if window == "24h" else 24,
                              label_format="%Hh" if window == "24h" else "%d/%m")
    districts, locations = places(session, district_code, location_code)
    return render_template("stats.html", window=window, ranges=RANGES, chart=chart,
                           totals=totals, per_district=per_district, per_location=per_location,
                           top=top, districts=districts, locations=locations,
                           filters={"district": district_code, "location": location_code},
                           first=first, end=end, at=at)

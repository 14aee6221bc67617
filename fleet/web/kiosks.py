"""The kiosk list (/kiosks: filters by district, location, state, silent; search by id)
and one kiosk's page (/kiosks/<id>: presence timeline, decisions by reason, config,
bundles, last heartbeat, missing decisions (gaps), quarantined messages). Both in the
caller's scope, through the API's own query functions: another district's kiosk is a
404, as GET /api/v1/kiosks/<id> answers."""

from __future__ import annotations

from flask import render_template, request
from sqlalchemy import func, select

from .. import quarantine
from ..api import ApiError
from ..api.activity import TRACERS, scan_where, silent_kiosks
from ..api.common import CODE, caller, now, scope
from ..api.fleet_objects import KIOSK_ID, find_kiosks, kiosk_detail
from ..api.quarantined import READERS as QUARANTINE_READERS
from ..app import current_fleet, db
from ..models import STATES, District, Location, Scan, ScanSummary
from . import bp, display, page  # noqa: F401  (display registers the filters)

RANGES = {"24h": 24, "7d": 7 * 24}  # the decision counts' windows, in hours
QUARANTINE_SHOWN = 20  # the newest; GET /api/v1/quarantine?kiosk= pages through all


def _code(name: str) -> str | None:
    """A district or location code from the query, or None (empty, or not a code at all:
    a form's empty choice means "all")."""
    value = (request.args.get(name) or "").strip()
    return value if CODE.match(value) else None


def places(session) -> tuple[list[District], list[tuple[Location, District | None]]]:
    """The districts and locations the caller may filter on (an officer: their own)."""
    limited = scope()
    districts = select(District).order_by(District.name)
    locations = (select(Location, District).outerjoin(District, Location.district_id == District.id)
                 .order_by(District.name.nulls_last(), Location.name))
    if limited is not None:
        districts = districts.where(District.id == limited)
        locations = locations.where(Location.district_id == limited)
    return list(session.scalars(districts)), list(session.execute(locations).all())


@bp.get("/kiosks")
@page()
def kiosks_page():
    session = db()
    at = now()
    state = request.args.get("state") or None
    state = state if state in STATES else None
    search = (request.args.get("q") or "").strip()[:63] or None
    silent = request.args.get("silent") == "1"
    filters = {"district": _code("district"), "location": _code("location"), "state": state,
               "q": search or "", "silent": silent}
    items = find_kiosks(session, at, district=filters["district"], location=filters["location"],
                        states=[state] if state else None, order="attention", search=search)
    silent_hours = current_fleet().config.web.silent_hours
    if silent:
        quiet = {k["id"]: k for k in silent_kiosks(session, at, silent_hours * 60)}
        items = [dict(k, last_scan=quiet[k["id"]]["last_scan"]) for k in items if k["id"] in quiet]
    districts, locations = places(session)
    return render_template("kiosks.html", items=items, filters=filters, districts=districts,
                           locations=locations, states=STATES, officer=scope() is not None,
                           silent_hours=silent_hours, at=at)


def decisions(session, kiosk_id: str, since: float, until: float) -> list[dict]:
    """The kiosk's decisions counted by decision, reason and sub-reason (summaries of a full
    outbox added in). Only counts leave the database: never a holder pseudonym or a
    certificate hash, whoever asks."""
    rows: dict[tuple, int] = {}
    scans = scan_where(select(Scan.decision, Scan.reason, Scan.sub_reason, func.count())
                       .where(Scan.ts >= since, Scan.ts < until)
                       .group_by(Scan.decision, Scan.reason, Scan.sub_reason),
                       Scan, kiosk_id=kiosk_id)
    for decision, reason, sub, n in session.execute(scans).all():
        rows[(decision, reason, sub)] = rows.get((decision, reason, sub), 0) + int(n)
    summaries = scan_where(select(ScanSummary.decision, ScanSummary.reason,
                                  func.sum(ScanSummary.count))
                           .where(ScanSummary.first >= since, ScanSummary.last < until)
                           .group_by(ScanSummary.decision, ScanSummary.reason),
                           ScanSummary, kiosk_id=kiosk_id)
    for decision, reason, n in session.execute(summaries).all():
        rows[(decision, reason, None)] = rows.get((decision, reason, None), 0) + int(n)
    out = [{"decision": d, "reason": r, "sub_reason": s, "count": n}
           for (d, r, s), n in rows.items()]
    # green first, then the most frequent reasons
    out.sort(key=lambda row: (row["decision"] != "green", -row["count"], row["reason"] or "",
                              row["sub_reason"] or ""))
    return out


@bp.get("/kiosks/<kiosk_id>")
@page()
def kiosk_page(kiosk_id):
    session = db()
    at = now()
    if not KIOSK_ID.match(kiosk_id):
        raise ApiError(404, f"no kiosk {kiosk_id!r}")
    kiosk = kiosk_detail(session, kiosk_id, at, events=50, outages=20)  # 404 out of scope
    role = caller().role
    held = []
    if role in QUARANTINE_READERS:  # as GET /api/v1/quarantine; pseudonyms for tracers only
        for row in quarantine.recent(session, kiosk_id, QUARANTINE_SHOWN):
            raw = row["raw"]
            if role not in TRACERS:
                raw = quarantine.mask_pseudonyms(raw, truncated=row["size"] > len(raw))
            held.append(dict(row, preview=quarantine.preview(raw)))
    window = request.args.get("range") if request.args.get("range") in RANGES else "24h"
    rows = decisions(session, kiosk_id, at - RANGES[window] * 3600, at)
    total = sum(r["count"] for r in rows)
    green = sum(r["count"] for r in rows if r["decision"] == "green")
    return render_template("kiosk.html", k=kiosk, decisions=rows, total=total, green=green,
                           red=sum(r["count"] for r in rows if r["decision"] == "red"),
                           window=window, ranges=RANGES, at=at, quarantined=held,
                           quarantine_shown=QUARANTINE_SHOWN,
                           quarantine_readable=role in QUARANTINE_READERS)

"""The kiosk list (/kiosks: filters by district, location, state, silent; search by id)
and one kiosk's page (/kiosks/<id>: presence timeline, decisions by reason, config,
bundles, last heartbeat, missing decisions (gaps), quarantined messages). Both in the
caller's scope, through the API's own query functions: another district's kiosk is a
404, as GET /api/v1/kiosks/<id> answers."""

from __future__ import annotations

from flask import render_template, request, url_for
from sqlalchemy import func, select

from .. import quarantine
from ..api import ApiError
from ..api.activity import TRACERS, last_scans, scan_where, silent_ids
from ..api.common import CODE, caller, iso, location_clause, now, scope
from ..api.fleet_objects import KIOSK_ID, find_kiosks, kiosk_detail
from ..api.quarantined import READERS as QUARANTINE_READERS
from ..app import current_fleet, db
from ..models import ROLES, STATES, District, Location, Scan, ScanSummary
from . import bp, display, page  # noqa: F401  (display registers the filters)

RANGES = {"24h": 24, "7d": 7 * 24}  # the decision counts' windows, in hours
QUARANTINE_SHOWN = 20
PAGE_SIZE = 50  # kiosks per page of /kiosks: about 40 kB of HTML
LOCATIONS_LISTED = 200  # more: the location filter offers the chosen district's only  # the newest; GET /api/v1/quarantine?kiosk= pages through all


def _code(name: str) -> str | None:
    """A district or location code from the query, or None (empty, or not a code at all:
    a form's empty choice means "all")."""
    value = (request.args.get(name) or "").strip()
    return value if CODE.match(value) else None


def places(session, district: str | None = None, location: str | None = None
           ) -> tuple[list[District], list[tuple[Location, District | None]] | None]:
    """The districts and locations the caller may filter on (an officer: their own).
    With more than LOCATIONS_LISTED locations, only the chosen district's are offered
    (and a location already chosen): 2,000 options were most of a page's HTML and time
    (bench/dashboard.py). None: choose a district first."""
    limited = scope()
    districts = select(District).order_by(District.name)
    locations = (select(Location, District).outerjoin(District, Location.district_id == District.id)
                 .order_by(District.name.nulls_last(), Location.name))
    if limited is not None:
        districts = districts.where(District.id == limited)
        locations = locations.where(location_clause())
    districts = list(session.scalars(districts))
    if limited is None and district is None and session.scalar(
            select(func.count(Location.id))) > LOCATIONS_LISTED:
        if location is None:
            return districts, None
        locations = locations.where(Location.code == location)
    elif district is not None:
        locations = locations.where(District.code == district)
    return districts, list(session.execute(locations).all())


def _page_number() -> int:
    """?page= (1-based); anything that is not a positive number is the first page."""
    value = (request.args.get("page") or "").strip()
    return int(value) if value.isdigit() and 0 < len(value) <= 6 and int(value) > 0 else 1


@bp.get("/kiosks")
@page(*ROLES)  # a manager too: its organisation's kiosks
def kiosks_page():
    """One page of PAGE_SIZE kiosks (offsets: the order is by state and time, and the
    count says how many pages there are); the filters travel in every page link. At
    10,000 kiosks the unpaged list was 7 MB of HTML and over a second per request
    (docs/dashboard.md, "Kiosk list")."""
    session = db()
    at = now()
    state = request.args.get("state") or None
    state = state if state in STATES else None
    search = (request.args.get("q") or "").strip()[:63] or None
    silent = request.args.get("silent") == "1"
    filters = {"district": _code("district"), "location": _code("location"), "state": state,
               "q": search or "", "silent": silent}
    query = dict(district=filters["district"], location=filters["location"],
                 states=[state] if state else None, search=search)
    silent_hours = current_fleet().config.web.silent_hours
    if silent:
        # thousands may be silent: their ids in the list's order (one query), then one
        # page of them (an IN list of thousands in a count cost 250 ms at 10,000 kiosks)
        quiet = silent_ids(at, silent_hours * 60)
        matched = find_kiosks(session, at, order="attention", only_ids=True,
                              **dict(query, ids=quiet))
        total = len(matched)
        pages = max(1, -(-total // PAGE_SIZE))
        number = min(_page_number(), pages)
        shown = matched[(number - 1) * PAGE_SIZE:number * PAGE_SIZE]
        items = find_kiosks(session, at, order="attention", **dict(query, ids=shown))
        scanned = last_scans(session, shown)
        items = [dict(k, last_scan=iso(scanned.get(k["id"]))) for k in items]
    else:
        total = find_kiosks(session, at, count=True, **query)
        pages = max(1, -(-total // PAGE_SIZE))
        number = min(_page_number(), pages)
        items = find_kiosks(session, at, order="attention", limit=PAGE_SIZE,
                            offset=(number - 1) * PAGE_SIZE, **query)
    districts, locations = places(session, filters["district"], filters["location"])
    link = {key: value for key, value in (("district", filters["district"]),
                                          ("location", filters["location"]),
                                          ("state", state), ("q", search),
                                          ("silent", "1" if silent else None)) if value}
    return render_template("kiosks.html", items=items, filters=filters, districts=districts,
                           locations=locations, states=STATES, officer=scope() is not None,
                           silent_hours=silent_hours, at=at, total=total, page=number,
                           pages=pages, first=(number - 1) * PAGE_SIZE + 1 if items else 0,
                           last=(number - 1) * PAGE_SIZE + len(items),
                           page_url=lambda n: url_for("web.kiosks_page", **link,
                                                      **({"page": n} if n > 1 else {})))


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
@page(*ROLES)
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

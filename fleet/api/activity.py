"""Scans, statistics (scans per hour, the overview with silent kiosks) and the audit log
(docs/api.md).

Scan times (`ts`) are the kiosks' decision times; filters and hour buckets use
them. District and location filters use where the kiosk stood when the scan was
ingested (Scan.district_id / location_id), so moving a kiosk keeps its history.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import jsonify, request
from sqlalchemy import func, or_, select

from ..auth import require
from .. import scan_hours
from ..models import (ADMIN, HEALTH_OFFICIAL, STATES, AuditLog, District, Kiosk, Location,
                      Outage, PresenceEvent, Scan, ScanSummary)
from . import ApiError, bp
from .common import (CODE, CODE_RULE, caller, choice_arg, district_by_code,
                     int_arg, iso, keyset_page, location_by_code, location_clause, now,
                     org_scope, page_args, pattern_arg, scope, time_range, ward_scope)
from .fleet_objects import (CONNECTED, KIOSK_ID, KIOSK_RULE, _kiosk_select, _scoped_kiosks,
                            current_versions, kiosk_json,
                            quarantined_counts)
from ..app import current_fleet, db

HEX = re.compile(r"^[0-9a-f]{1,64}$")
HEX_RULE = "lowercase hexadecimal, at most 64 digits"
REASON = re.compile(r"^[a-z_]{1,40}$")
REASON_RULE = "a reason code such as ok, expired or policy_failed"
DECISIONS = ("green", "red")
TRACERS = (ADMIN, HEALTH_OFFICIAL)  # who sees certificate hashes and holder pseudonyms
MAX_HOURS = 93 * 24


def _may_trace() -> bool:
    return caller().role in TRACERS


# --- scans ---------------------------------------------------------------------------------
def _scan_json(s: Scan, location: str | None, district: str | None, tracer: bool) -> dict:
    return {"id": s.id, "scan_id": s.scan_id, "kiosk": s.kiosk_id, "ts": iso(s.ts),
            "received": iso(s.received), "decision": s.decision, "reason": s.reason,
            "sub_reason": s.sub_reason, "type": s.cert_type,
            "cert_hash": s.cert_hash if tracer else None,
            "holder": s.holder if tracer else None,
            "policy": s.policy, "location": location, "district": district}


@bp.get("/scans")
@require()
def list_scans():
    """Scans, newest first (order=oldest for the other way), keyset-paginated on id.
    Filters: kiosk, location, district, decision, reason, type, since/until (on ts),
    cert_hash and holder (admins and health officials only)."""
    session = db()
    tracer = _may_trace()
    stmt = (select(Scan, Location.code, District.code)
            .outerjoin(Location, Location.id == Scan.location_id)
            .outerjoin(District, District.id == Scan.district_id))
    stmt = _scan_filters(session, stmt, Scan)
    decision = choice_arg("decision", DECISIONS)
    if decision is not None:
        stmt = stmt.where(Scan.decision == decision)
    reason = pattern_arg("reason", REASON, REASON_RULE)
    if reason is not None:
        stmt = stmt.where(Scan.reason == reason)
    cert_type = choice_arg("type", ("v", "t", "r"))
    if cert_type is not None:
        stmt = stmt.where(Scan.cert_type == cert_type)
    for name, column in (("cert_hash", Scan.cert_hash), ("holder", Scan.holder)):
        value = pattern_arg(name, HEX, HEX_RULE, lower=True)
        if value is not None:
            if not tracer:
                raise ApiError(403, f"filtering by {name} is tracing: only a health official "
                                    "or an admin may do it", "forbidden")
            stmt = stmt.where(column == value)
    since, until = time_range()
    if since is not None:
        stmt = stmt.where(Scan.ts >= since)
    if until is not None:
        stmt = stmt.where(Scan.ts < until)
    order = choice_arg("order", ("newest", "oldest"), "newest")
    limit, after = page_args()
    rows, cursor = keyset_page(session, stmt, Scan.id, limit, after, descending=order == "newest")
    items = [_scan_json(s, loc, d, tracer) for s, loc, d in rows]
    return jsonify(items=items, next=cursor)


def _scan_filters(session, stmt, table):
    """The district officer's scope and the kiosk / location / district filters, on the
    scan or scan_summary table."""
    kiosk_id = pattern_arg("kiosk", KIOSK_ID, KIOSK_RULE)
    code = pattern_arg("location", CODE, CODE_RULE)
    location_id = location_by_code(session, code, "filter").id if code is not None else None
    code = pattern_arg("district", CODE, CODE_RULE)
    district_id = district_by_code(session, code, "filter").id if code is not None else None
    return scan_where(stmt, table, kiosk_id=kiosk_id, location_id=location_id,
                      district_id=district_id)


def _narrower_locations():
    """For a ward officer or a manager, the ids of their locations (a subquery): scans
    carry the district recorded at ingest, not the ward or organisation, so the finer
    limit goes through the location. None: the district limit is all there is."""
    if ward_scope() is None and org_scope() is None:
        return None
    return select(Location.id).where(location_clause())


def scan_where(stmt, table, *, kiosk_id: str | None = None, location_id: int | None = None,
               district_id: int | None = None):
    """`stmt` on the scan or scan_summary table limited to the caller's scope (the district
    recorded at ingest) and to the given kiosk / location / district ids."""
    limited = scope()
    if limited is not None:
        stmt = stmt.where(table.district_id == limited)
    narrower = _narrower_locations()
    if narrower is not None:
        stmt = stmt.where(table.location_id.in_(narrower))
    if kiosk_id is not None:
        stmt = stmt.where(table.kiosk_id == kiosk_id)
    if location_id is not None:
        stmt = stmt.where(table.location_id == location_id)
    if district_id is not None:
        stmt = stmt.where(table.district_id == district_id)
    return stmt


# --- scans per hour ------------------------------------------------------------------------
def hourly_volumes(session, first: int, end: int, filters, *, rollup: bool = True) -> list[dict]:
    """Scans per UTC hour from `first` to `end` (whole hours), summaries of full outboxes
    added in: [{"hour", "total", "green", "red", "other", "summarized"}], every hour listed.
    `filters(stmt, table)` limits the scan, scan_hour and scan_summary queries (scope,
    place); rollup=False when it filters on what the hourly counts do not keep (a kiosk).
    The dashboard's stats page shares this with GET /stats/scans-per-hour."""
    buckets = {h: {"hour": iso(h), "total": 0, "green": 0, "red": 0, "other": 0,
                   "summarized": 0} for h in range(first, end, 3600)}
    scans = scan_hours.counted(session, ("hour", "decision"), first, end, filters,
                               rollup=rollup)
    summaries = (select(ScanSummary.hour, ScanSummary.decision, func.sum(ScanSummary.count))
                 .where(ScanSummary.hour >= first, ScanSummary.hour < end)
                 .group_by(ScanSummary.hour, ScanSummary.decision))
    summaries = filters(summaries, ScanSummary)
    for rows, summarized in (([(*key, n) for key, n in scans.items()], False),
                             (session.execute(summaries).all(), True)):
        for hour, decision, count in rows:
            bucket = buckets.get(int(hour))
            if bucket is None:  # cannot happen with the range above; never invent an hour
                continue
            count = int(count)
            bucket[decision if decision in DECISIONS else "other"] += count
            bucket["total"] += count
            if summarized:
                bucket["summarized"] += count
    return list(buckets.values())


@bp.get("/stats/scans-per-hour")
@require()
def scans_per_hour():
    """Scan volumes per UTC hour, summaries of full kiosk outboxes added in.
    since/until (default: the last 24 hours) widen to whole hours; filters district,
    location, kiosk."""
    session = db()
    at = now()
    since, until = time_range()
    if until is None:
        until = at if since is None or since < at else since + 24 * 3600
    if since is None:
        since = until - 24 * 3600
    first = math.floor(since / 3600) * 3600
    end = max(math.ceil(until / 3600) * 3600, first + 3600)
    hours = (end - first) // 3600
    if hours > MAX_HOURS:
        raise ApiError(400, f"the range spans {hours} hours; ask for at most {MAX_HOURS // 24} "
                            "days at a time")
    series = hourly_volumes(session, first, end, lambda stmt, table: _scan_filters(
        session, stmt, table), rollup=not request.args.get("kiosk"))
    totals = {key: sum(b[key] for b in series) for key in ("total", "green", "red", "other",
                                                          "summarized")}
    return jsonify(since=iso(first), until=iso(end), hours=series, totals=totals,
                   filter={name: request.args.get(name) for name in ("district", "location",
                                                                     "kiosk")
                           if request.args.get(name)})


# --- overview -------------------------------------------------------------------------------
def _tz():
    name = request.args.get("tz", "UTC").strip() or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ApiError(400, f"tz={name!r} is not a time zone: use an IANA name such as "
                            "Asia/Ho_Chi_Minh, or UTC") from None


def _count_scans(session, since: float, until: float, district_id: int | None) -> int:
    """Scans decided in [since, until] plus summaries wholly inside it, in the caller's
    scope, optionally of one district."""
    def limit(stmt, table):
        return scan_where(stmt, table, district_id=district_id)

    scans = scan_hours.counted(session, (), since, math.nextafter(until, math.inf), limit)
    # A summary counts when all its decisions fall in the window (first >= since).
    summaries = limit(select(func.coalesce(func.sum(ScanSummary.count), 0)).where(
        ScanSummary.first >= since, ScanSummary.last <= until), ScanSummary)
    return sum(scans.values()) + int(session.scalar(summaries))


def state_counts(session, district_id: int | None = None) -> dict[str, int]:
    """Kiosks per presence state (every state listed) and "total", in the caller's scope,
    optionally of one district."""
    counts = select(Kiosk.state, func.count(Kiosk.id)).outerjoin(
        Location, Kiosk.location_id == Location.id).group_by(Kiosk.state)
    counts = _scoped_kiosks(counts)
    if district_id is not None:
        counts = counts.where(Location.district_id == district_id)
    kiosks = dict.fromkeys(STATES, 0)
    for state, n in session.execute(counts).all():
        kiosks[state] = kiosks.get(state, 0) + n
    kiosks["total"] = sum(kiosks.values())
    return kiosks


def silent_kiosks(session, at: float, minutes: float, district_id: int | None = None,
                  limit: int | None = None) -> list[dict]:
    """Connected kiosks (for the whole window) without a scan in the last `minutes`, in
    the caller's scope: kiosk objects plus "last_scan" and "silent_seconds", never-scanned
    first, then the longest silent. Shared by GET /stats/overview and the dashboard."""
    silent = _silent_select(at, minutes, district_id)
    if limit is not None:
        silent = silent.limit(limit)
    versions = current_versions(session)
    items = []
    rows = session.execute(silent).all()
    counts = quarantined_counts(session, [k.id for k, _, _, _ in rows])
    for k, loc, d, last in rows:
        item = kiosk_json(k, loc, d, versions, at, counts.get(k.id, 0))
        item["last_scan"] = iso(last)
        item["silent_seconds"] = None if last is None else round(at - last, 1)
        items.append(item)
    return items


def silent_ids(at: float, minutes: float):
    """The ids of silent_kiosks' kiosks (caller's scope) as a subquery, for the paged
    kiosk list's filter (find_kiosks(ids=...)): thousands may be silent at once, so no
    last scan per kiosk (last_scans() for a page) and no list of ids in Python."""
    silent = _silent_select(at, minutes, None).order_by(None)
    # its own kiosk table, not the enclosing query's (no auto-correlation)
    return silent.with_only_columns(Kiosk.id, maintain_column_froms=True).correlate(None)


def last_scans(session, ids) -> dict[str, float]:
    """{kiosk id: its newest scan's ts} for a page of ids (never scanned: absent)."""
    ids = list(ids)
    if not ids:
        return {}
    return dict(session.execute(select(Scan.kiosk_id, func.max(Scan.ts))
                                .where(Scan.kiosk_id.in_(ids)).group_by(Scan.kiosk_id)).all())


def silent_count(session, at: float, minutes: float, district_id: int | None = None) -> int:
    return int(session.scalar(select(func.count()).select_from(
        _silent_select(at, minutes, district_id).order_by(None).subquery())))


def _silent_select(at: float, minutes: float, district_id: int | None):
    cutoff = at - minutes * 60
    # Sets of the window's scanners and presence events, not a correlated EXISTS per
    # kiosk: one range scan of the window instead of 10,000 index seeks (at 10,000
    # kiosks 35 ms instead of 85-120 ms on SQLite; bench/dashboard.py). The IS NOT NULL
    # keeps NOT IN from turning into "nothing" on a NULL.
    scanned = select(Scan.kiosk_id).where(Scan.ts >= cutoff, Scan.kiosk_id.is_not(None))
    events = select(PresenceEvent.kiosk_id).where(PresenceEvent.at > cutoff,
                                                  PresenceEvent.kiosk_id.is_not(None))
    # Connected for the whole window: no transition into a connected state inside it, and
    # a state that began inside the window counts only if events show where it came from.
    came_back = events.where(PresenceEvent.previous.not_in(CONNECTED))
    last_scan = (select(func.max(Scan.ts)).where(Scan.kiosk_id == Kiosk.id)
                 .correlate(Kiosk).scalar_subquery())
    silent = (_kiosk_select().add_columns(last_scan.label("last_scan"))
              .where(Kiosk.state.in_(CONNECTED), Kiosk.id.not_in(scanned),
                     Kiosk.id.not_in(came_back),
                     or_(Kiosk.state_since.is_(None), Kiosk.state_since <= cutoff,
                         Kiosk.id.in_(events)))
              .order_by(last_scan.asc().nulls_first(), Kiosk.id))
    silent = _scoped_kiosks(silent)
    if district_id is not None:
        silent = silent.where(Location.district_id == district_id)
    return silent


@bp.get("/stats/overview")
@require()
def overview():
    """The dashboard's head: kiosks per state, scans in the last hour and today, open
    outages, and the silent kiosks (connected for the whole last `silent_minutes`, default
    `[web] silent_hours` x 60, without a scan), longest silent first: `silent_limit` (50)
    of them, and `silent_total`."""
    session = db()
    at = now()
    # one default for the API and the dashboard (home, kiosk list): [web] silent_hours
    default = max(1, min(7 * 24 * 60, round(current_fleet().config.web.silent_hours * 60)))
    minutes = int_arg("silent_minutes", default, 1, 7 * 24 * 60)
    tz = _tz()
    code = pattern_arg("district", CODE, CODE_RULE)
    district = district_by_code(session, code, "filter") if code is not None else None
    district_id = district.id if district is not None else None

    kiosks = state_counts(session, district_id)

    midnight = datetime.fromtimestamp(at, tz).replace(hour=0, minute=0, second=0,
                                                      microsecond=0).timestamp()
    scans = {"last_hour": _count_scans(session, at - 3600, at, district_id),
             "today": _count_scans(session, midnight, at, district_id),
             "today_since": iso(midnight)}

    outages = (select(func.count(Outage.id)).select_from(Outage)
               .outerjoin(Kiosk, Kiosk.id == Outage.kiosk_id)
               .outerjoin(Location, Kiosk.location_id == Location.id)
               .where(Outage.ended.is_(None)))
    outages = _scoped_kiosks(outages)
    if district_id is not None:
        outages = outages.where(Location.district_id == district_id)

    # the longest silent first, a page of them: at 10,000 kiosks a quiet half hour makes
    # thousands silent (bench/dashboard.py), and the list is for reading, not exporting
    silent_limit = int_arg("silent_limit", 50, 1, 1000)
    silent_items = silent_kiosks(session, at, minutes, district_id, limit=silent_limit)
    total = len(silent_items) if len(silent_items) < silent_limit else \
        silent_count(session, at, minutes, district_id)
    return jsonify(at=iso(at), district=code, kiosks=kiosks, scans=scans,
                   open_outages=int(session.scalar(outages)), silent_minutes=minutes,
                   silent=silent_items, silent_total=total)


# --- audit log ------------------------------------------------------------------------------
@bp.get("/audit")
@require(ADMIN)
def list_audit():
    """The audit log, newest first, keyset-paginated; filters actor, action, target,
    since/until."""
    session = db()
    stmt = select(AuditLog)
    for name, column in (("actor", AuditLog.actor), ("action", AuditLog.action),
                         ("target", AuditLog.target)):
        value = request.args.get(name)
        if value:
            stmt = stmt.where(column == value)
    since, until = time_range()
    if since is not None:
        stmt = stmt.where(AuditLog.at >= since)
    if until is not None:
        stmt = stmt.where(AuditLog.at < until)
    limit, after = page_args()
    rows, cursor = keyset_page(session, stmt, AuditLog.id, limit, after)
    items = [{"id": a.id, "at": iso(a.at), "actor": a.actor, "action": a.action,
              "target": a.target, "detail": a.detail} for (a,) in rows]
    return jsonify(items=items, next=cursor)


"""Compliance watch (docs/reports.md): per ward and per district, how many organisations
stand in each status, how many locations have an online kiosk, recorded scans today and
in the last 7 days, which are silent, and the reminders officers gave (past three, the
organisation is flagged for a stop).

Days are Vietnam days (UTC+7, no daylight saving): "today" starts at 00:00 in Hanoi,
"the last 7 days" are today and the six days before it.

A location is *silent* when it has a kiosk (not retired) and either an online kiosk
but no scan for `[web] silent_hours`, or no scan at all in the last 7 days: the first
catches a checkpoint that stopped checking today, the second one whose kiosk is off too.

Every figure is set-based SQL: one GROUP BY per table, and the last scan of each
location in scope by one index probe on ix_scan_location_ts (location_id, ts), so the
cost grows with the locations in scope, never with the scans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Integer, cast, func, select

from . import audit
from .models import (DEGRADED, ONLINE, ORG_STATUSES, District, Kiosk, Location,
                     Organisation, Reminder, Scan, ScanSummary, Ward)

VN_OFFSET = 7 * 3600
DAY = 86400
FLAG_AFTER = 3  # "more than three reminders, then a stop"
ONLINE_STATES = (ONLINE, DEGRADED)  # a degraded kiosk still answers: it can scan


def vn_midnight(ts: float) -> float:
    """The epoch seconds of 00:00 Vietnam time of the day holding `ts`."""
    return (int(ts + VN_OFFSET) // DAY) * DAY - VN_OFFSET


def vn_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts + VN_OFFSET))


@dataclass
class Row:
    """The figures of one ward (or of a district, or of a district's locations in no ward)."""
    kind: str  # ward | district | unplaced
    id: int | None
    code: str
    name: str
    district_id: int | None = None
    organisations: dict = field(default_factory=lambda: {s: 0 for s in ORG_STATUSES})
    locations: int = 0
    online: int = 0
    scanned_today: int = 0
    scanned_7d: int = 0
    silent: int = 0
    reminders: int = 0
    flagged: int = 0

    def as_dict(self) -> dict:
        return {"kind": self.kind, "code": self.code, "name": self.name,
                "organisations": dict(self.organisations),
                "organisations_total": sum(self.organisations.values()),
                "locations": self.locations, "locations_online": self.online,
                "locations_scanned_today": self.scanned_today,
                "locations_scanned_7d": self.scanned_7d, "locations_silent": self.silent,
                "reminders": self.reminders, "organisations_flagged": self.flagged}

    def add(self, other: Row) -> None:
        for status, n in other.organisations.items():
            self.organisations[status] = self.organisations.get(status, 0) + n
        for name in ("locations", "online", "scanned_today", "scanned_7d", "silent",
                     "reminders", "flagged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Figures:
    at: float
    district: Row | None  # the district total (None: a ward officer's view)
    wards: list[Row]  # one per ward in scope (+ "unplaced" for a district's others)
    silent: list[dict]  # the silent locations, with why
    flagged: list[dict]  # organisations past FLAG_AFTER reminders

    def as_dict(self) -> dict:
        return {"at": self.at, "district": self.district.as_dict() if self.district else None,
                "wards": [w.as_dict() for w in self.wards], "silent": self.silent,
                "flagged": self.flagged}


# --- reminders -------------------------------------------------------------------------
def reminder_counts(session, org_ids=None) -> dict[int, int]:
    """{organisation id: reminders given}; org_ids None: every organisation with one."""
    stmt = select(Reminder.organisation_id, func.count()).group_by(Reminder.organisation_id)
    if org_ids is not None:
        org_ids = list(org_ids)
        if not org_ids:
            return {}
        stmt = stmt.where(Reminder.organisation_id.in_(org_ids))
    return {oid: int(n) for oid, n in session.execute(stmt).all()}


def flagged(session, org_ids=None) -> set[int]:
    """Organisations past FLAG_AFTER reminders: for a stop."""
    return {oid for oid, n in reminder_counts(session, org_ids).items() if n > FLAG_AFTER}


def remind(session, org: Organisation, *, actor: str, note: str = "",
           at: float | None = None) -> Reminder:
    """Record a reminder given to `org` (audited); the caller commits."""
    note = (note or "").strip()[:400]
    reminder = Reminder(organisation_id=org.id, at=time.time() if at is None else at,
                        actor=actor, note=note)
    session.add(reminder)
    session.flush()
    count = reminder_counts(session, [org.id]).get(org.id, 0)
    audit.record(session, actor, "organisation.remind", org.code, note=note, count=count,
                 flagged=count > FLAG_AFTER)
    return reminder


# --- the figures -----------------------------------------------------------------------
def figures(session, *, district_id: int | None = None, ward_id: int | None = None,
            now: float | None = None, silent_hours: float = 2.0) -> Figures:
    """The compliance figures of one district (its wards, and its locations in no ward)
    or of one ward. One of district_id / ward_id is required."""
    now = time.time() if now is None else now
    if ward_id is not None:
        ward = session.get(Ward, ward_id)
        wards = [ward] if ward is not None else []
        district = None
        loc_where = [Location.ward_id == ward_id]
        org_where = [Organisation.ward_id == ward_id]
    elif district_id is not None:
        district = session.get(District, district_id)
        wards = list(session.scalars(select(Ward).where(Ward.district_id == district_id)
                                     .order_by(Ward.code)))
        loc_where = [Location.district_id == district_id]
        org_where = [Organisation.district_id == district_id]
    else:
        raise ValueError("figures of what? give a district or a ward")

    rows: dict[int | None, Row] = {w.id: Row("ward", w.id, w.code, w.name, w.district_id)
                                   for w in wards}
    if ward_id is None:
        rows[None] = Row("unplaced", None, "", "", district_id)

    def row_of(wid):
        # a location in another district's ward (a data slip) still counts somewhere
        return rows.get(wid) or rows.setdefault(None, Row("unplaced", None, "", "", district_id))

    # organisations by status
    for wid, status, n in session.execute(
            select(Organisation.ward_id, Organisation.status, func.count())
            .where(*org_where).group_by(Organisation.ward_id, Organisation.status)).all():
        r = row_of(wid)
        r.organisations[status] = r.organisations.get(status, 0) + int(n)

    # reminders and flags, per organisation then summed per ward
    flagged_orgs = []
    for oid, wid, code, name, status, n in session.execute(
            select(Organisation.id, Organisation.ward_id, Organisation.code, Organisation.name,
                   Organisation.status, func.count(Reminder.id))
            .join(Reminder, Reminder.organisation_id == Organisation.id)
            .where(*org_where)
            .group_by(Organisation.id, Organisation.ward_id, Organisation.code,
                      Organisation.name, Organisation.status)).all():
        r = row_of(wid)
        r.reminders += int(n)
        if n > FLAG_AFTER:
            r.flagged += 1
            flagged_orgs.append({"code": code, "name": name, "status": status,
                                 "reminders": int(n), "ward": r.code})

    # kiosks per location: any (not retired), any online
    has_kiosk, online = set(), set()
    for lid, state in session.execute(
            select(Kiosk.location_id, Kiosk.state).join(Location, Location.id == Kiosk.location_id)
            .where(*loc_where, Kiosk.retired_at.is_(None))
            .group_by(Kiosk.location_id, Kiosk.state)).all():
        has_kiosk.add(lid)
        if state in ONLINE_STATES:
            online.add(lid)

    # each location's last scan: one backward probe of ix_scan_location_ts per location
    last_scan = (select(func.max(Scan.ts)).where(Scan.location_id == Location.id)
                 .scalar_subquery())
    today, week = vn_midnight(now), vn_midnight(now) - 6 * DAY
    quiet_since = now - silent_hours * 3600
    silent = []
    for lid, code, name, wid, org_id, last in session.execute(
            select(Location.id, Location.code, Location.name, Location.ward_id,
                   Location.organisation_id, last_scan)
            .where(*loc_where).order_by(Location.code)).all():
        r = row_of(wid)
        r.locations += 1
        if lid in online:
            r.online += 1
        if last is not None and last >= today:
            r.scanned_today += 1
        if last is not None and last >= week:
            r.scanned_7d += 1
        why = None
        if lid in has_kiosk:
            if last is None or last < week:
                why = "no_scan_7d"
            elif lid in online and last < quiet_since:
                why = "online_no_scan"
        if why:
            r.silent += 1
            silent.append({"code": code, "name": name, "ward": r.code, "why": why,
                           "last_scan": last, "organisation_id": org_id})

    ward_rows = [rows[w.id] for w in wards]
    if None in rows and (rows[None].locations or sum(rows[None].organisations.values())):
        ward_rows.append(rows[None])
    total = None
    if district is not None:
        total = Row("district", district.id, district.code, district.name, district.id)
        for r in rows.values():
            total.add(r)
    return Figures(at=now, district=total, wards=ward_rows, silent=silent,
                   flagged=sorted(flagged_orgs, key=lambda f: (-f["reminders"], f["code"])))


def week_scans(session, *, district_id: int, start: float, end: float) -> dict:
    """Decisions in [start, end) in a district, per (location id, Vietnam day, decision):
    scans and the counted-only summaries. One GROUP BY per table over ix_scan_district_ts."""
    out: dict[tuple, int] = {}
    day = _day(session, Scan.ts)
    for lid, d, decision, n in session.execute(
            select(Scan.location_id, day, Scan.decision, func.count())
            .where(Scan.district_id == district_id, Scan.ts >= start, Scan.ts < end)
            .group_by(Scan.location_id, day, Scan.decision)).all():
        key = (lid, int(d), decision)
        out[key] = out.get(key, 0) + int(n)
    sday = _day(session, ScanSummary.hour)
    for lid, d, decision, n in session.execute(
            select(ScanSummary.location_id, sday, ScanSummary.decision,
                   func.sum(ScanSummary.count))
            .where(ScanSummary.district_id == district_id, ScanSummary.hour >= start,
                   ScanSummary.hour < end)
            .group_by(ScanSummary.location_id, sday, ScanSummary.decision)).all():
        key = (lid, int(d), decision)
        out[key] = out.get(key, 0) + int(n or 0)
    return out


def _day(session, column):
    """SQL for the Vietnam day number of epoch seconds `column` (PostgreSQL's cast rounds,
    SQLite's truncates: floor where it rounds)."""
    shifted = (column + VN_OFFSET) / DAY
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(shifted), Integer)
    return cast(shifted, Integer)


def day_label(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * DAY))

"""A small city for the compliance tests (tests/test_compliance*.py): two districts,
three wards, organisations in every status, locations that scan, that went quiet, that
never had a kiosk, and scans over two weeks; plus a reference computation of every
compliance figure, done row by row in Python, to check the SQL against."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from fleet import auth
from fleet.models import (Kiosk, Location, Organisation, Reminder, Scan, ScanSummary, Ward,
                          District)

VN = timezone(timedelta(hours=7))
# Wednesday 2021-09-15 10:00 in Hanoi: the week of Monday 2021-09-13 is running,
# last week is 2021-09-06 .. 2021-09-12.
NOW = datetime(2021, 9, 15, 10, 0, tzinfo=VN).timestamp()
HOUR, DAY = 3600.0, 86400.0
PASSWORD = "correct horse battery"


def seed(sessions) -> dict:
    ids: dict = {}
    with sessions() as s:
        q1 = District(code="q1", name="Quận 1")
        q2 = District(code="q2", name="Quận 2")
        s.add_all([q1, q2])
        s.flush()
        w1 = Ward(code="w1", name="Phường Bến Nghé", kind="phuong", district_id=q1.id)
        w2 = Ward(code="w2", name="Phường Đa Kao", kind="phuong", district_id=q1.id)
        w3 = Ward(code="w3", name="Phường Thảo Điền", kind="phuong", district_id=q2.id)
        s.add_all([w1, w2, w3])
        s.flush()

        def org(code, ward, status, district=q1):
            o = Organisation(code=code, name=f"Công ty {code.upper()}", kind="business",
                             district_id=district.id, ward_id=ward.id if ward else None,
                             status=status, status_since=NOW - 30 * DAY,
                             created_at=NOW - 40 * DAY)
            s.add(o)
            return o
        orgs = {"a": org("org-a", w1, "approved"), "b": org("org-b", w1, "approved"),
                "c": org("org-c", w1, "suspended"), "d": org("org-d", w2, "applied"),
                "e": org("org-e", w2, "closed"), "f": org("org-f", None, "approved"),
                "g": org("org-g", w3, "approved", q2)}
        s.flush()

        def loc(code, ward, organisation=None, district=q1):
            location = Location(code=code, name=f"Cổng {code}", district_id=district.id,
                                ward_id=ward.id if ward else None,
                                organisation_id=organisation.id if organisation else None)
            s.add(location)
            return location
        locs = {"l1": loc("l1", w1, orgs["a"]),  # scans today: fine
                "l2": loc("l2", w1, orgs["b"]),  # online, last scan 3 days ago: silent
                "l3": loc("l3", w2, orgs["d"]),  # offline, last scan 10 days ago: silent
                "l4": loc("l4", w2),             # no kiosk, never scanned: not silent
                "l5": loc("l5", None, orgs["f"]),  # district, no ward: online, scanned 1 h ago
                "l6": loc("l6", w1, orgs["c"]),  # online, scanned 3 h ago: silent (2 h)
                "l7": loc("l7", w3, orgs["g"], q2)}  # another district
        s.flush()

        def kiosk(kid, location, state, retired=False):
            s.add(Kiosk(id=kid, location_id=location.id, state=state, state_since=NOW - DAY,
                        retired_at=NOW - DAY if retired else None))
        kiosk("k1", locs["l1"], "online")
        kiosk("k1b", locs["l1"], "offline")
        kiosk("k2", locs["l2"], "online")
        kiosk("k3", locs["l3"], "offline")
        kiosk("k3r", locs["l3"], "online", retired=True)  # retired: not counted online
        kiosk("k5", locs["l5"], "degraded")
        kiosk("k6", locs["l6"], "online")
        kiosk("k7", locs["l7"], "online")

        n = 0

        def scan(kid, location, ts, decision="green"):
            nonlocal n
            n += 1
            s.add(Scan(kiosk_id=kid, scan_id=f"s{n}", ts=ts, received=ts + 1, decision=decision,
                       reason="ok" if decision == "green" else "expired", policy="p",
                       location_id=location.id, district_id=location.district_id))
        # last week (Mon 2021-09-06 00:00 VN .. Sun 2021-09-12 24:00 VN)
        last_monday = datetime(2021, 9, 6, 0, 0, tzinfo=VN).timestamp()
        for day in range(7):
            for i in range(day + 1):  # 1 scan on Monday, 7 on Sunday
                scan("k1", locs["l1"], last_monday + day * DAY + 8 * HOUR + i * 60)
            if day % 2 == 0:
                scan("k1", locs["l1"], last_monday + day * DAY + 9 * HOUR, "red")
        scan("k2", locs["l2"], last_monday + 5 * DAY + HOUR)  # Saturday 01:00 VN
        scan("k3", locs["l3"], NOW - 10 * DAY)  # 2021-09-05: before last week
        scan("k7", locs["l7"], last_monday + 2 * DAY + 10 * HOUR)
        # just outside last week on both ends
        scan("k1", locs["l1"], last_monday - 1)
        scan("k1", locs["l1"], last_monday + 7 * DAY)  # Monday 2021-09-13 00:00 VN: this week
        # recent
        scan("k1", locs["l1"], NOW - 30 * 60)
        scan("k2", locs["l2"], NOW - 3 * DAY)
        scan("k5", locs["l5"], NOW - HOUR, "red")
        scan("k6", locs["l6"], NOW - 3 * HOUR)
        scan("k7", locs["l7"], NOW - 60)
        # counted-only decisions last Tuesday at 10:00 VN (the hour 03:00 UTC)
        s.add(ScanSummary(kiosk_id="k1", summary_id="sum1", hour=int(last_monday + DAY + 10 * HOUR),
                          decision="green", reason="ok", count=5, first=0, last=0,
                          location_id=locs["l1"].id, district_id=q1.id))
        # reminders: org-b four times (flagged), org-d twice, org-g (other district) five times
        for org_key, times in (("b", 4), ("d", 2), ("g", 5)):
            for i in range(times):
                s.add(Reminder(organisation_id=orgs[org_key].id, at=NOW - (i + 1) * DAY,
                               actor="officer", note=f"nhắc lần {i + 1}"))
        s.flush()
        for name, role, kw in (("ward1@q1.example", "ward_officer", {"ward_id": w1.id}),
                               ("ward2@q1.example", "ward_officer", {"ward_id": w2.id}),
                               ("chief@q1.example", "district_officer", {"district_id": q1.id}),
                               ("chief-q1", "district_officer", {"district_id": q1.id}),
                               ("chief@q2.example", "district_officer", {"district_id": q2.id})):
            user = auth.create_user(s, name, PASSWORD, role, **kw)
            s.flush()
            ids[f"token:{name}"] = {"Authorization":
                                    f"Bearer {auth.create_token(s, user, 'tests')}"}
        s.commit()
        ids.update({"q1": q1.id, "q2": q2.id, "w1": w1.id, "w2": w2.id, "w3": w3.id})
    return ids


def vn_midnight(ts: float) -> float:
    d = datetime.fromtimestamp(ts, VN).replace(hour=0, minute=0, second=0, microsecond=0)
    return d.timestamp()


def expected(sessions, *, district_id=None, ward_id=None, now=NOW, silent_hours=2.0) -> dict:
    """Every figure, computed row by row (no GROUP BY), keyed by ward code ('' for a
    district's locations in no ward) and 'total'."""
    with sessions() as s:
        wards = {w.id: w for w in s.scalars(select(Ward))}
        locations = list(s.scalars(select(Location)))
        orgs = list(s.scalars(select(Organisation)))
        kiosks = list(s.scalars(select(Kiosk)))
        scans = list(s.scalars(select(Scan)))
        reminders = list(s.scalars(select(Reminder)))

    def inside(district, ward):
        if ward_id is not None:
            return ward == ward_id
        return district == district_id

    today, week = vn_midnight(now), vn_midnight(now) - 6 * DAY
    out: dict = {}

    def row(ward):
        code = wards[ward].code if ward is not None else ""
        return out.setdefault(code, {"organisations": {k: 0 for k in
                                                       ("applied", "approved", "suspended", "closed")},
                                     "locations": 0, "locations_online": 0,
                                     "locations_scanned_today": 0, "locations_scanned_7d": 0,
                                     "locations_silent": 0, "reminders": 0,
                                     "organisations_flagged": 0})
    silent = set()
    flagged = set()
    for o in orgs:
        if not inside(o.district_id, o.ward_id):
            continue
        r = row(o.ward_id)
        r["organisations"][o.status] += 1
        n = sum(1 for m in reminders if m.organisation_id == o.id)
        r["reminders"] += n
        if n > 3:
            r["organisations_flagged"] += 1
            flagged.add(o.code)
    for loc in locations:
        if not inside(loc.district_id, loc.ward_id):
            continue
        r = row(loc.ward_id)
        r["locations"] += 1
        mine = [k for k in kiosks if k.location_id == loc.id and k.retired_at is None]
        online = any(k.state in ("online", "degraded") for k in mine)
        times = [x.ts for x in scans if x.location_id == loc.id]
        last = max(times) if times else None
        r["locations_online"] += online
        r["locations_scanned_today"] += last is not None and last >= today
        r["locations_scanned_7d"] += last is not None and last >= week
        quiet = (last is None or last < week) or (online and last < now - silent_hours * HOUR)
        if mine and quiet:
            r["locations_silent"] += 1
            silent.add(loc.code)
    total = {"organisations": {k: sum(r["organisations"][k] for r in out.values())
                               for k in ("applied", "approved", "suspended", "closed")}}
    for key in ("locations", "locations_online", "locations_scanned_today",
                "locations_scanned_7d", "locations_silent", "reminders",
                "organisations_flagged"):
        total[key] = sum(r[key] for r in out.values())
    out["total"] = total
    out["silent"] = silent
    out["flagged"] = flagged
    return out


def expected_week(sessions, *, district_id=None, ward_id=None, monday: datetime) -> dict:
    """Green/red per Vietnam day of the week starting `monday` (00:00 VN), scans and
    summaries, row by row; and the locations that scanned in it."""
    start = monday.timestamp()
    days = [(monday + timedelta(days=i)).date().isoformat() for i in range(7)]
    per_day = {d: {"green": 0, "red": 0} for d in days}
    scanned = set()
    with sessions() as s:
        locs = {loc.id: loc for loc in s.scalars(select(Location))}

        def inside(location_id):
            loc = locs.get(location_id)
            if loc is None:
                return False
            return loc.ward_id == ward_id if ward_id is not None else loc.district_id == district_id
        for x in s.scalars(select(Scan)):
            if start <= x.ts < start + 7 * DAY and inside(x.location_id):
                per_day[datetime.fromtimestamp(x.ts, VN).date().isoformat()][x.decision] += 1
                scanned.add(x.location_id)
        for x in s.scalars(select(ScanSummary)):
            if start <= x.hour < start + 7 * DAY and inside(x.location_id):
                per_day[datetime.fromtimestamp(x.hour, VN).date().isoformat()][x.decision] += x.count
                scanned.add(x.location_id)
    return {"per_day": per_day, "scanned": len(scanned)}

"""Contact tracing (service layer, no Flask): where a case's certificate was scanned, and
which other holders were scanned at the same place around the same time.

A case is named by its certificate — the identifier `ci`, its QR text (`HC1:...`), or
the 16-byte status key in hex — or by a holder pseudonym (e.g. one found by an earlier
trace: contacts of contacts). Kiosks report each scan's certificate as
`cert_hash(ci).hex()` (greengate/verifier.py -> greengate/messages.py "cert" ->
Scan.cert_hash), the same key the status lists use, so a ci maps to its scans exactly.

A QR text is read only if its signature verifies against one of the fleet's trust
lists: an unverified text could name somebody else's ci, and tracing the wrong person
is a privacy breach, not merely a wrong answer.

What comes out is pseudonymous only: holder pseudonyms (keyed HMACs of name and birth
date, which the ingest derives from each scan's sealed identity with a secret only the
fleet holds, and drops the identity: docs/privacy.md; the database holds neither) and
certificate hashes, with times and places. Contacts are identified by their pseudonym, else (pseudonyms switched
off in a deployment) by their certificate hash — which is also what a health official
needs to suspend a contact's certificate.

The place of a scan is its location (as recorded at ingest); a scan from a kiosk
without a location has only that kiosk as its place. The case's own scans (its
certificates, its pseudonyms) are never listed as contacts.

Every query is audited by the caller (`audit_query`) before any result leaves the
fleet: who, which case, which period, how many results.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from greengate.status import cert_hash

from . import audit
from .bundles import ListError
from .models import District, Location, Scan
from .status_lists import ci_from_qr, iso, trust_list

MAX_DAYS = 62  # longer than any sensible incubation period + retention (21 days)
MAX_VISITS = 500  # case scans in one query; more means the period is too wide
MAX_CONTACT_SCANS = 5000  # scans looked at around one visit (a very busy market door)
MIN_MINUTES, MAX_MINUTES = 1, 24 * 60
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_CI = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass
class Case:
    by: str  # ci | qr | key | holder
    key: bytes | None = None  # the certificate's status key
    ci: str | None = None
    holder: str | None = None

    def describe(self) -> dict:
        return {"by": self.by, "key": self.key.hex() if self.key else None, "ci": self.ci,
                "holder": self.holder}

    @property
    def target(self) -> str:
        """The audit log's target column: what was traced."""
        return self.key.hex() if self.key else f"holder:{self.holder}"


@dataclass
class Trace:
    case: Case
    since: float
    until: float
    minutes: float
    same_holder: bool
    visits: list[dict] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)  # the case's pseudonyms seen
    certificates: list[str] = field(default_factory=list)  # the case's cert hashes seen
    contacts: int = 0  # distinct contact identities over all visits
    truncated: bool = False

    def as_dict(self) -> dict:
        case = self.case.describe()
        case.update(holders=self.holders, certificates=self.certificates)
        return {"case": case, "since": iso(self.since), "until": iso(self.until),
                "window_minutes": self.minutes, "same_holder": self.same_holder,
                "visits": self.visits, "contacts": self.contacts, "truncated": self.truncated}


def name_case(session, deployments, *, ci=None, qr=None, key=None, holder=None) -> Case:
    """The case from exactly one of ci / qr / key / holder; ListError saying what is wrong."""
    given = {name: value for name, value in (("ci", ci), ("qr", qr), ("key", key),
                                             ("holder", holder))
             if value is not None and str(value).strip() != ""}
    if len(given) != 1:
        raise ListError("name the case with exactly one of: ci (the certificate identifier, "
                        "URN:UVCI:...), qr (its QR text, HC1:...), key (its status key, 32 hex "
                        "digits) or holder (a holder pseudonym, 32 hex digits)"
                        + (f"; got {', '.join(sorted(given))}" if given else ""), 400)
    (by, value), = given.items()
    value = str(value).strip() if by != "qr" else str(value).strip("\r\n\t ")
    if by == "qr" or (by == "ci" and value.upper().startswith("HC1:")):
        by = "qr"
        errors = []
        for deployment in deployments:
            try:
                found = ci_from_qr(value, trust_list(session, deployment), deployment)
            except ListError as exc:
                errors.append(exc.message)
                continue
            return Case("qr", cert_hash(found), found)
        raise ListError(errors[-1] if errors else "the fleet has no deployments to verify the "
                        "QR text against", 422)
    if by == "ci":
        if not _CI.match(value):
            raise ListError(f"ci={value[:60]!r} is not a certificate identifier (printable text "
                            "without spaces, at most 200 characters, e.g. URN:UVCI:01:VN:...)", 400)
        return Case("ci", cert_hash(value), value)
    if not _HEX32.match(value.lower()):
        what = "status key" if by == "key" else "holder pseudonym"
        raise ListError(f"{by}={value[:40]!r} is not a {what}: 32 hexadecimal digits", 400)
    if by == "key":
        return Case("key", bytes.fromhex(value.lower()))
    return Case("holder", holder=value.lower())


def check_period(since: float | None, until: float | None) -> None:
    if since is None or until is None:
        raise ListError("give the period to trace: from and to (ISO 8601 with a time zone, "
                        "e.g. 2021-09-21T00:00:00+07:00)", 400)
    if since >= until:
        raise ListError(f"the period ends ({iso(until)}) before it starts ({iso(since)}): "
                        "swap from and to", 400)
    if until - since > MAX_DAYS * 86400:
        raise ListError(f"the period spans {(until - since) / 86400:.0f} days; trace at most "
                        f"{MAX_DAYS} days at a time", 400)


def trace(session, case: Case, since: float, until: float, minutes: float,
          same_holder: bool = False) -> Trace:
    """The case's scans in [since, until) (oldest first) and, for each, the other holders
    scanned at the same place within `minutes` before or after it."""
    check_period(since, until)
    if not MIN_MINUTES <= minutes <= MAX_MINUTES:
        raise ListError(f"the window of {minutes:g} minutes is out of range: "
                        f"{MIN_MINUTES} to {MAX_MINUTES}", 400)
    result = Trace(case, since, until, float(minutes), same_holder)
    match = [Scan.cert_hash == case.key.hex()] if case.key else [Scan.holder == case.holder]
    visits = _case_scans(session, match, since, until)
    if same_holder and case.key:
        # the same person with another certificate (a test after a vaccination): found
        # through the pseudonyms seen with this one
        holders = sorted({s.holder for s, *_ in visits if s.holder})
        if holders:
            visits = _case_scans(session, match + [Scan.holder.in_(holders)], since, until)
    own_hashes = {s.cert_hash for s, *_ in visits if s.cert_hash}
    own_holders = {s.holder for s, *_ in visits if s.holder}
    if case.key:
        own_hashes.add(case.key.hex())
    if case.holder:
        own_holders.add(case.holder)
    result.holders = sorted(own_holders)
    result.certificates = sorted(own_hashes)
    window = minutes * 60.0
    everyone = set()
    for scan, loc_code, loc_name, district in visits:
        place = (Scan.location_id == scan.location_id if scan.location_id is not None
                 else Scan.kiosk_id == scan.kiosk_id)
        rows = session.execute(
            select(Scan.ts, Scan.kiosk_id, Scan.holder, Scan.cert_hash, Scan.decision)
            .where(place, Scan.ts >= scan.ts - window, Scan.ts <= scan.ts + window)
            .order_by(Scan.ts, Scan.id).limit(MAX_CONTACT_SCANS + 1)).all()
        truncated = len(rows) > MAX_CONTACT_SCANS
        closest: dict[str, dict] = {}
        for ts, kiosk, holder, hashed, decision in rows[:MAX_CONTACT_SCANS]:
            if holder in own_holders or hashed in own_hashes or not (holder or hashed):
                continue  # the case itself, or a scan that names nobody (unreadable QR)
            identity = f"h:{holder}" if holder else f"c:{hashed}"
            apart = round((ts - scan.ts) / 60.0, 1)
            known = closest.get(identity)
            if known is None or abs(apart) < abs(known["minutes_apart"]):
                closest[identity] = {"holder": holder, "cert_hash": hashed, "ts": iso(ts),
                                     "kiosk": kiosk, "decision": decision,
                                     "minutes_apart": apart}
        everyone.update(closest)
        result.truncated |= truncated
        result.visits.append({
            "scan": scan.id, "ts": iso(scan.ts), "kiosk": scan.kiosk_id,
            "location": {"code": loc_code, "name": loc_name} if loc_code else None,
            "district": district, "decision": scan.decision, "reason": scan.reason,
            "cert_hash": scan.cert_hash, "holder": scan.holder,
            "contacts": sorted(closest.values(), key=lambda c: (c["ts"], c["holder"] or "",
                                                               c["cert_hash"] or "")),
            "truncated": truncated})
    result.contacts = len(everyone)
    return result


def _case_scans(session, match, since, until):
    rows = session.execute(
        select(Scan, Location.code, Location.name, District.code)
        .outerjoin(Location, Location.id == Scan.location_id)
        .outerjoin(District, District.id == Scan.district_id)
        .where(or_(*match), Scan.ts >= since, Scan.ts < until)
        .order_by(Scan.ts, Scan.id).limit(MAX_VISITS + 1)).all()
    if len(rows) > MAX_VISITS:
        raise ListError(f"the case was scanned more than {MAX_VISITS} times in this period: "
                        "trace a shorter period", 400)
    return rows


def audit_query(session, actor: str, result: Trace, how: str) -> None:
    """Record the query and commit, before the caller hands out any result: a trace the
    audit log does not know about must not happen."""
    audit.record(session, actor, "trace.query", result.case.target, case=result.case.describe(),
                 since=iso(result.since), until=iso(result.until),
                 window_minutes=result.minutes, same_holder=result.same_holder,
                 visits=len(result.visits), contacts=result.contacts, format=how)
    session.commit()


CSV_COLUMNS = ["case_scan_time_utc", "case_kiosk", "location", "location_name", "district",
               "case_decision", "contact_holder", "contact_cert_hash", "contact_scan_time_utc",
               "contact_kiosk", "contact_decision", "minutes_apart"]


def _cell(value) -> str:
    """A spreadsheet must not run a place name like '=HYPERLINK(...)' as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(result: Trace) -> str:
    """One row per (visit, contact); a visit without contacts still has its row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for visit in result.visits:
        place = visit["location"] or {}
        head = [visit["ts"], visit["kiosk"], place.get("code"), place.get("name"),
                visit["district"], visit["decision"]]
        for contact in visit["contacts"] or [None]:
            tail = ([contact["holder"], contact["cert_hash"], contact["ts"], contact["kiosk"],
                     contact["decision"], contact["minutes_apart"]] if contact else [""] * 6)
            # minutes_apart is a number (often negative): not escaped
            writer.writerow([_cell(v) for v in head + tail[:-1]] + [tail[-1]])
    return out.getvalue()


def csv_filename(result: Trace) -> str:
    day = lambda t: iso(t)[:10]  # noqa: E731
    return f"trace-{result.case.target.replace(':', '-')[:24]}-{day(result.since)}-" \
           f"{day(result.until)}.csv"

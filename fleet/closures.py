"""A case closes the workplace (issue 16 part 5, docs/organisations.md#a-case-closes-the-workplace).

An organisation suspended (or closed) has its kiosks listed in the policy bundle's
`closed` map; a kiosk listed there answers every scan red `place_closed` and shows the
place-closed light until a new policy bundle leaves it out (device/kiosk.py). So every
status change goes through `change_status`, which re-signs the policy bundle of each
deployment whose closed kiosks it changes, in the caller's transaction, and tells the
organisation's managers through the alert dispatcher (durable rows it sends and retries).

A health official who traced a case suspends an organisation whose control points the
case visited (`suspend_for_case`, the tracing page and
POST /api/v1/organisations/<code>/suspend-for-case); the suspension names the ward
officer as the one who lifts it (the generic status change, `approved`).

What the organisation's people see (its history, the managers' e-mail) names the case
only by a reference (the health service's case number, or the day it was confirmed):
the case's certificate key or holder pseudonym would let a manager tell which worker
it is. The full case is in the audit log (`organisation.suspend_for_case`), which only
admins read.

This module imports `bundles` at call time (fleet/bundles.py imports this one).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select

from . import audit, bundles, organisations
from .models import (CLOSED, MANAGER, RETIRED, SUSPENDED, WARD_OFFICER, AlertDelivery,
                     AlertEpisode, AlertRule, District, Kiosk, Location, Organisation,
                     OrganisationStatusChange, Scan, User)

log = logging.getLogger(__name__)

SHUT = (SUSPENDED, CLOSED)  # an organisation in one of these has its kiosks closed
ALERT_KIND = "place_closed"  # the alert rule kind of the managers' messages (not user-made)
ALERT_RULE_NAME = "Organisation suspended, closed or reopened: its managers"
ACTION = "organisation.status"  # the policy bundle version's action
MAX_CASE_REF = 40


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def closed_kiosks(session, deployment: str) -> dict:
    """kiosk id -> {"organisation": code, "since": ISO 8601 UTC} for every kiosk (not
    retired) of `deployment` at a control point of a suspended or closed organisation."""
    rows = session.execute(
        select(Kiosk.id, Organisation.code, Organisation.status_since)
        .join(Location, Kiosk.location_id == Location.id)
        .join(Organisation, Location.organisation_id == Organisation.id)
        .where(Kiosk.deployment == deployment, Kiosk.state != RETIRED,
               Organisation.status.in_(SHUT))
        .order_by(Kiosk.id))
    return {kid: {"organisation": code, "since": _iso(since)} for kid, code, since in rows}


def change_status(session, config, org, new_status: str, *, actor: str, role: str,
                  reason: str = "", quota: int | None = None, lift_by: str | None = None,
                  detail: dict | None = None, at: float | None = None, key=None):
    """Every status change of an organisation goes through here (API, pages, CLI). Moves
    it (organisations.set_status: history, audit, who may lift), and when that closes or
    reopens its kiosks, signs a new policy bundle for each of their deployments and
    queues the managers' alert, all in the caller's transaction (no commit). Returns
    (history row, deployments re-issued): after committing, the caller hands those to
    the publisher (`publish`), which is what makes a kiosk follow within seconds.

    Raises OrganisationError, or ListError (503) when a bundle must be signed and the
    fleet has no signing key (before anything changed)."""
    at = time.time() if at is None else at
    was_shut = org.status in SHUT
    shut = new_status in SHUT
    kiosks = organisations.kiosks_of(session, org) if was_shut != shut else []
    signer = None
    if kiosks:
        signer = key or bundles.load_signing_key(config)  # 503 before any change
    change = organisations.set_status(session, org, new_status, actor=actor, role=role,
                                      reason=reason, quota=quota, lift_by=lift_by,
                                      detail=detail, at=at)
    if was_shut == shut:
        return change, []
    session.flush()
    deployments = sorted({k.deployment for k in kiosks})
    for deployment in deployments:
        bundles.issue(session, config, deployment, "policy", key=signer, actor=actor,
                      action=ACTION, at=at,
                      changes=sum(1 for k in kiosks if k.deployment == deployment))
    _alert_managers(session, config, org, change, kiosks, at)
    return change, deployments


def publish(publisher, deployments) -> str:
    """Hand re-issued policy bundles to the web app's publisher after the commit; what
    to tell the caller (fleet/publisher.hand_off)."""
    from .publisher import hand_off
    said = "nothing changed"
    for deployment in sorted(set(deployments or ())):
        said = hand_off(publisher, deployment, {"policy"})
    return said


# --- after a case -------------------------------------------------------------------------
def case_locations(session, case, since: float, until: float,
                   same_holder: bool = False) -> set[int]:
    """The locations where the case (fleet/tracing.Case) was scanned in [since, until);
    same_holder: also with the holder's other certificates, as the trace's option."""
    match = [Scan.cert_hash == case.key.hex()] if case.key else []
    if case.holder:
        match.append(Scan.holder == case.holder)
    if same_holder and case.key:
        holders = session.scalars(select(Scan.holder).where(
            match[0], Scan.ts >= since, Scan.ts < until, Scan.holder.is_not(None))
            .distinct()).all()
        if holders:
            match.append(Scan.holder.in_(holders))
    return set(session.scalars(
        select(Scan.location_id).where(or_(*match), Scan.ts >= since, Scan.ts < until,
                                       Scan.location_id.is_not(None)).distinct()))


def organisations_at(session, location_ids) -> list[tuple[Organisation, list[str]]]:
    """(organisation, its location codes among `location_ids`) for every organisation
    owning one of them, by code: what the tracing page offers to suspend."""
    if not location_ids:
        return []
    found: dict[int, tuple[Organisation, list[str]]] = {}
    for org, code in session.execute(
            select(Organisation, Location.code)
            .join(Location, Location.organisation_id == Organisation.id)
            .where(Location.id.in_(list(location_ids)))
            .order_by(Organisation.code, Location.code)):
        found.setdefault(org.id, (org, []))[1].append(code)
    return list(found.values())


def case_reference(case_ref: str | None, at: float) -> str:
    """What the organisation's people are told of the case: the health service's case
    number when given, else the day it was confirmed (Vietnam time)."""
    ref = " ".join((case_ref or "").split())
    if len(ref) > MAX_CASE_REF:
        raise organisations.OrganisationError(
            f"the case reference is {len(ref)} characters long; at most {MAX_CASE_REF}")
    if ref:
        return ref
    day = datetime.fromtimestamp(at, timezone(timedelta(hours=7))).date().isoformat()
    return f"confirmed {day}"


def suspend_for_case(session, config, org: Organisation, case, since: float, until: float, *,
                     actor: str, role: str, case_ref: str | None = None, note: str = "",
                     same_holder: bool = False, at: float | None = None):
    """Suspend `org` because the case visited its control points in [since, until): refused
    (409) when the case's scans there name none of them. The suspension is lifted by a
    ward officer. No commit; returns change_status's (history row, deployments)."""
    at = time.time() if at is None else at
    mine = dict(session.execute(select(Location.id, Location.code)
                                .where(Location.organisation_id == org.id)).all())
    visited = sorted(mine[i] for i in case_locations(session, case, since, until,
                                                     same_holder) & set(mine))
    if not visited:
        raise organisations.OrganisationError(
            f"the case was not scanned at any control point of {org.code!r} between "
            f"{_iso(since)} and {_iso(until)}: trace the case first, or suspend the "
            "organisation through its status", 409)
    ref = case_reference(case_ref, at)
    note = " ".join((note or "").split())
    reason = f"case {ref}" + (f": {note}" if note else "")
    change, deployments = change_status(
        session, config, org, SUSPENDED, actor=actor, role=role, reason=reason,
        lift_by=WARD_OFFICER, detail={"case_ref": ref, "locations": visited}, at=at)
    # the case itself only here: the audit log is read by admins, the history by managers
    audit.record(session, actor, "organisation.suspend_for_case", org.code,
                 case=case.describe(), since=_iso(since), until=_iso(until),
                 same_holder=same_holder, locations=visited, case_ref=ref)
    return change, deployments


# --- the managers' alert --------------------------------------------------------------------
def _address(text: str | None) -> bool:
    from .alerts import EMAIL_RE
    return bool(text) and len(text) <= 254 and EMAIL_RE.match(text) is not None


def recipients(session, org: Organisation) -> list[str]:
    """The organisation's managers (not disabled) whose username is an e-mail address, as
    the weekly reports reach officers, and its contact address."""
    names = session.scalars(select(User.username).where(
        User.role == MANAGER, User.organisation_id == org.id, User.disabled.is_(False))
        .order_by(User.username))
    out: list[str] = []
    for address in [*names, (org.contact_email or "").strip()]:
        if _address(address) and address.lower() not in (a.lower() for a in out):
            out.append(address)
    return out


def _rule(session, at: float) -> AlertRule:
    """The rule the managers' messages hang on (AlertDelivery needs an episode, an episode
    a rule). Made on first use; the dispatcher decides nothing for its kind, it only
    sends what is queued here, and an admin may disable it on /alerts."""
    rule = session.scalars(select(AlertRule).where(AlertRule.kind == ALERT_KIND)
                           .order_by(AlertRule.id).limit(1)).first()
    if rule is None:
        rule = AlertRule(name=ALERT_RULE_NAME, kind=ALERT_KIND, district_id=None,
                         threshold=None, webhook_url="", emails="", enabled=True,
                         created_by="system", created_at=at, updated_by="system",
                         updated_at=at)
        session.add(rule)
        session.flush()
    return rule


def _alert_managers(session, config, org: Organisation, change: OrganisationStatusChange,
                    kiosks, at: float) -> None:
    """Queue the managers' message about a closing (an alert: a new episode) or a reopening
    (the recovery of the episode the closing opened, so mail programs thread them)."""
    from .alerts import ALERT, EMAIL, PENDING, RECOVERED, RECOVERY
    rule = _rule(session, at)
    if not rule.enabled:
        return
    reopening = change.new_status not in SHUT
    episode = None
    if reopening:
        episode = _closing_episode(session, org, rule)
    if episode is None:
        episode = AlertEpisode(rule_id=rule.id, kiosk_id=None, district_id=org.district_id,
                               outage_id=None, started=at, alerted_at=at)
        session.add(episode)
        session.flush()
        change.detail = {**(change.detail or {}), "alert_episode": episode.id}
    event = RECOVERY if reopening and episode.started < at else ALERT
    if reopening:
        episode.ended_at, episode.resolution = at, RECOVERED
    district = session.get(District, org.district_id)
    payload = _payload(org, change, kiosks, rule, episode, event, district, at,
                       config.alerts.dashboard_url)
    targets = recipients(session, org)
    if targets and not config.alerts.smtp_host:
        log.warning("organisation %s %s: [alerts] smtp_host is empty, its managers are not "
                    "e-mailed", org.code, change.new_status)
        targets = []
    for address in targets:
        session.add(AlertDelivery(episode_id=episode.id, event=event, channel=EMAIL,
                                  target=address, payload=payload, created_at=at,
                                  status=PENDING, attempts=0, next_at=at, sent_at=None,
                                  last_error=""))


def _closing_episode(session, org, rule) -> AlertEpisode | None:
    """The open episode of the organisation's last closing (its history row keeps it)."""
    for row in reversed(organisations.history(session, org)):
        if row.new_status not in SHUT:
            continue
        episode_id = (row.detail or {}).get("alert_episode")
        episode = session.get(AlertEpisode, episode_id) if isinstance(episode_id, int) \
            else None
        if episode is not None and episode.rule_id == rule.id and episode.ended_at is None:
            return episode
        return None
    return None


def _payload(org, change, kiosks, rule, episode, event, district, at, dashboard) -> dict:
    status = change.new_status
    where = f"{org.name} ({org.code})"
    count = len(kiosks)
    if status == SUSPENDED:
        lifter = {"ward_officer": "the ward officer", "district_officer": "the district",
                  "health_official": "the health official"}.get(org.lift_by or "",
                                                                 org.lift_by or "the district")
        text = (f"Cơ sở {where} bị tạm dừng hoạt động từ {_iso(at)}: {change.reason}. "
                f"/ Organisation {where} is suspended since {_iso(at)}: {change.reason}. "
                f"Its {count} kiosk(s) answer red (place closed) until {lifter} reopens it.")
    elif status == CLOSED:
        text = (f"Cơ sở {where} bị đóng cửa từ {_iso(at)}. / Organisation {where} is closed "
                f"since {_iso(at)}: {change.reason or 'no reason given'}. Its {count} "
                "kiosk(s) answer red (place closed).")
    else:
        text = (f"Cơ sở {where} được hoạt động trở lại từ {_iso(at)}. / Organisation {where} "
                f"is open again since {_iso(at)}; its {count} kiosk(s) decide as usual.")
    base = dashboard.rstrip("/") if dashboard else ""
    return {"event": event, "kind": ALERT_KIND, "rule": {"id": rule.id, "name": rule.name},
            "episode": episode.id, "at": _iso(at), "recovered": event == "recovery",
            "recovered_at": _iso(at) if event == "recovery" else None,
            "duration_seconds": round(at - episode.started, 1) if event == "recovery"
            else None,
            "organisation": {"code": org.code, "name": org.name},
            "district": {"code": district.code, "name": district.name} if district else None,
            "state": status, "since": _iso(episode.started), "detail": change.reason,
            "kiosks": [k.id for k in kiosks], "text": text,
            "url": f"{base}/organisations/{org.code}" if base else None}

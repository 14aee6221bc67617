"""Alerts: tell people when a kiosk goes offline or a district loses too many kiosks,
once per outage, and again when it is over (docs/dashboard.md#alerts).

    greengate-fleet alerts [--once]      the dispatcher (systemd/greengate-fleet-alerts.service)

The dispatcher is its own process. It never talks to the ingest worker or the web
server: the database is the interface. Every `[alerts] poll` seconds it

1. decides (one transaction): reads the rules, the kiosks' states and the open
   outages the presence tracker wrote, opens an *episode* for each new thing to tell
   (a kiosk offline for longer than `grace_seconds`, a district over its threshold)
   and closes the episodes that are over, writing one *delivery* row per message
   and target (the webhook, each e-mail address) with its payload frozen;
2. records what the senders finished since the last round (sent, or failed and
   due again later with a doubling back-off, or given up);
3. hands the due deliveries to a small thread pool (`senders`), so one slow or
   dead target never holds the others up.

Everything that must not happen twice is in the database before anything is sent:
a restarted dispatcher finds the episodes it opened (the unique key
(rule, outage) keeps a second alert for the same outage out even so) and the
deliveries still pending. A delivery interrupted by a crash between "sent" and
"recorded" is sent again: at least once, never silently lost; receivers can drop
repeats by (episode, event). Exactly one dispatcher runs per database (a lock like
the presence tracker's, fleet/db_lock.py).

Rule edits (page /alerts, API /api/v1/alerts/rules) go through `apply_rule()`,
which checks the values and writes the audit entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import re
import signal
import smtplib
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import quote, urlsplit

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from greengate import watchdog

from . import audit
from .db import make_engine, make_sessions
from .db_lock import DatabaseLock, LockBusy
from .models import (ALERT_KINDS, BRIDGE_DOWN, DEGRADED, DISTRICT_LOSS, KIOSK_OFFLINE,
                     OFFLINE, ONLINE, RETIRED, UNREACHABLE, AlertDelivery, AlertEpisode,
                     AlertRule, Bridge, District, Kiosk, Location, Outage)
from .presence import BRIDGE_DETAIL

log = logging.getLogger("greengate.fleet.alerts")

ALERT, RECOVERY = "alert", "recovery"
WEBHOOK, EMAIL = "webhook", "email"
PENDING, SENT, FAILED, CANCELLED = "pending", "sent", "failed", "cancelled"
# how an episode ended; only "recovered" sends a message
RECOVERED, KIOSK_RETIRED, RULE_DISABLED, OUT_OF_SCOPE = ("recovered", "kiosk retired",
                                                         "rule disabled", "out of scope")
# District loss counts these (never_seen: not yet). An unreachable kiosk (behind a bridge
# that is down, docs/scaling.md) is in service and not lost: left out, a cut bridge would
# turn a district's few offline kiosks into 100 % of the rest and alert as a loss.
IN_SERVICE = (ONLINE, DEGRADED, OFFLINE, UNREACHABLE)
PING_EVERY = 1.0  # seconds between systemd watchdog pings (the unit's WatchdogSec is 60)
DB_RETRY = (1.0, 30.0)  # a failing round is tried again after 1 s, doubling up to 30 s
KIND_NAMES = {KIOSK_OFFLINE: "kiosk offline", DISTRICT_LOSS: "district loses kiosks",
              BRIDGE_DOWN: "district bridge down"}


# --- rules -----------------------------------------------------------------------------
class RuleError(ValueError):
    """A rule value that cannot be used; the message says what to send instead."""


EMAIL_RE = re.compile(r"^[^@\s,;<>\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def check_webhook(url: str) -> str:
    """The webhook URL, stripped; "" for none; RuleError if it cannot be a webhook."""
    url = (url or "").strip()
    if not url:
        return ""
    if any(c.isspace() for c in url) or len(url) > 500:
        raise RuleError(f"the webhook URL {url[:80]!r} has spaces or is longer than 500 "
                        "characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise RuleError(f"the webhook URL {url!r} must start with https:// (or http:// on a "
                        "trusted network)")
    try:
        parts.port
    except ValueError:
        raise RuleError(f"the webhook URL {url!r} has a bad port number") from None
    if not parts.hostname:
        raise RuleError(f"the webhook URL {url!r} names no host")
    if parts.username or parts.password:
        # urllib would not send them, and the audit log and the page would show them
        raise RuleError("the webhook URL must not carry a user name or password; use a token "
                        "in its path or query, or [alerts] webhook_secret")
    return url


def parse_emails(value) -> list[str]:
    """Addresses from "a@x, b@y" (commas, semicolons or spaces) or a list; RuleError
    naming the first bad one."""
    items = value if isinstance(value, (list, tuple)) else re.split(r"[,;\s]+", value or "")
    out: list[str] = []
    for item in items:
        address = str(item).strip()
        if not address:
            continue
        if not EMAIL_RE.match(address) or len(address) > 254:
            raise RuleError(f"{address!r} is not an e-mail address (like ops@example.org)")
        if address.lower() not in (a.lower() for a in out):
            out.append(address)
    if len(", ".join(out)) > 1000:
        raise RuleError("too many e-mail addresses for one rule (1000 characters at most)")
    return out


def apply_rule(session, rule: AlertRule | None, values: dict, *, actor: str,
               now: float) -> AlertRule:
    """Create (rule None) or change a rule from form or JSON values: name, kind,
    district (a district code; "" or None: all districts), threshold (percent,
    district_loss only), webhook_url, emails, enabled. Keys not given keep their
    value. Raises RuleError; audits the change (the caller commits)."""
    old = rule_dict(session, rule) if rule is not None else None
    current = old or {"name": "", "kind": KIOSK_OFFLINE, "district": None, "threshold": None,
                      "webhook_url": "", "emails": [], "enabled": True}
    merged = {**current, **{k: v for k, v in values.items() if k in current}}
    name = str(merged["name"] or "").strip()
    if not name or len(name) > 100:
        raise RuleError("give the rule a name of 1 to 100 characters")
    kind = merged["kind"]
    if kind not in ALERT_KINDS:
        raise RuleError(f"unknown kind {kind!r}; kinds: {', '.join(ALERT_KINDS)}")
    district_id = None
    code = (merged["district"] or "").strip() if isinstance(merged["district"], str) \
        else merged["district"]
    if code:
        if kind == BRIDGE_DOWN:
            raise RuleError("a bridge rule covers every district bridge: leave its district "
                            "empty")
        district_id = session.scalar(select(District.id).where(District.code == code))
        if district_id is None:
            raise RuleError(f"no district with code {code!r}")
    threshold = merged["threshold"]
    if kind == DISTRICT_LOSS:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise RuleError("a district rule needs a threshold: the percentage of its kiosks "
                            "offline above which it alerts (0 to 99)") from None
        if not 0 <= threshold < 100:
            raise RuleError(f"threshold {threshold:g} % is out of range: 0 to 99 (it alerts "
                            "when strictly more than this are offline)")
    else:
        threshold = None
    webhook_url = check_webhook(merged["webhook_url"])
    emails = parse_emails(merged["emails"])
    if not webhook_url and not emails:
        raise RuleError("a rule needs a webhook URL or at least one e-mail address")
    enabled = merged["enabled"]
    if isinstance(enabled, str):
        enabled = enabled.lower() in ("1", "true", "on", "yes")
    if rule is None:
        rule = AlertRule(created_by=actor, created_at=now)
        session.add(rule)
    rule.name, rule.kind, rule.district_id, rule.threshold = name, kind, district_id, threshold
    rule.webhook_url, rule.emails, rule.enabled = webhook_url, ", ".join(emails), bool(enabled)
    rule.updated_by, rule.updated_at = actor, now
    session.flush()
    new = rule_dict(session, rule)
    if old is None:
        audit.record(session, actor, "alert_rule.create", str(rule.id),
                     **{k: v for k, v in new.items() if k not in ("id", "created_by",
                                                                "created_at", "updated_by",
                                                                "updated_at")})
    else:
        changed = {k: [old[k], new[k]] for k in old if k not in ("updated_by", "updated_at")
                   and old[k] != new[k]}
        if changed:
            audit.record(session, actor, "alert_rule.update", str(rule.id), changes=changed)
    return rule


def rule_dict(session, rule: AlertRule) -> dict:
    code = session.scalar(select(District.code).where(District.id == rule.district_id)) \
        if rule.district_id is not None else None
    return {"id": rule.id, "name": rule.name, "kind": rule.kind, "district": code,
            "threshold": rule.threshold, "webhook_url": rule.webhook_url,
            "emails": [e for e in (rule.emails or "").split(", ") if e],
            "enabled": bool(rule.enabled), "created_by": rule.created_by,
            "created_at": rule.created_at, "updated_by": rule.updated_by,
            "updated_at": rule.updated_at}


# --- deciding --------------------------------------------------------------------------
def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@dataclass
class _KioskRow:
    id: str
    state: str
    state_since: float | None
    enrolled: bool
    location: dict | None
    district_id: int | None
    detail: str = ""


class Decider:
    """Reads the fleet's state and writes episodes and deliveries (one transaction)."""

    def __init__(self, config):
        self.config = config
        self.a = config.alerts
        self._email_off_logged = False

    def _link(self, kiosk: str | None = None, district: dict | None = None) -> str | None:
        base = self.a.dashboard_url.rstrip("/")
        if not base:
            return None
        if kiosk is not None:
            return f"{base}/kiosks/{quote(kiosk, safe='')}"
        return f"{base}/kiosks?district={quote(district['code'], safe='')}"

    def run(self, session, now: float) -> int:
        """Decide one round inside `session` (the caller commits); returns how many
        messages were decided."""
        rules = session.scalars(select(AlertRule).order_by(AlertRule.id)).all()
        districts = {d.id: {"code": d.code, "name": d.name}
                     for d in session.scalars(select(District))}
        kiosks: dict[str, _KioskRow] = {}
        for k, loc in session.execute(select(Kiosk, Location).outerjoin(
                Location, Kiosk.location_id == Location.id)):
            kiosks[k.id] = _KioskRow(k.id, k.state, k.state_since, k.enrolled_at is not None,
                                     {"code": loc.code, "name": loc.name} if loc else None,
                                     loc.district_id if loc else None, k.detail or "")
        open_outages: dict[str, Outage] = {}
        for o in session.scalars(select(Outage).where(Outage.ended.is_(None))
                                 .order_by(Outage.started)):
            open_outages[o.kiosk_id] = o  # the newest open one, should there be two
        episodes = session.scalars(select(AlertEpisode).where(
            AlertEpisode.ended_at.is_(None))).all()
        by_rule: dict[int, list[AlertEpisode]] = {}
        for ep in episodes:
            by_rule.setdefault(ep.rule_id, []).append(ep)
        self._now = now
        made = 0
        for rule in rules:
            mine = by_rule.get(rule.id, [])
            if not rule.enabled:
                self._disable(session, rule, mine, now)
            elif rule.kind == KIOSK_OFFLINE:
                made += self._kiosk_rule(session, rule, mine, kiosks, open_outages, districts,
                                         now)
            elif rule.kind == DISTRICT_LOSS:
                made += self._district_rule(session, rule, mine, kiosks, open_outages,
                                            districts, now)
            elif rule.kind == BRIDGE_DOWN:
                made += self._bridge_rule(session, rule, mine, kiosks, now)
        return made

    def _disable(self, session, rule, mine, now) -> None:
        """A disabled rule says nothing more: open episodes end without a recovery and
        what it still had to send is cancelled."""
        for ep in mine:
            ep.ended_at, ep.resolution = now, RULE_DISABLED
        session.execute(update(AlertDelivery).where(
            AlertDelivery.status == PENDING,
            AlertDelivery.episode_id.in_(select(AlertEpisode.id).where(
                AlertEpisode.rule_id == rule.id)))
            .values(status=CANCELLED, next_at=None, last_error="the rule was disabled"))

    def _kiosk_rule(self, session, rule, mine, kiosks, open_outages, districts, now) -> int:
        made = 0
        for ep in mine:
            kiosk = kiosks.get(ep.kiosk_id)
            outage = session.get(Outage, ep.outage_id)
            if kiosk is None or kiosk.state == RETIRED:
                # retired: no longer anybody's concern, so no "recovered" either
                ep.ended_at, ep.resolution = now, KIOSK_RETIRED
            elif outage is None or outage.ended is not None:
                ended = outage.ended if outage is not None else now
                ep.ended_at, ep.resolution = ended, RECOVERED
                made += self._messages(session, rule, ep, RECOVERY, self._kiosk_payload(
                    rule, ep, kiosk, districts, RECOVERY, outage, now))
        alerted = set(session.scalars(select(AlertEpisode.outage_id).where(
            AlertEpisode.rule_id == rule.id,
            AlertEpisode.outage_id.in_([o.id for o in open_outages.values()]))))
        for kid, outage in open_outages.items():
            kiosk = kiosks.get(kid)
            if kiosk is None or kiosk.state != OFFLINE or outage.id in alerted:
                continue  # retired (its outage is ended), or told already
            if rule.district_id is not None and kiosk.district_id != rule.district_id:
                continue
            if now - outage.started < self.a.grace_seconds:
                continue  # perhaps a reboot: look again next round
            ep = AlertEpisode(rule_id=rule.id, kiosk_id=kid, district_id=kiosk.district_id,
                              outage_id=outage.id, started=outage.started, alerted_at=now)
            session.add(ep)
            session.flush()
            made += self._messages(session, rule, ep, ALERT, self._kiosk_payload(
                rule, ep, kiosk, districts, ALERT, outage, now))
        return made

    def _kiosk_payload(self, rule, ep, kiosk, districts, event, outage, now) -> dict:
        where = kiosk.location if kiosk else None
        district = districts.get(kiosk.district_id) if kiosk else None
        cause = outage.cause if outage is not None else ""
        place = ", ".join(x["name"] for x in (where, district) if x)
        doc = self._base(rule, ep, event, now)
        doc.update(kiosk=ep.kiosk_id, location=where, district=district,
                   state=kiosk.state if kiosk else OFFLINE, since=iso(ep.started),
                   detail=cause, url=self._link(kiosk=ep.kiosk_id))
        if event == ALERT:
            doc["text"] = (f"Kiosk {ep.kiosk_id}{f' ({place})' if place else ''} is offline "
                           f"since {iso(ep.started)}: {cause or 'no cause given'}")
        else:
            doc.update(recovered=True, recovered_at=iso(ep.ended_at),
                       duration_seconds=round(ep.ended_at - ep.started, 1))
            doc["text"] = (f"Kiosk {ep.kiosk_id}{f' ({place})' if place else ''} is back "
                           f"({doc['state']}) after {_duration(ep.ended_at - ep.started)} "
                           "offline")
        return doc

    def _district_rule(self, session, rule, mine, kiosks, open_outages, districts, now) -> int:
        made = 0
        in_scope = [rule.district_id] if rule.district_id is not None else list(districts)
        open_by_district = {ep.district_id: ep for ep in mine}
        for ep in mine:
            if ep.district_id not in in_scope or ep.district_id not in districts:
                ep.ended_at, ep.resolution = now, OUT_OF_SCOPE  # the rule was narrowed
        for did in in_scope:
            if did not in districts:
                continue
            members = [k for k in kiosks.values() if k.district_id == did and k.enrolled
                       and k.state in IN_SERVICE]
            lost = sorted(k.id for k in members if k.state == OFFLINE and self._long_enough(
                k, open_outages.get(k.id), now))
            percent = 100.0 * len(lost) / len(members) if members else 0.0
            ep = open_by_district.get(did)
            if ep is not None and ep.ended_at is not None:
                ep = None
            unreachable = sum(1 for k in members if k.state == UNREACHABLE)
            counts = {"offline": len(lost), "total": len(members), "percent": round(percent, 1),
                      "threshold": rule.threshold, "kiosks": lost, "unreachable": unreachable}
            if ep is None and percent > rule.threshold:
                ep = AlertEpisode(rule_id=rule.id, kiosk_id=None, district_id=did,
                                  outage_id=None, started=now, alerted_at=now)
                session.add(ep)
                session.flush()
                made += self._messages(session, rule, ep, ALERT, self._district_payload(
                    rule, ep, districts[did], ALERT, counts, now))
            elif ep is not None and percent <= rule.threshold:
                ep.ended_at, ep.resolution = now, RECOVERED
                made += self._messages(session, rule, ep, RECOVERY, self._district_payload(
                    rule, ep, districts[did], RECOVERY, counts, now))
        return made

    def _bridge_rule(self, session, rule, mine, kiosks, now) -> int:
        """A registered bridge down for the grace period alerts, with how many kiosks are
        unreachable through it; its coming back is the recovery. Without this, a cut
        bridge would say nothing: its kiosks are unreachable, not offline. A bridge that
        has not connected once in the grace period after its registration alerts too: a
        district broker set up wrong (its bridge certificate, the core's address) never
        says "0", and its kiosks would be silent for reasons nobody is told."""
        made = 0
        registered = {b.name: b for b in session.scalars(select(Bridge))
                      if b.address is not None}
        told = set()
        for ep in mine:
            b = registered.get(ep.bridge)
            if b is None:
                ep.ended_at, ep.resolution = now, OUT_OF_SCOPE  # no longer registered
            elif b.connected is True:
                ep.ended_at, ep.resolution = (b.since or now), RECOVERED
                made += self._messages(session, rule, ep, RECOVERY, self._bridge_payload(
                    rule, ep, b, RECOVERY, kiosks, now))
            else:
                told.add(b.name)
        for name, b in sorted(registered.items()):
            if b.connected is True or name in told:
                continue
            if b.connected is False:
                since = b.since if b.since is not None else now
            elif b.registered_at is not None:
                since = b.registered_at  # registered, never heard of on the core
            else:
                continue
            if now - since < self.a.grace_seconds:
                continue  # a link that drops for seconds reconnects by itself
            ep = AlertEpisode(rule_id=rule.id, kiosk_id=None, district_id=None,
                              outage_id=None, bridge=name, started=since, alerted_at=now)
            session.add(ep)
            session.flush()
            made += self._messages(session, rule, ep, ALERT, self._bridge_payload(
                rule, ep, b, ALERT, kiosks, now))
        return made

    def _bridge_payload(self, rule, ep, bridge, event, kiosks, now) -> dict:
        detail = BRIDGE_DETAIL + bridge.name
        unreachable = sum(1 for k in kiosks.values()
                          if k.state == UNREACHABLE and k.detail == detail)
        doc = self._base(rule, ep, event, now)
        base = self.a.dashboard_url.rstrip("/")
        doc.update(kiosk=None, location=None, district=None, bridge=bridge.name,
                   address=bridge.address, state="down" if event == ALERT else "connected",
                   since=iso(ep.started), unreachable=unreachable,
                   url=f"{base}/#bridges" if base else None)
        if event == ALERT and bridge.connected is None:
            doc["state"] = "never connected"
            doc["detail"] = ("the core has no word from it: check the district broker's "
                             "bridge (its certificate, the core's address) and its log")
            doc["text"] = (f"District bridge {bridge.name} ({bridge.address}) has not "
                           f"connected to the core since it was registered at "
                           f"{iso(ep.started)}: {doc['detail']}")
        elif event == ALERT:
            doc["detail"] = (f"{unreachable} kiosks unreachable through it; they go on "
                             "checking, and what they decide reaches the fleet once it is back")
            doc["text"] = (f"District bridge {bridge.name} ({bridge.address}) is down since "
                           f"{iso(ep.started)}: {doc['detail']}")
        else:
            doc.update(recovered=True, recovered_at=iso(ep.ended_at),
                       duration_seconds=round(ep.ended_at - ep.started, 1),
                       detail="connected to the core again")
            doc["text"] = (f"District bridge {bridge.name} ({bridge.address}) is back after "
                           f"{_duration(ep.ended_at - ep.started)}")
        return doc

    def _long_enough(self, kiosk: _KioskRow, outage: Outage | None, now: float) -> bool:
        """The grace period holds for districts too: a reboot is no loss."""
        since = outage.started if outage is not None else kiosk.state_since
        return since is None or now - since >= self.a.grace_seconds

    def _district_payload(self, rule, ep, district, event, counts, now) -> dict:
        doc = self._base(rule, ep, event, now)
        summary = (f"{counts['offline']} of {counts['total']} kiosks offline "
                   f"({counts['percent']:g} %), threshold {rule.threshold:g} %")
        if counts["unreachable"]:
            summary += (f"; {counts['unreachable']} unreachable through a district bridge "
                        "that is down (not counted as offline)")
        doc.update(kiosk=None, location=None, district=district,
                   state="loss" if event == ALERT else "normal", since=iso(ep.started),
                   detail=summary, url=self._link(district=district), **counts)
        if event == ALERT:
            doc["text"] = f"District {district['name']} ({district['code']}): {summary}"
        else:
            doc.update(recovered=True, recovered_at=iso(ep.ended_at),
                       duration_seconds=round(ep.ended_at - ep.started, 1))
            doc["text"] = (f"District {district['name']} ({district['code']}) recovered after "
                           f"{_duration(ep.ended_at - ep.started)}: {summary}")
        return doc

    def _base(self, rule, ep, event, now) -> dict:
        return {"event": event, "kind": rule.kind, "rule": {"id": rule.id, "name": rule.name},
                "episode": ep.id, "at": iso(now), "recovered": False, "recovered_at": None,
                "duration_seconds": None}

    def _messages(self, session, rule, ep, event, payload) -> int:
        targets = []
        if rule.webhook_url:
            targets.append((WEBHOOK, rule.webhook_url))
        emails = [e for e in (rule.emails or "").split(", ") if e]
        if emails and not self.a.smtp_host:
            if not self._email_off_logged:
                log.warning("rule %s names e-mail addresses but [alerts] smtp_host is empty: "
                            "e-mail is off", rule.id)
                self._email_off_logged = True
        elif emails:
            targets += [(EMAIL, address) for address in emails]
        for channel, target in targets:
            session.add(AlertDelivery(episode_id=ep.id, event=event, channel=channel,
                                      target=target, payload=payload,
                                      created_at=self._now, status=PENDING, attempts=0,
                                      next_at=self._now, sent_at=None, last_error=""))
        log.info("%s %s (rule %s, episode %s) to %d target(s)", event, payload["text"],
                 rule.id, ep.id, len(targets))
        return len(targets)


# --- sending ---------------------------------------------------------------------------
class DeliveryError(Exception):
    """A target did not take the message; the text is shown to admins."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        # urllib would re-send a POST as a GET without its body: refuse instead
        raise DeliveryError(f"HTTP {code}: the webhook redirects to {newurl}; put that URL "
                            "in the rule")


class Sender:
    def __init__(self, config):
        self.a = config.alerts
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, channel: str, target: str, payload: dict) -> None:
        if channel == WEBHOOK:
            self.webhook(target, payload)
        elif channel == EMAIL:
            self.email(target, payload)
        else:
            raise DeliveryError(f"unknown channel {channel!r}")

    def webhook(self, url: str, payload: dict) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "greengate-fleet-alerts"}
        if self.a.webhook_secret:
            digest = hmac.new(self.a.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-GreenGate-Signature"] = f"sha256={digest}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.a.webhook_timeout) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise DeliveryError(f"no answer within {self.a.webhook_timeout:g} s") from None
            raise DeliveryError(f"cannot reach {urlsplit(url).netloc}: {reason}") from None
        except (TimeoutError, socket.timeout):
            raise DeliveryError(f"no answer within {self.a.webhook_timeout:g} s") from None
        except OSError as exc:
            raise DeliveryError(f"connection failed: {exc}") from None

    def email(self, address: str, payload: dict) -> None:
        message = email_message(payload, self.a.smtp_from, address)
        try:
            with smtplib.SMTP(self.a.smtp_host, self.a.smtp_port,
                              timeout=self.a.smtp_timeout) as smtp:
                if self.a.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.a.smtp_user:
                    smtp.login(self.a.smtp_user, self.a.smtp_password)
                smtp.send_message(message, self.a.smtp_from, [address])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text_ = next(iter(exc.recipients.values()))
            raise DeliveryError(f"the mail server refused {address}: {code} "
                                f"{_text(text_)}") from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"the mail server said {exc.smtp_code} "
                                f"{_text(exc.smtp_error)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"mail server {self.a.smtp_host}:{self.a.smtp_port}: "
                                f"{exc or type(exc).__name__}") from None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def email_message(payload: dict, sender: str, address: str) -> EmailMessage:
    """One message per alert: the payload's summary as the subject, its fields below.
    The recovery replies to its alert (Message-ID from the episode), so mail programs
    show them as one thread."""
    domain = sender.rpartition("@")[2] or "localhost"
    recovered = payload["event"] == RECOVERY
    message = EmailMessage()
    message["Subject"] = f"[GreenGate] {'RECOVERED' if recovered else 'ALERT'}: {payload['text']}"
    message["From"] = sender
    message["To"] = address
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = f"<greengate-{payload['episode']}-{payload['event']}@{domain}>"
    if recovered:
        message["In-Reply-To"] = message["References"] = \
            f"<greengate-{payload['episode']}-{ALERT}@{domain}>"
    lines = [payload["text"], ""]
    for key in ("kind", "kiosk", "location", "district", "bridge", "address", "state",
                "since", "detail", "recovered_at", "offline", "total", "percent", "threshold",
                "kiosks", "unreachable"):
        value = payload.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, dict):
            value = f"{value.get('name')} ({value.get('code')})"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"{key}: {value}")
    lines.append(f"rule: {payload['rule']['name']} (#{payload['rule']['id']})")
    if payload.get("url"):
        lines += ["", payload["url"]]
    message.set_content("\n".join(lines) + "\n")
    return message


# --- the dispatcher ----------------------------------------------------------------------
class Dispatcher:
    """decide → record finished sends → hand due deliveries to the senders, each
    `tick(now)`. Tests call tick() with their own clock and settle() to wait for the
    sends; `run()` loops on the wall clock."""

    def __init__(self, config, engine=None, clock=time.time):
        self.config = config
        self.a = config.alerts
        self._own_engine = engine is None
        self.engine = engine if engine is not None else make_engine(config.database_url)
        self.sessions = make_sessions(self.engine)
        self.clock = clock
        self.decider = Decider(config)
        self.sender = Sender(config)
        self.pool = ThreadPoolExecutor(self.a.senders, thread_name_prefix="alert-send")
        self.in_flight: set[int] = set()
        self.done: queue.Queue = queue.Queue()  # (delivery id, attempts, error or None)
        self.lock = DatabaseLock(self.engine, "alerts", b"GGALERTS")
        self._stop = threading.Event()

    # --- one round ---------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self.sessions() as session:
            made = self.decider.run(session, now)
            session.commit()
        if made:
            log.debug("%d message(s) decided", made)
        self.record(now)
        self.dispatch(now)

    def record(self, now: float) -> None:
        """Write what the senders finished (from this thread only: a failing database
        keeps the results here until it works again, instead of losing them)."""
        results = []
        while True:
            try:
                results.append(self.done.get_nowait())
            except queue.Empty:
                break
        if not results:
            return
        try:
            with self.sessions() as session:
                for delivery_id, attempts, error in results:
                    self._record_one(session, delivery_id, attempts, error, now)
                session.commit()
        except SQLAlchemyError:
            for result in results:
                self.done.put(result)
            raise
        for delivery_id, _, _ in results:
            self.in_flight.discard(delivery_id)

    def _record_one(self, session, delivery_id, attempts, error, now) -> None:
        d = session.get(AlertDelivery, delivery_id)
        if d is None:
            return
        d.attempts = attempts
        if error is None:
            d.status, d.sent_at, d.next_at, d.last_error = SENT, now, None, ""
            log.info("%s %s to %s sent (episode %s, try %d)", d.event, d.channel, d.target,
                     d.episode_id, attempts)
            return
        d.last_error = error[:400]
        if d.status == CANCELLED:
            return
        if attempts >= self.a.max_attempts:
            d.status, d.next_at = FAILED, None
            log.error("%s %s to %s given up after %d tries: %s", d.event, d.channel, d.target,
                      attempts, error)
            return
        wait = min(self.a.retry_seconds * 2 ** (attempts - 1), self.a.retry_max_seconds)
        d.next_at = now + wait
        log.warning("%s %s to %s failed (try %d): %s; again in %g s", d.event, d.channel,
                    d.target, attempts, error, wait)

    def dispatch(self, now: float) -> None:
        free = 2 * self.a.senders - len(self.in_flight)  # a small queue per sender, no more
        if free <= 0:
            return
        with self.sessions() as session:
            due = session.scalars(select(AlertDelivery).where(
                AlertDelivery.status == PENDING, AlertDelivery.next_at <= now)
                .order_by(AlertDelivery.next_at, AlertDelivery.id)
                .limit(free + len(self.in_flight))).all()
            waiting = set()
            recoveries = [d for d in due if d.event == RECOVERY]
            if recoveries:
                # a recovery goes after its alert to the same target, never before it
                waiting = set(session.execute(select(
                    AlertDelivery.episode_id, AlertDelivery.channel, AlertDelivery.target).where(
                    AlertDelivery.event == ALERT, AlertDelivery.status == PENDING,
                    AlertDelivery.episode_id.in_({d.episode_id for d in recoveries}))).all())
        for d in due:
            if free <= 0:
                break
            if d.id in self.in_flight or (d.event == RECOVERY and (
                    d.episode_id, d.channel, d.target) in waiting):
                continue
            self.in_flight.add(d.id)
            free -= 1
            self.pool.submit(self._send, d.id, d.channel, d.target, d.payload, d.attempts)

    def _send(self, delivery_id, channel, target, payload, attempts) -> None:
        try:
            self.sender.send(channel, target, payload)
            error = None
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # a sender bug must not lose the result or the thread
            log.exception("sending delivery %s", delivery_id)
            error = f"{type(exc).__name__}: {exc}"
        self.done.put((delivery_id, attempts + 1, error))

    def settle(self, now: float | None = None, timeout: float = 30.0) -> None:
        """Wait until every send in flight finished, and record them (tests; stop)."""
        end = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < end:
            self.record(self.clock() if now is None else now)
            if self.in_flight:
                time.sleep(0.02)
        self.record(self.clock() if now is None else now)

    # --- the process -----------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def run(self, once: bool = False) -> None:
        """Loop until request_stop(); the lock must be held. A failing database is
        retried (the watchdog keeps being fed meanwhile: a hang, not an error, is what
        should get us restarted)."""
        watchdog.ready("alerts dispatcher")
        delay = DB_RETRY[0]
        last_ping = 0.0
        while not self._stop.is_set():
            try:
                self.tick()
                delay = DB_RETRY[0]
                wait = self.a.poll
            except SQLAlchemyError as exc:
                log.warning("alerts round failed (%s); again in %.0f s", exc, delay)
                wait, delay = delay, min(delay * 2, DB_RETRY[1])
            if once:
                self.settle()
                break
            end = time.monotonic() + wait
            while not self._stop.is_set():
                if time.monotonic() - last_ping >= PING_EVERY:
                    watchdog.watchdog_ping()
                    last_ping = time.monotonic()
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._stop.wait(min(left, PING_EVERY))
                try:
                    self.record(self.clock())  # a send that finished is recorded at once
                except SQLAlchemyError:
                    pass
        watchdog.stopping()
        try:
            # a send in progress gets its timeout to finish, so it is recorded, not repeated
            self.settle(timeout=max(self.a.webhook_timeout, self.a.smtp_timeout) + 1)
        except SQLAlchemyError as exc:
            log.warning("could not record the last sends (%s): they will be sent again", exc)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.lock.release()
        if self._own_engine:
            self.engine.dispose()


def run(config, args) -> int:
    """`greengate-fleet alerts`: run the dispatcher until SIGTERM / SIGINT."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dispatcher = Dispatcher(config)
    try:
        delay = DB_RETRY[0]
        while True:
            try:
                dispatcher.lock.acquire()
                break
            except LockBusy as exc:
                print(f"greengate-fleet: another alerts dispatcher runs for this database "
                      f"({exc}); one is enough", file=sys.stderr)
                return 2
            except SQLAlchemyError as exc:  # the database is not up yet
                log.warning("database not reachable (%s); again in %.0f s", exc, delay)
                watchdog.watchdog_ping()
                time.sleep(delay)
                delay = min(delay * 2, DB_RETRY[1])
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: dispatcher.request_stop())
        log.info("alerts dispatcher started (poll %g s, grace %g s)", config.alerts.poll,
                 config.alerts.grace_seconds)
        dispatcher.run(once=getattr(args, "once", False))
        log.info("alerts dispatcher stopped")
        return 0
    finally:
        dispatcher.close()


__all__ = ["Dispatcher", "Decider", "Sender", "RuleError", "apply_rule", "check_webhook",
           "parse_emails", "rule_dict", "email_message", "run"]

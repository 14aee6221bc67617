"""Kiosk presence: the state machine (pure logic, no MQTT, no clock of its own) and
the writer that puts its changes into the database.

States (fleet/models.py): never_seen, online, degraded, unreachable, offline, retired.

    Tracker.load(rows)              the kiosks as the database has them (at start)
    Tracker.resume(now)             we hear the broker (again): start the silence clocks
    Tracker.suspend()               we lost the broker: stop judging silence
    Tracker.presence(k, doc, now, retained=...)   a parsed presence message
    Tracker.heartbeat(k, doc, now)  a parsed heartbeat
    Tracker.bridge(name, up, now)   a district bridge's state on the core (docs/scaling.md)
    Tracker.sweep(now)              offline ("silent") whoever said nothing for too long
    Tracker.take_changes()          what to write (the writer puts it back on failure)
    Tracker.take_seen()             last_seen/heartbeat to flush (periodically)

Rules (docs/fleet.md#presence):

* sessions: a presence or heartbeat whose session is older than the newest one seen
  for that kiosk is ignored: a will of a dead connection can arrive after the new
  connection's `online` (docs/protocol.md). The newest session is written with
  every change, so the rule survives a fleet restart;
* `offline` for the current session is an outage: cause "stopped" when the kiosk
  said so (graceful stop, `"cause": "stopped"`), else "connection lost" (the will);
  that session is then over: neither its `online` (a retained or replayed copy) nor
  its heartbeats bring the kiosk back, only a newer session does;
* silence: a connected kiosk that sent nothing (heartbeat or live presence) for
  1.5 x keepalive is offline, cause "silent", found by the sweep (so at most one
  sweep interval later). The outage starts at the last message heard. That verdict
  is a guess: a heartbeat of the same session proves it wrong and ends the outage;
* degraded: a heartbeat naming a fault (`faults`: storage, source, config, lists,
  clock, with the kiosk's detail, e.g. "storage: database or disk is full"), saying
  lists stale/missing, clock unknown, or an outbox deeper than `backlog`; the next
  clean heartbeat makes it online again;
* policy mismatch: a heartbeat's `policy` (the one the kiosk applies) is not the one
  the fleet assigned it, once the deployment's newest policy bundle is older than
  `policy_grace` (a bundle takes a moment to arrive and a heartbeat interval to be
  reported): degraded, "policy X assigned, Y applied". The assignments are what the
  ingest loaded last (Tracker.assign, every REFRESH s); a kiosk holding a newer policy
  bundle than that knows more than the tracker and is not judged;
* bridges (docs/scaling.md): a kiosk names in its heartbeats and presence the broker it
  is connected through. When the bridge of that broker to the core is down (its "0" on
  gg/v1/bridge/<name>/state), the kiosk is `unreachable` ("through bridge NAME"), not
  offline: the fleet cannot hear it, and does not know it is gone; nor does the silence
  sweep make it offline while the bridge is down. Once the bridge is back, the kiosk gets
  one full timeout to be heard (its district queued what it said meanwhile), else it is
  offline ("silent"), the outage starting at the last message heard. A kiosk heard
  through another broker (it failed over) is judged as any other. Kiosks that do not name
  their broker (older firmware) are judged by silence alone;
* retired kiosks stay retired whatever they send (the API retires them);
* only changes are written: state, detail or session. last_seen and the last
  heartbeat are flushed in bulk every `seen_flush` seconds, not per heartbeat, but
  a connection's first heartbeat and one bringing a bundle kind the last one lacked
  are written at once (the dashboard shows the bundles as soon as the kiosk has them);
* gaps: whichever write carries a kiosk's last heartbeat also counts the decisions
  its `confirmed` watermark newly covers that the fleet does not hold (fleet/gaps.py),
  in the same transaction.

Fleet restart (and broker reconnect): kiosks the database has online or degraded
are "unknown until heard from": they keep their state, and get one full timeout,
counted from the moment we hear the broker again, to say something. Retained
presence arrives at once on subscribing: a kiosk that went offline meanwhile is
offline right away (an outage that happened while the fleet was down is not
hidden); one that is still there confirms with its next heartbeat (no fake
outage from the fleet's own downtime); one that died without a will (a broker
that lost it) times out one timeout after the restart, its outage starting at the
last time the fleet heard it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import JSON, bindparam, func, null, select, update
from sqlalchemy.engine import Connection

from . import gaps
from .models import (DEGRADED, NEVER_SEEN, OFFLINE, ONLINE, RETIRED, STATES, UNREACHABLE,
                     Bridge, Kiosk, Outage, PresenceEvent, PublishedBundle)
from .sqlinsert import insert_ignore

log = logging.getLogger("greengate.fleet.presence")

CONNECTED = (ONLINE, DEGRADED)
STOPPED, LOST, SILENT = "stopped", "connection lost", "silent"
BRIDGE_DETAIL = "through bridge "  # + its name: an unreachable kiosk's detail
TIMEOUT_FACTOR = 1.5  # x keepalive: MQTT's own keepalive rule, applied to heartbeats
# x keepalive (the kiosks' heartbeat interval): the bundle arrives within seconds, and
# the heartbeat that reports it at most one interval later; one more is slack
POLICY_GRACE_FACTOR = 2.0


@dataclass
class KioskPresence:
    id: str
    state: str = NEVER_SEEN
    since: float | None = None
    detail: str = ""
    session: int = 0
    last_seen: float | None = None
    heartbeat: dict | None = None
    deadline: float | None = None  # connected: offline ("silent") if nothing heard by then
    heard: bool = False  # heard live since the tracker (re)started listening
    in_db: bool = True  # False: the row must be created before it is updated
    broker: str | None = None  # "host:port" it last said it is connected through


@dataclass
class BridgeState:
    name: str
    address: str | None = None  # its district broker, as kiosks name it
    up: bool | None = None  # None: not heard of yet
    since: float | None = None


@dataclass
class Change:
    """One kiosk row to write, with the event and outage edge that go with it."""
    kiosk: str
    at: float
    state: str
    since: float | None
    detail: str
    session: int
    last_seen: float | None
    heartbeat: dict | None
    create: bool = False  # the kiosk row may not exist yet
    previous: str | None = None  # set: a transition (a PresenceEvent)
    open_outage: float | None = None  # started (into offline)
    close_outage: bool = False  # out of offline
    cause: str = ""


def _bundles_arrived(before: dict, doc: dict) -> bool:
    """True if `doc` reports a bundle kind held that `before` reported as none (a kiosk's
    first lists after connecting; not every status update, which would be a write per
    kiosk per update)."""
    old = before.get("bundles") if isinstance(before.get("bundles"), dict) else {}
    new = doc.get("bundles") if isinstance(doc.get("bundles"), dict) else {}
    return any(isinstance(v, int) and not isinstance(old.get(kind), int)
               for kind, v in new.items())


def degradation(doc: dict, backlog: int) -> str:
    """Why a heartbeat makes its kiosk degraded ("" if it does not). Only categories,
    no numbers: the detail changes (and is written) when the reason does, not with
    every heartbeat's outbox depth.

    The kiosk's own faults come first, most urgent first, as "kind: detail" (e.g.
    "storage: database or disk is full"); a kiosk that reports a lists or clock fault
    is not also described by its lists/clock fields (older kiosks only have those)."""
    reasons = []
    faults = doc.get("faults") if isinstance(doc.get("faults"), list) else []
    kinds = set()
    for fault in faults:
        if isinstance(fault, dict) and fault.get("kind"):
            kinds.add(fault["kind"])
            reasons.append(f"{fault['kind']}: {str(fault.get('detail', ''))[:120]}")
    if doc.get("lists") in ("stale", "missing") and "lists" not in kinds:
        reasons.append(f"lists {doc['lists']}")
    if doc.get("clock") == "unknown" and "clock" not in kinds:
        reasons.append("clock unknown")
    if int(doc.get("outbox") or 0) > backlog:
        reasons.append(f"outbox over {backlog}")
    return "; ".join(reasons)


@dataclass
class Tracker:
    keepalive: float = 30.0
    backlog: int = 1000
    kiosks: dict[str, KioskPresence] = field(default_factory=dict)
    listening: bool = False
    stats: dict[str, int] = field(default_factory=lambda: {"stale": 0, "retired": 0})
    # kiosk -> (assigned policy, newest policy bundle version of its deployment or None,
    # that bundle's issued_at): see assign()
    assigned: dict[str, tuple[str, int | None, float | None]] = field(default_factory=dict)
    policy_grace: float | None = None  # seconds; None: POLICY_GRACE_FACTOR x keepalive
    bridges: dict[str, BridgeState] = field(default_factory=dict)

    def __post_init__(self):
        self._changes: list[Change] = []
        self._seen: set[str] = set()
        self._bridge_changes: dict[str, BridgeState] = {}
        self._crl_reports: dict[str, dict] = {}  # bridge -> its latest gg/v1/bridge/+/crl

    @property
    def timeout(self) -> float:
        return TIMEOUT_FACTOR * self.keepalive

    @property
    def grace(self) -> float:
        return POLICY_GRACE_FACTOR * self.keepalive if self.policy_grace is None \
            else self.policy_grace

    def assign(self, rows) -> None:
        """rows: (kiosk id, assigned policy, newest policy bundle version, its issued_at)
        (load_assignments). Judged at each kiosk's next heartbeat."""
        self.assigned = {kid: (policy, version, issued)
                         for kid, policy, version, issued in rows if policy}

    def policy_mismatch(self, kid: str, doc: dict, now: float) -> str:
        """"policy X assigned, Y applied" when the kiosk still applies another policy
        after the grace period, else ""."""
        entry = self.assigned.get(kid)
        applied = doc.get("policy")
        if entry is None or not isinstance(applied, str):
            return ""  # not assigned, or a kiosk older than the field
        policy, version, issued = entry
        if applied == policy or version is None:
            return ""  # no policy bundle published yet: nothing could carry it
        bundles = doc.get("bundles") if isinstance(doc.get("bundles"), dict) else {}
        held = bundles.get("policy")
        if isinstance(held, int) and held > version:
            return ""  # the kiosk has a newer bundle than the tracker has seen
        if issued is not None and now < issued + self.grace:
            return ""  # the bundle may still be on its way
        return f"policy {policy} assigned, {applied} applied"

    # --- lifecycle -----------------------------------------------------------------
    def load(self, rows) -> None:
        """rows: (id, state, state_since, detail, session, last_seen, heartbeat)."""
        for kid, state, since, detail, session, last_seen, heartbeat in rows:
            broker = heartbeat.get("broker") if isinstance(heartbeat, dict) else None
            self.kiosks[kid] = KioskPresence(kid, state if state in STATES else NEVER_SEEN,
                                             since, detail or "", int(session or 0), last_seen,
                                             heartbeat,
                                             broker=broker if isinstance(broker, str) else None)

    def known_bridges(self, rows) -> None:
        """rows: (name, address, connected, since) of the bridge table (load_bridges): the
        addresses registered (also while we run); a state heard already is kept."""
        for name, address, connected, since in rows:
            b = self.bridges.get(name)
            if b is None:
                self.bridges[name] = BridgeState(name, address, connected, since)
            else:
                b.address = address

    def _bridge_down(self, broker: str | None) -> BridgeState | None:
        if broker is None:
            return None
        for b in self.bridges.values():
            if b.address == broker and b.up is False:
                return b
        return None

    def _unreachable(self, k: KioskPresence, now: float, b: BridgeState) -> None:
        k.deadline = None
        self._transition(k, now, UNREACHABLE, BRIDGE_DETAIL + b.name)

    def bridge(self, name: str, up: bool, now: float) -> None:
        """The core's word on bridge `name` (retained or live: the same news)."""
        b = self.bridges.get(name)
        if b is None:
            b = self.bridges[name] = BridgeState(name)
        if b.up is not up:
            b.up, b.since = up, now
            self._bridge_changes[name] = BridgeState(name, b.address, up, now)
        if b.address is None:
            return  # not registered: no kiosk can be told apart by it
        for k in self.kiosks.values():
            if k.broker != b.address:
                continue
            if not up and k.state in CONNECTED:
                self._unreachable(k, now, b)
            elif up and k.state == UNREACHABLE and k.deadline is None:
                # what it said meanwhile is on its way up: one timeout to be heard
                k.heard, k.deadline = False, now + self.timeout

    def resume(self, now: float) -> None:
        """We hear the broker (first connection or a reconnect): every connected kiosk
        is unknown until heard from, with one full timeout from now."""
        self.listening = True
        for k in self.kiosks.values():
            k.heard = False
            waits = k.state in CONNECTED or (k.state == UNREACHABLE
                                             and self._bridge_down(k.broker) is None)
            k.deadline = now + self.timeout if waits else None

    def suspend(self) -> None:
        """No broker, no news: silence means nothing until resume()."""
        self.listening = False

    def retired(self, ids) -> None:
        """Kiosks the database says are retired (the API retires them while we run)."""
        for kid in ids:
            k = self.kiosks.get(kid)
            if k is None:
                self.kiosks[kid] = KioskPresence(kid, RETIRED)
            elif k.state != RETIRED:
                k.state, k.deadline = RETIRED, None

    # --- messages ------------------------------------------------------------------
    def _kiosk(self, kid: str) -> KioskPresence:
        k = self.kiosks.get(kid)
        if k is None:  # not in the database when we loaded it: created on first write
            k = self.kiosks[kid] = KioskPresence(kid, in_db=False)
        return k

    def _current(self, k: KioskPresence, session: int, kind: str) -> bool:
        if k.state == RETIRED:
            self.stats["retired"] += 1
            return False
        if session < k.session:
            self.stats["stale"] += 1
            log.info("kiosk %s: %s of session %d ignored, session %d is newer", k.id, kind,
                     session, k.session)
            return False
        return True

    def _heard(self, k: KioskPresence, now: float) -> None:
        k.last_seen = now
        k.heard = True
        self._seen.add(k.id)

    def presence(self, kid: str, doc: dict, now: float, *, retained: bool = False) -> None:
        """A parsed presence message. retained: a stored copy the broker handed us on
        subscribing, not news: it sets the state but is no sign of life."""
        k = self._kiosk(kid)
        session = doc["session"]
        if not self._current(k, session, "presence"):
            return
        new_session = session > k.session
        if doc["state"] == "online":
            if not new_session and k.state == OFFLINE:
                return  # the online of a session that is over already (a retained copy)
            if retained and not new_session and k.state == UNREACHABLE:
                return  # a stored copy says nothing of a kiosk behind a bridge that is down
            if isinstance(doc.get("broker"), str):
                k.broker = doc["broker"]
            if not retained:
                self._heard(k, now)
            if k.deadline is None or not retained:
                k.deadline = now + self.timeout
            if k.state in CONNECTED:
                if new_session:  # a reconnect: same state, but the session is kept durably
                    k.session, k.heartbeat = session, None
                    self._transition(k, now, k.state, k.detail, force=True)
                return
            if new_session:
                k.session, k.heartbeat = session, None
            down = self._bridge_down(k.broker) if retained else None
            if down is not None:  # a fleet restart: known online, behind a bridge that is down
                k.deadline = None
                self._transition(k, now, UNREACHABLE, BRIDGE_DETAIL + down.name)
                return
            self._transition(k, now, ONLINE, "")
            return
        # offline
        if not new_session and k.state == OFFLINE:
            return  # a copy, or the will after our own silence verdict
        if not retained:
            self._heard(k, now)
        k.session = session
        k.deadline = None
        self._transition(k, now, OFFLINE, doc.get("cause") or LOST, started=now)

    def heartbeat(self, kid: str, doc: dict, now: float) -> None:
        k = self._kiosk(kid)
        session = doc["session"]
        if not self._current(k, session, "heartbeat"):
            return
        new_session = session > k.session
        if not new_session and k.state == OFFLINE and not k.detail.startswith(SILENT):
            # its will or its stop ended this session: nothing of it can follow
            self.stats["stale"] += 1
            return
        self._heard(k, now)
        # The first heartbeat of a connection, and one that reports a bundle the last one
        # did not hold, are written at once, not at the next bulk flush (seen_flush, 2
        # minutes): until then the kiosk's page showed every bundle "missing" and no
        # heartbeat, though the kiosk had applied them within a second of connecting.
        news = k.heartbeat is None or _bundles_arrived(k.heartbeat, doc)
        k.session, k.heartbeat = session, doc
        if isinstance(doc.get("broker"), str):
            k.broker = doc["broker"]
        k.deadline = now + self.timeout
        why = "; ".join(filter(None, (degradation(doc, self.backlog),
                                      self.policy_mismatch(kid, doc, now))))
        self._transition(k, now, DEGRADED if why else ONLINE, why, force=new_session or news)

    def sweep(self, now: float) -> list[str]:
        """Offline ("silent") every connected kiosk past its deadline; their ids."""
        if not self.listening:
            return []
        silent = []
        for k in self.kiosks.values():
            if (k.state in CONNECTED or k.state == UNREACHABLE) and k.deadline is not None \
                    and now >= k.deadline:
                down = self._bridge_down(k.broker)
                if down is not None:  # not heard because its bridge is down: not offline
                    self._unreachable(k, now, down)
                    continue
                k.deadline = None
                quiet = f"nothing heard for {self.timeout:g} s"
                if not k.heard:
                    quiet += " since the fleet (re)connected"
                self._transition(k, now, OFFLINE, f"{SILENT}: {quiet}",
                                 started=k.last_seen if k.last_seen is not None else now)
                silent.append(k.id)
        return silent

    # --- changes -------------------------------------------------------------------
    def _transition(self, k: KioskPresence, now: float, state: str, detail: str, *,
                    started: float | None = None, force: bool = False) -> None:
        previous = k.state
        if previous == state and detail == k.detail and not force:
            return
        change = Change(k.id, now, state, k.since, detail, k.session, k.last_seen, k.heartbeat,
                        create=not k.in_db)
        if previous != state:
            k.since = change.since = now
            change.previous = previous
            if state == OFFLINE:
                change.open_outage = min(started if started is not None else now, now)
                change.cause = detail.split(":", 1)[0]
            elif previous == OFFLINE:
                change.close_outage = True
        k.state, k.detail = state, detail
        k.in_db = True
        self._changes.append(change)
        self._seen.discard(k.id)  # the change carries last_seen and heartbeat

    def bridge_crl(self, name: str, report: dict) -> None:
        """A district's word on the CRL its broker applies (messages.parse_bridge_crl):
        only the latest counts, written with the next presence write."""
        self._crl_reports[name] = report

    def take_crl_reports(self) -> dict[str, dict]:
        reports, self._crl_reports = self._crl_reports, {}
        return reports

    def give_back_crl_reports(self, reports: dict[str, dict]) -> None:
        for name, report in reports.items():
            self._crl_reports.setdefault(name, report)

    def take_bridge_changes(self) -> list[BridgeState]:
        changes, self._bridge_changes = list(self._bridge_changes.values()), {}
        return changes

    def give_back_bridges(self, changes: list[BridgeState]) -> None:
        for c in changes:
            self._bridge_changes.setdefault(c.name, c)

    def take_changes(self) -> list[Change]:
        changes, self._changes = self._changes, []
        return changes

    def give_back(self, changes: list[Change]) -> None:
        """A write failed: keep the changes, in order, ahead of newer ones."""
        self._changes[:0] = changes

    def take_seen(self) -> list[tuple[str, float | None, dict | None]]:
        seen, self._seen = self._seen, set()
        return [(kid, self.kiosks[kid].last_seen, self.kiosks[kid].heartbeat) for kid in seen
                if kid in self.kiosks]

    def give_back_seen(self, seen) -> None:
        self._seen.update(kid for kid, _, _ in seen)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for k in self.kiosks.values():
            out[k.state] = out.get(k.state, 0) + 1
        return out


# --- the database side ---------------------------------------------------------------
KIOSK = Kiosk.__table__
EVENT = PresenceEvent.__table__
OUTAGE = Outage.__table__


def load_rows(connection: Connection):
    return connection.execute(select(KIOSK.c.id, KIOSK.c.state, KIOSK.c.state_since,
                                     KIOSK.c.detail, KIOSK.c.session, KIOSK.c.last_seen,
                                     KIOSK.c.heartbeat)).all()


BRIDGE = Bridge.__table__


def load_bridges(connection: Connection):
    return connection.execute(select(BRIDGE.c.name, BRIDGE.c.address, BRIDGE.c.connected,
                                     BRIDGE.c.since)).all()


def write_bridges(connection: Connection, changes: list[BridgeState]) -> None:
    """Each bridge's state as the tracker last heard it; a bridge heard of before anyone
    registered it gets a row without an address."""
    for c in changes:
        done = connection.execute(update(BRIDGE).where(BRIDGE.c.name == c.name)
                                  .values(connected=c.up, since=c.since))
        if done.rowcount == 0:
            connection.execute(insert_ignore(connection, BRIDGE, ["name"]),
                               [{"name": c.name, "address": None, "connected": c.up,
                                 "since": c.since, "registered_at": None}])


def write_crl_reports(connection: Connection, reports: dict[str, dict]) -> None:
    """Each district's CRL as its crl-follow last said (a bridge not registered yet gets
    a row without an address, as for its state)."""
    for name, r in reports.items():
        values = {"crl_number": r.get("number"), "crl_at": r["at"],
                  "crl_error": r.get("error")}
        done = connection.execute(update(BRIDGE).where(BRIDGE.c.name == name).values(**values))
        if done.rowcount == 0:
            connection.execute(insert_ignore(connection, BRIDGE, ["name"]),
                               [{"name": name, "address": None, "connected": None,
                                 "since": None, "registered_at": None, **values}])


def load_assignments(connection: Connection) -> list[tuple[str, str, int | None, float | None]]:
    """(kiosk, assigned policy, newest policy bundle version of its deployment, its
    issued_at) for every kiosk not retired: Tracker.assign's rows."""
    bundle = PublishedBundle.__table__
    newest = {dep: version for dep, version in connection.execute(
        select(bundle.c.deployment, func.max(bundle.c.version))
        .where(bundle.c.kind == "policy").group_by(bundle.c.deployment))}
    issued = {}
    for dep, version in newest.items():
        issued[dep] = connection.execute(select(bundle.c.issued_at).where(
            bundle.c.deployment == dep, bundle.c.kind == "policy",
            bundle.c.version == version)).scalar()
    rows = connection.execute(select(KIOSK.c.id, KIOSK.c.policy, KIOSK.c.deployment)
                              .where(KIOSK.c.state != RETIRED))
    return [(kid, policy, newest.get(dep), issued.get(dep)) for kid, policy, dep in rows]


def new_kiosk_row(kid: str, at: float, deployment: str, detail: str) -> dict:
    """A kiosk the fleet hears of before anyone enrolled it (docs/fleet.md#ingest)."""
    return {"id": kid, "location_id": None, "deployment": deployment, "policy": "hcmc-2021",
            "state": NEVER_SEEN, "state_since": at, "detail": detail, "session": 0,
            "enrolled_at": None}


# none_as_null: no heartbeat yet is SQL NULL, not the JSON text 'null'
_SEEN = (update(KIOSK).where(KIOSK.c.id == bindparam("kid"))
         .values(last_seen=bindparam("seen"),
                 heartbeat=bindparam("beat", type_=JSON(none_as_null=True))))


def write(connection: Connection, changes: list[Change], deployment: str) -> list[str]:
    """Apply changes inside the caller's transaction. Returns the ids found retired
    (by the API while we were not looking): their changes are skipped."""
    retired = []
    missing = [c for c in changes if c.create]
    if missing:
        connection.execute(insert_ignore(connection, KIOSK, ["id"]),
                           [new_kiosk_row(c.kiosk, c.at, deployment,
                                          "not enrolled: first heard by the presence tracker")
                            for c in missing])
    for c in changes:
        if c.kiosk in retired:
            continue
        done = connection.execute(
            update(KIOSK).where(KIOSK.c.id == c.kiosk, KIOSK.c.state != RETIRED)
            .values(state=c.state, state_since=c.since, detail=c.detail[:400], session=c.session,
                    last_seen=c.last_seen,
                    heartbeat=c.heartbeat if c.heartbeat is not None else null()))
        if done.rowcount == 0:  # retired under us: it stays retired, no event, no outage
            retired.append(c.kiosk)
            continue
        if c.previous is not None:
            connection.execute(EVENT.insert().values(
                kiosk_id=c.kiosk, at=c.at, previous=c.previous, state=c.state,
                session=c.session, detail=c.detail[:400]))
        if c.close_outage:
            connection.execute(update(OUTAGE).where(OUTAGE.c.kiosk_id == c.kiosk,
                                                    OUTAGE.c.ended.is_(None)).values(ended=c.at))
        if c.open_outage is not None:
            connection.execute(OUTAGE.insert().values(kiosk_id=c.kiosk, started=c.open_outage,
                                                      ended=None, cause=c.cause[:200]))
    gaps.record(connection, [(c.kiosk, c.heartbeat) for c in changes
                             if c.heartbeat is not None and c.kiosk not in retired])
    return retired


def write_seen(connection: Connection, seen) -> None:
    if seen:
        connection.execute(_SEEN, [{"kid": kid, "seen": at, "beat": beat}
                                   for kid, at, beat in seen])
        gaps.record(connection, [(kid, beat) for kid, _, beat in seen if beat is not None])

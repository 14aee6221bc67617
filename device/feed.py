"""Which bundle topics the kiosk listens to, so a weak link carries a few KB, not the list.

Retained messages are sent again on every subscribe, and the reporter starts a
clean session on every connect. Subscribing to the full status snapshot all the
time would download megabytes after every reconnect. So:

- always: trust, policy, valuesets and status-head (small);
- rosters (docs/rosters.md#transport), on the kiosk's own topics: holding a roster of
  version v, only gg/v1/roster/<kiosk>/delta (the fleet's retained delta from the
  previous roster to the current one: a few bytes for a changed worker); holding none,
  or one of another organisation than the policy bundle's workers_only, or after a delta
  that does not fit (another base, refused, or an empty payload: the fleet cleared it),
  or when nothing is retained there RETAINED_WAIT seconds into a connection: the full
  roster gg/v1/roster/<kiosk>, until one arrives (also while it holds MAX_CHAIN roster
  deltas: the full roster of the same version replaces them). A kiosk offline for several
  versions thereby heals with one full roster;
- holding status version v: only status-delta/v, the fleet's delta from v to
  the current version (retained; it arrives when the fleet publishes one);
- no status list yet, or the head says there is no delta from v (the kiosk
  fell behind the fleet's delta window), or the kiosk holds a long chain of
  deltas (each is replayed at start-up): the full snapshot, until one is
  applied.

docs/bundles.md and docs/lists.md describe the fleet's side.
"""

from __future__ import annotations

import logging
import threading
import time

from greengate import bundle, messages, status

log = logging.getLogger(__name__)

MAX_CHAIN = 16  # stored deltas on top of a snapshot before the kiosk takes a new snapshot
# seconds into a connection without a retained roster delta before the kiosk reads the
# full roster (the fleet clears the delta topic when no delta fits this kiosk; a retained
# message comes right after the subscription, so this is generous for a slow link)
RETAINED_WAIT = 15.0


class StatusFeed:
    def __init__(self, store, reporter, deployment: str):
        self.store = store
        self.reporter = reporter
        self.deployment = deployment
        self.head: tuple[int, frozenset[int]] | None = None  # (version, delta bases)
        self._lock = threading.Lock()
        self._update_lock = threading.Lock()
        # rosters: the full topic is wanted until a full roster arrives (a delta did not
        # fit); the connection (reporter session) a delta-topic message came in, and since
        # when the delta topic has been listened to in the current one
        self._roster_full = False
        self._delta_heard: int | None = None
        self._delta_since: tuple[int, float] | None = None
        self.roster_stats = {"full": 0, "delta": 0, "fallbacks": 0}

    def topic(self, kind: str) -> str:
        return messages.bundle_topic(self.deployment, kind)

    def start(self) -> None:
        for kind in ("trust", "policy", "valuesets", "status-head"):
            self.reporter.subscribe(self.topic(kind), self.on_message)
        self.update()

    def on_message(self, topic: str, payload: bytes) -> None:
        kiosk = getattr(self.store, "kiosk_id", None)
        if kiosk and topic == messages.roster_delta_topic(kiosk):
            self._on_roster_delta(payload)
        elif kiosk and topic == messages.roster_topic(kiosk):
            if payload:
                self.roster_stats["full"] += 1
                self.store.offer(payload, "mqtt")
            with self._lock:
                # whatever came of it: the full topic holds nothing newer to wait for (a
                # kiosk holding no roster stays on it: wanted_roster)
                self._roster_full = False
        elif not payload:  # a retained message being cleared by the fleet
            return
        elif topic == self.topic("status-head"):
            self._on_head(payload)
        else:
            self.store.offer(payload, "mqtt")
        self.update()

    def _on_roster_delta(self, payload: bytes) -> None:
        with self._lock:
            self._delta_heard = self.reporter.session
        held = self.store.roster
        if payload:
            self.roster_stats["delta"] += 1
            accepted, why = self.store.offer(payload, "mqtt")
            newer = self.store.roster
            if accepted or why == "already held" or why.startswith("refused rollback") or (
                    held is not None and newer is not None and newer.version > held.version):
                return  # nothing newer than what is held: nothing to fetch
            log.info("roster delta not applied (%s): taking the full roster", why)
        else:
            log.info("roster delta topic cleared by the fleet: taking the full roster")
        with self._lock:
            self._roster_full = True
            self.roster_stats["fallbacks"] += 1

    def tick(self, now: float | None = None) -> None:
        """Called every second or so (the kiosk's heartbeat loop): a connection in which
        the delta topic retained nothing for RETAINED_WAIT seconds turns to the full
        roster once (the fleet clears the delta topic when no delta fits this kiosk)."""
        now = time.monotonic() if now is None else now
        kiosk = getattr(self.store, "kiosk_id", None)
        if not kiosk or not self.reporter.connected:
            return
        session = self.reporter.session
        listening = messages.roster_delta_topic(kiosk) in self.reporter.subscriptions()
        with self._lock:
            if not listening or self._delta_heard == session:
                self._delta_since = None
                return
            if self._delta_since is None or self._delta_since[0] != session:
                self._delta_since = (session, now)
                return
            if now - self._delta_since[1] < RETAINED_WAIT:
                return
            self._delta_heard = session  # once per connection
            self._roster_full = True
            self.roster_stats["fallbacks"] += 1
        log.info("no roster delta retained for this kiosk: taking the full roster")
        self.update()

    def _on_head(self, payload: bytes) -> None:
        try:
            head = bundle.open_bundle(payload, self.store.fleet_key, self.deployment)
            if head.kind != "status-head":
                raise bundle.BundleError("malformed", f"a {head.kind} bundle on the head topic")
            version, bases = status.parse_head(head.body)
        except (bundle.BundleError, ValueError) as exc:
            log.warning("status head refused: %s", exc)
            return
        with self._lock:
            if self.head is None or version >= self.head[0]:
                self.head = (version, frozenset(bases))

    def wanted(self) -> set[str]:
        """The status topics to be subscribed to now."""
        held = self.store.versions().get("status")
        if held is None or self.needs_snapshot(held):
            return {self.topic("status")}
        return {messages.status_delta_topic(self.deployment, held)}

    def needs_snapshot(self, held: int) -> bool:
        with self._lock:
            head = self.head
        if head is not None and head[0] > held and held not in head[1]:
            return True
        return self.store.chain_length() >= MAX_CHAIN

    def wanted_roster(self) -> set[str]:
        """The roster topic to be subscribed to now (none for a kiosk without an id)."""
        kiosk = getattr(self.store, "kiosk_id", None)
        if not kiosk:
            return set()
        held = self.store.roster
        workers_only = getattr(self.store, "workers_only", None)
        with self._lock:
            full = self._roster_full
        chain = getattr(self.store, "roster_chain_length", lambda: 0)
        if held is None or full or (workers_only and held.organisation != workers_only) or \
                chain() >= MAX_CHAIN:
            return {messages.roster_topic(kiosk)}
        return {messages.roster_delta_topic(kiosk)}

    def update(self) -> None:
        """Subscribe to what is wanted now, unsubscribe from the status and roster topics
        that are not."""
        # one caller at a time (the reporter's, the heartbeat's and the HTTP thread call
        # this): a decision made on older state must not undo a newer one
        with self._update_lock:
            wanted = self.wanted() | self.wanted_roster()
            prefix = self.topic("status")
            kiosk = getattr(self.store, "kiosk_id", None)
            rosters = {messages.roster_topic(kiosk), messages.roster_delta_topic(kiosk)} \
                if kiosk else set()
            current = {t for t in self.reporter.subscriptions()
                       if t == prefix or t.startswith(prefix + "-delta/") or t in rosters}
            for topic in current - wanted:
                self.reporter.unsubscribe(topic)
            for topic in wanted - current:
                log.info("listening to %s", topic)
                self.reporter.subscribe(topic, self.on_message)

"""Which bundle topics the kiosk listens to, so a weak link carries a few KB, not the list.

Retained messages are sent again on every subscribe, and the reporter starts a
clean session on every connect. Subscribing to the full status snapshot all the
time would download megabytes after every reconnect. So:

- always: trust, policy, valuesets and status-head (small), and the kiosk's own roster
  topic (gg/v1/roster/<kiosk>: its organisation's roster, retained; docs/rosters.md);
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

from greengate import bundle, messages, status

log = logging.getLogger(__name__)

MAX_CHAIN = 16  # stored deltas on top of a snapshot before the kiosk takes a new snapshot


class StatusFeed:
    def __init__(self, store, reporter, deployment: str):
        self.store = store
        self.reporter = reporter
        self.deployment = deployment
        self.head: tuple[int, frozenset[int]] | None = None  # (version, delta bases)
        self._lock = threading.Lock()

    def topic(self, kind: str) -> str:
        return messages.bundle_topic(self.deployment, kind)

    def start(self) -> None:
        for kind in ("trust", "policy", "valuesets", "status-head"):
            self.reporter.subscribe(self.topic(kind), self.on_message)
        if getattr(self.store, "kiosk_id", None):  # its organisation's roster, if it has one
            self.reporter.subscribe(messages.roster_topic(self.store.kiosk_id), self.on_message)
        self.update()

    def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # a retained message being cleared by the fleet
            return
        if topic == self.topic("status-head"):
            self._on_head(payload)
        else:
            self.store.offer(payload, "mqtt")
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

    def update(self) -> None:
        """Subscribe to what is wanted now, unsubscribe from the status topics that are not."""
        wanted = self.wanted()
        prefix = self.topic("status")
        current = {t for t in self.reporter.subscriptions()
                   if t == prefix or t.startswith(prefix + "-delta/")}
        for topic in current - wanted:
            self.reporter.unsubscribe(topic)
        for topic in wanted - current:
            log.info("listening to %s", topic)
            self.reporter.subscribe(topic, self.on_message)

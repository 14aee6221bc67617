"""A stand-in for the fleet's ingest in the kiosk's MQTT tests: it reads every scan and
summary the kiosks publish and confirms them on `messages.confirm_topic(kiosk)`, the way
fleet/ingest.py does after a commit (QoS 1, not retained, at most CONFIRM_IDS ids each).

    with Confirmer(broker) as fleet:                  # confirms everything it reads
        ...
        fleet.hold()                                  # reads, records, confirms nothing
        fleet.release()                               # confirms what it held back
    Confirmer(broker, commit=lambda kind, i: ...)     # confirms only what commit() allows

It is a real paho client (tests/broker.py's Subscriber: persistent session, QoS 1),
so scans published while it is away are queued by the broker as they are for the
ingest. Only ids that parse (messages.parse_scan / parse_summary) are confirmed: the
ingest never confirms what it could not read either.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

from greengate import messages
from tests.broker import Broker, Message, Subscriber

SCANS = "gg/v1/kiosk/+/scan"
SUMMARIES = "gg/v1/kiosk/+/summary"


class Confirmer(Subscriber):
    def __init__(self, broker: Broker, *, commit: Callable[[str, str], bool] | None = None,
                 **options):
        super().__init__(broker, [SCANS, SUMMARIES], **options)
        self.commit = commit
        self.holding = False
        self.scans: collections.Counter[str] = collections.Counter()  # scan id -> copies read
        self.summaries: collections.Counter[str] = collections.Counter()  # likewise, summaries
        self.confirmed: collections.Counter[str] = collections.Counter()  # id -> times confirmed
        self.withheld: dict[str, tuple[str, str]] = {}  # id -> (kiosk, kind), not confirmed
        self.unreadable = 0
        self._lock = threading.Lock()

    # --- control ---------------------------------------------------------------
    def hold(self) -> None:
        """From now on: record, confirm nothing (the fleet committed nothing)."""
        with self._lock:
            self.holding = True

    def release(self) -> None:
        """Confirm what was held back, and everything from now on."""
        with self._lock:
            self.holding = False
            held, self.withheld = self.withheld, {}
        by_kiosk: dict[str, tuple[list, list]] = {}
        for item, (kiosk, kind) in held.items():
            by_kiosk.setdefault(kiosk, ([], []))[0 if kind == "scan" else 1].append(item)
        for kiosk, (scans, summaries) in by_kiosk.items():
            self._confirm(kiosk, scans, summaries)

    def send(self, kiosk: str, payload: bytes, topic: str | None = None) -> None:
        """Publish raw bytes as a confirmation (hostile and malformed tests)."""
        info = self.client.publish(topic or messages.confirm_topic(kiosk), payload, qos=1)
        info.wait_for_publish(5)

    def confirm(self, kiosk: str, scans=(), summaries=()) -> None:
        self._confirm(kiosk, list(scans), list(summaries))

    def scan_ids(self) -> set[str]:
        with self._lock:
            return set(self.scans)

    # --- the ingest's part -------------------------------------------------------
    def _confirm(self, kiosk: str, scans: list[str], summaries: list[str]) -> None:
        for doc in messages.confirms(kiosk, scans, summaries):
            self.client.publish(messages.confirm_topic(kiosk), messages.encode(doc), qos=1)
        with self._lock:
            self.confirmed.update(scans + summaries)

    def _on_message(self, client, userdata, msg):
        try:
            kiosk, kind = messages.kiosk_of(msg.topic)
            parse = messages.parse_scan if kind == "scan" else messages.parse_summary
            item = parse(bytes(msg.payload), kiosk)["id"]
        except messages.MessageError:
            with self._lock:
                self.unreadable += 1
            super()._on_message(client, userdata, msg)
            return
        with self._lock:
            (self.scans if kind == "scan" else self.summaries)[item] += 1
            keep = self.holding or (self.commit is not None and not self.commit(kind, item))
            if keep:
                self.withheld[item] = (kiosk, kind)
        if not keep:
            self._confirm(kiosk, [item] if kind == "scan" else [],
                          [item] if kind == "summary" else [])
        super()._on_message(client, userdata, msg)  # recorded after the confirmation left


__all__ = ["Confirmer", "Message"]

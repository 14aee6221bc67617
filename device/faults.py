"""The faults a kiosk knows it has right now: one place every part reports to.

The light, the heartbeat and the log all read this one registry, so a fault a
part detects is shown to the guard, told to the fleet and logged once, without
the part knowing about any of them. A fault is set while it lasts and cleared
when it is over; setting the same fault again with the same detail is free, so
a part may report on every frame without flooding the log.

Kinds, most urgent first (the light shows the first one active):

- config: a configuration or key file cannot be used.
- storage: the data directory cannot be written (full or failing).
- source: the camera or scanner is missing or lost.
- lists: no usable signed lists.
- clock: the kiosk's clock is not trustworthy.
"""

import logging
import threading
import time

log = logging.getLogger("greengate.faults")

KINDS = ("config", "storage", "source", "lists", "clock")
DETAIL_MAX = 200  # characters of a detail, here and in the heartbeat parser


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self._active: dict[str, tuple[str, float]] = {}  # kind -> (detail, since)
        self._listeners: list = []

    def set(self, kind: str, detail: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        # the detail goes to the fleet as it is (heartbeat `faults`): one printable line
        detail = "".join(c if c.isprintable() else " " for c in str(detail))[:DETAIL_MAX]
        detail = detail.strip() or kind
        with self._lock:
            held = self._active.get(kind)
            if held is not None and held[0] == detail:
                return
            self._active[kind] = (detail, held[1] if held else time.time())
            listeners = list(self._listeners)
        if held is None:
            log.error("fault %s: %s", kind, detail)
        else:
            log.warning("fault %s now: %s", kind, detail)
        for listener in listeners:
            listener()

    def clear(self, kind: str) -> None:
        with self._lock:
            held = self._active.pop(kind, None)
            listeners = list(self._listeners)
        if held is not None:
            log.info("fault %s over after %.0f s", kind, time.time() - held[1])
            for listener in listeners:
                listener()

    def is_set(self, kind: str) -> bool:
        with self._lock:
            return kind in self._active

    def active(self) -> list[tuple[str, str]]:
        """(kind, detail) of every active fault, most urgent first."""
        with self._lock:
            return [(k, self._active[k][0]) for k in KINDS if k in self._active]

    def worst(self) -> tuple[str, str] | None:
        active = self.active()
        return active[0] if active else None

    def report(self) -> list[dict]:
        """The active faults as the heartbeat carries them: [{"kind", "detail"}, ...]."""
        return [{"kind": k, "detail": d} for k, d in self.active()]

    def on_change(self, listener) -> None:
        """listener() is called (in the reporting thread) whenever a fault starts,
        changes or ends; it must be quick and must not raise."""
        with self._lock:
            self._listeners.append(listener)

"""Can the kiosk trust its clock? A Pi has no RTC, so it keeps a time floor.

The floor only moves forward: from every verified bundle's issued_at (those
arriving, and those on disk, verified again at start: a lost clock.json costs
nothing while signed lists are held) and, while NTP says the clock is
synchronised, from the clock itself. It is persisted, so
after a reboot with a clock that went backwards (fake-hwclock, no network) the
kiosk answers clock_unknown instead of guessing.

States (reported in heartbeats):
- synced:  NTP synchronised and the clock is at or above the floor.
- floor:   no NTP, but the clock is within [floor, floor + offline budget]:
           bounded below by signed fleet data. Beyond the budget the state is
           unknown, but the kiosk reports out_of_service (beyond_budget()): the
           lists are stale by the same clock, and fresh ones fix both.
- unknown: below the floor, or no floor and no NTP ever.
"""

import json
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .files import write_atomic

log = logging.getLogger(__name__)

SYNCED, FLOOR, UNKNOWN = "synced", "floor", "unknown"
# systemd-timesyncd creates this file once it has synchronised the clock.
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
PERSIST_EVERY = 60.0


def ntp_synchronised() -> bool:
    return TIMESYNC_FLAG.exists()


class Clock:
    def __init__(self, path: str | Path, budget_seconds: float, *, now=time.time,
                 ntp=ntp_synchronised):
        self.path = Path(path)
        self.budget = budget_seconds
        self._now = now
        self._ntp = ntp
        self._lock = threading.Lock()
        self._floor = self._load()
        self._saved_floor = self._floor
        self._saved_at = 0.0

    def _load(self) -> float | None:
        try:
            value = json.loads(self.path.read_text())["floor"]
            return float(value) if value is not None else None
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("time floor file %s unreadable (%s); starting without a floor", self.path, exc)
            return None

    # on_write(None | OSError): told of every save's outcome (the kiosk's storage fault).
    # With it, a save that fails (a full disk) is reported instead of raised: the floor
    # in memory still holds, only a reboot before the next save would lose its rise.
    on_write = None

    def _save(self) -> None:
        try:
            write_atomic(self.path, json.dumps({"floor": self._floor}))
        except OSError as exc:
            if self.on_write is None:
                raise
            self.on_write(exc)
            return
        self._saved_floor = self._floor
        if self.on_write is not None:
            self.on_write(None)

    def persist(self) -> None:
        """Save the floor again (after a failed save, once the disk takes writes)."""
        with self._lock:
            if self._floor is not None:
                self._save()

    @property
    def floor(self) -> float | None:
        return self._floor

    def raise_floor(self, timestamp: float, *, persist: bool = True) -> None:
        """persist=False: in memory only (the selftest looks without changing the kiosk)."""
        with self._lock:
            if self._floor is None or timestamp > self._floor:
                self._floor = float(timestamp)
                if persist:
                    self._save()

    def state(self) -> str:
        now = self._now()
        with self._lock:
            floor = self._floor
            if self._ntp():
                if floor is None or now >= floor:
                    # Keep the floor near the real time so a reboot without
                    # NTP cannot go back far; persisted at most once a minute.
                    self._floor = now
                    if now - self._saved_at >= PERSIST_EVERY:
                        self._saved_at = now
                        self._save()
                    return SYNCED
                return UNKNOWN
        if floor is None or now < floor or now > floor + self.budget:
            return UNKNOWN
        return FLOOR

    def beyond_budget(self) -> bool:
        """No NTP and past floor + offline budget. The clock may well be right, but
        nothing signed vouches for it any more, and the lists (signed at or before the
        floor) are older than the budget by that same clock: what the kiosk needs is
        fresh lists from the fleet, so it says out_of_service, not clock_unknown."""
        now = self._now()
        with self._lock:
            floor = self._floor
        return floor is not None and now > floor + self.budget and not self._ntp()

    def validation_time(self) -> datetime | None:
        """The time to verify at, or None when the clock cannot be trusted."""
        if self.state() == UNKNOWN:
            return None
        return datetime.fromtimestamp(self._now(), timezone.utc)

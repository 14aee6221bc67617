"""The MQTT session counter: a number that increases on every connect and survives kill -9.

The fleet orders presence messages by it, so a late last will of an old
connection cannot mark a kiosk offline that has already come back.
"""

import threading
import time
from pathlib import Path

from .files import write_atomic


class SessionCounter:
    def __init__(self, path: str | Path, on_write=None):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last = 0
        # on_write(None | OSError): the outcome of each save (the kiosk's storage fault)
        self.on_write = on_write

    def __call__(self) -> int:
        """The next number, on disk (fsync'd) before it is returned.

        With on_write, a disk that refuses the write does not stop the kiosk from
        connecting (and so from telling the fleet about the fault): the number is
        then at least the current Unix time, above any number saved before (the saved
        ones count connections from 1), and the next save that works keeps it."""
        with self._lock:
            try:
                value = int(self.path.read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                value = 0
            except OSError as exc:
                if self.on_write is None:
                    raise
                value = 0
                self.on_write(exc)
            value = max(value, self._last) + 1
            try:
                write_atomic(self.path, str(value))
            except OSError as exc:
                if self.on_write is None:
                    raise
                value = max(value, int(time.time()))
                self.on_write(exc)
            else:
                if self.on_write is not None:
                    self.on_write(None)
            self._last = value
            return value

"""The MQTT session counter: a number that increases on every connect and survives kill -9.

The fleet orders presence messages by it, so a late last will of an old
connection cannot mark a kiosk offline that has already come back.
"""

import os
import threading
from pathlib import Path


class SessionCounter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        """The next number, on disk (fsync'd) before it is returned."""
        with self._lock:
            try:
                value = int(self.path.read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                value = 0
            value += 1
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as fh:
                fh.write(str(value))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            return value

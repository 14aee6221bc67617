"""Exactly one presence tracker per fleet database (docs/fleet.md#one-tracker).

Two trackers would each write every transition, so the second one is refused at
start. The lock lives where the database is, and dies with the process holding it
(kill -9 included), so there is nothing stale to clean up:

* PostgreSQL: a session advisory lock, held by one connection kept open for the
  tracker's life;
* SQLite: flock() on a file beside the database (a SQLite fleet is one host).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

# pg advisory lock key: "GGPRESNC" as a signed 64-bit integer
PG_KEY = int.from_bytes(b"GGPRESNC", "big", signed=True)


class TrackerBusy(RuntimeError):
    pass


class TrackerLock:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._connection = None
        self._fd: int | None = None

    @property
    def where(self) -> str:
        if self.engine.dialect.name == "sqlite":
            return str(self._lock_path())
        return f"advisory lock {PG_KEY} on {self.engine.url.render_as_string(hide_password=True)}"

    def _lock_path(self) -> Path:
        return Path(f"{self.engine.url.database}.presence-lock")

    def acquire(self) -> None:
        """Take the lock or raise TrackerBusy (SQLAlchemyError: the database is not there
        yet, try again)."""
        if self.engine.dialect.name == "sqlite":
            if self.engine.url.database in (None, "", ":memory:"):
                return  # a private in-memory database: no other process can share it
            fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TrackerBusy(self.where) from None
            self._fd = fd
            return
        connection = self.engine.connect()
        try:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_KEY}).scalar()
            connection.commit()
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            raise TrackerBusy(self.where)
        self._connection = connection

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_KEY})
                self._connection.commit()
            except Exception:  # the lock goes with the connection anyway
                pass
            self._connection.close()
            self._connection = None

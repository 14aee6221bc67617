"""One process of a kind per fleet database: the presence tracker (two would write every
transition twice, docs/fleet.md#one-tracker) and the alert dispatcher (two would send
every alert twice). The second one is refused at start.

The lock lives where the database is, and dies with the process holding it (kill -9
included), so there is nothing stale to clean up:

* PostgreSQL: a session advisory lock, held by one connection kept open for the
  process's life;
* SQLite: flock() on a file beside the database (a SQLite fleet is one host).
"""

from __future__ import annotations

import fcntl
import os

from sqlalchemy import text
from sqlalchemy.engine import Engine


class LockBusy(RuntimeError):
    pass


class DatabaseLock:
    """name: what holds it ("presence", "alerts"): the SQLite lock file's suffix, and
    with `key` (8 bytes) the PostgreSQL advisory lock's number."""

    def __init__(self, engine: Engine, name: str, key: bytes):
        if len(key) != 8:
            raise ValueError("an advisory lock key is 8 bytes")
        self.engine = engine
        self.name = name
        self.pg_key = int.from_bytes(key, "big", signed=True)
        self._connection = None
        self._fd: int | None = None

    @property
    def where(self) -> str:
        if self.engine.dialect.name == "sqlite":
            return f"{self.engine.url.database}.{self.name}-lock"
        return (f"advisory lock {self.pg_key} on "
                f"{self.engine.url.render_as_string(hide_password=True)}")

    def acquire(self) -> None:
        """Take the lock or raise LockBusy (SQLAlchemyError: the database is not there
        yet, try again)."""
        if self.engine.dialect.name == "sqlite":
            if self.engine.url.database in (None, "", ":memory:"):
                return  # a private in-memory database: no other process can share it
            fd = os.open(self.where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockBusy(self.where) from None
            self._fd = fd
            return
        connection = self.engine.connect()
        try:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                     {"k": self.pg_key}).scalar()
            connection.commit()
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            raise LockBusy(self.where)
        self._connection = connection

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
        if self._connection is not None:
            try:  # a pooled connection outlives close(): unlock explicitly
                self._connection.execute(text("SELECT pg_advisory_unlock(:k)"),
                                         {"k": self.pg_key})
                self._connection.commit()
            except Exception:
                self._connection.invalidate()  # the lock goes with the server session
            self._connection.close()
            self._connection = None

"""The kiosk's durable outbox: every decision is stored here before it is reported.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`Outbox.add` commits (and
so fsyncs the write-ahead log) before it returns, so a decision whose add()
returned survives a kill -9 or a power cut at any later moment. The reporter
reads rows oldest first (:meth:`pending`) and removes a row only when the
broker has acknowledged it (:meth:`remove`, idempotent).

Bounded: the outbox holds at most ``max_rows`` full scan rows. A decision
made while it is full is not dropped: it is counted in the ``overflow`` table,
one row per (hour, decision, reason), and those counts are themselves reported
(summary messages, see docs/protocol.md). :meth:`overflow` is the total number
of decisions ever recorded only as a count, for the heartbeat.

Thread-safe: one connection guarded by a lock (the kiosk loop adds while the
reporter thread reads and removes). One process per outbox file.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    scan_id  TEXT PRIMARY KEY,
    topic    TEXT NOT NULL,
    payload  BLOB NOT NULL,
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS overflow (
    id       TEXT PRIMARY KEY,      -- summary id, stable across retries
    hour     INTEGER NOT NULL,      -- start of the hour (UTC epoch seconds)
    decision TEXT NOT NULL,
    reason   TEXT NOT NULL,
    count    INTEGER NOT NULL,
    first    REAL NOT NULL,         -- earliest / latest scan time counted
    last     REAL NOT NULL,
    sealed   INTEGER NOT NULL DEFAULT 0  -- 1: handed to the reporter, count frozen
);
CREATE INDEX IF NOT EXISTS overflow_open ON overflow (hour, decision, reason, sealed);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class Row(NamedTuple):
    scan_id: str
    topic: str
    payload: bytes
    created: float
    attempts: int


class Summary(NamedTuple):
    id: str
    hour: int
    decision: str
    reason: str
    count: int
    first: float
    last: float


class OutboxClosed(RuntimeError):
    pass


def _describe(payload: bytes) -> tuple[str, str, float | None]:
    """(decision, reason, ts) of a scan message, best effort."""
    try:
        doc = json.loads(payload)
        decision, reason, ts = doc.get("decision"), doc.get("reason"), doc.get("ts")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "unknown", "unknown", None
    decision = decision if isinstance(decision, str) and decision else "unknown"
    reason = reason if isinstance(reason, str) and reason else "unknown"
    ts = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
    return decision[:40], reason[:40], ts


class Outbox:
    """Durable FIFO of MQTT messages keyed by scan id. See the module docstring."""

    def __init__(self, path: str | os.PathLike, max_rows: int = 500_000):
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=30)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=8388608")
            db.executescript(_SCHEMA)
            self._depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db
        _fsync_dir(self.path.parent)  # the database and WAL files' names are durable too

    @classmethod
    def from_config(cls, cfg) -> "Outbox":
        """The outbox of a device.config.Config: <data_dir>/outbox.sqlite."""
        data = Path(cfg.kiosk.data_dir)
        if not data.is_absolute():
            data = cfg.resolve(cfg.kiosk.data_dir)
        return cls(data / "outbox.sqlite", cfg.outbox.max_rows)

    # --- helpers -----------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxClosed(f"outbox {self.path} is closed")
        return self._db

    def _write(self, fn):
        """Run fn(db) in one IMMEDIATE transaction; the commit is fsynced."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                # the cached depth may count a change that was rolled back
                self._depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                raise
            return result

    # --- writing -----------------------------------------------------------
    def add(self, scan_id: str, topic: str, payload: bytes, *, decision: str | None = None,
            reason: str | None = None, ts: float | None = None) -> bool:
        """Store one message durably; returns only after the commit reached the disk.

        True: stored as a full row (or a row with this scan id was already
        there: adding is idempotent). False: the outbox is full, the decision
        was counted in the overflow summary instead (decision/reason/ts are
        read from the scan message unless given).
        """
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError("payload must be bytes")
        payload = bytes(payload)
        now = time.time()

        def run(db):
            if db.execute("SELECT 1 FROM outbox WHERE scan_id=?", (scan_id,)).fetchone():
                return True
            if self._depth < self.max_rows:
                db.execute("INSERT INTO outbox (scan_id, topic, payload, created, attempts) "
                           "VALUES (?, ?, ?, ?, 0)", (scan_id, topic, payload, now))
                self._depth += 1
                return True
            d, r, t = _describe(payload)
            d, r = decision or d, reason or r
            t = ts if ts is not None else (t if t is not None else now)
            hour = int(t // 3600 * 3600)
            cur = db.execute("UPDATE overflow SET count=count+1, first=min(first, ?), "
                             "last=max(last, ?) WHERE hour=? AND decision=? AND reason=? "
                             "AND sealed=0", (t, t, hour, d, r))
            if cur.rowcount == 0:
                db.execute("INSERT INTO overflow (id, hour, decision, reason, count, first, last)"
                           " VALUES (?, ?, ?, ?, 1, ?, ?)",
                           ("s" + secrets.token_hex(8), hour, d, r, t, t))
            db.execute("INSERT INTO meta (key, value) VALUES ('overflow', 1) "
                       "ON CONFLICT(key) DO UPDATE SET value=value+1")
            return False

        return self._write(run)

    def remove(self, scan_id: str) -> None:
        """Delete the row of scan_id (after the broker's PUBACK). Idempotent."""
        self.remove_many((scan_id,))

    def remove_many(self, scan_ids: Iterable[str]) -> int:
        """Delete several rows in one transaction; returns how many existed."""
        ids = list(scan_ids)
        if not ids:
            return 0

        def run(db):
            removed = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                cur = db.execute(f"DELETE FROM outbox WHERE scan_id IN "
                                 f"({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
            self._depth -= removed
            return removed

        return self._write(run)

    def attempted(self, scan_ids: Iterable[str]) -> None:
        """Count one publish attempt for each row (diagnostics only)."""
        ids = list(scan_ids)
        if not ids:
            return

        def run(db):
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                db.execute(f"UPDATE outbox SET attempts=attempts+1 WHERE scan_id IN "
                           f"({','.join('?' * len(chunk))})", chunk)

        self._write(run)

    # --- reading -----------------------------------------------------------
    def pending(self, limit: int = 100) -> list[Row]:
        """Up to `limit` rows, oldest (first added) first."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT scan_id, topic, payload, created, attempts FROM outbox "
                "ORDER BY rowid LIMIT ?", (max(0, int(limit)),)).fetchall()
        return [Row(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def get(self, scan_id: str) -> Row | None:
        with self._lock:
            r = self._conn().execute(
                "SELECT scan_id, topic, payload, created, attempts FROM outbox "
                "WHERE scan_id=?", (scan_id,)).fetchone()
        return Row(r[0], r[1], bytes(r[2]), r[3], r[4]) if r else None

    def depth(self) -> int:
        """Number of full scan rows waiting for a PUBACK."""
        with self._lock:
            self._conn()
            return self._depth

    def overflow(self) -> int:
        """Total decisions ever recorded only as overflow counts (monotonic)."""
        with self._lock:
            row = self._conn().execute("SELECT value FROM meta WHERE key='overflow'").fetchone()
        return row[0] if row else 0

    # --- overflow summaries ----------------------------------------------
    def take_summaries(self, limit: int = 100) -> list[Summary]:
        """Summary rows to report, oldest hour first. Seals them: their counts
        are frozen (later overflow goes to a new row with a new id), so a
        retried summary message is identical and the fleet can dedupe by id."""

        def run(db):
            rows = db.execute("SELECT id, hour, decision, reason, count, first, last, sealed "
                              "FROM overflow ORDER BY hour, rowid LIMIT ?",
                              (max(0, int(limit)),)).fetchall()
            unsealed = [r[0] for r in rows if not r[7]]
            for sid in unsealed:
                db.execute("UPDATE overflow SET sealed=1 WHERE id=?", (sid,))
            return [Summary(*r[:7]) for r in rows]

        return self._write(run)

    def remove_summary(self, summary_id: str) -> None:
        """Delete a reported summary row (after its PUBACK). Idempotent."""
        self._write(lambda db: db.execute("DELETE FROM overflow WHERE id=?", (summary_id,)))

    def summaries(self) -> int:
        """Number of summary rows not yet acknowledged by the broker."""
        with self._lock:
            return self._conn().execute("SELECT COUNT(*) FROM overflow").fetchone()[0]

    # --- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

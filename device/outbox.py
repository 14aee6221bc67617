"""The kiosk's durable outbox: every decision is stored here before it is reported.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`Outbox.add` commits (and
so fsyncs the write-ahead log) before it returns, so a decision whose add()
returned survives a kill -9 or a power cut at any later moment.

Sequence numbers: every full row gets ``seq`` 1, 2, 3, ... in the same
transaction as its insert. The highest number given is kept in the meta table,
so a number is never given twice, also after its row was deleted or the
process restarted. add() passes the number to a payload builder, so the scan
message carries it. Rows of an outbox written before the column existed keep
``seq`` NULL and are still sent (first: they are the oldest).

A row leaves the outbox only when the FLEET confirms it committed that scan
(:meth:`confirm`, idempotent), never on the broker's PUBACK (docs/protocol.md,
"Delivery guarantees"). The reporter reads rows oldest first with a cursor
(:meth:`pending_after`), so it never reads again thousands of rows it already
sent. :meth:`confirmed` is the heartbeat's watermark: every seq up to it has
been confirmed.

Bounded: the outbox holds at most ``max_rows`` full scan rows. A decision
made while it is full is not dropped: it is counted in the ``overflow`` table,
one row per (hour, decision, reason), and those counts are themselves reported
(summary messages, confirmed by the fleet like scans: :meth:`confirm_summaries`).
:meth:`overflow` is the total number of decisions ever recorded only as a count.

Thread-safe: one connection guarded by a lock (the kiosk loop adds while the
reporter thread reads and confirms). One process per outbox file.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    scan_id  TEXT PRIMARY KEY,
    topic    TEXT NOT NULL,
    payload  BLOB NOT NULL,
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    seq      INTEGER                -- NULL only for rows older than the column
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
# After the migration: the reporter's cursor and the watermark both walk this index.
_SEQ_INDEX = "CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (seq)"

# Cursor positions of rows without seq (older than the column): below every seq, in
# insertion order. A plain rowid cannot be the cursor: SQLite gives a new row the
# rowid of a deleted last row again, and a cursor past it would skip the new row.
_LEGACY = -(1 << 62)

Payload = bytes | Callable[[int | None], bytes]


class Row(NamedTuple):
    scan_id: str
    topic: str
    payload: bytes
    created: float  # time.time() of add()
    attempts: int
    seq: int | None = None
    cursor: int = 0  # position for pending_after(): increases in insertion order


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
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return "unknown", "unknown", None
    decision = decision if isinstance(decision, str) and decision else "unknown"
    reason = reason if isinstance(reason, str) and reason else "unknown"
    ts = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
    return decision[:40], reason[:40], ts


def _bytes(payload) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("payload must be bytes (or a builder returning bytes)")
    return bytes(payload)


_COLUMNS = "scan_id, topic, payload, created, attempts, seq, rowid"


def _row(r) -> Row:
    return Row(r[0], r[1], bytes(r[2]), r[3], r[4], r[5],
               r[5] if r[5] is not None else _LEGACY + r[6])


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
            self._migrate(db)
            self._depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            self._seq = self._read_seq(db)
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db
        _fsync_dir(self.path.parent)  # the database and WAL files' names are durable too

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """An outbox file of a kiosk older than seq gets the column in place (its rows
        keep NULL); one fsynced transaction, so a kill mid-way leaves the old file."""
        columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        db.execute("BEGIN IMMEDIATE")
        try:
            if "seq" not in columns:
                db.execute("ALTER TABLE outbox ADD COLUMN seq INTEGER")
            db.execute(_SEQ_INDEX)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _read_seq(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        highest = db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        # the meta row is the record; the rows' maximum only guards against a meta
        # table someone edited by hand (a number must never be given twice)
        return max(row[0] if row else 0, highest or 0)

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
                # the cached counters may count a change that was rolled back
                self._depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                self._seq = self._read_seq(db)
                raise
            return result

    # --- writing -----------------------------------------------------------
    def add(self, scan_id: str, topic: str, payload: Payload, *, decision: str | None = None,
            reason: str | None = None, ts: float | None = None) -> bool:
        """Store one message durably; returns only after the commit reached the disk.

        payload: the message bytes, or build(seq) -> bytes, called inside the
        transaction with the seq this row gets, so that the message carries it
        (build(None) only to describe a decision that overflowed, when
        decision/reason/ts were not given).

        True: stored as a full row (or a row with this scan id was already
        there: adding is idempotent, the row keeps its seq and payload). False:
        the outbox is full, the decision was counted in the overflow summary
        instead (decision/reason/ts are read from the scan message unless given).
        """
        build = payload if callable(payload) else None
        fixed = None if build else _bytes(payload)
        now = time.time()

        def run(db):
            if db.execute("SELECT 1 FROM outbox WHERE scan_id=?", (scan_id,)).fetchone():
                return True
            if self._depth < self.max_rows:
                seq = self._seq + 1
                body = _bytes(build(seq)) if build else fixed
                db.execute("INSERT INTO outbox (scan_id, topic, payload, created, attempts, seq)"
                           " VALUES (?, ?, ?, ?, 0, ?)", (scan_id, topic, body, now, seq))
                db.execute("INSERT INTO meta (key, value) VALUES ('seq', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (seq,))
                self._seq = seq
                self._depth += 1
                return True
            d = r = t = None
            if decision is None or reason is None or ts is None:
                d, r, t = _describe(_bytes(build(None)) if build else fixed)
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

    def confirm(self, scan_ids: Iterable[str]) -> dict[str, float]:
        """The fleet confirmed these scans: delete their rows in one transaction.
        Idempotent; unknown ids are ignored. Returns {scan id: created} of the rows
        that were deleted now (for the confirmation latency)."""
        ids = list(dict.fromkeys(scan_ids))
        if not ids:
            return {}

        def run(db):
            gone: dict[str, float] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                found = db.execute(f"SELECT scan_id, created FROM outbox WHERE scan_id IN "
                                   f"({marks})", chunk).fetchall()
                if found:
                    db.execute(f"DELETE FROM outbox WHERE scan_id IN ({marks})", chunk)
                gone.update(found)
            self._depth -= len(gone)
            return gone

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
    def pending_after(self, cursor: int | None, limit: int = 100) -> list[Row]:
        """Up to `limit` rows added after the row whose Row.cursor is `cursor` (None:
        from the oldest), oldest first. Deleting rows never moves a cursor: a reader
        keeps the last cursor it handled and asks for what follows."""
        limit = max(0, int(limit))
        out: list[Row] = []
        with self._lock:
            db = self._conn()
            if limit and (cursor is None or cursor < 0):
                after = 0 if cursor is None else cursor - _LEGACY
                out = [_row(r) for r in db.execute(
                    f"SELECT {_COLUMNS} FROM outbox WHERE seq IS NULL AND rowid > ? "
                    f"ORDER BY rowid LIMIT ?", (after, limit))]
                cursor = 0
            if len(out) < limit:
                out += [_row(r) for r in db.execute(
                    f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (cursor, limit - len(out)))]
        return out

    def pending(self, limit: int = 100) -> list[Row]:
        """Up to `limit` rows, oldest (first added) first."""
        return self.pending_after(None, limit)

    def get(self, scan_id: str) -> Row | None:
        with self._lock:
            r = self._conn().execute(f"SELECT {_COLUMNS} FROM outbox WHERE scan_id=?",
                                     (scan_id,)).fetchone()
        return _row(r) if r else None

    def depth(self) -> int:
        """Number of full scan rows not yet confirmed by the fleet."""
        with self._lock:
            self._conn()
            return self._depth

    def seq(self) -> int:
        """The highest seq given so far (0 if none): the heartbeat's `seq`."""
        with self._lock:
            self._conn()
            return self._seq

    def confirmed(self) -> int:
        """The heartbeat's `confirmed`: every row with a seq up to this one has been
        confirmed (the lowest seq still here minus 1, or seq() if none is left)."""
        return self.watermarks()[1]

    def watermarks(self) -> tuple[int, int]:
        """(seq(), confirmed()) read together, so that confirmed <= seq holds."""
        with self._lock:
            lowest = self._conn().execute("SELECT MIN(seq) FROM outbox").fetchone()[0]
            return self._seq, (self._seq if lowest is None else lowest - 1)

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

    def confirm_summaries(self, summary_ids: Iterable[str]) -> int:
        """The fleet confirmed these summaries: delete them. Idempotent; returns how
        many existed. Only a sealed row can be confirmed: an open one was never sent
        (its id could only be guessed), and its count may still grow."""
        ids = list(dict.fromkeys(summary_ids))
        if not ids:
            return 0

        def run(db):
            gone = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                gone += db.execute(f"DELETE FROM overflow WHERE sealed=1 AND id IN "
                                   f"({','.join('?' * len(chunk))})", chunk).rowcount
            return gone

        return self._write(run)

    def summaries(self) -> int:
        """Number of summary rows not yet confirmed by the fleet."""
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

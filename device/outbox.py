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

Storage failures (docs/kiosk-config.md#storage): when the disk refuses a write
(full, I/O error, read-only, or the file cannot be opened at all), add() does
not fail: the row, with its seq, is kept in memory, up to ``memory_rows``, and
the kiosk's fault "storage" is set. Memory rows are read, sent and confirmed
like disk rows (the reporter cannot tell them apart) and are moved to disk in
one transaction as soon as a write succeeds again (:meth:`flush`; add() tries
at most once per ``RETRY_SECONDS`` while the disk fails). Past ``memory_rows``
a decision is lost in full: it is counted per (hour, decision, reason), and
the counts go to the overflow table (so to the fleet as summaries) and to the
``lost`` total (:meth:`lost`, in every heartbeat) once the disk takes them.
Confirmations of disk rows that cannot be deleted are kept in memory too, so
a confirmed row is not sent again. What is only in memory is gone if the
process dies before the disk recovers; ``memory``/``lost`` in the heartbeat
tell the fleet how much is at stake.

Thread-safe: one connection guarded by a lock (the kiosk loop adds while the
reporter thread reads and confirms). One process per outbox file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
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

log = logging.getLogger("greengate.outbox")

MEMORY_ROWS = 5_000  # rows kept in memory while the disk refuses writes
RETRY_SECONDS = 1.0  # while failing, add() tries the disk again at most this often
COUNT_LOG_SECONDS = 60.0  # while failing, the held/lost counts are logged this often

# Errors that mean "the storage cannot be used now", not a bug: full, I/O error,
# read-only, locked past the timeout, a file that cannot be opened or is damaged.
_NOT_STORAGE = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def storage_error(exc: BaseException) -> bool:
    return isinstance(exc, (sqlite3.DatabaseError, OSError)) and \
        not isinstance(exc, _NOT_STORAGE)


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
    """Durable FIFO of MQTT messages keyed by scan id. See the module docstring.

    faults: the kiosk's device.faults.Faults. With it, a storage failure (also at
    opening) is reported there and the rows are held in memory; without it (tools
    that read an outbox) opening raises as before.
    """

    def __init__(self, path: str | os.PathLike, max_rows: int = 500_000, *, faults=None,
                 memory_rows: int = MEMORY_ROWS):
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self.memory_rows = max(0, int(memory_rows))
        self.faults = faults
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._depth = 0  # rows on disk (some may be confirmed in _gone)
        self._seq = 0
        self._overflow = 0  # meta 'overflow', as last read
        self._lost_saved = 0  # meta 'lost', as last read
        self._mem: OrderedDict[str, Row] = OrderedDict()  # held while the disk refuses
        self._lost: dict[tuple[int, str, str], list] = {}  # (hour, d, r) -> [n, first, last]
        self._gone: dict[str, bool] = {}  # confirmed disk rows not yet deleted -> known on disk
        self._gone_summaries: set[str] = set()
        self._failing: str | None = None  # the storage error while it lasts
        self._retry_at = 0.0
        self._count_logged = 0.0
        try:
            self._open()
        except BaseException as exc:
            if faults is None or not storage_error(exc):
                raise
            self._fail(exc)

    def _open(self) -> None:
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
            depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            seq = self._read_seq(db)
            overflow, lost = self._read_counts(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._depth = depth
        # rows given a seq in memory before the file could be opened keep theirs
        self._seq = max(self._seq, seq)
        self._overflow, self._lost_saved = overflow, lost
        _fsync_dir(self.path.parent)  # the database and WAL files' names are durable too

    @staticmethod
    def _read_counts(db: sqlite3.Connection) -> tuple[int, int]:
        got = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('overflow', 'lost')"))
        return got.get("overflow", 0), got.get("lost", 0)

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
    def from_config(cls, cfg, **options) -> "Outbox":
        """The outbox of a device.config.Config: <data_dir>/outbox.sqlite."""
        from .datadir import location
        return cls(location(cfg) / "outbox.sqlite", cfg.outbox.max_rows, **options)

    # --- helpers -----------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise OutboxClosed(f"outbox {self.path} is closed")
        if self._db is None:
            raise sqlite3.OperationalError(f"outbox {self.path} could not be opened: "
                                           f"{self._failing}")
        return self._db

    def _live(self) -> None:
        if self._closed:
            raise OutboxClosed(f"outbox {self.path} is closed")

    def _run(self, fn):
        """fn(db) in one IMMEDIATE transaction (the commit is fsynced); the lock is held."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                # the cached counters may count a change that was rolled back
                self._depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                self._seq = max(self._read_seq(db), max((r.seq for r in self._mem.values()),
                                                        default=0))
            except sqlite3.Error:
                pass  # a disk that failed the write may fail the reads too: keep the caches
            raise
        return result

    def _write(self, fn):
        with self._lock:
            return self._run(fn)

    def _fail(self, exc: BaseException) -> None:
        """The storage refused: note it (the registry logs it once) and retry later."""
        detail = str(exc).strip() or type(exc).__name__
        self._failing = detail
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if self.faults is not None:
            self.faults.set("storage", detail)

    def _count_log(self) -> None:
        now = time.monotonic()
        if now - self._count_logged >= COUNT_LOG_SECONDS:
            self._count_logged = now
            log.warning("storage failing (%s): %d decision(s) held in memory, %d lost in full "
                        "(counted)", self._failing, len(self._mem), self._lost_now())

    def _lost_now(self) -> int:
        return sum(n for n, _, _ in self._lost.values())

    # --- writing -----------------------------------------------------------
    def add(self, scan_id: str, topic: str, payload: Payload, *, decision: str | None = None,
            reason: str | None = None, ts: float | None = None) -> bool:
        """Store one message durably; returns only after the commit reached the disk.

        payload: the message bytes, or build(seq) -> bytes, called inside the
        transaction with the seq this row gets, so that the message carries it
        (build(None) only to describe a decision that overflowed, when
        decision/reason/ts were not given).

        True: stored as a full row (or a row with this scan id was already
        there: adding is idempotent, the row keeps its seq and payload); while
        the storage fails, "stored" means held in memory (module docstring).
        False: the outbox is full, the decision was counted in the overflow
        summary instead (decision/reason/ts are read from the scan message
        unless given), or, with the storage failing and memory full, counted as
        lost.
        """
        build = payload if callable(payload) else None
        fixed = None if build else _bytes(payload)
        now = time.time()

        def describe():
            d = r = t = None
            if decision is None or reason is None or ts is None:
                d, r, t = _describe(_bytes(build(None)) if build else fixed)
            d, r = decision or d, reason or r
            t = ts if ts is not None else (t if t is not None else now)
            return d, r, t

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
            d, r, t = describe()
            _count_overflow(db, d, r, t, 1, t, t)
            self._overflow += 1
            return False

        with self._lock:
            self._live()
            if scan_id in self._mem:
                return True
            if self._failing is None or (time.monotonic() >= self._retry_at and
                                         self._flush_locked()):
                try:
                    return self._run(run)
                except BaseException as exc:
                    if not storage_error(exc) or self.faults is None:
                        raise
                    self._fail(exc)
            # the disk refuses: hold the row in memory, or count it as lost
            try:
                if len(self._mem) < self.memory_rows and \
                        self._depth - len(self._gone) + len(self._mem) < self.max_rows:
                    seq = self._seq + 1
                    body = _bytes(build(seq)) if build else fixed
                    self._seq = seq
                    self._mem[scan_id] = Row(scan_id, topic, body, now, 0, seq, seq)
                    return True
                d, r, t = describe()
                bucket = self._lost.setdefault((int(t // 3600 * 3600), d, r), [0, t, t])
                bucket[0] += 1
                bucket[1], bucket[2] = min(bucket[1], t), max(bucket[2], t)
                return False
            finally:
                self._count_log()

    def flush(self) -> bool:
        """Move what is held in memory to disk, if the disk takes it now. True: nothing
        is held any more (also when nothing was). Called periodically by the kiosk."""
        with self._lock:
            if self._closed:
                return False
            return self._failing is None or self._flush_locked()

    def _flush_locked(self) -> bool:
        """With the lock held: open the file if need be, apply the confirmations held,
        write the memory rows and lost counts, all or nothing. True: storage works."""
        try:
            if self._db is None:
                self._open()
            mem = list(self._mem.values())
            lost = dict(self._lost)
            gone, gone_summaries = list(self._gone), list(self._gone_summaries)

            def run(db):
                for i in range(0, len(gone), 500):
                    chunk = gone[i:i + 500]
                    db.execute(f"DELETE FROM outbox WHERE scan_id IN "
                               f"({','.join('?' * len(chunk))})", chunk)
                for i in range(0, len(gone_summaries), 500):
                    chunk = gone_summaries[i:i + 500]
                    db.execute(f"DELETE FROM overflow WHERE sealed=1 AND id IN "
                               f"({','.join('?' * len(chunk))})", chunk)
                db.executemany("INSERT OR IGNORE INTO outbox (scan_id, topic, payload, created, "
                               "attempts, seq) VALUES (?, ?, ?, ?, ?, ?)",
                               [(r.scan_id, r.topic, r.payload, r.created, r.attempts, r.seq)
                                for r in mem])
                db.execute("INSERT INTO meta (key, value) VALUES ('seq', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value=max(value, excluded.value)",
                           (self._seq,))
                total = 0
                for (hour, d, r), (n, first, last) in lost.items():
                    _count_overflow(db, d, r, hour, n, first, last)
                    total += n
                if total:
                    db.execute("INSERT INTO meta (key, value) VALUES ('lost', ?) "
                               "ON CONFLICT(key) DO UPDATE SET value=value+excluded.value",
                               (total,))
                return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0], \
                    self._read_counts(db)

            depth, (overflow, lost_saved) = self._run(run)
        except BaseException as exc:
            if not storage_error(exc):
                raise
            self._fail(exc)
            return False
        self._depth, self._overflow, self._lost_saved = depth, overflow, lost_saved
        self._mem.clear()
        self._lost.clear()
        self._gone.clear()
        self._gone_summaries.clear()
        if self._failing is not None:
            log.info("storage writable again: %d decision(s) moved from memory to disk, "
                     "%d counted as lost", len(mem), sum(n for n, _, _ in lost.values()))
        self._failing = None
        self._count_logged = 0.0  # the next failure logs its counts at once
        if self.faults is not None:
            self.faults.clear("storage")
        return True

    def confirm(self, scan_ids: Iterable[str]) -> dict[str, float]:
        """The fleet confirmed these scans: delete their rows in one transaction.
        Idempotent; unknown ids are ignored. Returns {scan id: created} of the rows
        that were deleted now (for the confirmation latency). Rows held in memory go
        at once; disk rows the disk will not delete now are remembered as confirmed
        (never sent again) and deleted when it does."""
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

        with self._lock:
            self._live()
            done = {i: self._mem.pop(i).created for i in ids if i in self._mem}
            rest = [i for i in ids if i not in done and i not in self._gone]
            if not rest:
                return done
            if self._failing is None or (time.monotonic() >= self._retry_at and
                                         self._flush_locked()):
                try:
                    done.update(self._run(run))
                    return done
                except BaseException as exc:
                    if not storage_error(exc) or self.faults is None:
                        raise
                    self._fail(exc)
            try:
                found = dict(self._conn().execute(
                    f"SELECT scan_id, created FROM outbox WHERE scan_id IN "
                    f"({','.join('?' * len(rest[:500]))})", rest[:500]).fetchall()) \
                    if len(rest) <= 500 else None
            except sqlite3.Error:
                found = None
            for scan_id in rest:
                self._gone[scan_id] = found is not None and scan_id in found
            if found:
                done.update(found)
            return done

    def attempted(self, scan_ids: Iterable[str]) -> None:
        """Count one publish attempt for each row (diagnostics only: never fails on a
        storage error)."""
        ids = list(scan_ids)
        if not ids:
            return

        def run(db):
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                db.execute(f"UPDATE outbox SET attempts=attempts+1 WHERE scan_id IN "
                           f"({','.join('?' * len(chunk))})", chunk)

        with self._lock:
            self._live()
            for scan_id in ids:
                row = self._mem.get(scan_id)
                if row is not None:
                    self._mem[scan_id] = row._replace(attempts=row.attempts + 1)
            if self._failing is not None:
                return
            try:
                self._run(run)
            except BaseException as exc:
                if not storage_error(exc) or self.faults is None:
                    raise
                self._fail(exc)

    # --- reading -----------------------------------------------------------
    def pending_after(self, cursor: int | None, limit: int = 100) -> list[Row]:
        """Up to `limit` rows added after the row whose Row.cursor is `cursor` (None:
        from the oldest), oldest first. Deleting rows never moves a cursor: a reader
        keeps the last cursor it handled and asks for what follows. Rows held in
        memory come in their seq order; a disk that cannot be read gives them alone."""
        limit = max(0, int(limit))
        out: list[Row] = []
        with self._lock:
            self._live()
            start = cursor
            want = limit + len(self._gone)  # confirmed rows still on disk are skipped
            try:
                db = self._conn()
                if want and (cursor is None or cursor < 0):
                    after = 0 if cursor is None else cursor - _LEGACY
                    out = [_row(r) for r in db.execute(
                        f"SELECT {_COLUMNS} FROM outbox WHERE seq IS NULL AND rowid > ? "
                        f"ORDER BY rowid LIMIT ?", (after, want))]
                    cursor = 0
                if len(out) < want:
                    out += [_row(r) for r in db.execute(
                        f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                        (cursor, want - len(out)))]
            except sqlite3.Error as exc:
                if not storage_error(exc) or self.faults is None:
                    raise
                self._fail(exc)
                out = []
            if self._gone:
                out = [r for r in out if r.scan_id not in self._gone]
            if self._mem:
                low = _LEGACY - 1 if start is None else start
                out += [r for r in self._mem.values() if r.cursor > low]
                out.sort(key=lambda r: r.cursor)
        return out[:limit]

    def pending(self, limit: int = 100) -> list[Row]:
        """Up to `limit` rows, oldest (first added) first."""
        return self.pending_after(None, limit)

    def get(self, scan_id: str) -> Row | None:
        with self._lock:
            self._live()
            if scan_id in self._mem:
                return self._mem[scan_id]
            if scan_id in self._gone:
                return None
            try:
                r = self._conn().execute(f"SELECT {_COLUMNS} FROM outbox WHERE scan_id=?",
                                         (scan_id,)).fetchone()
            except sqlite3.Error as exc:
                if not storage_error(exc) or self.faults is None:
                    raise
                self._fail(exc)
                return None
        return _row(r) if r else None

    def depth(self) -> int:
        """Number of full scan rows not yet confirmed by the fleet (memory included)."""
        with self._lock:
            self._live()
            return self._depth - sum(self._gone.values()) + len(self._mem)

    def memory(self) -> int:
        """Rows held in memory because the disk refuses writes (the heartbeat's `memory`)."""
        with self._lock:
            return len(self._mem)

    def lost(self) -> int:
        """Decisions lost in full since the outbox file was made (counted, monotonic while
        the process lives): held in memory was not possible. The heartbeat's `lost`."""
        with self._lock:
            return self._lost_saved + self._lost_now()

    @property
    def failing(self) -> str | None:
        """The storage error while the disk refuses writes, else None."""
        return self._failing

    def seq(self) -> int:
        """The highest seq given so far (0 if none): the heartbeat's `seq`."""
        with self._lock:
            self._live()
            return self._seq

    def confirmed(self) -> int:
        """The heartbeat's `confirmed`: every row with a seq up to this one has been
        confirmed (the lowest seq still here minus 1, or seq() if none is left)."""
        return self.watermarks()[1]

    def watermarks(self) -> tuple[int, int]:
        """(seq(), confirmed()) read together, so that confirmed <= seq holds. A disk
        that cannot be read gives a watermark of 0 (nothing claimed confirmed)."""
        with self._lock:
            self._live()
            try:
                lowest = self._conn().execute("SELECT MIN(seq) FROM outbox").fetchone()[0]
            except sqlite3.Error:
                return self._seq, 0
            if self._mem:
                first = next(iter(self._mem.values())).seq
                lowest = first if lowest is None else min(lowest, first)
            return self._seq, (self._seq if lowest is None else lowest - 1)

    def overflow(self) -> int:
        """Total decisions ever recorded only as overflow counts (monotonic)."""
        with self._lock:
            self._live()
            try:
                row = self._conn().execute(
                    "SELECT value FROM meta WHERE key='overflow'").fetchone()
                self._overflow = row[0] if row else 0
            except sqlite3.Error:
                pass  # the last count read: a heartbeat must not fail on a broken disk
            return self._overflow

    # --- overflow summaries ----------------------------------------------
    def take_summaries(self, limit: int = 100) -> list[Summary]:
        """Summary rows to report, oldest hour first. Seals them: their counts
        are frozen (later overflow goes to a new row with a new id), so a
        retried summary message is identical and the fleet can dedupe by id.
        None while the disk cannot seal them (a count sent unsealed could still grow)."""

        def run(db):
            rows = db.execute("SELECT id, hour, decision, reason, count, first, last, sealed "
                              "FROM overflow ORDER BY hour, rowid LIMIT ?",
                              (max(0, int(limit)),)).fetchall()
            unsealed = [r[0] for r in rows if not r[7]]
            for sid in unsealed:
                db.execute("UPDATE overflow SET sealed=1 WHERE id=?", (sid,))
            return [Summary(*r[:7]) for r in rows if r[0] not in self._gone_summaries]

        with self._lock:
            self._live()
            if self._failing is not None:
                return []
            try:
                return self._run(run)
            except BaseException as exc:
                if not storage_error(exc) or self.faults is None:
                    raise
                self._fail(exc)
                return []

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

        with self._lock:
            self._live()
            if self._failing is None:
                try:
                    return self._run(run)
                except BaseException as exc:
                    if not storage_error(exc) or self.faults is None:
                        raise
                    self._fail(exc)
            self._gone_summaries.update(ids)
            return 0

    def summaries(self) -> int:
        """Number of summary rows not yet confirmed by the fleet."""
        with self._lock:
            self._live()
            try:
                return self._conn().execute("SELECT COUNT(*) FROM overflow").fetchone()[0]
            except sqlite3.Error:
                return 0

    # --- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._failing is not None and (self._mem or self._gone or self._lost):
                self._flush_locked()  # a last chance for what is held only in memory
            self._closed = True
            if self._failing is not None and (self._mem or self._lost):
                log.error("closing with the storage failing (%s): %d decision(s) held only "
                          "in memory and %d lost decision(s) not yet counted on disk are "
                          "gone", self._failing, len(self._mem), self._lost_now())
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _count_overflow(db, decision: str, reason: str, t: float, n: int, first: float,
                    last: float) -> None:
    """Count n decisions in the open summary row of their (hour, decision, reason)."""
    hour = int(t // 3600 * 3600)
    cur = db.execute("UPDATE overflow SET count=count+?, first=min(first, ?), "
                     "last=max(last, ?) WHERE hour=? AND decision=? AND reason=? "
                     "AND sealed=0", (n, first, last, hour, decision, reason))
    if cur.rowcount == 0:
        db.execute("INSERT INTO overflow (id, hour, decision, reason, count, first, last)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("s" + secrets.token_hex(8), hour, decision, reason, n, first, last))
    db.execute("INSERT INTO meta (key, value) VALUES ('overflow', ?) "
               "ON CONFLICT(key) DO UPDATE SET value=value+excluded.value", (n,))


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

"""Scans and summaries into the database: one transaction per batch, idempotent.

    store = ScanStore(engine, deployment="hcmc", metrics=m)
    written = store.write([(kiosk, scan_doc, raw), ...], [(kiosk, summary_doc, raw), ...],
                          [Quarantined(...), ...])

Rows go in with INSERT ... ON CONFLICT DO NOTHING on (kiosk_id, scan_id, ts) /
(kiosk_id, summary_id) as one executemany each (Core, no ORM objects on the hot
path, fleet/sqlinsert.py), so a replayed or redelivered message is stored once and
counted as a duplicate. Messages the worker refused (fleet/ingest.py) go to the
quarantine table in the same transaction.

The batch's kiosks are read INSIDE its transaction, in one statement: their place
(location, district: a kiosk moved in the dashboard tags its next batch with the new
place) and whether they are retired. That read is what makes a retirement exact: a
retired kiosk's messages are refused (counted, logged, acknowledged, never stored,
never confirmed), and a batch committed after the retirement's commit always sees
it, on every worker, with no reload:

  * PostgreSQL: the read is `SELECT ... FOR SHARE OF kiosk` (in id order). The retire
    UPDATEs that row, so whichever comes second waits for the other's commit; then
    the batch either committed before the retirement, or reads it.
  * SQLite: the transaction starts with BEGIN IMMEDIATE (the database's write lock)
    before the read, so no other write can commit between the read and our commit.

A kiosk nobody enrolled is created (never_seen, no location) in the same transaction,
so the dashboard shows it.

The KioskDirectory (every kiosk's place and retirement, reloaded every `refresh` s)
only serves the presence tracker now; the write path never trusts it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Engine

from . import quarantine as dead_letters
from . import scan_hours
from .ingest_metrics import IngestMetrics
from .models import RETIRED, Kiosk, Location, Scan, ScanSummary
from .presence import new_kiosk_row
from .sqlinsert import BulkInsert, insert_ignore

log = logging.getLogger("greengate.fleet.ingest")

SCAN = Scan.__table__
# the idempotency key (fleet/models.py Scan): a redelivered scan carries the same ts
SCAN_KEY = ["kiosk_id", "scan_id", "ts"]
SUMMARY = ScanSummary.__table__
KIOSK = Kiosk.__table__
LOCATION = Location.__table__
SCAN_COLUMNS = ["kiosk_id", "scan_id", "ts", "received", "decision", "reason", "sub_reason",
                "cert_type", "cert_hash", "holder", "policy", "location_id", "district_id"]
# the kiosk's sequence number of the decision (docs/protocol.md), where the schema has it
HAS_SEQ = "seq" in SCAN.c
if HAS_SEQ:
    SCAN_COLUMNS.append("seq")
SUMMARY_COLUMNS = ["kiosk_id", "summary_id", "hour", "decision", "reason", "count", "first",
                   "last", "location_id", "district_id"]
NOWHERE = (None, None, None)


@dataclass(slots=True)
class Quarantined:
    """One message refused by the worker, bound for the quarantine table. `confirm`:
    ("scan"|"summary", id) when its kiosk and id are trustworthy (it parsed, and was
    refused for a reason of its own, e.g. a ts out of the fleet's window): the kiosk
    is told it was taken in, so it stops sending it. None: never confirmed."""
    kiosk: str | None
    topic: str
    kind: str
    reason: str
    detail: str
    raw: bytes
    size: int
    confirm: tuple[str, str] | None = None


@dataclass
class Written:
    scans: int = 0  # newly stored
    scan_duplicates: int = 0
    summaries: int = 0
    summary_duplicates: int = 0
    new_kiosks: int = 0
    quarantined: int = 0
    retired: set = field(default_factory=set)  # kiosks found retired: refused, unconfirmed
    lost: set = field(default_factory=set)  # (kind, id) committed nowhere: unconfirmed

    def add(self, other: "Written") -> "Written":
        for name in ("scans", "scan_duplicates", "summaries", "summary_duplicates",
                     "new_kiosks", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retired |= other.retired
        self.lost |= other.lost
        return self


class KioskDirectory:
    """kiosk id -> (location_id, district_id, retired), reloaded every `refresh` s: the
    presence tracker's view of retirements (never used to accept a scan)."""

    def __init__(self, refresh: float = 30.0, clock=time.monotonic):
        self.refresh = refresh
        self.clock = clock
        self.places: dict[str, tuple[int | None, int | None, bool]] = {}
        self.retired_ids: frozenset[str] = frozenset()
        self.loaded_at: float | None = None

    def due(self) -> bool:
        return self.loaded_at is None or self.clock() - self.loaded_at >= self.refresh

    def load(self, connection) -> None:
        rows = connection.execute(
            select(KIOSK.c.id, KIOSK.c.location_id, LOCATION.c.district_id, KIOSK.c.state)
            .select_from(KIOSK.outerjoin(LOCATION, KIOSK.c.location_id == LOCATION.c.id)))
        self.places = {kid: (loc, district, state == RETIRED)
                       for kid, loc, district, state in rows}
        self.retired_ids = frozenset(kid for kid, (_, _, gone) in self.places.items() if gone)
        self.loaded_at = self.clock()

    def age(self) -> float:
        return float("inf") if self.loaded_at is None else self.clock() - self.loaded_at

    def retired(self) -> list[str]:
        return list(self.retired_ids)


class ScanStore:
    def __init__(self, engine: Engine, *, deployment: str, metrics: IngestMetrics | None = None,
                 refresh: float = 30.0, clock=time.time):
        self.engine = engine
        self.deployment = deployment
        self.metrics = metrics or IngestMetrics()
        self.clock = clock
        self.directory = KioskDirectory(refresh)
        self.sqlite = engine.dialect.name == "sqlite"
        self._scan_insert = BulkInsert(engine, SCAN, SCAN_KEY, SCAN_COLUMNS)
        self._summary_insert = BulkInsert(engine, SUMMARY, ["kiosk_id", "summary_id"],
                                          SUMMARY_COLUMNS)
        self._kiosk_insert = insert_ignore(engine, KIOSK, ["id"])
        lookup = (select(KIOSK.c.id, KIOSK.c.location_id, LOCATION.c.district_id, KIOSK.c.state)
                  .select_from(KIOSK.outerjoin(LOCATION, KIOSK.c.location_id == LOCATION.c.id)))
        if not self.sqlite:
            # FOR SHARE of the kiosk rows only (not the outer join's nullable side), in
            # one order for every worker
            lookup = lookup.order_by(KIOSK.c.id).with_for_update(read=True, of=KIOSK)
        self._lookup = lookup

    def refresh(self) -> None:
        with self.engine.connect() as connection:
            self.directory.load(connection)

    def _kiosks(self, connection, ids) -> dict[str, tuple]:
        """id -> (location_id, district_id, state) of those of `ids` the table holds."""
        return {kid: (loc, district, state) for kid, loc, district, state in connection.execute(
            self._lookup.where(KIOSK.c.id.in_(sorted(ids))))}

    def write(self, scans: list[tuple], summaries: list[tuple],
              quarantine: list[Quarantined] = ()) -> Written:
        """Store one batch in one transaction; raises on database errors (nothing of the
        batch is then stored; the caller retries it, or splits it: fleet/ingest.py).
        scans, summaries: (kiosk, parsed doc, raw payload) each."""
        out = Written()
        received = self.clock()
        wanted = {k for k, _, _ in scans}
        wanted.update(k for k, _, _ in summaries)
        wanted.update(q.kiosk for q in quarantine if q.confirm is not None)
        with self.engine.begin() as connection:
            if self.sqlite:
                # the write lock before the read: see the module's docstring
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            known = self._kiosks(connection, wanted) if wanted else {}
            out.retired = {k for k, (_, _, state) in known.items() if state == RETIRED}
            if out.retired:
                scans, summaries = self._refuse_retired(scans, summaries, out.retired)
            unknown = {k for k, _, _ in scans if k not in known}
            unknown.update(k for k, _, _ in summaries if k not in known)
            if unknown:
                connection.execute(self._kiosk_insert, [
                    new_kiosk_row(k, received, self.deployment,
                                  "not enrolled: first heard through its scans")
                    for k in sorted(unknown)])
            if scans:
                rows = []
                add = rows.append
                for kiosk, d, _ in scans:
                    location, district, _ = known.get(kiosk, NOWHERE)
                    row = (kiosk, d["id"], d["ts"], received, d["decision"], d["reason"],
                           d.get("sub"), d.get("type"), d.get("cert"), d.get("holder"),
                           d["policy"], location, district)
                    add(row + (d.get("seq"),) if HAS_SEQ else row)
                out.scans = self._scan_insert.execute(connection, rows)
                out.scan_duplicates = len(rows) - out.scans
                if out.scans:  # hours the rollup may have counted: read from the scans
                    scan_hours.mark(connection, scan_hours.late_hours(
                        (d["ts"] for _, d, _ in scans), received), received)
            if summaries:
                rows = []
                for kiosk, d, _ in summaries:
                    location, district, _ = known.get(kiosk, NOWHERE)
                    rows.append((kiosk, d["id"], d["hour"], d["decision"], d["reason"],
                                 d["count"], d["first"], d["last"], location, district))
                out.summaries = self._summary_insert.execute(connection, rows)
                out.summary_duplicates = len(rows) - out.summaries
            if quarantine:
                out.quarantined = dead_letters.insert(
                    connection, dead_letters.rows_for(quarantine, received))
        # committed: from here on only bookkeeping
        out.new_kiosks = len(unknown)
        self._count(scans, summaries, out, received, unknown, quarantine)
        return out

    def _refuse_retired(self, scans, summaries, retired):
        kept = []
        for kind, items in (("scan", scans), ("summary", summaries)):
            gone = [k for k, _, _ in items if k in retired]
            if gone:
                self.metrics.retired_kiosk.labels(kind=kind).inc(len(gone))
                log.warning("refused %d %s message(s) of retired kiosk(s) %s", len(gone), kind,
                            ", ".join(sorted(set(gone))))
                items = [item for item in items if item[0] not in retired]
            kept.append(items)
        return kept[0], kept[1]

    def _count(self, scans, summaries, out: Written, received: float, unknown: set,
               quarantine) -> None:
        m = self.metrics
        m.stored.labels(kind="scan").inc(out.scans)
        m.duplicates.labels(kind="scan").inc(out.scan_duplicates)
        m.stored.labels(kind="summary").inc(out.summaries)
        m.duplicates.labels(kind="summary").inc(out.summary_duplicates)
        for q in quarantine:
            m.quarantined.labels(kind=q.kind, reason=q.reason).inc()
        for kind, items in (("scan", scans), ("summary", summaries)):
            new = sum(1 for k, _, _ in items if k in unknown)
            if new:
                m.unknown_kiosk.labels(kind=kind).inc(new)
        if unknown:
            log.warning("kiosk(s) %s unknown to the fleet: created (never seen, no location); "
                        "enrol or retire them in the dashboard", ", ".join(sorted(unknown)))
        if scans:
            # clamped at 0: a kiosk clock ahead of ours is not a negative delay
            observe = m.lag.observe
            for _, d, _ in scans:
                lag = received - d["ts"]
                observe(lag if lag > 0 else 0.0)

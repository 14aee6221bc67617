"""Scans and summaries into the database: one transaction per batch, idempotent.

    store = ScanStore(engine, deployment="hcmc", metrics=m)
    result = store.write([(kiosk, scan_doc), ...], [(kiosk, summary_doc), ...])

Rows go in with INSERT ... ON CONFLICT DO NOTHING on (kiosk_id, scan_id) /
(kiosk_id, summary_id) as one executemany each (Core, no ORM objects on the hot
path, fleet/sqlinsert.py), so a replayed or redelivered message is stored once and
counted as a duplicate. Each scan gets the location and district its kiosk has at ingest
time, from an in-memory directory of kiosks refreshed every `refresh` seconds:
a kiosk moved in the dashboard tags its scans with the new place at the latest
that much later. A kiosk nobody enrolled is created (never_seen, no location)
in the same transaction, so the dashboard shows it. Messages of retired kiosks are
refused: counted, logged, acknowledged (so the broker forgets them), never stored:
a retired kiosk no longer speaks for anyone (its certificate is revoked too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from .ingest_metrics import IngestMetrics
from .models import RETIRED, Kiosk, Location, Scan, ScanSummary
from .presence import new_kiosk_row
from .sqlinsert import BulkInsert, insert_ignore

log = logging.getLogger("greengate.fleet.ingest")

SCAN = Scan.__table__
SUMMARY = ScanSummary.__table__
KIOSK = Kiosk.__table__
LOCATION = Location.__table__
SCAN_COLUMNS = ["kiosk_id", "scan_id", "ts", "received", "decision", "reason", "sub_reason",
                "cert_type", "cert_hash", "holder", "policy", "location_id", "district_id"]
SUMMARY_COLUMNS = ["kiosk_id", "summary_id", "hour", "decision", "reason", "count", "first",
                   "last", "location_id", "district_id"]


@dataclass
class Written:
    scans: int = 0  # newly stored
    scan_duplicates: int = 0
    summaries: int = 0
    summary_duplicates: int = 0
    new_kiosks: int = 0


class KioskDirectory:
    """kiosk id -> (location_id, district_id, retired), reloaded every `refresh` s."""

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
        # usually empty: then a batch costs no look-up for refusals at all
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
        self._scan_insert = BulkInsert(engine, SCAN, ["kiosk_id", "scan_id"], SCAN_COLUMNS)
        self._summary_insert = BulkInsert(engine, SUMMARY, ["kiosk_id", "summary_id"],
                                          SUMMARY_COLUMNS)
        self._kiosk_insert = insert_ignore(engine, KIOSK, ["id"])

    def refresh(self) -> None:
        with self.engine.connect() as connection:
            self.directory.load(connection)

    def write(self, scans: list[tuple[str, dict]], summaries: list[tuple[str, dict]]) -> Written:
        """Store one batch in one transaction; raises on database errors (nothing of the
        batch is then stored, the caller retries it whole)."""
        if self.directory.due():
            self.refresh()
        unknown = self._unknown(scans, summaries)
        if unknown and self.directory.age() > 1.0:
            self.refresh()  # enrolled since the last load? then it is not unknown
            unknown = self._unknown(scans, summaries)
        places = self.directory.places
        nowhere = (None, None, False)
        out = Written()
        received = self.clock()
        if self.directory.retired_ids:
            scans, summaries = self._refuse_retired(scans, summaries)
        with self.engine.begin() as connection:
            if unknown:
                connection.execute(self._kiosk_insert, [
                    new_kiosk_row(k, received, self.deployment,
                                  "not enrolled: first heard through its scans")
                    for k in sorted(unknown)])
            if scans:
                rows = []
                add = rows.append
                for kiosk, d in scans:
                    location, district, _ = places.get(kiosk, nowhere)
                    add((kiosk, d["id"], d["ts"], received, d["decision"], d["reason"],
                         d.get("sub"), d.get("type"), d.get("cert"), d.get("holder"),
                         d["policy"], location, district))
                out.scans = self._scan_insert.execute(connection, rows)
                out.scan_duplicates = len(rows) - out.scans
            if summaries:
                rows = []
                for kiosk, d in summaries:
                    location, district, _ = places.get(kiosk, nowhere)
                    rows.append((kiosk, d["id"], d["hour"], d["decision"], d["reason"],
                                 d["count"], d["first"], d["last"], location, district))
                out.summaries = self._summary_insert.execute(connection, rows)
                out.summary_duplicates = len(rows) - out.summaries
        # committed: from here on only bookkeeping
        for k in unknown:
            places.setdefault(k, nowhere)
        out.new_kiosks = len(unknown)
        self._count(scans, summaries, out, received, unknown)
        return out

    def _refuse_retired(self, scans, summaries):
        retired = self.directory.retired_ids
        kept = []
        for kind, items in (("scan", scans), ("summary", summaries)):
            gone = [k for k, _ in items if k in retired]
            if gone:
                self.metrics.retired_kiosk.labels(kind=kind).inc(len(gone))
                log.warning("refused %d %s message(s) of retired kiosk(s) %s", len(gone), kind,
                            ", ".join(sorted(set(gone))))
                items = [(k, d) for k, d in items if k not in retired]
            kept.append(items)
        return kept[0], kept[1]

    def _unknown(self, scans, summaries) -> set[str]:
        places = self.directory.places
        unknown = {k for k, _ in scans if k not in places}
        unknown.update(k for k, _ in summaries if k not in places)
        return unknown

    def _count(self, scans, summaries, out: Written, received: float, unknown: set) -> None:
        m = self.metrics
        m.stored.labels(kind="scan").inc(out.scans)
        m.duplicates.labels(kind="scan").inc(out.scan_duplicates)
        m.stored.labels(kind="summary").inc(out.summaries)
        m.duplicates.labels(kind="summary").inc(out.summary_duplicates)
        for kind, items in (("scan", scans), ("summary", summaries)):
            new = sum(1 for k, _ in items if k in unknown)
            if new:
                m.unknown_kiosk.labels(kind=kind).inc(new)
        if unknown:
            log.warning("kiosk(s) %s unknown to the fleet: created (never seen, no location); "
                        "enrol or retire them in the dashboard", ", ".join(sorted(unknown)))
        if scans:
            # clamped at 0: a kiosk clock ahead of ours is not a negative delay
            observe = m.lag.observe
            for _, d in scans:
                lag = received - d["ts"]
                observe(lag if lag > 0 else 0.0)

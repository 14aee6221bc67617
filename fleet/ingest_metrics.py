"""The ingest worker's own Prometheus metrics (in-process counters).

The web server's /metrics (fleet/metrics.py) reads the database at scrape time;
these are what only the worker knows: messages as they arrive, duplicates, bad
messages, batches, commit latency, ingest lag, presence. Each worker has its own
registry (several workers can run in one test process without clashing);
`greengate-fleet ingest --metrics-port N` serves it over HTTP. Names start with
greengate_ingest_ / greengate_presence_ (docs/fleet.md#metrics).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .models import STATES

# Lag is kiosk clock against fleet clock: a live scan takes well under a second, a
# replayed outbox can be days old.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400,
               7 * 86400)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, batch_size: int = 500):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter("greengate_ingest_messages", "Messages received from the broker",
                                ["kind"], registry=r)
        self.stored = Counter("greengate_ingest_stored", "Scans and summaries newly stored "
                              "(committed)", ["kind"], registry=r)
        self.duplicates = Counter("greengate_ingest_duplicates", "Scans and summaries already "
                                  "stored (same kiosk and id): replays and redeliveries",
                                  ["kind"], registry=r)
        self.bad = Counter("greengate_ingest_bad_messages", "Messages refused by the "
                           "greengate.messages parsers or the fleet's time window "
                           "(quarantined and acknowledged)", ["kind", "reason"], registry=r)
        self.quarantined = Counter("greengate_ingest_quarantined", "Messages written to the "
                                   "quarantine table (refused, or a row the database refused)",
                                   ["kind", "reason"], registry=r)
        self.quarantine_failed = Counter("greengate_ingest_quarantine_failed", "Quarantine "
                                         "rows the database refused too (logged, dropped)",
                                         registry=r)
        self.splits = Counter("greengate_ingest_batch_splits", "Batches split in two because "
                              "a row of theirs failed (not the database itself)", registry=r)
        self.confirmations = Counter("greengate_ingest_confirmations", "Confirmation messages "
                                     "published to kiosks (gg/v1/confirm/<kiosk>)", registry=r)
        self.confirmed = Counter("greengate_ingest_confirmed_ids", "Scan and summary ids "
                                 "confirmed to their kiosks after the commit", registry=r)
        self.unknown_kiosk = Counter("greengate_ingest_unknown_kiosk_messages", "Scans and "
                                     "summaries from kiosks the fleet had no record of (stored; "
                                     "the kiosk row is created)", ["kind"], registry=r)
        self.retired_kiosk = Counter("greengate_ingest_retired_kiosk_messages", "Messages from "
                                     "retired kiosks (refused: not stored, not confirmed; "
                                     "presence ignored)", ["kind"],
                                     registry=r)
        self.sealed = Counter("greengate_ingest_sealed_holders", "Scans by what became of "
                              "their holder: opened (sealed identity -> pseudonym), "
                              "legacy (a pseudonym from a kiosk older than sealing), or why a "
                              "sealed identity did not open (malformed, unknown_key, invalid; "
                              "the scan is stored without a holder)", ["outcome"], registry=r)
        steps = sorted({1, 10, 50, 100, 250, 500, 1000, 2500, 5000, batch_size})
        self.batch_size = Histogram("greengate_ingest_batch_size", "Messages per committed batch",
                                    buckets=steps, registry=r)
        self.commit_seconds = Histogram("greengate_ingest_commit_seconds", "Time to write and "
                                        "commit one batch", buckets=COMMIT_BUCKETS, registry=r)
        self.lag = Histogram("greengate_ingest_lag_seconds", "Commit time minus the scan's "
                             "kiosk time (ts); negative values (kiosk clock ahead) count as 0",
                             buckets=LAG_BUCKETS, registry=r)
        self.db_errors = Counter("greengate_ingest_db_errors", "Failed batch commits because "
                                 "of the database itself (retried; nothing is acknowledged "
                                 "before it is committed)", registry=r)
        self.acks_dropped = Counter("greengate_ingest_acks_dropped", "Acknowledgements not sent "
                                    "because the connection they belonged to was gone (the "
                                    "broker redelivers those messages; they are deduplicated)",
                                    registry=r)
        self.writing = Gauge("greengate_ingest_writing", "1 while a batch is being written and "
                             "committed (stays 1 if the database hangs)", registry=r)
        self.connected = Gauge("greengate_ingest_connected", "1 while connected to the broker",
                               registry=r)
        self.pending = Gauge("greengate_ingest_pending_messages", "Messages received and not yet "
                             "committed and acknowledged", registry=r)
        self.kiosks = Gauge("greengate_presence_kiosks", "Kiosks per presence state (the presence "
                            "tracker's view)", ["state"], registry=r)
        self.transitions = Counter("greengate_presence_transitions", "Presence transitions, by "
                                   "new state", ["state"], registry=r)
        self.stale = Counter("greengate_presence_stale_messages", "Presence and heartbeat "
                             "messages ignored because they belong to an older session",
                             ["kind"], registry=r)
        for state in STATES:
            self.kiosks.labels(state=state)

    def value(self, name: str, **labels) -> float:
        """A sample's current value (0 if it was never touched): for tests and logs."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """HTTP /metrics on addr:port (prometheus_client's own threaded server)."""
        return start_http_server(port, addr=addr, registry=self.registry)

"""The MQTT ingest worker: `greengate-fleet ingest [--no-presence] [--worker NAME]`.

    worker = IngestWorker(config, worker="1")     # presence=True: also tracks presence
    worker.start(); ...; worker.stop()            # run(config, args) does this until SIGTERM

One paho-mqtt 2.x client (MQTT 5) per worker, client id `<[mqtt] client_id>-ingest-<NAME>`,
with a persistent session (clean_start False, a session expiry that never ends) so the
broker keeps what the worker has not acknowledged, and queues its share while it is
down. Subscriptions, renewed on every connection:

    $share/<share_group>/gg/v1/kiosk/+/scan      QoS 1   (N workers split these)
    $share/<share_group>/gg/v1/kiosk/+/summary   QoS 1
    gg/v1/kiosk/+/presence, gg/v1/kiosk/+/heartbeat   QoS 0, not shared, only the
        presence worker (exactly one per fleet; `--no-presence` for the others)

Presence and heartbeats are QoS 0 on purpose: a heartbeat queued while the worker was
down is no sign of life now, and the retained presence of every kiosk arrives afresh on
each (re)subscription, which is all a restarting tracker needs (fleet/presence.py).

Flow: paho's network thread only appends each message to a queue. The worker's thread
takes up to `[mqtt] batch_size` messages (or what came within `batch_seconds`),
validates them with greengate.messages (a bad one is counted, logged with the kiosk id
of its topic, acknowledged and dropped), writes the scans and summaries in ONE
transaction (fleet/ingest_store.py), and only after the commit acknowledges them
(manual_ack, PUBACK in arrival order). A commit that fails is retried, with backoff,
and nothing is acknowledged meanwhile: the broker's in-flight window (our MQTT 5
Receive Maximum) holds the rest back. An acknowledgement for a connection that has
since dropped is not sent: the broker redelivers those messages on the new connection
and the idempotent insert absorbs them. A SIGKILLed worker therefore loses nothing:
what it had not acknowledged comes back when it reconnects under the same name.

SIGTERM/SIGINT: the batch in hand is committed and acknowledged, then DISCONNECT; the
session (and whatever the broker queues for it) stays for the next start. `--leave`
instead drains the session, unsubscribes and ends it: how a worker is removed for
good (docs/fleet.md#scaling).
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
import threading
import time
from collections import deque

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import SQLAlchemyError

from greengate import messages, watchdog

from . import presence as presence_db
from .db import make_engine
from .ingest_metrics import IngestMetrics
from .ingest_store import ScanStore
from .presence import Tracker
from .db_lock import DatabaseLock, LockBusy

log = logging.getLogger("greengate.fleet.ingest")

KEEPALIVE = 30  # the worker's own MQTT keepalive, seconds
SESSION_EXPIRY = 0xFFFFFFFF  # MQTT 5 "never expires": the share waits for its worker
RETRY = (0.5, 10.0)  # seconds between attempts at a failing commit: first, at most
STOP_GRACE = 10.0  # seconds a stopping worker keeps retrying before it gives up
REFRESH = 30.0  # seconds between reloads of the kiosk directory (locations, retirements)
LEAVE_IDLE = 2.0  # --leave: seconds without a message that mean the session is drained
LOG_EVERY = 60.0  # seconds between log lines about the same kiosk's bad messages
PING_EVERY = 1.0  # seconds between systemd watchdog pings (the unit's WatchdogSec is 60)

_CONTROL = None  # topic of a queue entry that is a connection event, not a message


def bad_reason(error: Exception) -> str:
    """A short, bounded label for a MessageError (its text holds values)."""
    text = str(error)
    for needle, label in (("bytes, limit", "oversized"), ("not JSON", "not_json"),
                          ("not a JSON object", "not_object"),
                          ("unsupported message version", "version"),
                          ("published under", "wrong_kiosk"), ("kiosk topic", "topic"),
                          ("kiosk id in topic", "topic")):
        if needle in text:
            return label
    if text.startswith("field '"):
        return "field_" + text.split("'")[1][:20]
    return "other"


class IngestWorker:
    def __init__(self, config, *, worker: str = "1", presence: bool = True, leave: bool = False,
                 metrics: IngestMetrics | None = None, clock=time.time,
                 seen_flush: float | None = None, stop_grace: float = STOP_GRACE,
                 leave_idle: float = LEAVE_IDLE):
        self.config = config
        self.name = worker
        self.client_id = f"{config.mqtt.client_id}-ingest-{worker}"
        self.tracks_presence = presence and not leave
        self.leave = leave
        self.batch_size = max(1, int(config.mqtt.batch_size))
        self.batch_seconds = max(0.0, float(config.mqtt.batch_seconds))
        self.metrics = metrics or IngestMetrics(batch_size=self.batch_size)
        self.clock = clock
        p = config.presence
        # last_seen / last heartbeat go to the database this often, not per heartbeat
        self.seen_flush = seen_flush if seen_flush is not None else max(p.sweep, 2 * p.keepalive)
        self.sweep_every = p.sweep
        self.stop_grace = stop_grace
        self.leave_idle = leave_idle
        self.tracker = Tracker(p.keepalive, p.backlog) if self.tracks_presence else None
        self.engine = None
        self.store: ScanStore | None = None
        self.client: mqtt.Client | None = None
        self.stats = {"batches": 0, "acked": 0, "bad": 0}
        self.problem: str | None = None  # the last connection / database trouble, for humans
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._gen = 0  # connection generation: acks only go to the connection they came on
        self._gen_lock = threading.Lock()
        self._connected = False
        self._subscribed = threading.Event()  # this connection's (un)subscriptions acked
        self._left = False
        self._thread: threading.Thread | None = None
        self._last_sub_mid = None
        self._in_hand = 0  # messages of the batch being written
        # computed when scraped: received and not yet committed (or acknowledged)
        self.metrics.pending.set_function(lambda: len(self._queue) + self._in_hand)
        self._bad_logged: dict[tuple[str, str], list] = {}
        self._last_ping = 0.0
        self._db_was_down = False
        self._idle_since: float | None = None  # --leave: since the last message (once up)
        self._tracker_lock: DatabaseLock | None = None

    # --- filters ----------------------------------------------------------------------
    @property
    def shared_filters(self) -> list[str]:
        group = self.config.mqtt.share_group
        return [f"$share/{group}/{messages.ROOT}/kiosk/+/{kind}" for kind in ("scan", "summary")]

    @staticmethod
    def presence_filters() -> list[str]:
        return [f"{messages.ROOT}/kiosk/+/{kind}" for kind in ("presence", "heartbeat")]

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> "IngestWorker":
        cfg = self.config
        self.engine = make_engine(cfg.database_url)
        self.store = ScanStore(self.engine, deployment=cfg.fleet.deployments[0],
                               metrics=self.metrics, refresh=REFRESH, clock=self.clock)
        self._retry_db(self.store.refresh, "load the kiosk directory")
        if self.tracker is not None:
            self._tracker_lock = DatabaseLock(self.engine, "presence", b"GGPRESNC")
            try:
                self._retry_db(self._tracker_lock.acquire, "take the presence tracker lock")
            except LockBusy:
                self._tracker_lock = None
                self.engine.dispose()
                raise

            def load():
                with self.engine.connect() as connection:
                    self.tracker.load(presence_db.load_rows(connection))
            self._retry_db(load, "load kiosk presence")
            self._gauges()
        self.client = self._make_client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY
        # the broker sends at most this many unacknowledged messages: one batch being
        # committed and one filling up
        props.ReceiveMaximum = min(65535, 2 * self.batch_size)
        self.client.connect_async(cfg.mqtt.host, cfg.mqtt.port, keepalive=KEEPALIVE,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._main, name=f"ingest-{self.name}",
                                        daemon=True)
        self._thread.start()
        log.info("ingest worker %s started (client id %s, %s, batches of %d / %.2f s)",
                 self.name, self.client_id, "tracking presence" if self.tracker else
                 "scans only" if not self.leave else "leaving", self.batch_size,
                 self.batch_seconds)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Commit and acknowledge what is in hand, disconnect (session kept)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._teardown()

    def request_stop(self) -> None:
        """From a signal handler: stop() without waiting."""
        self._stop.set()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the worker's loop has ended (stopped, or --leave finished)."""
        return self._done.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ready(self) -> bool:
        """Connected and subscribed (the broker routes messages to us)."""
        return self._connected and self._subscribed.is_set()

    def _teardown(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            props = None
            if self._left:  # --leave: the session ends with this DISCONNECT
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
            client.disconnect(properties=props)
            client.loop_stop()
        if self._tracker_lock is not None:
            self._tracker_lock.release()
            self._tracker_lock = None
        if self.engine is not None:
            self.engine.dispose()

    # --- MQTT (paho's network thread) ---------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        client.reconnect_delay_set(0.5, 15)
        if cfg.mqtt.tls:
            ca = str(cfg.resolve(cfg.mqtt.ca)) if cfg.mqtt.ca else None
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            if cfg.mqtt.cert:
                context.load_cert_chain(str(cfg.resolve(cfg.mqtt.cert)),
                                        str(cfg.resolve(cfg.mqtt.key)) if cfg.mqtt.key else None)
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribed
        client.on_unsubscribe = self._on_subscribed
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, _userdata, flags, reason, _props):
        if reason.is_failure:
            self.problem = f"broker refused the connection: {reason}"
            log.error("MQTT %s:%s refused ingest worker %s: %s", self.config.mqtt.host,
                      self.config.mqtt.port, self.client_id, reason)
            return
        with self._gen_lock:
            self._gen += 1
            self._connected = True
        self._subscribed.clear()
        self.problem = None
        self.metrics.connected.set(1)
        if self.leave:
            _, mid = client.unsubscribe(self.shared_filters + self.presence_filters())
        else:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.shared_filters])
            if self.tracker is not None:
                # QoS 0 and re-subscribed on every connection: the retained presence
                # of every kiosk arrives again, queued heartbeats never do
                _, mid = client.subscribe([(t, SubscribeOptions(qos=0))
                                           for t in self.presence_filters()])
            else:  # a name that tracked presence before must not keep those in its session
                _, mid = client.unsubscribe(self.presence_filters())
        self._last_sub_mid = mid
        self._queue.append((_CONTROL, b"up", 0, 0, False, self._gen))
        self._wake.set()
        log.info("ingest worker %s connected to %s:%s (session %s)", self.name,
                 self.config.mqtt.host, self.config.mqtt.port,
                 "resumed" if flags.session_present else "new")

    def _on_subscribed(self, _client, _userdata, mid, reasons, _props):
        # the last (un)subscription of on_connect answered: the broker has them all
        if mid == self._last_sub_mid:
            failed = [str(r) for r in reasons if r.is_failure]
            if failed:
                log.error("ingest worker %s: broker refused a subscription: %s", self.name,
                          ", ".join(failed))
            self._subscribed.set()
            log.info("ingest worker %s subscribed", self.name)

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props):
        with self._gen_lock:
            was, self._connected = self._connected, False
            self._gen += 1
        self.metrics.connected.set(0)
        self._queue.append((_CONTROL, b"down", 0, 0, False, self._gen))
        self._wake.set()
        if was and not self._stop.is_set():
            self.problem = f"lost the broker: {reason}"
            log.warning("ingest worker %s lost the broker (%s); reconnecting", self.name, reason)

    def _on_message(self, _client, _userdata, msg):
        queue = self._queue
        queue.append((msg.topic, msg.payload, msg.mid, msg.qos, msg.retain, self._gen))
        n = len(queue)
        if n == 1 or n >= self.batch_size:  # the loop waits for a first message or a full batch
            self._wake.set()

    # --- the worker's loop ------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop()
        except Exception:  # pragma: no cover - a bug; systemd restarts us, nothing is acked
            log.exception("ingest worker %s failed", self.name)
            self.problem = "the ingest loop failed; see the log"
        finally:
            self._done.set()

    def _loop(self) -> None:
        watchdog.ready(f"ingest worker {self.name}")
        now = time.monotonic()
        next_sweep, next_flush = now + self.sweep_every, now + self.seen_flush
        first_at = None  # when the oldest message waiting in the queue was noticed
        final = None  # stopping: how many queued messages are still ours to finish
        while True:
            now = time.monotonic()
            self._ping(now)
            queue = self._queue
            if self._stop.is_set() and final is None:
                final = len(queue)
            if queue and first_at is None:
                first_at = now
            if queue and (len(queue) >= self.batch_size or final is not None
                          or now - first_at >= self.batch_seconds):
                take = min(len(queue), self.batch_size)
                if final is not None:
                    take = min(take, final)
                    final -= take
                if take:
                    self._batch([queue.popleft() for _ in range(take)])
                first_at = now if queue else None
            now = time.monotonic()
            if self.tracker is not None:
                if now >= next_sweep:
                    next_sweep = now + self.sweep_every
                    self.tracker.sweep(self.clock())
                flush = now >= next_flush or final == 0
                if flush:
                    next_flush = now + self.seen_flush
                self._write_presence(flush)
            if self.store.directory.due():
                self._refresh()
            if final == 0 or (final is not None and not queue):
                break
            if (self.leave and self._connected and not queue and self._idle_since is not None
                    and now - self._idle_since >= self.leave_idle):
                self._left = True
                log.info("ingest worker %s: session drained; leaving the share group",
                         self.name)
                break
            self._wake.clear()
            if queue and (len(queue) >= self.batch_size or first_at is None):
                continue
            waits = [next_sweep - now, 1.0] if self.tracker is not None else [1.0]
            if queue:
                waits.append(first_at + self.batch_seconds - now)
            self._wake.wait(max(0.0, min(waits)))
        watchdog.stopping()

    def _ping(self, now: float) -> None:
        if now - self._last_ping >= PING_EVERY:
            self._last_ping = now
            watchdog.watchdog_ping()

    def _batch(self, items: list) -> None:
        self._in_hand = len(items)
        scans, summaries, acks = [], [], []
        kinds: dict[str, int] = {}  # counted per batch: a labelled inc() per message costs
        wall = self.clock()
        for topic, payload, mid, qos, retain, gen in items:
            if topic is _CONTROL:
                self._connection_event(payload, wall)
                continue
            if qos:
                acks.append((mid, qos, gen))
            try:
                kiosk, kind = messages.kiosk_of(topic)
            except messages.MessageError as exc:
                self._bad("unknown", "?", exc)
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                if kind == "scan":
                    scans.append((kiosk, messages.parse_scan(payload, kiosk)))
                elif kind == "summary":
                    summaries.append((kiosk, messages.parse_summary(payload, kiosk)))
                elif self.tracker is None:
                    continue  # left over in a session that tracked presence before
                elif kind == "heartbeat":
                    self._presence_event(kind, kiosk, messages.parse_heartbeat(payload, kiosk),
                                         wall, retain)
                elif kind == "presence":
                    if payload:  # an empty retained message clears the topic
                        self._presence_event(kind, kiosk,
                                             messages.parse_presence(payload, kiosk), wall,
                                             retain)
                else:
                    raise messages.MessageError(f"unknown message kind {kind[:40]!r}")
            except messages.MessageError as exc:
                self._bad(kind, kiosk, exc)
        for kind, n in kinds.items():
            self.metrics.received.labels(kind=kind).inc(n)
        if scans or summaries:
            if not self._commit(scans, summaries):
                return  # stopping with the database down: the broker keeps them all
        self._ack(acks)
        self._in_hand = 0
        if self._idle_since is not None:
            self._idle_since = time.monotonic()
        self.stats["batches"] += 1
        self.metrics.batch_size.observe(len(acks))

    def _presence_event(self, kind: str, kiosk: str, doc: dict, wall: float, retain: bool):
        tracker = self.tracker
        before = tracker.stats["stale"], tracker.stats["retired"]
        if kind == "heartbeat":
            tracker.heartbeat(kiosk, doc, wall)
        else:
            tracker.presence(kiosk, doc, wall, retained=retain)
        if tracker.stats["stale"] != before[0]:
            self.metrics.stale.labels(kind=kind).inc()
        if tracker.stats["retired"] != before[1]:
            self.metrics.retired_kiosk.labels(kind=kind).inc()

    def _connection_event(self, what: bytes, wall: float) -> None:
        # --leave counts idle time from the (un)subscription of this connection on
        self._idle_since = time.monotonic() if what == b"up" else None
        if self.tracker is None:
            return
        if what == b"up":
            self.tracker.resume(wall)  # everyone connected gets a full timeout from now
        else:
            self.tracker.suspend()

    def _bad(self, kind: str, kiosk: str, error: Exception) -> None:
        reason = bad_reason(error)
        self.metrics.bad.labels(kind=kind, reason=reason).inc()
        self.stats["bad"] += 1
        # one line per kiosk and reason per minute: a broken kiosk must not flood the log
        key = (kiosk, reason)
        now = time.monotonic()
        entry = self._bad_logged.get(key)
        if entry is None or now - entry[0] >= LOG_EVERY:
            more = f" (and {entry[1]} more like it)" if entry and entry[1] else ""
            log.warning("bad %s message from kiosk %s: %s%s", kind, kiosk, error, more)
            self._bad_logged[key] = [now, 0]
            if len(self._bad_logged) > 10_000:
                self._bad_logged.clear()
        else:
            entry[1] += 1

    def _commit(self, scans, summaries) -> bool:
        """Write the batch; retry until it is committed. False only if the worker is
        stopping and the database stayed down for STOP_GRACE seconds."""
        delay, give_up = RETRY[0], None
        while True:
            started = time.perf_counter()
            self.metrics.writing.set(1)
            try:
                self.store.write(scans, summaries)
            except SQLAlchemyError as exc:
                self.metrics.writing.set(0)
                self.metrics.db_errors.inc()
                self.problem = f"database: {exc.__class__.__name__}: {str(exc)[:200]}"
                log.warning("ingest worker %s: batch of %d not committed (%s); retrying in "
                            "%.1f s, nothing acknowledged", self.name,
                            len(scans) + len(summaries), self.problem, delay)
                if self._stop.is_set():
                    give_up = give_up or time.monotonic() + self.stop_grace
                    if time.monotonic() >= give_up:
                        log.error("ingest worker %s: stopping with the database down; %d "
                                  "messages stay with the broker", self.name,
                                  len(scans) + len(summaries))
                        return False
                end = time.monotonic() + delay
                while time.monotonic() < end:  # keep systemd's watchdog fed while we wait
                    self._ping(time.monotonic())
                    time.sleep(min(0.2, max(0.0, end - time.monotonic())))
                delay = min(delay * 2, RETRY[1])
                self._db_was_down = True
                continue
            self.metrics.writing.set(0)
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            if self._db_was_down:
                self._db_was_down = False
                self.problem = None
                log.info("ingest worker %s: the database is back", self.name)
                if self.tracker is not None:
                    # heartbeats waited in the queue meanwhile: judge nobody on that gap
                    self.tracker.resume(self.clock())
            return True

    def _ack(self, acks) -> None:
        dropped = 0
        with self._gen_lock:  # no reconnect can slip in between the check and the ack
            gen, up = self._gen, self._connected
            client = self.client
            for mid, qos, g in acks:
                if up and g == gen and client is not None:
                    client.ack(mid, qos)
                else:
                    dropped += 1
        self.stats["acked"] += len(acks) - dropped
        if dropped:
            self.metrics.acks_dropped.inc(dropped)
            log.info("ingest worker %s: %d acknowledgements dropped (their connection is gone; "
                     "the broker redelivers, the store deduplicates)", self.name, dropped)

    def _write_presence(self, flush_seen: bool) -> None:
        tracker = self.tracker
        changes = tracker.take_changes()
        seen = tracker.take_seen() if flush_seen else []
        if not changes and not seen:
            return
        try:
            with self.engine.begin() as connection:
                retired = presence_db.write(connection, changes, self.store.deployment)
                presence_db.write_seen(connection, seen)
        except SQLAlchemyError as exc:
            tracker.give_back(changes)
            tracker.give_back_seen(seen)
            self.metrics.db_errors.inc()
            log.warning("presence: %d changes not written (%s: %s); retrying", len(changes),
                        exc.__class__.__name__, str(exc)[:200])
            return
        if retired:
            tracker.retired(retired)
        for c in changes:
            if c.previous is not None and c.kiosk not in retired:
                self.metrics.transitions.labels(state=c.state).inc()
                log.info("kiosk %s: %s -> %s (session %d) %s", c.kiosk, c.previous, c.state,
                         c.session, c.detail)
        self._gauges()

    def _gauges(self) -> None:
        for state, n in self.tracker.counts().items():
            self.metrics.kiosks.labels(state=state).set(n)

    def _refresh(self) -> None:
        try:
            self.store.refresh()
        except SQLAlchemyError as exc:
            log.warning("kiosk directory not reloaded (%s); keeping the old one", exc)
            self.store.directory.loaded_at = time.monotonic()  # try again in REFRESH s
            return
        if self.tracker is not None:
            self.tracker.retired(self.store.directory.retired())
            self._gauges()

    def _retry_db(self, action, what: str) -> None:
        delay = RETRY[0]
        while True:
            try:
                return action()
            except SQLAlchemyError as exc:
                if self._stop.is_set():
                    raise
                log.warning("cannot %s yet (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY[1])


def run(config, args) -> int:
    """`greengate-fleet ingest`: run until SIGTERM / SIGINT (or, with --leave, until the
    session is drained)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = IngestWorker(config, worker=args.worker, presence=not args.no_presence,
                          leave=getattr(args, "leave", False))
    port = getattr(args, "metrics_port", None)
    if port:
        worker.metrics.serve(port, getattr(args, "metrics_addr", None) or "127.0.0.1")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.request_stop())
    try:
        worker.start()
    except LockBusy as exc:
        print(f"greengate-fleet: another ingest worker already tracks presence for this "
              f"database ({exc}); start this one with --no-presence (docs/fleet.md#one-tracker)",
              file=sys.stderr)
        return 2
    while not worker.wait(0.5):  # a short wait keeps the main thread responsive to signals
        pass
    worker.stop()
    log.info("ingest worker %s stopped", worker.name)
    return 0

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
    gg/v1/bridge/+/state   QoS 0, the presence worker: district bridges' state on the
        core (docs/scaling.md), which tells an unreachable kiosk from an offline one
    gg/v1/bridge/+/crl     QoS 0, the presence worker: the CRL each district broker
        applies (retained; `retire` waits for it, the dashboard shows it)

Presence and heartbeats are QoS 0 on purpose: a heartbeat queued while the worker was
down is no sign of life now, and the retained presence of every kiosk arrives afresh on
each (re)subscription, which is all a restarting tracker needs (fleet/presence.py).

Flow: paho's network thread only appends each message to a queue. The worker's thread
takes up to `[mqtt] batch_size` messages (or what came within `batch_seconds`),
validates them with greengate.messages and the fleet's time window ([ingest]
max_age_days / max_ahead_hours around the fleet's clock), writes the scans and
summaries in ONE transaction (fleet/ingest_store.py) together with the refused messages
(the quarantine table: kiosk, topic, reason, the first bytes), and only after the commit
acknowledges them to the broker (manual_ack, PUBACK in arrival order) and confirms them
to their kiosks.

Confirmations (docs/protocol.md): for each kiosk, every scan and summary id it sent
that a commit took in (new and duplicate alike, and those quarantined for a reason of
their own whose kiosk and id are trustworthy) goes back on `gg/v1/confirm/<kiosk>`,
QoS 1, not retained, at most CONFIRM_IDS ids per message. Ids wait up to `[ingest]
confirm_seconds` (0.5) for others of their kiosk, so that one message carries what
several batches committed (a publish costs the worker as much as storing a few scans);
a kiosk with CONFIRM_IDS waiting is confirmed at once. A kiosk deletes a decision from
its outbox only on such a confirmation. Never for a retired kiosk, never for a message
that did not parse. A worker killed between the commit and the confirmation loses
nothing: the kiosk sends again, the insert absorbs it, the next commit confirms it.

A commit that fails because of the database itself (OperationalError, InterfaceError,
a lost connection, a missing table) is retried, with backoff, and nothing is
acknowledged meanwhile: the broker's in-flight window (our MQTT 5 Receive Maximum)
holds the rest back. A commit that fails because of a row of its own (IntegrityError,
DataError, a value the driver cannot encode) is split in two and each half written
alone, down to the one bad message, which is quarantined: one bad row never holds
back good ones. An acknowledgement (or confirmation) for a connection that has since
dropped is not sent: the broker redelivers those messages on the new connection and
the idempotent insert absorbs them. A SIGKILLed worker therefore loses nothing: what
it had not acknowledged comes back when it reconnects under the same name.

Anything else that goes wrong in the loop is a bug: the worker stops without
acknowledging the batch in hand and `run()` exits 1, so systemd (Restart=on-failure)
starts it again and the broker redelivers.

SIGTERM/SIGINT: the batch in hand is committed and acknowledged, then DISCONNECT; the
session (and whatever the broker queues for it) stays for the next start. `--leave`
instead drains the session, unsubscribes and ends it: how a worker is removed for
good (docs/fleet.md#scaling).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import (DataError, DBAPIError, IntegrityError, SQLAlchemyError,
                            StatementError)
from sqlalchemy.orm import Session

from greengate import messages, sealing, watchdog

from . import mqtt_identity
from .mqtt_trouble import Trouble
from . import presence as presence_db
from . import roster_workers, rosters, sealing_keys
from .db import make_engine
from .ingest_metrics import IngestMetrics
from .ingest_store import Quarantined, ScanStore, Written
from .quarantine import RAW_BYTES
from .presence import Tracker
from .db_lock import DatabaseLock, LockBusy

log = logging.getLogger("greengate.fleet.ingest")

KEEPALIVE = 30  # the worker's own MQTT keepalive, seconds
SESSION_EXPIRY = 0xFFFFFFFF  # MQTT 5 "never expires": the share waits for its worker
RETRY = (0.5, 10.0)  # seconds between attempts at a failing commit: first, at most
STOP_GRACE = 10.0  # seconds a stopping worker keeps retrying before it gives up
REFRESH = 30.0  # seconds between reloads of the kiosk directory (locations, retirements)
STANDBY_RETRY = 1.0  # --standby: seconds between attempts at the presence lock
LEAVE_IDLE = 2.0  # --leave: seconds without a message that mean the session is drained
LOG_EVERY = 60.0  # seconds between log lines about the same kiosk's bad messages
# confirmations on their way to the broker at once (paho queues the rest): Mosquitto's
# default Receive Maximum (max_inflight_messages), which the generated config keeps
CONFIRM_INFLIGHT = 20
PING_EVERY = 1.0  # seconds between systemd watchdog pings (the unit's WatchdogSec is 60)

_CONTROL = None  # topic of a queue entry that is a connection event, not a message


def bad_reason(error: Exception) -> str:
    """A short, bounded label for a MessageError (its text holds values)."""
    text = str(error)
    for needle, label in (("ahead of the fleet's clock", "ts_future"),
                          ("older than the fleet's window", "ts_past"),
                          ("nested too deeply", "too_deep"), ("not valid UTF-8", "utf8"),
                          ("is not allowed", "not_finite"),("bytes, limit", "oversized"), ("not JSON", "not_json"),
                          ("not a JSON object", "not_object"),
                          ("unsupported message version", "version"),
                          ("published under", "wrong_kiosk"), ("kiosk topic", "topic"),
                          ("kiosk id in topic", "topic")):
        if needle in text:
            return label
    if text.startswith("field '"):
        return "field_" + text.split("'")[1][:20]
    return "other"


# The database is there and refused a row of ours: split the batch to find it. Anything
# else (OperationalError, InterfaceError, a lost connection, a missing table) is the
# database itself: retried whole.
_ROW_ERRORS = (IntegrityError, DataError)


def row_problem(exc: BaseException) -> bool:
    """True if `exc` from a batch write is the fault of a row of the batch."""
    if isinstance(exc, _ROW_ERRORS):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return True  # a parameter SQLAlchemy could not process
    # raised by the driver while encoding a value (UnicodeEncodeError, OverflowError)
    return isinstance(exc, (ValueError, OverflowError)) and not isinstance(exc, SQLAlchemyError)


def _detail(exc: BaseException) -> str:
    """A bounded, printable sentence about a database error (never a repr of a row)."""
    try:
        text = str(getattr(exc, "orig", None) or exc)
    except Exception:  # a driver's exception whose text cannot be built
        text = ""
    text = "".join(c if c.isprintable() else "?" for c in text[:300].split("\n", 1)[0])
    return f"the database refused the row: {exc.__class__.__name__}: {text}"


# The fields of a heartbeat / presence message the fleet knows (greengate/messages.py).
# Only these reach the tracker, which keeps the last heartbeat in the kiosk's row: a
# parser passes other keys through unchecked (a structure ~900 levels deep fits in a
# message), and nothing stored may make a page fail to render it.
HEARTBEAT_FIELDS = ("v", "kiosk", "session", "ts", "uptime", "bundles", "outbox", "clock",
                    "lists", "cpu_temp", "overflow", "seq", "confirmed", "faults", "memory",
                    "lost", "policy", "roster", "closed", "broker")
PRESENCE_FIELDS = ("v", "kiosk", "session", "state", "cause", "broker")


_BRIDGES = f"{messages.ROOT}/bridge/"


def _known(doc: dict, fields: tuple) -> dict:
    return {name: doc[name] for name in fields if name in doc}


class IngestWorker:
    def __init__(self, config, *, worker: str = "1", presence: bool = True, leave: bool = False,
                 standby: bool = False,
                 metrics: IngestMetrics | None = None, clock=time.time,
                 seen_flush: float | None = None, stop_grace: float = STOP_GRACE,
                 leave_idle: float = LEAVE_IDLE):
        self.config = config
        self.name = worker
        self.client_id = f"{config.mqtt.client_id}-ingest-{worker}"
        self.tracks_presence = presence and not leave
        # --standby: the presence lock busy, ingest scans and take the lock once it frees
        # (its holder stopped or died): one tracker at a time, and one while any runs
        self.standby = standby and self.tracks_presence
        self._next_try = 0.0  # monotonic: the next attempt at the lock, standing by
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
        # the fleet's window for kiosk times, around its own clock
        self.max_age = float(config.ingest.max_age_days) * 86400.0
        self.max_ahead = float(config.ingest.max_ahead_hours) * 3600.0
        self.confirm_delay = max(0.0, float(config.ingest.confirm_seconds))
        self.tracker = Tracker(p.keepalive, p.backlog) if self.tracks_presence else None
        self.engine = None
        self.store: ScanStore | None = None
        # opens sealed holder identities; made in start() (it reads the fleet's keys)
        self.unsealer: sealing_keys.Unsealer | None = None
        self._sealed_outcomes: dict[str, int] = {}  # this batch's, by outcome
        # roster enrolment mode (fleet/roster_workers.py): the open enrolments, reloaded
        # every few seconds; a scan in one is linked after its batch's commit
        self.enrolments: roster_workers.EnrolmentWatch | None = None
        self._enrol_hits: list[tuple[int, str, bytes, float]] = []
        self.client: mqtt.Client | None = None
        self.stats = {"batches": 0, "acked": 0, "bad": 0, "confirmed": 0}
        self.problem: str | None = None  # the last connection / database trouble, for humans
        # failed connections logged with their reason and host at once (fleet/mqtt_trouble.py)
        self.trouble = Trouble(f"ingest worker {worker}", config, log)
        self.trouble.on_failure(lambda reason, _permanent: setattr(self, "problem", reason))
        self._tls = None  # the TLS context, made first thing in start()
        self.failed = False  # the loop died of a bug: run() exits non-zero
        self._last_confirm = None  # paho's MQTTMessageInfo of the last confirmation sent
        self._pending: dict[str, tuple[list, list]] = {}  # kiosk -> committed ids to confirm
        self._confirm_due: float | None = None  # monotonic time to send them by
        self._crashed: Exception | None = None  # what a paho callback raised
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
        self._waiting_tracker: Tracker | None = None  # --standby: until the lock frees

    # --- filters ----------------------------------------------------------------------
    @property
    def shared_filters(self) -> list[str]:
        group = self.config.mqtt.share_group
        return [f"$share/{group}/{messages.ROOT}/kiosk/+/{kind}" for kind in ("scan", "summary")]

    @staticmethod
    def presence_filters() -> list[str]:
        return [f"{messages.ROOT}/kiosk/+/{kind}" for kind in ("presence", "heartbeat")] + \
            [messages.bridge_state_topic("+"), messages.bridge_crl_topic("+")]

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> "IngestWorker":
        cfg = self.config
        if cfg.mqtt.tls:  # a missing TLS file is named (IdentityError) before any other work
            self._tls = mqtt_identity.tls_context(cfg, mqtt_identity.ingest(cfg, self.name))
        if self.unsealer is None:
            self.unsealer = sealing_keys.Unsealer(cfg)
        self.engine = make_engine(cfg.database_url)
        self.store = ScanStore(self.engine, deployment=cfg.fleet.deployments[0],
                               metrics=self.metrics, refresh=REFRESH, clock=self.clock)
        self._retry_db(self.store.refresh, "load the kiosk directory")  # the database is up
        self.enrolments = roster_workers.EnrolmentWatch(self.engine, clock=self.clock)
        self._retry_db(self.enrolments.reload, "load the open roster enrolments")
        if self.tracker is not None:
            self._tracker_lock = DatabaseLock(self.engine, "presence", b"GGPRESNC")
            try:
                self._retry_db(self._tracker_lock.acquire, "take the presence tracker lock")
            except LockBusy:
                self._tracker_lock = None
                if not self.standby:
                    self.engine.dispose()
                    raise
                self._waiting_tracker, self.tracker = self.tracker, None
                log.info("ingest worker %s: another worker tracks presence; standing by",
                         self.name)
            if self.tracker is not None:
                self._load_presence()
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

    def _load_presence(self) -> None:
        def load():
            with self.engine.connect() as connection:
                self.tracker.load(presence_db.load_rows(connection))
                self.tracker.assign(presence_db.load_assignments(connection))
                self.tracker.known_bridges(presence_db.load_bridges(connection))
        self._retry_db(load, "load kiosk presence")
        self._gauges()

    def _take_over(self, now: float) -> None:
        """Standing by: take the presence lock if its holder is gone, then track."""
        if now < self._next_try:
            return
        self._next_try = now + STANDBY_RETRY
        lock = DatabaseLock(self.engine, "presence", b"GGPRESNC")
        try:
            lock.acquire()
        except (LockBusy, SQLAlchemyError):
            return
        self._tracker_lock = lock
        self.tracker, self._waiting_tracker = self._waiting_tracker, None
        self._load_presence()
        if self._connected:  # listening already: every connected kiosk gets a full timeout
            self.tracker.resume(self.clock())
        log.info("ingest worker %s: the presence tracker stopped; this worker tracks "
                 "presence now", self.name)
        # the retained presence of every kiosk arrives with this subscription; a
        # reconnection from here on subscribes in _on_connect
        self.client.subscribe([(t, SubscribeOptions(qos=0)) for t in self.presence_filters()])

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
        last = self._last_confirm
        if client is not None and last is not None and self._connected:
            # the broker's PUBACK for our last confirmation must be read before we close:
            # a socket closed with unread input sends a reset, and the broker may then drop
            # our last acknowledgements still in its buffer (redelivered: harmless, but a
            # clean stop should not cause it)
            try:
                last.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
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
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        client.reconnect_delay_set(0.5, 15)
        client.max_inflight_messages_set(CONFIRM_INFLIGHT)
        if self._tls is not None:  # this worker's own certificate (fleet/mqtt_identity.py)
            client.tls_set_context(self._tls)
        self.trouble.attach(client)
        client.on_connect = self._guarded(self._on_connect)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_subscribe = self._guarded(self._on_subscribed)
        client.on_unsubscribe = self._guarded(self._on_subscribed)
        client.on_message = self._guarded(self._on_message)
        return client

    def _guarded(self, callback):
        """An exception escaping a paho callback would end paho's network thread and leave
        the worker deaf but alive: it ends the worker's loop instead (exit status 1)."""
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as exc:
                self._crashed = exc
                self._wake.set()
        return guarded

    def _on_connect(self, client, _userdata, flags, reason, props=None):
        if reason.is_failure:
            self.trouble.refused(reason)  # logged there, rate-limited
            return
        receive_max = getattr(props, "ReceiveMaximum", CONFIRM_INFLIGHT)
        if receive_max < CONFIRM_INFLIGHT:
            # paho does not heed the broker's Receive Maximum, nor lets it be lowered once
            # connected; MQTT 5 lets a broker sent more unacknowledged messages than that
            # refuse them or drop the connection
            log.warning("ingest worker %s: the broker takes only %d unacknowledged messages "
                        "(max_inflight_messages); confirmations wait for each other",
                        self.name, receive_max)
            client._max_inflight_messages = max(1, receive_max)  # noqa: SLF001
        with self._gen_lock:
            self._gen += 1
            self._connected = True
        self._subscribed.clear()
        self.problem = None
        self.trouble.connected()
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
        if not was and not self._stop.is_set():
            self.trouble.closed(reason)  # before a CONNACK: a TLS alert, most often
        if was and not self._stop.is_set():
            self.problem = f"lost the broker: {reason}"
            log.warning("ingest worker %s lost the broker (%s); reconnecting", self.name, reason)

    def _on_message(self, _client, _userdata, msg):
        queue = self._queue
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # the broker checks topics; never let one kill paho's thread
            topic = bytes(msg._topic).decode("utf-8", "replace")  # noqa: SLF001
        queue.append((topic, msg.payload, msg.mid, msg.qos, msg.retain, self._gen))
        n = len(queue)
        if n == 1 or n >= self.batch_size:  # the loop waits for a first message or a full batch
            self._wake.set()

    # --- the worker's loop ------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: nothing of the batch in hand is acknowledged
            self.failed = True
            self.problem = "the ingest loop failed; see the log"
            try:
                log.exception("ingest worker %s failed; exiting so that it is restarted",
                              self.name)
            except BaseException:  # a traceback too deep to format must not hide the failure
                log.error("ingest worker %s failed: %s", self.name, exc.__class__.__name__)
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
            if self._crashed is not None:
                raise RuntimeError("a paho callback failed") from self._crashed
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
            if self._waiting_tracker is not None and not self._stop.is_set():
                self._take_over(now)
                next_sweep, next_flush = now + self.sweep_every, now + self.seen_flush
            if self.tracker is not None:
                if now >= next_sweep:
                    next_sweep = now + self.sweep_every
                    self.tracker.sweep(self.clock())
                flush = now >= next_flush or final == 0
                if flush:
                    next_flush = now + self.seen_flush
                self._write_presence(flush)
            if self._confirm_due is not None and now >= self._confirm_due:
                self._flush_confirms()
            if self.tracker is not None and self.store.directory.due():
                self._refresh()  # retirements for the tracker; the store reads its own
            if self.enrolments is not None and self.enrolments.due():
                self._reload_enrolments()
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
            if self._confirm_due is not None:
                waits.append(self._confirm_due - now)
            self._wake.wait(max(0.0, min(waits)))
        if self._pending:
            self._flush_confirms()  # stopping: what was committed is confirmed on the way out
        watchdog.stopping()

    def _ping(self, now: float) -> None:
        if now - self._last_ping >= PING_EVERY:
            self._last_ping = now
            watchdog.watchdog_ping()

    def _batch(self, items: list) -> None:
        self._in_hand = len(items)
        scans, summaries, acks, refused = [], [], [], []
        kinds: dict[str, int] = {}  # counted per batch: a labelled inc() per message costs
        wall = self.clock()
        low, high = wall - self.max_age, wall + self.max_ahead
        for topic, payload, mid, qos, retain, gen in items:
            if topic is _CONTROL:
                self._connection_event(payload, wall)
                continue
            if qos:
                acks.append((mid, qos, gen))
            if topic.startswith(_BRIDGES):
                if self.tracker is not None:
                    try:
                        name, what = messages.bridge_of(topic)
                        if what == "state":
                            self.tracker.bridge(name, messages.parse_bridge_state(payload),
                                                wall)
                        else:
                            self.tracker.bridge_crl(name,
                                                    messages.parse_bridge_crl(payload, name))
                    except messages.MessageError as exc:
                        refused.append(self._bad("bridge", None, topic, payload, exc))
                continue
            try:
                kiosk, kind = messages.kiosk_of(topic)
            except messages.MessageError as exc:
                refused.append(self._bad("unknown", None, topic, payload, exc))
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                if kind == "scan":
                    doc = messages.parse_scan(payload, kiosk)
                    ts = doc["ts"]
                    if low <= ts <= high:
                        self._holder(kiosk, doc)
                        scans.append((kiosk, doc, payload))
                    else:
                        refused.append(self._bad(kind, kiosk, topic, payload,
                                                 self._window(ts, wall), ("scan", doc["id"])))
                elif kind == "summary":
                    doc = messages.parse_summary(payload, kiosk)
                    if low <= doc["first"] and doc["last"] <= high:
                        summaries.append((kiosk, doc, payload))
                    else:
                        ts = doc["first"] if doc["first"] < low else doc["last"]
                        refused.append(self._bad(kind, kiosk, topic, payload,
                                                 self._window(ts, wall), ("summary", doc["id"])))
                elif self.tracker is None:
                    continue  # left over in a session that tracked presence before
                elif kind == "heartbeat":
                    doc = messages.parse_heartbeat(payload, kiosk)
                    self._presence_event(kind, kiosk, _known(doc, HEARTBEAT_FIELDS), wall,
                                         retain)
                elif kind == "presence":
                    if payload:  # an empty retained message clears the topic
                        doc = messages.parse_presence(payload, kiosk)
                        self._presence_event(kind, kiosk, _known(doc, PRESENCE_FIELDS), wall,
                                             retain)
                else:
                    raise messages.MessageError(f"unknown message kind {kind[:40]!r}")
            except messages.MessageError as exc:
                refused.append(self._bad(kind, kiosk, topic, payload, exc))
        for kind, n in kinds.items():
            self.metrics.received.labels(kind=kind).inc(n)
        for outcome, n in self._sealed_outcomes.items():
            self.metrics.sealed.labels(outcome=outcome).inc(n)
        self._sealed_outcomes.clear()
        confirms = None
        if scans or summaries or refused:
            written = self._commit(scans, summaries, refused)
            if written is None:
                return  # stopping with the database down: the broker keeps them all
            confirms = self._confirmations(scans, summaries, refused, written)
        self._finish(acks, confirms)
        if self._enrol_hits:
            self._link_enrolments()
        self._in_hand = 0
        if self._idle_since is not None:
            self._idle_since = time.monotonic()
        self.stats["batches"] += 1
        self.metrics.batch_size.observe(len(acks))

    def _holder(self, kiosk: str, doc: dict) -> None:
        """The scan's holder pseudonym from its sealed identity, which is then dropped. One
        that does not open is not the scan's fault as a whole: the decision is stored
        without a holder, and counted (docs/privacy.md#at-the-fleet)."""
        text = doc.pop("sealed", None)
        outcomes = self._sealed_outcomes  # counted per batch, like `kinds`
        if text is None:
            if doc.get("holder") is not None:  # a kiosk older than sealing
                outcomes["legacy"] = outcomes.get("legacy", 0) + 1
            return
        try:
            identity = self.unsealer.identity(text, kiosk, doc["id"])
            doc["holder"] = self.unsealer.pseudonym_of(identity)
        except sealing.SealError as exc:
            doc["holder"] = None
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            key = (kiosk, "sealed_" + exc.reason)
            now = time.monotonic()
            entry = self._bad_logged.get(key)
            if entry is None or now - entry[0] >= LOG_EVERY:
                log.warning("scan %s of kiosk %s: its holder did not open (%s); stored "
                            "without a holder", doc["id"], kiosk, exc)
                self._bad_logged[key] = [now, 0]
            return
        outcomes["opened"] = outcomes.get("opened", 0) + 1
        enrolments = self.enrolments
        if enrolments is not None and enrolments.open:  # a kiosk in enrolment mode somewhere
            enrolment = enrolments.get(kiosk, doc["ts"])
            if enrolment is not None:
                enrolments.forget(kiosk)  # the first such scan links; later ones are scans
                self._enrol_hits.append((enrolment, kiosk, identity, doc["ts"]))

    def _reload_enrolments(self) -> None:
        try:
            self.enrolments.reload()
        except SQLAlchemyError as exc:
            log.warning("open roster enrolments not reloaded (%s); keeping the old ones", exc)
            self.enrolments.postpone()

    def _link_enrolments(self) -> None:
        """Link the workers of the enrolments scanned in this batch (after its commit: a
        roster change never holds back scans), each in its own transaction; the holder
        identities are dropped here."""
        hits, self._enrol_hits = self._enrol_hits, []
        for enrolment, kiosk, identity, ts in hits:
            try:
                with Session(self.engine) as session:
                    outcome, org_id, published = roster_workers.link_enrolment(
                        session, self.config, kiosk, identity, scanned_at=ts,
                        at=self.clock())
                    session.commit()
                    # the full roster and the delta topics (fleet/rosters.py)
                    sends = rosters.kiosk_messages(session, org_id, published) \
                        if published else []
            except Exception as exc:  # noqa: BLE001
                # the enrolment stays open (a new scan tries again); linking a worker must
                # never stop the ingest (a database error, a fleet without its signing key)
                log.warning("roster enrolment %s at kiosk %s not linked (%s: %s)", enrolment,
                            kiosk, exc.__class__.__name__, str(exc)[:200])
                continue
            log.info("roster enrolment %s at kiosk %s: %s", enrolment, kiosk, outcome)
            client = self.client
            if client is not None:  # retained: a kiosk offline now gets it when back
                for topic, raw in sends:
                    client.publish(topic, raw, qos=1, retain=True)

    def _window(self, ts: float, wall: float) -> messages.MessageError:
        """The refusal of a kiosk time outside [ingest] max_age_days / max_ahead_hours."""
        if ts > wall:
            return messages.MessageError(
                f"kiosk time {(ts - wall) / 3600:.1f} h ahead of the fleet's clock (at most "
                f"{self.max_ahead / 3600:g} h)")
        return messages.MessageError(
            f"kiosk time {(wall - ts) / 86400:.1f} days old: older than the fleet's window "
            f"({self.max_age / 86400:g} days)")

    @staticmethod
    def _confirmations(scans, summaries, refused, written: Written) -> dict | None:
        """kiosk -> ([scan ids], [summary ids]) committed in this batch, stored or not."""
        out: dict[str, tuple[list, list]] = {}
        retired, lost = written.retired, written.lost
        for items, which in ((scans, 0), (summaries, 1)):
            for kiosk, doc, _ in items:
                if kiosk in retired:
                    continue
                entry = out.get(kiosk)
                if entry is None:
                    entry = out[kiosk] = ([], [])
                entry[which].append(doc["id"])
        for q in refused:
            if q.confirm is not None and q.kiosk not in retired:
                entry = out.setdefault(q.kiosk, ([], []))
                entry[0 if q.confirm[0] == "scan" else 1].append(q.confirm[1])
        if lost:  # failed even to be quarantined: not committed anywhere
            for kiosk, (s_ids, m_ids) in out.items():
                s_ids[:] = [i for i in s_ids if ("scan", i) not in lost]
                m_ids[:] = [i for i in m_ids if ("summary", i) not in lost]
        return out

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

    def _bad(self, kind: str, kiosk: str | None, topic: str, payload, error: Exception,
             confirm: tuple[str, str] | None = None) -> Quarantined:
        """A refused message: counted, logged (rate-limited), bound for the quarantine."""
        reason = bad_reason(error)
        detail = str(error)[:400]
        self.metrics.bad.labels(kind=kind, reason=reason).inc()
        self.stats["bad"] += 1
        # one line per kiosk and reason per minute: a broken kiosk must not flood the log
        key = (kiosk or "?", reason)
        now = time.monotonic()
        entry = self._bad_logged.get(key)
        if entry is None or now - entry[0] >= LOG_EVERY:
            more = f" (and {entry[1]} more like it)" if entry and entry[1] else ""
            log.warning("bad %s message from kiosk %s: %s%s", kind, key[0], detail, more)
            self._bad_logged[key] = [now, 0]
            if len(self._bad_logged) > 10_000:
                self._bad_logged.clear()
        else:
            entry[1] += 1
        raw = bytes(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else b""
        # a sealed identity is never kept, not even in the quarantine's first bytes
        return Quarantined(kiosk, topic, kind, reason, detail, sealing.strip(raw)[:RAW_BYTES],
                           len(raw), confirm)

    def _commit(self, scans, summaries, refused) -> Written | None:
        """Write the batch; retry until it is committed, or split it while a row of its own
        fails. None only if the worker is stopping and the database stayed down for
        STOP_GRACE seconds."""
        delay, give_up = RETRY[0], None
        while True:
            started = time.perf_counter()
            self.metrics.writing.set(1)
            try:
                written = self.store.write(scans, summaries, refused)
            except Exception as exc:
                self.metrics.writing.set(0)
                if row_problem(exc):
                    return self._split(scans, summaries, refused, exc)
                if not isinstance(exc, SQLAlchemyError):
                    raise  # a bug: the loop ends, nothing is acknowledged
                self.metrics.db_errors.inc()
                self.problem = f"database: {exc.__class__.__name__}: {str(exc)[:200]}"
                log.warning("ingest worker %s: batch of %d not committed (%s); retrying in "
                            "%.1f s, nothing acknowledged", self.name,
                            len(scans) + len(summaries) + len(refused), self.problem, delay)
                if self._stop.is_set():
                    give_up = give_up or time.monotonic() + self.stop_grace
                    if time.monotonic() >= give_up:
                        log.error("ingest worker %s: stopping with the database down; %d "
                                  "messages stay with the broker", self.name,
                                  len(scans) + len(summaries) + len(refused))
                        return None
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
            return written

    def _split(self, scans, summaries, refused, exc) -> Written | None:
        """A row of the batch failed: write the halves alone (bisection), down to the one
        message that fails, which is quarantined with the database's sentence."""
        messages_ = [("scan", m) for m in scans] + [("summary", m) for m in summaries]
        if len(messages_) + len(refused) > 1:
            self.metrics.splits.inc()
        if len(messages_) > 1 or (messages_ and refused):
            if len(messages_) > 1:
                half = len(messages_) // 2
                parts = [(messages_[:half], refused), (messages_[half:], [])]
            else:  # the quarantine rows alone first, then the one message
                parts = [([], refused), (messages_, [])]
            out = Written()
            for part, quarantine in parts:
                written = self._commit([m for k, m in part if k == "scan"],
                                       [m for k, m in part if k == "summary"], quarantine)
                if written is None:
                    return None
                out.add(written)
            return out
        if messages_:  # the one message the database refuses
            kind, (kiosk, doc, payload) = messages_[0]
            log.warning("ingest worker %s: %s %s of kiosk %s refused by the database (%s); "
                        "quarantined", self.name, kind, doc["id"], kiosk,
                        exc.__class__.__name__)
            raw = bytes(payload)
            q = Quarantined(kiosk, messages.scan_topic(kiosk) if kind == "scan" else
                            messages.summary_topic(kiosk), kind, "db_refused", _detail(exc),
                            sealing.strip(raw)[:RAW_BYTES], len(raw), (kind, doc["id"]))
            written = self._commit([], [], [q])
            if written is not None and written.quarantined == 0:
                written.lost.add((kind, doc["id"]))
            return written
        if len(refused) > 1:
            half = len(refused) // 2
            out = Written()
            for quarantine in (refused[:half], refused[half:]):
                written = self._commit([], [], quarantine)
                if written is None:
                    return None
                out.add(written)
            return out
        # one quarantine row the database refuses too: nothing more we can store of it
        q = refused[0]
        self.metrics.quarantine_failed.inc()
        log.error("ingest worker %s: a quarantined %s message of kiosk %s could not be "
                  "written either (%s); dropped", self.name, q.kind, q.kiosk or "?",
                  _detail(exc))
        out = Written()
        if q.confirm is not None:
            out.lost.add(q.confirm)
        return out

    def _finish(self, acks, confirms: dict | None) -> None:
        """Acknowledgements to the broker, only on the connection the messages came on;
        the batch's confirmations join those waiting to go out (_queue_confirms)."""
        if confirms:
            self._queue_confirms(confirms)
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

    def _queue_confirms(self, confirms: dict) -> None:
        """Committed ids wait up to [ingest] confirm_seconds so that one message per kiosk
        carries what several batches committed: a publish costs the worker about as much
        as storing a few scans. A kiosk with CONFIRM_IDS waiting is confirmed at once."""
        pending, full = self._pending, []
        for kiosk, (scan_ids, summary_ids) in confirms.items():
            if not scan_ids and not summary_ids:
                continue
            entry = pending.get(kiosk)
            if entry is None:
                entry = pending[kiosk] = ([], [])
            entry[0].extend(scan_ids)
            entry[1].extend(summary_ids)
            if len(entry[0]) + len(entry[1]) >= messages.CONFIRM_IDS:
                full.append(kiosk)
        if pending and self._confirm_due is None:
            self._confirm_due = time.monotonic() + self.confirm_delay
        if full:
            self._flush_confirms(full)

    def _flush_confirms(self, kiosks: list[str] | None = None) -> None:
        """Publish the waiting confirmations (of `kiosks`, default all). Not connected:
        they wait for the connection (they are true on any connection)."""
        client, pending = self.client, self._pending
        if client is None or not self._connected:
            if pending:
                self._confirm_due = time.monotonic() + self.confirm_delay
            return
        sent = ids = 0
        encode, publish = messages.encode, client.publish
        for kiosk in (list(pending) if kiosks is None else kiosks):
            scan_ids, summary_ids = pending.pop(kiosk)
            topic = messages.confirm_topic(kiosk)
            for doc in messages.confirms(kiosk, scan_ids, summary_ids):
                self._last_confirm = publish(topic, encode(doc), qos=1, retain=False)
                sent += 1
            ids += len(scan_ids) + len(summary_ids)
        if not pending:
            self._confirm_due = None
        self.metrics.confirmations.inc(sent)
        self.metrics.confirmed.inc(ids)
        self.stats["confirmed"] += ids

    def _write_presence(self, flush_seen: bool) -> None:
        tracker = self.tracker
        changes = tracker.take_changes()
        seen = tracker.take_seen() if flush_seen else []
        bridges = tracker.take_bridge_changes()
        crls = tracker.take_crl_reports()
        if not changes and not seen and not bridges and not crls:
            return
        try:
            with self.engine.begin() as connection:
                retired = presence_db.write(connection, changes, self.store.deployment)
                presence_db.write_seen(connection, seen)
                presence_db.write_bridges(connection, bridges)
                presence_db.write_crl_reports(connection, crls)
        except SQLAlchemyError as exc:
            tracker.give_back(changes)
            tracker.give_back_seen(seen)
            tracker.give_back_bridges(bridges)
            tracker.give_back_crl_reports(crls)
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
            try:  # policy assignments, for the applied-vs-assigned check (fleet/presence.py)
                with self.engine.connect() as connection:
                    self.tracker.assign(presence_db.load_assignments(connection))
                    self.tracker.known_bridges(presence_db.load_bridges(connection))
            except SQLAlchemyError as exc:
                log.warning("policy assignments not reloaded (%s); keeping the old ones", exc)

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
                          leave=getattr(args, "leave", False),
                          standby=getattr(args, "standby", False))
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
    except (sealing_keys.KeyError_, mqtt_identity.IdentityError) as exc:
        print(f"greengate-fleet: {exc}", file=sys.stderr)
        return 2
    while not worker.wait(0.5):  # a short wait keeps the main thread responsive to signals
        pass
    worker.stop()
    if worker.failed:
        log.error("ingest worker %s stopped on a failure; exit status 1 (systemd restarts it, "
                  "the broker redelivers what was not acknowledged)", worker.name)
        return 1
    log.info("ingest worker %s stopped", worker.name)
    return 0

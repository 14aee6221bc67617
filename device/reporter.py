"""The kiosk's MQTT reporter: outbox rows out, the fleet's confirmations in, presence,
heartbeats, bundles.

One thread owns one paho-mqtt 2.x client per connection (MQTT 5, clean start)
and does all network work itself (its own select loop; paho's automatic
reconnect is not used), so that every connection gets a NEW last will:

  * before each CONNECT: session = session_source() (a number the caller
    persists and increases), last will = presence ``offline`` with that session
    (retained, QoS 1). A number whose CONNECT never left the kiosk (TCP or TLS
    connect failed) is reused for the next attempt, so a long outage does not
    burn through numbers;
  * after CONNACK: presence ``online`` with the session (retained, QoS 1), then
    every subscription again (bundle topics are retained: they arrive again),
    and the kiosk's confirmation topic (QoS 1);
  * outbox rows are published with QoS 1 on their own topic. A row is deleted
    only when the FLEET confirms that it committed that scan (a message on
    ``messages.confirm_topic(kiosk)``); the broker's PUBACK only frees the
    row's slot in the in-flight window (a PUBACK that reports a failure, e.g.
    "not authorized", pauses scan publishing for 30 s). An invalid confirmation
    is logged and ignored;
  * at most ``max_awaiting`` rows are "sent, not yet confirmed": when that many
    wait, the backlog waits too (flow control while the fleet is down and the
    broker up). A row unconfirmed after ``confirm_timeout`` is sent again; the
    timeout doubles while no confirmation at all arrives (up to 8 x), so a fleet
    outage does not turn into a steady stream of repeats;
  * every connection starts over: everything unconfirmed is sent again, oldest
    first. The backlog is replayed at most ``replay_rate`` messages/s (token
    bucket, burst 0.2 s worth; repeats after a timeout too) with at most
    ``window`` messages waiting for PUBACK; a scan passed to notify(scan_id) is
    sent ahead of the backlog, outside the rate limit (and beyond a full
    awaiting set by at most one window);
  * overflow summaries are sent at connect and every ``summary_poll`` seconds
    until the fleet confirms them;
  * a lost connection is retried with jittered exponential backoff (1 s doubling
    to 30 s by default; reset by a successful CONNACK);
  * several brokers (``brokers``, in order of preference; docs/scaling.md): a failed
    attempt moves on to the next at once, the backoff applies after a whole round
    failed; a connection whose fleet stays silent (rows waiting, no confirmation for
    ``failover_after`` s: the district is cut off from the core) moves to the next
    broker too, and after a round of silent brokers the kiosk stays where it is and
    waits twice as long before the next move (the fleet itself may be down). While not
    on the first broker it goes back to it every ``primary_retry`` s (and straight to
    the one that worked if the first still fails). Heartbeats and presence name the
    broker (``broker``: "host:port"), so the fleet knows which bridge a kiosk is behind;
  * stop(): presence ``offline`` (retained, QoS 1), wait for its PUBACK (which
    also means every earlier message was acknowledged), then DISCONNECT, so
    the broker does not publish the will and the fleet sees a graceful stop.

Broker, network and TLS errors are logged and retried, never raised.
Wire format and guarantees: docs/protocol.md.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Mapping, NamedTuple, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from greengate import messages

from .outbox import Outbox, Summary

log = logging.getLogger("greengate.reporter")
_paho_log = logging.getLogger("greengate.reporter.paho")

Callback = Callable[[str, bytes], None]

REJECT_HOLD = 30.0  # seconds scan publishing pauses after the broker rejected one
SUMMARY_POLL = 30.0  # seconds between looks at the overflow table while connected
FAILOVER_AFTER = 120.0  # seconds of fleet silence (rows waiting) before the next broker
PRIMARY_RETRY = 300.0  # seconds on another broker before the first is tried again
SILENCE_CAP = 1800.0  # the longest wait before a silence move, after rounds of silence
STOP_WAIT = 3.0  # seconds stop() waits for the PUBACK of presence offline
CONFIRM_TIMEOUT = 30.0  # seconds a sent row waits for the fleet's confirmation
MAX_AWAITING = 1000  # rows sent and not yet confirmed before the backlog waits
CONFIRM_BACKOFF = 8  # the confirmation timeout grows to at most this many times itself
LATENCIES = 10_000  # confirmation latencies kept for latency()


class TLSFiles(NamedTuple):
    ca: str
    cert: str
    key: str


class TokenBucket:
    """rate tokens per second, at most `capacity` saved; rate <= 0: unlimited."""

    def __init__(self, rate: float, capacity: float | None = None):
        self.rate = float(rate)
        self.capacity = capacity if capacity is not None else max(1.0, 0.2 * self.rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self, now: float | None = None) -> int:
        if self.rate <= 0:
            return 1 << 30
        self._refill(time.monotonic() if now is None else now)
        return int(self.tokens)

    def take(self, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        self._refill(time.monotonic())
        return max(0.0, (1.0 - self.tokens) / self.rate)


class _Conn:
    """State of one connection attempt (lives in the reporter thread)."""

    def __init__(self, session: int):
        self.session = session
        self.connack = None  # ReasonCode once CONNACK arrived
        self.lost = False
        self.lost_reason = ""
        self.last_error = ""
        self.inflight: dict[int, tuple[str, str]] = {}  # mid -> (kind, key)
        self.keys: set[str] = set()  # scan ids / summary ids waiting for a PUBACK
        self.offline_mid: int | None = None
        self.offline_acked = False


class Reporter:
    """Publishes the outbox over MQTT from its own thread. See the module docstring.

    tls: (ca, cert, key) file paths, or None for a plain connection.
    session_source: called before a connection attempt; returns the next
    session number (the caller persists it; it must increase).
    subscriptions: {topic filter: callback(topic, payload bytes)}.
    confirm_timeout: seconds before an unconfirmed row is sent again;
    max_awaiting: rows sent and not yet confirmed before the backlog waits;
    summary_poll: seconds between sends of the unconfirmed overflow summaries.
    """

    def __init__(self, outbox: Outbox, kiosk_id: str, host: str = "localhost", port: int = 8883,
                 tls: Sequence[str] | None = None, keepalive: int = 30,
                 replay_rate: float = 50.0,
                 session_source: Callable[[], int] | None = None,
                 subscriptions: Mapping[str, Callback] | None = None, *,
                 window: int = 20, backoff: tuple[float, float] = (1.0, 30.0),
                 connect_timeout: float = 5.0, client_id: str | None = None,
                 confirm_timeout: float = CONFIRM_TIMEOUT, max_awaiting: int = MAX_AWAITING,
                 summary_poll: float = SUMMARY_POLL,
                 brokers: Sequence[tuple[str, int]] | None = None,
                 failover_after: float = FAILOVER_AFTER, primary_retry: float = PRIMARY_RETRY):
        if not messages.KIOSK_ID.match(kiosk_id):
            raise ValueError(f"bad kiosk id {kiosk_id!r}")
        self.outbox = outbox
        self.kiosk_id = kiosk_id
        self.client_id = client_id or kiosk_id
        self.brokers = [(h, int(p)) for h, p in brokers] if brokers else [(host, int(port))]
        self._at = 0  # the broker of this (or the next) connection
        self._switch: tuple[int, str] | None = None  # (broker index, why): move after this one
        self._silent_moves = 0  # moves for silence since the last confirmation
        self.failover_after = max(0.1, float(failover_after))
        self.primary_retry = max(0.1, float(primary_retry))
        self.tls = TLSFiles(*tls) if tls else None
        self.keepalive = int(keepalive)
        self.replay_rate = float(replay_rate)
        self.window = max(1, int(window))
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.connect_timeout = float(connect_timeout)
        self.confirm_timeout = max(0.1, float(confirm_timeout))
        self.max_awaiting = max(1, int(max_awaiting))
        self.summary_poll = max(0.1, float(summary_poll))
        if session_source is None:
            counter = iter(range(1, 1 << 62))
            session_source = lambda: next(counter)  # noqa: E731  (tests, demos)
        self._session_source = session_source
        self._subs: dict[str, tuple[int, Callback]] = {}  # filter -> (subscription id, cb)
        self._subs_lock = threading.Lock()
        self._sub_ids = iter(range(1, 268_435_456))  # MQTT 5 subscription ids: 1..2^28-1
        for topic, callback in (subscriptions or {}).items():
            self._subs[topic] = (next(self._sub_ids), callback)
        # renewed on every connection like the others (clean start: a confirmation sent
        # while the kiosk was away is lost, the rows it named are sent again instead)
        self._confirm_topic = messages.confirm_topic(kiosk_id)
        self._subs[self._confirm_topic] = (next(self._sub_ids), self._on_confirm)
        # delivery state, reporter thread only
        self._awaiting: OrderedDict[str, float] = OrderedDict()  # scan id -> sent (monotonic)
        self._cursor: int | None = None  # Row.cursor of the last backlog row sent
        self._confirmed_scans: list[str] = []  # confirmed, not yet deleted
        self._confirmed_summaries: list[str] = []
        self._progress = time.monotonic()  # last confirmation, or since when one is due
        self._silence_warned = False
        self._latencies: deque[float] = deque(maxlen=LATENCIES)
        self._latency_lock = threading.Lock()
        self._commands: deque = deque()
        self._fresh: deque[str] = deque(maxlen=1000)
        self._more = True  # the outbox may hold rows not yet looked at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._connected = False
        self._client: mqtt.Client | None = None
        self._session = 0
        self._spare_session: int | None = None
        self._last_failure = ""
        self._hold_until = 0.0
        # acked: PUBACKs; confirmed: rows deleted on a confirmation; resent: rows sent
        # again after the confirmation timeout; confirm_invalid: confirmations ignored
        self.stats = {"connects": 0, "attempts": 0, "published": 0, "acked": 0, "rejected": 0,
                      "heartbeats": 0, "summaries": 0, "confirmations": 0, "confirmed": 0,
                      "confirmed_summaries": 0, "confirm_invalid": 0, "resent": 0,
                      "moves": 0}

    # --- public API (any thread) -------------------------------------------
    @property
    def host(self) -> str:
        return self.brokers[self._at][0]

    @property
    def port(self) -> int:
        return self.brokers[self._at][1]

    @property
    def broker(self) -> str:
        """"host:port" of the current (or next) broker, as heartbeats name it."""
        return messages.broker_text(*self.brokers[self._at])

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def session(self) -> int:
        """Session number of the current (or last) connection; 0 before the first."""
        return self._session

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"reporter-{self.kiosk_id}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: presence offline, wait for acks (bounded), DISCONNECT."""
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("reporter thread did not stop within %.0f s", timeout)
                return
        self._thread = None
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None

    def notify(self, scan_id: str | None = None) -> None:
        """A row was added: wake the sender. With scan_id, that row goes ahead of
        any backlog (a live scan is not held behind an outage's replay)."""
        if scan_id is not None:
            self._fresh.append(scan_id)
        self._more = True
        self._wake()

    def latency(self, q: float = 0.5) -> float | None:
        """Quantile q of the recent confirmation latencies (seconds from add() to the
        row's deletion on the fleet's confirmation); None before the first."""
        with self._latency_lock:
            values = sorted(self._latencies)
        if not values:
            return None
        return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]

    def latencies(self) -> list[float]:
        with self._latency_lock:
            return list(self._latencies)

    def awaiting(self) -> int:
        """Rows sent on this connection and not yet confirmed."""
        return len(self._awaiting)

    def publish_heartbeat(self, doc: dict) -> bool:
        """Queue a heartbeat (QoS 1, not retained, not via the outbox).

        The reporter sets 'session' to the connection's session and fills
        'kiosk', 'outbox', 'overflow', 'seq' and 'confirmed' if missing. False (dropped) while
        disconnected: a heartbeat is only worth sending now.
        """
        if not self._connected:
            return False
        self._commands.append(("heartbeat", dict(doc)))
        self._wake()
        return True

    def subscribe(self, topic: str, callback: Callback) -> None:
        """Subscribe (QoS 1) now if connected and again on every connection;
        callback(topic, payload) runs in the reporter thread."""
        with self._subs_lock:
            sub_id = self._subs[topic][0] if topic in self._subs else next(self._sub_ids)
            self._subs[topic] = (sub_id, callback)
        self._commands.append(("subscribe", topic))
        self._wake()

    def unsubscribe(self, topic: str) -> None:
        """Stop a subscription (now if connected; it is not renewed on reconnect)."""
        with self._subs_lock:
            if self._subs.pop(topic, None) is None:
                return
        self._commands.append(("unsubscribe", topic))
        self._wake()

    def subscriptions(self) -> list[str]:
        """The callers' subscriptions (not the reporter's own confirmation topic)."""
        with self._subs_lock:
            return [t for t in self._subs if t != self._confirm_topic]

    # --- thread ------------------------------------------------------------
    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except OSError:  # buffer full (already awake) or closed
                pass

    def _fail(self, message: str) -> None:
        """Log a connection failure; repeats of the same failure only at DEBUG."""
        if message != self._last_failure:
            log.warning("%s", message)
            self._last_failure = message
        else:
            log.debug("%s (again)", message)

    def _run(self) -> None:
        delay = self.backoff[0]
        failed = 0  # attempts in a row that did not connect
        while not self._stop.is_set():
            try:
                up = self._connection()
            except Exception:  # never let the reporter thread die
                log.exception("reporter: unexpected error; reconnecting")
                up = False
            self._connected = False
            if self._stop.is_set():
                break
            if self._switch is not None:  # this connection ended to move on: at once
                (self._at, why), self._switch = self._switch, None
                log.warning("moving to MQTT broker %s: %s", self.broker, why)
                failed = 0
                continue
            if up:
                delay = self.backoff[0]
                failed = 0
            else:
                failed += 1
                if len(self.brokers) > 1:
                    self._at = (self._at + 1) % len(self.brokers)
                    if failed % len(self.brokers):  # not a whole round yet: the next at once
                        log.info("trying MQTT broker %s", self.broker)
                        continue
            wait = min(self.backoff[1], delay * random.uniform(1.0, 1.25))
            delay = min(self.backoff[1], delay * 2)
            log.debug("reconnecting in %.1f s", wait)
            self._stop.wait(wait)
        log.debug("reporter thread ends")

    def _make_client(self, conn: _Conn) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        client.connect_timeout = self.connect_timeout
        client.max_inflight_messages = self.window + 10  # + presence, heartbeats, summaries
        will = messages.presence(kiosk=self.kiosk_id, session=conn.session, state="offline",
                                 broker=self.broker)
        client.will_set(messages.presence_topic(self.kiosk_id), messages.encode(will), qos=1,
                        retain=True)
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls.ca)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            client.tls_set_context(context)

        def on_connect(_c, _u, _flags, reason, _props):
            conn.connack = reason

        def on_disconnect(_c, _u, _flags, reason, _props):
            conn.lost = True
            conn.lost_reason = str(reason)

        def on_publish(_c, _u, mid, reason, _props):
            entry = conn.inflight.pop(mid, None)
            if mid == conn.offline_mid:
                conn.offline_acked = True
            if entry is None:
                return
            kind, key = entry
            conn.keys.discard(key)  # the window slot is free; the row waits for the fleet
            if reason is not None and reason.is_failure:
                self.stats["rejected"] += 1
                self._hold_until = time.monotonic() + REJECT_HOLD
                if key in self._awaiting:  # sent again once the timeout runs from now
                    self._awaiting.move_to_end(key)
                    self._awaiting[key] = time.monotonic()
                log.error("broker rejected %s %s: %s; it stays in the outbox, scan publishing "
                          "pauses %.0f s", kind, key, reason, REJECT_HOLD)
                return
            self.stats["acked"] += 1

        def on_message(_c, _u, msg):
            # MQTT 5 subscription identifiers say which subscription(s) a copy is
            # for, so overlapping filters call each callback once per copy meant for it
            ids = getattr(msg.properties, "SubscriptionIdentifier", None) or []
            with self._subs_lock:
                targets = [cb for t, (sid, cb) in self._subs.items()
                           if (sid in ids if ids else mqtt.topic_matches_sub(t, msg.topic))]
            for callback in targets:
                try:
                    callback(msg.topic, bytes(msg.payload))
                except Exception:
                    log.exception("subscription callback for %s failed", msg.topic)

        def on_log(_c, _u, level, text):
            if level == mqtt.MQTT_LOG_ERR:
                conn.last_error = text
            _paho_log.debug("%s", text)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_log = on_log
        return client

    def _pump(self, client: mqtt.Client, conn: _Conn, timeout: float) -> None:
        """One round of network I/O: wait for the socket or a wake-up, then read/write."""
        sock = client.socket()
        if sock is None:
            conn.lost = True
            return
        try:
            buffered = sock.pending() if hasattr(sock, "pending") else 0
        except (OSError, ValueError):
            buffered = 0
        readers = [sock, self._wake_r]
        writers = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select(readers, writers, [],
                                                  0.0 if buffered else max(0.0, timeout))
        except (OSError, ValueError) as exc:
            conn.lost = True
            conn.last_error = conn.last_error or str(exc)
            return
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        if sock in readable or buffered:
            client.loop_read()
        if client.socket() is not None and (writable or client.want_write()):
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()
        if client.socket() is None:
            conn.lost = True

    @staticmethod
    def _drop(client: mqtt.Client) -> None:
        sock = client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _connection(self) -> bool:
        """One connection: connect, work until it ends. True if CONNACK succeeded."""
        if self._spare_session is None:
            self._spare_session = int(self._session_source())
        conn = _Conn(self._spare_session)
        where = f"{self.host}:{self.port}"
        self.stats["attempts"] += 1
        try:
            client = self._make_client(conn)
        except (OSError, ValueError) as exc:  # unreadable TLS files and the like
            self._fail(f"MQTT TLS set-up failed ({self.tls}): {exc}")
            return False
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True)
        except (OSError, ValueError) as exc:
            self._drop(client)
            self._fail(f"cannot connect to MQTT broker {where}: {exc}")
            return False  # the CONNECT never left: the session number is reused
        self._spare_session = None
        self._session = conn.session
        self._client = client  # the live client, for diagnostics and tests only

        deadline = time.monotonic() + self.connect_timeout
        while conn.connack is None:
            if self._stop.is_set() or conn.lost or time.monotonic() > deadline:
                self._drop(client)
                if not self._stop.is_set():
                    why = conn.last_error or conn.lost_reason or "no CONNACK in time"
                    self._fail(f"MQTT broker {where} closed the connection before CONNACK: "
                               f"{why}")
                return False
            self._pump(client, conn, 0.2)
        if conn.connack.is_failure:
            self._drop(client)
            self._fail(f"MQTT broker {where} refused the connection: {conn.connack}")
            return False

        self._last_failure = ""
        self._connected = True
        self.stats["connects"] += 1
        log.info("connected to MQTT broker %s as %s, session %d", where, self.client_id,
                 conn.session)
        try:
            self._serve(client, conn)
        finally:
            self._connected = False
            self._drop(client)
        return True

    def _serve(self, client: mqtt.Client, conn: _Conn) -> None:
        online = messages.presence(kiosk=self.kiosk_id, session=conn.session, state="online",
                                   broker=self.broker)
        client.publish(messages.presence_topic(self.kiosk_id), messages.encode(online), qos=1,
                       retain=True)
        # queued subscribe() calls are covered by subscribing to everything now
        for _ in range(len(self._commands)):
            command = self._commands.popleft()
            if command[0] not in ("subscribe", "unsubscribe"):  # a new session has neither
                self._commands.append(command)
        with self._subs_lock:
            topics = list(self._subs)
        for topic in topics:
            self._subscribe(client, topic)
        bucket = TokenBucket(self.replay_rate)
        # a new connection starts over: whatever was sent before and is still in the
        # outbox is unconfirmed, and goes out again oldest first
        self._awaiting.clear()
        self._cursor = None
        self._progress = time.monotonic()
        self._silence_warned = False
        self._more = True
        next_summaries = 0.0
        next_poll = 0.0
        stopping_until = None
        connected_at = time.monotonic()

        while True:
            now = time.monotonic()
            self._settle(conn)  # first: confirmations read just before a loss count
            if conn.lost or client.socket() is None:
                log.warning("lost the MQTT connection to %s:%d (session %d): %s", self.host,
                            self.port, conn.session,
                            conn.last_error or conn.lost_reason or "socket closed")
                return
            if self._stop.is_set():
                if stopping_until is None:
                    offline = messages.presence(kiosk=self.kiosk_id, session=conn.session,
                                                state="offline", cause="stopped",
                                                broker=self.broker)
                    info = client.publish(messages.presence_topic(self.kiosk_id),
                                          messages.encode(offline), qos=1, retain=True)
                    conn.offline_mid = info.mid
                    stopping_until = now + STOP_WAIT
                if conn.offline_acked or now > stopping_until:
                    if not conn.offline_acked:
                        log.warning("no PUBACK for presence offline; disconnecting anyway")
                    client.disconnect()
                    end = time.monotonic() + 1.0
                    while client.socket() is not None and time.monotonic() < end:
                        self._pump(client, conn, 0.05)
                    self._settle(conn)
                    log.info("disconnected from MQTT broker (session %d)", conn.session)
                    return
                self._pump(client, conn, 0.05)
                continue

            move = self._move(now, connected_at)
            if move is not None:
                self._switch = move
                client.disconnect()  # DISCONNECT: no will, the new session supersedes
                end = time.monotonic() + 1.0
                while client.socket() is not None and time.monotonic() < end:
                    self._pump(client, conn, 0.05)
                self._settle(conn)
                return
            self._commands_run(client, conn)
            if now >= next_summaries:
                next_summaries = now + self.summary_poll
                self._send_summaries(client, conn, bucket)
            if self._more or now >= next_poll:
                next_poll = now + 5.0
                self._fill(client, conn, bucket)
            due = self._resend(client, conn, bucket)
            timeout = 1.0
            if self._more and len(conn.inflight) < self.window and \
                    len(self._awaiting) < self.max_awaiting:
                timeout = min(timeout, max(0.005, bucket.wait()))
            if due is not None:
                timeout = min(timeout, max(0.02, due - now, bucket.wait()))
            if now < self._hold_until:
                timeout = min(timeout, self._hold_until - now)
            self._pump(client, conn, timeout)

    def _move(self, now: float, connected_at: float) -> tuple[int, str] | None:
        """(broker index, why) when this connection should end for another broker."""
        count = len(self.brokers)
        if count < 2:
            return None
        if self._at != 0 and now - connected_at >= self.primary_retry:
            self.stats["moves"] += 1
            return 0, f"back to the first broker after {self.primary_retry:g} s"
        # a round of silent brokers: the fleet may be down, not a bridge: wait longer
        rounds = self._silent_moves // count
        patience = min(SILENCE_CAP, self.failover_after * (2 ** rounds))
        if self._awaiting and now - self._progress >= patience and \
                now - connected_at >= patience:
            self._silent_moves += 1
            self.stats["moves"] += 1
            return ((self._at + 1) % count,
                    f"no confirmation from the fleet for {now - self._progress:.0f} s "
                    f"through {self.broker} with {len(self._awaiting)} row(s) waiting")
        return None

    def _settle(self, conn: _Conn) -> None:
        """Delete the rows the fleet confirmed (one transaction per batch)."""
        if self._confirmed_scans:
            batch, self._confirmed_scans = self._confirmed_scans, []
            try:
                gone = self.outbox.confirm(batch)
            except Exception:
                self._confirmed_scans[:0] = batch  # retry next round
                raise
            now = time.time()
            with self._latency_lock:
                self._latencies.extend(max(0.0, now - created) for created in gone.values())
            for scan_id in batch:
                self._awaiting.pop(scan_id, None)
            self.stats["confirmed"] += len(gone)
            self._more = True  # room in the awaiting set
        if self._confirmed_summaries:
            batch, self._confirmed_summaries = self._confirmed_summaries, []
            try:
                gone = self.outbox.confirm_summaries(batch)
            except Exception:
                self._confirmed_summaries[:0] = batch
                raise
            self.stats["confirmed_summaries"] += gone

    def _on_confirm(self, topic: str, payload: bytes) -> None:
        """A confirmation from the fleet (reporter thread, inside the network read):
        only noted here, the rows are deleted by _settle in one transaction."""
        try:
            if topic != self._confirm_topic:
                raise messages.MessageError(f"on topic {topic[:100]!r}")
            doc = messages.parse_confirm(payload, self.kiosk_id)
        except Exception as exc:  # parse_confirm is total; this must never raise anyway
            self.stats["confirm_invalid"] += 1
            log.warning("ignored an invalid confirmation (%d bytes): %s", len(payload),
                        str(exc)[:200])
            return
        self.stats["confirmations"] += 1
        self._confirmed_scans += doc["scans"]
        self._confirmed_summaries += doc["summaries"]
        self._silent_moves = 0
        self._progress = time.monotonic()
        self._silence_warned = False

    def _subscribe(self, client: mqtt.Client, topic: str) -> None:
        with self._subs_lock:
            entry = self._subs.get(topic)
        if entry is None:
            return
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = entry[0]
        client.subscribe(topic, qos=1, properties=props)

    def _commands_run(self, client: mqtt.Client, conn: _Conn) -> None:
        while self._commands:
            kind, arg = self._commands.popleft()
            if kind == "subscribe":
                self._subscribe(client, arg)
            elif kind == "unsubscribe":
                client.unsubscribe(arg)
            elif kind == "heartbeat":
                arg["session"] = conn.session
                arg["broker"] = self.broker
                arg.setdefault("kiosk", self.kiosk_id)
                arg.setdefault("outbox", self.outbox.depth())
                arg.setdefault("overflow", self.outbox.overflow())
                if "seq" not in arg and "confirmed" not in arg:
                    arg["seq"], arg["confirmed"] = self.outbox.watermarks()
                client.publish(messages.heartbeat_topic(self.kiosk_id), messages.encode(arg),
                               qos=1)
                self.stats["heartbeats"] += 1

    def _publish(self, client: mqtt.Client, conn: _Conn, kind: str, key: str, topic: str,
                 payload: bytes) -> bool:
        info = client.publish(topic, payload, qos=1)
        if info.mid is None:
            log.warning("could not publish %s %s: %s", kind, key, mqtt.error_string(info.rc))
            return False
        conn.inflight[info.mid] = (kind, key)
        conn.keys.add(key)
        self.stats["published"] += 1
        return True

    def _send_summaries(self, client, conn: _Conn, bucket: TokenBucket) -> None:
        if time.monotonic() < self._hold_until or self.outbox.summaries() == 0:
            return
        for s in self.outbox.take_summaries(self.window):
            if s.id in conn.keys:
                continue
            payload = messages.encode(messages.summary(
                summary_id=s.id, kiosk=self.kiosk_id, hour=s.hour, decision=s.decision,
                reason=s.reason, count=s.count, first=s.first, last=s.last))
            if self._publish(client, conn, "summary", s.id, messages.summary_topic(self.kiosk_id),
                             payload):
                self.stats["summaries"] += 1
                bucket.take()

    def _sent(self, scan_id: str, now: float) -> None:
        if not self._awaiting:
            self._progress = now  # a confirmation is due from now on
        self._awaiting[scan_id] = now
        self._awaiting.move_to_end(scan_id)

    def _confirm_wait(self, now: float) -> float:
        """The confirmation timeout now: confirm_timeout while confirmations arrive;
        while none does, half the silence (so repeats go out at 1, 2, 4, 8 ... x the
        timeout), at most CONFIRM_BACKOFF x; back to normal at the next confirmation."""
        silence = now - self._progress
        return max(self.confirm_timeout,
                   min(CONFIRM_BACKOFF * self.confirm_timeout, silence / 2))

    def _resend(self, client: mqtt.Client, conn: _Conn, bucket: TokenBucket) -> float | None:
        """Send again the rows whose confirmation is overdue, oldest first, through the
        token bucket. Returns when the next one falls due (None: nothing waits)."""
        if not self._awaiting:
            return None
        now = time.monotonic()
        wait = self._confirm_wait(now)
        if now - self._progress > 2 * CONFIRM_BACKOFF * self.confirm_timeout and \
                not self._silence_warned:
            self._silence_warned = True
            log.warning("no confirmation from the fleet for %.0f s; %d row(s) sent and waiting, "
                        "%d in the outbox (is the ingest running? may this kiosk read %s?)",
                        now - self._progress, len(self._awaiting), self.outbox.depth(),
                        self._confirm_topic)
        if now < self._hold_until:
            return self._hold_until
        sent: list[str] = []
        while self._awaiting and len(conn.inflight) < self.window:
            scan_id, at = next(iter(self._awaiting.items()))
            if now - at < wait:
                break
            if scan_id in conn.keys:  # still no PUBACK: the broker is slow, not the fleet
                self._awaiting.move_to_end(scan_id)
                self._awaiting[scan_id] = now
                continue
            row = self.outbox.get(scan_id)
            if row is None:  # confirmed in the meantime
                del self._awaiting[scan_id]
                continue
            if not bucket.take():
                break
            if not self._publish(client, conn, "scan", row.scan_id, row.topic, row.payload):
                break
            self._sent(scan_id, now)
            self.stats["resent"] += 1
            sent.append(scan_id)
        if sent:
            self.outbox.attempted(sent)
            # the sign of a broker that acknowledged and then lost them (or a slow fleet)
            log.info("sent %d row(s) again: no confirmation within %.0f s", len(sent), wait)
        if not self._awaiting or len(conn.inflight) >= self.window:
            return None  # nothing waits, or a PUBACK (which wakes the loop) comes first
        return next(iter(self._awaiting.values())) + wait

    def _fill(self, client: mqtt.Client, conn: _Conn, bucket: TokenBucket) -> None:
        if time.monotonic() < self._hold_until:
            return
        now = time.monotonic()
        sent: list[str] = []
        # live scans first, outside the rate limit; they may pass a full awaiting set by
        # one window, so that a person's scan is not held behind a backlog
        while self._fresh and len(conn.inflight) < self.window and \
                len(self._awaiting) < self.max_awaiting + self.window:
            scan_id = self._fresh.popleft()
            if scan_id in self._awaiting:
                continue
            row = self.outbox.get(scan_id)
            if row is not None and self._publish(client, conn, "scan", row.scan_id, row.topic,
                                                 row.payload):
                self._sent(scan_id, now)
                sent.append(scan_id)
        # then the backlog, oldest first, rate-limited, while the awaiting set has room
        room = min(self.window - len(conn.inflight), bucket.available(),
                   self.max_awaiting - len(self._awaiting))
        if room > 0:
            self._more = False  # before the query: a notify() from now on is not lost
            while room > 0:
                # a few more than room: rows that went ahead as live scans are skipped
                limit = room + 20
                rows = self.outbox.pending_after(self._cursor, limit)
                stalled = False
                for row in rows:
                    if row.scan_id in self._awaiting:  # went ahead as a live scan
                        self._cursor = row.cursor
                        continue
                    if room <= 0 or not bucket.take() or not self._publish(
                            client, conn, "scan", row.scan_id, row.topic, row.payload):
                        stalled = True
                        break
                    self._sent(row.scan_id, now)
                    self._cursor = row.cursor
                    sent.append(row.scan_id)
                    room -= 1
                if stalled or room <= 0:
                    self._more = True
                    break
                if len(rows) < limit:
                    break  # the end of the outbox
        if sent:
            self.outbox.attempted(sent)

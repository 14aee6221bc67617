"""The kiosk's MQTT reporter: outbox rows to the broker, presence, heartbeats, bundles.

One thread owns one paho-mqtt 2.x client per connection (MQTT 5, clean start)
and does all network work itself (its own select loop; paho's automatic
reconnect is not used), so that every connection gets a NEW last will:

  * before each CONNECT: session = session_source() (a number the caller
    persists and increases), last will = presence ``offline`` with that session
    (retained, QoS 1). A number whose CONNECT never left the kiosk (TCP or TLS
    connect failed) is reused for the next attempt, so a long outage does not
    burn through numbers;
  * after CONNACK: presence ``online`` with the session (retained, QoS 1), then
    every subscription again (bundle topics are retained: they arrive again);
  * outbox rows are published with QoS 1 on their own topic; a row is deleted
    only when the broker's PUBACK for that message id arrived with a success
    reason code (a PUBACK that reports a failure, e.g. "not authorized", keeps
    the row and pauses scan publishing for 30 s);
  * the backlog is replayed at most ``replay_rate`` messages/s (token bucket,
    burst 0.2 s worth) with at most ``window`` messages waiting for PUBACK;
    a scan passed to notify(scan_id) is sent ahead of the backlog, outside the
    rate limit;
  * a lost connection is retried with jittered exponential backoff (1 s doubling
    to 30 s by default; reset by a successful CONNACK);
  * stop(): presence ``offline`` (retained, QoS 1), wait for its PUBACK (which
    also means every earlier message was acknowledged), then DISCONNECT, so
    the broker does not publish the will and the fleet sees a graceful stop.

Broker, network and TLS errors are logged and retried, never raised.
Wire format: docs/protocol.md.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
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
STOP_WAIT = 3.0  # seconds stop() waits for the PUBACK of presence offline


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
        self.keys: set[str] = set()  # scan ids / summary ids in flight
        self.acked_scans: list[str] = []
        self.acked_summaries: list[str] = []
        self.offline_mid: int | None = None
        self.offline_acked = False


class Reporter:
    """Publishes the outbox over MQTT from its own thread. See the module docstring.

    tls: (ca, cert, key) file paths, or None for a plain connection.
    session_source: called before a connection attempt; returns the next
    session number (the caller persists it; it must increase).
    subscriptions: {topic filter: callback(topic, payload bytes)}.
    """

    def __init__(self, outbox: Outbox, kiosk_id: str, host: str, port: int = 8883,
                 tls: Sequence[str] | None = None, keepalive: int = 30,
                 replay_rate: float = 50.0,
                 session_source: Callable[[], int] | None = None,
                 subscriptions: Mapping[str, Callback] | None = None, *,
                 window: int = 20, backoff: tuple[float, float] = (1.0, 30.0),
                 connect_timeout: float = 5.0, client_id: str | None = None):
        if not messages.KIOSK_ID.match(kiosk_id):
            raise ValueError(f"bad kiosk id {kiosk_id!r}")
        self.outbox = outbox
        self.kiosk_id = kiosk_id
        self.client_id = client_id or kiosk_id
        self.host = host
        self.port = int(port)
        self.tls = TLSFiles(*tls) if tls else None
        self.keepalive = int(keepalive)
        self.replay_rate = float(replay_rate)
        self.window = max(1, int(window))
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.connect_timeout = float(connect_timeout)
        if session_source is None:
            counter = iter(range(1, 1 << 62))
            session_source = lambda: next(counter)  # noqa: E731  (tests, demos)
        self._session_source = session_source
        self._subs: dict[str, tuple[int, Callback]] = {}  # filter -> (subscription id, cb)
        self._subs_lock = threading.Lock()
        self._sub_ids = iter(range(1, 268_435_456))  # MQTT 5 subscription ids: 1..2^28-1
        for topic, callback in (subscriptions or {}).items():
            self._subs[topic] = (next(self._sub_ids), callback)
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
        self.stats = {"connects": 0, "attempts": 0, "published": 0, "acked": 0, "rejected": 0,
                      "heartbeats": 0, "summaries": 0}

    # --- public API (any thread) -------------------------------------------
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

    def publish_heartbeat(self, doc: dict) -> bool:
        """Queue a heartbeat (QoS 1, not retained, not via the outbox).

        The reporter sets 'session' to the connection's session and fills
        'kiosk', 'outbox' and 'overflow' if missing. False (dropped) while
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
        with self._subs_lock:
            return list(self._subs)

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
        while not self._stop.is_set():
            try:
                up = self._connection()
            except Exception:  # never let the reporter thread die
                log.exception("reporter: unexpected error; reconnecting")
                up = False
            self._connected = False
            if self._stop.is_set():
                break
            if up:
                delay = self.backoff[0]
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
        will = messages.presence(kiosk=self.kiosk_id, session=conn.session, state="offline")
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
            if reason is not None and reason.is_failure:
                self.stats["rejected"] += 1
                conn.keys.discard(key)
                self._hold_until = time.monotonic() + REJECT_HOLD
                log.error("broker rejected %s %s: %s; it stays in the outbox, scan publishing "
                          "pauses %.0f s", kind, key, reason, REJECT_HOLD)
                return
            self.stats["acked"] += 1
            (conn.acked_scans if kind == "scan" else conn.acked_summaries).append(key)

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
        online = messages.presence(kiosk=self.kiosk_id, session=conn.session, state="online")
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
        self._more = True
        next_summaries = 0.0
        next_poll = 0.0
        stopping_until = None

        while True:
            now = time.monotonic()
            self._settle(conn)  # first: PUBACKs read just before a loss still count
            if conn.lost or client.socket() is None:
                log.warning("lost the MQTT connection to %s:%d (session %d): %s", self.host,
                            self.port, conn.session,
                            conn.last_error or conn.lost_reason or "socket closed")
                return
            if self._stop.is_set():
                if stopping_until is None:
                    offline = messages.presence(kiosk=self.kiosk_id, session=conn.session,
                                                state="offline", cause="stopped")
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

            self._commands_run(client, conn)
            if now >= next_summaries:
                next_summaries = now + SUMMARY_POLL
                self._send_summaries(client, conn, bucket)
            if self._more or now >= next_poll:
                next_poll = now + 5.0
                self._fill(client, conn, bucket)
            timeout = 1.0
            if self._more and len(conn.inflight) < self.window:
                timeout = min(timeout, max(0.005, bucket.wait()))
            if now < self._hold_until:
                timeout = min(timeout, self._hold_until - now)
            self._pump(client, conn, timeout)

    def _settle(self, conn: _Conn) -> None:
        """Delete acknowledged rows (one transaction per batch)."""
        if conn.acked_scans:
            batch, conn.acked_scans = conn.acked_scans, []
            try:
                self.outbox.remove_many(batch)
            except Exception:
                conn.acked_scans[:0] = batch  # retry next round; still in conn.keys
                raise
            conn.keys.difference_update(batch)
            self._more = True
        if conn.acked_summaries:
            batch, conn.acked_summaries = conn.acked_summaries, []
            for sid in batch:
                self.outbox.remove_summary(sid)
            conn.keys.difference_update(batch)

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
                arg.setdefault("kiosk", self.kiosk_id)
                arg.setdefault("outbox", self.outbox.depth())
                arg.setdefault("overflow", self.outbox.overflow())
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

    def _fill(self, client: mqtt.Client, conn: _Conn, bucket: TokenBucket) -> None:
        if time.monotonic() < self._hold_until:
            return
        sent: list[str] = []
        # live scans first, outside the rate limit
        while self._fresh and len(conn.inflight) < self.window:
            scan_id = self._fresh.popleft()
            if scan_id in conn.keys:
                continue
            row = self.outbox.get(scan_id)
            if row is not None and self._publish(client, conn, "scan", row.scan_id, row.topic,
                                                 row.payload):
                sent.append(row.scan_id)
        # then the backlog, oldest first, rate-limited
        room = min(self.window - len(conn.inflight), bucket.available())
        if room > 0:
            self._more = False  # before the query: a notify() from now on is not lost
            rows = self.outbox.pending(len(conn.keys) + room)
            fresh_rows = [r for r in rows if r.scan_id not in conn.keys]
            for row in fresh_rows[:room]:
                if not bucket.take():
                    break
                if self._publish(client, conn, "scan", row.scan_id, row.topic, row.payload):
                    sent.append(row.scan_id)
            if len(fresh_rows) > room:
                self._more = True
        if sent:
            self.outbox.attempted(sent)

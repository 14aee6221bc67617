"""Publishing the signed bundles to MQTT: retained, QoS 1 (docs/lists.md).

Topics (greengate/messages.py):
- `gg/v1/bundle/{dep}/trust`, `.../policy`, `.../valuesets`, `.../status` (full snapshot),
  `.../status-head`
- `gg/v1/bundle/{dep}/status-delta/{base}`: the delta from status version `base` to the
  current one, for each base in the window.
- `gg/v1/roster/{kiosk}`: the current roster bundle of the kiosk's organisation, for each
  kiosk its organisation's newest roster names (fleet/rosters.py), readable by that kiosk
  alone; `gg/v1/roster/{kiosk}/delta`: the roster-delta from the organisation's previous
  roster to it, or an empty payload (clears it) when the previous roster did not name
  the kiosk.

Order for a new status version: the deltas and the snapshot first, then the
retained deltas that fell out of the window are cleared (an empty retained
payload deletes the broker's copy), then, once the broker acknowledged all
of that, the head: a kiosk that reads the head finds what it announces.

The database is the source of truth and MQTT a cache of it: the publisher
only reads PublishedBundle rows. A failed publication is logged and retried
with backoff; nothing in the database depends on it. On every (re)connect the
whole current set of every deployment is published again (a broker restarted
without its retained store gets it back), and the retained delta topics the
broker still holds are read back so that any stale one left by an earlier
run is cleared too.

    publisher = Publisher(config, sessions).start()   # a thread; connects, retries
    publisher.notify("hcmc", {"status"})              # after a change (non-blocking)
    publisher.publish_all("hcmc", timeout=30)         # now, and wait for the acks
    publisher.stop()

A connection that fails is logged with its reason and host:port at once, repeats at most
once a minute (fleet/mqtt_trouble.py). `give_up=SECONDS` (one-shot commands): wait()
answers False as soon as the reason cannot heal (a TLS verdict, a refusal), or after
SECONDS of failing attempts, with the reason in `problem`.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from greengate import messages

from . import bundles, mqtt_identity, rosters
from .mqtt_trouble import Trouble

log = logging.getLogger(__name__)

# "status" = deltas + snapshot + head; "roster" = each kiosk's organisation's roster
KINDS = ("trust", "policy", "status", "valuesets", "roster")
WHOLE = ("trust", "policy", "valuesets")  # one retained bundle each
ACK_TIMEOUT = 30.0
# one-shot commands (`greengate-fleet bundles ...`): seconds of failing connection attempts
# before they give up; a TLS verdict or a refusal gives up at once (it does not heal)
GIVE_UP = 8.0


class PublishFailed(Exception):
    pass


class Publisher:
    def __init__(self, config, sessions=None, *, deployments=None, client_id: str | None = None,
                 backoff: tuple[float, float] = (0.5, 60.0), ack_timeout: float = ACK_TIMEOUT,
                 give_up: float | None = None):
        self.config = config
        if sessions is None:
            from .db import make_engine, make_sessions
            sessions = make_sessions(make_engine(config.database_url))
        self.sessions = sessions
        self.deployments = list(deployments or config.fleet.deployments)
        # one identity per connected publisher: gunicorn workers run one each
        self.identity = mqtt_identity.claim(
            config, "web", client_id or (f"{config.mqtt.client_id}-publisher-{os.getpid()}-"
                                         f"{secrets.token_hex(3)}"))
        self.client_id = self.identity.client_id
        self.backoff = backoff
        self.ack_timeout = ack_timeout
        self.problem: str | None = "not connected yet"
        # None: retry for ever (the web server's); else wait() answers False once the
        # broker could not be reached for that long, or at once for a permanent reason
        self.give_up = give_up
        self.gave_up = False
        self.trouble = Trouble("bundle publisher", config, log)
        self.trouble.on_failure(self._connect_failed)
        self.stats = {"published": 0, "cleared": 0, "failures": 0, "connects": 0}
        self._cond = threading.Condition()
        self._pending: dict[str, set[str]] = {}
        self._requested: dict[str, int] = {}  # deployment -> sequence of the latest request
        self._done: dict[str, int] = {}  # deployment -> sequence published completely
        self._seq = 0
        self._busy = False
        self._retry_at = 0.0
        self._delay = backoff[0]
        self._connected = False
        self._stop = threading.Event()
        # per deployment: delta bases the broker may hold retained (published by us, or
        # seen retained when subscribing); cleared when they leave the window
        self._retained: dict[str, set[int]] = {d: set() for d in self.deployments}
        # per deployment: kiosk id -> roster version sent in this connection, so a roster
        # change re-sends one organisation's kiosks, not every kiosk's (forgotten on
        # connect: the broker may have lost its retained store)
        self._rosters_sent: dict[str, dict[str, int]] = {d: {} for d in self.deployments}
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._work, name="bundle-publisher", daemon=True)

    # --- MQTT -----------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.reconnect_delay_set(self.backoff[0], min(self.backoff[1], 30))
        client.max_inflight_messages = 100
        if cfg.tls:
            try:
                client.tls_set_context(mqtt_identity.tls_context(self.config, self.identity))
            except BaseException:
                self.identity.release()
                raise
        self.trouble.attach(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, _userdata, _flags, reason, _props):
        if reason.is_failure:
            self.trouble.refused(reason)  # logged there, rate-limited
            return
        self.trouble.connected()
        self.stats["connects"] += 1
        client.subscribe([(messages.status_delta_topic(d, 0).rsplit("/", 1)[0] + "/+", 1)
                          for d in self.deployments])
        with self._cond:
            self._connected = True
            self.gave_up = False
            self.problem = None
            self._retry_at = 0.0
            self._delay = self.backoff[0]
            for deployment in self.deployments:  # the broker may have lost its retained store
                self._rosters_sent[deployment] = {}
                self._request(deployment, set(KINDS))
            self._cond.notify_all()
        log.info("bundle publisher connected to %s:%s", self.config.mqtt.host,
                 self.config.mqtt.port)

    def _connect_failed(self, reason: str, permanent: bool) -> None:
        # logged by self.trouble (at once, then rate-limited); the lists stay in the
        # database and on HTTP meanwhile
        trouble = self.trouble
        with self._cond:
            self.problem = f"cannot connect to the broker {trouble.where}: {reason}"
            if self.give_up is not None and (
                    permanent or trouble.clock() - trouble.first_failure >= self.give_up):
                self.gave_up = True
            self._cond.notify_all()

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props):
        was = self._connected
        if not was and not self._stop.is_set():
            self.trouble.closed(reason)  # before a CONNACK: a TLS alert, most often
        with self._cond:
            self._connected = False
            if was and not self._stop.is_set():
                self.problem = f"disconnected from the broker: {reason}"
            self._cond.notify_all()
        if was and not self._stop.is_set():
            log.warning("bundle publisher lost the broker (%s); reconnecting", reason)

    def _on_message(self, _client, _userdata, msg):
        # Retained copies arrive right after our subscription: remember which delta
        # topics the broker holds, so that stale ones are cleared.
        if not msg.retain or not msg.payload:
            return
        parts = msg.topic.split("/")
        try:
            deployment, base = parts[3], int(parts[5])
        except (IndexError, ValueError):
            return
        with self._cond:
            if deployment in self._retained:
                self._retained[deployment].add(base)
                self._request(deployment, {"clear"})
                self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return self._connected

    # --- requests -------------------------------------------------------------
    def start(self) -> "Publisher":
        cfg = self.config.mqtt
        self._client.connect_async(cfg.host, cfg.port, keepalive=30)
        self._client.loop_start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        try:
            self._client.disconnect()
        except Exception:
            pass
        self._client.loop_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.identity.release()

    def _request(self, deployment: str, kinds: set[str]) -> int:
        self._seq += 1
        self._pending.setdefault(deployment, set()).update(kinds)
        self._requested[deployment] = self._seq
        return self._seq

    def notify(self, deployment: str, kinds=None) -> int:
        """Publish the current bundles of these kinds (default all) soon; returns at once."""
        kinds = set(kinds or KINDS)
        unknown = kinds - set(KINDS)
        if unknown:
            raise ValueError(f"not a published list kind: {', '.join(sorted(unknown))}")
        if deployment not in self.deployments:
            raise ValueError(f"deployment {deployment!r} is not one this publisher serves "
                             f"({', '.join(self.deployments)})")
        with self._cond:
            seq = self._request(deployment, kinds)
            self._cond.notify_all()
        return seq

    def publish_all(self, deployment: str, timeout: float = 30.0) -> bool:
        """Publish the whole current set of a deployment and wait until the broker has
        acknowledged it; False if that did not happen within `timeout` (it is retried)."""
        seq = self.notify(deployment)
        return self.wait(deployment, seq, timeout)

    def wait(self, deployment: str, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done.get(deployment, 0) < seq:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set() or (self.gave_up and not self._connected):
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once nothing is pending (tests, the CLI)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    # --- the worker ------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set() and not (
                        self._pending and self._connected and time.monotonic() >= self._retry_at):
                    wait = 1.0
                    if self._pending and self._connected:
                        wait = max(0.01, self._retry_at - time.monotonic())
                    self._cond.wait(wait)
                if self._stop.is_set():
                    return
                deployment = next(iter(self._pending))
                kinds = self._pending.pop(deployment)
                seq = self._requested[deployment]
                self._busy = True
            try:
                self._publish(deployment, kinds)
            except Exception as exc:  # anything: log, keep the work, retry later
                with self._cond:
                    self._pending.setdefault(deployment, set()).update(kinds)
                    self._busy = False
                    self.stats["failures"] += 1
                    self.problem = f"publishing {deployment} failed: {exc}"
                    self._retry_at = time.monotonic() + self._delay
                    self._delay = min(self.backoff[1], self._delay * 2)
                    self._cond.notify_all()
                log.warning("publishing the %s bundles (%s) failed: %s; retrying in %.1f s",
                            deployment, ", ".join(sorted(kinds)), exc, self._delay)
                continue
            with self._cond:
                self._busy = False
                self._delay = self.backoff[0]
                if self._done.get(deployment, 0) < seq:
                    self._done[deployment] = seq
                self._cond.notify_all()

    def _send(self, topic: str, payload: bytes):
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishFailed(f"{topic}: {mqtt.error_string(info.rc)}")
        return topic, info

    def _acked(self, sent) -> None:
        deadline = time.monotonic() + self.ack_timeout
        for topic, info in sent:
            try:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise PublishFailed(f"{topic}: {exc}") from None
            if not info.is_published():
                raise PublishFailed(f"{topic}: no acknowledgement from the broker within "
                                    f"{self.ack_timeout:.0f} s")

    def _publish(self, deployment: str, kinds: set[str]) -> None:
        with self.sessions() as session:
            if bundles.missing(session, deployment):
                bundles.ensure_issued(session, self.config, deployment)
            current = {k: bundles.latest(session, deployment, k)
                       for k in (*WHOLE, "status", "status-head")}
            delta_rows = bundles.deltas(session, deployment) if "status" in kinds or \
                "clear" in kinds else []
            # plain values: the session closes before the network work
            current = {k: (b.version, b.raw) for k, b in current.items() if b is not None}
            delta_list = [(d.base, d.raw) for d in delta_rows]
            roster_list = sorted(rosters.current_with_deltas(session, deployment).items()) \
                if "roster" in kinds else []
        with self._cond:
            known = dict(self._rosters_sent.get(deployment, {}))
        roster_list = [(k, v, raw, delta) for k, (v, raw, delta) in roster_list
                       if known.get(k) != v]
        sent = []
        # the full roster before the delta: a kiosk the delta does not fit turns to the
        # full topic, and must find the new roster there
        for kiosk_id, _version, raw, delta in roster_list:
            sent.append(self._send(messages.roster_topic(kiosk_id), raw))
            sent.append(self._send(messages.roster_delta_topic(kiosk_id), delta))
        for kind in WHOLE:
            if kind in kinds and kind in current:
                sent.append(self._send(messages.bundle_topic(deployment, kind), current[kind][1]))
        bases = {base for base, _ in delta_list}
        if "status" in kinds and "status" in current:
            for base, raw in delta_list:
                sent.append(self._send(messages.status_delta_topic(deployment, base), raw))
            sent.append(self._send(messages.bundle_topic(deployment, "status"),
                                   current["status"][1]))
        with self._cond:
            stale = set(self._retained.get(deployment, ())) - bases if \
                ("status" in kinds or "clear" in kinds) and "status" in current else set()
        for base in sorted(stale):
            sent.append(self._send(messages.status_delta_topic(deployment, base), b""))
        self._acked(sent)
        published = len(sent) - len(stale)
        if "status" in kinds and "status-head" in current:
            head = [self._send(messages.bundle_topic(deployment, "status-head"),
                               current["status-head"][1])]
            self._acked(head)
            published += 1
        with self._cond:
            self._rosters_sent.setdefault(deployment, {}).update(
                (kiosk_id, version) for kiosk_id, version, _, _ in roster_list)
            retained = self._retained.setdefault(deployment, set())
            retained -= stale
            if "status" in kinds:
                retained |= bases
        self.stats["published"] += published
        self.stats["cleared"] += len(stale)
        if stale:
            log.info("%s: cleared retained status deltas from v%s (out of the window)",
                     deployment, ", v".join(map(str, sorted(stale))))
        if "status" in current and "status" in kinds:
            log.info("%s: published status v%d (deltas from %s), %s", deployment,
                     current["status"][0], sorted(bases) or "none",
                     ", ".join(f"{k} v{current[k][0]}" for k in WHOLE
                               if k in kinds and k in current))


def hand_off(publisher: Publisher | None, deployment: str, kinds) -> str:
    """Hand a new list version to the app's publisher after its commit; what to tell the
    caller ("published" in API answers, the dashboard's result page). The database already
    holds the change and HTTP serves it, so a failure here is logged, never raised: MQTT is
    a cache and must not undo a committed change."""
    if publisher is None:
        return "not configured (kiosks get it over HTTP)"
    try:
        publisher.notify(deployment, kinds)
    except Exception:
        log.exception("could not hand %s %s to the publisher", deployment, kinds)
        return "failed; retried at the next publication"
    return "queued"


def for_app(config, sessions=None) -> Publisher | None:
    """The web server's publisher (started), or None when [mqtt] host is empty or the MQTT
    TLS files cannot be read (logged: the web server runs on; kiosks have HTTP)."""
    if not config.mqtt.host:
        return None
    try:
        return Publisher(config, sessions).start()
    except (OSError, ValueError) as exc:
        log.error("no bundle publisher: MQTT set-up failed (%s); list changes reach kiosks "
                  "over HTTP only until this is fixed", exc)
        return None

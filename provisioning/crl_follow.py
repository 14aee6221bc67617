"""`greengate-provision crl-follow`: a district broker's CRL kept equal to the fleet's
(docs/scaling.md#retiring-a-kiosk-in-tiers).

Mosquitto reads its CRL from a file, and a district broker's host holds no fleet CA key
and no fleet database. So `retire` (and `crl`) put the CA-signed CRL, retained, on
gg/v1/crl of the core broker; every bridge brings it down, and this process, on the
district host, beside its Mosquitto:

1. reads it from the district broker (under the bridge's own certificate, which the
   district's ACL lets read gg/v1/crl and write only this bridge's gg/v1/bridge/NAME/crl);
2. applies it only when it is a CRL signed by the fleet CA (the ca.pem beside it), not
   expired, and newer than the one applied (its CRL Number): an older or foreign one
   changes nothing, so a replay cannot undo a retirement;
3. writes it over the broker's crl.pem (a new file renamed into place: Mosquitto never
   reads half of one), and has the broker re-read it (`--reload`, by default
   `systemctl reload mosquitto`);
4. says which CRL its broker applies, retained, on gg/v1/bridge/NAME/crl, which the
   bridge takes up to the core: the fleet shows it per bridge, and `retire` waits for it
   before it ends the kiosk's session on this broker.

At start it has the broker re-read the file once, so that a CRL written just before a
crash is applied too. Every failure is reported in the acknowledgement (`error`) and
logged; none ends the process.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from fleet.pki import crl_number
from greengate import messages

log = logging.getLogger("greengate.crl_follow")

MAX_CRL = 4 * 1024 * 1024  # bytes: a CRL of ~100,000 revoked kiosks is ~4 MB
DEFAULT_RELOAD = "systemctl reload mosquitto"


class Follower:
    """The decisions, apart from MQTT: offer() takes what came on gg/v1/crl and gives the
    acknowledgement to publish."""

    def __init__(self, name: str, files: Path, reload: str = DEFAULT_RELOAD, clock=time.time):
        self.name = name
        self.files = Path(files)
        self.reload_command = reload
        self.clock = clock
        self.applied: int | None = None  # the CRL Number the broker is known to hold
        self.error: str | None = None

    @property
    def crl_path(self) -> Path:
        return self.files / "crl.pem"

    def _file_number(self) -> int | None:
        try:
            return crl_number(self.crl_path.read_bytes())
        except (OSError, ValueError):
            return None

    def start(self) -> dict:
        """The file's CRL, re-read by the broker once: the acknowledgement to publish."""
        number = self._file_number()
        self.error = self._reload()
        if self.error is None:
            self.applied = number
        return self.ack()

    def ack(self) -> dict:
        return messages.bridge_crl(bridge=self.name, number=self.applied, at=self.clock(),
                                   error=self.error)

    def offer(self, payload: bytes) -> dict:
        if payload in (b"", bytearray()):
            # the retained CRL cleared on the core (MQTT's way to delete one): nothing is
            # offered, so the broker keeps the CRL it holds and nothing is wrong
            return self.ack()
        number, problem = self._check(payload)
        if problem is not None:
            self.error = problem
            log.warning("CRL refused: %s", problem)
            return self.ack()
        if self.applied is not None and number <= self.applied:
            self.error = None  # what it already holds, or older: nothing to do
            return self.ack()
        if (self._file_number() or -1) < number:
            try:
                self._write(bytes(payload))
            except OSError as exc:
                self.error = f"cannot write {self.crl_path}: {exc}"[:messages.FAULT_DETAIL]
                log.error("%s", self.error)
                return self.ack()
        self.error = self._reload()
        if self.error is None:  # the broker now reads the file: this CRL or a newer one
            self.applied = max(number, self._file_number() or number)
            log.info("CRL %d applied", self.applied)
        return self.ack()

    def _check(self, payload) -> tuple[int | None, str | None]:
        if not isinstance(payload, (bytes, bytearray)):
            return None, "not bytes"
        if len(payload) > MAX_CRL:
            return None, f"{len(payload)} bytes, more than a CRL of this fleet could be"
        try:
            crl = x509.load_pem_x509_crl(bytes(payload))
            ca = x509.load_pem_x509_certificate((self.files / "ca.pem").read_bytes())
        except OSError as exc:
            return None, f"cannot read the CA certificate: {exc}"
        except ValueError:
            return None, "not a PEM CRL"
        try:
            signed = crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())
        except (TypeError, ValueError):
            signed = False
        if not signed:
            return None, "a CRL not signed by the fleet CA"
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (x509.ExtensionNotFound, ValueError):
            return None, "a CRL without a CRL Number"
        now = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            # OpenSSL refuses every client against an expired CRL: keep the one we have
            return None, f"CRL {number} expired on {crl.next_update_utc:%Y-%m-%d}"
        return number, None

    def _write(self, pem: bytes) -> None:
        tmp = self.crl_path.with_name(f".{self.crl_path.name}.tmp")
        with open(tmp, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.crl_path)

    def _reload(self) -> str | None:
        try:
            done = subprocess.run(shlex.split(self.reload_command), capture_output=True,
                                  text=True, timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            return f"reload {self.reload_command!r} failed: {exc}"[:messages.FAULT_DETAIL]
        if done.returncode != 0:
            return (f"reload {self.reload_command!r} exited with {done.returncode}: "
                    f"{done.stderr.strip()}")[:messages.FAULT_DETAIL]
        return None


class Agent:
    """Follower on MQTT: connected to the district broker for as long as it runs."""

    def __init__(self, follower: Follower, host: str, port: int):
        self.follower = follower
        self.host, self.port = host, port
        self.topic = messages.bridge_crl_topic(follower.name)
        files = follower.files
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"bridge-{follower.name}", protocol=mqtt.MQTTv311,
                                  clean_session=True)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(files / "ca.pem"))
        context.load_cert_chain(str(files / "bridge.pem"), str(files / "bridge.key"))
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._lock = threading.Lock()
        self._last = follower.start()

    def _publish(self, ack: dict) -> None:
        self._last = ack
        self.client.publish(self.topic, messages.encode(ack), qos=1, retain=True)

    def _on_connect(self, client, _userdata, _flags, reason, _props):
        if reason.is_failure:
            log.warning("district broker %s:%d refused the connection: %s", self.host,
                        self.port, reason)
            return
        log.info("connected to the district broker %s:%d", self.host, self.port)
        client.subscribe(messages.crl_topic(), qos=1)
        with self._lock:
            self._publish(self._last)

    def _on_message(self, _client, _userdata, msg):
        if msg.topic != messages.crl_topic():
            return
        with self._lock:
            try:
                ack = self.follower.offer(msg.payload)
            except Exception as exc:  # a bug here must not stop the broker's CRL for good
                log.exception("CRL not handled")
                self.follower.error = f"{exc.__class__.__name__}: {exc}"[:messages.FAULT_DETAIL]
                ack = self.follower.ack()
            self._publish(ack)

    def run(self, stop: threading.Event | None = None) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        try:
            (stop or threading.Event()).wait()
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def add_parser(sub) -> None:
    p = sub.add_parser("crl-follow", help="on a district broker's host: apply the fleet CRL "
                       "that comes down the bridge (written by `bridge` as crl-follow.env)")
    p.add_argument("name", help="the bridge's name (as given to `greengate-provision bridge`)")
    p.add_argument("--files", type=Path, required=True,
                   help="the district broker's greengate/ directory (ca.pem, crl.pem, "
                        "bridge.pem/.key)")
    p.add_argument("--broker", required=True,
                   help="HOST:PORT of the district broker, HOST as in its certificate")
    p.add_argument("--reload", default=DEFAULT_RELOAD,
                   help=f"makes the broker re-read its CRL (default: {DEFAULT_RELOAD})")
    p.set_defaults(handler=run)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not messages.BRIDGE_NAME.match(args.name or ""):
        print(f"greengate-provision: bridge name {args.name!r}: 1 to 32 lowercase letters, "
              "digits or '-'", file=sys.stderr)
        return 2
    try:
        host, port = messages.broker_address(args.broker)
    except messages.MessageError as exc:
        print(f"greengate-provision: --broker: {exc}", file=sys.stderr)
        return 2
    follower = Follower(args.name, args.files, args.reload)
    try:
        agent = Agent(follower, host, port)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"greengate-provision: cannot use the files in {args.files}: {exc}",
              file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)
    return 0

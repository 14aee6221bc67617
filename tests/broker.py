"""A real Mosquitto broker for tests, with a throw-away PKI, and a recording subscriber.

    pki = PKI(tmp / "pki")                       # CA, server cert (localhost, 127.0.0.1)
    broker = Broker(tmp / "broker", pki)         # TLS, client certs required, persistence on
    broker.start(); broker.stop(); broker.start()   # same port: clients reconnect
    files = pki.client("kiosk-1")                # TLSFiles(ca, cert, key) for that identity
    with Subscriber(broker, "gg/v1/#", tls=pki.client("fleet")) as sub:
        sub.wait_for(lambda msgs: len(msgs) >= 3)

Nothing here is mocked: the broker is /usr/sbin/mosquitto (or the one on PATH),
the clients are paho-mqtt. See tests/conftest_broker.py for the fixtures.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, NamedTuple

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

INSTALL_HINT = ("Mosquitto is not installed: the MQTT tests need a real broker. Install it "
                "with `bash scripts/setup.sh --with mqtt` (apt: mosquitto mosquitto-clients), "
                "or point GREENGATE_MOSQUITTO at the binary.")


class MosquittoMissing(RuntimeError):
    pass


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or MosquittoMissing with an install hint."""
    candidates = [os.environ.get("GREENGATE_MOSQUITTO"), shutil.which("mosquitto"),
                  "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise MosquittoMissing(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PKI ---------------------------------------------------------------------
class TLSFiles(NamedTuple):
    ca: str
    cert: str
    key: str


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int = 0o644) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


class PKI:
    """A throw-away CA (EC P-256) that signs a server and any number of client certs."""

    def __init__(self, directory: str | os.PathLike, name: str = "GreenGate Test CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca = _write(self.dir / "ca.pem", self._cert.public_bytes(serialization.Encoding.PEM))
        self._issued: dict[str, TLSFiles] = {}
        self.server = self._issue("server", "localhost", server=True)

    def _issue(self, stem: str, cn: str, *, server: bool) -> TLSFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return TLSFiles(
            self.ca,
            _write(self.dir / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            _write(self.dir / f"{stem}.key", _pem_key(key), 0o600))

    def client(self, identity: str) -> TLSFiles:
        """(ca, cert, key) of a client certificate with CN=identity (made once)."""
        if identity not in self._issued:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity)
            self._issued[identity] = self._issue(f"client-{safe}", identity, server=False)
        return self._issued[identity]


# --- broker ------------------------------------------------------------------
class Broker:
    """One mosquitto process on a fixed free port of 127.0.0.1.

    tls: a PKI (TLS listener, client certificate required, identity = CN as
    username, anonymous refused) or None (plain listener, anonymous allowed).
    persistence: keep retained messages, persistent sessions and their queued
    QoS 1 messages across stop()/start() (saved on SIGTERM, and every
    `autosave` seconds if given). acl: text of an ACL file (optional).
    """

    def __init__(self, directory: str | os.PathLike, tls: PKI | None = None, *,
                 persistence: bool = True, autosave: int | None = None,
                 acl: str | None = None, port: int | None = None):
        self.binary = find_mosquitto()
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = tls
        self.persistence = persistence
        self.autosave = autosave
        self.acl = acl
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_path = self.dir / "mosquitto.log"
        self.conf_path = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._write_conf()

    @property
    def tls(self) -> bool:
        return self.pki is not None

    def _write_conf(self) -> None:
        lines = [f"listener {self.port} {self.host}"]
        if self.pki is not None:
            server = self.pki.server
            lines += [f"cafile {server.ca}", f"certfile {server.cert}", f"keyfile {server.key}",
                      "require_certificate true", "use_identity_as_username true",
                      "allow_anonymous false"]
        else:
            lines += ["allow_anonymous true"]
        if self.acl is not None:
            acl_path = self.dir / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        if self.persistence:
            store = self.dir / "persist"
            store.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/"]
            if self.autosave:
                lines.append(f"autosave_interval {int(self.autosave)}")
        else:
            lines.append("persistence false")
        if os.getuid() == 0:  # mosquitto drops root to user "mosquitto" unless told otherwise
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        lines += [f"log_dest file {self.log_path}",
                  "log_type error", "log_type warning", "log_type notice",
                  "log_type information", "connection_messages true", "log_timestamp true",
                  "max_queued_messages 100000", "max_inflight_messages 100"]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 10.0) -> "Broker":
        """Start (again) on the same port; returns when it accepts connections."""
        if self.running:
            return self
        marker = len(self.log())
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode} on start:\n"
                                   f"{err}\n{self.log()[marker:]}")
            if "running" in self.log()[marker:] and self._accepts():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not start within {timeout} s:\n{self.log()[marker:]}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL: nothing saved since the last autosave."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay open but nothing is answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> "Broker":
        self.stop()
        return self.start()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def client_tls(self, identity: str) -> TLSFiles | None:
        """TLS files for a client named `identity`, None for a plain broker."""
        return self.pki.client(identity) if self.pki else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.resume()
            except (OSError, ProcessLookupError):
                pass
        self.stop()


# --- a recording subscriber ------------------------------------------------------
class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    at: float  # time.monotonic() of arrival


class Subscriber:
    """A real paho client (MQTT 3.1.1) recording every message of `topics`.

    persistent=True: clean_session False with a fixed client id, so the broker
    (with persistence on) queues QoS 1 messages while this client or the broker
    is down; paho reconnects by itself (backoff 0.2-1 s).
    """

    def __init__(self, broker: Broker, topics: str | list[str], *, tls: TLSFiles | None = None,
                 client_id: str | None = None, persistent: bool = True, qos: int = 1):
        self.broker = broker
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.connects = 0
        self.client_id = client_id or f"test-sub-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.2, 1)
        if broker.tls:
            files = tls or broker.client_tls(self.client_id)
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
            ctx.load_cert_chain(files.cert, files.key)
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, _u, flags, reason, _p):
        if reason.is_failure:
            return
        if not flags.session_present:
            client.subscribe([(t, self.qos) for t in self.topics])
        with self._cond:
            self.connects += 1
            self._cond.notify_all()

    def _on_message(self, _c, _u, msg):
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
                                         bool(msg.dup), time.monotonic()))
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> "Subscriber":
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        self.wait_for(lambda _m: self.connects > 0, timeout, "subscriber never connected")
        # the SUBACK: a round trip through the broker after the subscribe
        info = self.client.publish("gg/test/sync", b"", qos=1)
        info.wait_for_publish(timeout)
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def snapshot(self, topic_filter: str | None = None) -> list[Message]:
        with self._cond:
            msgs = list(self.messages)
        if topic_filter is None:
            return msgs
        return [m for m in msgs if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float = 15.0,
                 what: str = "condition") -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                msgs = list(self.messages)
                if predicate(msgs):
                    return msgs
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                         f"{len(msgs)} messages so far: "
                                         f"{[(m.topic, m.payload[:80]) for m in msgs[-10:]]}")
                self._cond.wait(min(left, 0.5))


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition",
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)

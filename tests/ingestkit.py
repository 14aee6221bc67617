"""Test-side helpers for the ingest worker and presence tests (tests/test_ingest.py,
tests/test_presence.py): a fleet config pointing at a test broker, raw kiosk clients,
workers in this process or as `python -m fleet.cli ingest` subprocesses, and queries.

Nothing is mocked: the broker is Mosquitto with TLS and client certificates
(tests/broker.py), the database is the `fleet_config` fixture's (SQLite and
PostgreSQL), the kiosks are paho clients with their own certificates or the real
device.reporter.Reporter.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from fleet.config import load
from fleet.ingest import IngestWorker
from fleet.models import Kiosk, Outage, PresenceEvent, Scan, ScanSummary
from greengate import messages
from tests.broker import wait_until

ROOT = Path(__file__).resolve().parents[1]
TS = 1633420800.0


def ingest_config(fleet_config, broker, *, mqtt_options=None, presence=None, ingest=None):
    """The fixture's fleet config (database, deployments) plus the broker and the fleet's
    client certificate; small batches and short presence timings unless told otherwise.
    The ingest's time window is opened wide: these tests send 2021 timestamps (TS)."""
    files = broker.client_tls("fleet")
    options = {"host": "localhost", "port": broker.port, "tls": broker.tls,
               "ca": files.ca if files else "", "cert": files.cert if files else "",
               "key": files.key if files else "", "batch_size": 50, "batch_seconds": 0.05}
    options.update(mqtt_options or {})
    timing = {"keepalive": 30.0, "sweep": 0.2}
    timing.update(presence or {})
    window = {"max_age_days": 36500.0}
    window.update(ingest or {})
    return load(None, env={}, fleet=dict(fleet_config.sections["fleet"]), mqtt=options,
                presence=timing, ingest=window)


def config_file(config, path: Path) -> Path:
    """The config as a TOML file, for a worker subprocess."""
    lines = []
    for section, values in config.sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value}")
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]".replace("'", '"'))
            else:
                lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def scan(kiosk: str, scan_id: str, ts: float = TS, **changes) -> dict:
    doc = messages.scan(scan_id=scan_id, kiosk=kiosk, ts=ts, decision="green", reason="ok",
                        sub_reason=None, cert_type="v", cert_hash="ab" * 16, holder="cd" * 16,
                        policy="hcmc-2021")
    doc.update(changes)
    return doc


def summary(kiosk: str, summary_id: str, count: int = 3) -> dict:
    return messages.summary(summary_id=summary_id, kiosk=kiosk, hour=1633420800,
                            decision="red", reason="expired", count=count, first=TS + 1,
                            last=TS + 9)


class KioskClient:
    """A raw MQTT client with a kiosk's certificate: publishes exactly what it is given
    (QoS 1) and waits for the broker's PUBACKs."""

    def __init__(self, broker, identity: str, client_id: str | None = None):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"raw-{identity}-{os.getpid()}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        files = broker.client_tls(identity)
        if files:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
            ctx.load_cert_chain(files.cert, files.key)
            self.client.tls_set_context(ctx)
        self.client.connect("localhost", broker.port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, f"{identity} connected")

    def publish(self, topic: str, payload, *, retain: bool = False, wait: bool = True):
        if isinstance(payload, dict):
            payload = messages.encode(payload)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if wait:
            info.wait_for_publish(10)
            assert info.is_published()
        return info

    def publish_many(self, items) -> None:
        info = None
        for topic, payload in items:
            info = self.publish(topic, payload, wait=False)
        if info is not None:
            info.wait_for_publish(30)
        wait_until(lambda: not self.client._out_messages, 30, "every PUBACK")  # noqa: SLF001

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Confirmations:
    """A plain client reading the fleet's confirmations (gg/v1/confirm/+) as a kiosk
    would: every message must parse with messages.parse_confirm for its kiosk."""

    def __init__(self, broker, identity: str = "confirm-reader"):
        self.received: list[tuple[str, dict]] = []
        self.unparsed: list[tuple[str, bytes]] = []
        self.subscribed = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"confirms-{identity}-{os.getpid()}",
                                  protocol=mqtt.MQTTv5)
        files = broker.client_tls(identity)
        if files:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
            ctx.load_cert_chain(files.cert, files.key)
            self.client.tls_set_context(ctx)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.connect("localhost", broker.port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, "confirmation reader connected")
        self.client.subscribe(f"{messages.ROOT}/confirm/+", qos=1)
        wait_until(lambda: self.subscribed, 10, "confirmation reader subscribed")

    def _on_message(self, _client, _userdata, msg):
        kiosk = msg.topic.rsplit("/", 1)[-1]
        try:
            self.received.append((kiosk, messages.parse_confirm(msg.payload, kiosk)))
        except messages.MessageError:
            self.unparsed.append((kiosk, bytes(msg.payload)))

    def ids(self, kiosk: str, kind: str = "scans") -> list[str]:
        """Every id confirmed to `kiosk`, in arrival order (repeats kept)."""
        return [i for k, doc in list(self.received) if k == kiosk for i in doc[kind]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Workers:
    """In-process workers (threads) and worker subprocesses, all stopped at the end."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.running: list[IngestWorker] = []
        self.procs: list[subprocess.Popen] = []

    def start(self, config, **options) -> IngestWorker:
        worker = IngestWorker(config, **options)
        self.running.append(worker)
        worker.start()
        wait_until(lambda: worker.ready, 15, f"worker {worker.name} connected and subscribed")
        return worker

    def spawn(self, config, name: str, *extra: str) -> subprocess.Popen:
        path = config_file(config, self.tmp / f"fleet-{name}.toml")
        log = open(self.tmp / f"worker-{name}.log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "--config", str(path),
                                 "ingest", "--worker", name, *extra],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"worker-{name}.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        for worker in self.running:
            try:
                worker.stop(timeout=15)
            except Exception:
                pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


# --- database queries ------------------------------------------------------------------
def scan_ids(sessions) -> list[tuple[str, str]]:
    with sessions() as s:
        return list(s.execute(select(Scan.kiosk_id, Scan.scan_id)).all())


def quarantined(sessions) -> list[dict]:
    """Every quarantine row (fleet/models.py's `quarantine` table), oldest first."""
    from fleet.models import Base
    table = Base.metadata.tables["quarantine"]
    with sessions() as s:
        return [dict(row._mapping) for row in s.execute(select(table).order_by(table.c.id))]


def count_scans(sessions) -> int:
    return len(scan_ids(sessions))


def summaries(sessions) -> list[ScanSummary]:
    with sessions() as s:
        return list(s.scalars(select(ScanSummary).order_by(ScanSummary.summary_id)))


def kiosk(sessions, kid: str) -> Kiosk | None:
    with sessions() as s:
        return s.get(Kiosk, kid)


def events(sessions, kid: str) -> list[tuple[str, str, int, str]]:
    """(previous, state, session, detail) of every presence event, in order."""
    with sessions() as s:
        return [(e.previous, e.state, e.session, e.detail) for e in s.scalars(
            select(PresenceEvent).where(PresenceEvent.kiosk_id == kid)
            .order_by(PresenceEvent.at, PresenceEvent.id))]


def outages(sessions, kid: str) -> list[Outage]:
    with sessions() as s:
        return list(s.scalars(select(Outage).where(Outage.kiosk_id == kid)
                              .order_by(Outage.started, Outage.id)))


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", interval=0.05):
    wait_until(predicate, timeout, what, interval)


def settle(seconds: float = 0.3) -> None:
    """A short pause to show that something does NOT happen (no event, no redelivery)."""
    time.sleep(seconds)


class SealingKiosk:
    """A kiosk's real parts for sealed holders: the trust bundle the fleet signed, taken in
    by the kiosk's BundleStore, and the Sealer reading its key, as device/kiosk.py does."""

    def __init__(self, config, fleet_db, tmp_path, kiosk):
        from datetime import timedelta

        from device.privacy import Sealer
        from device.state import BundleStore
        from fleet import bundles

        self.kiosk = kiosk
        signer = bundles.ensure_signing_key(config)
        with fleet_db() as s:
            bundles.ensure_issued(s, config, "test", key=signer)
            raw = bundles.latest(s, "test", "trust").raw
        self.store = BundleStore(tmp_path / f"kiosk-{kiosk}", signer.public_key(), "test",
                                 "hcmc-2021", timedelta(hours=72), kiosk_id=kiosk)
        assert self.store.offer(raw)[0]
        self.sealer = Sealer(lambda: self.store.sealing_key)

    def scan(self, holder, ts=TS, scan_id=None) -> dict:
        """A green scan message of `holder`, sealed as the kiosk seals it."""
        import hashlib
        import uuid

        scan_id = scan_id or uuid.uuid4().hex
        return messages.scan(scan_id=scan_id, kiosk=self.kiosk, ts=ts, decision="green",
                             reason="ok", sub_reason=None, cert_type="v",
                             cert_hash=hashlib.sha256(repr(holder).encode()).hexdigest()[:32],
                             policy="hcmc-2021", seq=1,
                             sealed=self.sealer(holder, kiosk=self.kiosk, scan_id=scan_id))

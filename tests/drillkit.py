"""Test-side helpers for the end-to-end drills (tests/test_drills.py): a real fleet
(SQLite database, signing key, trust list, publisher to a real Mosquitto, ingest worker
subprocesses) and real `greengate-kiosk run` processes fed by a FIFO scanner source.

Nothing is mocked but the lights (gpiozero's MockFactory, `[indicator] backend = "mock"`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fleet import bundles, migrate, trust_list
from fleet.config import load
from fleet.db import make_engine, make_sessions
from fleet.publisher import Publisher
from tests.broker import wait_until

ROOT = Path(__file__).resolve().parents[1]
DEP = "drill"
SCAN_LINE = re.compile(r"scan ([0-9a-f]{32}): (green|red) ([a-z_]+)")


def now(days: float = 0) -> datetime:
    return datetime.now(timezone.utc) + timedelta(days=days)


def mint(issuer, *, dose_days_ago: int = 40) -> tuple[str, str]:
    """(HC1 text, ci) of a vaccination dose_days_ago days back, valid for a year."""
    date = (now() - timedelta(days=dose_days_ago)).date().isoformat()
    dcc = issuer.vaccination(date=date, dose=2, of=2)
    return issuer.mint(dcc, iat=now(-dose_days_ago), exp=now(365)), dcc["v"][0]["ci"]


class Fleet:
    """The fleet's side: config (SQLite), database, signing key, the issuer in the trust
    list, a publisher on the broker under `identity`."""

    def __init__(self, tmp: Path, broker, issuer, *, identity: str = "fleet", deltas: int = 8,
                 tls=None, keepalive: float = 30.0):
        """tls: TLSFiles whose cert and key may hold {identity} (one certificate per fleet
        process, as a provisioned broker needs); default: the broker's for `identity`."""
        self.tmp, self.broker = tmp, broker
        self.identity = identity
        files = tls or broker.client_tls(identity)
        self.url = f"sqlite:///{tmp / 'fleet.sqlite'}"
        self.config = load(None, env={}, fleet={"data_dir": str(tmp / "fleet"),
                                                "database_url": self.url, "deployments": [DEP]},
                           mqtt={"host": broker.host, "port": broker.port, "tls": True,
                                 "ca": files.ca, "cert": files.cert, "key": files.key,
                                 "batch_size": 50, "batch_seconds": 0.05},
                           presence={"keepalive": keepalive, "sweep": 0.2},
                           bundles={"deltas": deltas})
        self.engine = make_engine(self.url)
        migrate.upgrade(self.engine)
        self.sessions = make_sessions(self.engine)
        self.key = bundles.ensure_signing_key(self.config)
        self.public_pem = bundles.public_pem(self.key)
        with self.sessions() as s:
            bundles.ensure_issued(s, self.config, DEP)
            trust_list.add(s, self.config, DEP, issuer.pem, actor="drill")
        self.publisher: Publisher | None = None

    def start_publisher(self) -> Publisher:
        self.publisher = Publisher(self.config, self.sessions, backoff=(0.1, 0.5)).start()
        assert self.publisher.publish_all(DEP, timeout=30)
        return self.publisher

    def change(self, fn, *args, **kwargs):
        """A list change as the API makes it: commit, then hand it to the publisher."""
        with self.sessions() as s:
            result = fn(s, self.config, DEP, *args, actor="drill", **kwargs)
        if self.publisher is not None:
            self.publisher.notify(DEP)
        return result

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        self.engine.dispose()


class KioskProc:
    """One `greengate-kiosk run` process, scanner source on a FIFO the test writes into."""

    def __init__(self, tmp: Path, broker, fleet_pem: bytes, kid: str, *, heartbeat=1.0,
                 budget_hours: float = 72.0, identity: str | None = None,
                 confirm_timeout: float = 30.0, brokers: list | None = None,
                 failover_after: float = 120.0):
        self.tmp = tmp / kid
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.kid = kid
        self.data = self.tmp / "data"
        self.fifo = self.tmp / "scanner"
        os.mkfifo(self.fifo)
        # Read and write end held by the test: the kiosk's reader never sees an end.
        self.fd = os.open(self.fifo, os.O_RDWR)
        (self.tmp / "fleet.pem").write_bytes(fleet_pem)
        tls = broker.client_tls(identity or kid)
        # brokers: ["host:port", ...] in order (the kiosk fails over); else `broker` alone
        where = (f"brokers = {list(brokers)!r}\nfailover_after = {failover_after}".replace("'", '"')
                 if brokers else f'host = "{broker.host}"\nport = {broker.port}')
        self.config = self.tmp / "kiosk.toml"
        self.config.write_text(f"""
[kiosk]
id = "{kid}"
deployment = "{DEP}"
policy = "hcmc-2021"
data_dir = "{self.data}"

[source]
kind = "scanner"
path = "{self.fifo}"

[decoder]
cooldown = 0.0

[indicator]
backend = "mock"

[mqtt]
{where}
ca = "{tls.ca}"
cert = "{tls.cert}"
key = "{tls.key}"
heartbeat = {heartbeat}
keepalive = 5
confirm_timeout = {confirm_timeout}

[bundles]
fleet_key = "fleet.pem"
offline_budget_hours = {budget_hours}

""")
        self.log_path = self.tmp / "kiosk.log"
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> "KioskProc":
        self.runs += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== run {self.runs}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "device.cli", "run", "--config", str(self.config)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def scans(self) -> list[tuple[str, str, str]]:
        """(scan id, decision, reason) of every decision the kiosk logged, all runs."""
        return SCAN_LINE.findall(self.log())

    def wait_ready(self, statuses=(1,), timeout: float = 30.0) -> None:
        wait_until(lambda: "kiosk " + self.kid + " running" in self.log() and
                   any(f"applied status bundle v{v}" in self.log() or
                       f"applied status-delta bundle v{v}" in self.log() for v in statuses),
                   timeout, f"{self.kid} running with its lists")

    def present(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())

    def decide(self, text: str, timeout: float = 10.0) -> tuple[str, str, str]:
        """Present a code, wait for the kiosk's decision on it."""
        before = len(self.scans())
        self.present(text)
        wait_until(lambda: len(self.scans()) > before, timeout, f"{self.kid} decides")
        return self.scans()[before]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def close(self) -> None:
        self.kill()
        try:
            os.close(self.fd)
        except OSError:
            pass


def elapsed(since: float) -> float:
    return time.monotonic() - since

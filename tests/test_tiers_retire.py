"""Retiring a kiosk across broker tiers (issue 17: "every guarantee of a single broker"),
on two district Mosquittos bridged to a core one (tests/tiers.py), each district with
its `greengate-provision crl-follow` process, and an ingest worker on the core:

- `retire` of a kiosk connected to a district broker: the CRL goes down both bridges,
  each district applies it and says so (the fleet's bridge table holds its number), the
  kiosk's live session on its district is ended and it can connect to no broker again;
- a district whose crl-follow is not running is named, its kiosk's session is left
  alone and retire exits 1; once crl-follow runs again it applies the retained CRL by
  itself, and retire run again ends the session there.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cryptography import x509

from fleet import bridges, migrate
from fleet.config import load as load_fleet_config
from fleet.db import make_engine, make_sessions
from fleet.models import Bridge, District
from greengate import enrolment
from provisioning.cli import main as provision
from fleet.pki import crl_number
from tests.broker import wait_until
from tests.ingestkit import Workers
from tests.test_provisioning import Client
from tests.tiers import Tiers

ROOT = Path(__file__).resolve().parent.parent


class TierFleet:
    """The fleet's config for the tiers' PKI, with what test_provisioning.Client needs."""

    def __init__(self, tmp: Path, tiers: Tiers):
        self.tmp = tmp
        self.tiers = tiers
        self.port = tiers.core.port
        pki = tiers.pki.dir
        self.config_path = tmp / "fleet.toml"
        self.config_path.write_text(f'''
[fleet]
data_dir = "{tmp / 'fleet'}"
database_url = "sqlite:///{tmp / 'fleet.db'}"
deployments = ["hcmc"]
[mqtt]
host = "127.0.0.1"
port = {tiers.core.port}
ca = "{pki / 'ca.pem'}"
cert = "{pki / 'clients'}/{{identity}}.pem"
key = "{pki / 'clients'}/{{identity}}.key"
batch_seconds = 0.05
[bundles]
signing_key = "{pki / 'bundle-signing.key'}"
[pki]
dir = "{pki}"
broker_crl = "{tiers.tmp / 'core-conf' / 'greengate' / 'crl.pem'}"
broker_reload = "kill -HUP {tiers.core.proc.pid}"
[enrol]
broker_host = "127.0.0.1"
broker_port = {tiers.core.port}
''')
        self.config = load_fleet_config(self.config_path, env={})
        self.engine = make_engine(self.config.database_url)
        migrate.upgrade(self.engine)
        self.sessions = make_sessions(self.engine)

    def provision(self, *args: str) -> int:
        return provision([*args, "--fleet-config", str(self.config_path)])

    def enrol(self, kiosk_id: str) -> tuple[str, str, str]:
        out = self.tmp / f"{kiosk_id}.tar"
        assert self.provision("enrol", kiosk_id, "--location", f"loc-{kiosk_id}", "--district",
                              "q7", "--location-name", "Chợ", "--out", str(out)) == 0
        target = self.tmp / "pi" / kiosk_id
        with tarfile.open(out) as tar:
            tar.extractall(target, filter="data")
        folder = target / enrolment.BUNDLE_DIR
        return (str(folder / enrolment.CA), str(folder / enrolment.CERT),
                str(folder / enrolment.KEY))

    def bridge(self, name: str) -> Bridge | None:
        with self.sessions() as s:
            b = s.get(Bridge, name)
            if b is not None:
                s.expunge(b)
            return b


class Follow:
    """`greengate-provision crl-follow` for one district, as its systemd unit runs it."""

    def __init__(self, tiers: Tiers, name: str):
        self.tiers, self.name = tiers, name
        self.log = tiers.tmp / f"crl-follow-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Follow":
        broker = self.tiers.district[self.name]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provisioning.cli", "crl-follow", self.name,
             "--files", str(self.tiers.tmp / f"{self.name}-conf" / "greengate"),
             "--broker", self.tiers.address(self.name),
             "--reload", f"kill -HUP {broker.proc.pid}"],
            cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def on(tiers: Tiers, files: tuple[str, str, str], client_id: str, district: str | None,
       reconnect: bool = False) -> Client:
    """A kiosk client of `files` on a district broker (None: the core)."""
    broker = tiers.core if district is None else tiers.district[district]

    class _Where:
        port = broker.port
    return Client(_Where, *files, client_id, reconnect=reconnect)


@pytest.fixture
def tiers(tmp_path):
    t = Tiers(tmp_path / "tiers", ("d1", "d2")).start()
    yield t
    t.close()


def test_a_retired_kiosk_is_cut_off_on_every_district_broker(tmp_path, tiers, monkeypatch,
                                                              capsys):
    fleet = TierFleet(tmp_path, tiers)
    monkeypatch.setenv("GREENGATE_FLEET_CONFIG", str(fleet.config_path))
    with fleet.sessions() as s:
        s.add(District(code="q7", name="Quận 7"))
        for name in ("d1", "d2"):
            bridges.register(s, name, tiers.address(name))
        s.commit()
    workers = Workers(tmp_path)
    follows = {name: Follow(tiers, name) for name in ("d1", "d2")}
    kiosks: list[Client] = []
    try:
        workers.start(fleet.config, worker="1")
        for f in follows.values():
            f.start()
        # each says which CRL its broker applies: init's, which `bridge` copied
        first = crl_number((tiers.pki.dir / "crl.pem").read_bytes())
        wait_until(lambda: all(fleet.bridge(n).crl_at for n in follows), 30,
                   "both districts' first CRL report")
        assert (fleet.bridge("d1").crl_number, fleet.bridge("d1").crl_error) == (first, None)

        # 1. a kiosk on d1 retired: cut off there, and anywhere else
        files = fleet.enrol("k1")
        kiosk = on(tiers, files, "k1", "d1", reconnect=True)
        kiosks.append(kiosk)
        assert kiosk.connect()
        capsys.readouterr()
        assert fleet.provision("retire", "k1", "--reason", "stolen",
                               "--district-wait", "30") == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        crl = (tiers.pki.dir / "crl.pem").read_bytes()
        number = crl_number(crl)
        assert f"district broker(s) d1, d2 applied CRL {number}" in out
        assert "any live session of k1 on district broker d1 is ended" in out
        wait_until(lambda: kiosk.disconnects, 10, "k1's session on d1 ended")
        time.sleep(1.5)  # paho keeps trying every 0.2-0.5 s
        assert len(kiosk.connacks) == 1  # never accepted again
        for district in ("d1", "d2", None):
            assert not on(tiers, files, "k1", district).connect(), district
        for name in ("d1", "d2"):
            b = fleet.bridge(name)
            assert (b.crl_number, b.crl_error) == (number, None)
            held = (tiers.tmp / f"{name}-conf" / "greengate" / "crl.pem").read_bytes()
            assert held == crl
        revoked = [e.serial_number for e in x509.load_pem_x509_crl(crl)]
        assert len(revoked) == 1

        # 2. d2's crl-follow is down: d2 named, its kiosk's session left alone, exit 1
        follows["d2"].stop()
        files2 = fleet.enrol("k2")
        kiosk2 = on(tiers, files2, "k2", "d2", reconnect=True)
        kiosks.append(kiosk2)
        assert kiosk2.connect()
        capsys.readouterr()
        assert fleet.provision("retire", "k2", "--district-wait", "3") == 1
        done = capsys.readouterr()
        number2 = crl_number((tiers.pki.dir / "crl.pem").read_bytes())
        assert number2 > number
        assert f"district broker(s) d1 applied CRL {number2}" in done.out
        assert f"district broker d2 ({tiers.address('d2')}) has not applied CRL {number2}" \
            in done.err and f"it reported CRL {number}" in done.err
        assert "greengate-provision retire k2" in done.err
        assert kiosk2.disconnects == [] and len(kiosk2.connacks) == 1
        assert not on(tiers, files2, "k2b", "d1").connect()  # d1 knows already
        # back: it applies the retained CRL by itself; retire again ends the session
        follows["d2"].start()
        wait_until(lambda: fleet.bridge("d2").crl_number == number2, 30,
                   "d2 applied the CRL it missed")
        assert fleet.provision("retire", "k2", "--district-wait", "30") == 0
        assert "any live session of k2 on district broker d2 is ended" in \
            capsys.readouterr().out
        wait_until(lambda: kiosk2.disconnects, 10, "k2's session on d2 ended")
        time.sleep(1.5)
        assert len(kiosk2.connacks) == 1
    finally:
        for k in kiosks:
            k.close()
        for f in follows.values():
            f.stop()
        workers.close()
        fleet.engine.dispose()

"""Provisioning end to end (docs/provisioning.md), with nothing mocked: the fleet PKI from
`greengate-provision init`, a real Mosquitto running the configuration that
`greengate-provision mosquitto-config` wrote, kiosks enrolled with `enrol` (bundle and
one-time token over real HTTPS, gunicorn), retired with `retire`, and the real ingest
worker, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select, update

from device.outbox import Outbox
from device.reporter import Reporter
from fleet import migrate
from fleet.config import load as load_fleet_config
from fleet.db import make_engine, make_sessions
from fleet.models import RETIRED, AuditLog, EnrolmentToken, Kiosk, KioskCertificate, Scan
from greengate import enrolment, messages
from provisioning.cli import main as provision
from tests.broker import free_port, wait_until
from tests.ingestkit import Workers, scan
from tests.tiers import ProvisionedBroker

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


class Fleet:
    """Paths and helpers of one provisioned fleet."""

    def __init__(self, tmp: Path, database_url: str):
        self.tmp = tmp
        self.pki = tmp / "pki"
        self.port = free_port()
        self.web_port = free_port()
        self.database_url = database_url
        self.config_path = tmp / "fleet.toml"

    def write_config(self, reload_command: str) -> None:
        self.config_path.write_text(f'''
[fleet]
data_dir = "{self.tmp / 'fleet'}"
database_url = "{self.database_url}"
deployments = ["hcmc"]
[mqtt]
host = "127.0.0.1"
port = {self.port}
ca = "{self.pki / 'ca.pem'}"
cert = "{self.pki / 'clients'}/{{identity}}.pem"
key = "{self.pki / 'clients'}/{{identity}}.key"
batch_seconds = 0.05
[bundles]
signing_key = "{self.pki / 'bundle-signing.key'}"
[pki]
dir = "{self.pki}"
broker_crl = "{self.tmp / 'mosquitto' / 'greengate' / 'crl.pem'}"
broker_reload = "{reload_command}"
[enrol]
broker_host = "127.0.0.1"
broker_port = {self.port}
http_url = "https://127.0.0.1:{self.web_port}"
max_failures = 5
''')
        self.config = load_fleet_config(self.config_path, env={})

    def provision(self, *args: str) -> int:
        return provision([*args, "--fleet-config", str(self.config_path)])

    def files(self, name: str) -> tuple[str, str, str]:
        """(ca, cert, key) of a fleet identity made by init / identity add."""
        return (str(self.pki / "ca.pem"), str(self.pki / "clients" / f"{name}.pem"),
                str(self.pki / "clients" / f"{name}.key"))

    def sessions(self):
        return make_sessions(self.engine)


@pytest.fixture
def fleet(tmp_path, database_url, monkeypatch):
    f = Fleet(tmp_path, database_url)
    assert provision(["init", "--dir", str(f.pki), "--host", "localhost",
                      "--host", "127.0.0.1"]) == 0
    assert provision(["mosquitto-config", "--pki", str(f.pki), "--out",
                      str(tmp_path / "mosquitto"), "--port", str(f.port), "--bind",
                      "127.0.0.1", "--persistence-dir", str(tmp_path / "persist")]) == 0
    (tmp_path / "persist").mkdir()
    broker = ProvisionedBroker(tmp_path / "broker", tmp_path / "mosquitto" / "greengate.conf",
                               f.port)
    broker.start()
    f.broker = broker
    f.write_config(f"kill -HUP {broker.proc.pid}")
    monkeypatch.setenv("GREENGATE_FLEET_CONFIG", str(f.config_path))
    f.engine = make_engine(database_url)
    migrate.upgrade(f.engine)
    yield f
    f.engine.dispose()
    broker.kill()


def enrol_bundle(fleet: Fleet, kiosk_id: str, location: str | None = None) -> Path:
    """`enrol` to a tar, unpacked as the install script would: the kiosk's folder."""
    out = fleet.tmp / f"{kiosk_id}.tar"
    assert provision(["enrol", kiosk_id, "--location", location or f"loc-{kiosk_id}",
                      "--district", "q7",
                      "--location-name", "Chợ Tân Mỹ", "--out", str(out)]) == 0
    target = fleet.tmp / "pi" / kiosk_id
    with tarfile.open(out) as tar:
        tar.extractall(target, filter="data")
    return target / enrolment.BUNDLE_DIR


@pytest.fixture
def district(fleet):
    from fleet.models import District
    with fleet.sessions()() as s:
        s.add(District(code="q7", name="Quận 7"))
        s.commit()


class Client:
    """A paho MQTT 5 client with the TLS files of one identity; records what it gets."""

    def __init__(self, fleet: Fleet, ca: str, cert: str | None, key: str | None,
                 client_id: str, will: tuple[str, bytes] | None = None, reconnect=False):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
        self.client.tls_set_context(context)
        if will:
            self.client.will_set(will[0], will[1], qos=1)
        self.connacks, self.disconnects, self.messages, self.subacks = [], [], [], []
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connacks.append(reason)
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(reason)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.append(codes)
        self.fleet = fleet
        self.reconnect = reconnect
        if reconnect:
            self.client.reconnect_delay_set(0.2, 0.5)

    def connect(self, wait: float = 5.0) -> bool:
        """True once CONNACK said success; False when refused or the TLS handshake failed."""
        try:
            self.client.connect("127.0.0.1", self.fleet.port, keepalive=30)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.connacks:
                return not self.connacks[0].is_failure
            if self.disconnects:
                return False
            time.sleep(0.02)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def identity(folder: Path) -> tuple[str, str, str]:
    return (str(folder / enrolment.CA), str(folder / enrolment.CERT), str(folder / enrolment.KEY))


# --- init --------------------------------------------------------------------------------
def test_init_makes_private_keys_and_refuses_to_overwrite(tmp_path, capsys):
    pki = tmp_path / "pki"
    assert provision(["init", "--dir", str(pki), "--host", "fleet.example"]) == 0
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for name in ("ca.key", "server.key", "fleet.key", "bundle-signing.key", "pseudonym.key"):
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600, name
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fleet.example"]
    ca_before = (pki / "ca.key").read_bytes()
    capsys.readouterr()
    assert provision(["init", "--dir", str(pki), "--host", "fleet.example"]) == 2
    assert "holds keys already" in capsys.readouterr().err
    assert (pki / "ca.key").read_bytes() == ca_before  # untouched
    assert provision(["init", "--dir", str(pki), "--host", "fleet.example", "--force"]) == 0
    assert (pki / "ca.key").read_bytes() != ca_before
    assert provision(["init", "--dir", str(tmp_path / "other")]) == 2
    assert "--host" in capsys.readouterr().err


def _fleet_toml(tmp_path: Path, database_url: str, extra: str = "") -> Path:
    """A fleet configuration on the PKI init makes under data_dir (the docs' layout)."""
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[fleet]
data_dir = "{tmp_path / 'data'}"
database_url = "{database_url}"
deployments = ["hcmc"]
{extra}
""")
    return path


def _kiosk_toml(tar_path: Path) -> dict:
    with tarfile.open(tar_path) as tar:
        member = tar.extractfile(f"{enrolment.BUNDLE_DIR}/{enrolment.CONFIG}")
        return tomllib.loads(member.read().decode())


def test_enrol_tells_the_kiosk_the_hosts_given_to_init(tmp_path, database_url, capsys):
    config = _fleet_toml(tmp_path, database_url)
    pki = tmp_path / "data" / "pki"
    assert provision(["init", "--dir", str(pki), "--host", "fleet.example", "--host",
                      "10.0.0.5", "--broker-port", "8884", "--http-url",
                      "https://fleet.example:8443"]) == 0
    assert json.loads((pki / "fleet.json").read_text())["broker_host"] == "fleet.example"
    migrate.upgrade(engine := make_engine(database_url))
    engine.dispose()
    capsys.readouterr()
    common = ["--location", "q7-cm", "--location-name", "Co.op Mart", "--district", "q7",
              "--district-name", "Quận 7", "--fleet-config", str(config)]
    assert provision(["enrol", "q7-0001", *common, "--out", str(tmp_path / "a.tar")]) == 0
    assert capsys.readouterr().err == ""  # real hosts: no warning
    toml = _kiosk_toml(tmp_path / "a.tar")
    assert (toml["mqtt"]["host"], toml["mqtt"]["port"]) == ("fleet.example", 8884)
    assert toml["bundles"]["http_url"] == "https://fleet.example:8443"
    assert "data_dir" not in toml["kiosk"]

    # flags win; a kiosk pointed at itself, with no web URL, is enrolled with a warning
    assert provision(["enrol", "q7-0002", *common, "--broker-host", "127.0.0.1",
                      "--broker-port", "1883", "--http-url", "", "--data-dir",
                      "/var/lib/greengate/q7-0002", "--out", str(tmp_path / "b.tar")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "127.0.0.1:1883" in err \
        and "no http_url" in err, err
    toml = _kiosk_toml(tmp_path / "b.tar")
    assert (toml["mqtt"]["host"], toml["mqtt"]["port"], toml["bundles"]["http_url"]) == \
        ("127.0.0.1", 1883, "")
    assert toml["kiosk"]["data_dir"] == "/var/lib/greengate/q7-0002"


def test_enrol_without_hosts_from_init_warns_about_localhost(tmp_path, database_url, capsys):
    """A PKI from before fleet.json and no [enrol]: [mqtt] host, "localhost" by default."""
    config = _fleet_toml(tmp_path, database_url)
    pki = tmp_path / "data" / "pki"
    assert provision(["init", "--dir", str(pki), "--host", "fleet.example"]) == 0
    (pki / "fleet.json").unlink()
    migrate.upgrade(engine := make_engine(database_url))
    engine.dispose()
    capsys.readouterr()
    assert provision(["enrol", "q7-0003", "--fleet-config", str(config), "--out",
                      str(tmp_path / "c.tar")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "localhost:8883, the kiosk itself" in err, err
    assert _kiosk_toml(tmp_path / "c.tar")["mqtt"]["host"] == "localhost"


def test_init_keeps_a_bundle_key_made_by_the_fleet_first(tmp_path):
    """The README once had `greengate-fleet bundles key --create` before init, which then
    refused ("holds keys already"): init keeps that key, kiosks may pin it already."""
    config = _fleet_toml(tmp_path, "sqlite:///" + str(tmp_path / "unused.sqlite"))
    env = {**os.environ, "GREENGATE_FLEET_CONFIG": str(config)}
    made = subprocess.run([VENV_BIN / "greengate-fleet", "bundles", "key", "--create"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    pki = tmp_path / "data" / "pki"
    key_before = (pki / "bundle-signing.key").read_bytes()
    done = subprocess.run([VENV_BIN / "greengate-provision", "init", "--dir", str(pki),
                           "--host", "fleet.example"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kept the bundle-signing key" in done.stdout
    assert (pki / "bundle-signing.key").read_bytes() == key_before
    assert (pki / "bundle-signing.pub.pem").read_text() == made.stdout  # what kiosks pin
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    assert stat.S_IMODE((pki / "bundle-signing.key").stat().st_mode) == 0o600
    # the rest of the PKI is still guarded
    again = subprocess.run([VENV_BIN / "greengate-provision", "init", "--dir", str(pki),
                            "--host", "fleet.example"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "holds keys already" in again.stderr


def test_init_refuses_a_foreign_file_in_place_of_the_bundle_key(tmp_path, capsys):
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "bundle-signing.key").write_text("not a key\n")
    assert provision(["init", "--dir", str(pki), "--host", "fleet.example"]) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`greengate-provision issuer mint | head`: a real pipe whose reader is gone before
    the first write. The shell's status for SIGPIPE, nothing on stderr."""
    assert provision(["issuer", "init", "--dir", str(tmp_path / "issuer")]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # `head` has read what it wanted and left
    try:
        done = subprocess.run(
            [VENV_BIN / "greengate-provision", "issuer", "mint", "--dir",
             str(tmp_path / "issuer"), "--type", "v", "--date", "2021-09-01", "--iat",
             "2021-09-01T00:00:00Z", "--exp", "2022-09-01T00:00:00Z"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.stderr == "", done.stderr
    assert done.returncode == 141
    # and through a shell pipeline with `head`, as the issue ran it
    shell = subprocess.run(
        f"set -o pipefail; for i in 1 2 3; do {VENV_BIN}/greengate-provision issuer mint "
        f"--dir {tmp_path / 'issuer'} --type v --date 2021-09-01 --iat 2021-09-01T00:00:00Z "
        "--exp 2022-09-01T00:00:00Z | head -c 4; done",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr
    assert shell.stdout == "HC1:" * 3


# --- the broker's rules --------------------------------------------------------------------
def test_a_kiosk_speaks_only_for_itself_and_reads_only_bundles(fleet, district):
    a, b = enrol_bundle(fleet, "q7-a"), enrol_bundle(fleet, "q7-b")
    pki = fleet.pki
    watcher = Client(fleet, str(pki / "ca.pem"), str(pki / "fleet.pem"), str(pki / "fleet.key"),
                     "watcher")
    assert watcher.connect()
    watcher.client.subscribe("gg/v1/kiosk/#", qos=1)
    kiosk_a = Client(fleet, *identity(a), "q7-a")
    assert kiosk_a.connect()
    wait_until(lambda: watcher.subacks, 5, "watcher subscribed")

    kiosk_a.client.publish(messages.scan_topic("q7-b"), b"forged", qos=1).wait_for_publish(5)
    kiosk_a.client.publish(messages.scan_topic("q7-a"), b"mine", qos=1).wait_for_publish(5)
    wait_until(lambda: watcher.messages, 5, "the kiosk's own scan")
    time.sleep(0.3)
    assert watcher.messages == [(messages.scan_topic("q7-a"), b"mine")]  # never the forgery

    # Reading: Mosquitto grants any SUBSCRIBE and checks read access per message
    kiosk_a.client.subscribe([(messages.scan_topic("q7-b"), 1),
                              (messages.bundle_topic("hcmc", "#"), 1)])
    wait_until(lambda: kiosk_a.subacks, 5, "suback")
    kiosk_b = Client(fleet, *identity(b), "q7-b")
    assert kiosk_b.connect()
    kiosk_b.client.subscribe(messages.bundle_topic("hcmc", "#"), qos=1)
    wait_until(lambda: kiosk_b.subacks, 5, "suback")
    kiosk_b.client.publish(messages.scan_topic("q7-b"), b"b's own", qos=1).wait_for_publish(5)
    # nor may a kiosk publish bundles (they are signed, but it may not even try)
    kiosk_a.client.publish(messages.bundle_topic("hcmc", "trust"), b"x", qos=1).wait_for_publish(5)
    fleet_pub = watcher.client.publish(messages.bundle_topic("hcmc", "trust"), b"signed", qos=1)
    fleet_pub.wait_for_publish(5)
    wait_until(lambda: len(watcher.messages) == 2 and kiosk_a.messages and kiosk_b.messages,
               5, "b's scan at the fleet, the fleet's bundle at both kiosks")
    time.sleep(0.3)
    assert watcher.messages[1] == (messages.scan_topic("q7-b"), b"b's own")
    assert kiosk_a.messages == [(messages.bundle_topic("hcmc", "trust"), b"signed")]
    assert kiosk_b.messages == [(messages.bundle_topic("hcmc", "trust"), b"signed")]
    # a will under another kiosk's id: Mosquitto checks it when it would be sent. Beside
    # it, the same kiosk's will under its own id shows that wills do arrive here. (Both
    # connect as q7-a whatever id they ask for: kiosk_a leaves first.)
    kiosk_a.close()
    sneaky = Client(fleet, *identity(a), "q7-a-2", will=(messages.presence_topic("q7-b"), b"x"))
    honest = Client(fleet, *identity(a), "q7-a-3", will=(messages.presence_topic("q7-a"), b"y"))
    for client in (sneaky, honest):
        assert client.connect()
        client.client.loop_stop()
        client.client.socket().close()  # gone without DISCONNECT: the will is due
    wait_until(lambda: (messages.presence_topic("q7-a"), b"y") in watcher.messages, 5,
               "the honest will")
    time.sleep(0.3)
    assert [m for m in watcher.messages if m[0] == messages.presence_topic("q7-b")] == []
    for c in (watcher, kiosk_b, sneaky):
        c.close()


def test_no_certificate_or_another_ca_cannot_connect(fleet, district, pki):
    """pki: the test suite's own CA, which this fleet does not trust."""
    ca = str(fleet.pki / "ca.pem")
    assert not Client(fleet, ca, None, None, "anonymous").connect()
    foreign = pki.client("q7-a")  # the right name, the wrong CA
    assert not Client(fleet, ca, foreign.cert, foreign.key, "q7-a").connect()
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)
    refused = []
    plain.on_connect = lambda *a: refused.append(a[3])
    try:  # no TLS at all: the listener speaks only TLS
        plain.connect("127.0.0.1", fleet.port, keepalive=5)
        plain.loop_start()
        time.sleep(1.0)
        plain.loop_stop()
    except OSError:
        pass
    assert not [r for r in refused if not r.is_failure]
    assert "certificate" in fleet.broker.log().lower()


INGEST_1 = "greengate-fleet-ingest-1"


def test_a_certificate_cannot_take_over_another_clients_session(fleet, district):
    """Mosquitto makes the client id the certificate's CN (use_username_as_clientid): a
    kiosk asking for another kiosk's id, or the ingest worker's, gets its own."""
    a, evil = enrol_bundle(fleet, "q7-a"), enrol_bundle(fleet, "q7-evil")
    ingest = Client(fleet, *fleet.files(INGEST_1), INGEST_1)
    ingest.client.connect("127.0.0.1", fleet.port, clean_start=False)  # a persistent session
    ingest.client.loop_start()
    wait_until(lambda: ingest.connacks, 5, "the ingest identity connected")
    ingest.client.subscribe("gg/v1/kiosk/#", qos=1)
    kiosk_a = Client(fleet, *identity(a), "q7-a")
    assert kiosk_a.connect()
    wait_until(lambda: ingest.subacks, 5, "suback")
    for victim in ("q7-a", INGEST_1):
        thief = Client(fleet, *identity(evil), victim)
        thief.client.connect("127.0.0.1", fleet.port, clean_start=False)
        thief.client.loop_start()
        wait_until(lambda: thief.connacks, 5, "the thief's CONNACK")
        assert not thief.connacks[0].is_failure  # it is let in, as itself
        thief.client.subscribe("gg/v1/kiosk/#", qos=1)
        wait_until(lambda: thief.subacks, 5, "the thief's suback")
        kiosk_a.client.publish(messages.scan_topic("q7-a"), victim.encode(),
                               qos=1).wait_for_publish(5)
        wait_until(lambda: (messages.scan_topic("q7-a"), victim.encode()) in ingest.messages,
                   5, "the scan at the ingest identity")
        time.sleep(0.5)
        thief.close()
        assert thief.messages == []  # not the ingest's session, and no right to read scans
        assert "as q7-evil (p5, c0" in fleet.broker.log()
    time.sleep(0.5)
    assert ingest.disconnects == [] and kiosk_a.disconnects == []  # never pushed off
    assert len(ingest.connacks) == 1 and len(kiosk_a.connacks) == 1
    assert "already connected, closing old connection" not in fleet.broker.log()
    ingest.close()
    kiosk_a.close()


def test_each_identity_reads_and_writes_only_what_its_role_needs(fleet, district):
    a, b = enrol_bundle(fleet, "q7-a"), enrol_bundle(fleet, "q7-b")
    ingest = Client(fleet, *fleet.files(INGEST_1), INGEST_1)
    web = Client(fleet, *fleet.files("greengate-fleet-web-1"), "greengate-fleet-web-1")
    kiosk_a, kiosk_b = Client(fleet, *identity(a), "q7-a"), Client(fleet, *identity(b), "q7-b")
    for c in (ingest, web, kiosk_a, kiosk_b):
        assert c.connect()
    ingest.client.subscribe([("gg/v1/kiosk/#", 1), ("gg/v1/bundle/#", 1)])
    web.client.subscribe([("gg/v1/kiosk/#", 1), ("gg/v1/confirm/#", 1), ("gg/v1/bundle/#", 1)])
    # each kiosk asks for both kiosks' confirmations: only its own may reach it
    for k in (kiosk_a, kiosk_b):
        k.client.subscribe([(messages.confirm_topic("q7-a"), 1),
                            (messages.confirm_topic("q7-b"), 1), ("gg/v1/bundle/#", 1)])
    wait_until(lambda: all(c.subacks for c in (ingest, web, kiosk_a, kiosk_b)), 5, "subacks")

    def send(client, topic, payload):
        client.client.publish(topic, payload, qos=1).wait_for_publish(5)

    send(kiosk_a, messages.scan_topic("q7-a"), b"scan")
    send(ingest, messages.confirm_topic("q7-a"), b"for a")
    send(ingest, messages.confirm_topic("q7-b"), b"for b")
    send(kiosk_b, messages.confirm_topic("q7-a"), b"forged by b")  # kiosks cannot confirm
    send(web, messages.confirm_topic("q7-a"), b"forged by web")  # nor can the web
    send(ingest, messages.bundle_topic("hcmc", "trust"), b"bundle by ingest")  # refused
    send(web, messages.bundle_topic("hcmc", "trust"), b"bundle by web")
    wait_until(lambda: ingest.messages and len(kiosk_a.messages) == 2 and
               len(kiosk_b.messages) == 2 and web.messages, 5, "what each may read")
    time.sleep(0.5)
    assert ingest.messages == [(messages.scan_topic("q7-a"), b"scan")]  # no bundle
    assert sorted(kiosk_a.messages) == [(messages.bundle_topic("hcmc", "trust"),
                                         b"bundle by web"),
                                        (messages.confirm_topic("q7-a"), b"for a")]
    assert sorted(kiosk_b.messages) == [(messages.bundle_topic("hcmc", "trust"),
                                         b"bundle by web"),
                                        (messages.confirm_topic("q7-b"), b"for b")]
    # the web server reads no scan and no confirmation, only the bundles it wrote
    assert web.messages == [(messages.bundle_topic("hcmc", "trust"), b"bundle by web")]
    for c in (ingest, web, kiosk_a, kiosk_b):
        c.close()


def test_identity_add_issues_a_worker_identity_and_the_broker_learns_it(fleet, district,
                                                                       capsys):
    from fleet import mqtt_identity

    with pytest.raises(mqtt_identity.IdentityError, match="identity add ingest 2"):
        mqtt_identity.ingest(fleet.config, "2")
    folder = enrol_bundle(fleet, "q7-a")
    capsys.readouterr()
    assert fleet.provision("identity", "add", "ingest", "2") == 0
    out = capsys.readouterr().out
    assert "greengate-fleet-ingest-2" in out and "ACL rewritten" in out
    assert "user greengate-fleet-ingest-2" in (fleet.tmp / "mosquitto" /
                                               "greengate.acl").read_text()
    worker2 = mqtt_identity.ingest(fleet.config, "2")
    assert worker2.cert == fleet.pki / "clients" / "greengate-fleet-ingest-2.pem"
    time.sleep(0.5)  # the SIGHUP
    second = Client(fleet, *fleet.files("greengate-fleet-ingest-2"), "x")
    assert second.connect()
    second.client.subscribe("gg/v1/kiosk/#", qos=1)
    kiosk = Client(fleet, *identity(folder), "q7-a")
    assert kiosk.connect()
    wait_until(lambda: second.subacks, 5, "suback")
    kiosk.client.publish(messages.scan_topic("q7-a"), b"s", qos=1).wait_for_publish(5)
    wait_until(lambda: second.messages, 5, "the new worker identity reads scans")
    assert fleet.provision("identity", "add", "web") == 0
    assert "greengate-fleet-web-11" in capsys.readouterr().out
    assert fleet.provision("identity", "add", "ingest", "2") == 2  # exists
    assert fleet.provision("identity", "add", "ingest") == 2  # which worker?
    for c in (second, kiosk):
        c.close()


def test_processes_of_one_host_take_distinct_web_identities(fleet, district):
    from fleet.publisher import Publisher

    first = Publisher(fleet.config, fleet.sessions(), backoff=(0.1, 0.5)).start()
    second = Publisher(fleet.config, fleet.sessions(), backoff=(0.1, 0.5)).start()
    try:
        assert (first.client_id, second.client_id) == ("greengate-fleet-web-1",
                                                       "greengate-fleet-web-2")
        wait_until(lambda: first.stats["connects"] and second.stats["connects"], 10,
                   "both publishers connected")
        time.sleep(1.0)
        assert (first.stats["connects"], second.stats["connects"]) == (1, 1)
        assert "already connected" not in fleet.broker.log()
    finally:
        first.stop()
    third = Publisher(fleet.config, fleet.sessions())  # the first one's, given back
    assert third.client_id == "greengate-fleet-web-1"
    third.identity.release()
    second.stop()


def test_enrolment_refuses_the_fleets_own_names(fleet, district, monkeypatch, capsys):
    monkeypatch.setenv("GREENGATE_MQTT_CLIENT_ID", "hcmc-fleet")
    capsys.readouterr()
    assert fleet.provision("enrol", "hcmc-fleet-ingest-1", "--token") == 2
    assert "fleet's own MQTT identities" in capsys.readouterr().err
    assert fleet.provision("enrol", "HCMC-Fleet-web-1", "--token") == 2
    assert fleet.provision("enrol", "hcmc-a", "--token") == 0


# --- retire --------------------------------------------------------------------------------
def test_retired_kiosk_is_cut_off_and_cannot_reconnect(fleet, district, capsys):
    folder = enrol_bundle(fleet, "q7-a")
    kiosk = Client(fleet, *identity(folder), "q7-a", reconnect=True)
    assert kiosk.connect()
    capsys.readouterr()
    assert fleet.provision("retire", "q7-a", "--reason", "stolen") == 0
    out = capsys.readouterr().out
    assert "1 certificate(s) revoked" in out and "live session" in out
    wait_until(lambda: kiosk.disconnects, 5, "the live session ended")
    time.sleep(1.5)  # paho keeps trying every 0.2-0.5 s
    assert len(kiosk.connacks) == 1  # never accepted again
    assert "certificate verify failed" in fleet.broker.log()
    with fleet.sessions()() as s:
        assert s.get(Kiosk, "q7-a").state == RETIRED
        (cert,) = s.scalars(select(KioskCertificate)).all()
        assert cert.revoked_at is not None
        actions = [a.action for a in s.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions[-1] == "kiosk.retire"
    crl = x509.load_pem_x509_crl((fleet.tmp / "mosquitto" / "greengate" / "crl.pem").read_bytes())
    assert [e.serial_number for e in crl] == [int(cert.serial, 16)]
    # a fresh connection with the same certificate: refused in the TLS handshake
    assert not Client(fleet, *identity(folder), "q7-a-again").connect()
    kiosk.close()
    # again: nothing more to revoke, the broker's side is redone (a failed reload or
    # kick the first time is finished this way)
    assert fleet.provision("retire", "q7-a") == 0
    assert "retired already" in capsys.readouterr().out
    assert fleet.provision("crl") == 0
    crl = x509.load_pem_x509_crl((fleet.tmp / "mosquitto" / "greengate" / "crl.pem").read_bytes())
    assert [e.serial_number for e in crl] == [int(cert.serial, 16)]
    assert fleet.provision("retire", "nobody") == 2
    assert "no kiosk 'nobody'" in capsys.readouterr().err


def test_retire_without_a_broker_reload_warns_and_fails(fleet, district, capsys):
    folder = enrol_bundle(fleet, "q7-a")
    hup = f"kill -HUP {fleet.broker.proc.pid}"
    fleet.write_config("")
    kiosk = Client(fleet, *identity(folder), "q7-a", reconnect=True)
    assert kiosk.connect()
    capsys.readouterr()
    assert fleet.provision("retire", "q7-a") == 1
    done = capsys.readouterr()
    assert "1 certificate(s) revoked" in done.out
    assert "WARNING: the broker has NOT re-read the CRL" in done.err
    assert "[pki] broker_reload is empty" in done.err
    assert "systemctl reload mosquitto" in done.err and "greengate-provision retire q7-a" \
        in done.err
    assert "ended" not in done.out  # no claim that it is cut off...
    time.sleep(0.5)
    assert kiosk.disconnects == []  # ...and it is not: the broker never heard of it
    with fleet.sessions()() as s:
        assert s.get(Kiosk, "q7-a").state == RETIRED
    # a reload command that fails is the same
    fleet.write_config("false")
    assert fleet.provision("retire", "q7-a") == 1
    assert "exited with 1" in capsys.readouterr().err
    assert fleet.provision("crl") == 1
    assert "greengate-provision crl" in capsys.readouterr().err
    # told what to do, the admin does it: then the session ends and stays ended
    fleet.write_config(hup)
    assert fleet.provision("retire", "q7-a") == 0
    wait_until(lambda: kiosk.disconnects, 5, "the live session ended")
    time.sleep(1.5)
    assert len(kiosk.connacks) == 1
    kiosk.close()


# --- enrolment: bundle, then token over HTTPS ---------------------------------------------
def test_bundle_holds_what_the_pi_needs(fleet, district):
    folder = enrol_bundle(fleet, "q7-a")
    assert sorted(p.name for p in folder.iterdir()) == sorted(enrolment.FILES)
    with tarfile.open(fleet.tmp / "q7-a.tar") as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes["greengate/kiosk.key"] == 0o600
    assert stat.S_IMODE((fleet.tmp / "q7-a.tar").stat().st_mode) == 0o600
    config = tomllib.loads((folder / enrolment.CONFIG).read_text())
    assert config["kiosk"]["id"] == "q7-a" and config["kiosk"]["district"] == "Quận 7"
    assert config["kiosk"]["location"] == "Chợ Tân Mỹ"
    assert (config["mqtt"]["host"], config["mqtt"]["port"]) == ("127.0.0.1", fleet.port)
    # no pseudonym key: holder identities are sealed to the fleet (docs/privacy.md)
    assert config["privacy"] == {"pseudonyms": True}
    secret = (fleet.pki / "pseudonym.key").read_text().strip()
    assert secret not in "".join(p.read_text(errors="replace") for p in folder.iterdir())
    from device import config as kiosk_config
    loaded = kiosk_config.load(folder / enrolment.CONFIG)  # the kiosk accepts it as it is
    assert loaded.resolve(loaded.mqtt.cert) == folder / enrolment.CERT
    cert = x509.load_pem_x509_certificate((folder / enrolment.CERT).read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "q7-a"
    # the install script takes this very tar (scripts/install-kiosk.sh, tests of its own
    # in tests/test_install_kiosk.py)
    root = fleet.tmp / "root"
    root.mkdir()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-kiosk.sh"), "--root", str(root),
                           "--no-apt", "--no-user", "--no-venv", "--no-systemctl", "--bundle",
                           str(fleet.tmp / "q7-a.tar")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in enrolment.FILES:
        assert (root / "etc" / "greengate" / name).read_bytes() == (folder / name).read_bytes()
    # a district is created only when it is named too: a mistyped code is an error
    assert provision(["enrol", "q1-a", "--location", "q1-market", "--district", "q11",
                      "--out", str(fleet.tmp / "q1.tar")]) == 2
    assert provision(["enrol", "q1-a", "--location", "q1-market", "--district", "q1",
                      "--district-name", "Quận 1", "--out", str(fleet.tmp / "q1.tar")]) == 0
    config = tomllib.loads(tarfile.open(fleet.tmp / "q1.tar").extractfile(
        "greengate/kiosk.toml").read().decode())
    assert config["kiosk"]["district"] == "Quận 1"
    # the same id again is refused; so are names of the fleet's own services
    assert provision(["enrol", "q7-a", "--out", str(fleet.tmp / "again.tar")]) == 2
    assert provision(["enrol", "greengate-fleet", "--out", str(fleet.tmp / "x.tar")]) == 2
    assert not (fleet.tmp / "x.tar").exists()


@pytest.fixture
def https_fleet(fleet):
    """The fleet web server under gunicorn with the fleet's server certificate."""
    log = (fleet.tmp / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{fleet.web_port}",
         "--certfile", str(fleet.pki / "server.pem"), "--keyfile", str(fleet.pki / "server.key"),
         "fleet.wsgi:app"],
        env={**os.environ, "GREENGATE_FLEET_CONFIG": str(fleet.config_path)},
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    context = ssl.create_default_context(cafile=str(fleet.pki / "ca.pem"))
    url = f"https://127.0.0.1:{fleet.web_port}"

    def up():
        assert proc.poll() is None, (fleet.tmp / "gunicorn.log").read_text()
        try:
            urllib.request.urlopen(url + "/api/v1/enrol/ca", timeout=2, context=context).close()
            return True
        except OSError:
            return False
    wait_until(up, 30, "gunicorn over HTTPS")
    fleet.url = url
    yield fleet
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    log.close()


def kiosk_enrol(url: str, token: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device.cli", "enrol", "--fleet", url,
                           "--token", token, "--dir", str(directory)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def make_token(fleet, capsys, kiosk_id: str) -> str:
    capsys.readouterr()
    assert fleet.provision("enrol", kiosk_id, "--token") == 0
    lines = capsys.readouterr().out.splitlines()
    return next(line for line in lines if line.startswith("gge1."))


def test_a_token_works_once_and_the_key_never_leaves_the_pi(https_fleet, capsys):
    fleet = https_fleet
    token = make_token(fleet, capsys, "q7-pi")
    pi = fleet.tmp / "pi-etc"
    done = kiosk_enrol(fleet.url, token, pi)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((pi / enrolment.KEY).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((pi / enrolment.CERT).read_bytes())
    key = x509.load_pem_x509_certificate((pi / enrolment.CERT).read_bytes()).public_key()
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "q7-pi"
    from cryptography.hazmat.primitives import serialization
    private = serialization.load_pem_private_key((pi / enrolment.KEY).read_bytes(), None)
    assert private.public_key().public_numbers() == key.public_numbers()
    with fleet.sessions()() as s:
        row = s.scalars(select(EnrolmentToken)).one()
        assert row.used_at is not None and token.split(".")[1] not in row.token_hash
        assert s.scalars(select(KioskCertificate.via)).all() == ["token"]
    # the enrolled Pi can connect to the broker with what it got
    kiosk = Client(fleet, *identity(pi), "q7-pi")
    assert kiosk.connect()
    kiosk.close()

    again = kiosk_enrol(fleet.url, token, fleet.tmp / "thief")
    assert again.returncode == 1 and "used already" in again.stderr
    assert not (fleet.tmp / "thief" / enrolment.KEY).exists()


def test_a_token_checks_the_fleet_before_sending_and_expires(https_fleet, capsys):
    fleet = https_fleet
    token = make_token(fleet, capsys, "q7-pi")
    secret, pin = enrolment.parse_token(token)
    wrong_pin = enrolment.format_token(secret, "0" * 64)
    done = kiosk_enrol(fleet.url, wrong_pin, fleet.tmp / "a")
    assert done.returncode == 1 and "not the one this token was made for" in done.stderr
    with fleet.sessions()() as s:  # nothing was sent: the token is still unused
        assert s.scalars(select(EnrolmentToken.used_at)).one() is None
        s.execute(update(EnrolmentToken).values(expires_at=time.time() - 1))
        s.commit()
    done = kiosk_enrol(fleet.url, token, fleet.tmp / "b")
    assert done.returncode == 1 and "expired" in done.stderr
    assert kiosk_enrol(fleet.url, "gge1.nope", fleet.tmp / "c").returncode == 2


def test_token_guessing_is_rate_limited(https_fleet, capsys):
    fleet = https_fleet
    token = make_token(fleet, capsys, "q7-pi")
    _, pin = enrolment.parse_token(token)
    context = ssl.create_default_context(cafile=str(fleet.pki / "ca.pem"))
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])).sign(key, hashes.SHA256())
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()

    def attempt(guess):
        request = urllib.request.Request(
            fleet.url + "/api/v1/enrol", headers={"Content-Type": "application/json"},
            data=json.dumps({"token": guess, "csr": csr_pem}).encode())
        try:
            urllib.request.urlopen(request, timeout=10, context=context)
            return 200
        except urllib.error.HTTPError as exc:
            return exc.code

    guesses = [attempt(enrolment.format_token(f"guess{i:012d}xxxxxx", pin * 2)) for i in range(5)]
    assert guesses == [403] * 5
    assert attempt(token) == 429  # even the right token, from this address, for a while
    with fleet.sessions()() as s:
        assert s.scalars(select(EnrolmentToken.used_at)).one() is None


# --- an enrolled kiosk's scans reach the ingest ---------------------------------------------
def test_enrolled_kiosks_scans_reach_the_ingest(fleet, district, tmp_path):
    folder = enrol_bundle(fleet, "q7-a")
    workers = Workers(tmp_path)
    try:
        worker = workers.start(fleet.config, worker="1", presence=True)
        outbox = Outbox(tmp_path / "outbox.sqlite", 1000)
        reporter = Reporter(outbox, "q7-a", "127.0.0.1", fleet.port, tls=identity(folder),
                            backoff=(0.2, 1.0))
        reporter.start()
        try:
            outbox.add("scan-0001", messages.scan_topic("q7-a"),
                       lambda seq: messages.encode(scan("q7-a", "scan-0001", ts=time.time(),
                                                        seq=seq)))
            reporter.notify("scan-0001")
            wait_until(lambda: worker.metrics.value("greengate_ingest_stored_total",
                                                    kind="scan") == 1, 15, "the scan stored")
            # the fleet's confirmation comes back through the generated ACL (only q7-a
            # may read gg/v1/confirm/q7-a) and empties the kiosk's outbox
            wait_until(lambda: outbox.depth() == 0, 15, "the confirmation at the kiosk")
            with fleet.sessions()() as s:
                stored = s.scalars(select(Scan)).one()
                assert (stored.kiosk_id, stored.scan_id, stored.seq) == ("q7-a", "scan-0001", 1)
                assert stored.location_id is not None  # the enrolment's location
                wait_until(lambda: s.get(Kiosk, "q7-a", populate_existing=True).state ==
                           "online", 10, "online")
        finally:
            reporter.stop()
            outbox.close()
    finally:
        workers.close()


def test_the_fleet_signs_only_sound_requests_and_names_the_kiosk_itself(tmp_path):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from fleet.pki import PKIError, init

    pki = init(tmp_path / "pki", ["localhost"])

    def csr(key, cn="whatever-i-like"):
        return x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])).sign(
            key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    cert = pki.sign_csr(csr(ec.generate_private_key(ec.SECP256R1()), "greengate-fleet"), "q7-a")
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "q7-a"
    assert cert.issuer == pki.ca_cert.subject
    with pytest.raises(PKIError, match="too small"):
        pki.sign_csr(csr(rsa.generate_private_key(65537, 1024)), "q7-a")
    with pytest.raises(PKIError, match="secp192r1|not accepted"):
        pki.sign_csr(csr(ec.generate_private_key(ec.SECP192R1())), "q7-a")
    with pytest.raises(PKIError, match="not a PEM CSR"):
        pki.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "q7-a")


def test_a_kiosk_enrolled_at_a_workers_only_place_gets_its_maps_and_roster_first(
        fleet, district, capsys):
    """A kiosk enrolled by provisioning at a workers-only control point must not start as an
    ordinary kiosk (admitting any green stranger): its policy bundle entry and its
    organisation's roster are signed and on the broker before it first connects."""
    import cbor2

    from fleet import organisations
    from fleet.models import District, Location
    from greengate import bundle, roster

    with fleet.sessions()() as s:
        q7 = s.scalar(select(District).where(District.code == "q7"))
        org = organisations.create(s, code="acme", name="Acme", kind="business", district=q7,
                                   actor="test")
        s.flush()
        organisations.set_status(s, org, "approved", actor="test", role="admin", quota=5)
        s.add(Location(code="acme-gate", name="Acme gate", district_id=q7.id,
                       organisation_id=org.id, workers_only=True))
        s.commit()
    capsys.readouterr()
    folder = enrol_bundle(fleet, "q7-gate", "acme-gate")
    assert "policy bundle and roster are published" in capsys.readouterr().out
    kiosk = Client(fleet, *identity(folder), "q7-gate")
    assert kiosk.connect()
    try:
        kiosk.client.subscribe(messages.roster_topic("q7-gate"), qos=1)
        kiosk.client.subscribe(messages.bundle_topic("hcmc", "policy"), qos=1)
        wait_until(lambda: len(kiosk.messages) == 2, 10, "the retained roster and policy")
    finally:
        kiosk.close()
    got = {topic: payload for topic, payload in kiosk.messages}
    # signatures and refusals are the kiosk tests' (test_roster_bundle): here, what was sent
    policy_body = cbor2.loads(bundle.cose.parse(got[messages.bundle_topic("hcmc", "policy")])
                              .payload)["body"]
    assert policy_body["workers_only"] == {"q7-gate": "acme"}
    held = roster.parse_roster(cbor2.loads(bundle.cose.parse(
        got[messages.roster_topic("q7-gate")]).payload)["body"])
    assert held.organisation == "acme" and "q7-gate" in held.kiosks


# --- a kiosk behind a district broker -------------------------------------------------------
def test_a_kiosk_enrolled_behind_a_bridge_lists_its_district_broker_then_the_core(
        https_fleet, district, capsys):
    """`enrol --bridge d1` (bundle and token alike): kiosk.toml names d1's registered
    address first and the core as its fallback (docs/scaling.md#kiosk-failover), and the
    kiosk accepts it as it is."""
    from device import config as kiosk_config
    from fleet import bridges
    fleet = https_fleet
    with fleet.sessions()() as s:
        bridges.register(s, "d1", "d1.example.org:8883")
        s.commit()
    core = ("127.0.0.1", fleet.port)
    out = fleet.tmp / "q7-b.tar"
    assert fleet.provision("enrol", "q7-b", "--location", "loc-b", "--district", "q7",
                           "--location-name", "Chợ", "--bridge", "d1", "--out", str(out)) == 0
    with tarfile.open(out) as tar:
        tar.extractall(fleet.tmp / "pi-b", filter="data")
    via_bundle = fleet.tmp / "pi-b" / enrolment.BUNDLE_DIR / enrolment.CONFIG
    capsys.readouterr()
    assert fleet.provision("enrol", "q7-c", "--token", "--bridge", "d1") == 0
    token = next(line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("gge1."))
    done = kiosk_enrol(fleet.url, token, fleet.tmp / "pi-c")
    assert done.returncode == 0, done.stderr
    for path in (via_bundle, fleet.tmp / "pi-c" / enrolment.CONFIG):
        mqtt_section = tomllib.loads(path.read_text())["mqtt"]
        assert mqtt_section["brokers"] == ["d1.example.org:8883", "%s:%d" % core]
        assert "host" not in mqtt_section and "port" not in mqtt_section
        loaded = kiosk_config.load(path)
        assert kiosk_config.brokers(loaded) == [("d1.example.org", 8883), core]
    with fleet.sessions()() as s:
        assert s.get(Kiosk, "q7-b").bridge == "d1" and s.get(Kiosk, "q7-c").bridge == "d1"
    capsys.readouterr()
    assert fleet.provision("enrol", "q7-d", "--token", "--bridge", "d9") == 2
    assert "no bridge 'd9' registered" in capsys.readouterr().err
    with fleet.sessions()() as s:
        assert s.get(Kiosk, "q7-d") is None  # nothing half done

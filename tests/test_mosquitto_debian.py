"""The production broker path: Debian's own /etc/mosquitto/mosquitto.conf (copied
verbatim into tests/data/debian/) including a conf.d that holds what
`greengate-provision mosquitto-config --out …/conf.d` wrote. A generated option that
Debian's main file sets already (persistence_location) stops Mosquitto from starting,
which no test saw while every test ran the generated file as the main one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion

from provisioning.cli import main as provision
from fleet.pki import PKI
from tests.broker import find_mosquitto, free_port, wait_until

DEBIAN_CONF = Path(__file__).parent / "data" / "debian" / "mosquitto.conf"
# absolute paths of a Debian system, moved under a test's own root
SYSTEM_PATH = re.compile(r"(?<![\w./~-])/(etc|var|run|media|opt|tmp|srv)/")


def moved(text: str, root: Path) -> str:
    """`text` with every system path (/etc/…, /var/…, /run/…) under `root` instead."""
    return SYSTEM_PATH.sub(lambda m: f"{root}/{m.group(1)}/", text)


class DebianBroker:
    """mosquitto -c <Debian's mosquitto.conf, paths moved under root>: its include_dir is
    root/etc/mosquitto/conf.d, its store root/var/lib/mosquitto, its log
    root/var/log/mosquitto/mosquitto.log."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = Path(root), port
        self.conf_d = self.root / "etc" / "mosquitto" / "conf.d"
        self.main = self.root / "etc" / "mosquitto" / "mosquitto.conf"
        self.log = self.root / "var" / "log" / "mosquitto" / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "DebianBroker":
        for folder in (self.conf_d, self.root / "run" / "mosquitto",
                       self.root / "var" / "lib" / "mosquitto", self.log.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.main.write_text(moved(DEBIAN_CONF.read_text(), self.root))
        if os.getuid() == 0:
            # as root Mosquitto drops to user mosquitto, who cannot enter pytest's 0700
            # temporary directories; the production broker runs as that user on /etc
            (self.conf_d / "00-test-user.conf").write_text("user root\n")
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self.main)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"Mosquitto on Debian's mosquitto.conf exited {self.proc.returncode}: "
                    f"{self.proc.stdout.read().decode(errors='replace')}{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"Mosquitto did not listen on {self.port}: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _client(pki: PKI, name: str, directory: Path, received: list | None = None):
    """A paho client with a fresh certificate CN=name from the fleet CA (as enrol makes)."""
    key, cert = pki.issue_kiosk(name)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.path("ca.pem")), certfile=str(cert_path),
                   keyfile=str(key_path))
    connected = []
    client.on_connect = lambda c, u, f, rc, p: connected.append(rc)
    if received is not None:
        client.on_message = lambda c, u, m: received.append(m.topic)
    return client, connected


def test_generated_conf_d_loads_in_debians_mosquitto_conf_and_enforces_the_acl(tmp_path):
    port = free_port()
    pki_dir = tmp_path / "pki"
    assert provision(["init", "--dir", str(pki_dir), "--host", "localhost"]) == 0
    broker = DebianBroker(tmp_path / "root", port)
    # exactly the production command, its --out moved under the test's root
    assert provision(["mosquitto-config", "--pki", str(pki_dir), "--out",
                      str(broker.conf_d), "--port", str(port), "--bind", "127.0.0.1"]) == 0
    options = [line.split()[0] for line in (broker.conf_d / "greengate.conf").read_text()
               .splitlines() if line.strip() and not line.startswith("#")]
    assert "persistence_location" not in options and "pid_file" not in options
    broker.start()
    try:
        pki = PKI(pki_dir)
        got: list[str] = []
        reader, reader_up = _client(pki, "greengate-fleet-ingest-1", tmp_path, got)
        kiosk, kiosk_up = _client(pki, "q7-a", tmp_path)
        for client in (reader, kiosk):
            client.connect("localhost", port)  # TLS: the server certificate names localhost
            client.loop_start()
        try:
            wait_until(lambda: reader_up and kiosk_up, timeout=10)
            assert reader_up[0] == 0 and kiosk_up[0] == 0, (reader_up, kiosk_up)
            reader.subscribe("gg/v1/kiosk/#", qos=1)
            time.sleep(0.3)
            kiosk.publish("gg/v1/kiosk/q7-b/heartbeat", b"{}", qos=1).wait_for_publish(5)
            kiosk.publish("gg/v1/kiosk/q7-a/heartbeat", b"{}", qos=1).wait_for_publish(5)
            wait_until(lambda: got, timeout=10)
            time.sleep(0.3)
            # the ACL: a kiosk speaks only under its own id
            assert got == ["gg/v1/kiosk/q7-a/heartbeat"]
        finally:
            for client in (reader, kiosk):
                client.loop_stop()
                client.disconnect()
        # Debian's persistence_location is the one in use
        broker.stop()
        assert (broker.root / "var" / "lib" / "mosquitto" / "mosquitto.db").exists(), \
            broker.log_text()
    finally:
        broker.stop()


def test_the_standalone_file_still_runs_as_a_main_file(tmp_path):
    """--standalone (or --persistence-dir, as the demo passes it) gives a file Mosquitto
    runs alone, keeping its store where it was told."""
    port = free_port()
    pki_dir = tmp_path / "pki"
    assert provision(["init", "--dir", str(pki_dir), "--host", "localhost"]) == 0
    store = tmp_path / "store"
    store.mkdir()
    assert provision(["mosquitto-config", "--pki", str(pki_dir), "--out", str(tmp_path / "m"),
                      "--port", str(port), "--bind", "127.0.0.1", "--standalone",
                      "--persistence-dir", str(store)]) == 0
    text = (tmp_path / "m" / "greengate.conf").read_text()
    assert f"persistence_location {store}/" in text
    main = tmp_path / "main.conf"
    main.write_text(text + ("user root\n" if os.getuid() == 0 else ""))
    proc = subprocess.Popen([find_mosquitto(), "-c", str(main)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        def listening():
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_until(listening, timeout=10)
    finally:
        proc.terminate()
        proc.wait(5)
    assert (store / "mosquitto.db").exists()


def test_the_default_file_is_refused_nowhere_but_says_what_it_is_for(tmp_path, capsys):
    pki_dir = tmp_path / "pki"
    assert provision(["init", "--dir", str(pki_dir), "--host", "localhost"]) == 0
    capsys.readouterr()
    assert provision(["mosquitto-config", "--pki", str(pki_dir), "--out",
                      str(tmp_path / "conf.d")]) == 0
    out = capsys.readouterr().out
    assert "include_dir" in out and "--standalone" in out

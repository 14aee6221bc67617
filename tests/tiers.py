"""Brokers in tiers for tests: a core Mosquitto and district Mosquittos bridged to it,
each running exactly the configuration `greengate-provision` generates (real TLS, the
real ACL of each tier, Mosquitto's own bridge), on this machine.

    tiers = Tiers(tmp_path, ("d1", "d2")).start()
    tiers.core, tiers.district["d1"]          # tests.broker.Broker-like: host, port, start, stop
    tiers.client_tls("k1")                    # TLSFiles of a kiosk certificate (CN k1)
    tiers.identity_tls("greengate-fleet-ingest-1")   # a fleet identity made by init
    tiers.address("d1")                       # "127.0.0.1:PORT": what its kiosks connect to
    tiers.cut("d1"); tiers.restore("d1")      # the district-core link (a TCP relay) drops / is back
    tiers.restart_district("d1"); tiers.kill_district("d1"); tiers.restart_core()
    tiers.wait_bridged("d1")                  # the core holds "1" for the bridge
    tiers.close()

Each bridge reaches the core through a relay the test owns, so a cut is a real broken
link (every connection dropped, new ones refused) without touching either broker.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from provisioning import bridge_config, mosquitto_config
from fleet import pki as pki_module
from fleet.pki import PKI
from tests.broker import Broker, Subscriber, TLSFiles, free_port, wait_until
from greengate import messages


OBSERVER = "tiers-observer"  # the harness's own reader of gg/v1/bridge/#


class ProvisionedBroker(Broker):
    """Mosquitto on exactly the configuration provisioning wrote (plus a log file, and
    running as the test's user)."""

    def __init__(self, directory: Path, generated: Path, port: int, pki: PKI | None = None,
                 tls_dir: Path | None = None):
        self.generated = generated
        self.fleet_pki = pki
        self.tls_dir = tls_dir
        super().__init__(directory, None, port=port)
        self.host = "127.0.0.1"

    @property
    def tls(self) -> bool:
        return self.fleet_pki is not None or super().tls

    def client_tls(self, identity: str) -> TLSFiles | None:
        if self.fleet_pki is None:
            return super().client_tls(identity)
        return kiosk_tls(self.fleet_pki, self.tls_dir, identity)

    def _write_conf(self) -> None:
        lines = [self.generated.read_text()]
        if os.getuid() == 0:
            lines.append("user root")
        lines += [f"log_dest file {self.log_path}", "log_type all",
                  "connection_messages true", "log_timestamp true"]
        self.conf_path.write_text("\n".join(lines) + "\n")


def kiosk_tls(pki: PKI, directory: Path, identity: str) -> TLSFiles:
    """A client certificate (CN = identity) of the fleet CA, written once under directory.
    A fleet identity made by init (clients/) is used as it is."""
    cert, key = pki.identity_paths(identity)
    if cert.exists():
        return TLSFiles(str(pki.path("ca.pem")), str(cert), str(key))
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{identity}.pem", directory / f"{identity}.key"
    if not cert.exists():
        private, certificate = pki.issue_kiosk(identity)
        pki_module._write(key, pki_module._key_pem(private), 0o600)
        pki_module._write(cert, pki_module._cert_pem(certificate), 0o644)
    return TLSFiles(str(pki.path("ca.pem")), str(cert), str(key))


class Relay:
    """127.0.0.1:port -> target, byte for byte, until cut."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self.open:  # cut while this one was being connected
                    client.close()
                    upstream.close()
                    continue
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Every relayed connection dropped (as a broken link: no MQTT goodbye), new ones
        refused until restore()."""
        with self._lock:
            self.open = False
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


class Tiers:
    def __init__(self, tmp: Path, districts=("d1", "d2"), *, keepalive: int = 5):
        self.tmp = Path(tmp)
        self.pki = pki_module.init(self.tmp / "pki", ["localhost", "127.0.0.1"], web=2)
        self.tls_dir = self.tmp / "client-tls"
        core_port = free_port()
        self.relays: dict[str, Relay] = {}
        self.district: dict[str, ProvisionedBroker] = {}
        for name in districts:
            relay = Relay(("127.0.0.1", core_port))
            self.relays[name] = relay
            port = free_port()
            out = self.tmp / f"{name}-conf"
            bridge_config.write(self.pki, out, name, address=f"127.0.0.1:{port}",
                                core=f"127.0.0.1:{relay.port}", bind="127.0.0.1",
                                persistence_dir=str(self.tmp / f"{name}-persist"))
            (self.tmp / f"{name}-persist").mkdir()
            # a short keepalive: the core notices a broken link (and publishes the "0")
            # within seconds instead of a minute
            conf = out / "greengate.conf"
            conf.write_text(conf.read_text().replace(
                f"keepalive_interval {bridge_config.KEEPALIVE}", f"keepalive_interval {keepalive}")
                .replace(f"restart_timeout 1 {bridge_config.RESTART_CAP}", "restart_timeout 1 2"))
            self.district[name] = ProvisionedBroker(self.tmp / f"{name}-broker", conf, port,
                                                    self.pki, self.tls_dir)
        # who reads the bridges' state for the harness: an identity of its own (a fleet
        # process's would take over that process's session: the CN is the client id)
        self.pki.issue_identity(OBSERVER, "ingest")
        # the core's configuration last: its ACL names every bridge identity
        mosquitto_config.write(self.pki, self.tmp / "core-conf", port=core_port,
                               bind="127.0.0.1", persistence_dir=str(self.tmp / "core-persist"))
        (self.tmp / "core-persist").mkdir()
        self.core = ProvisionedBroker(self.tmp / "core-broker",
                                      self.tmp / "core-conf" / "greengate.conf", core_port,
                                      self.pki, self.tls_dir)

    # --- addresses and identities ------------------------------------------------------
    def address(self, name: str | None = None) -> str:
        broker = self.core if name is None else self.district[name]
        return f"127.0.0.1:{broker.port}"

    def client_tls(self, identity: str) -> TLSFiles:
        return kiosk_tls(self.pki, self.tls_dir, identity)

    identity_tls = client_tls

    def fleet_tls(self) -> TLSFiles:
        """For a fleet config: each process takes its own identity (clients/{identity})."""
        clients = self.pki.path(pki_module.CLIENTS)
        return TLSFiles(str(self.pki.path("ca.pem")), f"{clients}/{{identity}}.pem",
                        f"{clients}/{{identity}}.key")

    # --- life ----------------------------------------------------------------------------
    def start(self, wait: bool = True) -> "Tiers":
        self.core.start()
        for broker in self.district.values():
            broker.start()
        if wait:
            for name in self.district:
                self.wait_bridged(name)
        return self

    def bridge_state(self, name: str, timeout: float = 5.0) -> bytes | None:
        """What the core holds retained for the bridge (None: nothing within timeout)."""
        topic = messages.bridge_state_topic(name)
        with Subscriber(self.core, topic, tls=self.client_tls(OBSERVER), client_id=OBSERVER,
                        persistent=False) as sub:
            try:
                sub.wait_for(lambda m: any(x.topic == topic for x in m), timeout)
            except AssertionError:
                return None
            return [m for m in sub.snapshot() if m.topic == topic][-1].payload

    def wait_bridged(self, name: str, timeout: float = 20.0) -> None:
        wait_until(lambda: self.bridge_state(name, 1.0) == b"1", timeout,
                   f"bridge {name} connected to the core")

    def cut(self, name: str) -> None:
        self.relays[name].cut()

    def restore(self, name: str) -> None:
        self.relays[name].restore()

    def restart_district(self, name: str) -> None:
        self.district[name].restart()

    def kill_district(self, name: str) -> None:
        self.district[name].kill()

    def restart_core(self) -> None:
        self.core.restart()

    def close(self) -> None:
        for relay in self.relays.values():
            relay.close()
        for broker in [*self.district.values(), self.core]:
            broker.kill()

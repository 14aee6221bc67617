"""Many simulated kiosks through one broker vs two tiers (core + 2 bridged districts).

    python -m bench tiers [--kiosks 2000] [--rate 200] [--seconds 30] [--workers 1]
                          [--setups single,tiers] [--backend postgresql|sqlite]

One process drives every kiosk: a paho-mqtt client each, with its own TLS client
certificate (CN = kiosk id, under the real ACL `greengate-provision` writes), all on ONE
selector loop through paho's external event-loop API (on_socket_open/close/
register_write/unregister_write, loop_read/loop_write/loop_misc): no thread per client.
Each kiosk subscribes to its own gg/v1/confirm/<kiosk>; together they publish real scans
(greengate.messages.scan, QoS 1) round robin at --rate for --seconds, and the time from
each publish to the confirmation naming it is recorded. Behind: real `greengate-fleet
ingest` processes (--workers) on the core broker and a real database (a throw-away
PostgreSQL cluster with fsync on, or SQLite with the fleet's settings).

Setups, in the same run, on fresh brokers and a fresh database each:
  single  every kiosk on one Mosquitto (the provisioned single-broker config);
  tiers   half the kiosks on district d1, half on d2, each a Mosquitto bridged to the
          core with Mosquitto's own bridge (provisioning/bridge_config.py; TLS, QoS 1),
          straight to the core's port (no test relay);

Printed per setup: offered and committed scans/s (rows in the database, counted every
second; the rate over the publishing window), confirmation latency p50/p95/max, missing
confirmations, connections per broker (the clients this bench and the workers opened,
plus the bridges), each broker's peak RSS (VmHWM in /proc/<pid>/status), and the ingest
workers' CPU (% of one core over the run). The load generator shares the machine with
everything it measures; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --- brokers ----------------------------------------------------------------------------
class Brokers:
    """Fresh provisioned brokers: the core alone, or the core and bridged districts."""

    def __init__(self, tmp: Path, districts: tuple[str, ...], workers: int = 1):
        from provisioning import bridge_config, mosquitto_config
        from fleet import pki as pki_module
        from tests.broker import free_port
        from tests.tiers import ProvisionedBroker

        self.tmp = tmp
        self.pki = pki_module.init(tmp / "pki", ["localhost", "127.0.0.1"], web=1)
        self.tls_dir = tmp / "client-tls"
        core_port = free_port()
        self.district = {}
        for name in districts:
            port = free_port()
            out = tmp / f"{name}-conf"
            (tmp / f"{name}-persist").mkdir()
            bridge_config.write(self.pki, out, name, address=f"127.0.0.1:{port}",
                                core=f"127.0.0.1:{core_port}", bind="127.0.0.1",
                                persistence_dir=str(tmp / f"{name}-persist"))
            self.district[name] = ProvisionedBroker(tmp / f"{name}-broker", out / "greengate.conf",
                                                    port, self.pki, self.tls_dir)
        for i in range(2, workers + 1):  # before the core's ACL, which names them
            self.pki.issue_identity(f"greengate-fleet-ingest-{i}", "ingest")
        (tmp / "core-persist").mkdir()
        mosquitto_config.write(self.pki, tmp / "core-conf", port=core_port, bind="127.0.0.1",
                               persistence_dir=str(tmp / "core-persist"))
        self.core = ProvisionedBroker(tmp / "core-broker", tmp / "core-conf" / "greengate.conf",
                                      core_port, self.pki, self.tls_dir)
        for broker in [self.core, *self.district.values()]:
            _quiet(broker)

    def start(self):
        self.core.start()
        for broker in self.district.values():
            broker.start()
        if self.district:
            from tests.tiers import Tiers
            for name in self.district:  # Tiers.bridge_state needs .core and .client_tls
                deadline = time.monotonic() + 30
                while Tiers.bridge_state(self, name, 1.0) != b"1":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"bridge {name} did not connect")
        return self

    def client_tls(self, identity):
        from tests.tiers import kiosk_tls
        return kiosk_tls(self.pki, self.tls_dir, identity)

    def fleet_tls(self):
        from fleet import pki as pki_module
        clients = self.pki.path(pki_module.CLIENTS)
        return (str(self.pki.path("ca.pem")), f"{clients}/{{identity}}.pem",
                f"{clients}/{{identity}}.key")

    def all(self) -> dict:
        return {"core": self.core, **self.district}

    def close(self):
        for broker in [*self.district.values(), self.core]:
            broker.kill()


def _quiet(broker):
    """The provisioned config without a line per connection: 2000 of them cost a run."""
    lines = [broker.generated.read_text()]
    if os.getuid() == 0:
        lines.append("user root")
    lines += [f"log_dest file {broker.log_path}", "log_type error", "log_type warning",
              "log_type notice", "log_type information", "connection_messages false",
              "log_timestamp true"]
    broker.conf_path.write_text("\n".join(lines) + "\n")


def peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# --- the kiosks: one selector loop ----------------------------------------------------
class Kiosks:
    def __init__(self, brokers: Brokers, kids: list[str], where: dict[str, object]):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from greengate import messages
        self.messages = messages
        self.sel = selectors.DefaultSelector()
        self.clients = {}
        self.sent: dict[tuple[str, str], float] = {}
        self.latency: list[float] = []
        self.confirmed: set[tuple[str, str]] = set()
        self.subscribed: set[str] = set()
        self.per_broker: dict[str, int] = {}
        for kid in kids:
            broker = where[kid]
            files = brokers.client_tls(kid)
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
            ctx.load_cert_chain(files.cert, files.key)
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kid, protocol=mqtt.MQTTv311,
                            userdata=kid)
            c.tls_set_context(ctx)
            c.on_socket_open = self._open
            c.on_socket_close = self._close
            c.on_socket_register_write = self._want_write
            c.on_socket_unregister_write = self._no_write
            c.on_connect = self._connected
            c.on_subscribe = lambda cl, kid_, *_: self.subscribed.add(kid_)
            c.on_message = self._message
            self.clients[kid] = c
            c.connect("127.0.0.1", broker.port, keepalive=120)
            self.per_broker[broker.name] = self.per_broker.get(broker.name, 0) + 1
            self.pump(0)

    # paho's socket callbacks: the selector watches what paho asks for
    def _open(self, client, _ud, sock):
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, _client, _ud, sock):
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _want_write(self, client, _ud, sock):
        self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _no_write(self, client, _ud, sock):
        try:
            self.sel.modify(sock, selectors.EVENT_READ, client)
        except (KeyError, ValueError):
            pass

    def _connected(self, client, kid, _flags, reason, _props=None):
        if not reason.is_failure:
            client.subscribe(self.messages.confirm_topic(kid), qos=1)

    def _message(self, _client, kid, msg):
        now = time.monotonic()
        try:
            doc = self.messages.parse_confirm(msg.payload, kid)
        except self.messages.MessageError:
            return
        for sid in doc["scans"]:
            key = (kid, sid)
            if key in self.sent and key not in self.confirmed:
                self.confirmed.add(key)
                self.latency.append(now - self.sent[key])

    def pump(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            client = key.data
            if mask & selectors.EVENT_READ:
                client.loop_read()
                sock = client.socket()
                while sock is not None and getattr(sock, "pending", lambda: 0)():
                    client.loop_read()  # TLS records already decrypted wait in the buffer
            if mask & selectors.EVENT_WRITE:
                client.loop_write()

    def misc(self) -> None:
        for client in self.clients.values():
            client.loop_misc()

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        next_misc = 0.0
        while not predicate():
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            if now > next_misc:
                self.misc()
                next_misc = now + 1.0
            self.pump(0.05)

    def publish(self, kid: str, sid: str, ts: float) -> None:
        m = self.messages
        doc = m.scan(scan_id=sid, kiosk=kid, ts=ts, decision="green", reason="ok",
                     sub_reason=None, cert_type="v", cert_hash="ab" * 16, holder="cd" * 16,
                     policy="hcmc-2021")
        self.sent[(kid, sid)] = time.monotonic()
        self.clients[kid].publish(m.scan_topic(kid), m.encode(doc), qos=1)

    def close(self) -> None:
        for client in self.clients.values():
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001
                pass
        self.pump(0.2)


# --- the fleet side ---------------------------------------------------------------------
def database(backend: str, tmp: Path, pg: list):
    from fleet import migrate
    from fleet.db import make_engine
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'fleet.sqlite'}"
    else:
        if not pg:
            from tests.databases import PostgresCluster
            pg.append(PostgresCluster(settings={"fsync": "on", "full_page_writes": "on",
                                                "max_connections": "50"}).start())
        url = pg[0].url(pg[0].create_database())
    engine = make_engine(url)
    migrate.upgrade(engine)
    return url, engine


def start_workers(n: int, brokers: Brokers, url: str, tmp: Path) -> list[subprocess.Popen]:
    ca, cert, key = brokers.fleet_tls()
    conf = tmp / "fleet.toml"
    conf.write_text(f'[fleet]\ndata_dir = "{tmp / "fleet"}"\ndatabase_url = "{url}"\n'
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {brokers.core.port}\ntls = true\n'
                    f'ca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\nbatch_size = 500\n')
    procs = []
    for i in range(1, n + 1):
        log = open(tmp / f"worker-{i}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "fleet.cli", "--config", str(conf),
                                       "ingest", "--no-presence", "--worker", str(i)],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        log.close()
    deadline = time.monotonic() + 60
    while not all("subscribed" in (tmp / f"worker-{i}.log").read_text()
                  for i in range(1, n + 1)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("ingest workers did not subscribe:\n" +
                               (tmp / "worker-1.log").read_text()[-3000:])
        time.sleep(0.1)
    return procs


class Counter(threading.Thread):
    """Rows in the scan table, every second."""

    def __init__(self, engine):
        super().__init__(daemon=True)
        self.engine, self.samples, self.stop = engine, [], threading.Event()

    def run(self):
        from sqlalchemy import text
        while not self.stop.is_set():
            with self.engine.connect() as c:
                n = c.execute(text("SELECT count(*) FROM scan")).scalar()
            self.samples.append((time.monotonic(), n))
            self.stop.wait(1.0)


def run_setup(name: str, args, tmp: Path, pg: list) -> dict:
    districts = ("d1", "d2") if name == "tiers" else ()
    brokers = Brokers(tmp / "brokers", districts, args.workers)
    for key, broker in brokers.all().items():
        broker.name = key
    brokers.start()
    url, engine = database(args.backend, tmp, pg)
    procs = start_workers(args.workers, brokers, url, tmp)
    kids = [f"lk{i:05d}" for i in range(args.kiosks)]
    targets = list(brokers.district.values()) or [brokers.core]
    where = {kid: targets[i % len(targets)] for i, kid in enumerate(kids)}
    out = {"setup": name}
    kiosks = None
    counter = Counter(engine)
    try:
        t0 = time.monotonic()
        kiosks = Kiosks(brokers, kids, where)
        kiosks.wait(lambda: len(kiosks.subscribed) == len(kids), 120, "every kiosk subscribed")
        out["connect_s"] = time.monotonic() - t0
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in procs}
        counter.start()
        start = time.monotonic()
        n, next_misc, ts = 0, 0.0, time.time()
        total = int(args.rate * args.seconds)
        while n < total:
            now = time.monotonic()
            due = min(total, int((now - start) * args.rate) + 1)
            while n < due:
                kid = kids[n % len(kids)]
                kiosks.publish(kid, f"b{n:08d}", ts)
                n += 1
            if now > next_misc:
                kiosks.misc()
                next_misc = now + 1.0
            kiosks.pump(max(0.0, min(0.01, start + (n + 1) / args.rate - time.monotonic())))
        published_at = time.monotonic()
        out["offered"] = total / (published_at - start)
        try:
            kiosks.wait(lambda: len(kiosks.confirmed) >= total, 60, "every confirmation")
        except RuntimeError:
            pass
        time.sleep(1.2)
        counter.stop.set()
        counter.join(5)
        window = [(t, c) for t, c in counter.samples if start <= t <= published_at + 1.0]
        if len(window) >= 2:
            (ta, ca), (tb, cb) = window[0], window[-1]
            out["committed"] = (cb - ca) / (tb - ta) if tb > ta else 0.0
        out["stored"] = counter.samples[-1][1] if counter.samples else 0
        lat = sorted(kiosks.latency)
        out["p50"] = statistics.median(lat) if lat else None
        out["p95"] = lat[int(0.95 * (len(lat) - 1))] if lat else None
        out["max"] = lat[-1] if lat else None
        out["missing"] = total - len(kiosks.confirmed)
        out["total"] = total
        elapsed = time.monotonic() - start
        out["worker_cpu"] = [100 * (cpu_seconds(p.pid) - cpu0[p.pid]) / elapsed for p in procs]
        out["brokers"] = {}
        for key, broker in brokers.all().items():
            conns = kiosks.per_broker.get(key, 0)
            if key == "core":
                conns += args.workers + len(brokers.district)
            out["brokers"][key] = (conns, peak_rss_kb(broker.proc.pid))
        out["load"] = os.getloadavg()
    finally:
        counter.stop.set()
        if kiosks is not None:
            kiosks.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
        brokers.close()
    return out


def _ms(v):
    return "-" if v is None else f"{v * 1000:.0f} ms"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench tiers")
    p.add_argument("--kiosks", type=int, default=2000)
    p.add_argument("--rate", type=float, default=200.0, help="scans/s over every kiosk")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--setups", default="single,tiers")
    p.add_argument("--backend", default="postgresql", choices=("postgresql", "sqlite"))
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.kiosks + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the brokers inherit it
    if want < 2 * args.kiosks + 256:
        print(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.kiosks} kiosks",
              file=sys.stderr)
        return 2
    print(f"bench tiers: {args.kiosks} kiosks, {args.rate:g} scans/s offered for "
          f"{args.seconds:g} s, {args.workers} ingest worker(s), {args.backend}; "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(f"command: python -m bench tiers {' '.join(argv)}")
    pg: list = []
    results = []
    try:
        for setup in args.setups.split(","):
            with tempfile.TemporaryDirectory(prefix=f"gg-tiers-{setup}-") as tmp:
                r = run_setup(setup, args, Path(tmp), pg)
            results.append(r)
            brokers = ", ".join(f"{k}: {c} conns, peak RSS {rss / 1024:.1f} MB"
                                for k, (c, rss) in r["brokers"].items())
            print(f"{setup:7s} connected in {r['connect_s']:.1f} s | offered {r['offered']:.0f}/s "
                  f"committed {r.get('committed', 0):.0f}/s ({r['stored']} stored of "
                  f"{r['total']}) | confirmation p50 {_ms(r['p50'])} p95 {_ms(r['p95'])} "
                  f"max {_ms(r['max'])}, missing {r['missing']} | worker CPU "
                  f"{', '.join(f'{c:.0f} %' for c in r['worker_cpu'])} | {brokers} | "
                  f"load {r['load'][0]:.2f}", flush=True)
    finally:
        for cluster in pg:
            cluster.close()
    return 0 if all(r["missing"] == 0 for r in results) else 1

"""Fleet ingest: scans published -> committed, against Mosquitto's own delivery rate.

    python -m bench ingest [--messages N] [--publishers P] [--backends sqlite,postgresql]
                           [--batch-size B] [--workers W] [--repeat R] [--profile]

For each consumer, on a fresh Mosquitto (plain TCP listener on 127.0.0.1: the TLS
cost is the same for every consumer and is left out; production runs TLS) and a
fresh database:

  * bare: a paho-mqtt 2.x client doing nothing but count (MQTT 5, persistent
    session, the same shared QoS 1 subscription and Receive Maximum as the worker,
    automatic PUBACK): what the broker and paho deliver at most;
  * worker on SQLite / PostgreSQL: fleet.ingest.IngestWorker in this process (scan
    ingest only; validation, batches of [mqtt] batch_size, commit, then PUBACK),
    counted by its committed-rows counter;
  * W workers (--workers, default 2): that many `greengate-fleet ingest --no-presence`
    processes splitting the shared subscription, counted in the database: how the
    fleet scales past one Python process.

Two measurements per consumer:

  live    P publisher processes (paho, QoS 1, 1000 in flight each, N/P scans of 100
          kiosks each) start together; rate = N / (last scan committed or counted -
          first publish). The publishers share the 2 cores with the broker and the
          consumer, which is the situation of a fleet host receiving a burst.
  drain   the same N scans published while the consumer is down (the broker queues
          them in its persistent session), then the consumer starts: rate = N / time
          to take them all in. The replay after a fleet outage, and the consumer's
          own capacity without publishers competing for the CPU.

SQLite runs with the fleet's settings (WAL, synchronous=FULL: every batch commit is
fsynced). PostgreSQL is a throw-away cluster (tests/databases.py) started with
fsync=on, full_page_writes=on and synchronous_commit=on, as production must run.
--profile runs cProfile on the worker's threads in the SQLite drain and prints where
the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import multiprocessing as mp
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .common import header

KIOSKS = 100  # per publisher
TARGET_RATE = 10_000
TARGET_SHARE = 0.5


def _broker(directory: Path):
    from tests.broker import Broker

    class BenchBroker(Broker):
        """Plain TCP; no limit on a session's queue (a drain queues all N scans)."""

        def _write_conf(self) -> None:
            super()._write_conf()
            text = self.conf_path.read_text()
            self.conf_path.write_text(text.replace("max_queued_messages 100000",
                                                   "max_queued_messages 0"))

    return BenchBroker(directory, None, persistence=False).start()


# --- publishers (separate processes) -----------------------------------------------
def _publisher(index: int, count: int, port: int, ready, go, done) -> None:
    from greengate import messages

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}",
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    now = time.time()
    payloads = []
    for i in range(count):  # built before the clock starts
        kiosk = f"bench-{index}-{i % KIOSKS}"
        payloads.append((messages.scan_topic(kiosk), messages.encode(messages.scan(
            scan_id=f"p{index}-{i:09d}", kiosk=kiosk, ts=now, decision="green", reason="ok",
            sub_reason=None, cert_type="v", cert_hash="ab" * 16, holder="cd" * 16,
            policy="hcmc-2021"))))
    client.connect("127.0.0.1", port)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    ready.put(index)
    go.wait()
    info = None
    for topic, payload in payloads:
        info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(300)
    # the last PUBACK can arrive before earlier ones: wait for the in-flight window
    while client._out_messages:  # noqa: SLF001 - bench only: all PUBACKs received
        time.sleep(0.005)
    done.put(time.monotonic())
    client.disconnect()
    client.loop_stop()


class Publishers:
    def __init__(self, n: int, total: int, port: int):
        ctx = mp.get_context("spawn")
        self.ready, self.go, self.done = ctx.Queue(), ctx.Event(), ctx.Queue()
        share = [total // n + (1 if i < total % n else 0) for i in range(n)]
        self.procs = [ctx.Process(target=_publisher, daemon=True,
                                  args=(i, share[i], port, self.ready, self.go, self.done))
                      for i in range(n)]
        for p in self.procs:
            p.start()

    def start(self) -> float:
        for _ in self.procs:  # connected, payloads built
            self.ready.get(timeout=120)
        t0 = time.monotonic()
        self.go.set()
        return t0

    def finished(self) -> float:
        ends = [self.done.get(timeout=600) for _ in self.procs]
        for p in self.procs:
            p.join(30)
        return max(ends)


# --- consumers -------------------------------------------------------------------
class Bare:
    name = "bare paho"

    def __init__(self, port: int, receive_max: int, group: str = "ingest"):
        self.port, self.count = port, 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare",
                                  protocol=mqtt.MQTTv5)
        self.props = Properties(PacketTypes.CONNECT)
        self.props.SessionExpiryInterval = 3600
        self.props.ReceiveMaximum = receive_max
        self.topic = f"$share/{group}/gg/v1/kiosk/+/scan"
        self.client.on_message = self._message
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, 1)

    def _message(self, *_):
        self.count += 1

    def start(self):
        self.client.connect("127.0.0.1", self.port, 30, clean_start=False, properties=self.props)
        self.client.loop_start()
        while not self.client.is_connected():
            time.sleep(0.01)
        time.sleep(0.3)  # SUBACK
        return self

    def done(self) -> int:
        return self.count

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


class Worker:
    def __init__(self, port: int, url: str, data: Path, batch: int, profile: bool = False):
        from fleet.config import load

        self.name = "worker"
        self.config = load(None, env={}, fleet={"data_dir": str(data), "database_url": url},
                           mqtt={"host": "127.0.0.1", "port": port, "tls": False,
                                 "batch_size": batch})
        self.worker = None
        self.profile = profile
        self.profiles: dict[str, cProfile.Profile] = {}

    def start(self):
        from fleet.ingest import IngestWorker

        self.worker = IngestWorker(self.config, worker="bench", presence=False)
        if self.profile:
            self._profiled()
        self.worker.start()
        while not self.worker.connected:
            time.sleep(0.01)
        time.sleep(0.3)
        return self

    def _profiled(self):
        """cProfile in the worker's thread and in paho's network thread."""
        worker, profiles = self.worker, self.profiles
        main = worker._main

        def profiled_main():
            profiles["worker thread (parse, database, ack)"] = p = cProfile.Profile()
            p.runcall(main)
        worker._main = profiled_main
        make = worker._make_client

        def make_client():
            client = make()
            net = client._thread_main

            def profiled_net():
                profiles["paho network thread (receive, decode, on_message)"] = p = \
                    cProfile.Profile()
                p.runcall(net)
            client._thread_main = profiled_net
            return client
        worker._make_client = make_client

    def done(self) -> int:
        return int(self.worker.metrics.value("greengate_ingest_stored_total", kind="scan"))

    def stop(self):
        self.worker.stop()


class WorkerProcesses:
    """N `greengate-fleet ingest --no-presence` processes on one share group, as systemd
    runs them; counted by polling the database (every 50 ms)."""
    poll = 0.05

    def __init__(self, n: int, port: int, url: str, data: Path, batch: int):
        self.name = f"{n} worker processes"
        self.n, self.url, self.procs = n, url, []
        self.conf = data / "fleet.toml"
        data.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f'[fleet]\ndata_dir = "{data}"\ndatabase_url = "{url}"\n'
                             f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntls = false\n'
                             f'batch_size = {batch}\n')
        self.logs = [data / f"worker-{i}.log" for i in range(n)]

    def start(self):
        import subprocess

        from fleet.db import make_engine
        self.engine = make_engine(self.url)
        for i, log in enumerate(self.logs):
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fleet.cli", "--config", str(self.conf), "ingest",
                     "--no-presence", "--worker", f"p{i}"], stdout=out, stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[1]))
        deadline = time.monotonic() + 60
        while not all("subscribed" in log.read_text() for log in self.logs):
            if time.monotonic() > deadline:
                raise RuntimeError("worker processes did not subscribe")
            time.sleep(0.05)
        return self

    def done(self) -> int:
        from sqlalchemy import text
        with self.engine.connect() as c:
            return c.execute(text("SELECT count(*) FROM scan")).scalar()

    def stop(self):
        import signal
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(60)
        self.procs = []
        self.engine.dispose()


def enrol(engine, publishers: int) -> None:
    """Every bench kiosk enrolled at one of 10 locations in 2 districts, so that scans are
    placed (location, district) as in production."""
    from fleet.models import District, Kiosk, Location

    with engine.begin() as c:
        c.execute(District.__table__.insert(), [{"id": d, "code": f"d{d}", "name": f"D{d}"}
                                                for d in (1, 2)])
        c.execute(Location.__table__.insert(), [
            {"id": i, "code": f"l{i}", "name": f"L{i}", "address": "", "district_id": 1 + i % 2}
            for i in range(1, 11)])
        c.execute(Kiosk.__table__.insert(), [
            {"id": f"bench-{p}-{k}", "location_id": 1 + k % 10, "deployment": "default",
             "policy": "hcmc-2021", "state": "online", "detail": "", "session": 1}
            for p in range(publishers) for k in range(KIOSKS)])


def _wait(consumer, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while consumer.done() < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{consumer.name}: only {consumer.done()} of {n} after {timeout} s")
        time.sleep(getattr(consumer, "poll", 0.002))
    return time.monotonic()


def measure(make_consumer, n: int, publishers: int, tmp: Path, tag: str,
            repeat: int) -> dict:
    """The best of `repeat` runs of each mode, each on a fresh broker and database: the
    publishers share the 2 cores, so single runs scatter by 20 % and more."""
    out = {"live": 0.0, "publish": 0.0, "drain": 0.0}
    for run in range(repeat):
        broker = _broker(tmp / f"{tag}-live{run}")
        try:
            consumer = make_consumer(broker.port, f"live{run}").start()
            pubs = Publishers(publishers, n, broker.port)
            t0 = pubs.start()
            t1 = _wait(consumer, n)
            published = pubs.finished()
            if n / (t1 - t0) > out["live"]:
                out["live"], out["publish"] = n / (t1 - t0), n / (published - t0)
            consumer.stop()
        finally:
            broker.stop()
        broker = _broker(tmp / f"{tag}-drain{run}")
        try:
            consumer = make_consumer(broker.port, f"drain{run}").start()
            consumer.stop()  # the persistent session now queues for it
            pubs = Publishers(publishers, n, broker.port)
            pubs.start()
            pubs.finished()
            time.sleep(0.5)
            consumer = make_consumer(broker.port, f"drain{run}", again=True)
            t0 = time.monotonic()
            consumer.start()
            t1 = _wait(consumer, n)
            out["drain"] = max(out["drain"], n / (t1 - t0))
            if getattr(consumer, "profiles", None):
                out["profiles"] = consumer.profiles
            consumer.stop()
        finally:
            broker.stop()
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="cProfile the SQLite drain")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best "
                    "counts")
    ap.add_argument("--workers", type=int, default=2,
                    help="also measure this many worker processes on one share group (1: skip)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # not the migrations' INFO lines
    print(header("fleet ingest: MQTT -> database", "python -m bench ingest "
                 + " ".join(argv)))
    print(f"{args.messages} scans from {args.publishers} publisher processes x {KIOSKS} "
          f"kiosks; plain TCP Mosquitto on 127.0.0.1; batch_size {args.batch_size}, "
          f"Receive Maximum {2 * args.batch_size}; best of {args.repeat} runs each")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="greengate-bench-ingest-"))
    cluster = None
    results = {}
    try:
        bare = measure(lambda port, mode, again=False: Bare(port, 2 * args.batch_size),
                       args.messages, args.publishers, tmp, "bare", args.repeat)
        results["bare paho (no database)"] = bare
        for backend in backends:
            if backend == "postgresql":
                from tests.databases import PostgresCluster
                cluster = PostgresCluster(settings={"fsync": "on", "full_page_writes": "on",
                                                    "synchronous_commit": "on"}).start()
            urls = {}

            def make(port, mode, again=False, backend=backend):
                from fleet import migrate
                from fleet.db import make_engine
                if mode not in urls:
                    name = f"{mode}_{processes or 1}"  # a fresh database per measurement
                    if backend == "sqlite":
                        urls[mode] = f"sqlite:///{tmp / backend / name / 'fleet.sqlite'}"
                    else:
                        urls[mode] = cluster.url(cluster.create_database(f"bench_{name}"))
                    engine = make_engine(urls[mode])
                    migrate.upgrade(engine)
                    enrol(engine, args.publishers)
                    engine.dispose()
                profile = (args.profile and backend == "sqlite" and mode == "drain0" and again
                           and not processes)
                if processes:
                    return WorkerProcesses(processes, port, urls[mode],
                                           tmp / backend / f"{mode}_{processes}",
                                           args.batch_size)
                return Worker(port, urls[mode], tmp / backend, args.batch_size, profile)
            processes = 0
            results[f"worker, {backend}"] = measure(make, args.messages, args.publishers, tmp,
                                                    backend, args.repeat)
            if args.workers > 1:
                urls.clear()
                processes = args.workers
                results[f"{args.workers} workers, {backend}"] = measure(
                    make, args.messages, args.publishers, tmp, f"{backend}-n", args.repeat)
            if cluster is not None:
                cluster.close()
                cluster = None
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'consumer':<28}{'live /s':>10}{'(publish /s)':>14}{'drain /s':>10}"
          f"{'live vs bare':>14}{'drain vs bare':>15}")
    for name, r in results.items():
        print(f"{name:<28}{r['live']:>10,.0f}{r['publish']:>14,.0f}{r['drain']:>10,.0f}"
              f"{r['live'] / bare['live']:>14.0%}{r['drain'] / bare['drain']:>15.0%}")
    print()
    status = 0
    for name, r in results.items():
        if not name.startswith("worker"):
            continue  # the targets are for one worker
        for mode in ("live", "drain"):
            rate, share = r[mode], r[mode] / bare[mode]
            if "sqlite" in name:
                ok = rate >= TARGET_RATE
                print(f"target {name} {mode} >= {TARGET_RATE:,}/s: {rate:,.0f}/s "
                      f"{'met' if ok else 'MISSED'}")
            ok = share >= TARGET_SHARE
            print(f"target {name} {mode} >= {TARGET_SHARE:.0%} of bare: {share:.0%} "
                  f"{'met' if ok else 'MISSED'}")
    sqlite = results.get("worker, sqlite")
    if args.profile and sqlite is not None:
        for thread, profile in sqlite.get("profiles", {}).items():
            print(f"\n--- cProfile, SQLite drain: {thread}, by own time")
            pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

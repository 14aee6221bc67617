"""Fleet ingest: scans published -> committed -> confirmed, against Mosquitto's own
delivery rate.

    python -m bench ingest [--messages N] [--publishers P] [--kiosks K]
                           [--backends sqlite,postgresql] [--batch-size B] [--workers W]
                           [--repeat R] [--rates 1000,10000] [--duration S]
                           [--batch-seconds S] [--confirm-seconds S] [--confirm-timeout S]
                           [--no-compare-off] [--compare-unheard] [--delete-samples N]
                           [--holders sealed|legacy] [--seal-samples N] [--profile] [--quick]

The publishers are kiosk-like: P processes, each speaking for K kiosks (paho, QoS 1,
1000 in flight each). When the consumer confirms (every ingest worker does: the ids of
each commit go out as `messages.confirms(...)` on gg/v1/confirm/<kiosk>, QoS 1, within
[ingest] confirm_seconds, so that one message can carry several batches' ids), each
publisher also subscribes (QoS 1) to the confirm topics of its own K kiosks, parses
each confirmation with messages.parse_confirm as a kiosk does, and records for every
scan the time from its publish to the arrival of its confirmation: the moment a kiosk
deletes the row from its outbox. The kiosk's own SQLite delete (Outbox.confirm, one
fsynced transaction) is measured apart and stated, not added in. A confirmation that
never arrives is counted as missing (the target is 0), one that names a scan
already confirmed as a duplicate.

For each consumer, on a fresh Mosquitto (plain TCP listener on 127.0.0.1, no ACL: the
TLS cost is the same for every consumer and is left out; production runs TLS) and a
fresh database:

  * bare: a paho-mqtt 2.x client doing nothing but count (MQTT 5, persistent
    session, the same shared QoS 1 subscription and Receive Maximum as the worker,
    automatic PUBACK): what the broker and paho deliver at most; nothing confirms;
  * worker on SQLite / PostgreSQL: fleet.ingest.IngestWorker in this process (scan
    ingest only; validation, batches of [mqtt] batch_size, commit, confirmations,
    then PUBACK), counted by its committed-rows counter;
  * worker on SQLite, confirmations off (--compare-off, the default): the same worker
    with its confirmation step replaced by nothing (bench only), so that the cost of
    confirming is measured in the same run, on the same busy machine;
  * worker on SQLite, confirms unheard (--compare-unheard): the worker confirms but no
    publisher subscribes, so the broker drops the confirmations: the fleet side's cost
    without the kiosks' share of the 2 cores (in production the kiosks are elsewhere);
  * W workers (--workers, default 2): that many `greengate-fleet ingest --no-presence`
    processes splitting the shared subscription, counted in the database: how the
    fleet scales past one Python process.

Two saturated measurements per consumer (the best of --repeat runs counts; the
consumers take turns run by run, so that another load passing over the machine hits
them alike):

  live    the publishers start together and publish flat out; rate = N / (last scan
          committed or counted - first publish); (confirmed /s) = N / (last
          confirmation received - first publish). The publishers share the 2 cores with
          the broker and the consumer: a fleet host receiving a burst.
  drain   the same N scans published while the consumer is down (the broker queues
          them in its persistent session; the publishers stay connected), then the
          consumer starts: rate = N / time to take them all in; (confirmed /s) likewise
          to the last confirmation. The replay after a fleet outage.

Then the confirmation latency at a fixed offered rate (--rates, each for --duration s):
one SQLite worker consumes while the publishers pace their publishes to that total
rate on a fixed schedule; printed: the rate the publishers actually reached (on a
2-core machine they may not reach the higher one, and the output says so), the
committed rate, latency p50/p95/max from publish to confirmation, missing and duplicate
confirmations.

Targets printed (met / MISSED): one SQLite worker live and drain >= 10,000/s and >= 50 %
of bare (as before); with confirmations on, within 15 % of its rate before
confirmations (bench/REPORT.md at 6034437: live 10,084/s, drain 12,019/s), and, so
that a busier or quieter machine does not decide it, its share of the same run's bare
rate within 15 % of the share it had then (86 % live, 61 % drain); every scan
confirmed (0 missing). The confirmation latency has no target: it is reported.

SQLite runs with the fleet's settings (WAL, synchronous=FULL: every batch commit is
fsynced). PostgreSQL is a throw-away cluster (tests/databases.py) started with
fsync=on, full_page_writes=on and synchronous_commit=on, as production must run.
--profile runs cProfile on the worker's threads in the SQLite drain and prints where
the time goes. --quick: tiny sizes, SQLite only, one run (a smoke test, under a minute;
its figures mean nothing).

Holders (docs/privacy.md): --holders sealed (the default) has every scan carry its
holder's identity sealed to the fleet's key (greengate/sealing.py; sealed by the
publishers before the clock starts, as kiosks do at the decision, each kiosk in epochs
of its own), which the worker opens and turns into the pseudonym; --holders legacy
sends the ready pseudonym of a kiosk older than sealing (what every scan carried
before): the two, run on the same machine, are the before/after of sealing. Each kiosk
of the run seals its scans in one epoch (its ~messages/(P*K) scans fit one), so the
worker makes one X25519 exchange per kiosk, as for a kiosk scanning that many people
in one epoch (ten minutes). Apart, timed in this process (--seal-samples, 0: skip): the
kiosk's cost per decision (Sealer as Kiosk.on_decision calls it, the trust bundle's key
lookup included), within an epoch and at its start, and the ingest's cost per scan to
open and derive (Unsealer.pseudonym), cached and at an epoch's first envelope.
"""

from __future__ import annotations

import argparse
import array
import cProfile
import logging
import math
import multiprocessing as mp
import os
import pstats
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .common import header

KIOSKS = 100  # per publisher (--kiosks)
LEGACY_KEY = bytes(range(32))  # --holders legacy: the pseudonym key old kiosks held
TARGET_RATE = 10_000
TARGET_SHARE = 0.5
# One SQLite worker before confirmations existed (bench/REPORT.md at commit 6034437):
# issue 12 asks that, with confirmations on, the committed rate stays within 15 % of it.
BEFORE = {"live": 10_084, "drain": 12_019}
BEFORE_BARE = {"live": 11_726, "drain": 19_737}  # bare paho in that same run
BEFORE_COMMIT = "6034437"
WITHIN = 0.15
REACHED = 0.97  # the publishers "reached" an offered rate if they published this share
# the worker kept up with an offered rate if its last commit came this soon (s) after
# the last publish: a batch's wait (batch_seconds) and commit, not a backlog
KEPT_UP = 1.0
SETTLE = 0.2  # s a publisher keeps listening after its last confirmation (duplicates)
# the worker's method that hands a batch's committed ids to the confirming: replaced by
# nothing for the "confirms off" row (the first that exists; the name has changed before)
CONFIRM_STEPS = ("_queue_confirms", "_confirm")

QUICK = {"messages": 3000, "repeat": 1, "workers": 1, "backends": "sqlite",
         "duration": 3.0, "confirm_timeout": 15.0, "delete_samples": 50}


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


# --- publishers = kiosks (separate processes) ---------------------------------------
def _publisher(index: int, count: int, port: int, kiosks: int, confirm: bool,
               rate: float | None, ready, go, published, confirmed, stop,
               sealing_key: bytes | None = None) -> None:
    from greengate import messages, sealing

    key = sealing.SealingKey.from_raw(sealing_key) if sealing_key else None
    epochs: dict = {}  # kiosk -> its EpochSealer, as each kiosk seals in epochs of its own

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}",
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    names = [f"bench-{index}-{k}" for k in range(kiosks)]
    now = time.time()
    payloads, where = [], {}
    for i in range(count):  # built before the clock starts
        kiosk = names[i % kiosks]
        scan_id = f"p{index}-{i:09d}"
        where[scan_id] = i
        # the holder as a kiosk sends it (one of 1000 people): sealed to the fleet, or,
        # --holders legacy, the pseudonym a kiosk older than sealing made itself (the
        # same 1000 distinct values the worker derives from the sealed ones: the holder
        # index costs both modes the same)
        identity = sealing.identity_bytes((f"FAMILY{i % 1000}", "GIVEN<NAME", "1990-01-01"))
        sealed = epochs.setdefault(kiosk, sealing.EpochSealer())(
            identity, key, kiosk=kiosk, scan_id=scan_id) if key else None
        holder = None if key else sealing.pseudonym(LEGACY_KEY, identity)
        payloads.append((messages.scan_topic(kiosk), messages.encode(messages.scan(
            scan_id=scan_id, kiosk=kiosk, ts=now, decision="green", reason="ok",
            sub_reason=None, cert_type="v", cert_hash="ab" * 16,
            holder=holder, sealed=sealed,
            policy="hcmc-2021", seq=1 + i // kiosks))))
    sent = array.array("d", bytes(8 * count))  # monotonic time of each publish
    got = array.array("d", bytes(8 * count))  # ... of its first confirmation, 0: none yet
    tally = {"confirmed": 0, "duplicate": 0, "unknown": 0, "bad": 0, "messages": 0,
             "last": 0.0}
    own = {messages.confirm_topic(k): k for k in names}

    def on_message(_client, _userdata, msg):
        # paho's network thread, as on a kiosk: parse, then the row would be deleted
        t = time.monotonic()
        kiosk = own.get(msg.topic)
        if kiosk is None:
            tally["unknown"] += 1
            return
        try:
            doc = messages.parse_confirm(msg.payload, kiosk)
        except messages.MessageError:
            tally["bad"] += 1
            return
        tally["messages"] += 1
        for scan_id in doc["scans"]:
            i = where.get(scan_id)
            if i is None:
                tally["unknown"] += 1
            elif got[i]:
                tally["duplicate"] += 1
            else:
                got[i] = t
                tally["confirmed"] += 1
                tally["last"] = t

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    if confirm:  # its own kiosks' topics only, as the broker's ACL allows a kiosk
        client.subscribe([(topic, 1) for topic in own])
        if not subscribed.wait(30):
            raise RuntimeError(f"publisher {index}: no SUBACK for the confirm topics")
    ready.put(index)
    go.wait()
    first = time.monotonic()
    cpu_start = sum(os.times()[:2])  # user + system, every thread of this publisher
    lag = 0.0  # how far the publisher fell behind its schedule, at worst
    info = None
    publish, clock = client.publish, time.monotonic
    if rate:
        step = 1.0 / rate
        for i, (topic, payload) in enumerate(payloads):
            due = first + i * step
            t = clock()
            if t < due:
                time.sleep(due - t)
                t = clock()
            elif t - due > lag:
                lag = t - due
            sent[i] = t
            info = publish(topic, payload, qos=1)
    else:
        for i, (topic, payload) in enumerate(payloads):
            sent[i] = clock()
            info = publish(topic, payload, qos=1)
    last = clock()
    info.wait_for_publish(300)
    # the last PUBACK can arrive before earlier ones: wait for the in-flight window
    while client._out_messages:  # noqa: SLF001 - bench only: all PUBACKs received
        time.sleep(0.005)
    published.put((index, first, last, time.monotonic(), lag))
    if confirm:
        while tally["confirmed"] < count and not stop.is_set():
            time.sleep(0.005)
        time.sleep(SETTLE)
        latency = array.array("d", (got[i] - sent[i] for i in range(count) if got[i]))
        cpu = sum(os.times()[:2]) - cpu_start
        confirmed.put((index, {**tally, "cpu": cpu}, count, latency.tobytes()))
    client.disconnect()
    client.loop_stop()


@dataclass
class Confirmations:
    """What the kiosk-like publishers saw of the fleet's confirmations."""
    scans: int = 0
    confirmed: int = 0
    duplicate: int = 0
    unknown: int = 0
    bad: int = 0
    messages: int = 0
    last: float = 0.0  # monotonic time of the last new confirmation
    cpu: float = 0.0  # CPU seconds the publishers used, in all
    latency: list = field(default_factory=list)  # seconds, sorted

    @property
    def missing(self) -> int:
        return self.scans - self.confirmed

    def add(self, tally: dict, scans: int, latency: bytes) -> None:
        self.scans += scans
        for k in ("confirmed", "duplicate", "unknown", "bad", "messages"):
            setattr(self, k, getattr(self, k) + tally[k])
        self.last = max(self.last, tally["last"])
        self.cpu += tally.get("cpu", 0.0)
        self.latency.extend(array.array("d", latency))

    def merge(self, other: "Confirmations") -> None:
        for k in ("scans", "confirmed", "duplicate", "unknown", "bad", "messages"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def pct(self, q: float) -> float | None:
        """Nearest-rank percentile in ms."""
        if not self.latency:
            return None
        return 1000 * self.latency[max(0, math.ceil(q * len(self.latency)) - 1)]

    def ids_per_message(self) -> float:
        return (self.confirmed + self.duplicate) / self.messages if self.messages else 0.0


class Publishers:
    def __init__(self, n: int, total: int, port: int, kiosks: int, confirm: bool = False,
                 rate: float | None = None, sealing_key: bytes | None = None):
        ctx = mp.get_context("spawn")
        self.ready, self.go = ctx.Queue(), ctx.Event()
        self.published_q, self.confirmed_q, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        share = [total // n + (1 if i < total % n else 0) for i in range(n)]
        self.procs = [ctx.Process(target=_publisher, daemon=True, args=(
            i, share[i], port, kiosks, confirm, rate * share[i] / total if rate else None,
            self.ready, self.go, self.published_q, self.confirmed_q, self.stop, sealing_key))
            for i in range(n)]
        for p in self.procs:
            p.start()

    def start(self) -> float:
        for _ in self.procs:  # connected, subscribed, payloads built
            self.ready.get(timeout=120)
        t0 = time.monotonic()
        self.go.set()
        return t0

    def published(self) -> dict:
        """Once every publisher has its PUBACKs: first and last publish, last PUBACK,
        the worst lag behind the schedule (paced runs)."""
        got = [self.published_q.get(timeout=600) for _ in self.procs]
        return {"first": min(g[1] for g in got), "last": max(g[2] for g in got),
                "acked": max(g[3] for g in got), "lag": max(g[4] for g in got)}

    def confirmations(self, timeout: float) -> Confirmations:
        """Wait until every scan is confirmed, or `timeout` s (what is still unconfirmed
        then is missing)."""
        timer = threading.Timer(timeout, self.stop.set)
        timer.start()
        out = Confirmations()
        try:
            for _ in self.procs:
                _, tally, scans, latency = self.confirmed_q.get(timeout=timeout + 120)
                out.add(tally, scans, latency)
        finally:
            timer.cancel()
        out.latency.sort()
        return out

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)


# --- consumers -------------------------------------------------------------------
class Bare:
    name = "bare paho"
    confirms = listen = False

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
    def __init__(self, port: int, url: str, data: Path, batch: int, profile: bool = False,
                 confirms: bool = True, listen: bool = True, settings: dict | None = None):
        from fleet.config import load

        self.name = "worker"
        extra = settings or {}
        self.config = load(None, env={}, fleet={"data_dir": str(data), "database_url": url},
                           mqtt={"host": "127.0.0.1", "port": port, "tls": False,
                                 "batch_size": batch, **extra.get("mqtt", {})},
                           **{k: v for k, v in extra.items() if k != "mqtt"})
        self.worker = None
        self.profile = profile
        self.confirms = confirms
        self.listen = confirms and listen  # the publishers subscribe to the confirmations
        self.profiles: dict[str, cProfile.Profile] = {}

    def start(self):
        from fleet.ingest import IngestWorker

        self.worker = IngestWorker(self.config, worker="bench", presence=False)
        if not self.confirms:
            # bench only: the cost of confirming, measured by leaving out the messages
            # (the worker still gathers the ids per kiosk)
            for step in CONFIRM_STEPS:
                if callable(getattr(self.worker, step, None)):
                    setattr(self.worker, step, lambda *_args, **_kw: None)
                    break
            else:
                raise RuntimeError(f"fleet.ingest.IngestWorker has none of {CONFIRM_STEPS} "
                                   f"to switch off; run with --no-compare-off")
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
            profiles["worker thread (parse, database, confirm, ack)"] = p = cProfile.Profile()
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
    confirms = listen = True

    def __init__(self, n: int, port: int, url: str, data: Path, batch: int,
                 settings: dict | None = None):
        self.name = f"{n} worker processes"
        self.n, self.url, self.procs = n, url, []
        self.conf = data / "fleet.toml"
        data.mkdir(parents=True, exist_ok=True)
        extra = settings or {}
        text = (f'[fleet]\ndata_dir = "{data}"\ndatabase_url = "{url}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntls = false\n'
                f'batch_size = {batch}\n')
        text += "".join(f"{k} = {_toml(v)}\n" for k, v in extra.get("mqtt", {}).items())
        for section, values in extra.items():
            if section != "mqtt":
                text += f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n"
                                                   for k, v in values.items())
        self.conf.write_text(text)
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


def enrol(engine, publishers: int, kiosks: int = KIOSKS) -> None:
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
            for p in range(publishers) for k in range(kiosks)])


def fresh_database(url: str, publishers: int, kiosks: int) -> str:
    from fleet import migrate
    from fleet.db import make_engine

    engine = make_engine(url)
    migrate.upgrade(engine)
    enrol(engine, publishers, kiosks)
    engine.dispose()
    return url


def _wait(consumer, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while consumer.done() < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{consumer.name}: only {consumer.done()} of {n} after {timeout} s")
        time.sleep(getattr(consumer, "poll", 0.002))
    return time.monotonic()


@dataclass
class Load:
    """What every measurement shares."""
    n: int
    publishers: int
    kiosks: int
    tmp: Path
    confirm_timeout: float
    sealing_key: bytes | None = None  # --holders sealed: the fleet's public key (raw)


def empty() -> dict:
    return {"live": 0.0, "publish": 0.0, "drain": 0.0, "live_confirmed": None,
            "drain_confirmed": None, "confirms": None, "live_latency": None, "cpu": {}}


def _own_cpu() -> float:
    """CPU seconds this process (an in-process consumer's threads) has used so far."""
    return sum(os.times()[:2])


def _keep_least(out: dict, key: str, seconds: float, n: int, valid: bool = True) -> None:
    """CPU µs per scan, the least of the runs: the one least disturbed by others."""
    if valid:
        value = 1e6 * seconds / n
        out["cpu"][key] = min(out["cpu"].get(key, value), value)


def measure(make_consumer, load: Load, tag: str, run: int, out: dict) -> dict:
    """Run `run` of one consumer, live then drain, each on a fresh broker and database,
    folded into `out`: the best live and the best drain count (the publishers share the
    2 cores, so single runs scatter by 20 % and more); confirmations (missing,
    duplicate) are summed over every run."""
    n = load.n
    broker = _broker(load.tmp / f"{tag}-live{run}")
    pubs = None
    try:
        consumer = make_consumer(broker.port, f"live{run}").start()
        confirm = consumer.listen
        pubs = Publishers(load.publishers, n, broker.port, load.kiosks, confirm,
                          sealing_key=load.sealing_key)
        cpu0, broker0 = _own_cpu(), _cpu_of(broker.proc.pid)
        t0 = pubs.start()
        t1 = _wait(consumer, n)
        published = pubs.published()["acked"]
        conf = pubs.confirmations(load.confirm_timeout) if confirm else None
        inside = not isinstance(consumer, WorkerProcesses)
        _keep_least(out, "consumer live", _own_cpu() - cpu0, n, inside)
        _keep_least(out, "broker live", _cpu_of(broker.proc.pid) - broker0, n)
        if n / (t1 - t0) > out["live"]:
            out["live"], out["publish"] = n / (t1 - t0), n / (published - t0)
            if conf is not None:
                out["live_confirmed"] = n / (conf.last - t0) if not conf.missing else None
                out["live_latency"] = conf
        _tally(out, conf)
        consumer.stop()
    finally:
        if pubs is not None:
            pubs.close()
        broker.stop()
    broker = _broker(load.tmp / f"{tag}-drain{run}")
    pubs = None
    try:
        consumer = make_consumer(broker.port, f"drain{run}").start()
        consumer.stop()  # the persistent session now queues for it
        pubs = Publishers(load.publishers, n, broker.port, load.kiosks, confirm,
                          sealing_key=load.sealing_key)
        pubs.start()
        pubs.published()
        time.sleep(0.5)
        consumer = make_consumer(broker.port, f"drain{run}", again=True)
        cpu0, broker0 = _own_cpu(), _cpu_of(broker.proc.pid)
        t0 = time.monotonic()
        consumer.start()
        t1 = _wait(consumer, n)
        conf = pubs.confirmations(load.confirm_timeout) if confirm else None
        inside = not isinstance(consumer, WorkerProcesses)
        _keep_least(out, "consumer drain", _own_cpu() - cpu0, n, inside)
        _keep_least(out, "broker drain", _cpu_of(broker.proc.pid) - broker0, n)
        if n / (t1 - t0) > out["drain"]:
            out["drain"] = n / (t1 - t0)
            if conf is not None:
                out["drain_confirmed"] = n / (conf.last - t0) if not conf.missing else None
        _tally(out, conf)
        if getattr(consumer, "profiles", None):
            out["profiles"] = consumer.profiles
        consumer.stop()
    finally:
        if pubs is not None:
            pubs.close()
        broker.stop()
    return out


def _tally(out: dict, conf: Confirmations | None) -> None:
    if conf is None:
        return
    if out["confirms"] is None:
        out["confirms"] = Confirmations()
    out["confirms"].merge(conf)


def paced(rate: float, duration: float, load: Load, batch: int, settings: dict) -> dict:
    """One SQLite worker, the publishers holding `rate` scans/s in all for `duration` s."""
    n = max(load.publishers, int(rate * duration))
    tag = f"paced-{int(rate)}"
    broker = _broker(load.tmp / tag)
    pubs = consumer = None
    try:
        url = fresh_database(f"sqlite:///{load.tmp / 'sqlite' / tag / 'fleet.sqlite'}",
                             load.publishers, load.kiosks)
        consumer = Worker(broker.port, url, load.tmp / "sqlite", batch,
                          settings=settings).start()
        pubs = Publishers(load.publishers, n, broker.port, load.kiosks, True, rate,
                          sealing_key=load.sealing_key)
        cpu0, broker0 = sum(os.times()[:2]), _cpu_of(broker.proc.pid)
        t0 = pubs.start()
        t1 = _wait(consumer, n, timeout=duration + 600)
        pub = pubs.published()
        conf = pubs.confirmations(load.confirm_timeout)
        wall = time.monotonic() - t0
        cpu = {"worker": sum(os.times()[:2]) - cpu0, "broker": _cpu_of(broker.proc.pid) - broker0,
               "publishers": conf.cpu, "wall": wall}
        return {"offered": rate, "n": n, "published": n / max(1e-9, pub["last"] - pub["first"]),
                "lag": pub["lag"], "committed": n / (t1 - t0), "confirms": conf, "cpu": cpu,
                "tail": t1 - pub["last"], "confirm_tail": conf.last - pub["last"]}
    finally:
        if pubs is not None:
            pubs.close()
        if consumer is not None:
            consumer.stop()
        broker.stop()


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def kiosk_delete(samples: int, ids: int) -> tuple[float, float, int] | None:
    """p50/p95 ms of the kiosk's own delete on a confirmation of `ids` scans
    (device.outbox.Outbox.confirm: one fsynced transaction), on this disk."""
    try:
        from device.outbox import Outbox
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="greengate-bench-outbox-") as d:
        box = Outbox(Path(d) / "outbox.sqlite")
        try:
            groups = []
            for s in range(samples):
                group = [f"k{s:06d}-{j:04d}" for j in range(ids)]
                for scan_id in group:
                    box.add(scan_id, "gg/v1/kiosk/k/scan", b"{}", decision="green",
                            reason="ok", ts=time.time())
                groups.append(group)
            times = []
            for group in groups:
                t = time.perf_counter()
                box.confirm(group)
                times.append(time.perf_counter() - t)
        finally:
            box.close()
    times.sort()
    return (1000 * times[len(times) // 2],
            1000 * times[max(0, math.ceil(0.95 * len(times)) - 1)], ids)


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def fleet_keys(tmp: Path) -> tuple[dict, bytes]:
    """One holder-sealing key pair and pseudonym secret for every worker of the run
    ([privacy] settings), and the public key the publishers seal to."""
    from fleet import sealing_keys
    from fleet.config import load

    privacy = {"sealing_dir": str(tmp / "sealing"), "pseudonym_key": str(tmp / "pseudonym.key")}
    config = load(None, env={}, fleet={"data_dir": str(tmp)}, privacy=privacy)
    sealing_keys.pseudonym_secret(config)
    return privacy, sealing_keys.load(config).current.public


def seal_costs(samples: int, tmp: Path) -> dict:
    """µs per call, median and p95 of `samples`: the kiosk's seal per decision (through a
    BundleStore holding a fleet trust bundle, as Kiosk.on_decision), within an epoch and
    when it begins one (an X25519 key pair and exchange: once per epoch), and the
    ingest's open + pseudonym per scan (Unsealer.pseudonym, as IngestWorker._holder),
    with the epoch's AEAD cached and for the first envelope of an epoch (the exchange)."""
    import statistics
    from datetime import timedelta

    from cryptography.hazmat.primitives.asymmetric import ec

    from device.privacy import Sealer
    from device.state import BundleStore
    from fleet import sealing_keys
    from fleet.config import load
    from greengate import bundle, sealing

    privacy, public = fleet_keys(tmp / "costs")
    config = load(None, env={}, fleet={"data_dir": str(tmp / "costs")}, privacy=privacy)
    signer = ec.generate_private_key(ec.SECP256R1())
    store = BundleStore(tmp / "costs" / "kiosk", signer.public_key(), "bench", "p",
                        timedelta(hours=72))
    key = sealing_keys.load(config).current
    store.offer(bundle.seal("trust", 1, int(time.time()), {"certificates": [],
                                                           "sealing": key.body()},
                            signer, "bench"))
    holder = ("NGUYEN<THI", "MINH<ANH", "1990-01-01")

    def run(sealer, kiosk):
        times, docs = [], []
        for i in range(samples):
            scan_id = f"{i:032x}"
            t = time.perf_counter()
            text = sealer(holder, kiosk=kiosk, scan_id=scan_id)
            times.append(time.perf_counter() - t)
            docs.append((text, kiosk, scan_id))
        return times, docs

    # one epoch for all the samples (samples <= EPOCH_SEALS), and one epoch per seal
    seal_t, docs = run(Sealer(lambda: store.sealing_key), "bench-kiosk")
    start_t, fresh = run(Sealer(lambda: store.sealing_key, sealing.EpochSealer(seals=1)),
                         "bench-kiosk-2")
    unsealer = sealing_keys.Unsealer(config)
    open_t, miss_t = [], []
    for times, batch in ((open_t, docs), (miss_t, fresh)):
        for text, kiosk, scan_id in batch:
            t = time.perf_counter()
            unsealer.pseudonym(text, kiosk, scan_id)
            times.append(time.perf_counter() - t)
    # one exchange per epoch: those of the first Sealer, and one per seal of the second
    assert unsealer.opener.derived == -(-samples // sealing.EPOCH_SEALS) + len(fresh)

    def stat(xs):
        xs = sorted(xs)
        return statistics.median(xs) * 1e6, xs[int(0.95 * (len(xs) - 1))] * 1e6
    return {"seal": stat(seal_t[1:]), "epoch": stat(start_t), "open": stat(open_t[1:]),
            "miss": stat(miss_t), "n": samples}


def worker_settings(args) -> tuple[dict, str]:
    """The config overrides the options ask for, and the settings the workers run with
    (they set the latency: a batch waits up to batch_seconds, its ids up to
    confirm_seconds), as a line."""
    from fleet.config import load

    settings: dict = {}
    if args.batch_seconds is not None:
        settings.setdefault("mqtt", {})["batch_seconds"] = args.batch_seconds
    if args.confirm_seconds is not None:
        settings.setdefault("ingest", {})["confirm_seconds"] = args.confirm_seconds
    config = load(None, env={}, **settings)
    shown = [f"[mqtt] batch_size {args.batch_size}",
             f"batch_seconds {config.mqtt.batch_seconds:g}"]
    confirm = getattr(config.ingest, "confirm_seconds", None)
    if confirm is not None:
        shown.append(f"[ingest] confirm_seconds {confirm:g}")
    return settings, ", ".join(shown)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000,
                    help="scans per saturated measurement")
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--kiosks", type=int, default=KIOSKS, help="kiosks per publisher")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="cProfile the SQLite drain")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best "
                    "counts")
    ap.add_argument("--workers", type=int, default=2,
                    help="also measure this many worker processes on one share group (1: skip)")
    ap.add_argument("--compare-off", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure one SQLite worker with confirmations switched off")
    ap.add_argument("--compare-unheard", action=argparse.BooleanOptionalAction,
                    default=False, help="also measure one SQLite worker confirming to nobody "
                    "(the publishers do not subscribe): the fleet side's cost alone")
    ap.add_argument("--rates", default="1000,10000",
                    help="offered rates (scans/s in all) for the latency runs; '' skips them")
    ap.add_argument("--duration", type=float, default=15.0,
                    help="seconds each offered rate is held")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="the workers' [mqtt] batch_seconds (default: the fleet's)")
    ap.add_argument("--confirm-seconds", type=float, default=None,
                    help="the workers' [ingest] confirm_seconds (default: the fleet's)")
    ap.add_argument("--confirm-timeout", type=float, default=60.0,
                    help="seconds to wait, after the last commit, for the last confirmations")
    ap.add_argument("--delete-samples", type=int, default=200,
                    help="kiosk outbox deletes timed apart (0: skip)")
    ap.add_argument("--holders", choices=("sealed", "legacy"), default="sealed",
                    help="sealed: scans carry the holder sealed to the fleet's key (kiosks "
                    "now); legacy: the pseudonym itself (kiosks before sealing)")
    ap.add_argument("--seal-samples", type=int, default=2000,
                    help="seal and open timed apart, per call (0: skip)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                    for k, v in QUICK.items())
                    + " (options given explicitly win)")
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # not the migrations' INFO lines
    args.repeat = max(1, args.repeat)
    print(header("fleet ingest: MQTT -> database -> confirmation",
                 shlex.join(["python", "-m", "bench", "ingest", *argv])))
    print(f"{args.messages} scans from {args.publishers} publisher processes x {args.kiosks} "
          f"kiosks; plain TCP Mosquitto on 127.0.0.1; batch_size {args.batch_size}, "
          f"Receive Maximum {2 * args.batch_size}; best of {args.repeat} runs each")
    print("worker rows: the worker confirms what it committed (gg/v1/confirm/<kiosk>, "
          "QoS 1) and each publisher, kiosk-like, subscribes to its own kiosks' confirm "
          "topics; bare and 'confirms off' rows: nothing confirms; 'confirms unheard': the "
          "worker confirms, no publisher subscribes (the broker drops them)")
    settings, shown = worker_settings(args)
    print(f"workers: {shown}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="greengate-bench-ingest-"))
    privacy, public = fleet_keys(tmp)
    settings["privacy"] = privacy
    epochs = min(args.messages, args.publishers * args.kiosks)
    print(f"holders: {args.holders}" + (" (sealed by the publishers before the clock "
                                         "starts, each kiosk in one epoch of its own: "
                                         f"{epochs} epochs, an X25519 exchange in the worker "
                                         f"per {args.messages / epochs:.0f} scans; each "
                                         "worker opens every one)"
                                         if args.holders == "sealed" else
                                         " (the pseudonym, as kiosks older than sealing)"))
    load = Load(args.messages, args.publishers, args.kiosks, tmp, args.confirm_timeout,
                public if args.holders == "sealed" else None)
    costs = seal_costs(args.seal_samples, tmp) if args.seal_samples > 0 else None
    cluster = None
    results, paced_results = {}, []
    try:
        if "postgresql" in backends:
            from tests.databases import PostgresCluster
            cluster = PostgresCluster(settings={"fsync": "on", "full_page_writes": "on",
                                                "synchronous_commit": "on"}).start()

        def worker(backend: str, processes: int = 0, confirms: bool = True,
                   listen: bool = True):
            kind = (f"{processes or 1}{'' if confirms else '_off'}"
                    f"{'' if listen else '_unheard'}")
            urls = {}

            def make(port, mode, again=False):
                if mode not in urls:  # a fresh database per measurement
                    name = f"{mode}_{kind}"
                    if backend == "sqlite":
                        url = f"sqlite:///{tmp / backend / name / 'fleet.sqlite'}"
                    else:
                        url = cluster.url(cluster.create_database(f"bench_{name}"))
                    urls[mode] = fresh_database(url, args.publishers, args.kiosks)
                if processes:
                    return WorkerProcesses(processes, port, urls[mode],
                                           tmp / backend / f"{mode}_{kind}", args.batch_size,
                                           settings)
                profile = (args.profile and backend == "sqlite" and mode == "drain0" and again
                           and confirms and listen)
                return Worker(port, urls[mode], tmp / backend, args.batch_size, profile,
                              confirms, listen, settings)
            return make

        consumers = [("bare paho (no database)", "bare",
                      lambda port, mode, again=False: Bare(port, 2 * args.batch_size))]
        for backend in backends:
            consumers.append((f"worker, {backend}", backend, worker(backend)))
            if backend == "sqlite" and args.compare_off:
                consumers.append((f"worker, {backend}, confirms off", f"{backend}-off",
                                  worker(backend, confirms=False)))
            if backend == "sqlite" and args.compare_unheard:
                consumers.append((f"worker, {backend}, confirms unheard",
                                  f"{backend}-unheard", worker(backend, listen=False)))
            if args.workers > 1:
                consumers.append((f"{args.workers} workers, {backend}", f"{backend}-n",
                                  worker(backend, processes=args.workers)))
        # run by run, every consumer in turn: a load passing over the shared machine
        # then hits them all alike, instead of one consumer's every run
        results = {name: empty() for name, _, _ in consumers}
        for run in range(args.repeat):
            for name, tag, make in consumers:
                measure(make, load, tag, run, results[name])
        bare = results["bare paho (no database)"]
        if cluster is not None:
            cluster.close()
            cluster = None
        for rate in rates:
            paced_results.append(paced(rate, args.duration, load, args.batch_size,
                                       settings))
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ids = max((r["confirms"].ids_per_message() for r in paced_results), default=0.0)
    delete = kiosk_delete(args.delete_samples, max(1, round(ids))) \
        if args.delete_samples > 0 else None

    print()
    print("saturated: publishers flat out; (confirmed /s) = N / time to the last confirmation "
          "received by the publishers")
    print(f"{'consumer':<30}{'live /s':>10}{'(publish /s)':>14}{'(confirmed /s)':>16}"
          f"{'drain /s':>10}{'(confirmed /s)':>16}{'live vs bare':>14}{'drain vs bare':>15}")
    for name, r in results.items():
        print(f"{name:<30}{r['live']:>10,.0f}{r['publish']:>14,.0f}"
              f"{_rate(r['live_confirmed']):>16}{r['drain']:>10,.0f}"
              f"{_rate(r['drain_confirmed']):>16}"
              f"{r['live'] / bare['live']:>14.0%}{r['drain'] / bare['drain']:>15.0%}")
    print()
    print("CPU per scan, least of the runs (less disturbed by a busy machine than the rates; "
          "consumer = this process: the bare client or the worker, with the bench's 2 ms "
          "polling; broker = Mosquitto, confirmations to the publishers included):")
    for name, r in results.items():
        c = r["cpu"]
        if "consumer drain" in c:
            print(f"  cpu per scan, {name}: consumer live {c['consumer live']:.0f} µs, drain "
                  f"{c['consumer drain']:.0f} µs; broker live {c['broker live']:.0f} µs, "
                  f"drain {c['broker drain']:.0f} µs")
    print()
    print("confirmations in the saturated runs (all runs; latency of the best live run, "
          "queueing included):")
    for name, r in results.items():
        c = r["confirms"]
        if c is None:
            continue
        lat = r["live_latency"]
        print(f"  {name}: {c.scans:,} scans, {c.confirmed:,} confirmed, {c.missing} missing, "
              f"{c.duplicate} duplicate, {c.unknown + c.bad} unknown or unparsable; "
              f"{c.ids_per_message():.1f} ids per confirmation; live latency p50 "
              f"{_ms(lat.pct(0.5) if lat else None)} ms, p95 "
              f"{_ms(lat.pct(0.95) if lat else None)} ms")
    off = results.get("worker, sqlite, confirms off")
    for label, row in (("on", "worker, sqlite"), ("unheard", "worker, sqlite, confirms unheard")):
        on = results.get(row)
        if on and off:
            print(f"  one SQLite worker, this run, rate with confirms {label} vs off: live "
                  f"{on['live'] / off['live'] - 1:+.1%}, drain "
                  f"{on['drain'] / off['drain'] - 1:+.1%} (negative: what confirming costs)")
    if paced_results:
        print()
        print(f"confirmation latency at a fixed offered rate: one SQLite worker, "
              f"{args.publishers} publishers x {args.kiosks} kiosks pacing their publishes, "
              f"{args.duration:g} s per rate; latency = publish -> confirmation received "
              f"(the kiosk deletes the row then)")
        print(f"{'offered /s':>10}{'published /s':>14}{'reached':>9}{'committed /s':>14}"
              f"{'scans':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'missing':>9}"
              f"{'duplicate':>11}{'ids/confirm':>13}")
        for p in paced_results:
            c = p["confirms"]
            reached = p["published"] >= REACHED * p["offered"]
            print(f"{p['offered']:>10,.0f}{p['published']:>14,.0f}"
                  f"{'yes' if reached else 'NO':>9}{p['committed']:>14,.0f}{p['n']:>9,}"
                  f"{_ms(c.pct(0.5)):>9}{_ms(c.pct(0.95)):>9}{_ms(c.pct(1.0)):>9}"
                  f"{c.missing:>9}{c.duplicate:>11}{c.ids_per_message():>13.1f}")
        cores = os.cpu_count() or 1
        confirm_wait = settings.get("ingest", {}).get("confirm_seconds", 0.5)
        for p in paced_results:
            c = p["cpu"]
            ours = c["publishers"] + c["worker"] + c["broker"]
            print(f"  {p['offered']:,.0f}/s: CPU over the {c['wall']:.1f} s run: publishers "
                  f"{c['publishers']:.1f} s, worker (this process) {c['worker']:.1f} s, "
                  f"broker {c['broker']:.1f} s: "
                  f"{ours / (cores * c['wall']):.0%} of the {cores} cores; the rest was "
                  f"idle or other processes'")
        for p in paced_results:
            if p["published"] >= REACHED * p["offered"] and p["tail"] > KEPT_UP:
                print(f"  {p['offered']:,.0f}/s was offered but one SQLite worker committed "
                      f"only {p['committed']:,.0f}/s (last commit {p['tail']:.1f} s, last "
                      f"confirmation {p['confirm_tail']:.1f} s after the last publish): a "
                      f"backlog grew through the run and its latency is mostly that backlog "
                      f"(it grows with --duration)")
            elif p["confirm_tail"] > KEPT_UP + confirm_wait:
                print(f"  {p['offered']:,.0f}/s: the worker kept up committing (last commit "
                      f"{p['tail']:.1f} s after the last publish) but the last confirmation "
                      f"came {p['confirm_tail']:.1f} s after it: the confirmations lagged")
            if p["published"] < REACHED * p["offered"]:
                print(f"  {p['offered']:,.0f}/s was NOT offered: the {args.publishers} "
                      f"publishers reached {p['published']:,.0f}/s (at worst "
                      f"{p['lag']:.2f} s behind their schedule), sharing the machine's "
                      f"cores with the broker and the worker; its latency is that of "
                      f"the rate reached, publisher backlog included")
    if costs is not None:
        print(f"holder sealing, timed apart in this process ({costs['n']} calls each): kiosk "
              f"seal per decision p50 {costs['seal'][0]:.1f} µs, p95 {costs['seal'][1]:.1f} "
              f"µs (the first of an epoch: p50 {costs['epoch'][0]:.0f} µs, p95 "
              f"{costs['epoch'][1]:.0f} µs); ingest open + pseudonym per scan p50 "
              f"{costs['open'][0]:.1f} µs, p95 {costs['open'][1]:.1f} µs (the first of an "
              f"epoch, one X25519 exchange: p50 {costs['miss'][0]:.0f} µs, p95 "
              f"{costs['miss'][1]:.0f} µs)")
    if delete is not None:
        print(f"kiosk side, measured apart and not included above: Outbox.confirm of "
              f"{delete[2]} id(s) (one fsynced SQLite transaction) p50 {delete[0]:.1f} ms, "
              f"p95 {delete[1]:.1f} ms ({args.delete_samples} deletes, this machine's disk)")
    print()
    status = 0
    for name, r in results.items():
        if not name.startswith("worker") or "confirms " in name:
            continue  # the targets are for one worker, as the fleet runs it
        for mode in ("live", "drain"):
            rate, share = r[mode], r[mode] / bare[mode]
            if "sqlite" in name:
                ok = rate >= TARGET_RATE
                print(f"target {name} {mode} >= {TARGET_RATE:,}/s: {rate:,.0f}/s "
                      f"{'met' if ok else 'MISSED'}")
                before = BEFORE[mode]
                ok = rate >= (1 - WITHIN) * before
                print(f"target {name} {mode}, confirmations on, within {WITHIN:.0%} of "
                      f"{before:,}/s (before confirmations, bench/REPORT.md at "
                      f"{BEFORE_COMMIT}): {rate:,.0f}/s ({rate / before - 1:+.1%}) "
                      f"{'met' if ok else 'MISSED'}")
                # the same comparison against the broker's rate of each run, for a machine
                # busier or quieter than the one of the figure before
                was = before / BEFORE_BARE[mode]
                ok = share >= (1 - WITHIN) * was
                print(f"target {name} {mode}, confirmations on, share of bare within "
                      f"{WITHIN:.0%} of {was:.0%} (the share before confirmations, "
                      f"{BEFORE_COMMIT}): {share:.0%} {'met' if ok else 'MISSED'}")
            ok = share >= TARGET_SHARE
            print(f"target {name} {mode} >= {TARGET_SHARE:.0%} of bare: {share:.0%} "
                  f"{'met' if ok else 'MISSED'}")
    every = Confirmations()
    for r in results.values():
        if r["confirms"] is not None:
            every.merge(r["confirms"])
    for p in paced_results:
        every.merge(p["confirms"])
    if every.scans:
        ok = every.missing == 0
        print(f"target every scan confirmed (all runs with confirmations): {every.missing} "
              f"missing of {every.scans:,} ({every.duplicate} duplicate) "
              f"{'met' if ok else 'MISSED'}")
    sqlite = results.get("worker, sqlite")
    if args.profile and sqlite is not None:
        for thread, profile in sqlite.get("profiles", {}).items():
            print(f"\n--- cProfile, SQLite drain: {thread}, by own time")
            pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

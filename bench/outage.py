"""Outage detection delay: a kiosk process dies (kill -9) or freezes (SIGSTOP), how long
until GET /api/v1/kiosks/<id> says "offline"?

    python -m bench outage [--keepalives 3,30] [--kills 5,3] [--freezes 3,2] [--sweep 5]

Everything is real: Mosquitto with TLS and client certificates (tests/broker.py), a
fresh fleet SQLite database (the migrations), the ingest worker tracking presence
(fleet.ingest.IngestWorker, [presence] keepalive = K, sweep = --sweep, the production
default 5 s), and a kiosk process (device.reporter.Reporter with MQTT keepalive K, a
heartbeat every K seconds, as device/kiosk.py with keepalive = heartbeat = K). The
delay is measured from the signal to the first answer of the real Flask API (test
client, bearer token) saying state "offline" (polled every --poll seconds).

Two ways for a kiosk to vanish, and which mechanism fires first:

  kill -9   the kernel closes the kiosk's TCP connection at once; Mosquitto sees it
            drop and publishes the kiosk's last will (presence offline, "connection
            lost") immediately. Delay = broker + worker batch + database write:
            well under a second, independent of K.
  freeze    (SIGSTOP: a hung Pi, power or cable lost upstream) nothing closes the
            connection. Both the broker (no packet for 1.5 x K: will) and the fleet
            (no heartbeat for 1.5 x K: "silent", found by the next sweep) count from the
            last message heard, at most K before the freeze. Bound from the freeze:
            1.5 x K + sweep (the fleet's timer, which needs no will); Mosquitto only
            checks keepalives every few seconds, so either can win: the "fired first"
            column says which did ("connection lost" = will, "silent" = fleet timer).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import header

ROOT = Path(__file__).resolve().parent.parent


# --- the kiosk process ------------------------------------------------------------------
def child(argv: list[str]) -> int:
    """A kiosk's reporter and heartbeat loop, until killed."""
    ap = argparse.ArgumentParser()
    for name in ("--kiosk", "--port", "--ca", "--cert", "--key", "--dir", "--keepalive"):
        ap.add_argument(name, required=True)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from device.outbox import Outbox
    from device.reporter import Reporter
    from device.session import SessionCounter
    from greengate import messages

    keepalive = int(a.keepalive)
    outbox = Outbox(Path(a.dir) / "outbox.sqlite", 1000)
    reporter = Reporter(outbox, a.kiosk, "localhost", int(a.port), tls=(a.ca, a.cert, a.key),
                        keepalive=keepalive, backoff=(0.25, 1.0),
                        session_source=SessionCounter(Path(a.dir) / "session"))
    reporter.start()
    start = time.time()
    while True:
        if reporter.connected:
            reporter.publish_heartbeat(messages.heartbeat(
                kiosk=a.kiosk, session=0, ts=time.time(), uptime=time.time() - start,
                bundles={"trust": 1, "policy": 1, "status": 1}, outbox=0, clock="synced",
                lists="fresh", cpu_temp=None))
            time.sleep(keepalive)
        else:
            time.sleep(0.05)


# --- the fleet side -----------------------------------------------------------------------
class Fleet:
    """Broker + database + worker with presence + API client, for one keepalive."""

    def __init__(self, tmp: Path, keepalive: float, sweep: float):
        from fleet import auth, migrate
        from fleet.app import create_app
        from fleet.config import load
        from fleet.db import make_engine, make_sessions
        from fleet.ingest import IngestWorker
        from tests.broker import PKI, Broker

        self.tmp, self.keepalive = tmp, keepalive
        self.pki = PKI(tmp / "pki")
        self.broker = Broker(tmp / "broker", self.pki, persistence=False).start()
        files = self.broker.client_tls("fleet")
        url = f"sqlite:///{tmp / 'fleet.sqlite'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
        with make_sessions(engine)() as s:
            user = auth.create_user(s, "bench-admin", "bench-password-2021", "admin")
            s.flush()
            self.token = auth.create_token(s, user, "bench-outage")
            s.commit()
        engine.dispose()
        self.config = load(None, env={}, fleet={"data_dir": str(tmp / "data"),
                                                "database_url": url},
                           mqtt={"host": "localhost", "port": self.broker.port, "tls": True,
                                 "ca": files.ca, "cert": files.cert, "key": files.key},
                           presence={"keepalive": keepalive, "sweep": sweep})
        self.worker = IngestWorker(self.config, worker="bench-outage")
        self.worker.start()
        deadline = time.monotonic() + 30
        while not self.worker.ready:
            if time.monotonic() > deadline:
                raise RuntimeError("the ingest worker did not subscribe")
            time.sleep(0.05)
        app = create_app(self.config)
        app.logger.disabled = True
        self.client = app.test_client()

    def kiosk(self, kid: str) -> dict | None:
        resp = self.client.get(f"/api/v1/kiosks/{kid}",
                               headers={"Authorization": f"Bearer {self.token}"})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise RuntimeError(f"API: HTTP {resp.status_code}: {resp.get_data()[:200]!r}")
        return resp.get_json()

    def spawn(self, kid: str) -> subprocess.Popen:
        files = self.broker.client_tls(kid)
        folder = self.tmp / kid
        folder.mkdir(exist_ok=True)
        log = open(folder / "kiosk.log", "a")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.outage", "--child", "--kiosk", kid, "--port",
                 str(self.broker.port), "--ca", files.ca, "--cert", files.cert, "--key",
                 files.key, "--dir", str(folder), "--keepalive", str(int(self.keepalive))],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def close(self) -> None:
        try:
            self.worker.stop(timeout=15)
        finally:
            self.broker.stop()


def one(fleet: Fleet, kid: str, how: str, poll: float, last_session: int) -> dict:
    proc = fleet.spawn(kid)
    try:
        deadline = time.monotonic() + 30
        while True:
            k = fleet.kiosk(kid)
            if k and k["state"] == "online" and k["session"] > last_session:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"kiosk {kid} not online after 30 s: {k}")
            time.sleep(0.05)
        # where in the heartbeat cycle it dies: irrelevant to a will, the whole story for a
        # freeze (the silence is counted from the last message heard)
        time.sleep(random.uniform(0.5, 2.0) if how == "kill" else
                   random.uniform(0.0, fleet.keepalive))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        limit = t0 + 3 * fleet.keepalive + 30
        while True:
            k = fleet.kiosk(kid)
            now = time.monotonic()
            if k["state"] == "offline":
                break
            if now > limit:
                raise RuntimeError(f"kiosk {kid} still {k['state']} {now - t0:.0f} s after "
                                   f"{how}")
            time.sleep(poll)
        return {"delay": now - t0, "detail": k["detail"], "session": k["session"]}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def run(keepalives: list[float], kills: list[int], freezes: list[int], sweep: float,
        poll: float, log=print) -> list[dict]:
    """One row per (keepalive, scenario): delays and the bound."""
    rows = []
    for keepalive, n_kill, n_freeze in zip(keepalives, kills, freezes):
        tmp = Path(tempfile.mkdtemp(prefix="greengate-bench-outage-"))
        fleet = Fleet(tmp, keepalive, sweep)
        try:
            session = 0
            for how, n in (("kill", n_kill), ("freeze", n_freeze)):
                runs = []
                for i in range(n):
                    r = one(fleet, f"bench-k{int(keepalive)}", how, poll, session)
                    session = r["session"]
                    runs.append(r)
                    log(f"  keepalive {keepalive:g} s, {how} {i + 1}/{n}: offline after "
                        f"{r['delay']:.2f} s ({r['detail']})")
                if not runs:
                    continue
                delays = [r["delay"] for r in runs]
                causes: dict[str, int] = {}
                for r in runs:
                    cause = r["detail"].split(":", 1)[0]
                    causes[cause] = causes.get(cause, 0) + 1
                bound = 1.5 * keepalive + sweep
                rows.append({"keepalive": keepalive, "how": how, "n": n,
                             "median": statistics.median(delays),
                             "p95": percentile(delays, 0.95), "max": max(delays),
                             "bound": bound, "met": max(delays) <= bound,
                             "causes": causes})
        finally:
            fleet.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench outage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keepalives", default="3,30",
                        help="kiosk keepalive = heartbeat = fleet [presence] keepalive, s")
    parser.add_argument("--kills", default="5,3", help="kill -9 runs per keepalive")
    parser.add_argument("--freezes", default="3,2", help="SIGSTOP runs per keepalive")
    parser.add_argument("--sweep", type=float, default=5.0,
                        help="[presence] sweep, s (production default 5)")
    parser.add_argument("--poll", type=float, default=0.02, help="API poll interval, s")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    keepalives = [float(x) for x in args.keepalives.split(",")]
    kills = [int(x) for x in args.kills.split(",")]
    freezes = [int(x) for x in args.freezes.split(",")]
    if not len(keepalives) == len(kills) == len(freezes):
        parser.error("--keepalives, --kills and --freezes need one value per keepalive")
    random.seed(args.seed)
    logging.basicConfig(level=logging.WARNING)
    print(header("outage detection: kiosk killed or frozen -> offline on the API",
                 f".venv/bin/python -m bench outage --keepalives {args.keepalives} "
                 f"--kills {args.kills} --freezes {args.freezes} --sweep {args.sweep:g}"))
    print(f"Mosquitto (TLS, client certificates), fleet SQLite, ingest worker with presence "
          f"(sweep {args.sweep:g} s), kiosk process = Reporter + heartbeat every keepalive; "
          f"API polled every {args.poll * 1000:.0f} ms\n")
    start = time.perf_counter()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = run(keepalives, kills, freezes, args.sweep, args.poll, log)
    print(f"{'keepalive':>9s} {'event':>7s} {'n':>3s} {'median':>8s} {'p95':>8s} {'max':>8s} "
          f"{'bound':>8s}  fired first")
    for r in rows:
        causes = ", ".join(f"{c} {n}" for c, n in r["causes"].items())
        print(f"{r['keepalive']:>7g} s {r['how']:>7s} {r['n']:>3d} {r['median']:>7.2f}s "
              f"{r['p95']:>7.2f}s {r['max']:>7.2f}s {r['bound']:>7.1f}s  {causes}")
    print("\n(bound = 1.5 x keepalive + sweep: the fleet's silence timer, the backstop; "
          "'connection lost' = the broker's last will, 'silent' = the fleet's timer)")
    for r in rows:
        print(f"target {r['how']} at keepalive {r['keepalive']:g} s: offline within "
              f"{r['bound']:.1f} s: max {r['max']:.2f} s {'met' if r['met'] else 'MISSED'}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))

"""Dashboard home, the kiosk list and the kiosks API on a big SQLite fleet: p50/p95/max
response time.

    python -m bench dashboard [--kiosks N] [--scans M] [--days D] [--data-dir DIR]
                              [--requests R] [--workers W] [--experiment SQL]... [--profile]
                              [--only TEXT]...

1. Builds (or reuses: cached by parameters under --data-dir) a fleet database through
   the real migrations (fleet.migrate.upgrade): N kiosks (default 10,000) in 24 HCMC
   districts and N/5 locations, in realistic presence (most online; offline ones with an
   open outage; degraded, never seen, retired; 21 days of outage and presence history),
   heartbeats as kiosks send them (greengate.messages.heartbeat), published bundles, and
   M scans (default 10,000,000) over the last D days (default 21, the retention) with
   the checkpoints' daily rhythm (Asia/Ho_Chi_Minh), a decision/reason mix, holder
   pseudonyms and certificate hashes, uuid4 scan ids, plus some scan summaries.
   The load runs with journal_mode=OFF / synchronous=OFF and the scan table's secondary
   indexes dropped, then recreated from their own CREATE INDEX text (same names and
   definitions as the migration); --indexes during keeps them during the load instead
   (to compare). The database ends in WAL mode, as the fleet runs it. No ANALYZE is
   run: the fleet never runs it either (--experiment ANALYZE measures what it would do).
2. Serves it with gunicorn (--workers, default 2, sync workers as fleet.wsgi) through
   fleet.app.create_app, the clock pinned (app.config["GREENGATE_CLOCK"]) to the data's
   "now" (a weekday-ish afternoon, 15:00 in Ho Chi Minh City, by default) plus the time
   elapsed since the server started, so a cached database measures the same every time.
   One client, one request at a time: the dashboard home page (GET /, logged in through
   the login form with its CSRF token), the paged kiosk list (/kiosks: pages spread over
   the whole list, filters, search) and the JSON API with a bearer token; --only picks
   endpoints by label. Each
   endpoint gets warm-up requests, then --requests timed ones (stopping early after
   --max-seconds, never below 20), and p50/p95/max against the target (p95 <= 300 ms).
3. --experiment SQL (repeatable; e.g. a CREATE INDEX, or ANALYZE) measures everything
   again with those statements applied, prints before/after, and undoes them (DROP
   INDEX; ANALYZE's sqlite_stat tables dropped) so the cached database stays as built.
   --profile runs each endpoint once in-process and prints, for the slow ones, the SQL
   statements by time to first row with their EXPLAIN QUERY PLAN.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import numpy as np

from .common import header

TARGET_MS = 300.0
GEN_VERSION = 1  # bump when the generated data changes: the cache key includes it
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DEPLOYMENT = "hcmc"
POLICY = "hcmc-2021"
ADMIN_USER, ADMIN_PASSWORD = "bench-admin", "bench-password-2021"
ROOT = Path(__file__).resolve().parent.parent

DISTRICTS = [  # code, name, weight (how many locations: the centre is denser)
    ("q1", "Quận 1", 3.0), ("q3", "Quận 3", 2.0), ("q4", "Quận 4", 1.2), ("q5", "Quận 5", 1.8),
    ("q6", "Quận 6", 1.3), ("q7", "Quận 7", 1.6), ("q8", "Quận 8", 1.3), ("q10", "Quận 10", 1.6),
    ("q11", "Quận 11", 1.2), ("q12", "Quận 12", 1.2), ("binh-thanh", "Bình Thạnh", 2.0),
    ("go-vap", "Gò Vấp", 1.6), ("phu-nhuan", "Phú Nhuận", 1.3), ("tan-binh", "Tân Bình", 1.9),
    ("tan-phu", "Tân Phú", 1.4), ("binh-tan", "Bình Tân", 1.4), ("thu-duc", "Thủ Đức", 2.4),
    ("nha-be", "Nhà Bè", 0.5), ("can-gio", "Cần Giờ", 0.3), ("cu-chi", "Củ Chi", 0.7),
    ("hoc-mon", "Hóc Môn", 0.7), ("binh-chanh", "Bình Chánh", 0.8), ("q2", "Quận 2 (cũ)", 1.0),
    ("q9", "Quận 9 (cũ)", 0.8)]
PLACES = ["Chợ", "Siêu thị", "Bệnh viện", "Trường", "Văn phòng", "Ga", "Bến xe", "Nhà máy",
          "Trung tâm thương mại", "UBND phường", "Ngân hàng", "Nhà hàng"]
# Scans per local hour of the day (Asia/Ho_Chi_Minh): the morning commute, lunch, evening.
HOURLY = np.array([0.3, 0.15, 0.1, 0.1, 0.3, 1.5, 4.5, 8.5, 9.0, 7.0, 6.0, 7.0,
                   8.0, 6.5, 6.0, 6.5, 7.5, 9.0, 8.5, 6.0, 4.0, 2.5, 1.2, 0.6])
REASONS = [  # decision, reason, sub_reason, share
    ("green", "ok", None, 0.924),
    ("red", "expired", None, 0.018),
    ("red", "policy_failed", "vaccination_too_recent", 0.012),
    ("red", "policy_failed", "vaccination_incomplete", 0.008),
    ("red", "policy_failed", "test_too_old", 0.006),
    ("red", "unreadable", None, 0.012),
    ("red", "unknown_issuer", None, 0.006),
    ("red", "bad_signature", None, 0.003),
    ("red", "revoked", None, 0.003),
    ("red", "invalid_content", None, 0.003),
    ("red", "not_yet_valid", None, 0.001),
    ("red", "suspended", None, 0.001),
    ("red", "clock_unknown", None, 0.001),
    ("red", "out_of_service", None, 0.001),
    ("red", "place_closed", None, 0.001)]  # a workplace closed after a case
SCAN_INDEXES = ("ix_scan_ts_decision", "ix_scan_location_ts", "ix_scan_district_ts", "ix_scan_kiosk_ts",
                "ix_scan_cert_hash", "ix_scan_holder")
CHUNK = 250_000


# --- the database ------------------------------------------------------------------------
def data_now(hour: int, built: float) -> float:
    """The data's "now": the latest `hour`:00 local time (Ho Chi Minh City) at or before
    `built`, on a weekday (a busy afternoon by default)."""
    t = datetime.fromtimestamp(built, TZ).replace(hour=hour, minute=0, second=0, microsecond=0)
    if t.timestamp() > built:
        t -= timedelta(days=1)
    while t.weekday() >= 5:
        t -= timedelta(days=1)
    return t.timestamp()


def cache_key(args) -> str:
    return (f"dash-v{GEN_VERSION}-k{args.kiosks}-s{args.scans}-d{args.days}-h{args.hour}"
            f"-seed{args.seed}-{args.indexes}")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def migrate(path: Path) -> None:
    from fleet import migrate as fleet_migrate
    from fleet.db import make_engine
    engine = make_engine(sqlite_url(path))
    fleet_migrate.upgrade(engine)
    engine.dispose()


def create_admin(path: Path) -> None:
    from fleet import auth
    from fleet.db import make_engine, make_sessions
    engine = make_engine(sqlite_url(path))
    with make_sessions(engine)() as s:
        auth.create_user(s, ADMIN_USER, ADMIN_PASSWORD, "admin")
        s.commit()
    engine.dispose()


def hexes(rng, n: int, nbytes: int = 16) -> list[str]:
    raw = rng.bytes(nbytes * n).hex()
    w = 2 * nbytes
    return [raw[i:i + w] for i in range(0, len(raw), w)]


def build(path: Path, args, log) -> dict:
    """The whole database; returns the load figures (also kept in meta.json)."""
    from greengate import messages
    rng = np.random.default_rng(args.seed)
    built = time.time()
    now = data_now(args.hour, built)
    start = now - args.days * 86400
    t_all = time.perf_counter()
    migrate(path)
    create_admin(path)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA locking_mode=EXCLUSIVE")
    con.execute("PRAGMA temp_store=MEMORY")
    con.execute("PRAGMA cache_size=-2000000")  # 2 GB of page cache while loading
    con.execute("PRAGMA threads=2")  # CREATE INDEX may sort on both cores
    index_sql = dict(con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='scan' "
        "AND sql IS NOT NULL").fetchall())
    missing = set(SCAN_INDEXES) - set(index_sql)
    if missing:
        raise SystemExit(f"the migration no longer creates {sorted(missing)}: update the bench")
    if args.indexes == "after":
        for name in index_sql:
            con.execute(f"DROP INDEX {name}")
    con.execute("BEGIN")

    # districts and locations
    n_loc = max(1, round(args.kiosks / 5))
    con.executemany("INSERT INTO district (id, code, name) VALUES (?, ?, ?)",
                    [(i + 1, c, n) for i, (c, n, _) in enumerate(DISTRICTS)])
    dw = np.array([w for _, _, w in DISTRICTS])
    loc_district = rng.choice(len(DISTRICTS), size=n_loc, p=dw / dw.sum()) + 1
    loc_rows, per_district = [], {}
    for i, d in enumerate(loc_district):
        code = DISTRICTS[d - 1][0]
        per_district[code] = per_district.get(code, 0) + 1
        name = f"{PLACES[i % len(PLACES)]} {DISTRICTS[d - 1][1]} #{per_district[code]}"
        loc_rows.append((i + 1, f"{code}-{per_district[code]:04d}", name,
                         f"{rng.integers(1, 500)} Đường {per_district[code]}, {DISTRICTS[d - 1][1]}",
                         int(d)))
    con.executemany("INSERT INTO location (id, code, name, address, district_id) "
                    "VALUES (?, ?, ?, ?, ?)", loc_rows)

    # published bundles: trust 6, policy 3, status snapshots daily and deltas hourly
    trust_v, policy_v = 6, 3
    status_v = args.days * 24 + 20
    bundles = [(DEPLOYMENT, "trust", v, None, int(start + v * 86400 * 3)) for v in range(1, trust_v + 1)]
    bundles += [(DEPLOYMENT, "policy", v, None, int(start + v * 86400 * 5)) for v in range(1, policy_v + 1)]
    for v in range(status_v - args.days * 24, status_v + 1):
        at = int(now - (status_v - v) * 3600)
        if v % 24 == 0:
            bundles.append((DEPLOYMENT, "status", v, None, at))
        for base in range(max(1, v - 8), v):
            bundles.append((DEPLOYMENT, "status-delta", v, base, at))
        bundles.append((DEPLOYMENT, "status-head", v, None, at))
    con.executemany("INSERT INTO bundle (deployment, kind, version, base, issued_at, raw, etag) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [b + (rng.bytes(2048 if b[1] != "status" else 65536), uuid.uuid4().hex * 2)
                     for b in bundles])

    # kiosks and their presence
    n = args.kiosks
    kiosk_loc = np.concatenate([np.arange(1, min(n, n_loc) + 1),
                                rng.integers(1, n_loc + 1, size=max(0, n - n_loc))])
    rng.shuffle(kiosk_loc)
    states = rng.choice(["online", "degraded", "offline", "never_seen", "retired"], size=n,
                        p=[0.91, 0.025, 0.03, 0.015, 0.02])
    no_place = rng.random(n) < 0.003
    ids, kiosks, events, outages = [], [], [], []
    per_loc: dict[int, int] = {}
    ends = np.full(n, now)  # scans until
    begins = np.full(n, start)
    for i in range(n):
        loc = int(kiosk_loc[i])
        per_loc[loc] = per_loc.get(loc, 0) + 1
        kid = f"{loc_rows[loc - 1][1]}-k{per_loc[loc]}"
        ids.append(kid)
        state = str(states[i])
        location = None if no_place[i] else loc
        if state == "never_seen":
            enrolled = now - rng.uniform(0.1, 10) * 86400
            kiosks.append((kid, location, DEPLOYMENT, POLICY, state, enrolled, "", None, 0, None,
                           enrolled, None))
            ends[i] = begins[i] = 0
            continue
        enrolled = now - rng.uniform(30, 300) * 86400
        session = int(rng.integers(2, 40))
        detail, retired_at = "", None
        if state in ("online", "degraded"):
            since = now - min(rng.exponential(3 * 86400 if state == "online" else 4 * 3600),
                              now - enrolled)
            last_seen = now - rng.uniform(0, 30)
            if state == "degraded":
                detail = str(rng.choice(["lists stale", "clock unknown", "outbox over 1000",
                                         "lists missing", "lists stale; clock unknown"]))
        elif state == "offline":
            # mostly recent (a lost connection), some for days (a kiosk nobody has fixed)
            since = now - (rng.exponential(6 * 3600) if rng.random() < 0.8
                           else rng.uniform(1, 15) * 86400)
            last_seen = since
            detail = str(rng.choice(["connection lost", "silent: no heartbeat for 45 s",
                                     "stopped"], p=[0.6, 0.3, 0.1]))
            outages.append((kid, since, None, detail.split(":", 1)[0]))
            ends[i] = since
        else:  # retired
            retired_at = now - rng.uniform(1, 60) * 86400
            since = last_seen = retired_at
            detail = "retired"
            ends[i] = retired_at
        begins[i] = max(start, enrolled)
        outbox = int(rng.integers(1200, 5000)) if detail.startswith("outbox") else \
            int(rng.choice([0, 0, 0, 0, 1, 2, 5]))
        applied_status = status_v - int(rng.choice([0] * 17 + [1, 2, 3])) if state != "offline" \
            else status_v - int(rng.integers(1, 30))
        beat = messages.heartbeat(
            kiosk=kid, session=session, ts=last_seen, uptime=float(rng.uniform(60, 30 * 86400)),
            bundles={"trust": trust_v, "policy": policy_v if rng.random() > 0.02 else policy_v - 1,
                     "status": None if "lists missing" in detail else applied_status},
            outbox=outbox, clock="unknown" if "clock" in detail else "synced",
            lists="stale" if "stale" in detail else "missing" if "missing" in detail else "fresh",
            cpu_temp=round(float(rng.normal(55, 6)), 1), overflow=0)
        kiosks.append((kid, location, DEPLOYMENT, POLICY, state, since, detail, last_seen,
                       session, json.dumps(beat), enrolled, retired_at))
        # history: closed outages and degraded spells before the current state
        t = max(start, enrolled)
        gap = since - t
        if gap > 3600:
            for _ in range(rng.poisson(2.5)):
                s0 = t + rng.uniform(0, gap)
                dur = min(rng.exponential(1200) + 60, since - s0 - 1)
                if dur <= 0:
                    continue
                cause = str(rng.choice(["connection lost", "silent", "stopped"], p=[0.6, 0.3, 0.1]))
                outages.append((kid, s0, s0 + dur, cause))
                events.append((kid, s0, "online", "offline", session - 1, cause))
                events.append((kid, s0 + dur, "offline", "online", session, ""))
            for _ in range(rng.poisson(0.8)):
                s0 = t + rng.uniform(0, gap)
                events.append((kid, s0, "online", "degraded", session, "lists stale"))
                events.append((kid, s0 + rng.uniform(60, 3600), "degraded", "online", session, ""))
        previous = {"online": "offline", "degraded": "online", "offline": "online",
                    "retired": "offline"}[state]
        events.append((kid, since, previous, state, session, detail))
    con.executemany("INSERT INTO kiosk (id, location_id, deployment, policy, state, state_since, "
                    "detail, last_seen, session, heartbeat, enrolled_at, retired_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", kiosks)
    events.sort(key=lambda e: e[1])
    con.executemany("INSERT INTO presence_event (kiosk_id, at, previous, state, session, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)", events)
    outages.sort(key=lambda o: o[1])
    con.executemany("INSERT INTO outage (kiosk_id, started, ended, cause) VALUES (?, ?, ?, ?)",
                    outages)
    con.execute("COMMIT")
    log(f"  {len(DISTRICTS)} districts, {n_loc:,} locations, {n:,} kiosks, {len(events):,} "
        "presence events, {:,} outages ({} open)".format(
            len(outages), sum(1 for o in outages if o[2] is None)))

    # scans: kiosk by activity, time by the hourly rhythm, in time order (ids follow ts)
    t_scans = time.perf_counter()
    district_of = np.array([0] + [int(d) for d in loc_district])
    kloc = np.where(no_place, 0, kiosk_loc)
    kdist = district_of[kloc]
    active = ends > begins
    weight = np.where(active, rng.lognormal(0, 0.8, size=n), 0.0)
    live = np.flatnonzero(np.isin(states, ["online", "degraded"]))
    hours0 = int(start // 3600)
    n_hours = int(np.ceil((now - hours0 * 3600) / 3600))
    hour_starts = (hours0 + np.arange(n_hours)) * 3600.0
    local = np.array([datetime.fromtimestamp(h, TZ).hour for h in hour_starts])
    weekday = np.array([datetime.fromtimestamp(h, TZ).weekday() for h in hour_starts])
    hw = HOURLY[local] * np.where(weekday >= 5, 0.75, 1.0)
    hw[0] *= (hour_starts[0] + 3600 - start) / 3600
    hw[-1] *= (now - hour_starts[-1]) / 3600
    hour_idx = rng.choice(n_hours, size=args.scans, p=hw / hw.sum())
    ts = hour_starts[hour_idx] + rng.random(args.scans) * 3600
    ts = np.clip(ts, start, now - 0.001)
    del hour_idx
    ts.sort()
    who = rng.choice(n, size=args.scans, p=weight / weight.sum())
    bad = (ts > ends[who]) | (ts < begins[who])  # before enrolment, after going away
    lw = weight[live] / weight[live].sum()
    who[bad] = live[rng.choice(len(live), size=int(bad.sum()), p=lw)]
    holders_n = max(1000, args.scans // 8)
    holder_pool = hexes(rng, holders_n)
    cert_pool = hexes(rng, holders_n)
    reason_p = np.array([r[3] for r in REASONS])
    insert = ("INSERT INTO scan (kiosk_id, scan_id, ts, received, decision, reason, sub_reason, "
              "cert_type, cert_hash, holder, policy, location_id, district_id) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    kloc_l = [None if x == 0 else int(x) for x in kloc]
    kdist_l = [None if x == 0 else int(x) for x in kdist]
    gen_s = ins_s = 0.0
    for lo in range(0, args.scans, CHUNK):
        g0 = time.perf_counter()
        hi = min(args.scans, lo + CHUNK)
        m = hi - lo
        t = ts[lo:hi]
        received = (t + rng.lognormal(-0.5, 0.8, size=m)).tolist()
        k = who[lo:hi].tolist()
        reason = rng.choice(len(REASONS), size=m, p=reason_p).tolist()
        ctype = rng.choice(["v", "t", "r"], size=m, p=[0.85, 0.12, 0.03]).tolist()
        person = (holders_n * rng.random(m) ** 1.6).astype(np.int64).tolist()  # some scan often
        sid = hexes(rng, m)
        rows = []
        for j in range(m):
            d, r, sub, _ = REASONS[reason[j]]
            kk = k[j]
            if r == "unreadable":
                rows.append((ids[kk], sid[j], t[j], received[j], d, r, None, None, None, None,
                             POLICY, kloc_l[kk], kdist_l[kk]))
            else:
                p = person[j]
                rows.append((ids[kk], sid[j], t[j], received[j], d, r, sub, ctype[j],
                             cert_pool[p], holder_pool[p], POLICY, kloc_l[kk], kdist_l[kk]))
        g1 = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(insert, rows)
        con.execute("COMMIT")
        gen_s += g1 - g0
        ins_s += time.perf_counter() - g1
        if (hi // CHUNK) % 8 == 0 or hi == args.scans:
            log(f"  scans {hi:,} / {args.scans:,} ({time.perf_counter() - t_scans:.0f} s)")
    del rows
    # summaries: a few kiosks whose outbox overflowed for some hours
    summaries = []
    for i in rng.choice(live, size=max(1, n // 100), replace=False):
        for _ in range(int(rng.integers(1, 4))):
            hour = float(hour_starts[rng.integers(0, n_hours - 1)])
            for d, r in (("green", "ok"), ("red", "expired")):
                first = hour + rng.uniform(0, 600)
                summaries.append((ids[i], uuid.uuid4().hex, int(hour), d, r,
                                  int(rng.integers(5, 300) if d == "green" else rng.integers(0, 10)),
                                  first, first + rng.uniform(600, 2900), kloc_l[i], kdist_l[i]))
    con.execute("BEGIN")
    con.executemany("INSERT INTO scan_summary (kiosk_id, summary_id, hour, decision, reason, "
                    "count, first, last, location_id, district_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", summaries)
    con.execute("COMMIT")
    load_s = time.perf_counter() - t_scans
    t_idx = time.perf_counter()
    if args.indexes == "after":
        for name, sql in index_sql.items():
            t1 = time.perf_counter()
            con.execute(sql)
            log(f"  {name}: {time.perf_counter() - t1:.1f} s")
    index_s = time.perf_counter() - t_idx
    con.execute("PRAGMA locking_mode=NORMAL")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return {"built": built, "now": now, "kiosks": n, "scans": args.scans, "locations": n_loc,
            "districts": len(DISTRICTS), "events": len(events), "outages": len(outages),
            "open_outages": sum(1 for o in outages if o[2] is None),
            "summaries": len(summaries), "states": {s: int((states == s).sum()) for s in
                                                    np.unique(states)},
            "load_s": time.perf_counter() - t_all, "scan_gen_s": gen_s, "scan_insert_s": ins_s,
            "scan_load_s": load_s, "index_s": index_s, "indexes": args.indexes,
            "district_sample": district_sample(path), "kiosk_sample": kiosk_sample(path, 200)}


def district_sample(path: Path) -> str:
    """A district of median size: what a district officer's filter returns."""
    con = sqlite3.connect(path)
    rows = con.execute("SELECT d.code, count(*) FROM kiosk k JOIN location l ON "
                       "l.id = k.location_id JOIN district d ON d.id = l.district_id "
                       "GROUP BY d.code ORDER BY 2").fetchall()
    con.close()
    return rows[len(rows) // 2][0]


def kiosk_sample(path: Path, n: int) -> list[str]:
    """Kiosks for the detail page: online ones, spread over the table (cache-cold-ish)."""
    con = sqlite3.connect(path)
    ids = [r[0] for r in con.execute("SELECT id FROM kiosk WHERE state = 'online' ORDER BY id")]
    con.close()
    step = max(1, len(ids) // n)
    return ids[::step][:n]


def ensure_database(args, log) -> tuple[Path, dict]:
    folder = Path(args.data_dir) / cache_key(args)
    path = folder / "fleet.sqlite"
    meta_path = folder / "meta.json"
    if args.rebuild and folder.exists():
        shutil.rmtree(folder)
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        try:  # the schema may have moved on since the build: bring it to head
            migrate(path)
        except Exception as exc:  # noqa: BLE001 - a migration being written right now
            log(f"WARNING: upgrading the cached database failed ({exc}); measuring as it is")
        return path, meta
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted build
    folder.mkdir(parents=True)
    log(f"building {path} ...")
    meta = build(path, args, log)
    meta_path.write_text(json.dumps(meta))
    meta["cached"] = False
    return path, meta


# --- the server ----------------------------------------------------------------------------
def wsgi():
    """gunicorn 'bench.dashboard:wsgi()': the fleet app on the bench database, the clock
    pinned to the data's now (BENCH_DASHBOARD_NOW) plus the time since start."""
    from fleet.app import create_app
    from fleet.config import load
    app = create_app(load(os.environ["GREENGATE_FLEET_CONFIG"]))
    base, started = float(os.environ["BENCH_DASHBOARD_NOW"]), float(os.environ["BENCH_DASHBOARD_T0"])
    app.config["GREENGATE_CLOCK"] = lambda: base + (time.time() - started)
    return app


def write_config(folder: Path, db_path: Path) -> Path:
    data = folder / "fleet-data"
    data.mkdir(exist_ok=True)
    conf = folder / "fleet.toml"
    conf.write_text(f'[fleet]\ndata_dir = "{data}"\ndatabase_url = "{sqlite_url(db_path)}"\n'
                    f'deployments = ["{DEPLOYMENT}"]\nsecret_key = "bench-secret-key"\n'
                    '[mqtt]\nhost = ""\n[web]\nsecure_cookies = false\nlanguage = "en"\n')
    return conf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, conf: Path, now: float, workers: int, log_path: Path):
        self.port = free_port()
        env = dict(os.environ, GREENGATE_FLEET_CONFIG=str(conf), BENCH_DASHBOARD_NOW=repr(now),
                   BENCH_DASHBOARD_T0=repr(time.time()))
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-w", str(workers), "-b",
             f"127.0.0.1:{self.port}", "--timeout", "600", "--chdir", str(ROOT),
             "bench.dashboard:wsgi()"],
            env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                status, _, _ = request(self.port, "GET", "/login")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"gunicorn did not start: see {log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def request(port: int, method: str, path: str, headers: dict | None = None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheaders(), data
    finally:
        conn.close()


def _cookie(headers, jar: dict) -> None:
    for name, value in headers:
        if name.lower() == "set-cookie":
            k, _, rest = value.partition("=")
            jar[k] = rest.split(";", 1)[0]


def login(port: int) -> str:
    """Log in through the form (its CSRF token, the session cookie): the Cookie header."""
    jar: dict = {}
    status, headers, body = request(port, "GET", "/login")
    _cookie(headers, jar)
    token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
    form = urlencode({"csrf_token": token, "username": ADMIN_USER, "password": ADMIN_PASSWORD,
                      "next": "/"})
    status, headers, _ = request(port, "POST", "/login", {
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}, form)
    if status != 302:
        raise SystemExit(f"login failed: HTTP {status}")
    _cookie(headers, jar)
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def api_token(path: Path) -> str:
    from sqlalchemy import select
    from fleet import auth
    from fleet.db import make_engine, make_sessions
    from fleet.models import User
    engine = make_engine(sqlite_url(path))
    with make_sessions(engine)() as s:
        user = s.scalar(select(User).where(User.username == ADMIN_USER))
        token = auth.create_token(s, user, f"bench-{uuid.uuid4().hex[:8]}")
        s.commit()
    engine.dispose()
    return token


def endpoints(meta: dict) -> list[tuple[str, str, list[str]]]:
    """(label, auth kind, paths to cycle through)."""
    d = meta["district_sample"]
    return [
        ("GET / (home page)", "cookie", ["/"]),
        ("GET /live/home (home page poll)", "cookie", ["/live/home"]),
        # the kiosk list, paged (50 a page): the first page, pages spread over the whole
        # list (the offset is the cost), and the filters an operator uses
        ("GET /kiosks (page 1)", "cookie", ["/kiosks"]),
        ("GET /kiosks?page=N (every 10th page)", "cookie",
         [f"/kiosks?page={n}" for n in range(1, meta["kiosks"] // 50 + 1, 10)]),
        ("GET /kiosks?state=online&page=N", "cookie",
         [f"/kiosks?state=online&page={n}" for n in (1, 20, 60, 100, 150, 180)]),
        (f"GET /kiosks?district={d}", "cookie", [f"/kiosks?district={d}"]),
        ("GET /kiosks?q=… (id search)", "cookie", ["/kiosks?q=q1-", "/kiosks?q=00"]),
        ("GET /kiosks?silent=1", "cookie", ["/kiosks?silent=1"]),
        ("/api/v1/kiosks", "token", ["/api/v1/kiosks"]),
        ("/api/v1/kiosks?order=attention", "token", ["/api/v1/kiosks?order=attention"]),
        ("/api/v1/kiosks?state=offline", "token", ["/api/v1/kiosks?state=offline"]),
        (f"/api/v1/kiosks?district={d}", "token", [f"/api/v1/kiosks?district={d}"]),
        ("/api/v1/kiosks?order=attention&limit=50", "token",
         ["/api/v1/kiosks?order=attention&limit=50"]),
        ("/api/v1/kiosks?limit=500", "token", ["/api/v1/kiosks?limit=500"]),
        ("/api/v1/kiosks/<id>", "token", [f"/api/v1/kiosks/{k}" for k in meta["kiosk_sample"]]),
        ("/api/v1/stats/overview", "token", ["/api/v1/stats/overview"]),
        ("/api/v1/presence", "token", ["/api/v1/presence"]),
        ("/api/v1/outages?open=true", "token", ["/api/v1/outages?open=true"]),
        ("/api/v1/stats/scans-per-hour", "token", ["/api/v1/stats/scans-per-hour"]),
    ]


def measure(port: int, cookie: str, token: str, meta: dict, args, log) -> list[dict]:
    results = []
    for label, kind, paths in endpoints(meta):
        if args.only and not any(part in label for part in args.only):
            continue
        hdr = {"Cookie": cookie} if kind == "cookie" else {"Authorization": f"Bearer {token}"}
        times, sizes, errors, first_error = [], [], [], None
        for i in range(args.warmup):
            request(port, "GET", paths[i % len(paths)], hdr)
        begin = time.perf_counter()
        for i in range(args.requests):
            t0 = time.perf_counter()
            status, _, body = request(port, "GET", paths[i % len(paths)], hdr)
            times.append((time.perf_counter() - t0) * 1e3)
            sizes.append(len(body))
            if status != 200:
                errors.append(status)
                first_error = first_error or body[:300]
            if time.perf_counter() - begin > args.max_seconds and i + 1 >= 20:
                break
        times.sort()
        r = {"label": label, "n": len(times), "p50": statistics.median(times),
             "p95": times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)],
             "max": times[-1], "bytes": statistics.median(sizes), "errors": errors}
        results.append(r)
        log(f"  {label}: p95 {r['p95']:.0f} ms ({r['n']} requests)")
        if errors:
            log(f"    HTTP {sorted(set(errors))} on {len(errors)} of {len(times)} requests: "
                f"{first_error!r}")
    return results


def print_table(results: list[dict], before: list[dict] | None = None) -> None:
    head = f"{'endpoint':44s}{'n':>5s}{'p50 ms':>9s}{'p95 ms':>9s}{'max ms':>9s}{'size':>10s}"
    if before:
        head += f"{'p95 before':>12s}"
    print(head + "  p95 <= 300 ms")
    for i, r in enumerate(results):
        size = f"{r['bytes'] / 1e3:.1f} kB" if r["bytes"] < 1e6 else f"{r['bytes'] / 1e6:.2f} MB"
        line = (f"{r['label']:44s}{r['n']:5d}{r['p50']:9.1f}{r['p95']:9.1f}{r['max']:9.1f}"
                f"{size:>10s}")
        if before:
            line += f"{before[i]['p95']:12.1f}"
        verdict = "met" if r["p95"] <= TARGET_MS else "MISSED"
        if r["errors"]:
            verdict = (f"ERROR: HTTP {sorted(set(r['errors']))} on {len(r['errors'])} of "
                       f"{r['n']} (time is of the error page, not measured)")
        print(line + "  " + verdict)


# --- profile: which statements cost what -------------------------------------------------
def profile(conf: Path, meta: dict, token: str, threshold_ms: float) -> None:
    """Each endpoint once in-process: total time, SQL time to first row per statement, and
    EXPLAIN QUERY PLAN of the statements over threshold_ms."""
    from sqlalchemy import event
    from fleet.app import create_app, current_fleet
    from fleet.config import load
    app = create_app(load(conf))
    base, t0 = meta["now"], time.time()
    app.config["GREENGATE_CLOCK"] = lambda: base + (time.time() - t0)
    with app.app_context():
        engine = current_fleet().engine
    stmts: list = []

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info["t"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        stmts.append(((time.perf_counter() - conn.info["t"]) * 1e3, statement, parameters))

    app.logger.disabled = True  # a page failing mid-rewrite shows as its HTTP status only
    client = app.test_client()
    print("\nprofile (in-process, one request each; SQL = time to the first row):")
    for label, kind, paths in endpoints(meta):
        if kind == "cookie":
            with client.session_transaction() as s:
                s["user_id"] = 1
            hdr = {}
        else:
            hdr = {"Authorization": f"Bearer {token}"}
        client.get(paths[0], headers=hdr)  # warm
        stmts.clear()
        t = time.perf_counter()
        resp = client.get(paths[0], headers=hdr)
        total = (time.perf_counter() - t) * 1e3
        sql = sum(s[0] for s in stmts)
        print(f"  {label}: {total:.0f} ms total, {sql:.0f} ms in {len(stmts)} statements "
              f"(HTTP {resp.status_code})")
        for ms, statement, params in sorted(stmts, key=lambda s: -s[0]):
            if ms < threshold_ms:
                break
            print(f"    {ms:.0f} ms: {' '.join(statement.split())[:300]}")
            con = sqlite3.connect(meta["path"])
            try:
                for row in con.execute("EXPLAIN QUERY PLAN " + statement, params):
                    print(f"      plan: {row[3]}")
            finally:
                con.close()


# --- experiments ---------------------------------------------------------------------------
def apply_experiments(path: Path, statements: list[str], log) -> list[str]:
    """Run them; return the statements that undo them."""
    con = sqlite3.connect(path, isolation_level=None)
    undo = []
    try:
        for sql in statements:
            t = time.perf_counter()
            con.execute(sql)
            log(f"  experiment: {sql} ({time.perf_counter() - t:.1f} s)")
            m = re.match(r"\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
                         sql, re.I)
            if m:
                undo.append(f"DROP INDEX IF EXISTS {m.group(1)}")
            elif re.match(r"\s*ANALYZE", sql, re.I):
                undo += ["DROP TABLE IF EXISTS sqlite_stat1", "DROP TABLE IF EXISTS sqlite_stat4"]
    finally:
        con.close()
    return undo


def undo_experiments(path: Path, undo: list[str]) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for sql in undo:
            try:
                con.execute(sql)
            except sqlite3.OperationalError:
                pass  # sqlite_stat4 only exists in some builds
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


# --- main ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kiosks", type=int, default=10_000)
    parser.add_argument("--scans", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=21, help="scan history (the retention)")
    parser.add_argument("--hour", type=int, default=15,
                        help="local hour (Ho Chi Minh City) of the data's now")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) /
                                                  "greengate-bench-dashboard"),
                        help="where generated databases are cached (one folder per parameters)")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached database")
    parser.add_argument("--indexes", choices=("after", "during"), default="after",
                        help="scan indexes built after the load (default) or kept during it")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop an endpoint's timed requests after this long (at least 20)")
    parser.add_argument("--experiment", action="append", default=[], metavar="SQL",
                        help="measure again with this statement applied (then undone)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="measure only the endpoints whose label contains TEXT "
                             "(repeatable), e.g. --only /kiosks")
    parser.add_argument("--profile", action="store_true",
                        help="per-endpoint SQL statements and query plans (in-process)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    command = (f".venv/bin/python -m bench dashboard --kiosks {args.kiosks} --scans {args.scans}"
               + "".join(f' --experiment "{e}"' for e in args.experiment)
               + "".join(f' --only "{o}"' for o in args.only))
    print(header("dashboard home and kiosks API on SQLite", command))
    path, meta = ensure_database(args, log)
    meta["path"] = str(path)
    size = path.stat().st_size
    states = ", ".join(f"{k} {v:,}" for k, v in sorted(meta["states"].items()))
    print(f"database: {path} ({size / 1e9:.2f} GB; "
          f"{'cached, built' if meta['cached'] else 'built'} "
          f"{datetime.fromtimestamp(meta['built']).strftime('%Y-%m-%d %H:%M')})")
    print(f"data: {meta['kiosks']:,} kiosks ({states}), {meta['locations']:,} locations, "
          f"{meta['districts']} districts, {meta['scans']:,} scans over {args.days} days, "
          f"{meta['outages']:,} outages ({meta['open_outages']} open), {meta['events']:,} "
          f"presence events, {meta['summaries']} scan summaries")
    print(f"load: {meta['load_s']:.0f} s in all (scans: generate {meta['scan_gen_s']:.0f} s, "
          f"insert {meta['scan_insert_s']:.0f} s; scan indexes {meta['indexes']} the load: "
          f"{meta['index_s']:.0f} s)")
    print(f"clock pinned to the data's now: "
          f"{datetime.fromtimestamp(meta['now'], TZ).strftime('%a %Y-%m-%d %H:%M')} "
          f"Asia/Ho_Chi_Minh (+ time since the server started)")
    if args.build_only:
        return 0
    folder = path.parent
    conf = write_config(folder, path)
    token = api_token(path)
    print(f"server: gunicorn, {args.workers} sync workers; one client, sequential requests; "
          f"{args.warmup} warm-up + up to {args.requests} timed per endpoint "
          f"(at most {args.max_seconds:.0f} s each)\n")

    def run_all() -> list[dict]:
        server = Server(conf, meta["now"], args.workers, folder / "gunicorn.log")
        try:
            cookie = login(server.port)
            status, _, body = request(server.port, "GET", "/", {"Cookie": cookie})
            title = re.search(rb"<h1>(.*?)</h1>", body)
            log(f"  home page: HTTP {status}, {len(body):,} bytes, first heading "
                f"{title.group(1).decode()[:60] if title else None!r}")
            return measure(server.port, cookie, token, meta, args, log)
        finally:
            server.stop()

    before = run_all()
    print_table(before)
    if args.profile:
        profile(conf, meta, token, 20.0)
    if args.experiment:
        undo = apply_experiments(path, args.experiment, log)
        try:
            after = run_all()
            if args.profile:
                profile(conf, meta, token, 20.0)
        finally:
            undo_experiments(path, undo)
        print("\nEXPERIMENT (applied to the bench database only, then undone):")
        for sql in args.experiment:
            print(f"  {sql}")
        print_table(after, before)
        before = after
    missed = [r["label"] for r in before if r["p95"] > TARGET_MS and not r["errors"]]
    failed = [r["label"] for r in before if r["errors"]]
    print(f"\ntarget p95 <= {TARGET_MS:.0f} ms: "
          + ("met by every endpoint measured" if not missed else f"MISSED by {', '.join(missed)}")
          + (f"; NOT MEASURED (HTTP errors; see gunicorn.log beside the database): "
             f"{', '.join(failed)}" if failed else ""))
    return 0

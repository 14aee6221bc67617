"""Compliance page and weekly reports on a city: 24 districts, 300 wards, 50,000
organisations, 10,000 kiosks and M scans (docs/reports.md#benchmark).

    python -m bench compliance [--kiosks N] [--scans M] [--wards W] [--organisations O]
                               [--requests R] [--workers N] [--data-dir DIR]

1. Takes `bench dashboard`'s fleet database (built and cached by the same parameters:
   N kiosks in 24 HCMC districts, N/5 locations, M scans over 21 days), copies it once
   into its own cache folder and adds W wards (spread over the districts by their
   weight), O organisations (every status; each ward has its share) with reminders, and
   places every location in a ward of its district and under an organisation.
2. The compliance page (GET /compliance, in-process through the Flask test client, the
   clock pinned to the data's now): each district's officer's page and a sample of ward
   officers' pages, R timed requests in all, p50/p95/max against the target
   (p95 <= 300 ms).
3. Every weekly report of the data's last full week (24 district + W ward PDFs and
   CSVs, each district's scans and figures read once; --workers 0 makes the PDFs in a
   process per core): total time against the target (<= 60 s), with where
   it went (figures, PDFs, kept) and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import dashboard
from .common import header

PAGE_TARGET_MS = 300.0
REPORTS_TARGET_S = 60.0
GEN = 1
PASSWORD = "bench-password-2021"


def migrate(path: Path) -> None:
    """To head, with SQLite's foreign keys off as migrations need them: 0009's batch
    rebuild of `location` drops the table that kiosks point at (with fleet.db's
    foreign_keys=ON that fails on any fleet that has kiosks)."""
    from sqlalchemy import create_engine

    from fleet import migrate as fleet_migrate
    engine = create_engine(dashboard.sqlite_url(path))
    try:
        fleet_migrate.upgrade(engine)
    finally:
        engine.dispose()


def enrich(path: Path, wards: int, organisations: int, seed: int, log) -> None:
    rng = random.Random(seed)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    districts = con.execute("SELECT id, code FROM district ORDER BY id").fetchall()
    weight = {code: w for code, _n, w in dashboard.DISTRICTS}
    total = sum(weight.get(code, 1.0) for _i, code in districts)
    ward_rows, ward_of = [], {}
    n = 0
    for i, (did, code) in enumerate(districts):
        share = max(1, round(wards * weight.get(code, 1.0) / total)) if i < len(districts) - 1 \
            else max(1, wards - n)
        for j in range(share):
            n += 1
            ward_rows.append((n, f"{code}-p{j + 1:02d}", f"Phường {j + 1} {code}", "phuong", did))
            ward_of.setdefault(did, []).append(n)
    con.executemany("INSERT INTO ward (id, code, name, kind, district_id) VALUES (?,?,?,?,?)",
                    ward_rows)
    log(f"{len(ward_rows)} wards")
    all_wards = [(w[0], w[4]) for w in ward_rows]
    statuses = ["approved"] * 70 + ["applied"] * 15 + ["suspended"] * 10 + ["closed"] * 5
    now = time.time()
    orgs = []
    for k in range(1, organisations + 1):
        wid, did = all_wards[rng.randrange(len(all_wards))]
        orgs.append((k, f"org-{k:05d}", f"Doanh nghiệp {k}", "business", "", did, wid, "", "",
                     "", rng.choice(statuses), now, None, 50, "", None, now))
    con.executemany(
        "INSERT INTO organisation (id, code, name, kind, sector, district_id, ward_id, "
        "contact_name, contact_phone, contact_email, status, status_since, approved_at, quota, "
        "suspended_reason, lift_by, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", orgs)
    log(f"{len(orgs)} organisations")
    by_ward: dict = {}
    for o in orgs:
        by_ward.setdefault(o[6], []).append(o[0])
    reminders = []
    for o in orgs:
        if rng.random() < 0.2:
            for _ in range(rng.randint(1, 6)):
                reminders.append((o[0], now - rng.uniform(0, 30 * 86400), "bench", ""))
    con.executemany("INSERT INTO reminder (organisation_id, at, actor, note) VALUES (?,?,?,?)",
                    reminders)
    log(f"{len(reminders)} reminders")
    for lid, did in con.execute("SELECT id, district_id FROM location").fetchall():
        wid = rng.choice(ward_of[did]) if did in ward_of else None
        oid = rng.choice(by_ward[wid]) if wid in by_ward else None
        con.execute("UPDATE location SET ward_id = ?, organisation_id = ? WHERE id = ?",
                    (wid, oid, lid))
    con.commit()
    con.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compliance")
    parser.add_argument("--kiosks", type=int, default=10_000)
    parser.add_argument("--scans", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--hour", type=int, default=15)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--wards", type=int, default=300)
    parser.add_argument("--organisations", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ward-pages", type=int, default=48,
                        help="ward officers' pages among the timed requests (a sample)")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) /
                                                  "greengate-bench-dashboard"))
    parser.add_argument("--indexes", default="after")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes making the PDFs (0: one per core; default: "
                             "[reports] workers, 1)")
    args = parser.parse_args(argv)

    def log(msg):
        print(f"[compliance] {msg}", file=sys.stderr, flush=True)

    print(header("compliance page and weekly reports on a city",
                 "python -m bench compliance " + " ".join(argv if argv is not None else sys.argv[1:])))
    dash_args = argparse.Namespace(kiosks=args.kiosks, scans=args.scans, days=args.days,
                                   hour=args.hour, seed=args.seed, data_dir=args.data_dir,
                                   indexes=args.indexes, rebuild=False)
    cached = Path(args.data_dir) / dashboard.cache_key(dash_args)
    if (cached / "meta.json").exists() and (cached / "fleet.sqlite").exists():
        # used as built: never migrated in place (see migrate() below), only its copy is
        source, meta = cached / "fleet.sqlite", json.loads((cached / "meta.json").read_text())
    else:
        source, meta = dashboard.ensure_database(dash_args, log)
    folder = Path(args.data_dir) / (dashboard.cache_key(dash_args)
                                    + f"-compliance{GEN}-w{args.wards}-o{args.organisations}")
    path = folder / "fleet.sqlite"
    if args.rebuild and folder.exists():
        shutil.rmtree(folder)
    if not path.exists():
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        t = time.perf_counter()
        shutil.copyfile(source, folder / "building.sqlite")
        migrate(folder / "building.sqlite")
        enrich(folder / "building.sqlite", args.wards, args.organisations, args.seed, log)
        (folder / "building.sqlite").rename(path)
        log(f"enriched copy in {time.perf_counter() - t:.0f} s")
    else:
        migrate(path)

    from fleet import auth
    from fleet.app import create_app
    from fleet.config import load
    from fleet.db import make_engine, make_sessions
    from fleet.models import District, Ward

    config = load(None, env={}, fleet={"data_dir": str(folder), "deployments": ["hcmc"],
                                       "database_url": dashboard.sqlite_url(path)},
                  web={"secure_cookies": False})
    engine = make_engine(config.database_url)
    sessions = make_sessions(engine)
    headers = {}
    with sessions() as s:
        from sqlalchemy import select
        from fleet.models import User
        districts = list(s.scalars(select(District).order_by(District.code)))
        wards = list(s.scalars(select(Ward).order_by(Ward.code)))
        for d in districts:
            name = f"bench-officer-{d.code}"
            user = s.scalar(select(User).where(User.username == name)) or \
                auth.create_user(s, name, PASSWORD, "district_officer", district_id=d.id)
            s.flush()
            headers[("district", d.code)] = {"Authorization": "Bearer "
                                             + auth.create_token(s, user, "bench")}
        rng = random.Random(args.seed)
        for w in rng.sample(wards, min(args.ward_pages, len(wards))):
            name = f"bench-ward-{w.code}"
            user = s.scalar(select(User).where(User.username == name)) or \
                auth.create_user(s, name, PASSWORD, "ward_officer", ward_id=w.id)
            s.flush()
            headers[("ward", w.code)] = {"Authorization": "Bearer "
                                         + auth.create_token(s, user, "bench")}
        s.commit()
    data_now = meta["now"]
    app = create_app(config)
    started = time.time()
    app.config["GREENGATE_CLOCK"] = lambda: data_now + (time.time() - started)
    client = app.test_client()
    who = list(headers.items())
    for key, h in who[:5]:  # warm-up
        assert client.get("/compliance", headers=h).status_code == 200, key
    times = {"district": [], "ward": []}
    for i in range(args.requests):
        (kind, code), h = who[i % len(who)]
        t = time.perf_counter()
        answer = client.get("/compliance", headers=h)
        times[kind].append((time.perf_counter() - t) * 1000)
        if answer.status_code != 200:
            log(f"/compliance as {kind} {code}: HTTP {answer.status_code}")
            return 1

    def pct(values, p):
        values = sorted(values)
        return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
    all_times = times["district"] + times["ward"]
    print(f"city: {len(districts)} districts, {len(wards)} wards, {args.organisations} "
          f"organisations, {args.kiosks} kiosks, {meta.get('scans', args.scans)} scans "
          f"({args.days} days)")
    for label, values in (("district officer", times["district"]), ("ward officer", times["ward"]),
                          ("all", all_times)):
        if values:
            print(f"GET /compliance {label:16s}: n={len(values)} p50 {statistics.median(values):.1f} ms"
                  f"  p95 {pct(values, 95):.1f} ms  max {max(values):.1f} ms")
    p95 = pct(all_times, 95)
    print(f"compliance page p95 {p95:.1f} ms (target <= {PAGE_TARGET_MS:.0f} ms): "
          f"{'met' if p95 <= PAGE_TARGET_MS else 'NOT met'}")

    import logging

    from fleet import reports
    logging.basicConfig(level=logging.WARNING, format="[compliance] %(message)s")
    logging.getLogger("fleet.reports").setLevel(logging.INFO)  # where the time goes
    week = reports.last_week(data_now)
    load = os.getloadavg()
    t = time.perf_counter()
    with sessions() as s:
        done = reports.make_all(config, s, week, force=True, now=data_now, actor="bench",
                                workers=args.workers)
    took = time.perf_counter() - t
    scans_week = sum(r.figures["summary"]["scans_week"] for r, _m, _s in done
                     if r.scope == "district")
    print(f"weekly reports of {week.isoformat()}: {len(done)} (PDF+CSV, {scans_week} decisions "
          f"in the week) in {took:.1f} s (target <= {REPORTS_TARGET_S:.0f} s): "
          f"{'met' if took <= REPORTS_TARGET_S else 'NOT met'}")
    workers = config.reports.workers if args.workers is None else args.workers
    print(f"PDF processes: {workers if workers > 0 else reports._cores()}; load average "
          f"before {load[0]:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores, shared)")
    engine.dispose()
    app.extensions["greengate"].engine.dispose()
    return 0 if p95 <= PAGE_TARGET_MS and took <= REPORTS_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the operators' pages for docs/dashboard.md.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Seeds a realistic Ho Chi Minh City fleet into a temporary SQLite fleet (five districts,
a dozen places, kiosks offline, degraded, silent, a day of scans), serves the dashboard
on a free local port, logs in with headless Chromium (Playwright) and saves home.png and
kiosk.png at desktop width and home-phone.png at 390 px. Nothing outside the temporary
directory and --out is touched; the data is made up and holds no personal data.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from werkzeug.serving import make_server  # noqa: E402

from fleet import auth, migrate  # noqa: E402
from fleet.app import create_app  # noqa: E402
from fleet.config import load  # noqa: E402
from fleet.db import make_engine, make_sessions  # noqa: E402
from fleet.models import (District, Kiosk, Location, Outage, PresenceEvent,  # noqa: E402
                          PublishedBundle, Scan)

PASSWORD = "screenshots only"
# 5 October 2021, 15:00 in Ho Chi Minh City: an afternoon of the reopening, so the pages
# show a busy day (the same moment as the tests' NOW), whatever the time of the run
NOW = 1633420800.0
HOUR = 3600.0
PLACES = {  # district code, name: [(location code, name, address), ...]
    ("q1", "Quận 1"): [("q1-ben-thanh", "Chợ Bến Thành", "Lê Lợi, Bến Thành"),
                      ("q1-buu-dien", "Bưu điện Thành phố", "2 Công xã Paris"),
                      ("q1-nguyen-hue", "Phố đi bộ Nguyễn Huệ", "Nguyễn Huệ")],
    ("q3", "Quận 3"): [("q3-ban-co", "Chợ Bàn Cờ", "Nguyễn Thiện Thuật"),
                      ("q3-coop-ndc", "Co.op Mart Nguyễn Đình Chiểu", "168 Nguyễn Đình Chiểu")],
    ("q7", "Quận 7"): [("q7-coop-pmh", "Co.op Mart Phú Mỹ Hưng", "Nguyễn Lương Bằng"),
                      ("q7-crescent", "Crescent Mall", "101 Tôn Dật Tiên"),
                      ("q7-lotte", "Lotte Mart Quận 7", "469 Nguyễn Hữu Thọ")],
    ("binh-thanh", "Bình Thạnh"): [("bt-ba-chieu", "Chợ Bà Chiểu", "Bạch Đằng"),
                                   ("bt-landmark", "Vincom Landmark 81", "720A Điện Biên Phủ"),
                                   ("bt-mien-dong", "Bến xe Miền Đông", "292 Đinh Bộ Lĩnh")],
    ("phu-nhuan", "Phú Nhuận"): [("pn-phu-nhuan", "Chợ Phú Nhuận", "Thích Quảng Đức")],
}
# kiosk id -> (state, hours in that state, detail); the rest are online and scanning
SPECIAL = {
    "q7-coop-pmh-02": ("offline", 3.4, "lost: last will"),
    "bt-mien-dong-01": ("offline", 0.6, "silent: nothing heard for 45 s"),
    "q1-ben-thanh-03": ("offline", 26.0, "stopped"),
    "q3-ban-co-01": ("degraded", 1.2, "lists stale"),
    "q7-lotte-01": ("degraded", 0.3, "outbox over 1000"),
    "bt-landmark-02": ("online", 9.0, ""),  # silent: online, no scans today
    "pn-phu-nhuan-01": ("online", 30.0, ""),  # silent too
    "q1-nguyen-hue-02": ("never_seen", 0.0, ""),
}
RED_REASONS = [("policy_failed", "vaccination_too_recent", 30), ("expired", None, 20),
               ("policy_failed", "type_not_accepted", 14), ("unknown_issuer", None, 10),
               ("revoked", None, 6), ("policy_failed", "recovery_expired", 5),
               ("bad_signature", None, 3)]


def heartbeat(now, trust=7, policy=3, status=41, outbox=0, lists="fresh", temp=52.0):
    return {"v": 1, "session": 4, "ts": now - 12, "uptime": 6 * HOUR + 321,
            "bundles": {"trust": trust, "policy": policy, "status": status}, "outbox": outbox,
            "overflow": 0, "clock": "synced", "lists": lists, "cpu_temp": temp}


def seed(sessions, now: float) -> str:
    """The fleet; returns the id of the kiosk to show on kiosk.png."""
    rng = random.Random(2021)
    with sessions() as s:
        for version in (6, 7):
            s.add(PublishedBundle(deployment="hcmc", kind="trust", version=version, base=None,
                                  issued_at=int(now - 40 * HOUR + version), raw=b"x", etag="e"))
        s.add(PublishedBundle(deployment="hcmc", kind="policy", version=3, base=None,
                              issued_at=int(now - 90 * HOUR), raw=b"x", etag="e"))
        s.add(PublishedBundle(deployment="hcmc", kind="status", version=41, base=None,
                              issued_at=int(now - 2 * HOUR), raw=b"x", etag="e"))
        n = 0
        for (dcode, dname), locations in PLACES.items():
            district = District(code=dcode, name=dname)
            s.add(district)
            s.flush()
            for lcode, lname, address in locations:
                location = Location(code=lcode, name=lname, address=address,
                                    district_id=district.id)
                s.add(location)
                s.flush()
                count = 3 if lcode == "q1-ben-thanh" or rng.random() < 0.6 else 2
                for i in range(1, count + 1):
                    kid = f"{lcode}-{i:02d}"
                    state, hours, detail = SPECIAL.get(kid, ("online", rng.uniform(5, 40), ""))
                    since = now - hours * HOUR
                    hb = heartbeat(now, temp=round(rng.uniform(45, 63), 1))
                    if kid == "q3-ban-co-01":
                        hb = heartbeat(now, status=36, lists="stale")
                    elif kid == "q7-lotte-01":
                        hb = heartbeat(now, outbox=1412)
                    elif state == "offline":
                        hb = heartbeat(since, status=39 if hours > 3 else 41, outbox=rng.randint(0, 40))
                    seen = {"offline": since, "never_seen": None}.get(state, now - rng.uniform(2, 25))
                    s.add(Kiosk(id=kid, location_id=location.id, deployment="hcmc",
                                policy="hcmc-2021", state=state,
                                state_since=since if state != "never_seen" else None,
                                detail=detail, last_seen=seen, session=4,
                                heartbeat=hb if state != "never_seen" else None,
                                enrolled_at=now - 60 * 86400))
                    if state == "offline":
                        s.add(Outage(kiosk_id=kid, started=since, ended=None,
                                     cause=detail.split(":")[0]))
                        s.add(PresenceEvent(kiosk_id=kid, at=since, previous="online",
                                            state="offline", session=4, detail=detail))
                    if state in ("never_seen",) or kid in ("bt-landmark-02", "pn-phu-nhuan-01"):
                        continue
                    # a day of scans: quiet at night, busy at noon and after work (UTC+7)
                    busy = rng.uniform(0.6, 1.4)
                    end = since if state == "offline" else now
                    for h in range(48):
                        start = now - (h + 1) * HOUR
                        if start >= end:
                            continue
                        local = (time.gmtime(start).tm_hour + 7) % 24
                        rate = busy * (2 + 28 * max(0.0, math.sin((local - 6) / 15 * math.pi)))
                        for _ in range(rng.randint(0, int(rate))):
                            ts = rng.uniform(start, min(start + HOUR, end))
                            red = rng.random() < 0.11
                            if red:
                                reason, sub, _w = rng.choices(RED_REASONS,
                                                              [w for *_x, w in RED_REASONS])[0]
                            else:
                                reason, sub = "ok", None
                            n += 1
                            s.add(Scan(kiosk_id=kid, scan_id=f"demo{n:07d}", ts=ts,
                                       received=ts + rng.uniform(0.2, 2.0),
                                       decision="red" if red else "green", reason=reason,
                                       sub_reason=sub, cert_type="v", cert_hash=None,
                                       holder=None, policy="hcmc-2021",
                                       location_id=location.id, district_id=district.id))
        # a history for the kiosk on kiosk.png: two outages this week, one just now
        kid = "q7-coop-pmh-02"
        for start, length, cause in ((now - 70 * HOUR, 0.8 * HOUR, "lost"),
                                     (now - 30 * HOUR, 0.25 * HOUR, "stopped")):
            s.add(Outage(kiosk_id=kid, started=start, ended=start + length, cause=cause))
            s.add(PresenceEvent(kiosk_id=kid, at=start, previous="online", state="offline",
                                session=2 if start < now - 50 * HOUR else 3,
                                detail="lost: last will" if cause == "lost" else "stopped"))
            s.add(PresenceEvent(kiosk_id=kid, at=start + length, previous="offline",
                                state="online", session=3 if start < now - 50 * HOUR else 4,
                                detail=""))
        auth.create_user(s, "lan", PASSWORD, "operator")
        s.commit()
    return "q7-coop-pmh-02"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}: install it with `bash scripts/setup.sh "
              "--with browser`, or pass --chromium", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="greengate-shots-") as tmp:
        config = load(None, env={}, fleet={"data_dir": tmp, "deployments": ["hcmc"]},
                      web={"secure_cookies": False})
        engine = make_engine(config.database_url)
        migrate.upgrade(engine)
        now = NOW
        kiosk_id = seed(make_sessions(engine), now)
        app = create_app(config)
        app.config["GREENGATE_CLOCK"] = lambda: now  # the pages' clock (fleet/api/common.py)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request log
        server = make_server("127.0.0.1", 0, app, threaded=True)
        url = f"http://127.0.0.1:{server.server_port}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        from playwright.sync_api import sync_playwright
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                            args=["--no-sandbox", "--disable-gpu"])
                shots = [("home.png", "/", 1280), ("kiosk.png", f"/kiosks/{kiosk_id}", 1280),
                         ("home-phone.png", "/", 390)]
                for name, path, width in shots:
                    context = browser.new_context(viewport={"width": width, "height": 900},
                                                  device_scale_factor=1 if width > 600 else 2)
                    page = context.new_page()
                    page.goto(url + "/login")
                    page.fill("input[name=username]", "lan")
                    page.fill("input[name=password]", PASSWORD)
                    page.click("button[type=submit]")
                    page.wait_for_url(lambda u: "/login" not in u)
                    page.goto(url + path)
                    page.screenshot(path=str(out / name), full_page=True)
                    print(f"{out / name}")
                    context.close()
                browser.close()
        finally:
            server.shutdown()
            app.extensions["greengate"].engine.dispose()
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

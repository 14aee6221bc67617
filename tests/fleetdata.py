"""Fleet test data written straight into the tables through the models (no ingest
worker needed): two districts, three locations, kiosks in every presence state,
published bundles, outages, and a scan builder. Times are relative to NOW, the
clock the API tests pin (app.config["GREENGATE_CLOCK"])."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from fleet.models import District, Kiosk, Location, Outage, PresenceEvent, PublishedBundle, Scan

NOW = datetime(2021, 10, 5, 8, 0, tzinfo=timezone.utc).timestamp()  # 15:00 in HCMC
HOUR = 3600.0


def iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def hb(trust=None, policy=None, status=None, outbox=0, clock="synced", lists="fresh"):
    return {"v": 1, "session": 3, "ts": NOW - 20, "uptime": 500.0,
            "bundles": {"trust": trust, "policy": policy, "status": status},
            "outbox": outbox, "overflow": 0, "clock": clock, "lists": lists, "cpu_temp": 51.5}


def seed(sessions) -> SimpleNamespace:
    """Two districts, three locations, seven kiosks in every state, bundles, outages."""
    with sessions() as s:
        q1 = District(code="q1", name="Quận 1")
        q3 = District(code="q3", name="Quận 3")
        s.add_all([q1, q3])
        s.flush()
        market = Location(code="q1-market", name="Bến Thành", address="", district_id=q1.id)
        office = Location(code="q1-office", name="Office", address="", district_id=q1.id)
        station = Location(code="q3-station", name="Station", address="", district_id=q3.id)
        s.add_all([market, office, station])
        s.flush()

        def kiosk(kid, loc, state, since, seen, heartbeat=None):
            s.add(Kiosk(id=kid, location_id=loc.id if loc else None, deployment="test",
                        policy="hcmc-2021", state=state, state_since=since, detail="",
                        last_seen=seen, session=3, heartbeat=heartbeat, enrolled_at=NOW - 90 * 86400))

        kiosk("q1-a", market, "online", NOW - 5 * HOUR, NOW - 20, hb(5, 2, 12))
        kiosk("q1-b", market, "offline", NOW - 2 * HOUR, NOW - 2 * HOUR, hb(4, 2, 9))
        kiosk("q1-c", office, "degraded", NOW - 3 * HOUR, NOW - 30, hb(5, 2, None, lists="missing"))
        kiosk("q1-d", office, "online", NOW - 6 * HOUR, NOW - 10, hb(5, 1, 12))
        kiosk("q3-a", station, "offline", NOW - 0.5 * HOUR, NOW - 0.5 * HOUR, hb(5, 2, 12))
        kiosk("q3-b", station, "never_seen", None, None)
        kiosk("free", None, "retired", NOW - 10 * 86400, NOW - 11 * 86400)
        # Bundles: trust 5, policy 2, status 12 (a delta) are current for "test".
        for kind, version in (("trust", 4), ("trust", 5), ("policy", 2), ("status", 10),
                              ("status-delta", 12), ("status-head", 40)):
            s.add(PublishedBundle(deployment="test", kind=kind, version=version, base=None,
                                  issued_at=int(NOW - 86400 + version), raw=b"x", etag="e"))
        s.add(PublishedBundle(deployment="other", kind="trust", version=99, base=None,
                              issued_at=int(NOW), raw=b"x", etag="e"))
        # Outages: q1-b open for 2 h, q3-a open for 30 min, q1-a had one yesterday.
        s.add_all([Outage(kiosk_id="q1-a", started=NOW - 26 * HOUR, ended=NOW - 25 * HOUR,
                          cause="last will"),
                   Outage(kiosk_id="q1-b", started=NOW - 2 * HOUR, ended=None, cause="timeout"),
                   Outage(kiosk_id="q3-a", started=NOW - 0.5 * HOUR, ended=None, cause="last will")])
        s.add_all([PresenceEvent(kiosk_id="q1-a", at=NOW - 26 * HOUR, previous="online",
                                 state="offline", session=2, detail="last will"),
                   PresenceEvent(kiosk_id="q1-a", at=NOW - 25 * HOUR, previous="offline",
                                 state="online", session=3, detail="")])
        s.commit()
        return SimpleNamespace(q1=q1.id, q3=q3.id, market=market.id, office=office.id,
                               station=station.id)


def scan(n, kiosk, loc, district, ts, decision="green", reason="ok", cert=None, holder=None):
    return Scan(kiosk_id=kiosk, scan_id=f"scan{n:08d}", ts=ts, received=ts + 1.5,
                decision=decision, reason=reason, sub_reason=None, cert_type="v",
                cert_hash=cert, holder=holder, policy="hcmc-2021", location_id=loc,
                district_id=district)

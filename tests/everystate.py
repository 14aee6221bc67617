"""A fleet in every state, with every cause, written by the fleet's own code: the real
presence tracker (fleet/presence.py) is driven through connections, heartbeats of every
value and fault kind, stops, wills, silences and a policy mismatch, and its changes are
written with presence.write, as the ingest worker writes them. So the details and outage
causes in the database are exactly the English texts production stores, and a page that
shows one untranslated fails tests/test_i18n.py (Flask) and
tests/test_kiosk_list_browser.py (Chromium).

    ids = build(sessions)     # NOW: tests/fleetdata.py's clock (15:00 in HCMC)
"""

from __future__ import annotations

from types import SimpleNamespace

from greengate import messages

from fleet import presence
from fleet.models import District, Kiosk, Location, PublishedBundle, Scan
from tests.fleetdata import NOW

T0 = NOW - 3600.0
KEEPALIVE = 30.0  # timeout 45 s: "silent: nothing heard for 45 s"
BACKLOG = 1000  # "outbox over 1000"
FULL = {"trust": 5, "policy": 2, "status": 12}

# kiosk id -> (location, heartbeat fields) of the connected ones; None: no heartbeat
HEARTBEATS = {
    "vi-online": {},
    "vi-floor": {"clock": "floor"},
    "vi-behind": {"bundles": {"trust": 4, "policy": 2, "status": 9}},
    "vi-stale": {"lists": "stale"},
    "vi-missing": {"lists": "missing", "bundles": {"trust": 5, "policy": 2, "status": None}},
    "vi-clock": {"clock": "unknown"},
    "vi-outbox": {"outbox": 5000},
    "vi-storage": {"faults": [{"kind": "storage", "detail": "database or disk is full"}]},
    "vi-config": {"faults": [{"kind": "config", "detail": "[mqtt] port must be 1 to 65535"}]},
    "vi-source": {"faults": [{"kind": "source",
                              "detail": "camera not found: no /dev/video0"}]},
    "vi-lists": {"lists": "stale", "faults": [
        {"kind": "lists", "detail": "lists older than the offline budget"}]},
    "vi-faults": {"clock": "unknown", "faults": [
        {"kind": "storage", "detail": "disk I/O error (clock)"},
        {"kind": "clock", "detail": "no NTP and no time floor yet"}]},
    "vi-policy": {"policy": "hcmc-2021"},
    "vi-quiet": None,  # connected, then silent: "silent: nothing heard for 45 s"
}
ENDED = ("vi-lost", "vi-stopped", "vi-back")  # a will, a stop, a will then a new session
RELOADED = "vi-reloaded"  # online in the database, never heard after the fleet restarts


def beat(kid: str, session: int, fields: dict) -> dict:
    doc = messages.heartbeat(kiosk=kid, session=session, ts=T0, uptime=100.0,
                             bundles=fields.get("bundles", FULL),
                             outbox=fields.get("outbox", 0), clock=fields.get("clock", "synced"),
                             lists=fields.get("lists", "fresh"), cpu_temp=48.5,
                             faults=fields.get("faults", []), memory=0, lost=0,
                             policy=fields.get("policy", "hcmc-2021"))
    return doc


def build(sessions) -> SimpleNamespace:
    with sessions() as s:
        district = District(code="q5", name="Quận 5")
        s.add(district)
        s.flush()
        market = Location(code="q5-market", name="Chợ An Đông", address="", district_id=district.id)
        s.add(market)
        s.flush()
        every = [*HEARTBEATS, *ENDED, RELOADED, "vi-never", "vi-retired"]
        for kid in every:
            state = {"vi-retired": "retired", RELOADED: "online"}.get(kid, "never_seen")
            s.add(Kiosk(id=kid, location_id=market.id, deployment="test",
                        policy="strict" if kid == "vi-policy" else "hcmc-2021", state=state,
                        state_since=NOW - 86400 if state != "never_seen" else None,
                        detail="retired" if state == "retired" else "", session=1,
                        last_seen=NOW - 86400 if state == "online" else None,
                        enrolled_at=NOW - 30 * 86400))
        for kind, version in (("trust", 5), ("policy", 2), ("status", 12)):
            s.add(PublishedBundle(deployment="test", kind=kind, version=version, base=None,
                                  issued_at=int(T0 - 86400), raw=b"x", etag="e"))
        s.add(Scan(kiosk_id="vi-online", scan_id="vi-scan-1", ts=NOW - 60, received=NOW - 59,
                   decision="red", reason="policy_failed", sub_reason="test_too_old",
                   cert_type="t", cert_hash=None, holder=None, policy="hcmc-2021",
                   location_id=market.id, district_id=district.id))
        s.commit()

        tracker = presence.Tracker(keepalive=KEEPALIVE, backlog=BACKLOG)
        connection = s.connection()
        tracker.load(presence.load_rows(connection))
        tracker.assign([("vi-policy", "strict", 2, T0 - 86400)])
        tracker.resume(T0)
        for kid in [*HEARTBEATS, *ENDED]:
            tracker.presence(kid, {"session": 2, "state": "online"}, T0)
        for kid, fields in HEARTBEATS.items():
            if fields is not None:
                tracker.heartbeat(kid, beat(kid, 2, fields), T0 + 1)
        tracker.presence("vi-lost", {"session": 2, "state": "offline"}, T0 + 5)
        tracker.presence("vi-stopped", {"session": 2, "state": "offline", "cause": "stopped"},
                         T0 + 5)
        tracker.presence("vi-back", {"session": 2, "state": "offline"}, T0 + 5)
        tracker.presence("vi-back", {"session": 3, "state": "online"}, T0 + 20)
        tracker.heartbeat("vi-back", beat("vi-back", 3, {}), T0 + 21)
        for kid, fields in HEARTBEATS.items():  # all but the quiet one keep talking
            if fields is not None:
                tracker.heartbeat(kid, beat(kid, 2, fields), T0 + 30)
        silent = tracker.sweep(T0 + 46)
        assert sorted(silent) == ["vi-quiet", RELOADED], silent
        presence.write(connection, tracker.take_changes(), "test")
        presence.write_seen(connection, tracker.take_seen())
        s.commit()
    return SimpleNamespace(district=district.id, location=market.id, kiosks=every)

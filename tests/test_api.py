"""The fleet's JSON API (docs/api.md) on SQLite and PostgreSQL: districts, locations and
kiosks (CRUD, validation, audit), presence and outages, scans with keyset pagination,
statistics with outbox summaries, the audit log, authentication, roles and the district
officer's scope.

Test data goes straight into the tables through the models (the ingest worker is not
needed); the API's clock is pinned to NOW, so every time below is exact.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select, update

from fleet import scan_hours
from fleet.models import (ApiToken, AuditLog, District, Kiosk, Outage, Policy, PresenceEvent,
                          Scan, ScanHour, ScanSummary, User)
from tests.fleetdata import HOUR, NOW, iso, scan, seed

@pytest.fixture
def fleet(api, fleet_app):
    """The API with a pinned clock, the seeded fleet and the officer assigned to q1."""
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(api.sessions)
    with api.sessions() as s:
        s.execute(update(User).where(User.username == "officer").values(district_id=ids.q1))
        s.commit()
    api.ids = ids
    return api


def get(api, url, who="admin", status=200):
    response = api.client.get(url, headers=getattr(api, who))
    assert response.status_code == status, (url, response.status_code, response.get_json())
    return response.get_json()


def send(api, method, url, body, who="admin", status=200):
    response = api.client.open(url, method=method, json=body, headers=getattr(api, who))
    assert response.status_code == status, (url, response.status_code, response.get_json())
    return response.get_json()


def audit_entries(api, action):
    with api.sessions() as s:
        return s.scalars(select(AuditLog).where(AuditLog.action == action)
                         .order_by(AuditLog.id)).all()


# --- authentication and roles ---------------------------------------------------------------
def test_no_token_is_401_with_a_hint(api):
    response = api.client.get("/api/v1/kiosks")
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized", "message": (
        "log in, or send an API token as 'Authorization: Bearer …'")}


def test_unknown_and_revoked_tokens_are_401(api):
    assert api.client.get("/api/v1/kiosks", headers=api.operator).status_code == 200
    response = api.client.get("/api/v1/kiosks", headers={"Authorization": "Bearer ggt_nope"})
    assert response.status_code == 401 and "unknown or revoked" in response.get_json()["message"]
    token = api.operator["Authorization"][7:]
    with api.sessions() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == hashlib.sha256(
            token.encode()).hexdigest()).values(revoked_at=NOW))
        s.commit()
    response = api.client.get("/api/v1/kiosks", headers=api.operator)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


def test_readers_may_not_change_anything(fleet):
    writes = (("POST", "/api/v1/districts", {"code": "q5", "name": "Q5"}),
              ("PATCH", "/api/v1/districts/q1", {"name": "x"}),
              ("POST", "/api/v1/locations", {"code": "l", "name": "L", "district": "q1"}),
              ("POST", "/api/v1/kiosks", {"id": "new"}),
              ("PATCH", "/api/v1/kiosks/q1-a", {"policy": "x"}),
              ("POST", "/api/v1/kiosks/q1-a/retire", None))
    for who, role in (("officer", "district_officer"), ("health", "health_official")):
        for method, url, body in writes:
            answer = send(fleet, method, url, body, who, 403)
            assert answer == {"error": "forbidden", "message": (
                f"your role ({role}) may not do this; it needs admin or operator")}
    with fleet.sessions() as s:
        assert s.scalar(select(District).where(District.code == "q5")) is None
        assert s.get(Kiosk, "q1-a").state == "online"


def test_audit_log_is_for_admins_only(fleet):
    for who in ("operator", "officer", "health"):
        assert get(fleet, "/api/v1/audit", who, 403)["error"] == "forbidden"
    get(fleet, "/api/v1/audit", "admin")


# --- districts and locations -------------------------------------------------------------------
def test_district_crud_validation_and_audit(fleet):
    created = send(fleet, "POST", "/api/v1/districts", {"code": "binh-thanh", "name": "Bình Thạnh"},
                   "operator", 201)
    assert created == {"id": created["id"], "code": "binh-thanh", "name": "Bình Thạnh",
                       "locations": 0, "kiosks": 0}
    assert get(fleet, "/api/v1/districts/binh-thanh")["name"] == "Bình Thạnh"
    codes = [d["code"] for d in get(fleet, "/api/v1/districts")["items"]]
    assert codes == ["binh-thanh", "q1", "q3"]
    q1 = get(fleet, "/api/v1/districts/q1")
    assert (q1["locations"], q1["kiosks"]) == (2, 4)

    answer = send(fleet, "POST", "/api/v1/districts", {"code": "binh-thanh", "name": "again"},
                  status=409)
    assert answer == {"error": "conflict", "message": "a district with code 'binh-thanh' exists already"}
    answer = send(fleet, "POST", "/api/v1/districts", {"code": "bad code!", "name": "x"}, status=422)
    assert answer["message"] == ("'code' 'bad code!' is not valid: it must be 1 to 64 letters, "
                                 "digits, '_', '.' or '-', starting with a letter or digit")
    assert send(fleet, "POST", "/api/v1/districts", {"code": "q9"}, status=422)["message"] == \
        "'name' is required"
    assert send(fleet, "POST", "/api/v1/districts", {"code": "q9", "name": 7}, status=422)[
        "message"] == "'name' must be a string, not int"
    assert send(fleet, "POST", "/api/v1/districts", {"code": "q9", "name": "N", "colour": 1},
                status=422)["message"] == "unknown field colour; allowed: code, name"
    response = fleet.client.post("/api/v1/districts", data="code=q9", headers=fleet.admin)
    assert response.status_code == 400
    assert "JSON object" in response.get_json()["message"]

    patched = send(fleet, "PATCH", "/api/v1/districts/binh-thanh", {"name": "Quận Bình Thạnh"})
    assert patched["name"] == "Quận Bình Thạnh"
    assert send(fleet, "PATCH", "/api/v1/districts/binh-thanh", {"code": "q1"}, status=409)[
        "message"] == "a district with code 'q1' exists already"
    assert get(fleet, "/api/v1/districts/nowhere", status=404) == {
        "error": "not_found", "message": "no district with code 'nowhere'"}

    (create,) = audit_entries(fleet, "district.create")
    assert (create.actor, create.target, create.detail) == ("operator", "binh-thanh",
                                                           {"name": "Bình Thạnh"})
    (change,) = audit_entries(fleet, "district.update")
    assert change.detail == {"name": ["Bình Thạnh", "Quận Bình Thạnh"]}


def test_location_crud_and_validation(fleet):
    created = send(fleet, "POST", "/api/v1/locations",
                   {"code": "q3-school", "name": "School", "address": "1 Lê Lợi", "district": "q3"},
                   "operator", 201)
    assert created["district"]["code"] == "q3" and created["kiosks"] == 0
    assert created["address"] == "1 Lê Lợi"
    assert send(fleet, "POST", "/api/v1/locations", {"code": "x", "name": "X", "district": "q7"},
                status=422)["message"] == ("no district with code 'q7': create it first "
                                           "(POST /api/v1/districts)")
    assert send(fleet, "POST", "/api/v1/locations", {"code": "x", "name": "X"}, status=422)[
        "message"] == "'district' is required"
    assert send(fleet, "POST", "/api/v1/locations", {"code": "q1-market", "name": "X",
                                                     "district": "q1"}, status=409)[
        "message"] == "a location with code 'q1-market' exists already"
    moved = send(fleet, "PATCH", "/api/v1/locations/q3-school", {"district": "q1", "name": "Trường"})
    assert (moved["district"]["code"], moved["name"]) == ("q1", "Trường")
    assert [loc["code"] for loc in get(fleet, "/api/v1/locations?district=q1")["items"]] == [
        "q1-market", "q1-office", "q3-school"]
    market = get(fleet, "/api/v1/locations/q1-market")
    assert market["kiosks"] == 2
    assert get(fleet, "/api/v1/locations/none", status=404)["message"] == \
        "no location with code 'none'"
    (change,) = audit_entries(fleet, "location.update")
    assert change.detail == {"name": ["School", "Trường"], "district": ["q3", "q1"]}


# --- kiosks ---------------------------------------------------------------------------------
def test_kiosk_list_shows_state_heartbeat_and_versions_behind(fleet):
    answer = get(fleet, "/api/v1/kiosks")
    kiosks = {k["id"]: k for k in answer["items"]}
    assert answer["at"] == iso(NOW)
    a = kiosks["q1-a"]
    assert a["state"] == "online" and a["state_since"] == iso(NOW - 5 * HOUR)
    assert a["last_seen"] == iso(NOW - 20) and a["seconds_since_seen"] == 20.0
    assert a["location"]["code"] == "q1-market" and a["district"]["code"] == "q1"
    assert (a["outbox"], a["clock"], a["lists"], a["cpu_temp"], a["session"]) == \
        (0, "synced", "fresh", 51.5, 3)
    assert a["bundles"] == {"applied": {"trust": 5, "policy": 2, "status": 12, "valuesets": None},
                            "current": {"trust": 5, "policy": 2, "status": 12, "valuesets": None},
                            "behind": {"trust": 0, "policy": 0, "status": 0, "valuesets": 0},
                            "behind_total": 0, "missing": []}
    # q1-b: trust 4 of 5, status 9 of 12 (the delta's version counts as a status version).
    assert kiosks["q1-b"]["bundles"]["behind"] == {"trust": 1, "policy": 0, "status": 3,
                                                   "valuesets": 0}
    assert kiosks["q1-b"]["bundles"]["behind_total"] == 4
    assert kiosks["q1-b"]["seconds_since_seen"] == 2 * HOUR
    # q1-c holds no status list at all: not a number behind, but missing.
    assert kiosks["q1-c"]["bundles"]["behind"]["status"] is None
    assert kiosks["q1-c"]["bundles"]["missing"] == ["status"]
    assert kiosks["q1-d"]["bundles"]["behind"] == {"trust": 0, "policy": 1, "status": 0,
                                                   "valuesets": 0}
    never = kiosks["q3-b"]
    assert never["last_seen"] is None and never["seconds_since_seen"] is None
    assert never["bundles"]["missing"] == ["trust", "policy", "status"]
    # The default order is the map: district, location, kiosk; kiosks without a place last.
    assert [k["id"] for k in answer["items"]] == ["q1-a", "q1-b", "q1-c", "q1-d", "q3-a", "q3-b",
                                                  "free"]
    behind = get(fleet, "/api/v1/kiosks?behind=true")["items"]
    assert [k["id"] for k in behind] == ["q1-b", "q1-c", "q1-d", "q3-b", "free"]


def test_kiosks_attention_order_puts_outages_first_longest_first(fleet):
    items = get(fleet, "/api/v1/kiosks?order=attention")["items"]
    assert [(k["id"], k["state"]) for k in items] == [
        ("q1-b", "offline"), ("q3-a", "offline"), ("q1-c", "degraded"), ("q3-b", "never_seen"),
        ("q1-d", "online"), ("q1-a", "online"), ("free", "retired")]
    top = get(fleet, "/api/v1/kiosks?order=attention&limit=2")["items"]
    assert [k["id"] for k in top] == ["q1-b", "q3-a"]


def test_kiosk_filters(fleet):
    ids = lambda url: [k["id"] for k in get(fleet, url)["items"]]  # noqa: E731
    assert ids("/api/v1/kiosks?district=q3") == ["q3-a", "q3-b"]
    assert ids("/api/v1/kiosks?location=q1-office") == ["q1-c", "q1-d"]
    assert ids("/api/v1/kiosks?state=offline,degraded&order=id") == ["q1-b", "q1-c", "q3-a"]
    assert get(fleet, "/api/v1/kiosks?state=sleeping", status=400)["message"] == (
        "state='sleeping' is not known; use one of: never_seen, online, degraded, unreachable, "
        "offline, retired")
    assert get(fleet, "/api/v1/kiosks?order=random", status=400)["message"] == (
        "order='random' is not known; use one of: map, attention, id")
    assert get(fleet, "/api/v1/kiosks?district=q9", status=404)["message"] == \
        "no district with code 'q9'"


def test_kiosk_detail_has_events_outages_and_activity(fleet):
    with fleet.sessions() as s:
        s.add_all([scan(1, "q1-a", fleet.ids.market, fleet.ids.q1, NOW - 600),
                   scan(2, "q1-a", fleet.ids.market, fleet.ids.q1, NOW - 2 * HOUR)])
        s.commit()
    k = get(fleet, "/api/v1/kiosks/q1-a")
    assert [(e["previous"], e["state"], e["at"]) for e in k["events"]] == [
        ("offline", "online", iso(NOW - 25 * HOUR)), ("online", "offline", iso(NOW - 26 * HOUR))]
    assert k["outages"] == [{"id": k["outages"][0]["id"], "kiosk": "q1-a",
                             "started": iso(NOW - 26 * HOUR), "ended": iso(NOW - 25 * HOUR),
                             "open": False, "duration_seconds": 3600.0, "cause": "last will"}]
    assert k["last_scan"] == iso(NOW - 600) and k["scans_last_hour"] == 1
    assert get(fleet, "/api/v1/kiosks/ghost", status=404)["message"] == "no kiosk 'ghost'"


def test_kiosk_enrol_move_policy_and_retire_are_audited(fleet):
    # Before the deployment has policies, the built-ins are what its bundle will carry.
    assert send(fleet, "POST", "/api/v1/kiosks", {"id": "x", "policy": "strict"}, status=422)[
        "message"] == "deployment 'test' has no policy 'strict'; its policies: accept-valid, hcmc-2021"
    with fleet.sessions() as s:
        s.add_all([Policy(deployment="test", name=name, document={}, updated_by="t",
                          updated_at=NOW) for name in ("hcmc-2021", "strict")])
        s.commit()
    made = send(fleet, "POST", "/api/v1/kiosks", {"id": "q3-c", "location": "q3-station",
                                                  "policy": "strict"}, "operator", 201)
    assert (made["state"], made["deployment"], made["policy"]) == ("never_seen", "test", "strict")
    assert made["enrolled_at"] == iso(NOW) and made["location"]["code"] == "q3-station"

    for body, message in (
            ({"id": "bad id"}, "'id' 'bad id' is not valid: it must be 1 to 63 letters, digits, "
                               "'_', '.' or '-', starting with a letter or digit"),
            ({"id": "x", "deployment": "hanoi"}, "unknown deployment 'hanoi'; this fleet serves: test"),
            ({"id": "x", "policy": "lenient"}, "deployment 'test' has no policy 'lenient'; its "
                                               "policies: hcmc-2021, strict"),
            ({"id": "x", "location": "moon"}, "no location with code 'moon': create it first "
                                              "(POST /api/v1/locations)"),
            ({"location": "q1-market"}, "'id' is required")):
        assert send(fleet, "POST", "/api/v1/kiosks", body, status=422)["message"] == message
    assert send(fleet, "POST", "/api/v1/kiosks", {"id": "q1-a"}, status=409)["message"] == \
        "a kiosk 'q1-a' exists already"

    from fleet import bundles
    bundles.ensure_signing_key(fleet.client.application.extensions["greengate"].config)  # a policy change signs a bundle
    moved = send(fleet, "PATCH", "/api/v1/kiosks/q3-c", {"location": "q1-office", "policy": "hcmc-2021"})
    assert moved["location"]["code"] == "q1-office" and moved["district"]["code"] == "q1"
    assert moved["policy"] == "hcmc-2021"
    assert send(fleet, "PATCH", "/api/v1/kiosks/q3-c", {"deployment": "other"}, status=422)[
        "message"] == "unknown field deployment; allowed: location, policy, reason"

    retired = send(fleet, "POST", "/api/v1/kiosks/q1-b/retire", {"reason": "stolen"})
    assert retired["state"] == "retired" and retired["retired_at"] == iso(NOW)
    assert send(fleet, "POST", "/api/v1/kiosks/q1-b/retire", None, status=409)["message"] == (
        f"kiosk 'q1-b' is retired already (since {iso(NOW)})")
    assert send(fleet, "PATCH", "/api/v1/kiosks/q1-b", {"policy": "strict"}, status=409)[
        "message"] == "kiosk 'q1-b' is retired; enrol a new kiosk instead"
    # enrolling a retired id again says it is retired, not merely that it exists
    assert send(fleet, "POST", "/api/v1/kiosks", {"id": "q1-b"}, status=409)["message"] == (
        "kiosk 'q1-b' is retired; a retired id is not used again: enrol the kiosk under a new id")
    with fleet.sessions() as s:
        outage = s.scalar(select(Outage).where(Outage.kiosk_id == "q1-b"))
        assert outage.ended == NOW  # a retired kiosk is no longer an outage
        event = s.scalars(select(PresenceEvent).where(PresenceEvent.kiosk_id == "q1-b")).one()
        assert (event.previous, event.state, event.detail) == ("offline", "retired", "stolen")

    assert [(e.actor, e.target) for e in audit_entries(fleet, "kiosk.create")] == [("operator", "q3-c")]
    # the move, then the assignment (fleet/policies.py assign, as the CLI's)
    moved_entry, assigned_entry = audit_entries(fleet, "kiosk.update")
    assert moved_entry.detail == {"location": ["q3-station", "q1-office"]}
    assert assigned_entry.detail == {"reason": "", "policy": ["strict", "hcmc-2021"]}
    (retire,) = audit_entries(fleet, "kiosk.retire")
    assert retire.detail == {"previous": "offline", "reason": "stolen"}


def test_enrolling_a_kiosk_the_fleet_already_heard_adopts_its_row(fleet):
    """The ingest worker creates a row, never enrolled, for a kiosk it hears of first
    (fleet/presence.py new_kiosk_row); enrolling it keeps that row and its history."""
    with fleet.sessions() as s:
        s.add(Kiosk(id="early", deployment="test", policy="hcmc-2021", state="online",
                    state_since=NOW - HOUR, detail="", session=4, enrolled_at=None))
        s.add(PresenceEvent(kiosk_id="early", at=NOW - HOUR, previous="never_seen",
                            state="online", detail=""))
        s.commit()
    made = send(fleet, "POST", "/api/v1/kiosks", {"id": "early", "location": "q1-market"},
                "operator", 201)
    assert (made["state"], made["enrolled_at"], made["location"]["code"]) == (
        "online", iso(NOW), "q1-market")
    with fleet.sessions() as s:
        assert s.scalars(select(PresenceEvent.state).where(
            PresenceEvent.kiosk_id == "early")).all() == ["online"]
    (entry,) = audit_entries(fleet, "kiosk.create")
    assert entry.detail["adopted"] is True and entry.target == "early"
    # once enrolled, a second enrolment is a conflict like any other
    assert send(fleet, "POST", "/api/v1/kiosks", {"id": "early"}, status=409)["message"] == \
        "a kiosk 'early' exists already"


# --- presence and outages ---------------------------------------------------------------------
def test_presence_counts_per_state_and_district(fleet):
    answer = get(fleet, "/api/v1/presence")
    assert answer["states"] == {"never_seen": 1, "online": 2, "degraded": 1, "offline": 2,
                                "retired": 1, "unreachable": 0}
    assert answer["total"] == 7
    per = {(d["district"] or {}).get("code"): d for d in answer["districts"]}
    assert per["q1"]["states"] == {"never_seen": 0, "online": 2, "degraded": 1, "offline": 1,
                                   "retired": 0, "unreachable": 0}
    assert per["q3"]["total"] == 2 and per[None]["states"]["retired"] == 1


def test_outages_filters_and_durations(fleet):
    answer = get(fleet, "/api/v1/outages")
    assert [(o["kiosk"], o["open"]) for o in answer["items"]] == [
        ("q3-a", True), ("q1-b", True), ("q1-a", False)]
    q1b = answer["items"][1]
    assert q1b["started"] == iso(NOW - 2 * HOUR) and q1b["ended"] is None
    assert q1b["duration_seconds"] == 2 * HOUR and q1b["district"]["code"] == "q1"
    assert [o["kiosk"] for o in get(fleet, "/api/v1/outages?open=true&district=q1")["items"]] == ["q1-b"]
    assert [o["kiosk"] for o in get(fleet, "/api/v1/outages?kiosk=q1-a")["items"]] == ["q1-a"]
    # Overlapping a window: the one of yesterday only.
    window = f"since={iso(NOW - 27 * HOUR)}&until={iso(NOW - 24 * HOUR)}"
    assert [o["kiosk"] for o in get(fleet, f"/api/v1/outages?{window}")["items"]] == ["q1-a"]
    page = get(fleet, "/api/v1/outages?limit=2")
    assert len(page["items"]) == 2 and page["next"] is not None
    rest = get(fleet, f"/api/v1/outages?limit=2&after={page['next']}")
    assert [o["kiosk"] for o in rest["items"]] == ["q1-a"] and rest["next"] is None


# --- scans --------------------------------------------------------------------------------------
@pytest.fixture
def scans(fleet):
    """257 scans over 10 hours across four kiosks of both districts."""
    ids, rows = fleet.ids, []
    places = [("q1-a", ids.market, ids.q1), ("q1-d", ids.office, ids.q1),
              ("q3-a", ids.station, ids.q3), ("q1-c", ids.office, ids.q1)]
    for n in range(257):
        kiosk, loc, district = places[n % 4]
        red = n % 5 == 0
        rows.append(scan(n, kiosk, loc, district, NOW - 10 * HOUR + n * 140.0,
                         "red" if red else "green", "expired" if red else "ok",
                         cert=f"{n % 7:032x}", holder=f"{n % 11:064x}"))
    with fleet.sessions() as s:
        s.add_all(rows)
        s.commit()
        fleet.scans = {r.scan_id: r for r in s.scalars(select(Scan)).all()}
    return fleet


def collect(api, url, who="admin"):
    """Every page of a paginated scan listing: the items and the number of pages."""
    items, pages, cursor = [], 0, None
    while True:
        answer = get(api, url + (f"&after={cursor}" if cursor is not None else ""), who)
        pages += 1
        items += answer["items"]
        cursor = answer["next"]
        if cursor is None:
            return items, pages
        assert pages < 100


def test_scans_keyset_pagination_has_no_duplicates_or_gaps(scans):
    items, pages = collect(scans, "/api/v1/scans?limit=40")
    assert pages == 7  # 257 = 6 × 40 + 17
    ids = [i["id"] for i in items]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 257
    assert {i["scan_id"] for i in items} == set(scans.scans)
    oldest, _ = collect(scans, "/api/v1/scans?limit=100&order=oldest")
    assert [i["id"] for i in oldest] == sorted(ids)
    # A filtered listing pages the same way.
    red, pages = collect(scans, "/api/v1/scans?limit=10&decision=red")
    expected = {k for k, r in scans.scans.items() if r.decision == "red"}
    assert {i["scan_id"] for i in red} == expected and len(red) == len(expected) == 52
    assert pages == 6


def test_scan_fields_and_filters(scans):
    first = scans.scans["scan00000000"]
    (item,) = get(scans, f"/api/v1/scans?kiosk=q1-a&until={iso(first.ts + 1)}")["items"]
    assert item == {"id": first.id, "scan_id": "scan00000000", "kiosk": "q1-a",
                    "ts": iso(NOW - 10 * HOUR), "received": iso(NOW - 10 * HOUR + 1.5),
                    "decision": "red", "reason": "expired", "sub_reason": None, "type": "v",
                    "cert_hash": f"{0:032x}", "holder": f"{0:064x}", "policy": "hcmc-2021",
                    "location": "q1-market", "district": "q1"}

    def ids(query):
        items, _ = collect(scans, "/api/v1/scans?limit=1000&" + query)
        return sorted(i["scan_id"] for i in items)

    def expect(pred):
        return sorted(k for k, r in scans.scans.items() if pred(r))

    assert ids("district=q3") == expect(lambda r: r.kiosk_id == "q3-a")
    assert ids("location=q1-office") == expect(lambda r: r.kiosk_id in ("q1-d", "q1-c"))
    assert ids("reason=expired&kiosk=q1-d") == expect(lambda r: r.reason == "expired"
                                                      and r.kiosk_id == "q1-d")
    since, until = NOW - 5 * HOUR, NOW - 3 * HOUR
    assert ids(f"since={iso(since)}&until={iso(until)}") == expect(lambda r: since <= r.ts < until)
    # The same instant written with an offset and as epoch seconds.
    assert ids("since=2021-10-05T10:00:00%2B07:00") == expect(lambda r: r.ts >= NOW - 5 * HOUR)
    assert ids(f"since={NOW - 5 * HOUR:.0f}") == expect(lambda r: r.ts >= NOW - 5 * HOUR)
    assert ids(f"cert_hash={3:032x}") == expect(lambda r: r.cert_hash == f"{3:032x}")
    assert ids(f"holder={5:064x}&decision=green") == expect(
        lambda r: r.holder == f"{5:064x}" and r.decision == "green")


SCAN_QUERY_ERRORS = [
    ("limit=1001", 400, "limit=1001 is out of range: it must be between 1 and 1000"),
    ("limit=0", 400, "limit=0 is out of range: it must be between 1 and 1000"),
    ("limit=ten", 400, "limit='ten' is not a whole number"),
    ("after=-3", 400, "after=-3 is out of range: it must be at least 0"),
    ("since=yesterday", 400, "since='yesterday' is not a time: send ISO 8601 with a time zone, "
                             "like since=2021-10-05T08:00:00Z, or epoch seconds"),
    ("since=2021-10-05T08:00:00", 400, "since='2021-10-05T08:00:00' has no time zone: add Z for "
                                       "UTC (e.g. since=2021-10-05T08:00:00Z) or an offset like +07:00"),
    ("since=2021-10-06T00:00:00Z&until=2021-10-05T00:00:00Z", 400,
     "since (2021-10-06T00:00:00.000Z) is after until (2021-10-05T00:00:00.000Z): swap them"),
    ("until=1e300", 400, "until='1e300' is not a time: epoch seconds must be a number from 0 "
                         "to 253402300799 (the year 9999)"),
    ("decision=amber", 400, "decision='amber' is not known; use one of: green, red"),
    ("holder=XYZ", 400, "holder='XYZ' is not valid: it must be lowercase hexadecimal, at most 64 digits"),
    ("location=atlantis", 404, "no location with code 'atlantis'"),
]


def test_scan_query_errors_say_what_to_send(fleet):
    for query, status, message in SCAN_QUERY_ERRORS:
        assert get(fleet, f"/api/v1/scans?{query}", status=status)["message"] == message, query


def test_pseudonyms_are_for_tracers_only(scans):
    for who in ("operator", "officer"):
        items = get(scans, "/api/v1/scans?limit=5", who)["items"]
        assert items and all(i["cert_hash"] is None and i["holder"] is None for i in items)
        answer = get(scans, f"/api/v1/scans?holder={1:064x}", who, 403)
        assert answer["message"] == ("filtering by holder is tracing: only a health official or "
                                     "an admin may do it")
    items = get(scans, f"/api/v1/scans?holder={1:064x}&limit=1000", "health")["items"]
    assert items and all(i["holder"] == f"{1:064x}" for i in items)


# --- statistics -----------------------------------------------------------------------------------
def roll_up(fleet):
    """The hourly rollup as the upkeep runs it (fleet/scan_hours.py): every figure below
    must come out the same from the counts as from the scans."""
    scan_hours.roll(fleet.client.application.extensions["greengate"].engine, NOW)
    with fleet.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ScanHour)) > 0


@pytest.mark.parametrize("rolled", [False, True], ids=["scans", "rolled-up"])
def test_scans_per_hour_adds_summaries(fleet, rolled):
    ids = fleet.ids
    h = NOW - 3 * HOUR  # 05:00Z
    with fleet.sessions() as s:
        s.add_all([scan(1, "q1-a", ids.market, ids.q1, h + 10),
                   scan(2, "q1-a", ids.market, ids.q1, h + 3599, "red", "expired"),
                   scan(3, "q1-d", ids.office, ids.q1, h + HOUR + 5),
                   scan(4, "q3-a", ids.station, ids.q3, h + 20),
                   scan(5, "q1-a", ids.market, ids.q1, h - HOUR - 1)])  # before the range
        s.add_all([ScanSummary(kiosk_id="q1-a", summary_id="s" + "1" * 16, hour=int(h),
                               decision="red", reason="expired", count=17, first=h + 1,
                               last=h + 3000, location_id=ids.market, district_id=ids.q1),
                   ScanSummary(kiosk_id="q1-a", summary_id="s" + "2" * 16, hour=int(h),
                               decision="unknown", reason="unknown", count=2, first=h + 1,
                               last=h + 2, location_id=ids.market, district_id=ids.q1),
                   ScanSummary(kiosk_id="q3-a", summary_id="s" + "3" * 16, hour=int(h + HOUR),
                               decision="green", reason="ok", count=40, first=h + HOUR,
                               last=h + HOUR + 9, location_id=ids.station, district_id=ids.q3)])
        s.commit()
    if rolled:
        roll_up(fleet)
    # since/until widen to whole hours: 05:00 … 07:00 (07:30 rounds up to 08:00).
    answer = get(fleet, f"/api/v1/stats/scans-per-hour?district=q1&since={iso(h + 60)}"
                        f"&until={iso(h + 2.5 * HOUR)}")
    assert answer["since"] == iso(h) and answer["until"] == iso(NOW)
    assert answer["hours"] == [
        {"hour": iso(h), "total": 21, "green": 1, "red": 18, "other": 2, "summarized": 19},
        {"hour": iso(h + HOUR), "total": 1, "green": 1, "red": 0, "other": 0, "summarized": 0},
        {"hour": iso(h + 2 * HOUR), "total": 0, "green": 0, "red": 0, "other": 0, "summarized": 0}]
    assert answer["totals"] == {"total": 22, "green": 2, "red": 18, "other": 2, "summarized": 19}
    mine = get(fleet, f"/api/v1/stats/scans-per-hour?since={iso(h + 60)}"
                      f"&until={iso(h + 2.5 * HOUR)}", "officer")  # the officer's is q1
    assert mine["hours"] == answer["hours"]
    kiosk = get(fleet, f"/api/v1/stats/scans-per-hour?kiosk=q1-a&since={iso(h)}"
                       f"&until={iso(h + HOUR)}")
    assert kiosk["totals"]["total"] == 2 + 17 + 2
    everywhere = get(fleet, f"/api/v1/stats/scans-per-hour?since={iso(h)}&until={iso(h + 2 * HOUR)}")
    assert [b["total"] for b in everywhere["hours"]] == [22, 41]
    market = get(fleet, f"/api/v1/stats/scans-per-hour?location=q1-market&since={iso(h)}"
                        f"&until={iso(h + HOUR)}")
    assert [b["total"] for b in market["hours"]] == [21]
    # Default: the 24 hours up to now.
    default = get(fleet, "/api/v1/stats/scans-per-hour")
    assert len(default["hours"]) == 24 and default["totals"]["total"] == 22 + 40 + 1 + 1
    hours = round((NOW - datetime(2021, 1, 1, tzinfo=timezone.utc).timestamp()) / HOUR)
    assert get(fleet, "/api/v1/stats/scans-per-hour?since=2021-01-01T00:00:00Z", status=400)[
        "message"] == f"the range spans {hours} hours; ask for at most 93 days at a time"


@pytest.mark.parametrize("rolled", [False, True], ids=["scans", "rolled-up"])
def test_overview_counts_and_silent_kiosks(fleet, rolled):
    ids = fleet.ids
    with fleet.sessions() as s:
        s.add_all([scan(1, "q1-a", ids.market, ids.q1, NOW - 10 * 60),  # q1-a is busy
                   scan(2, "q1-d", ids.office, ids.q1, NOW - 50 * 60),  # q1-d: silent 50 min
                   scan(3, "q1-d", ids.office, ids.q1, NOW - 5 * HOUR),
                   scan(4, "q3-a", ids.station, ids.q3, NOW - 9 * HOUR)])  # today in HCMC only
        s.add(ScanSummary(kiosk_id="q1-a", summary_id="s" + "4" * 16, hour=int(NOW - HOUR),
                          decision="red", reason="expired", count=5, first=NOW - 3000,
                          last=NOW - 2000, location_id=ids.market, district_id=ids.q1))
        # q1-c came back from an outage 10 minutes ago: connected, but not for 30 minutes.
        s.add(PresenceEvent(kiosk_id="q1-c", at=NOW - 600, previous="offline", state="degraded",
                            session=4, detail="lists missing"))
        s.commit()
    if rolled:
        roll_up(fleet)
    # the default window is the dashboard's: [web] silent_hours (one default, both places)
    default = get(fleet, "/api/v1/stats/overview")["silent_minutes"]
    config = fleet.client.application.extensions["greengate"].config
    assert default == round(config.web.silent_hours * 60) == 120
    answer = get(fleet, "/api/v1/stats/overview?tz=Asia/Ho_Chi_Minh&silent_minutes=30")
    assert answer["kiosks"] == {"never_seen": 1, "online": 2, "degraded": 1, "offline": 2,
                                "retired": 1, "unreachable": 0, "total": 7}
    # Today in HCMC began at 17:00Z the day before: the scan at 23:00Z counts.
    assert answer["scans"] == {"last_hour": 1 + 1 + 5, "today": 4 + 5,
                               "today_since": "2021-10-04T17:00:00.000Z"}
    assert answer["open_outages"] == 2 and answer["silent_minutes"] == 30
    assert [(k["id"], k["last_scan"], k["silent_seconds"]) for k in answer["silent"]] == [
        ("q1-d", iso(NOW - 50 * 60), 3000.0)]
    utc = get(fleet, "/api/v1/stats/overview?silent_minutes=5")
    assert utc["scans"]["today"] == 3 + 5 and utc["scans"]["today_since"] == "2021-10-05T00:00:00.000Z"
    # Five minutes: q1-c (back 10 minutes ago, never scanned) and q1-a count too.
    assert [k["id"] for k in utc["silent"]] == ["q1-c", "q1-d", "q1-a"]
    assert utc["silent_total"] == 3
    first = get(fleet, "/api/v1/stats/overview?silent_minutes=5&silent_limit=2")
    assert [k["id"] for k in first["silent"]] == ["q1-c", "q1-d"] and first["silent_total"] == 3
    assert get(fleet, "/api/v1/stats/overview?tz=Mars/Olympus", status=400)["message"] == (
        "tz='Mars/Olympus' is not a time zone: use an IANA name such as Asia/Ho_Chi_Minh, or UTC")


def test_kiosks_come_in_pages(fleet):
    whole = get(fleet, "/api/v1/kiosks?order=attention")
    assert len(whole["items"]) == 7 and whole["next_offset"] is None
    pages, offset = [], 0
    while offset is not None:
        answer = get(fleet, f"/api/v1/kiosks?order=attention&limit=3&offset={offset}")
        assert len(answer["items"]) <= 3
        pages += answer["items"]
        offset = answer["next_offset"]
    assert [k["id"] for k in pages] == [k["id"] for k in whole["items"]]  # no gap, no repeat
    assert get(fleet, "/api/v1/kiosks?limit=0", status=400)


# --- the district officer's scope ---------------------------------------------------------------
def test_district_officer_sees_only_their_district(scans):
    def ids(url):
        return [k["id"] for k in get(scans, url, "officer")["items"]]

    assert [d["code"] for d in get(scans, "/api/v1/districts", "officer")["items"]] == ["q1"]
    assert get(scans, "/api/v1/districts/q3", "officer", 404)["message"] == \
        "no district with code 'q3'"
    assert [loc["code"] for loc in get(scans, "/api/v1/locations", "officer")["items"]] == [
        "q1-market", "q1-office"]
    get(scans, "/api/v1/locations/q3-station", "officer", 404)
    assert ids("/api/v1/kiosks") == ["q1-a", "q1-b", "q1-c", "q1-d"]
    assert ids("/api/v1/kiosks?order=attention") == ["q1-b", "q1-c", "q1-d", "q1-a"]
    get(scans, "/api/v1/kiosks/q3-a", "officer", 404)
    get(scans, "/api/v1/kiosks/free", "officer", 404)  # no district at all: not theirs
    for url in ("/api/v1/kiosks?district=q3", "/api/v1/scans?district=q3",
                "/api/v1/stats/scans-per-hour?district=q3", "/api/v1/stats/overview?district=q3"):
        assert get(scans, url, "officer", 403)["message"] == \
            "you may only see your own district; district='q3' is another one"
    assert get(scans, "/api/v1/scans?location=q3-station", "officer", 403)["message"] == \
        "you may only see your own district; location='q3-station' is in another one"

    items, _ = collect(scans, "/api/v1/scans?limit=50", "officer")
    expected = {k for k, r in scans.scans.items() if r.district_id == scans.ids.q1}
    assert {i["scan_id"] for i in items} == expected and len(expected) == 193
    assert get(scans, "/api/v1/scans?kiosk=q3-a", "officer")["items"] == []

    mine = get(scans, "/api/v1/stats/scans-per-hour", "officer")["totals"]["total"]
    everything = get(scans, "/api/v1/stats/scans-per-hour")["totals"]["total"]
    assert (mine, everything) == (193, 257)
    presence = get(scans, "/api/v1/presence", "officer")
    assert presence["total"] == 4 and [d["district"]["code"] for d in presence["districts"]] == ["q1"]
    overview = get(scans, "/api/v1/stats/overview", "officer")
    assert overview["kiosks"]["total"] == 4 and overview["open_outages"] == 1
    assert [o["kiosk"] for o in get(scans, "/api/v1/outages", "officer")["items"]] == ["q1-b", "q1-a"]


def test_district_officer_without_a_district_sees_nothing(api):
    for url in ("/api/v1/kiosks", "/api/v1/scans", "/api/v1/districts", "/api/v1/presence"):
        answer = get(api, url, "officer", 403)
        assert answer["message"].startswith("your district officer account has no district")


# --- the audit log ------------------------------------------------------------------------------
def test_audit_log_pages_newest_first(fleet):
    for n in range(5):
        send(fleet, "POST", "/api/v1/districts", {"code": f"d{n}", "name": f"D{n}"}, status=201)
    first = get(fleet, "/api/v1/audit?limit=3&action=district.create")
    assert [e["target"] for e in first["items"]] == ["d4", "d3", "d2"]
    assert {e["actor"] for e in first["items"]} == {"admin"}
    assert first["items"][0]["detail"] == {"name": "D4"}
    rest = get(fleet, f"/api/v1/audit?limit=3&action=district.create&after={first['next']}")
    assert [e["target"] for e in rest["items"]] == ["d1", "d0"] and rest["next"] is None
    assert get(fleet, "/api/v1/audit?actor=nobody")["items"] == []

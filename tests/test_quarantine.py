"""The quarantine table and what shows it (fleet/quarantine.py, GET /api/v1/quarantine,
the kiosk page, /metrics), the schema migration, and pages and API calls that stay up
whatever kiosks managed to store: on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import re
from html import unescape

import pytest
from alembic import command
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect, insert, select, text, update

from fleet import auth, migrate, quarantine
from fleet.db import make_engine
from fleet.models import QUARANTINE_KINDS, Kiosk
from tests.fleetdata import HOUR, NOW, scan, seed

PASSWORD = "correct horse battery"
HOLDER = "cd" * 32  # a pseudonym in a refused scan: admins only
NASTY = (b'{"v":1,"a":' + b"[" * 4000 + b"\x00\xff\xfe<script>alert(1)</script>" + b"\xed\xa0\x80")


class Item:
    """What the ingest hands over: any object with these attributes."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


class Hostile:
    def __str__(self):
        raise RuntimeError("no text for you")


def read_all(engine):
    with engine.connect() as c:
        return [dict(r) for r in c.execute(select(*quarantine.COLUMNS)
                                           .order_by(quarantine.TABLE.c.id)).mappings()]


# --- storing anything ------------------------------------------------------------------
def test_hostile_messages_are_stored_on_both_databases(fleet_config):
    rows = quarantine.rows_for([
        Item(kiosk="k1", topic="gg/v1/kiosk/k1/scan", kind="scan", reason="too_deep",
             detail="nesting deeper than 32", raw=NASTY, size=len(NASTY)),
        Item(kiosk=None, topic="gg/v1/kiosk//scan\x00\udcff" + "t" * 1000, kind="weird kind",
             reason="bad\x00topic" + "r" * 100, detail=Hostile(), raw="text \udcff\x00",
             size=None),
        {"kiosk": b"k\x00\xff2", "topic": b"\xff\xfe", "kind": "heartbeat", "reason": "",
         "detail": "x" * 5000 + "\ud800", "raw": bytearray(b"\x00" * 10), "size": 10**12},
        {"kiosk": "", "kind": None, "raw": None},
    ], received=NOW)
    engine = make_engine(fleet_config.database_url)
    try:
        with engine.begin() as c:
            assert quarantine.insert(c, rows) == 4
        got = read_all(engine)
    finally:
        engine.dispose()
    assert [r["kiosk_id"] for r in got] == ["k1", None, "k\ufffd\ufffd2", None]
    first, second, third, fourth = got
    assert bytes(first["raw"]) == NASTY[:512] and first["size"] == len(NASTY) > 4000
    assert (first["kind"], first["reason"], first["received"]) == ("scan", "too_deep", NOW)
    assert len(second["topic"]) == 255 and "\x00" not in second["topic"]
    assert second["topic"].startswith("gg/v1/kiosk//scan\ufffd\ufffd")
    assert second["kind"] == "unknown" and second["reason"].startswith("bad\ufffdtopic")
    assert len(second["reason"]) == 40 and second["detail"] == "<Hostile>"
    assert bytes(second["raw"]) == "text \udcff\x00".encode("utf-8", "surrogatepass")
    assert second["size"] == len(bytes(second["raw"]))
    assert third["topic"] == "\ufffd\ufffd" and third["reason"] == "unknown"
    assert len(third["detail"]) == 300 and third["size"] == 2**31 - 1
    assert bytes(third["raw"]) == b"\x00" * 10 and third["kind"] == "heartbeat"
    assert (fourth["kind"], bytes(fourth["raw"]), fourth["size"]) == ("unknown", b"", 0)


def test_pseudonyms_are_masked_even_where_the_payload_was_cut():
    hexed = b"ab" * 32
    assert quarantine.mask_pseudonyms(b'"h":"' + hexed + b'","id":"1234"') == \
        b'"h":"' + b"*" * 64 + b'","id":"1234"'
    assert quarantine.mask_pseudonyms(b'"id":"1234"') == b'"id":"1234"'
    cut = b'"x":"' + hexed[:10]  # the first bytes of a pseudonym the cut left behind
    assert quarantine.mask_pseudonyms(cut) == cut
    assert quarantine.mask_pseudonyms(cut, truncated=True) == b'"x":"' + b"*" * 10


def test_preview_never_decodes():
    assert quarantine.preview(b"<a>\x00\xff") == {"hex": "3c 61 3e 00 ff", "text": "<a>.."}
    assert quarantine.preview(b"x" * 100)["text"] == "x" * 64
    assert quarantine.preview(None) == {"hex": "", "text": ""}


# --- the migration ------------------------------------------------------------------------
def test_migration_0006_keeps_existing_rows_and_adds_the_columns(database_url):
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0005")
        with engine.begin() as c:
            c.execute(text("INSERT INTO kiosk (id, deployment, policy, state, detail, session) "
                           "VALUES ('old', 'test', 'p', 'online', '', 3)"))
            c.execute(text("INSERT INTO scan (kiosk_id, scan_id, ts, received, decision, "
                           "reason, policy) VALUES ('old', 's1', 1, 2, 'green', 'ok', 'p')"))
        migrate.upgrade(engine, "0006")
        assert migrate.current(engine) == "0006"
        with engine.connect() as c:
            assert c.execute(text("SELECT seq_reported, seq_checked, seq_missing FROM kiosk"))\
                .one() == (None, 0, 0)
            assert c.execute(text("SELECT scan_id, seq FROM scan")).one() == ("s1", None)
        indexes = {i["name"] for i in inspect(engine).get_indexes("scan")}
        assert "ix_scan_kiosk_seq" in indexes
        assert {i["name"] for i in inspect(engine).get_indexes("quarantine")} == {
            "ix_quarantine_kiosk_received", "ix_quarantine_received"}
        with engine.begin() as c:  # and back down
            command.downgrade(migrate._alembic(c), "0005")
        assert "quarantine" not in inspect(engine).get_table_names()
        assert "seq" not in {col["name"] for col in inspect(engine).get_columns("scan")}
    finally:
        engine.dispose()


# --- showing it ---------------------------------------------------------------------------
@pytest.fixture
def fleet(fleet_app, fleet_db):
    """The seeded fleet (Quận 1: q1-a, q1-b...; Quận 3: q3-a), users of every role,
    quarantined messages of q1-a, q3-a and of no kiosk, a gap at q1-a."""
    ids = seed(fleet_db)
    tokens = {}
    with fleet_db() as s:
        for name, role, district in (("admin", "admin", None), ("operator", "operator", None),
                                     ("officer", "district_officer", ids.q1),
                                     ("health", "health_official", None)):
            user = auth.create_user(s, name, PASSWORD, role, district)
            s.flush()
            tokens[name] = {"Authorization": f"Bearer {auth.create_token(s, user, 't')}"}
        s.execute(update(Kiosk).where(Kiosk.id == "q1-a")
                  .values(seq_reported=40, seq_checked=38, seq_missing=3))
        s.commit()
    rows = quarantine.rows_for(
        [Item(kiosk="q1-a", topic="gg/v1/kiosk/q1-a/scan", kind="scan", reason="ts_past",
              detail="ts too old", raw=b'{"holder":"' + HOLDER.encode() + b'","ts":1}',
              size=80)]
        + [Item(kiosk="q1-a", topic="gg/v1/kiosk/q1-a/scan", kind="scan", reason="bad_json",
              detail=f"message {i} is not JSON", raw=b"<script>alert('x')</script>\x00\xff",
              size=40) for i in range(25)]
        + [Item(kiosk="q3-a", topic="gg/v1/kiosk/q3-a/heartbeat", kind="heartbeat",
                reason="ts_range", detail="ts out of range", raw=b'{"ts":1e300}', size=12),
           Item(kiosk=None, topic="gg/v1/kiosk", kind="unknown", reason="bad_topic",
                detail="no kiosk in the topic", raw=b"?", size=1)], received=NOW - HOUR * 2)
    with fleet_db.kw["bind"].begin() as c:
        quarantine.insert(c, rows)
        # the last five bad_json ones are recent
        c.execute(update(quarantine.TABLE).where(quarantine.TABLE.c.id > 21)
                  .where(quarantine.TABLE.c.id <= 26).values(received=NOW - 60))
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids.app, ids.sessions, ids.tokens = fleet_app, fleet_db, tokens
    ids.client = fleet_app.test_client()
    return ids


def api(fleet, who, path):
    return fleet.client.get(path, headers=fleet.tokens[who])


def test_api_lists_pages_filters_and_scopes(fleet):
    every = api(fleet, "admin", "/api/v1/quarantine?limit=1000").get_json()
    assert len(every["items"]) == 28 and every["next"] is None
    assert [i["id"] for i in every["items"]] == sorted((i["id"] for i in every["items"]),
                                                      reverse=True)
    newest = every["items"][0]
    assert (newest["kiosk"], newest["kind"], newest["reason"]) == (None, "unknown", "bad_topic")
    q1 = next(i for i in every["items"] if i["kiosk"] == "q1-a" and i["reason"] == "bad_json")
    held = next(i for i in every["items"] if i["reason"] == "ts_past")
    assert HOLDER in base64.b64decode(held["raw_base64"]).decode() and not held["masked"]
    for who in ("operator", "officer"):  # pseudonyms are for admins (and health officials)
        item = next(i for i in api(fleet, who, "/api/v1/quarantine?limit=1000").get_json()
                    ["items"] if i["reason"] == "ts_past")
        assert base64.b64decode(item["raw_base64"]) == b'{"holder":"' + b"*" * 64 + b'","ts":1}'
        assert item["masked"] and "cdcd" not in item["preview"]["hex"].replace(" ", "")
    assert base64.b64decode(q1["raw_base64"]) == b"<script>alert('x')</script>\x00\xff"
    assert q1["preview"]["text"] == "<script>alert('x')</script>.."
    assert q1["size"] == 40 and q1["topic"] == "gg/v1/kiosk/q1-a/scan"
    assert api(fleet, "operator", "/api/v1/quarantine").status_code == 200
    # an officer of Quận 1 sees only Quận 1's kiosks' rows (not q3-a's, not kiosk-less)
    mine = api(fleet, "officer", "/api/v1/quarantine?limit=1000").get_json()["items"]
    assert {i["kiosk"] for i in mine} == {"q1-a"} and len(mine) == 26
    assert api(fleet, "officer", "/api/v1/quarantine?kiosk=q3-a").get_json()["items"] == []
    assert api(fleet, "health", "/api/v1/quarantine").status_code == 403
    assert fleet.client.get("/api/v1/quarantine").status_code == 401
    # paging: keyset on the id, nothing skipped or repeated
    seen, after = [], None
    while True:
        page = api(fleet, "admin", "/api/v1/quarantine?kiosk=q1-a&limit=10"
                   + (f"&after={after}" if after else "")).get_json()
        seen += [i["id"] for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 26
    recent = api(fleet, "admin", "/api/v1/quarantine?since=" + str(NOW - 120)).get_json()
    assert len(recent["items"]) == 5
    kinds = api(fleet, "admin", "/api/v1/quarantine?kind=heartbeat").get_json()["items"]
    assert [i["kiosk"] for i in kinds] == ["q3-a"]
    assert api(fleet, "admin", "/api/v1/quarantine?kind=nope").status_code == 400
    assert api(fleet, "admin", "/api/v1/quarantine?since=yesterday").status_code == 400
    assert api(fleet, "admin", "/api/v1/quarantine?kiosk=%3Cx%3E").status_code == 400


def test_kiosk_objects_carry_the_gap_and_the_quarantined_count(fleet):
    one = api(fleet, "admin", "/api/v1/kiosks/q1-a").get_json()
    assert one["gap"] == {"seq_reported": 40, "seq_checked": 38, "seq_missing": 3}
    assert one["quarantined"] == 26
    listed = {k["id"]: k for k in api(fleet, "admin", "/api/v1/kiosks").get_json()["items"]}
    assert listed["q1-a"]["quarantined"] == 26 and listed["q3-a"]["quarantined"] == 1
    assert listed["q1-b"]["quarantined"] == 0
    assert listed["q1-b"]["gap"] == {"seq_reported": None, "seq_checked": 0, "seq_missing": 0}


def login(app, user):
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/login", data={"csrf_token": token, "username": user,
                                           "password": PASSWORD})
    assert response.status_code == 302
    return client


def section(html: str, name: str) -> str | None:
    match = re.search(rf'<section id="{name}".*?</section>', html, flags=re.S)
    return match.group(0) if match else None


def test_kiosk_page_shows_quarantine_escaped_and_the_gap_flagged(fleet):
    web = login(fleet.app, "officer")
    html = web.get("/kiosks/q1-a").get_data(as_text=True)
    held = section(html, "quarantine")
    assert held.count("<tr>") == 1 + 20  # the header and the newest 20
    assert "<script>" not in held and "&lt;script&gt;alert(" in held
    assert "3c 73 63 72 69 70 74 3e" in held  # the hex of <script>
    assert "bad_json" in held and "(26)" in held
    gap = section(html, "gap")
    assert gap is not None and "3" in unescape(re.sub(r"<[^>]+>", " ", gap))
    other = web.get("/kiosks/q1-b").get_data(as_text=True)
    assert section(other, "gap") is None
    assert "Không có tin nhắn nào bị cách ly." in section(other, "quarantine")
    assert web.get("/kiosks/q3-a").status_code == 404  # another district's
    # the oldest (beyond the newest 20) is not shown; an admin would see its pseudonym,
    # a health official (no quarantine reader) sees only the count
    admin = login(fleet.app, "admin").get("/kiosks/q1-a").get_data(as_text=True)
    assert section(admin, "quarantine").count("<tr>") == 21
    health = section(login(fleet.app, "health").get("/kiosks/q1-a").get_data(as_text=True),
                     "quarantine")
    assert "<tr>" not in health and "(26)" in health


def test_the_page_masks_pseudonyms_for_operators(fleet):
    with fleet.sessions() as s:  # only the pseudonym-bearing one left: the newest 20 show it
        s.execute(quarantine.TABLE.delete().where(quarantine.TABLE.c.reason != "ts_past"))
        s.commit()
    hexed = " ".join(f"{b:02x}" for b in HOLDER.encode()[:20])
    operator = section(login(fleet.app, "operator").get("/kiosks/q1-a").get_data(as_text=True),
                       "quarantine")
    assert "ts_past" in operator and HOLDER[:20] not in operator and hexed not in operator
    assert "*" * 20 in operator
    admin = section(login(fleet.app, "admin").get("/kiosks/q1-a").get_data(as_text=True),
                    "quarantine")
    assert HOLDER[:20] in admin


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def test_metrics_count_quarantine_and_gaps_and_say_zero_when_empty(fleet_app, fleet_db, fleet):
    values = scrape(fleet.client)
    held = {labels[0][1]: v for (n, labels), v in values.items()
            if n == "greengate_fleet_quarantined_messages"}
    assert held == {"scan": 26, "heartbeat": 1, "unknown": 1, "summary": 0, "presence": 0,
                    "bridge": 0}
    recent = {labels[0][1]: v for (n, labels), v in values.items()
              if n == "greengate_fleet_quarantined_last_hour"}
    assert recent == {"scan": 5, "heartbeat": 0, "unknown": 0, "summary": 0, "presence": 0,
                      "bridge": 0}
    assert values[("greengate_fleet_quarantined_reasons",
                   (("kind", "scan"), ("reason", "bad_json")))] == 25
    assert values[("greengate_fleet_kiosks_with_gaps", ())] == 1
    assert values[("greengate_fleet_missing_decisions", ())] == 3
    with fleet_db() as s:
        s.execute(quarantine.TABLE.delete())
        s.execute(update(Kiosk).values(seq_missing=0))
        s.commit()
    values = scrape(fleet.client)
    for kind in QUARANTINE_KINDS:
        assert values[("greengate_fleet_quarantined_messages", (("kind", kind),))] == 0
        assert values[("greengate_fleet_quarantined_last_hour", (("kind", kind),))] == 0
    assert values[("greengate_fleet_kiosks_with_gaps", ())] == 0
    assert values[("greengate_fleet_missing_decisions", ())] == 0


# --- nothing stored makes a page or an API call fail -----------------------------------------
def test_absurd_stored_values_never_make_a_page_or_the_api_fail(fleet, database):
    """Rows a kiosk could store before the ingest checked its numbers (issue 12: a ts of
    1e300 made the kiosk's API and page answer 500 from then on)."""
    absurd = [1e300, -1e300, 1e20, -1.0, float("inf"), float("-inf")]
    if database.backend == "postgresql":
        absurd.append(float("nan"))  # SQLite keeps NaN as NULL: refused by NOT NULL
    with fleet.sessions() as s:
        for n, ts in enumerate(absurd):
            s.add(scan(900 + n, "q1-a", fleet.market, fleet.q1, ts))
            s.add(scan(950 + n, "q1-d", fleet.office, fleet.q1, NOW - 60))
        # JSON on PostgreSQL refuses Infinity and NaN: huge finite numbers it takes
        s.execute(update(Kiosk).where(Kiosk.id.in_(("q1-a", "q1-d"))).values(heartbeat={
            "v": 1, "session": 3, "ts": 1e300, "uptime": 1e300, "outbox": 10**30,
            "overflow": -5, "cpu_temp": -1e300, "clock": "<b>x</b>", "lists": 7,
            "bundles": {"trust": 10**40, "policy": "x", "status": None}},
            last_seen=NOW - 10, seq_reported=2**53 - 1, seq_missing=2**53 - 1))
        s.commit()
    with fleet.sessions.kw["bind"].begin() as c:
        c.execute(insert(quarantine.TABLE), [{
            "received": 1e300, "kiosk_id": "q1-a", "topic": "t", "kind": "scan",
            "reason": "r", "detail": "d", "raw": b"\x00", "size": 1}])
    web = login(fleet.app, "admin")
    for path in ("/kiosks/q1-a", "/kiosks/q1-d", "/kiosks", "/", "/stats",
                 "/kiosks?silent=1"):
        response = web.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[-2000:])
    for path in ("/api/v1/kiosks/q1-a", "/api/v1/kiosks", "/api/v1/scans?kiosk=q1-a&limit=1000",
                 "/api/v1/stats/overview", "/api/v1/stats/scans-per-hour",
                 "/api/v1/quarantine", "/api/v1/outages"):
        response = api(fleet, "admin", path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[-2000:])
    one = api(fleet, "admin", "/api/v1/kiosks/q1-a").get_json()
    assert one["heartbeat_ts"] is None and one["last_scan"] is None  # no time, not a crash
    assert one["gap"]["seq_missing"] == 2**53 - 1
    scans = api(fleet, "admin", "/api/v1/scans?kiosk=q1-a&limit=1000").get_json()["items"]
    assert any(i["ts"] is None for i in scans)
    assert scrape(fleet.client)[("greengate_fleet_up", ())] == 1

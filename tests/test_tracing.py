"""Contact tracing (fleet/tracing.py, fleet/api/trace.py, fleet/web/trace_views.py) on
SQLite and PostgreSQL: from a real minted certificate through the kiosk's verifier,
its scan message and the fleet's ingest store to the scan row that a trace by ci or by
QR text finds; the window, the exclusions, CSV, roles and the audit entry of every query.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from device.privacy import Sealer
from fleet import bundles, sealing_keys, trust_list
from fleet.db import make_engine
from fleet.ingest_store import ScanStore
from fleet.models import AuditLog, Location
from greengate import messages
from greengate.status import cert_hash
from tests.fleetdata import HOUR, NOW, iso, scan, seed

MIN = 60.0
CASE = "URN:UVCI:01:VN:CASE0001"
KEY = cert_hash(CASE).hex()


def audits(api):
    with api.sessions() as s:
        return s.scalars(select(AuditLog).where(AuditLog.action == "trace.query")
                         .order_by(AuditLog.id)).all()


def trace(api, who="health", status=200, **params):
    response = api.client.get("/api/v1/trace?" + urlencode(params), headers=getattr(api, who))
    assert response.status_code == status, (params, response.status_code, response.get_data())
    return response


# --- the real chain: minted certificate -> kiosk -> ingest -> trace ----------------------------
def kiosk_reports(store, kiosk, qr, at, verifier, config):
    """What device/kiosk.py does with a decision (Kiosk.on_decision): verify, seal the
    holder to the fleet's key, build the scan message; then what the ingest worker does
    with it (parse, open the holder into its pseudonym, store)."""
    decision = verifier.verify(qr, at)
    scan_id = uuid.uuid4().hex
    sealer = Sealer(lambda: sealing_keys.load(config).current)
    message = messages.scan(scan_id=scan_id, kiosk=kiosk, ts=at.timestamp(),
                            decision=decision.decision, reason=str(decision.reason),
                            sub_reason=decision.sub_reason, cert_type=decision.type,
                            cert_hash=decision.cert_hash,
                            sealed=sealer(decision.holder, kiosk=kiosk, scan_id=scan_id),
                            policy="hcmc-2021")
    raw = messages.encode(message)
    doc = messages.parse_scan(raw, kiosk)
    doc["holder"] = sealing_keys.Unsealer(config).holder(doc, kiosk)
    del doc["sealed"]
    assert store.write([(kiosk, doc, raw)], []).scans == 1
    return doc


def test_a_minted_certificate_is_traced_by_ci_and_by_qr_to_what_kiosks_sent(
        api, fleet_config, es256, untrusted, make_verifier, clock):
    seed(api.sessions)
    case_dcc = es256.vaccination(date=clock.dose_date, family="Trần", given="Thị Hồng",
                                 dob="1987-06-05")
    ci = case_dcc["v"][0]["ci"]
    case_qr = es256.mint(case_dcc, iat=clock.issued, exp=clock.expires)
    near = es256.mint(es256.vaccination(date=clock.dose_date, family="Lê", given="Văn Bình",
                                        dob="1990-02-03"), iat=clock.issued, exp=clock.expires)
    late = es256.mint(es256.vaccination(date=clock.dose_date, family="Phạm", given="Thu",
                                        dob="1979-11-30"), iat=clock.issued, exp=clock.expires)
    verifier = make_verifier(es256)
    engine = make_engine(fleet_config.database_url)
    store = ScanStore(engine, deployment="test")
    at = clock.check
    def report(kiosk, qr, when):
        return kiosk_reports(store, kiosk, qr, when, verifier, fleet_config)
    case_doc = report("q1-a", case_qr, at)
    near_doc = report("q1-b", near, at + 10 * clock.hour / 60)  # same market
    report("q1-b", late, at + 45 * clock.hour / 60)  # outside 30 min
    report("q3-a", late, at + 5 * clock.hour / 60)  # another place
    engine.dispose()
    assert case_doc["cert"] == cert_hash(ci).hex()  # the kiosk sends the status key

    period = {"from": iso(NOW - 24 * HOUR), "to": iso(NOW + 24 * HOUR)}
    body = trace(api, ci=ci, **period).get_json()
    (visit,) = body["visits"]
    assert (visit["ts"], visit["kiosk"], visit["location"]["code"], visit["district"]) == (
        iso(at.timestamp()), "q1-a", "q1-market", "q1")
    assert [(c["holder"], c["cert_hash"], c["minutes_apart"]) for c in visit["contacts"]] == [
        (near_doc["holder"], near_doc["cert"], 10.0)]
    assert body["case"]["holders"] == [case_doc["holder"]] and body["contacts"] == 1
    # no name or birth date anywhere in the answer: pseudonyms only
    text = trace(api, ci=ci, format="csv", **period).get_data(as_text=True)
    for word in ("Trần", "Hồng", "1987-06-05", "Bình", "1990-02-03"):
        assert word not in str(body) and word not in text

    # by QR text: only once its issuer is in a trust list the fleet keeps
    refused = trace(api, status=422, qr=case_qr, **period).get_json()
    assert "not in the trust list" in refused["message"]
    with api.sessions() as s:
        trust_list.add(s, fleet_config, "test", es256.pem, actor="op",
                       key=bundles.ensure_signing_key(fleet_config))
    by_qr = trace(api, qr=case_qr, **period).get_json()
    assert by_qr["case"]["ci"] == ci and by_qr["visits"] == body["visits"]
    forged = untrusted.mint(es256.vaccination(date=clock.dose_date, ci=ci), iat=clock.issued,
                            exp=clock.expires)
    assert "not in the trust list" in trace(api, status=422, qr=forged, **period).get_json()[
        "message"]
    logged = audits(api)
    assert [(a.actor, a.target, a.detail["case"]["by"], a.detail["visits"]) for a in logged] == [
        ("health", cert_hash(ci).hex(), by, 1) for by in ("ci", "ci", "qr")]


# --- window, exclusions, holder pseudonyms, CSV ------------------------------------------------
@pytest.fixture
def scans(api, fleet_app):
    """A case (CASE, holder 'aa…') at the market and, without a location, at kiosk 'free';
    people around it."""
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(api.sessions)
    h = lambda c: c * 32  # noqa: E731  a holder pseudonym
    with api.sessions() as s:
        s.add_all([
            scan(1, "q1-a", ids.market, ids.q1, NOW - 2 * HOUR, cert=KEY, holder=h("a")),
            scan(2, "q1-b", ids.market, ids.q1, NOW - 2 * HOUR + 5 * MIN, cert="b" * 32,
                 holder=h("b")),
            scan(3, "q1-a", ids.market, ids.q1, NOW - 2 * HOUR - 29 * MIN, cert="c" * 32,
                 holder=h("c"), decision="red", reason="expired"),
            scan(4, "q1-a", ids.market, ids.q1, NOW - 2 * HOUR + 31 * MIN, cert="d" * 32,
                 holder=h("d")),  # outside the 30 minutes
            scan(5, "q1-c", ids.office, ids.q1, NOW - 2 * HOUR, cert="e" * 32,
                 holder=h("e")),  # same district, another location
            scan(6, "q1-b", ids.market, ids.q1, NOW - 2 * HOUR + 20 * MIN, cert="b" * 32,
                 holder=h("b")),  # b again: listed once, at the closest time
            scan(7, "q1-b", ids.market, ids.q1, NOW - 2 * HOUR + 1 * MIN, cert="f" * 32,
                 holder=h("a")),  # the case itself with another certificate: not a contact
            scan(8, "q1-b", ids.market, ids.q1, NOW - 2 * HOUR + 2 * MIN, cert=None,
                 holder=None, decision="red", reason="unreadable"),  # names nobody
            scan(9, "free", None, None, NOW - 1 * HOUR, cert=KEY, holder=h("a")),
            scan(10, "free", None, None, NOW - 1 * HOUR + 3 * MIN, cert="9" * 32,
                 holder=None),  # pseudonyms off there: the certificate hash identifies
            scan(11, "q1-a", ids.market, ids.q1, NOW - 40 * HOUR, cert=KEY, holder=h("a")),
            scan(12, "q1-d", ids.office, ids.q1, NOW - 3 * HOUR, cert="7" * 32,
                 holder=h("a")),  # the case's other certificate, elsewhere
            scan(13, "q1-d", ids.office, ids.q1, NOW - 3 * HOUR + 4 * MIN, cert="8" * 32,
                 holder=h("8")),
        ])
        s.execute(Location.__table__.update().where(Location.id == ids.market)
                  .values(name="=HYPERLINK(\"http://x\")"))
        s.commit()
    api.ids = ids
    return api


PERIOD = {"from": iso(NOW - 24 * HOUR), "to": iso(NOW)}


def test_contacts_are_the_others_at_the_same_place_within_the_window(scans):
    body = trace(scans, key=KEY, **PERIOD).get_json()
    assert body["window_minutes"] == 30.0 and body["since"] == PERIOD["from"]
    market, free = body["visits"]  # oldest first; the scan 40 h ago is outside the period
    assert (market["kiosk"], market["location"]["code"], free["kiosk"], free["location"]) == (
        "q1-a", "q1-market", "free", None)
    assert [(c["holder"], c["minutes_apart"], c["decision"]) for c in market["contacts"]] == [
        ("c" * 32, -29.0, "red"), ("b" * 32, 5.0, "green")]
    assert [(c["holder"], c["cert_hash"]) for c in free["contacts"]] == [(None, "9" * 32)]
    assert body["contacts"] == 3 and body["case"]["holders"] == ["a" * 32]
    assert body["case"]["certificates"] == [KEY]

    # the window is [web] trace_minutes unless the query says otherwise
    wider = trace(scans, key=KEY, minutes="32", **PERIOD).get_json()
    assert [c["holder"] for c in wider["visits"][0]["contacts"]] == ["c" * 32, "b" * 32,
                                                                     "d" * 32]
    # the holder's other certificate, through the pseudonym, only when asked
    both = trace(scans, key=KEY, same_holder="true", **PERIOD).get_json()
    assert [v["kiosk"] for v in both["visits"]] == ["q1-d", "q1-a", "q1-b", "free"]
    assert [c["holder"] for c in both["visits"][0]["contacts"]] == ["8" * 32]
    # a holder pseudonym names a case too (contacts of contacts)
    by_holder = trace(scans, holder="B" * 32, **PERIOD).get_json()
    assert [v["scan"] for v in by_holder["visits"]] == [2, 6]
    assert {c["holder"] for v in by_holder["visits"] for c in v["contacts"]} == {
        "a" * 32, "d" * 32}

    entries = audits(scans)
    assert len(entries) == 4
    assert entries[0].detail == {
        "case": {"by": "key", "key": KEY, "ci": None, "holder": None},
        "since": PERIOD["from"], "until": PERIOD["to"], "window_minutes": 30.0,
        "same_holder": False, "visits": 2, "contacts": 3, "format": "json"}
    assert entries[3].target == "holder:" + "b" * 32


def test_csv_export_has_a_row_per_contact_and_no_formulas(scans):
    response = trace(scans, ci=CASE, format="csv", **PERIOD)
    assert response.mimetype == "text/csv"
    assert re.match(r'attachment; filename="trace-[0-9a-f]{24}-2021-10-04-2021-10-05\.csv"',
                    response.headers["Content-Disposition"])
    assert response.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["case_kiosk"], r["contact_holder"], r["contact_cert_hash"], r["minutes_apart"])
            for r in rows] == [("q1-a", "c" * 32, "c" * 32, "-29.0"),
                               ("q1-a", "b" * 32, "b" * 32, "5.0"),
                               ("free", "", "9" * 32, "3.0")]
    assert rows[0]["location_name"].startswith("'=")  # a spreadsheet shows it, never runs it
    assert rows[0]["case_scan_time_utc"] == iso(NOW - 2 * HOUR)
    assert audits(scans)[-1].detail["format"] == "csv"
    # a case never scanned in the period: the header only, and still audited
    empty = trace(scans, ci="URN:UVCI:01:VN:NOBODY", format="csv", **PERIOD)
    assert empty.get_data(as_text=True).splitlines() == [",".join(
        ["case_scan_time_utc", "case_kiosk", "location", "location_name", "district",
         "case_decision", "contact_holder", "contact_cert_hash", "contact_scan_time_utc",
         "contact_kiosk", "contact_decision", "minutes_apart"])]
    assert audits(scans)[-1].detail["visits"] == 0
    # POST keeps the case out of URLs (and so out of access logs)
    response = scans.client.post("/api/v1/trace", json={"ci": CASE, **PERIOD},
                                 headers=scans.health)
    assert response.status_code == 200 and len(response.get_json()["visits"]) == 2


BAD_QUERIES = [
    ({}, 400, "exactly one of"),
    ({"ci": CASE, "key": KEY}, 400, "got ci, key"),
    ({"ci": "has spaces"}, 400, "not a certificate identifier"),
    ({"key": "xyz"}, 400, "32 hexadecimal digits"),
    ({"ci": CASE, "from": ""}, 400, "start of the period"),
    ({"ci": CASE, "from": "2021-10-01T00:00:00"}, 400, "no time zone"),
    ({"ci": CASE, "from": iso(NOW), "to": iso(NOW - HOUR)}, 400, "swap from and to"),
    ({"ci": CASE, "from": iso(NOW - 90 * 86400)}, 400, "at most 62 days"),
    ({"ci": CASE, "from": iso(NOW - HOUR), "minutes": "0"}, 400, "out of range"),
    ({"ci": CASE, "from": iso(NOW - HOUR), "minutes": "soon"}, 400, "not a number"),
    ({"ci": CASE, "from": iso(NOW - HOUR), "format": "xml"}, 400, "json or csv"),
    ({"ci": CASE, "from": iso(NOW - HOUR), "name": "x"}, 400, "unknown field name"),
    ({"qr": "HC1:NOT-BASE45!", "from": iso(NOW - HOUR)}, 422, "not a readable HC1"),
]


def test_bad_queries_are_explained_and_other_roles_refused_and_neither_audited(scans):
    # one test, not a parametrization: each case costs a request, not a fresh database
    for params, status, words in BAD_QUERIES:
        body = trace(scans, status=status, **params).get_json()
        assert words in body["message"], (params, body)
    assert audits(scans) == []

    # only health officials and admins trace
    query = {"ci": CASE, **PERIOD}
    for who in ("operator", "officer"):
        body = trace(scans, who=who, status=403, **query).get_json()
        assert "health_official" in body["message"]
    assert scans.client.get("/api/v1/trace?" + urlencode(query)).status_code == 401
    trace(scans, who="admin", **query)
    assert [a.actor for a in audits(scans)] == ["admin"]


# --- the page ----------------------------------------------------------------------------------
def login(client, name):
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/login", data={"csrf_token": token, "username": name,
                                           "password": "correct horse battery"})
    assert response.status_code == 302, response.get_data(as_text=True)
    # a login starts a new session with a new CSRF token
    html = client.get("/lists/status").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_the_page_traces_in_vietnam_time_and_downloads_csv(scans, fleet_app):
    client = fleet_app.test_client()
    token = login(client, "health")
    page = client.get("/trace?lang=en").get_data(as_text=True)
    assert 'name="certificate"' in page and audits(scans) == []  # opening it is no query
    form = {"csrf_token": token, "certificate": CASE, "holder": "",
            # 2021-10-04 15:00 .. 2021-10-05 15:00 in Ho Chi Minh City = PERIOD in UTC
            "from": "2021-10-04T15:00", "to": "2021-10-05T15:00", "minutes": "30"}
    html = client.post("/trace", data={**form, "format": "page"}).get_data(as_text=True)
    assert "2 scans of the case, 3 other holders" in html
    assert "c" * 32 in html and "2021-10-05 13:00:00" in html  # 06:00 UTC in Vietnam time
    (entry,) = audits(scans)
    assert (entry.detail["since"], entry.detail["until"], entry.detail["format"]) == (
        PERIOD["from"], PERIOD["to"], "page")
    download = client.post("/trace", data={**form, "format": "csv"})
    assert download.mimetype == "text/csv" and "b" * 32 in download.get_data(as_text=True)
    assert len(audits(scans)) == 2
    missing = client.post("/trace", data={**form, "certificate": "", "format": "page"})
    assert missing.status_code == 422 and "Name the case" in missing.get_data(as_text=True)
    assert client.post("/trace", data={**form, "csrf_token": "forged"}).status_code == 403
    assert len(audits(scans)) == 2

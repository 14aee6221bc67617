"""The bundles over HTTP (public, ETag / 304, ?from=, status-delta/<base>) and the list
management API (status, trust, policies): roles, validation messages, audit, versions;
on SQLite and PostgreSQL. The last test runs the kiosk's own HTTP fallback requests
against the fleet app on a real HTTP server."""

from __future__ import annotations

import base64
import hashlib
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from werkzeug.serving import make_server

from device.state import BundleStore
from fleet import bundles
from fleet.models import AuditLog
from greengate import bundle as gg_bundle
from greengate import status
from greengate.status import cert_hash
from tests.conftest_fleet import assign_officer_a_district

OCTET = "application/octet-stream"


@pytest.fixture
def fleet(api, fleet_config):
    """The API fixture plus the fleet's signing key (public half: fleet.pub)."""
    key = bundles.ensure_signing_key(fleet_config)
    with api.sessions() as session:  # version 1 of every list, as on a running fleet
        bundles.ensure_issued(session, fleet_config, "test")
    api.pub = key.public_key()
    api.config = fleet_config
    assign_officer_a_district(api.sessions)
    return api


def cis(prefix, n, **extra):
    return [{"ci": f"URN:UVCI:01:VN:{prefix}{i:04d}", **extra} for i in range(n)]


def revoke(fleet, entries, who="operator", **body):
    r = fleet.client.post("/api/v1/status/test/revoke", json={"entries": entries, **body},
                          headers=getattr(fleet, who))
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def opened(fleet, data):
    return gg_bundle.open_bundle(data, fleet.pub, "test")


# --- the bundles, as kiosks fetch them ---------------------------------------------------
def test_bundles_are_public_signed_bytes_with_an_etag(fleet):
    for kind in ("trust", "policy", "status", "status-head", "valuesets"):
        r = fleet.client.get(f"/api/v1/bundles/test/{kind}")  # no token: bundles are public
        assert r.status_code == 200 and r.mimetype == OCTET
        b = opened(fleet, r.data)
        assert (b.kind, b.version) == (kind, 1)
        etag = r.headers["ETag"]
        assert etag.strip('"') == hashlib.sha256(r.data).hexdigest()
        again = fleet.client.get(f"/api/v1/bundles/test/{kind}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.data == b""
        assert again.headers["ETag"] == etag
        other = fleet.client.get(f"/api/v1/bundles/test/{kind}",
                                 headers={"If-None-Match": '"0", W/"1"'})
        assert other.status_code == 200 and other.data == r.data


def test_a_change_changes_the_etag(fleet):
    first = fleet.client.get("/api/v1/bundles/test/status")
    revoke(fleet, cis("A", 1))
    r = fleet.client.get("/api/v1/bundles/test/status",
                         headers={"If-None-Match": first.headers["ETag"]})
    assert r.status_code == 200 and r.headers["ETag"] != first.headers["ETag"]
    assert opened(fleet, r.data).version == 2
    assert r.headers["X-Bundle-Version"] == "2"


def test_status_from_a_version_gives_the_delta_or_the_snapshot(fleet):
    revoke(fleet, cis("R", 200))  # v2: big enough for deltas to be worth it
    v2 = status.from_body(opened(fleet, fleet.client.get("/api/v1/bundles/test/status").data).body)
    revoke(fleet, cis("N", 2))  # v3
    snapshot = fleet.client.get("/api/v1/bundles/test/status")
    v3 = opened(fleet, snapshot.data)

    r = fleet.client.get("/api/v1/bundles/test/status?from=2")
    delta = opened(fleet, r.data)
    assert (delta.kind, delta.version, delta.body["from"]) == ("status-delta", 3, 2)
    assert r.headers["X-Bundle-Base"] == "2" and len(r.data) < len(snapshot.data)
    applied = status.apply_delta(v2, delta.body)
    assert applied.counts() == status.from_body(v3.body).counts() == (202, 0)
    same = fleet.client.get("/api/v1/bundles/test/status-delta/2")
    assert same.data == r.data and same.headers["ETag"] == r.headers["ETag"]
    assert fleet.client.get("/api/v1/bundles/test/status?from=2",
                            headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    # up to date: nothing to send
    assert fleet.client.get("/api/v1/bundles/test/status?from=3").status_code == 304
    # no delta from v1 (the empty list: a delta as big as the snapshot), nor from the future
    for held in (1, 99):
        r = fleet.client.get(f"/api/v1/bundles/test/status?from={held}")
        assert r.status_code == 200 and r.data == snapshot.data
    r = fleet.client.get("/api/v1/bundles/test/status-delta/1")
    assert r.status_code == 404
    assert "no delta from status version 1" in r.get_json()["message"]
    assert "/api/v1/bundles/test/status" in r.get_json()["message"]
    head = opened(fleet, fleet.client.get("/api/v1/bundles/test/status-head").data)
    assert status.parse_head(head.body) == (3, frozenset({2}))


def test_bundle_request_errors_say_what_to_ask_for(fleet):
    for url, code, words in [
        ("/api/v1/bundles/hanoi/trust", 404, "unknown deployment 'hanoi'"),
        ("/api/v1/bundles/test/kiosks", 404, "no bundle kind 'kiosks'"),
        ("/api/v1/bundles/test/status-delta", 404, "/status-delta/<base>"),
        ("/api/v1/bundles/test/status?from=latest", 400, "from='latest' is not a status version"),
    ]:
        r = fleet.client.get(url)
        assert r.status_code == code and words in r.get_json()["message"], url


def test_without_a_signing_key_the_answer_says_how_to_make_one(api):
    r = api.client.get("/api/v1/bundles/test/trust")
    assert r.status_code == 503
    assert "greengate-provision init" in r.get_json()["message"]


# --- status lists: roles ----------------------------------------------------------------
def test_who_may_change_status_lists(fleet):
    for who, code in [(None, 401), ("officer", 403), ("health", 200), ("operator", 200),
                      ("admin", 200)]:
        headers = getattr(fleet, who) if who else {}
        r = fleet.client.post("/api/v1/status/test/revoke", json={"entries": cis(who or "x", 1)},
                              headers=headers)
        assert r.status_code == code, (who, r.get_json())
        if code == 403:
            assert "district_officer" in r.get_json()["message"]
        if code == 401:
            assert "API token" in r.get_json()["message"]


def test_only_admins_and_operators_change_trust_and_policies(fleet):
    for method, url, body in [("post", "/api/v1/trust/test", {"certificate": "x"}),
                              ("delete", "/api/v1/trust/test/0011223344556677", None),
                              ("put", "/api/v1/policies/test/market", {"accept": ["v"]})]:
        for who in ("health", "officer"):
            r = getattr(fleet.client, method)(url, json=body, headers=getattr(fleet, who))
            assert r.status_code == 403 and "it needs operator" in r.get_json()["message"]


def test_everyone_logged_in_reads(fleet):
    for url in ("/api/v1/status/test/entries", "/api/v1/status/test/versions",
                "/api/v1/trust/test", "/api/v1/policies/test"):
        assert fleet.client.get(url).status_code == 401
        for who in ("officer", "health", "operator"):
            assert fleet.client.get(url, headers=getattr(fleet, who)).status_code == 200


# --- status lists: input ------------------------------------------------------------------
BAD_STATUS_REQUESTS = [
    ("revoke", None, 400, "send a JSON object"),
    ("revoke", {"entries": []}, 400, "non-empty list"),
    ("revoke", {"entries": [{"ci": "no spaces allowed"}]}, 422,
     "not a certificate identifier or HC1 QR text: 'no spaces allowed'"),
    ("revoke", {"entries": [{"qr": "HC1:6BF+70790T9WJWG.FKY*4GO0"}]}, 422,
     "not a readable HC1 QR text"),
    ("revoke", {"entries": [{"key": "zz"}]}, 422, "not a status key"),
    ("revoke", {"entries": [{"ci": "A1"}], "until": "2031-01-01T00:00:00Z"}, 422,
     "'until' belongs to a suspension"),
    ("revoke", {"entries": [{"ci": "A1"}], "colour": "red"}, 422, "unknown field colour"),
    ("suspend", {"entries": [{"ci": "A1"}]}, 422, "needs 'until'"),
    ("suspend", {"entries": [{"ci": "A1"}], "until": "2031-01-01T00:00"}, 422, "no time zone"),
    ("suspend", {"entries": [{"ci": "A1"}], "until": "2001-01-01T00:00:00Z"}, 422,
     "not in the future"),
]


def test_bad_status_requests_say_what_is_wrong_and_change_nothing(fleet):
    for action, body, code, words in BAD_STATUS_REQUESTS:
        kwargs = {"json": body} if body is not None else {"data": "revoke A1"}
        r = fleet.client.post(f"/api/v1/status/test/{action}", headers=fleet.operator, **kwargs)
        assert r.status_code == code, (body, r.get_json())
        assert words in r.get_json()["message"], (body, r.get_json())
    versions = fleet.client.get("/api/v1/status/test/versions", headers=fleet.operator)
    assert [v["action"] for v in versions.get_json()["versions"]] == ["initial"]


def test_suspend_entries_reinstate_and_history(fleet):
    r = fleet.client.post("/api/v1/status/test/suspend", headers=fleet.health, json={
        "entries": cis("S", 3, reason="F0, home isolation"),
        "until": "2031-01-01T00:00:00+07:00"})
    assert r.status_code == 200
    out = r.get_json()
    assert out["version"] == 2 and out["changed"] == 3
    assert out["published"].startswith("not configured")
    assert {e["until"] for e in out["entries"]} == {"2030-12-31T17:00:00.000Z"}
    revoke(fleet, cis("R", 2), reason="fraud")

    page1 = fleet.client.get("/api/v1/status/test/entries?limit=3", headers=fleet.officer)
    page1 = page1.get_json()
    assert len(page1["entries"]) == 3 and page1["next"] and page1["version"] == 3
    page2 = fleet.client.get(f"/api/v1/status/test/entries?limit=3&after={page1['next']}",
                             headers=fleet.officer).get_json()
    assert len(page2["entries"]) == 2 and page2["next"] is None
    keys = [e["key"] for e in page1["entries"] + page2["entries"]]
    assert keys == sorted(keys) and len(set(keys)) == 5
    suspended = fleet.client.get("/api/v1/status/test/entries?kind=suspended",
                                 headers=fleet.officer).get_json()["entries"]
    assert {e["kind"] for e in suspended} == {"suspended"} and len(suspended) == 3
    assert suspended[0]["reason"] == "F0, home isolation" and suspended[0]["by"] == "health"
    assert fleet.client.get("/api/v1/status/test/entries?kind=gone",
                            headers=fleet.officer).status_code == 400

    key = cert_hash("URN:UVCI:01:VN:S0001").hex()
    one = fleet.client.get(f"/api/v1/status/test/entries/{key}", headers=fleet.officer)
    assert one.get_json()["entry"]["ci"] == "URN:UVCI:01:VN:S0001"
    assert one.get_json()["history"] == [{"version": 2, "kind": "suspended",
                                          "until": "2030-12-31T17:00:00.000Z"}]
    r = fleet.client.post("/api/v1/status/test/reinstate", headers=fleet.health,
                          json={"entries": [{"key": key, "reason": "recovered"}]})
    assert r.get_json()["version"] == 4 and r.get_json()["entries"][0]["result"] == "reinstated"
    gone = fleet.client.get(f"/api/v1/status/test/entries/{key}", headers=fleet.officer)
    assert gone.status_code == 404
    assert "not on the status list" in gone.get_json()["message"]
    assert "reinstated in version 4" in gone.get_json()["message"]
    assert fleet.client.get("/api/v1/status/test/entries/xyz",
                            headers=fleet.officer).status_code == 400

    # revoked stays revoked, unless an admin corrects a mistake
    rkey = cert_hash("URN:UVCI:01:VN:R0000").hex()
    r = fleet.client.post("/api/v1/status/test/reinstate", headers=fleet.operator,
                          json={"entries": [{"key": rkey}]})
    assert r.status_code == 409 and "only an admin" in r.get_json()["message"]
    r = fleet.client.post("/api/v1/status/test/reinstate", headers=fleet.admin,
                          json={"entries": [{"key": rkey}], "reason": "wrong person"})
    assert r.status_code == 200 and r.get_json()["version"] == 5

    versions = fleet.client.get("/api/v1/status/test/versions?limit=2",
                                headers=fleet.officer).get_json()
    assert [(v["version"], v["actor"], v["action"], v["changes"])
            for v in versions["versions"]] == [(5, "admin", "status.reinstate", 1),
                                               (4, "health", "status.reinstate", 1)]
    assert versions["versions"][0]["bundle"]["etag"] == \
        fleet.client.get("/api/v1/bundles/test/status").headers["ETag"].strip('"')
    older = fleet.client.get(f"/api/v1/status/test/versions?after={versions['next']}",
                             headers=fleet.officer).get_json()
    assert [v["version"] for v in older["versions"]] == [3, 2, 1]
    assert older["versions"][-1]["action"] == "initial"
    with fleet.sessions() as s:
        actions = s.scalars(select(AuditLog.action).where(AuditLog.action.like("status.%"))
                            .order_by(AuditLog.id)).all()
    assert actions == ["status.suspend", "status.revoke", "status.reinstate", "status.reinstate"]


# --- trust list ---------------------------------------------------------------------------
def _ca_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some CSCA")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=99))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_trust_list_add_list_remove(fleet, es256, ps256):
    r = fleet.client.post("/api/v1/trust/test", headers=fleet.operator,
                          json={"certificate": es256.pem.decode(), "reason": "national DSC"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["certificate"]["kid"] == es256.kid.hex()
    assert r.get_json()["version"] == 2  # v1: the empty list issued on first use
    r = fleet.client.post("/api/v1/trust/test", headers={**fleet.operator,
                                                         "Content-Type": "application/pkix-cert"},
                          data=ps256.der)
    assert r.status_code == 201 and r.get_json()["version"] == 3
    listed = fleet.client.get("/api/v1/trust/test", headers=fleet.officer).get_json()
    assert [c["kid"] for c in listed["certificates"]] == [es256.kid.hex(), ps256.kid.hex()]
    assert listed["certificates"][0]["country"] == "VN" and listed["version"] == 3
    trust = opened(fleet, fleet.client.get("/api/v1/bundles/test/trust").data)
    assert trust.body["certificates"] == [es256.der, ps256.der]

    r = fleet.client.delete(f"/api/v1/trust/test/{es256.kid.hex()}?reason=compromised",
                            headers=fleet.admin)
    assert r.status_code == 200 and r.get_json()["version"] == 4
    assert [c["kid"] for c in r.get_json()["removed"]] == [es256.kid.hex()]
    trust = opened(fleet, fleet.client.get("/api/v1/bundles/test/trust").data)
    assert trust.body["certificates"] == [ps256.der]
    removed = fleet.client.get("/api/v1/trust/test?removed=true", headers=fleet.officer)
    assert removed.get_json()["certificates"][0]["removed_by"] == "admin"
    r = fleet.client.delete(f"/api/v1/trust/test/{es256.kid.hex()}", headers=fleet.admin)
    assert r.status_code == 404 and "no certificate with kid" in r.get_json()["message"]


def test_trust_list_refuses_what_is_not_a_signer_certificate(fleet):
    for body, words in [
        ({"certificate": "hello"}, "not a certificate"),
        ({"certificate": base64.b64encode(b"\x30\x03\x02\x01\x01").decode()},
         "not a certificate"),
        ({}, "'certificate' is required"),
        ({"certificate": _ca_certificate().decode()}, "this is a CA certificate"),
    ]:
        r = fleet.client.post("/api/v1/trust/test", headers=fleet.operator, json=body)
        assert r.status_code == 422 and words in r.get_json()["message"], r.get_json()
    assert fleet.client.get("/api/v1/trust/test", headers=fleet.operator).get_json()["version"] \
        == 1


def test_trust_list_refuses_duplicates_and_bad_kids(fleet, es256):
    body = {"certificate": es256.pem.decode()}
    assert fleet.client.post("/api/v1/trust/test", headers=fleet.operator,
                             json=body).status_code == 201
    r = fleet.client.post("/api/v1/trust/test", headers=fleet.operator, json=body)
    assert r.status_code == 409 and "already in the trust list" in r.get_json()["message"]
    r = fleet.client.delete("/api/v1/trust/test/nothex", headers=fleet.operator)
    assert r.status_code == 400 and "16 hex digits" in r.get_json()["message"]


def test_revoke_by_qr_needs_the_issuer_in_the_trust_list(fleet, es256, clock):
    dcc = es256.vaccination(date=clock.dose_date)
    qr = es256.mint(dcc, iat=clock.issued, exp=clock.expires)
    r = fleet.client.post("/api/v1/status/test/revoke", headers=fleet.health,
                          json={"entries": [{"qr": qr}]})
    assert r.status_code == 422 and "not in the trust list" in r.get_json()["message"]
    fleet.client.post("/api/v1/trust/test", headers=fleet.operator,
                      json={"certificate": es256.pem.decode()})
    out = revoke(fleet, [{"qr": qr, "reason": "duplicate issued"}], who="health")
    assert out["entries"][0]["ci"] == dcc["v"][0]["ci"]
    assert out["entries"][0]["key"] == cert_hash(dcc["v"][0]["ci"]).hex()


# --- policies -----------------------------------------------------------------------------
def test_policies_list_put_and_distribute(fleet, hcmc_document):
    listed = fleet.client.get("/api/v1/policies/test", headers=fleet.officer).get_json()
    assert [p["name"] for p in listed["policies"]] == ["accept-valid", "hcmc-2021"]
    assert listed["version"] == 1
    doc = hcmc_document()
    doc["name"] = "market"
    doc["accept"] = ["v"]
    r = fleet.client.put("/api/v1/policies/test/market?reason=market%20rules",
                         headers=fleet.operator, json=doc)
    assert r.status_code == 201 and r.get_json()["version"] == 2
    assert r.get_json()["result"] == "created"
    r = fleet.client.put("/api/v1/policies/test/market", headers=fleet.operator, json=doc)
    assert r.status_code == 200 and r.get_json()["result"] == "unchanged"
    assert r.get_json()["version"] == 2
    policy = opened(fleet, fleet.client.get("/api/v1/bundles/test/policy").data)
    market = policy.body["policies"]["market"]
    assert policy.version == 2 and "accept" not in market  # stored as its rule set
    assert market["rules"] and market["name"] == "market"
    assert "type_not_accepted" in {r["Identifier"] for r in market["rules"]}  # "accept": v
    one = fleet.client.get("/api/v1/policies/test/market", headers=fleet.officer).get_json()
    assert one["updated_by"] == "operator"
    assert fleet.client.get("/api/v1/policies/test/nope",
                            headers=fleet.officer).status_code == 404
    with fleet.sessions() as s:
        audit = s.scalars(select(AuditLog).where(AuditLog.action == "policy.create")).one()
    assert audit.target == "test/market" and audit.detail["reason"] == "market rules"


def test_invalid_policies_are_refused_with_the_reason(fleet, hcmc_document):
    for name, change, code, words in [
        ("hcmc-2021", {"vaccination": {"min_dose": 2}}, 422,
         "invalid policy 'hcmc-2021': policy field 'vaccination.min_dose' is unknown"),
        ("hcmc-2021", {"accept": ["x"]}, 422, "'accept' must list some of"),
        ("hcmc-2021", {"timezone": "Mars/Olympus"}, 422, "timezone 'Mars/Olympus' is unknown"),
        ("other", {}, 422, "named 'hcmc-2021' but is sent as 'other'"),
        ("bad name!", {}, 400, "is not allowed"),
    ]:
        doc = hcmc_document()
        doc.update(change)
        r = fleet.client.put(f"/api/v1/policies/test/{name}", headers=fleet.operator, json=doc)
        assert r.status_code == code, r.get_json()
        assert words in r.get_json()["message"]
    r = fleet.client.put("/api/v1/policies/test/x", headers=fleet.operator, data="accept v")
    assert r.status_code == 400 and "JSON object" in r.get_json()["message"]


def test_unknown_deployment_in_the_management_api(fleet):
    r = fleet.client.get("/api/v1/status/hanoi/entries", headers=fleet.admin)
    assert r.status_code == 404 and "unknown deployment 'hanoi'" in r.get_json()["message"]


# --- the kiosk's HTTP fallback against the real app -------------------------------------
@pytest.fixture
def http_fleet(fleet):
    server = make_server("127.0.0.1", 0, fleet.client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fleet.url = f"http://127.0.0.1:{server.server_port}"
    yield fleet
    server.shutdown()
    thread.join()


def kiosk_fetch(url: str, etag: str | None):
    """What device/kiosk.py's _http_fallback does for one kind: (status, body, etag)."""
    request = urllib.request.Request(url)
    if etag:
        request.add_header("If-None-Match", etag)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read(), response.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        return exc.code, b"", etag


def test_the_kiosks_http_fallback_gets_its_lists_from_the_fleet(http_fleet, tmp_path, es256,
                                                                 clock):
    fleet = http_fleet
    fleet.client.post("/api/v1/trust/test", headers=fleet.operator,
                      json={"certificate": es256.pem.decode()})
    revoke(fleet, cis("R", 100))
    store = BundleStore(tmp_path / "kiosk", fleet.pub, "test", "hcmc-2021", timedelta(hours=72))
    etags = {}
    for kind in ("trust", "policy", "status", "valuesets"):
        code, body, etags[kind] = kiosk_fetch(f"{fleet.url}/api/v1/bundles/test/{kind}", None)
        assert code == 200
        assert store.offer(body, "http") == (True, "applied")
    assert store.verifier is not None and store.versions() == {"trust": 2, "policy": 1,
                                                                "status": 2, "valuesets": 1}
    for kind in ("trust", "policy", "valuesets"):
        assert kiosk_fetch(f"{fleet.url}/api/v1/bundles/test/{kind}", etags[kind])[0] == 304
    assert kiosk_fetch(f"{fleet.url}/api/v1/bundles/test/status?from=2", etags["status"])[0] \
        == 304
    # a revocation: the kiosk asks from the version it holds and gets the small delta
    dcc = es256.vaccination(date=clock.dose_date)
    qr = es256.mint(dcc, iat=clock.issued, exp=clock.expires)
    assert store.verifier.verify(qr, clock.check).reason == "ok"
    revoke(fleet, [{"qr": qr}], who="health")
    code, body, _ = kiosk_fetch(f"{fleet.url}/api/v1/bundles/test/status?from=2",
                                etags["status"])
    assert code == 200 and opened(fleet, body).kind == "status-delta"
    assert store.offer(body, "http") == (True, "applied")
    assert store.versions()["status"] == 3
    assert store.verifier.verify(qr, clock.check).reason == "revoked"


def test_a_created_signing_key_folder_is_private(fleet_config):
    """`bundles key --create` on a fresh fleet makes the key's folder as `init` would (0700):
    it will hold the fleet's private keys."""
    import stat
    path = bundles.signing_key_path(fleet_config)
    assert not path.parent.exists()
    bundles.ensure_signing_key(fleet_config)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

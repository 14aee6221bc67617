"""Worker rosters: the bundle format (greengate/roster.py), a kiosk's BundleStore taking
roster bundles (tampered, rolled back, for another kiosk: refused; deltas on the base held),
the workers-only check in the Verifier, and the fleet's side (fleet/rosters.py: keys,
publish, the policy bundle's workers_only map, the locations API) on SQLite and PostgreSQL.
Real certificates (provisioning's Issuer), real signed bundles, no mocks."""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import timedelta

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from device.state import BundleStore
from greengate import bundle, keyset, roster, sealing
from greengate import status as status_format
from greengate.roster import NOT_ON_ROSTER, ROSTER_MISSING
from greengate.status import StatusList, cert_hash
from greengate.trust import TrustList, load_signer
from greengate.verifier import Verifier
from greengate import policy as policies

KEY = bytes(range(32))
PERSON = {"family": "Lê", "given": "Văn Tám", "dob": "1985-03-04"}
STRANGER = {"family": "Phạm", "given": "Thị Lan", "dob": "1992-11-30"}
STD = ("LE", "VAN<TAM", "1985-03-04")  # PERSON as the DCC's fnt/gnt/dob


# --- the format -------------------------------------------------------------------
def test_entry_is_the_documented_hmac_of_the_sealed_identity():
    identity = sealing.identity_bytes(STD)
    assert identity == b"LE\x1fVAN<TAM\x1f1985-03-04"
    want = hmac.new(KEY, b"greengate-roster-v1\x00" + identity, hashlib.sha256).digest()[:16]
    assert roster.entry(KEY, identity) == want and len(want) == roster.ENTRY_BYTES
    assert roster.holder_entry(KEY, STD) == want
    assert roster.entry(bytes(32), identity) != want  # another organisation, another entry
    assert roster.cert_entry("URN:UVCI:01:VN:X") == cert_hash("URN:UVCI:01:VN:X")


def test_body_round_trip_and_member():
    body = roster.roster_body("acme", ["k2", "k1"], KEY, [roster.holder_entry(KEY, STD)],
                              [roster.cert_entry("URN:UVCI:01:VN:ONLY")])
    r = roster.parse_roster(cbor2.loads(cbor2.dumps(body)), 7)
    assert (r.organisation, r.kiosks, r.version, len(r)) == ("acme", {"k1", "k2"}, 7, 2)
    assert r.member(sealing.identity_bytes(STD))
    assert not r.member(sealing.identity_bytes(("LE", "VAN<TAM", "1985-03-05")))
    assert r.member(b"nobody", "URN:UVCI:01:VN:ONLY") and not r.member(b"nobody", "URN:X")
    assert r.member_hash(None, cert_hash("URN:UVCI:01:VN:ONLY"))
    empty = roster.parse_roster(roster.roster_body("acme", ["k1"], KEY), 1)
    assert not empty.member(sealing.identity_bytes(STD), "URN:UVCI:01:VN:ONLY")


EMPTY = b"\x01\x00"  # a keyset of no keys
OK = {"organisation": "acme", "kiosks": ["k1"], "key": KEY, "holders": EMPTY, "certs": EMPTY}
BAD_BODIES = [
    None, 3, b"x", [], {},
    {k: v for k, v in OK.items() if k != "certs"},
    {**OK, "organisation": ""}, {**OK, "organisation": 7},
    {**OK, "kiosks": "k1"}, {**OK, "kiosks": ["k 1"]}, {**OK, "kiosks": ["k1"] * 10_001},
    {**OK, "key": KEY[:16]}, {**OK, "key": "00" * 32},
    {**OK, "holders": b"\x09\x00"}, {**OK, "holders": b"\x01\x05"}, {**OK, "certs": [1, 2]},
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_a_bad_body_is_a_value_error(body):
    with pytest.raises(ValueError):
        roster.parse_roster(body, 1)


def test_parsing_is_total_on_random_bytes():
    good = cbor2.dumps(roster.roster_body("acme", ["k1"], KEY, [os.urandom(16) for _ in range(50)]))
    for i in range(400):
        data = bytearray(good)
        for _ in range(1 + i % 4):
            data[(i * 7919 + _ * 104729) % len(data)] ^= 1 + (i % 255)
        try:
            body = cbor2.loads(bytes(data))
        except Exception:
            continue
        try:
            r = roster.parse_roster(body, 1)
        except ValueError:
            continue
        r.member(b"x", "y")  # whatever parsed, looks up
    for _ in range(200):
        try:
            roster.parse_roster({"organisation": "a", "kiosks": ["k"], "key": KEY,
                                 "holders": os.urandom(20), "certs": b"\x01\x00"})
        except ValueError:
            pass


def test_delta_adds_and_removes_on_its_base_only():
    a, b, c = (roster.holder_entry(KEY, (f"P{i}", "X", "2000-01-01")) for i in range(3))
    base = roster.parse_roster(roster.roster_body("acme", ["k1"], KEY, [a, b]), 4)
    body = roster.delta_body(4, "acme", ["k1", "k2"], add_holders=[c], remove_holders=[a],
                             add_certs=[roster.cert_entry("CI")])
    new = roster.apply_delta(base, body, 9)
    who = lambda r, i: r.member(sealing.identity_bytes((f"P{i}", "X", "2000-01-01")))  # noqa: E731
    assert (new.version, new.kiosks, [who(new, i) for i in range(3)]) == \
        (9, {"k1", "k2"}, [False, True, True])
    assert new.member(None, "CI") and [who(base, i) for i in range(3)] == [True, True, False]
    with pytest.raises(ValueError, match="applies on v3"):
        roster.apply_delta(base, roster.delta_body(3, "acme", ["k1"]), 9)
    with pytest.raises(ValueError, match="for 'other'"):
        roster.apply_delta(base, roster.delta_body(4, "other", ["k1"]), 9)
    with pytest.raises(ValueError):
        roster.apply_delta(base, {"from": 4}, 9)
    # an entry both added and removed is added
    both = roster.delta_body(4, "acme", ["k1"], add_holders=[a], remove_holders=[a])
    assert who(roster.apply_delta(base, both, 5), 0)


# --- the kiosk's store ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet_key():
    return ec.generate_private_key(ec.SECP256R1())


def sign(key, kind, version, body, deployment="test"):
    # a day before the tests' CHECK (2021-10-05 08:00 UTC): inside the offline budget
    return bundle.seal(kind, version, 1_633_334_400 + version, body, key, deployment)


def roster_raw(key, version, *, org="acme", kiosks=("k1",), holders=(), certs=(),
               deployment="test", roster_key=KEY):
    return sign(key, "roster", version, roster.roster_body(org, kiosks, roster_key, holders,
                                                           certs), deployment)


def store_for(tmp_path, key, kiosk="k1"):
    return BundleStore(tmp_path / kiosk, key.public_key(), "test", "hcmc-2021",
                       timedelta(hours=72), kiosk_id=kiosk)


def test_store_refuses_tampered_rolled_back_foreign_and_other_kiosk_rosters(tmp_path, fleet_key):
    store = store_for(tmp_path, fleet_key)
    member = roster.holder_entry(KEY, STD)
    raw = roster_raw(fleet_key, 5, holders=[member])
    tampered = bytearray(raw)
    tampered[-40] ^= 1
    assert store.offer(bytes(tampered))[0] is False and store.roster is None
    other_key = ec.generate_private_key(ec.SECP256R1())
    assert store.offer(roster_raw(other_key, 6))[0] is False
    assert store.offer(roster_raw(fleet_key, 6, deployment="hanoi"))[0] is False
    ok, why = store.offer(roster_raw(fleet_key, 6, kiosks=("k2", "k3")))
    assert not ok and "not for this kiosk" in why and store.roster is None
    assert store.offer(raw) == (True, "applied")
    assert store.roster.version == 5 and store.roster.member(sealing.identity_bytes(STD))
    ok, why = store.offer(roster_raw(fleet_key, 4, holders=[member, os.urandom(16)]))
    assert not ok and "rollback" in why
    ok, why = store.offer(roster_raw(fleet_key, 5))
    assert not ok and "differs" in why
    assert store.offer(raw) == (False, "already held")
    refused = store.refused
    # another organisation's roster, newer (the kiosk moved): taken
    assert store.offer(roster_raw(fleet_key, 8, org="bravo", roster_key=bytes(32)))[0]
    assert store.roster.organisation == "bravo" and store.refused == refused
    # kept across a restart, verified again
    again = store_for(tmp_path, fleet_key)
    assert again.roster.version == 8 and again.roster.organisation == "bravo"


def test_store_applies_deltas_on_its_base_and_replays_them(tmp_path, fleet_key):
    store = store_for(tmp_path, fleet_key)
    a, b = roster.holder_entry(KEY, STD), roster.holder_entry(KEY, ("X", "Y", "2001-01-01"))
    delta = sign(fleet_key, "roster-delta", 9, roster.delta_body(5, "acme", ["k1"],
                                                                 add_holders=[b],
                                                                 remove_holders=[a]))
    assert store.offer(delta)[0] is False and store.roster is None  # no base: waits for it
    assert store.offer(roster_raw(fleet_key, 5, holders=[a]))[0]
    ok, why = store.offer(sign(fleet_key, "roster-delta", 9,
                               roster.delta_body(4, "acme", ["k1"], add_holders=[b])))
    assert not ok and "does not apply" in why
    assert store.offer(delta) == (True, "applied")
    held = store.roster
    assert held.version == 9 and not held.member(sealing.identity_bytes(STD))
    assert held.member(sealing.identity_bytes(("X", "Y", "2001-01-01")))
    again = store_for(tmp_path, fleet_key)  # base + signed delta replayed
    assert again.roster.version == 9 and again.roster.holders == held.holders
    # a full roster supersedes the deltas held
    assert store.offer(roster_raw(fleet_key, 10, holders=[a]))[0]
    assert not list((tmp_path / "k1").glob("roster-delta-*"))
    assert store_for(tmp_path, fleet_key).roster.member(sealing.identity_bytes(STD))


# --- the workers-only check -------------------------------------------------------------
@pytest.fixture
def make(es256, clock):
    def verifier(workers_only="acme", held=None, status=None):
        return Verifier(TrustList([load_signer(es256.der)]), policies.load("hcmc-2021"),
                        status=status, workers_only=workers_only, roster=held)

    def cert(who=PERSON, *, dose=2, ci=None, exp=None):
        return es256.mint(es256.vaccination(date=clock.dose_date, dose=dose, of=2, ci=ci, **who),
                          iat=clock.issued, exp=exp or clock.expires)
    return verifier, cert


def test_workers_only_member_stranger_red_member_and_missing_roster(make, clock, es256):
    verifier, cert = make
    held = roster.parse_roster(roster.roster_body("acme", ["k1"], KEY,
                                                  [roster.holder_entry(KEY, STD)]), 3)
    v = verifier(held=held)
    member = v.verify(cert(), clock.check)
    assert (member.decision, member.reason) == ("green", "ok")
    stranger = v.verify(cert(STRANGER), clock.check)
    assert (stranger.decision, stranger.reason, stranger.sub_reason) == \
        ("red", "policy_failed", NOT_ON_ROSTER)
    assert stranger.cert_hash and stranger.holder  # the scan still says who was turned away
    # a member's red certificate keeps its own reason
    expired = v.verify(cert(exp=clock.check - clock.day), clock.check)
    assert (expired.reason, expired.sub_reason) == ("expired", None)
    ci = "URN:UVCI:01:VN:REVOKEDONE"
    revoked_status = StatusList()
    revoked_status.revoke(cert_hash(ci))
    revoked = verifier(held=held, status=revoked_status).verify(cert(ci=ci), clock.check)
    assert revoked.reason == "revoked"
    positive = es256.mint(es256.test(sampled=clock.check - clock.hour, result="positive",
                                     **PERSON), iat=clock.issued, exp=clock.expires)
    failed = v.verify(positive, clock.check)  # the policy's own sub-reason, not the roster's
    assert failed.reason == "policy_failed" and failed.sub_reason not in (None, NOT_ON_ROSTER)
    # no roster, or only another organisation's: nobody is green
    for v2 in (verifier(held=None), verifier(workers_only="bravo", held=held)):
        d = v2.verify(cert(), clock.check)
        assert (d.decision, d.reason, d.sub_reason) == ("red", "policy_failed", ROSTER_MISSING)
    # an ordinary (visitors') kiosk ignores rosters
    assert verifier(workers_only=None, held=None).verify(cert(STRANGER), clock.check).green


def test_the_next_certificate_of_a_member_still_matches_a_cert_entry_only_its_own(make, clock):
    verifier, cert = make
    only = "URN:UVCI:01:VN:LINKEDBYCI"
    held = roster.parse_roster(roster.roster_body(
        "acme", ["k1"], KEY, [roster.holder_entry(KEY, STD)], [roster.cert_entry(only)]), 3)
    v = verifier(held=held)
    # another ci, another dose, another kind of certificate: the holder matches
    assert v.verify(cert(dose=2, ci="URN:UVCI:01:VN:BOOSTER3"), clock.check).green
    assert v.verify(cert(dose=2), clock.check).green
    # a stranger linked by one certificate: that certificate only
    assert v.verify(cert(STRANGER, ci=only), clock.check).green
    d = v.verify(cert(STRANGER, ci="URN:UVCI:01:VN:HERNEXT"), clock.check)
    assert d.sub_reason == NOT_ON_ROSTER


def test_store_builds_a_workers_only_verifier_from_the_policy_bundle(tmp_path, fleet_key, es256,
                                                                     make, clock):
    _, cert = make
    store = store_for(tmp_path, fleet_key)
    trust = sign(fleet_key, "trust", 1, {"certificates": [es256.der]})
    policy_doc = policies_doc()
    status = sign(fleet_key, "status", 1, status_format.snapshot_body())
    pol = sign(fleet_key, "policy", 1, {"policies": policy_doc, "assigned": {},
                                        "workers_only": {"k1": "acme"}})
    for raw in (trust, status, pol):
        assert store.offer(raw) == (True, "applied")
    assert store.workers_only == "acme"
    assert store.verifier.verify(cert(), clock.check).sub_reason == ROSTER_MISSING
    assert store.offer(roster_raw(fleet_key, 2, holders=[roster.holder_entry(KEY, STD)]))[0]
    assert store.verifier.verify(cert(), clock.check).green
    assert store.verifier.verify(cert(STRANGER), clock.check).sub_reason == NOT_ON_ROSTER
    # the policy bundle stops naming the kiosk: an ordinary kiosk again
    assert store.offer(sign(fleet_key, "policy", 2, {"policies": policy_doc, "assigned": {},
                                                     "workers_only": {}}))[0]
    assert store.workers_only is None and store.verifier.verify(cert(STRANGER), clock.check).green
    # restart: the stored policy and roster bring it back
    assert store.offer(sign(fleet_key, "policy", 3, {"policies": policy_doc, "assigned": {},
                                                     "workers_only": {"k1": "acme"}}))[0]
    again = store_for(tmp_path, fleet_key)
    assert again.workers_only == "acme" and again.verifier.verify(cert(), clock.check).green
    assert again.verifier.verify(cert(STRANGER), clock.check).sub_reason == NOT_ON_ROSTER


def policies_doc():
    import json
    from importlib import resources
    text = resources.files("greengate").joinpath("policies", "hcmc-2021.json").read_text()
    return {"hcmc-2021": json.loads(text)}


def test_keyset_prefixes_are_what_the_body_carries():
    entries = [os.urandom(16) for _ in range(100)]
    body = roster.roster_body("acme", ["k1"], KEY, entries)
    assert sorted(keyset.decode(body["holders"]).tolist()) == \
        sorted(int.from_bytes(e[:8], "big") for e in entries)


# --- the fleet's side ------------------------------------------------------------------
@pytest.fixture
def fleet(api, fleet_config, es256):
    from fleet import bundles, kiosks, organisations
    from fleet.models import District, Location

    key = bundles.ensure_signing_key(fleet_config)
    with api.sessions() as session:
        bundles.ensure_issued(session, fleet_config, "test")
        district = District(code="q7", name="Quận 7")
        session.add(district)
        session.flush()
        for code in ("acme", "bravo"):
            org = organisations.create(session, code=code, name=code.upper(), kind="business",
                                       district=district, actor="admin", at=1.0)
            session.flush()
            session.add(Location(code=f"{code}-gate", name="Cổng", district_id=district.id,
                                 organisation_id=org.id))
        session.add(Location(code="market", name="Chợ", district_id=district.id))
        session.flush()
        gate = session.scalar(select(Location).where(Location.code == "acme-gate"))
        for kiosk_id in ("k1", "k2"):
            kiosks.register(session, fleet_config, kiosk_id=kiosk_id, deployment="test",
                            policy="hcmc-2021", location=gate, actor="admin", at=1.0)
        session.commit()
    r = api.client.post("/api/v1/trust/test", headers=api.operator,
                        json={"certificate": es256.pem.decode()})
    assert r.status_code in (200, 201), r.get_json()
    api.pub, api.config = key.public_key(), fleet_config
    return api


def served(fleet, kind):
    r = fleet.client.get(f"/api/v1/bundles/test/{kind}")
    assert r.status_code == 200
    return r.data


def add_worker(session, org_code, *, holder=None, cert=None, removed=False):
    from fleet.models import Organisation, Worker
    org = session.scalar(select(Organisation).where(Organisation.code == org_code))
    session.add(Worker(organisation_id=org.id, display_name="N", holder_key=holder,
                       cert_key=cert, created_at=1.0, created_by="t",
                       removed_at=2.0 if removed else None))


def test_roster_keys_are_per_organisation_from_a_private_secret(fleet_config):
    from fleet import rosters
    a, b = rosters.org_key(fleet_config, "acme"), rosters.org_key(fleet_config, "bravo")
    assert len(a) == 32 and a != b and rosters.org_key(fleet_config, "acme") == a
    path = rosters.secret_path(fleet_config)
    assert path.stat().st_mode & 0o777 == 0o600
    entry = rosters.holder_entry_hex(fleet_config, "acme", STD)
    assert entry == roster.holder_entry(a, STD).hex() and len(entry) == 32
    assert rosters.identity_entry_hex(fleet_config, "acme", sealing.identity_bytes(STD)) == entry
    assert rosters.cert_entry_hex("URN:X") == cert_hash("URN:X").hex()
    path.write_text("not hex\n")
    with pytest.raises(rosters.RosterError, match="64 hex digits"):
        rosters.org_key(fleet_config, "acme")


def test_a_workers_only_kiosk_end_to_end_through_the_fleet(fleet, tmp_path, make, clock):
    from fleet import rosters
    from fleet.models import Organisation, PublishedBundle
    _, cert = make
    config = fleet.config
    r = fleet.client.patch("/api/v1/locations/market", headers=fleet.operator,
                           json={"workers_only": True})
    assert r.status_code == 422 and "organisation" in r.get_json()["message"]
    r = fleet.client.patch("/api/v1/locations/acme-gate", headers=fleet.operator,
                           json={"workers_only": "yes"})
    assert r.status_code == 422
    r = fleet.client.patch("/api/v1/locations/acme-gate", headers=fleet.operator,
                           json={"workers_only": True})
    assert r.status_code == 200 and r.get_json()["workers_only"] is True
    assert fleet.client.get("/api/v1/locations/market",
                            headers=fleet.operator).get_json()["workers_only"] is False
    policy = bundle.open_bundle(served(fleet, "policy"), fleet.pub, "test")
    assert policy.body["workers_only"] == {"k1": "acme", "k2": "acme"}
    with fleet.sessions() as session:
        assert rosters.workers_only_kiosks(session, "test") == {"k1": "acme", "k2": "acme"}
        # the change issued an (empty) roster naming both kiosks
        first = rosters.current(session, "test")
        assert set(first) == {"k1", "k2"}

    store = BundleStore(tmp_path / "k1", fleet.pub, "test", "hcmc-2021", timedelta(hours=72),
                        kiosk_id="k1")
    for kind in ("trust", "policy", "status"):
        assert store.offer(served(fleet, kind), "http")[0]
    assert store.offer(first["k1"][1])[0]
    # an empty roster: nobody is green, strangers are named so
    assert store.verifier.verify(cert(), clock.check).sub_reason == NOT_ON_ROSTER

    with fleet.sessions() as session:
        add_worker(session, "acme", holder=rosters.holder_entry_hex(config, "acme", STD))
        add_worker(session, "acme", cert=rosters.cert_entry_hex("URN:UVCI:01:VN:CIONLY"))
        add_worker(session, "acme", holder=rosters.holder_entry_hex(
            config, "acme", ("PHAM", "THI<LAN", "1992-11-30")), removed=True)
        add_worker(session, "acme", holder="not hex at all")  # left out, logged
        org = session.scalar(select(Organisation).where(Organisation.code == "acme"))
        assert rosters.publish(session, config, org, actor="manager") == ["test"]
        session.commit()
        now = rosters.current(session, "test")
        assert now["k1"][0] > first["k1"][0] and now["k1"][1] == now["k2"][1]
        bodies = session.scalars(select(PublishedBundle.raw).where(
            PublishedBundle.kind == "roster")).all()
        assert all("Phạm".encode() not in bytes(raw) and b"THI<LAN" not in bytes(raw)
                   for raw in bodies)  # no names, not even standardised ones
    assert store.offer(now["k1"][1]) == (True, "applied")
    assert store.verifier.verify(cert(), clock.check).green
    # a removed worker is not on it
    assert store.verifier.verify(cert(STRANGER), clock.check).sub_reason == NOT_ON_ROSTER
    assert store.verifier.verify(cert(STRANGER, ci="URN:UVCI:01:VN:CIONLY"), clock.check).green
    assert store.offer(first["k1"][1])[0] is False  # the older roster: rollback refused

    # k2 moves to bravo's gate: bravo's roster names it, acme's newest does not any more
    r = fleet.client.patch("/api/v1/kiosks/k2", headers=fleet.operator,
                           json={"location": "bravo-gate"})
    assert r.status_code == 200, r.get_json()
    with fleet.sessions() as session:
        moved = rosters.current(session, "test")
        body = bundle.open_bundle(moved["k2"][1], fleet.pub).body
        assert roster.parse_roster(body).organisation == "bravo"
        assert rosters.workers_only_kiosks(session, "test") == {"k1": "acme"}
        assert moved["k2"][0] > now["k1"][0]
    # a kiosk enrolled at the workers-only gate is in both before its first scan
    r = fleet.client.post("/api/v1/kiosks", headers=fleet.operator,
                          json={"id": "k3", "location": "acme-gate"})
    assert r.status_code == 201, r.get_json()
    policy = bundle.open_bundle(served(fleet, "policy"), fleet.pub, "test")
    assert policy.body["workers_only"] == {"k1": "acme", "k3": "acme"}
    with fleet.sessions() as session:
        named = roster.parse_roster(bundle.open_bundle(
            rosters.current(session, "test")["k3"][1], fleet.pub).body)
        assert named.kiosks == {"k1", "k3"} and named.organisation == "acme"

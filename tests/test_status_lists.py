"""The fleet's status lists, trust list and policies as a service (fleet/status_lists.py,
fleet/bundles.py, fleet/trust_list.py, fleet/policies.py) on SQLite and PostgreSQL:
versions, signed snapshots, deltas that turn the previous snapshot into exactly the
next one, lapsed suspensions, QR-based revocation with real certificates, audit rows,
concurrent changes, refresh and the bundle-signing key."""

from __future__ import annotations

import base64
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import func, select

from fleet import bundles, policies, sealing_keys, status_lists, trust_list
from fleet.bundles import ListError
from fleet.cli import main as fleet_cli
from fleet.config import load
from fleet.models import (AuditLog, ListVersion, Policy, PublishedBundle, StatusChange,
                          StatusEntry)
from greengate import bundle as gg_bundle
from greengate import status
from greengate.status import cert_hash
from provisioning.issuer import Issuer

T0 = 1_800_000_000.0  # a fixed "now" for the service calls (2027-01-15)
DAY = 86400.0


@pytest.fixture
def lists(fleet_config, fleet_db):
    """config (3 deltas), sessions, key, pub, and helpers to read what was signed."""
    config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]),
                  bundles={"deltas": 3})
    key = bundles.ensure_signing_key(config)
    ns = SimpleNamespace(config=config, sessions=fleet_db, key=key, pub=key.public_key(),
                         dep="test")

    def opened(row):
        return gg_bundle.open_bundle(row.raw, ns.pub, ns.dep)

    def snapshot(session):
        row = bundles.latest(session, ns.dep, "status")
        b = opened(row)
        assert b.kind == "status" and b.version == row.version
        return b.version, status.from_body(b.body)

    ns.opened, ns.snapshot = opened, snapshot
    return ns


def cis(prefix: str, n: int) -> list[dict]:
    return [{"ci": f"URN:UVCI:01:VN:{prefix}{i:05d}", "reason": f"batch {prefix}"}
            for i in range(n)]


def same(a: status.StatusList, b: status.StatusList) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.arrays(), b.arrays()))


def moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def test_revoke_suspend_reinstate_make_versions(lists):
    with lists.sessions() as s:
        assert bundles.ensure_issued(s, lists.config, "test") == ["trust", "policy", "status",
                                                                  "valuesets"]
        assert lists.snapshot(s)[0] == 1
        r = status_lists.revoke(s, lists.config, "test",
                                [{"ci": "URN:UVCI:01:VN:AAA", "reason": "fraud"},
                                 {"key": cert_hash("URN:UVCI:01:VN:BBB").hex()}],
                                actor="alice", now=T0)
        assert (r.version, r.changed) == (2, 2)
        assert [e["result"] for e in r.entries] == ["revoked", "revoked"]
        r = status_lists.suspend(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:CCC"}],
                                 until="2027-01-20T00:00:00+07:00", actor="bob", now=T0 + 1)
        assert (r.version, r.changed) == (3, 1)
        version, current = lists.snapshot(s)
        assert version == 3
        at = moment(T0 + 2)
        assert current.lookup(cert_hash("URN:UVCI:01:VN:AAA"), at).kind == "revoked"
        assert current.lookup(cert_hash("URN:UVCI:01:VN:BBB"), at).kind == "revoked"
        suspended = current.lookup(cert_hash("URN:UVCI:01:VN:CCC"), at)
        assert suspended.kind == "suspended"
        assert suspended.until == datetime(2027, 1, 19, 17, tzinfo=timezone.utc)  # +07:00

        # nothing changes: no new version
        r = status_lists.revoke(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:AAA"}],
                                actor="alice", now=T0 + 3)
        assert (r.version, r.changed, r.entries[0]["result"]) == (3, 0, "unchanged")
        # a revoked certificate is not weakened to suspended
        r = status_lists.suspend(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:AAA"}],
                                 until=T0 + DAY, actor="bob", now=T0 + 3)
        assert r.changed == 0 and "permanent" in r.entries[0]["note"]
        # reinstating: the suspended one yes; a revoked one only for an admin
        r = status_lists.reinstate(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:CCC"}],
                                   actor="bob", now=T0 + 4)
        assert (r.version, r.entries[0]["result"]) == (4, "reinstated")
        with pytest.raises(ListError) as info:
            status_lists.reinstate(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:AAA"}],
                                   actor="bob", now=T0 + 5)
        assert info.value.status == 409 and "only an admin" in info.value.message
        assert bundles.current_version(s, "test", "status") == 4  # the refusal changed nothing
        r = status_lists.reinstate(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:AAA"}],
                                   actor="root", now=T0 + 6, allow_revoked=True)
        assert r.version == 5

        entries = {bytes(e.key): e for e in s.scalars(select(StatusEntry))}
        assert set(entries) == {cert_hash("URN:UVCI:01:VN:BBB")}
        assert entries[cert_hash("URN:UVCI:01:VN:BBB")].ci is None  # told by key only
        versions = s.scalars(select(ListVersion).where(ListVersion.kind == "status")
                             .order_by(ListVersion.version)).all()
        assert [(v.version, v.actor, v.action, v.changes) for v in versions] == [
            (1, "system", "initial", 0), (2, "alice", "status.revoke", 2),
            (3, "bob", "status.suspend", 1), (4, "bob", "status.reinstate", 1),
            (5, "root", "status.reinstate", 1)]
        changes = s.execute(select(StatusChange.version, StatusChange.kind)
                            .order_by(StatusChange.id)).all()
        assert [tuple(c) for c in changes] == [(2, "revoked"), (2, "revoked"), (3, "suspended"),
                                               (4, "reinstated"), (5, "reinstated")]


def test_every_change_is_audited_with_who_and_why(lists):
    with lists.sessions() as s:
        status_lists.revoke(s, lists.config, "test",
                            [{"ci": "URN:UVCI:01:VN:AAA", "reason": "reported stolen"},
                             {"ci": "URN:UVCI:01:VN:BBB"}],
                            actor="alice", reason="ticket 42", now=T0)
        status_lists.suspend(s, lists.config, "test", [{"ci": "URN:UVCI:01:VN:CCC"}],
                             until=T0 + 10 * DAY, actor="health", reason="F0, home isolation",
                             now=T0)
        rows = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    assert [(r.actor, r.action, r.target) for r in rows] == [
        ("alice", "status.revoke", "test"), ("health", "status.suspend", "test")]
    revoke, suspend = rows[0].detail, rows[1].detail
    assert revoke["version"] == 1 and revoke["changed"] == 2
    assert [(e["ci"], e["reason"], e["result"]) for e in revoke["entries"]] == [
        ("URN:UVCI:01:VN:AAA", "reported stolen", "revoked"),
        ("URN:UVCI:01:VN:BBB", "ticket 42", "revoked")]
    assert suspend["entries"][0]["until"].startswith("2027-01-25T")
    assert suspend["entries"][0]["reason"] == "F0, home isolation"


def test_deltas_turn_each_previous_snapshot_into_the_new_one(lists):
    """Every published delta applied (greengate.status.apply_delta) on the snapshot of its
    base gives exactly the current snapshot; the head lists exactly those bases."""
    snaps = {}
    with lists.sessions() as s:
        status_lists.revoke(s, lists.config, "test", cis("R", 300), actor="a", now=T0)  # v1
        snaps.update([lists.snapshot(s)])
        steps = [
            lambda at: status_lists.suspend(s, lists.config, "test", cis("S", 3),
                                            until=at + DAY, actor="h", now=at),
            lambda at: status_lists.revoke(s, lists.config, "test",
                                           [{"ci": "URN:UVCI:01:VN:S00000"}, *cis("N", 2)],
                                           actor="a", now=at),
            lambda at: status_lists.reinstate(s, lists.config, "test",
                                              [{"ci": "URN:UVCI:01:VN:S00001"},
                                               {"ci": "URN:UVCI:01:VN:R00007"}],
                                              actor="root", now=at, allow_revoked=True),
            lambda at: status_lists.suspend(s, lists.config, "test",
                                            [{"ci": "URN:UVCI:01:VN:S00002"},
                                             {"ci": "URN:UVCI:01:VN:R00008"}],  # revoked: stays
                                            until=at + 5 * DAY, actor="h", now=at),
            lambda at: status_lists.revoke(s, lists.config, "test", cis("M", 4), actor="a",
                                           now=at),
        ]
        for number, step in enumerate(steps, 1):
            result = step(T0 + number * 60)
            assert result.changed
            version, current = lists.snapshot(s)
            assert version == result.version == number + 1
            snaps[version] = current
            published = bundles.deltas(s, "test")
            bases = [d.base for d in published]
            assert bases == list(range(max(1, version - 3), version))  # the window: 3
            for row in published:
                delta = lists.opened(row)
                assert delta.kind == "status-delta" and delta.version == version
                assert delta.body["from"] == row.base
                assert same(status.apply_delta(snaps[row.base], delta.body), current), row.base
                assert len(row.raw) < len(bundles.latest(s, "test", "status").raw)
            head = lists.opened(bundles.latest(s, "test", "status-head"))
            assert status.parse_head(head.body) == (version, frozenset(bases))
        at = moment(T0 + 1000)
        assert current.lookup(cert_hash("URN:UVCI:01:VN:R00007"), at) is None
        assert current.lookup(cert_hash("URN:UVCI:01:VN:R00008"), at).kind == "revoked"
        assert current.lookup(cert_hash("URN:UVCI:01:VN:S00000"), at).kind == "revoked"
        assert current.lookup(cert_hash("URN:UVCI:01:VN:S00002"), at).kind == "suspended"
        # only the window's versions of status bundles are kept
        kept = s.scalars(select(func.min(PublishedBundle.version))
                         .where(PublishedBundle.kind == "status-delta")).one()
        assert kept >= 6 - 3


def test_a_delta_not_smaller_than_the_snapshot_is_not_published(lists):
    with lists.sessions() as s:
        status_lists.revoke(s, lists.config, "test", cis("A", 1), actor="a", now=T0)
        status_lists.revoke(s, lists.config, "test", cis("B", 1), actor="a", now=T0 + 1)
        assert bundles.deltas(s, "test") == []  # a one-key snapshot is as small as any delta
        head = lists.opened(bundles.latest(s, "test", "status-head"))
        assert status.parse_head(head.body) == (2, frozenset())


def test_lapsed_suspensions_leave_the_next_version(lists):
    with lists.sessions() as s:
        status_lists.revoke(s, lists.config, "test", cis("R", 100), actor="a", now=T0)
        status_lists.suspend(s, lists.config, "test", cis("S", 2), until=T0 + 3600,
                             actor="h", now=T0)  # v2
        v2 = lists.snapshot(s)[1]
        assert v2.counts() == (100, 2)
        # until it ends the kiosk holds it; past `until` its own look-up lets it go
        key = cert_hash("URN:UVCI:01:VN:S00000")
        assert v2.lookup(key, moment(T0 + 3599)).kind == "suspended"
        assert v2.lookup(key, moment(T0 + 3600)) is None
        listed = status_lists.entries(s, "test", kind="suspended")
        assert [status_lists.entry_dict(e, T0 + 3601)["lapsed"] for e in listed] == [True, True]
        # the next version (here a refresh) drops both, recorded as reinstated
        assert bundles.refresh(s, lists.config, "test", now=T0 + 2 * DAY) == \
            ["trust", "policy", "status", "valuesets"]
        version, v3 = lists.snapshot(s)
        assert version == 3 and v3.counts() == (100, 0)
        assert status_lists.entries(s, "test", kind="suspended") == []
        lapses = s.scalars(select(StatusChange).where(StatusChange.version == 3)).all()
        assert sorted(bytes(c.key) for c in lapses) == sorted(
            cert_hash(f"URN:UVCI:01:VN:S{i:05d}") for i in range(2))
        assert {c.kind for c in lapses} == {"reinstated"}
        (delta,) = [d for d in bundles.deltas(s, "test") if d.base == 2]
        assert same(status.apply_delta(v2, lists.opened(delta).body), v3)


def test_revoke_by_qr_text_of_a_real_certificate(lists, es256, untrusted, make_verifier,
                                                 clock):
    dcc = es256.vaccination(date=clock.dose_date)
    ci = dcc["v"][0]["ci"]
    qr = es256.mint(dcc, iat=clock.issued, exp=clock.expires)
    with lists.sessions() as s:
        # not trusted yet: the ci of an unverifiable QR is not taken
        with pytest.raises(ListError, match="not in the trust list"):
            status_lists.revoke(s, lists.config, "test", [{"qr": qr}], actor="a", now=T0)
        trust_list.add(s, lists.config, "test", es256.pem, actor="op", now=T0)
        # a QR naming the trusted kid but signed by another key: forged, refused
        forger = Issuer(untrusted.key, es256.certificate)
        forged = forger.mint(es256.vaccination(date=clock.dose_date, ci="URN:UVCI:01:VN:VICTIM"),
                             iat=clock.issued, exp=clock.expires)
        with pytest.raises(ListError, match="does not verify"):
            status_lists.revoke(s, lists.config, "test", [{"qr": forged}], actor="a", now=T0)
        with pytest.raises(ListError, match="not a readable HC1 QR text"):
            status_lists.revoke(s, lists.config, "test", [{"qr": "HC1:NOT-BASE45!"}],
                                actor="a", now=T0)
        assert status_lists.entries(s, "test") == []

        r = status_lists.revoke(s, lists.config, "test", [{"qr": qr, "reason": "sold online"}],
                                actor="a", now=T0)
        assert r.entries[0]["key"] == cert_hash(ci).hex() and r.entries[0]["ci"] == ci
        (entry,) = status_lists.entries(s, "test")
        assert entry.ci == ci and entry.reason == "sold online"
        _, current = lists.snapshot(s)
    # the kiosk's verifier with the signed list turns that certificate red: revoked
    verifier = make_verifier(es256, status=current)
    decision = verifier.verify(qr, clock.check)
    assert (decision.decision, decision.reason) == ("red", "revoked")
    other = es256.mint(es256.vaccination(date=clock.dose_date), iat=clock.issued,
                       exp=clock.expires)
    assert verifier.verify(other, clock.check).reason == "ok"


@pytest.mark.parametrize("items, words", [
    ([], "non-empty list"),
    ("URN:UVCI:01:VN:X", "non-empty list"),
    ([{"ci": "has spaces in it"}], "not a certificate identifier or HC1 QR text"),
    ([{"ci": "x" * 201}], "not a certificate identifier or HC1 QR text"),
    ([{"key": "abcd"}], "not a status key"),
    ([{"ci": "A1", "key": "00" * 16}], "exactly one of"),
    ([{"reason": "why"}], "exactly one of"),
    ([{"qr": "URN:UVCI:01:VN:X"}], "must start with 'HC1:'"),
    ([{"ci": "URN:UVCI:01:VN:X"}, {"ci": " URN:UVCI:01:VN:X "}],
     "entry 2 names the same certificate as entry 1"),
    ([{"ci": "A1", "reason": 7}], "'reason' must be text"),
])
def test_bad_batches_change_nothing_and_say_why(lists, items, words):
    with lists.sessions() as s:
        with pytest.raises(ListError, match=words):
            status_lists.revoke(s, lists.config, "test", items, actor="a", now=T0)
        assert bundles.current_version(s, "test", "status") is None
        assert s.scalar(select(func.count(AuditLog.id))) == 0


@pytest.mark.parametrize("until, words", [
    (None, "needs 'until'"),
    ("2027-01-20", "no time zone"),
    ("2027-01-20T10:00", "no time zone"),
    ("next tuesday", "not an ISO 8601"),
    (T0 - 1, "not in the future"),
    (T0 + 6 * 366 * DAY, "more than 5 years"),
])
def test_suspension_end_must_be_a_future_time_with_a_zone(lists, until, words):
    with lists.sessions() as s:
        with pytest.raises(ListError, match=words):
            status_lists.suspend(s, lists.config, "test", cis("S", 1), until=until, actor="h",
                                 now=T0)


def test_a_batch_is_one_version(lists):
    with lists.sessions() as s:
        r = status_lists.revoke(s, lists.config, "test", cis("B", 2500), actor="a", now=T0)
        assert (r.version, r.changed) == (1, 2500)
        assert s.scalar(select(func.count(ListVersion.id))) == 1
        assert s.scalar(select(func.count(StatusChange.id)).where(StatusChange.version == 1)) \
            == 2500
        assert lists.snapshot(s)[1].counts() == (2500, 0)


def test_concurrent_changes_get_distinct_versions(lists):
    """Writers racing for the next version: each gets its own (the loser retries)."""
    with lists.sessions() as s:
        bundles.ensure_issued(s, lists.config, "test", key=lists.key)
    errors, barrier = [], threading.Barrier(4)

    def writer(n):
        try:
            with lists.sessions() as s:
                barrier.wait()
                status_lists.revoke(s, lists.config, "test", cis(f"W{n}", 20), actor=f"w{n}",
                                    key=lists.key)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with lists.sessions() as s:
        versions = s.scalars(select(ListVersion.version).where(ListVersion.kind == "status")
                             .order_by(ListVersion.version)).all()
        assert versions == [1, 2, 3, 4, 5]
        assert sorted(s.scalars(select(StatusChange.version).distinct())) == [2, 3, 4, 5]
        version, current = lists.snapshot(s)
        assert version == 5 and current.counts() == (80, 0)


def test_trust_list_changes_are_versions_of_the_trust_bundle(lists, es256, ps256):
    with lists.sessions() as s:
        bundles.ensure_issued(s, lists.config, "test")
        entry, version = trust_list.add(s, lists.config, "test", es256.pem, actor="op", now=T0)
        assert version == 2 and entry.kid == es256.kid.hex()
        _, version = trust_list.add(s, lists.config, "test",
                                    base64.b64encode(ps256.der).decode(), actor="op", now=T0)
        assert version == 3
        body = lists.opened(bundles.latest(s, "test", "trust")).body
        # and the fleet's holder-sealing key (docs/privacy.md)
        sealing = sealing_keys.load(lists.config).current.body()
        assert body == {"certificates": [es256.der, ps256.der], "sealing": sealing}
        with pytest.raises(ListError) as info:
            trust_list.add(s, lists.config, "test", es256.pem, actor="op", now=T0)
        assert info.value.status == 409
        removed, version = trust_list.remove(s, lists.config, "test", es256.kid.hex(),
                                             actor="op", reason="key compromised", now=T0)
        assert version == 4 and [e.kid for e in removed] == [es256.kid.hex()]
        assert lists.opened(bundles.latest(s, "test", "trust")).body == \
            {"certificates": [ps256.der], "sealing": sealing}
        assert [e.kid for e in trust_list.entries(s, "test", include_removed=True)] == \
            [es256.kid.hex(), ps256.kid.hex()]
        actions = s.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
        assert actions == ["trust.add", "trust.add", "trust.remove"]


def test_policies_are_seeded_validated_and_versioned(lists, hcmc_document):
    with lists.sessions() as s:
        names = [p.name for p in policies.all_policies(s, lists.config, "test")]
        assert names == ["accept-valid", "hcmc-2021"]
        assert bundles.current_version(s, "test", "policy") == 1
        doc = hcmc_document()
        doc["vaccination"]["min_dose_number"] = 2
        row, version, outcome = policies.put(s, lists.config, "test", "hcmc-2021", doc,
                                             actor="op", now=T0)
        assert (version, outcome) == (2, "updated")
        assert policies.put(s, lists.config, "test", "hcmc-2021", doc, actor="op",
                            now=T0)[1:] == (2, "unchanged")
        market = hcmc_document()
        del market["name"]
        market["accept"] = ["v"]
        _, version, outcome = policies.put(s, lists.config, "test", "market", market,
                                           actor="op", now=T0)
        assert (version, outcome) == (3, "created")
        body = lists.opened(bundles.latest(s, "test", "policy")).body
        assert sorted(body["policies"]) == ["accept-valid", "hcmc-2021", "market"]
        # stored and signed as the CertLogic rule set the legacy document converts to
        from greengate.policy import convert_legacy
        assert body["policies"]["hcmc-2021"] == convert_legacy(doc)
        bad = hcmc_document()
        bad["vaccination"]["min_dose"] = 1
        with pytest.raises(ListError, match="vaccination.min_dose' is unknown"):
            policies.put(s, lists.config, "test", "hcmc-2021", bad, actor="op", now=T0)
        with pytest.raises(ListError, match="named 'hcmc-2021' but is sent as 'other'"):
            policies.put(s, lists.config, "test", "other", hcmc_document(), actor="op", now=T0)
        assert s.scalar(select(func.count(Policy.id))) == 3


def test_refresh_reissues_only_lists_older_than_refresh_hours(lists, monkeypatch, capsys):
    with lists.sessions() as s:
        bundles.ensure_issued(s, lists.config, "test")
        issued = bundles.latest(s, "test", "status").issued_at
        assert bundles.refresh(s, lists.config, "test", now=issued + 3600) == []
        status_lists.revoke(s, lists.config, "test", cis("R", 1), actor="a", now=issued + 100)
        later = issued + lists.config.bundles.refresh_hours * 3600 + 10
        # status changed 100 s later: still fresh at `later`; the others are not
        assert bundles.refresh(s, lists.config, "test", now=later) == ["trust", "policy",
                                                                       "valuesets"]
        assert bundles.refresh(s, lists.config, "test", now=later) == []
        assert bundles.latest(s, "test", "trust").issued_at == int(later)
    # the command, as a timer runs it (database only here; test_publisher covers MQTT)
    for name, value in {"GREENGATE_FLEET_DATA_DIR": lists.config.sections["fleet"]["data_dir"],
                        "GREENGATE_FLEET_DATABASE_URL": lists.config.database_url,
                        "GREENGATE_FLEET_DEPLOYMENTS": "test"}.items():
        monkeypatch.setenv(name, value)
    assert fleet_cli(["bundles", "refresh", "--no-publish"]) == 0
    assert "test: every list is fresh" in capsys.readouterr().out
    assert fleet_cli(["bundles", "refresh", "--no-publish", "--force"]) == 0
    assert "re-issued trust, policy, status" in capsys.readouterr().out
    assert fleet_cli(["bundles", "refresh", "--no-publish", "--deployment", "elsewhere"]) == 2
    assert "unknown deployment 'elsewhere'" in capsys.readouterr().err
    assert fleet_cli(["bundles", "key"]) == 0
    assert capsys.readouterr().out.startswith("-----BEGIN PUBLIC KEY-----")


def test_signing_key_is_loaded_never_created_in_production(fleet_config, caplog):
    with pytest.raises(ListError, match="greengate-provision init") as info:
        bundles.load_signing_key(fleet_config)
    assert info.value.status == 503
    with caplog.at_level("WARNING"):
        key = bundles.ensure_signing_key(fleet_config)
    assert "created a NEW bundle-signing key" in caplog.text
    path = bundles.signing_key_path(fleet_config)
    assert path.stat().st_mode & 0o077 == 0
    assert bundles.load_signing_key(fleet_config).private_numbers() == key.private_numbers()
    path.write_bytes(b"not a key")
    with pytest.raises(ListError, match="not an unencrypted PEM private key"):
        bundles.load_signing_key(fleet_config)


def test_unknown_deployment_is_refused(lists):
    with lists.sessions() as s:
        with pytest.raises(ListError, match="unknown deployment 'hanoi'") as info:
            status_lists.revoke(s, lists.config, "hanoi", cis("R", 1), actor="a", now=T0)
        assert info.value.status == 404

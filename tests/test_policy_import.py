"""Importing an EU rule set as a policy (`greengate-fleet policies import DIR`), assigning it
to kiosks (`policies assign`), and the imported rules applied on a kiosk: its BundleStore
(signed bundles fetched from the fleet over HTTP) and Verifier turn a certificate red with
the rule's Identifier as the sub-reason. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from device.state import BundleStore
from fleet import bundles, kiosks
from fleet.models import AuditLog, District, Kiosk, Location, Policy
from greengate import bundle as gg_bundle

RULES = Path(__file__).parent / "data" / "eu-rules"
VALUE_SETS = Path(__file__).resolve().parents[1] / "greengate" / "data" / "dcc-valuesets"


@pytest.fixture
def fleet(api, fleet_config, monkeypatch):
    key = bundles.ensure_signing_key(fleet_config)
    with api.sessions() as session:
        bundles.ensure_issued(session, fleet_config, "test")
        kiosks.register(session, fleet_config, kiosk_id="q7-a", deployment="test",
                        policy="hcmc-2021", location=None, actor="admin", at=1.0)
        kiosks.register(session, fleet_config, kiosk_id="q7-b", deployment="test",
                        policy="hcmc-2021", location=None, actor="admin", at=1.0)
        session.commit()
    monkeypatch.setenv("GREENGATE_FLEET_DATA_DIR", fleet_config.sections["fleet"]["data_dir"])
    monkeypatch.setenv("GREENGATE_FLEET_DATABASE_URL", fleet_config.database_url)
    monkeypatch.setenv("GREENGATE_FLEET_DEPLOYMENTS", "test")
    api.pub = key.public_key()
    api.config = fleet_config
    return api


def served(fleet, kind):
    r = fleet.client.get(f"/api/v1/bundles/test/{kind}")
    assert r.status_code == 200
    return r.data, gg_bundle.open_bundle(r.data, fleet.pub, "test")


def cli(*args) -> int:
    from fleet.cli import main
    return main(list(args))


def test_import_stores_signs_and_audits_a_rule_set(fleet, capsys):
    assert cli("policies", "import", str(RULES), "--name", "vn-eu", "--title", "EU rules",
               "--no-publish") == 0
    assert "policy 'vn-eu' created (2 rule(s)), policy bundle v2" in capsys.readouterr().out
    _, b = served(fleet, "policy")
    doc = b.body["policies"]["vn-eu"]
    assert b.version == 2 and doc["title"] == "EU rules" and doc["timezone"] == "UTC"
    assert [r["Identifier"] for r in doc["rules"]] == ["VR-VN-0001", "VR-VN-0002"]
    with fleet.sessions() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "policy.create")).one()
        assert entry.actor == "cli" and entry.target == "test/vn-eu"
    # the same folder again: unchanged, no new version
    assert cli("policies", "import", str(RULES), "--name", "vn-eu", "--title", "EU rules",
               "--no-publish") == 0
    assert "unchanged" in capsys.readouterr().out and served(fleet, "policy")[1].version == 2


@pytest.mark.parametrize("logic, words", [
    ({"nope": [1, 2]}, "rule 'VR-VN-0002': 'Logic' is not valid CertLogic"),
    ({"if": [True, 1]}, "rule 'VR-VN-0002': 'Logic' is not valid CertLogic"),
    ({"===": [{"var": "payload.v.0.dn"}]}, "rule 'VR-VN-0002': 'Logic' is not valid"),
])
def test_a_bad_rule_publishes_nothing_and_is_named(fleet, tmp_path, capsys, logic, words):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    rule = json.loads((folder / "VR-VN-0002.json").read_text())
    rule["Logic"] = logic
    (folder / "VR-VN-0002.json").write_text(json.dumps(rule))
    assert cli("policies", "import", str(folder), "--name", "vn-eu") == 2
    err = capsys.readouterr().err
    assert "rule file VR-VN-0002.json" in err and words in err, err
    assert served(fleet, "policy")[1].version == 1
    with fleet.sessions() as s:
        assert s.scalars(select(Policy).where(Policy.name == "vn-eu")).first() is None
        assert bundles.current_version(s, "test", "policy") == 1


@pytest.mark.parametrize("name, content, words", [
    ("x.json", b"{", "rule file x.json: not JSON"),
    ("x.json", b'{"Type": "Acceptance"}', "rule file x.json: a rule is a JSON object with an "
                                          "'Identifier'"),
    ("x.json", (RULES / "VR-VN-0001.json").read_bytes(),
     "rule VR-VN-0001 version 1.0.0 is in both VR-VN-0001.json and x.json"),
])
def test_unreadable_rule_files_are_named(fleet, tmp_path, capsys, name, content, words):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    (folder / name).write_bytes(content)
    assert cli("policies", "import", str(folder), "--name", "vn-eu") == 2
    assert words in capsys.readouterr().err
    assert served(fleet, "policy")[1].version == 1


def test_assign_puts_the_policy_in_the_signed_bundle_for_those_kiosks(fleet, capsys):
    assert cli("policies", "import", str(RULES), "--name", "vn-eu", "--no-publish") == 0
    assert cli("policies", "assign", "vn-eu", "--kiosk", "q7-a", "--no-publish") == 0
    assert "policy 'vn-eu' assigned to q7-a, policy bundle v3" in capsys.readouterr().out
    _, b = served(fleet, "policy")
    assert b.version == 3 and b.body["assigned"] == {"q7-a": "vn-eu", "q7-b": "hcmc-2021"}
    with fleet.sessions() as s:
        assert s.get(Kiosk, "q7-a").policy == "vn-eu"
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "kiosk.update")).one()
        assert entry.target == "q7-a" and entry.detail["policy"] == ["hcmc-2021", "vn-eu"]
    assert cli("policies", "assign", "vn-eu", "--kiosk", "q7-a", "--no-publish") == 0
    assert "already assigned" in capsys.readouterr().out
    for args, words in [(("nope", "--kiosk", "q7-a"), "has no policy 'nope'"),
                        (("vn-eu", "--kiosk", "q9"), "no kiosk 'q9'"),
                        (("vn-eu",), "name at least one kiosk")]:
        assert cli("policies", "assign", *args, "--no-publish") == 2
        assert words in capsys.readouterr().err
    assert served(fleet, "policy")[1].version == 3


def test_assign_by_location_and_district_names_their_kiosks(fleet, capsys):
    """--location / --district CODE: the kiosks of the deployment there, as the API's and the
    dashboard's assignment name them."""
    with fleet.sessions() as s:
        q7, q1 = District(code="q7", name="Quận 7"), District(code="q1", name="Quận 1")
        s.add_all([q7, q1])
        s.flush()
        market = Location(code="q7-market", name="Chợ", address="", district_id=q7.id)
        s.add(market)
        s.flush()
        s.get(Kiosk, "q7-a").location_id = market.id
        kiosks.register(s, fleet.config, kiosk_id="q7-c", deployment="test",
                        policy="hcmc-2021", location=None, actor="admin", at=1.0)
        s.commit()
    assert cli("policies", "import", str(RULES), "--name", "vn-eu", "--no-publish") == 0
    capsys.readouterr()
    assert cli("policies", "assign", "vn-eu", "--location", "q7-market", "--no-publish") == 0
    assert "policy 'vn-eu' assigned to q7-a, policy bundle v3" in capsys.readouterr().out
    assert served(fleet, "policy")[1].body["assigned"] == {
        "q7-a": "vn-eu", "q7-b": "hcmc-2021", "q7-c": "hcmc-2021"}
    assert cli("policies", "assign", "accept-valid", "--district", "q7", "--no-publish") == 0
    assert "assigned to q7-a" in capsys.readouterr().out
    for args, words in [(("--district", "q1"), "no kiosk of deployment 'test' is at district"),
                        (("--location", "nowhere"), "no location with code 'nowhere'"),
                        (("--district", "q7", "--kiosk", "q7-b"), "one of the three")]:
        assert cli("policies", "assign", "vn-eu", *args, "--no-publish") == 2
        assert words in capsys.readouterr().err
    assert served(fleet, "policy")[1].version == 4


def test_an_imported_rule_set_turns_a_certificate_red_on_the_kiosk(fleet, tmp_path, es256,
                                                                    clock, capsys):
    """Fleet: import, assign, replace the value sets without the vaccine. Kiosk: the signed
    bundles as served, a BundleStore with its id, the Verifier it builds."""
    assert cli("policies", "import", str(RULES), "--name", "vn-eu", "--no-publish") == 0
    assert cli("policies", "assign", "vn-eu", "--kiosk", "q7-a", "--no-publish") == 0
    fleet.client.post("/api/v1/trust/test", headers=fleet.operator,
                      json={"certificate": es256.pem.decode()})
    store = BundleStore(tmp_path / "kiosk", fleet.pub, "test", "hcmc-2021",
                        timedelta(hours=72), kiosk_id="q7-a")
    for kind in ("trust", "policy", "status", "valuesets"):
        assert store.offer(served(fleet, kind)[0], "http") == (True, "applied")
    assert store.policy_in_use == "vn-eu"

    one_dose = es256.mint(es256.vaccination(date=clock.dose_date, dose=1, of=2),
                          iat=clock.issued, exp=clock.expires)
    decision = store.verifier.verify(one_dose, clock.check)
    assert (decision.decision, decision.reason, decision.sub_reason) == \
        ("red", "policy_failed", "VR-VN-0002")
    assert "At least two doses are required." in decision.detail
    two_doses = es256.mint(es256.vaccination(date=clock.dose_date, dose=2, of=2),
                           iat=clock.issued, exp=clock.expires)
    assert store.verifier.verify(two_doses, clock.check).green

    # the vaccine leaves the value set: the rule that reads external.valueSets fails
    folder = tmp_path / "vs"
    folder.mkdir()
    names = json.loads((VALUE_SETS / "vaccine-medicinal-product.json").read_text())
    del names["valueSetValues"]["EU/1/20/1528"]
    (folder / "names.json").write_text(json.dumps(names))
    assert cli("valuesets", "replace", str(folder), "--no-publish") == 0
    assert store.offer(served(fleet, "valuesets")[0], "http") == (True, "applied")
    decision = store.verifier.verify(two_doses, clock.check)
    assert (decision.reason, decision.sub_reason) == ("policy_failed", "VR-VN-0001")
    # a kiosk not assigned the rule set keeps its own policy
    other = BundleStore(tmp_path / "other", fleet.pub, "test", "hcmc-2021",
                        timedelta(hours=72), kiosk_id="q7-b")
    for kind in ("trust", "policy", "status", "valuesets"):
        assert other.offer(served(fleet, kind)[0], "http")[0]
    assert other.policy_in_use == "hcmc-2021"
    assert other.verifier.verify(two_doses, clock.check).green

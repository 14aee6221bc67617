"""Value sets as a signed list of the fleet (fleet/value_sets.py): seeded from the vendored
EU copy, served as the `valuesets` bundle, replaced from a folder of EU files by the CLI
and the API (validated: nothing changes on a bad file), audited; and migration 0007
(the value_set table, stored legacy policies converted to rule sets). SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from fleet import bundles, migrate, value_sets
from fleet.db import make_engine
from fleet.models import AuditLog, ValueSet
from greengate import bundle as gg_bundle
from tests.conftest_fleet import assign_officer_a_district

VENDORED = Path(__file__).resolve().parents[1] / "greengate" / "data" / "dcc-valuesets"
NAMES = "vaccines-covid-19-names"


@pytest.fixture
def fleet(api, fleet_config):
    key = bundles.ensure_signing_key(fleet_config)
    with api.sessions() as session:
        bundles.ensure_issued(session, fleet_config, "test")
    api.pub = key.public_key()
    api.config = fleet_config
    assign_officer_a_district(api.sessions)
    return api


@pytest.fixture
def cli_env(fleet, monkeypatch):
    monkeypatch.setenv("GREENGATE_FLEET_DATA_DIR", fleet.config.sections["fleet"]["data_dir"])
    monkeypatch.setenv("GREENGATE_FLEET_DATABASE_URL", fleet.config.database_url)
    monkeypatch.setenv("GREENGATE_FLEET_DEPLOYMENTS", "test")
    return fleet


def served(fleet):
    r = fleet.client.get("/api/v1/bundles/test/valuesets")
    assert r.status_code == 200
    return gg_bundle.open_bundle(r.data, fleet.pub, "test")


def vendored_ids() -> set[str]:
    return {json.loads(p.read_text())["valueSetId"] for p in VENDORED.glob("*.json")}


def names_with(extra: dict) -> dict:
    doc = json.loads((VENDORED / "vaccine-medicinal-product.json").read_text())
    doc["valueSetValues"].update(extra)
    doc["valueSetDate"] = "2026-12-01"
    return doc


def test_a_deployment_starts_with_the_vendored_value_sets_signed(fleet):
    b = served(fleet)
    assert (b.kind, b.version) == ("valuesets", 1)
    assert set(b.body["valueSets"]) == vendored_ids() and len(vendored_ids()) >= 8
    assert "EU/1/20/1528" in b.body["valueSets"][NAMES]["valueSetValues"]
    listed = fleet.client.get("/api/v1/valuesets/test", headers=fleet.officer).get_json()
    assert listed["version"] == 1
    assert {v["id"] for v in listed["value_sets"]} == vendored_ids()
    assert all(v["codes"] > 0 and v["updated_by"] == "system" for v in listed["value_sets"])


def test_cli_replaces_value_sets_from_a_folder_audited_and_versioned(cli_env, tmp_path, capsys):
    from fleet.cli import main
    fleet = cli_env
    folder = tmp_path / "eu"
    folder.mkdir()
    new_code = {"EU/9/99/0001": {"display": "Test vaccine", "lang": "en", "active": True,
                                 "system": "https://ec.europa.eu/health/documents/community-"
                                           "register/html/", "version": ""}}
    (folder / "vaccine-medicinal-product.json").write_text(json.dumps(names_with(new_code)))
    assert main(["valuesets", "replace", str(folder), "--reason", "EU update",
                 "--no-publish"]) == 0
    assert f"replaced {NAMES}; valuesets bundle v2" in capsys.readouterr().out
    b = served(fleet)
    assert b.version == 2 and set(b.body["valueSets"]) == vendored_ids()  # the others kept
    assert "EU/9/99/0001" in b.body["valueSets"][NAMES]["valueSetValues"]
    with fleet.sessions() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "valuesets.replace")).one()
        assert entry.actor == "cli" and entry.detail["value_sets"] == [NAMES]
        assert entry.detail["reason"] == "EU update" and entry.detail["version"] == 2
    # the same folder again changes nothing and signs nothing
    assert main(["valuesets", "replace", str(folder), "--no-publish"]) == 0
    assert "unchanged (valuesets bundle v2)" in capsys.readouterr().out
    assert served(fleet).version == 2


@pytest.mark.parametrize("name, content, words", [
    ("a.json", b'{"valueSetValues": {}}', "value set a.json: 'valueSetId' is missing"),
    ("b.json", b'{"valueSetId": "x", "valueSetValues": []}',
     "value set b.json (x): 'valueSetValues' is missing or not an object"),
    ("c.json", b'{"valueSetId": "x", "valueSetValues": {"1": "one"}}',
     "code '1' is not an object"),
    ("d.json", b'{"valueSetId": ', "value set d.json: not JSON"),
    ("e.json", b'["valueSetId"]', "value set e.json: not a JSON object"),
    ("f.json", b"\xff\xfe", "value set f.json: not UTF-8"),
    ("g.json", json.dumps({"valueSetId": NAMES, "valueSetValues": {}}).encode(),
     f"value set '{NAMES}' is in both g.json and vaccine-medicinal-product.json"),
])
def test_a_bad_value_set_file_changes_nothing_and_is_named(cli_env, tmp_path, capsys, name,
                                                           content, words):
    from fleet.cli import main
    fleet = cli_env
    folder = tmp_path / "eu"
    shutil.copytree(VENDORED, folder)
    (folder / "vaccine-medicinal-product.json").write_text(
        json.dumps(names_with({"EU/9/99/0002": {"display": "x"}})))
    (folder / name).write_bytes(content)
    assert main(["valuesets", "replace", str(folder), "--no-publish"]) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert served(fleet).version == 1
    with fleet.sessions() as s:
        stored = s.scalars(select(ValueSet).where(ValueSet.value_set_id == NAMES)).one()
        assert "EU/9/99/0002" not in stored.document["valueSetValues"]


def test_an_empty_or_missing_folder_is_refused(cli_env, tmp_path, capsys):
    from fleet.cli import main
    assert main(["valuesets", "replace", str(tmp_path)]) == 2
    assert "holds no *.json value-set file" in capsys.readouterr().err
    assert main(["valuesets", "replace", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_api_replaces_value_sets_for_list_editors_only(fleet):
    doc = names_with({"EU/9/99/0003": {"display": "API vaccine"}})
    r = fleet.client.put("/api/v1/valuesets/test", headers=fleet.officer,
                         json={"valueSets": [doc]})
    assert r.status_code == 403
    bad = fleet.client.put("/api/v1/valuesets/test", headers=fleet.operator,
                           json={"valueSets": [{"valueSetId": "x"}]})
    assert bad.status_code == 422 and "'valueSetValues' is missing" in bad.get_json()["message"]
    assert fleet.client.put("/api/v1/valuesets/test", headers=fleet.operator,
                            json={"sets": []}).status_code == 400
    r = fleet.client.put("/api/v1/valuesets/test?reason=new", headers=fleet.operator,
                         json={"valueSets": [doc]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["version"] == 2 and r.get_json()["changed"] == [NAMES]
    assert "EU/9/99/0003" in served(fleet).body["valueSets"][NAMES]["valueSetValues"]


def test_refresh_reissues_value_sets_with_the_other_lists(fleet):
    with fleet.sessions() as s:
        kinds = bundles.refresh(s, fleet.config, "test", force=True)
    assert "valuesets" in kinds and served(fleet).version == 2


def test_strict_value_fields_are_signed_into_the_bundle(fleet):
    """[bundles] strict_value_fields travel in the value-set bundle (the kiosk applies them:
    tests/test_kiosk_state.py); a field that has no value set is refused by name."""
    from fleet.config import load
    assert "strictFields" not in served(fleet).body  # default: only a policy matter
    fleet.config = load(None, env={}, **{**fleet.config.sections,
                                         "bundles": {**fleet.config.sections["bundles"],
                                                     "strict_value_fields": ["v.mp", "t.tr"]}})
    with fleet.sessions() as s:
        bundles.refresh(s, fleet.config, "test", force=True)
        s.commit()
    assert served(fleet).body["strictFields"] == ["t.tr", "v.mp"]
    bad = load(None, env={}, **{**fleet.config.sections,
                                "bundles": {**fleet.config.sections["bundles"],
                                            "strict_value_fields": ["v.nam"]}})
    with fleet.sessions() as s, pytest.raises(ValueError, match="v.nam not a value-set field"):
        bundles.refresh(s, bad, "test", force=True)


# --- migration 0007 ---------------------------------------------------------------------
LEGACY = {"name": "market", "title": "Market", "timezone": "Asia/Ho_Chi_Minh",
          "accept": ["v"], "vaccination": {"min_dose_number": 2, "min_days_after_dose": 14,
                                           "require_complete_series": True}}


def test_migration_0007_converts_stored_legacy_policies_and_resigns_them(database_url, tmp_path):
    from greengate import policy as gg_policy
    if not hasattr(gg_policy, "convert_legacy"):
        pytest.fail("greengate.policy.convert_legacy is missing (helper 'rules')")
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0006")
        with engine.begin() as c:
            c.execute(text("INSERT INTO policy (deployment, name, document, updated_by, "
                           "updated_at) VALUES ('test', 'market', :doc, 'op', 1)"),
                      {"doc": json.dumps(LEGACY)})
            c.execute(text("INSERT INTO list_version (deployment, kind, version, at, actor, "
                           "action, changes) VALUES ('test', 'policy', 4, 1, 'op', 'x', 1)"))
            c.execute(text("INSERT INTO bundle (deployment, kind, version, issued_at, raw, "
                           "etag) VALUES ('test', 'policy', 4, 1, :raw, 'e')"), {"raw": b"old"})
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        assert "value_set" in inspect(engine).get_table_names()
        with engine.connect() as c:
            doc, by = c.execute(text("SELECT document, updated_by FROM policy")).one()
            doc = json.loads(doc) if isinstance(doc, str) else doc
            assert "rules" in doc and "accept" not in doc and by == "migration 0007"
            gg_policy.from_document(doc)  # a valid rule set
            assert c.execute(text("SELECT count(*) FROM bundle WHERE kind = 'policy'"))\
                .scalar() == 0
            detail = c.execute(text("SELECT detail FROM audit_log WHERE action = "
                                    "'policy.convert'")).scalar()
            detail = json.loads(detail) if isinstance(detail, str) else detail
            assert detail["previous"] == LEGACY
        # the fleet signs the converted set as the next version, above what kiosks hold
        from fleet.config import load
        from fleet.db import make_sessions
        config = load(None, env={}, fleet={"data_dir": str(tmp_path / "fleet"),
                                           "database_url": database_url,
                                           "deployments": ["test"]})
        key = bundles.ensure_signing_key(config)
        with make_sessions(engine)() as s:
            assert "policy" in bundles.ensure_issued(s, config, "test")
            b = gg_bundle.open_bundle(bundles.latest(s, "test", "policy").raw,
                                      key.public_key(), "test")
        assert b.version == 5 and "rules" in b.body["policies"]["market"]
        with engine.begin() as c:  # and back down: the table goes, the rule sets stay
            command.downgrade(migrate._alembic(c), "0006")
        assert "value_set" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_migration_0007_on_an_empty_database_needs_no_converter(database_url):
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
    finally:
        engine.dispose()


def test_value_set_parser_is_total():
    for data in (b"", b"null", b"1e999", b"{" * 10000, b'{"valueSetId": "\\ud800"}',
                 b'{"valueSetId": "a", "valueSetValues": {"": {}}}', bytes(range(256))):
        with pytest.raises(bundles.ListError):
            value_sets.parse("x.json", data)

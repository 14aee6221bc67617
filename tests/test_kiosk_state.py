"""The kiosk's local state: bundles (verify, no rollback, atomic, persisted), time floor,
configuration errors, cooldown and pseudonyms."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from device import config
from device.clock import FLOOR, SYNCED, UNKNOWN, Clock
from device.pipeline import Cooldown, Pipeline
from device.state import BundleStore
from greengate.bundle import load_public_key
from greengate.status import cert_hash
from tests.fleetkit import FleetKit, at

T0 = at("2021-10-05T00:00:00")
CHECK = at("2021-10-05T08:00:00")
BUDGET = timedelta(hours=72)


@pytest.fixture
def fleet():
    return FleetKit()


@pytest.fixture
def store_factory(tmp_path, fleet):
    def make(**kw):
        return BundleStore(tmp_path / "bundles", load_public_key(fleet.public_pem), fleet.deployment,
                           kw.get("policy", "hcmc-2021"), BUDGET)
    return make


def fill(store, fleet, es256, version=1, issued=T0, **status):
    for raw in (fleet.trust(version, issued, es256), fleet.policy(version, issued),
                fleet.status(version, issued, **status)):
        ok, why = store.offer(raw)
        assert ok, why


def cert(es256, **kw):
    dcc = es256.vaccination(date="2021-08-01", **kw)
    return dcc, es256.mint(dcc, iat="2021-09-01", exp="2022-09-01")


def test_no_bundles_means_out_of_service(store_factory):
    store = store_factory()
    assert store.verifier is None
    assert "missing" in store.problem


def test_applied_bundles_verify_and_survive_restart(store_factory, fleet, es256):
    store = store_factory()
    fill(store, fleet, es256)
    _, text = cert(es256)
    assert store.verifier.verify(text, CHECK).green
    again = store_factory()  # a restart reads the stored bundles back
    assert again.versions() == {"trust": 1, "policy": 1, "status": 1, "valuesets": None}
    assert again.verifier.verify(text, CHECK).green


def test_rollback_tamper_and_foreign_key_are_refused_old_kept(store_factory, fleet, es256, caplog):
    store = store_factory()
    fill(store, fleet, es256, version=5)
    ok, why = store.offer(fleet.status(4, T0))
    assert not ok and "rollback" in why
    tampered = bytearray(fleet.status(6, T0))
    tampered[-80] ^= 1
    ok, why = store.offer(bytes(tampered))
    assert not ok and ("bad_signature" in why or "malformed" in why)
    other = FleetKit(fleet.deployment)
    ok, why = store.offer(other.status(7, T0))
    assert not ok and "wrong_key" in why
    ok, why = store.offer(fleet.status(5, T0 + timedelta(hours=1)))
    assert not ok and "differs" in why
    assert store.versions()["status"] == 5
    assert store.refused == 4
    assert "refused bundle" in caplog.text
    assert store_factory().versions()["status"] == 5


def test_wrong_deployment_refused(store_factory, es256):
    store = store_factory()
    ok, why = store.offer(FleetKit("elsewhere").trust(1, T0, es256))
    assert not ok and "wrong_key" in why or "wrong_deployment" in why


def test_status_list_revokes_and_suspension_lapses(store_factory, fleet, es256):
    dcc_r, revoked = cert(es256)
    dcc_s, suspended = cert(es256)
    until = CHECK + timedelta(days=2)
    store = store_factory()
    fill(store, fleet, es256, revoked=[cert_hash(dcc_r["v"][0]["ci"])],
         suspended=[(cert_hash(dcc_s["v"][0]["ci"]), until)])
    assert store.verifier.verify(revoked, CHECK).reason == "revoked"
    assert store.verifier.verify(suspended, CHECK).reason == "suspended"
    assert store.verifier.verify(suspended, until + timedelta(seconds=1)).green


def test_delta_applies_only_on_its_base_and_is_replayed_after_restart(store_factory, fleet, es256):
    dcc, text = cert(es256)
    key = cert_hash(dcc["v"][0]["ci"])
    store = store_factory()
    fill(store, fleet, es256, version=3)
    ok, why = store.offer(fleet.delta(5, T0, base=4, revoked=[key]))
    assert not ok and "does not apply" in why
    ok, _ = store.offer(fleet.delta(4, T0, base=3, revoked=[key]))
    assert ok and store.versions()["status"] == 4
    assert store.verifier.verify(text, CHECK).reason == "revoked"
    ok, _ = store.offer(fleet.delta(5, T0, base=4, reinstated=[key]))
    assert ok and store.verifier.verify(text, CHECK).green
    again = store_factory()
    assert again.versions()["status"] == 5
    assert again.verifier.verify(text, CHECK).green


def test_lists_past_the_offline_budget_are_out_of_service(store_factory, fleet, es256):
    store = store_factory()
    fill(store, fleet, es256)
    _, text = cert(es256)
    assert store.verifier.verify(text, T0 + BUDGET - timedelta(minutes=1)).green
    assert store.verifier.verify(text, T0 + BUDGET + timedelta(minutes=1)).reason == "out_of_service"


def test_policy_bundle_without_the_kiosks_policy_is_refused(store_factory, fleet):
    store = store_factory(policy="market-2021")
    ok, why = store.offer(fleet.policy(1, T0))
    assert not ok and "market-2021" in why


def test_stored_bundle_corrupted_on_disk_is_ignored(store_factory, fleet, es256, tmp_path):
    fill(store_factory(), fleet, es256)
    path = tmp_path / "bundles" / "trust.bundle"
    path.write_bytes(path.read_bytes()[:-10])
    store = store_factory()
    assert store.verifier is None and "trust" in store.problem


# --- value sets and policy assignment -------------------------------------
VALUE_SETS = Path(__file__).resolve().parents[1] / "greengate" / "data" / "dcc-valuesets"
NAMES = "vaccines-covid-19-names"


def value_sets(version, issued=T0, fleet=None, extra=(), strict=None) -> bytes:
    docs = {}
    for path in sorted(VALUE_SETS.glob("*.json")):
        doc = json.loads(path.read_text())
        docs[doc["valueSetId"]] = doc
    for code in extra:
        docs[NAMES]["valueSetValues"][code] = {"display": code, "lang": "en", "active": True}
    body = {"valueSets": docs}
    if strict is not None:
        body["strictFields"] = strict
    return fleet.seal("valuesets", version, issued, body)


def test_strict_fields_from_the_bundle_make_an_unknown_code_invalid_content(store_factory,
                                                                             fleet, es256):
    """A deployment's [bundles] strict_value_fields reach the kiosk inside the value-set
    bundle: there an unknown product is invalid content; elsewhere only a policy matter."""
    store = store_factory()
    fill(store, fleet, es256)
    dcc = es256.vaccination(date="2021-08-01", product="EU/9/99/0042")
    text = es256.mint(dcc, iat="2021-09-01", exp="2022-09-01")
    assert store.verifier.verify(text, CHECK).reason != "invalid_content"
    ok, why = store.offer(value_sets(2, fleet=fleet, strict=["v.mp"]))
    assert ok, why
    decision = store.verifier.verify(text, CHECK)
    assert (decision.decision, str(decision.reason)) == ("red", "invalid_content"), decision
    _, known = cert(es256)
    assert store.verifier.verify(known, CHECK).green
    assert str(store_factory().verifier.verify(text, CHECK).reason) == "invalid_content"
    for bad in (["v.zz"], "v.mp", [1]):
        ok, why = store.offer(value_sets(3, fleet=fleet, strict=bad))
        assert not ok and "malformed valuesets body" in why, why


def test_value_sets_apply_survive_restart_and_reach_the_verifier(store_factory, fleet, es256):
    store = store_factory()
    fill(store, fleet, es256)
    assert "EU/9/99/0001" not in store.verifier.valuesets.codes(NAMES)  # vendored until sent
    ok, why = store.offer(value_sets(3, fleet=fleet, extra=["EU/9/99/0001"]))
    assert ok, why
    assert "EU/9/99/0001" in store.verifier.valuesets.codes(NAMES)
    assert "EU/9/99/0001" in store.verifier.valuesets.as_external()[NAMES]
    again = store_factory()
    assert again.versions()["valuesets"] == 3
    assert "EU/9/99/0001" in again.verifier.valuesets.codes(NAMES)


def test_value_sets_rollback_tamper_foreign_key_and_bad_body_are_refused(store_factory, fleet,
                                                                          es256):
    store = store_factory()
    fill(store, fleet, es256)
    assert store.offer(value_sets(5, fleet=fleet, extra=["EU/9/99/0005"]))[0]
    ok, why = store.offer(value_sets(4, fleet=fleet))
    assert not ok and "refused rollback: valuesets v4" in why
    tampered = bytearray(value_sets(6, fleet=fleet))
    at = tampered.find(b"EU/1/20/1528")
    tampered[at + 3] ^= 1  # one code changed in transit
    ok, why = store.offer(bytes(tampered))
    assert not ok and "bad_signature" in why
    ok, why = store.offer(value_sets(7, fleet=FleetKit(fleet.deployment)))
    assert not ok and "wrong_key" in why
    ok, why = store.offer(value_sets(5, fleet=fleet, extra=["EU/9/99/0006"]))
    assert not ok and "differs" in why
    for body in ({"valueSets": {}}, {"valueSets": {"x": {"valueSetId": "y",
                                                         "valueSetValues": {}}}},
                 {"valueSets": {"x": {"valueSetId": "x", "valueSetValues": [1]}}}, [1]):
        ok, why = store.offer(fleet.seal("valuesets", 8, T0, body))
        assert not ok and "malformed valuesets body" in why, why
    assert store.versions()["valuesets"] == 5 and store.refused == 8
    assert "EU/9/99/0005" in store.verifier.valuesets.codes(NAMES)
    assert "EU/9/99/0005" in store_factory().verifier.valuesets.codes(NAMES)


def test_a_stored_value_set_bundle_corrupted_on_disk_leaves_the_vendored_copy(
        store_factory, fleet, es256, tmp_path):
    store = store_factory()
    fill(store, fleet, es256)
    assert store.offer(value_sets(2, fleet=fleet, extra=["EU/9/99/0002"]))[0]
    path = tmp_path / "bundles" / "valuesets.bundle"
    path.write_bytes(path.read_bytes()[:-10])
    again = store_factory()
    assert again.verifier is not None and again.versions()["valuesets"] is None
    assert "EU/9/99/0002" not in again.verifier.valuesets.codes(NAMES)


def test_the_policy_bundle_assigns_this_kiosk_its_policy(tmp_path, fleet, es256):
    def store(kiosk_id):
        return BundleStore(tmp_path / kiosk_id, load_public_key(fleet.public_pem),
                           fleet.deployment, "hcmc-2021", BUDGET, kiosk_id=kiosk_id)

    docs = {n: json.loads((Path(__file__).resolve().parents[1] / "greengate" / "policies" /
                           f"{n}.json").read_text()) for n in ("hcmc-2021", "accept-valid")}
    raw = fleet.seal("policy", 2, T0, {"policies": docs,
                                       "assigned": {"k-assigned": "accept-valid"}})
    recent = es256.mint(es256.vaccination(date="2021-10-01"), iat="2021-10-01",
                        exp="2022-10-01")  # 4 days after the dose: hcmc-2021 wants 14
    for kiosk_id, policy_name, green in (("k-assigned", "accept-valid", True),
                                         ("k-other", "hcmc-2021", False)):
        kiosk = store(kiosk_id)
        for bundle_raw in (fleet.trust(1, T0, es256), raw, fleet.status(1, T0)):
            assert kiosk.offer(bundle_raw)[0]
        assert kiosk.policy_in_use == policy_name
        assert kiosk.verifier.verify(recent, CHECK).green is green
    # an assignment the bundle cannot satisfy is refused like a missing configured policy
    bad = fleet.seal("policy", 3, T0, {"policies": docs, "assigned": {"k-assigned": "gone"}})
    ok, why = store("k-assigned").offer(bad)
    assert not ok and "gone" in why


# --- clock ---------------------------------------------------------------
class FakeTime:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_clock_unknown_until_synced_or_floor(tmp_path):
    now = FakeTime(T0.timestamp())
    ntp = {"on": False}
    clock = Clock(tmp_path / "clock.json", BUDGET.total_seconds(), now=now, ntp=lambda: ntp["on"])
    assert clock.state() == UNKNOWN and clock.validation_time() is None
    ntp["on"] = True
    assert clock.state() == SYNCED
    assert clock.validation_time() == T0


def test_clock_below_persisted_floor_is_unknown_after_reboot(tmp_path):
    clock = Clock(tmp_path / "clock.json", BUDGET.total_seconds(), now=FakeTime(T0.timestamp()),
                  ntp=lambda: False)
    clock.raise_floor(T0.timestamp() + 3600)  # a bundle issued an hour "in the future"
    assert clock.state() == UNKNOWN
    rebooted = Clock(tmp_path / "clock.json", BUDGET.total_seconds(),
                     now=FakeTime(T0.timestamp() + 7200), ntp=lambda: False)
    assert rebooted.floor == T0.timestamp() + 3600
    assert rebooted.state() == FLOOR
    clock.raise_floor(T0.timestamp())  # the floor never moves back
    assert clock.floor == T0.timestamp() + 3600
    far = Clock(tmp_path / "clock.json", BUDGET.total_seconds(),
                now=FakeTime(T0.timestamp() + BUDGET.total_seconds() + 7200), ntp=lambda: False)
    assert far.state() == UNKNOWN  # no NTP and beyond floor + budget: not trusted
    assert far.beyond_budget() and not rebooted.beyond_budget() and not clock.beyond_budget()


def test_past_the_budget_without_ntp_the_kiosk_is_out_of_service(tmp_path):
    """Cut off from the fleet for longer than the offline budget, a kiosk without NTP
    cannot vouch for its clock either; what fixes it is fresh lists, so the guard sees
    out_of_service (call the operator: link to the fleet), not clock_unknown."""
    from device.kiosk import LiveVerifier
    from device.state import BundleStore  # noqa: F401  (the store the kiosk passes)

    now = FakeTime(T0.timestamp())
    ntp = {"on": False}
    clock = Clock(tmp_path / "clock.json", BUDGET.total_seconds(), now=now,
                  ntp=lambda: ntp["on"])
    clock.raise_floor(T0.timestamp() - 60)  # lists signed a minute ago
    live = LiveVerifier(store=None, clock=clock)
    now.t = T0.timestamp() + BUDGET.total_seconds()
    assert clock.validation_time() is None
    assert live.verify("HC1:x", None).reason == "out_of_service"
    ntp["on"] = True  # with NTP the same kiosk would have a time, and stale lists
    assert not clock.beyond_budget()
    ntp["on"] = False
    below = Clock(tmp_path / "other.json", BUDGET.total_seconds(),
                  now=FakeTime(T0.timestamp() - 3600), ntp=lambda: False)
    below.raise_floor(T0.timestamp())  # a clock behind signed data: truly unknown
    assert LiveVerifier(None, below).verify("HC1:x", None).reason == "clock_unknown"


def test_ntp_clock_behind_floor_is_unknown(tmp_path):
    clock = Clock(tmp_path / "clock.json", BUDGET.total_seconds(), now=FakeTime(T0.timestamp()),
                  ntp=lambda: True)
    clock.raise_floor(T0.timestamp() + 86400)
    assert clock.state() == UNKNOWN


def test_bundles_on_disk_raise_the_floor_after_clock_json_is_lost(tmp_path, fleet, es256):
    """The order Kiosk.__init__ builds them in: the clock, then the store with
    on_bundle raising the floor. Bundles verified again at start are signed fleet data."""
    key = load_public_key(fleet.public_pem)
    store = BundleStore(tmp_path / "bundles", key, fleet.deployment, "hcmc-2021", BUDGET)
    fill(store, fleet, es256, issued=T0)
    newest = T0.timestamp() + 600
    ok, why = store.offer(fleet.delta(2, int(newest), base=1))  # the newest: a delta on top
    assert ok, why
    (tmp_path / "clock.json").unlink(missing_ok=True)  # never written here, or lost
    now = FakeTime(T0.timestamp() + 3600)
    clock = Clock(tmp_path / "clock.json", BUDGET.total_seconds(), now=now, ntp=lambda: False)
    assert clock.floor is None and clock.state() == UNKNOWN
    BundleStore(tmp_path / "bundles", key, fleet.deployment, "hcmc-2021", BUDGET,
                on_bundle=lambda b: clock.raise_floor(b.issued_at))
    assert clock.floor == newest and clock.state() == FLOOR
    assert json.loads((tmp_path / "clock.json").read_text())["floor"] == newest
    # a selftest looks without writing
    other = Clock(tmp_path / "other.json", BUDGET.total_seconds(), now=now, ntp=lambda: False)
    BundleStore(tmp_path / "bundles", key, fleet.deployment, "hcmc-2021", BUDGET,
                on_bundle=lambda b: other.raise_floor(b.issued_at, persist=False))
    assert other.floor == newest and not (tmp_path / "other.json").exists()


def test_a_bundle_store_without_a_usable_fleet_key_trusts_nothing(tmp_path, fleet, es256):
    fill(BundleStore(tmp_path / "bundles", load_public_key(fleet.public_pem), fleet.deployment,
                     "hcmc-2021", BUDGET), fleet, es256)
    seen = []
    store = BundleStore(tmp_path / "bundles", None, fleet.deployment, "hcmc-2021", BUDGET,
                        on_bundle=seen.append)
    assert store.verifier is None and seen == [] and "fleet key" in store.problem
    assert store.offer(fleet.trust(2, T0, es256)) == (False, "no usable fleet key to verify "
                                                             "it with")
    assert (tmp_path / "bundles" / "trust.bundle").exists()  # kept for a key put back



# --- config --------------------------------------------------------------
GOOD = """
[kiosk]
id = "hcm-q7-0001"
data_dir = "state"
[source]
kind = "scanner"
path = "/dev/ttyACM0"
[mqtt]
tls = false
[bundles]
fleet_key = "fleet.pem"
[privacy]
pseudonyms = true
"""


def test_config_loads_with_defaults(tmp_path):
    path = tmp_path / "kiosk.toml"
    path.write_text(GOOD)
    cfg = config.load(path)
    assert cfg.kiosk.id == "hcm-q7-0001" and cfg.decoder.cooldown == 3.0
    assert cfg.resolve(cfg.bundles.fleet_key) == tmp_path / "fleet.pem"


@pytest.mark.parametrize("edit, line, words", [
    (("tls = false", 'tls = false\nport = "x"'), 10, "'port' must be a whole number"),
    (("tls = false", "tls = false\nport = 70000"), 10, "'port' must be 1-65535"),
    (('kind = "scanner"', 'kind = "webcam"'), 6, "must be one of"),
    (('id = "hcm-q7-0001"', 'id = "bad id!"'), 3, "'id' may hold"),
    (("[privacy]", "[privacy]\ncolour = 1"), None, "unknown key 'colour'"),
    (("pseudonyms = true", "pseudonyms = 1"), None, "'pseudonyms' must be"),
    (("[kiosk]", "[kiosk"), 2, "not valid TOML"),
    (("tls = false", "tls = true"), 9, "TLS needs"),
])
def test_config_errors_name_the_line(tmp_path, edit, line, words):
    assert edit[0] in GOOD
    text = GOOD.replace(*edit)
    path = tmp_path / "kiosk.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert words in message
    assert str(path) in message
    assert "line" in message
    if line:
        assert f"line {line}" in message, message


def test_key_file_errors_name_the_file_the_line_and_the_cause(tmp_path, fleet, broker):
    """The files the configuration names, checked apart from load(): the lights must
    still go off (`python -m device.indicator off`) whatever state they are in."""
    files = broker.client_tls("hcm-q7-0001")
    text = GOOD.replace("tls = false", f'ca = "{files.ca}"\ncert = "cert.pem"\n'
                                       f'key = "{files.key}"')
    path = tmp_path / "kiosk.toml"
    path.write_text(text)
    (tmp_path / "fleet.pem").write_bytes(fleet.public_pem[:-40])  # cut short
    (tmp_path / "cert.pem").write_text("")
    cfg = config.load(path)  # the file itself is fine
    errors = [str(e) for e in config.file_errors(cfg)]
    lines = text.splitlines()
    fleet_line = lines.index('fleet_key = "fleet.pem"') + 1
    cert_line = lines.index('cert = "cert.pem"') + 1
    assert errors == [
        f"{path}, line {fleet_line}: 'fleet_key': not a PEM public key: {tmp_path / 'fleet.pem'}",
        f"{path}, line {cert_line}: 'cert': not a PEM certificate: {tmp_path / 'cert.pem'}"]
    with pytest.raises(config.ConfigError, match=f"line {fleet_line}: 'fleet_key'"):
        config.load_fleet_key(cfg)
    (tmp_path / "fleet.pem").unlink()
    assert str(config.file_errors(cfg)[0]).endswith(
        f"'fleet_key': file missing: {tmp_path / 'fleet.pem'}")
    (tmp_path / "fleet.pem").write_bytes(fleet.public_pem)
    (tmp_path / "cert.pem").write_bytes(Path(files.cert).read_bytes())
    assert config.file_errors(cfg) == []
    assert config.load_fleet_key(cfg).public_numbers() == \
        load_public_key(fleet.public_pem).public_numbers()


def test_indicator_fallback_keeps_the_files_own_valid_pins(tmp_path):
    path = tmp_path / "kiosk.toml"
    path.write_text('[indicator]\nbackend = "mock"\nred_pin = 5\ngreen_pin = "x"\n'
                    '[kiosk]\nid = 3\n')
    section = config.indicator_fallback(path)
    assert (section.backend, section.red_pin, section.green_pin) == ("mock", 5, 17)
    path.write_text('[indicator]\nbackend = "mock"\nred_pin = 17\n')  # red on green's pin
    assert config.indicator_fallback(path).red_pin == 27  # then the defaults throughout
    for broken in ("[indicator\n", "\xff"):
        path.write_text(broken, encoding="latin-1")
        assert config.indicator_fallback(path).backend == "gpio"
    assert config.indicator_fallback(tmp_path / "missing.toml").red_pin == 27



# --- cooldown, pipeline, pseudonyms -----------------------------------------
def test_cooldown_counts_a_held_code_once_and_admits_it_later():
    cd = Cooldown(3.0)
    assert cd.admit("A", 0.0)
    assert not cd.admit("A", 1.0)
    assert not cd.admit("A", 3.5)  # still held: the window slides
    assert cd.admit("B", 3.6)
    assert cd.admit("A", 7.0)


def test_pipeline_one_decision_per_presented_code(es256, make_verifier):
    _, text = cert(es256)
    seen = []

    class Decoder:
        def decode(self, frame):
            return frame

    pipe = Pipeline(Decoder(), make_verifier(es256), lambda d, now: seen.append(d),
                    cooldown_seconds=2.0, clock=lambda: CHECK)
    results = [pipe.process([text], t / 10) for t in range(10)]  # one second of frames
    assert sum(r is not None for r in results) == 1 and seen[0].green
    assert pipe.process([], 5.0) is None
    assert pipe.process("HC1:garbage", 5.0).reason == "unreadable"  # scanner text


def test_pipeline_without_trusted_clock_says_clock_unknown(es256, make_verifier):
    from device.kiosk import LiveVerifier  # noqa: F401  (import check: kiosk wiring loads)
    _, text = cert(es256)
    pipe = Pipeline(None, make_verifier(es256), cooldown_seconds=0, clock=lambda: None)
    assert pipe.process(text, 0.0).reason == "clock_unknown"


def test_an_old_pseudonym_key_is_accepted_and_never_kept(tmp_path):
    """Kiosks enrolled before sealing have one in kiosk.toml (docs/privacy.md): the file
    still loads, the value is not kept; the kiosk removes the line at start
    (tests/test_tracing_key.py)."""
    path = tmp_path / "kiosk.toml"
    path.write_text(GOOD + 'pseudonym_key = "00112233445566778899aabbccddeeff"\n')
    assert config.load(path).privacy.pseudonym_key == ""


def test_example_config_is_valid():
    from pathlib import Path
    cfg = config.load(Path(__file__).parent.parent / "device" / "kiosk.example.toml")
    assert cfg.source.kind == "picamera2" and cfg.mqtt.tls


def test_command_line_source_overrides_the_config_and_is_validated(tmp_path, capsys,
                                                                    monkeypatch):
    from device.cli import main

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)  # under systemd it would stay up

    (tmp_path / "kiosk.toml").write_text(GOOD)
    (tmp_path / "frames").mkdir()
    cfg = config.load(tmp_path / "kiosk.toml",
                      {"source": {"kind": "folder", "path": str(tmp_path / "frames")}})
    assert cfg.source.kind == "folder" and cfg.resolve(cfg.source.path) == tmp_path / "frames"
    # a missing folder is a clear message and exit 2, before anything is started
    code = main(["run", "--config", str(tmp_path / "kiosk.toml"), "--source", "folder",
                 "--path", str(tmp_path / "nowhere")])
    assert code == 2
    out = capsys.readouterr().out
    assert "nowhere" in out and "does not exist" in out


def test_config_reference_is_generated_from_the_schema():
    """docs/kiosk-config.md is what `python -m device.config` prints: no key undocumented."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "kiosk-config.md").read_text()
    assert doc == config.reference(), "run: .venv/bin/python -m device.config > docs/kiosk-config.md"
    for section, keys in config.SCHEMA.items():
        assert all(f"| `{key}` |" in doc and meaning for key, (_, _, meaning) in keys.items())

"""Publishing the signed lists to a real Mosquitto (TLS, client certificates): retained,
QoS 1, deltas and snapshot before the head, old delta topics cleared, everything again
after a broker lost its retained store, nothing lost while the broker is down; and a
kiosk's BundleStore (pinned fleet key) taking snapshot then delta. Real databases
(SQLite and PostgreSQL) through the fleet fixtures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from device.state import BundleStore
from fleet import bundles, status_lists
from fleet.app import create_app
from fleet.config import load
from fleet.publisher import Publisher
from greengate import bundle as gg_bundle
from greengate import messages, status
from greengate.status import cert_hash

DEP = "test"
ROOT = f"gg/v1/bundle/{DEP}"


@pytest.fixture
def mqtt_fleet(fleet_config, fleet_db, broker):
    """config with [mqtt] pointing at the test broker (as identity 'fleet'), 2 deltas kept,
    the signing key, and make_publisher() (stopped at the end)."""
    files = broker.client_tls("fleet")
    config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]),
                  mqtt={"host": broker.host, "port": broker.port, "tls": True,
                        "ca": files.ca, "cert": files.cert, "key": files.key},
                  bundles={"deltas": 2})
    key = bundles.ensure_signing_key(config)
    made = []

    def make_publisher():
        publisher = Publisher(config, fleet_db, backoff=(0.1, 0.5)).start()
        made.append(publisher)
        return publisher

    yield type("MqttFleet", (), {"config": config, "sessions": fleet_db, "key": key,
                                 "pub": key.public_key(), "broker": broker,
                                 "make_publisher": staticmethod(make_publisher)})
    for publisher in made:
        publisher.stop()


def cis(prefix, n):
    return [{"ci": f"URN:UVCI:01:VN:{prefix}{i:04d}"} for i in range(n)]


def opened(fleet, payload):
    return gg_bundle.open_bundle(payload, fleet.pub, DEP)


def retained(broker, subscriber) -> dict[str, bytes]:
    """What the broker holds retained under the deployment's bundle topics, read by a fresh
    subscriber (its start() returns after the broker has sent them)."""
    sub = subscriber(broker, f"{ROOT}/#", tls=broker.client_tls("reader"), persistent=False)
    held = {m.topic: m.payload for m in sub.snapshot() if m.retain and m.payload}
    sub.close()
    return held


def head_version(fleet, msgs, version) -> bool:
    return any(m.topic == f"{ROOT}/status-head" and m.payload and
               opened(fleet, m.payload).version == version for m in msgs)


def test_after_a_revoke_a_kiosk_gets_snapshot_delta_and_head(mqtt_fleet, subscriber,
                                                             tmp_path, es256, clock):
    fleet = mqtt_fleet
    with fleet.sessions() as s:
        bundles.ensure_issued(s, fleet.config, DEP)
        status_lists.revoke(s, fleet.config, DEP, cis("R", 100), actor="op")  # v2
    publisher = fleet.make_publisher()
    assert publisher.publish_all(DEP, timeout=30)

    # a kiosk starting now: the retained trust, policy and snapshot
    store = BundleStore(tmp_path / "kiosk", fleet.pub, DEP, "hcmc-2021", timedelta(hours=72))
    held = retained(fleet.broker, subscriber)
    # (no delta from the empty v1: it would be as big as the snapshot)
    assert set(held) == {f"{ROOT}/trust", f"{ROOT}/policy", f"{ROOT}/status",
                         f"{ROOT}/status-head", f"{ROOT}/valuesets"}
    for kind in ("trust", "policy", "status", "valuesets"):
        assert store.offer(held[f"{ROOT}/{kind}"], "mqtt") == (True, "applied")
    assert store.versions() == {"trust": 1, "policy": 1, "status": 2, "valuesets": 1}

    # the kiosk listens where its version's delta will come (device/feed.py)
    sub = subscriber(fleet.broker, [f"{ROOT}/status-head", f"{ROOT}/status",
                                    messages.status_delta_topic(DEP, 2)],
                     tls=fleet.broker.client_tls("kiosk-1"), persistent=False)
    app = create_app(fleet.config, publisher=publisher)
    app.testing = True
    dcc = es256.vaccination(date=clock.dose_date)
    ci = dcc["v"][0]["ci"]
    with app.app_context():
        from fleet.app import db
        result = status_lists.revoke(db(), fleet.config, DEP, [{"ci": ci, "reason": "stolen"}],
                                     actor="health")
        assert result.version == 3
        publisher.notify(DEP, {"status"})
    msgs = sub.wait_for(lambda m: head_version(fleet, m, 3), what="status head v3")

    order = [m.topic for m in msgs if m.payload and opened(fleet, m.payload).version == 3]
    assert set(order) == {f"{ROOT}/status-delta/2", f"{ROOT}/status", f"{ROOT}/status-head"}
    assert order[-1] == f"{ROOT}/status-head"  # the head comes last
    delta = next(m for m in msgs if m.topic == f"{ROOT}/status-delta/2")
    assert delta.qos == 1
    body = opened(fleet, delta.payload).body
    assert body["from"] == 2
    head = opened(fleet, [m.payload for m in msgs if m.topic == f"{ROOT}/status-head"][-1])
    assert status.parse_head(head.body) == (3, frozenset({2}))

    # snapshot first (above), then the delta: the kiosk now refuses that certificate
    assert store.offer(delta.payload, "mqtt") == (True, "applied")
    assert store.versions()["status"] == 3
    lookup = store.verifier.status.lookup(cert_hash(ci), datetime.now(timezone.utc))
    assert lookup is not None and lookup.kind == "revoked"
    # and it stays so across a restart (the delta is kept on top of its signed base)
    again = BundleStore(tmp_path / "kiosk", fleet.pub, DEP, "hcmc-2021", timedelta(hours=72))
    assert again.versions()["status"] == 3


def test_deltas_out_of_the_window_are_cleared(mqtt_fleet, subscriber):
    fleet = mqtt_fleet
    with fleet.sessions() as s:
        status_lists.revoke(s, fleet.config, DEP, cis("R", 100), actor="op")  # v1
        status_lists.revoke(s, fleet.config, DEP, cis("A", 1), actor="op")  # v2
    publisher = fleet.make_publisher()
    assert publisher.publish_all(DEP)
    assert f"{ROOT}/status-delta/1" in retained(fleet.broker, subscriber)
    for n in range(3, 6):
        with fleet.sessions() as s:
            assert status_lists.revoke(s, fleet.config, DEP, cis(f"B{n}", 1),
                                       actor="op").version == n
        assert publisher.publish_all(DEP)
    held = retained(fleet.broker, subscriber)
    deltas = sorted(t for t in held if "/status-delta/" in t)
    assert deltas == [f"{ROOT}/status-delta/3", f"{ROOT}/status-delta/4"]  # window: 2
    assert {opened(fleet, held[t]).version for t in held} == {5, 1}  # status v5; trust, policy v1
    assert publisher.stats["cleared"] == 2  # from v1 (at v4), from v2 (at v5)


def test_a_new_publisher_clears_what_an_earlier_run_left_retained(mqtt_fleet, subscriber):
    fleet = mqtt_fleet
    with fleet.sessions() as s:
        status_lists.revoke(s, fleet.config, DEP, cis("R", 100), actor="op")
        for n in range(2, 5):
            status_lists.revoke(s, fleet.config, DEP, cis(f"B{n}", 1), actor="op")
    first = fleet.make_publisher()
    assert first.publish_all(DEP)
    first.stop()
    # the fleet moves on without MQTT (e.g. the web server had no publisher)
    with fleet.sessions() as s:
        for n in range(5, 9):
            status_lists.revoke(s, fleet.config, DEP, cis(f"C{n}", 1), actor="op")
    assert sorted(t for t in retained(fleet.broker, subscriber) if "delta" in t) == \
        [f"{ROOT}/status-delta/2", f"{ROOT}/status-delta/3"]
    second = fleet.make_publisher()
    assert second.publish_all(DEP)
    assert second.wait_idle(30)
    held = retained(fleet.broker, subscriber)
    assert sorted(t for t in held if "delta" in t) == \
        [f"{ROOT}/status-delta/6", f"{ROOT}/status-delta/7"]
    assert opened(fleet, held[f"{ROOT}/status-head"]).version == 8


def test_everything_is_published_again_after_the_broker_lost_its_store(make_broker,
                                                                        fleet_config, fleet_db,
                                                                        subscriber):
    broker = make_broker(persistence=False)
    files = broker.client_tls("fleet")
    config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]),
                  mqtt={"host": broker.host, "port": broker.port, "tls": True,
                        "ca": files.ca, "cert": files.cert, "key": files.key})
    bundles.ensure_signing_key(config)
    publisher = Publisher(config, fleet_db, backoff=(0.1, 0.5)).start()
    try:
        assert publisher.publish_all(DEP)
        assert len(retained(broker, subscriber)) == 5  # trust, policy, valuesets, status, head
        broker.restart()  # no persistence: the retained messages are gone
        sub = subscriber(broker, f"{ROOT}/#", tls=broker.client_tls("reader"),
                         persistent=False)
        # the publisher reconnects by itself and publishes the current set again
        sub.wait_for(lambda m: {x.topic for x in m if x.payload} >= {
            f"{ROOT}/trust", f"{ROOT}/policy", f"{ROOT}/status", f"{ROOT}/status-head",
            f"{ROOT}/valuesets"}, timeout=30, what="the bundles republished")
        assert publisher.stats["connects"] >= 2
    finally:
        publisher.stop()


def test_changes_while_the_broker_is_down_are_published_when_it_is_back(mqtt_fleet,
                                                                          subscriber):
    fleet = mqtt_fleet
    publisher = fleet.make_publisher()
    assert publisher.publish_all(DEP)
    fleet.broker.stop()
    with fleet.sessions() as s:
        result = status_lists.revoke(s, fleet.config, DEP, cis("D", 3), actor="op")
    publisher.notify(DEP, {"status"})  # cannot go out now; kept and retried
    with fleet.sessions() as s:  # the database has it regardless (HTTP serves it)
        assert bundles.latest(s, DEP, "status").version == result.version == 2
    fleet.broker.start()
    assert publisher.wait_idle(30)
    held = retained(fleet.broker, subscriber)
    assert opened(fleet, held[f"{ROOT}/status"]).version == 2
    assert opened(fleet, held[f"{ROOT}/status-head"]).version == 2


def test_publish_command_publishes_the_current_set(mqtt_fleet, subscriber, monkeypatch,
                                                   capsys):
    from fleet.cli import main
    fleet = mqtt_fleet
    env = {"GREENGATE_FLEET_DATA_DIR": fleet.config.sections["fleet"]["data_dir"],
           "GREENGATE_FLEET_DATABASE_URL": fleet.config.database_url,
           "GREENGATE_FLEET_DEPLOYMENTS": DEP, "GREENGATE_MQTT_HOST": fleet.broker.host,
           "GREENGATE_MQTT_PORT": str(fleet.broker.port), "GREENGATE_MQTT_CA": fleet.config.mqtt.ca,
           "GREENGATE_MQTT_CERT": fleet.config.mqtt.cert, "GREENGATE_MQTT_KEY": fleet.config.mqtt.key}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["bundles", "refresh", "--timeout", "30"]) == 0
    assert f"{DEP}: published to {fleet.broker.host}:{fleet.broker.port}" in \
        capsys.readouterr().out
    assert len(retained(fleet.broker, subscriber)) == 5  # trust, policy, valuesets, status, head


def test_value_sets_and_an_imported_policy_are_published_retained(mqtt_fleet, subscriber,
                                                                  monkeypatch, capsys,
                                                                  tmp_path):
    """The CLI commands commit, then publish and wait for the broker; a kiosk starting
    afterwards applies what is retained, and refuses an older value-set bundle."""
    import json
    from pathlib import Path

    from fleet.cli import main
    fleet = mqtt_fleet
    env = {"GREENGATE_FLEET_DATA_DIR": fleet.config.sections["fleet"]["data_dir"],
           "GREENGATE_FLEET_DATABASE_URL": fleet.config.database_url,
           "GREENGATE_FLEET_DEPLOYMENTS": DEP, "GREENGATE_MQTT_HOST": fleet.broker.host,
           "GREENGATE_MQTT_PORT": str(fleet.broker.port), "GREENGATE_MQTT_CA": fleet.config.mqtt.ca,
           "GREENGATE_MQTT_CERT": fleet.config.mqtt.cert, "GREENGATE_MQTT_KEY": fleet.config.mqtt.key}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with fleet.sessions() as s:
        bundles.ensure_issued(s, fleet.config, DEP)
        first = bundles.latest(s, DEP, "valuesets").raw
    vendored = Path(__file__).resolve().parents[1] / "greengate" / "data" / "dcc-valuesets"
    names = json.loads((vendored / "vaccine-medicinal-product.json").read_text())
    names["valueSetValues"]["EU/9/99/0001"] = {"display": "new", "lang": "en", "active": True}
    (tmp_path / "names.json").write_text(json.dumps(names))
    assert main(["valuesets", "replace", str(tmp_path), "--timeout", "30"]) == 0
    rules = Path(__file__).parent / "data" / "eu-rules"
    assert main(["policies", "import", str(rules), "--name", "vn-eu", "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"{DEP}: published") == 2, out

    held = retained(fleet.broker, subscriber)
    assert opened(fleet, held[f"{ROOT}/valuesets"]).version == 2
    assert "vn-eu" in opened(fleet, held[f"{ROOT}/policy"]).body["policies"]
    store = BundleStore(tmp_path / "kiosk", fleet.pub, DEP, "vn-eu", timedelta(hours=72))
    for kind in ("trust", "policy", "status", "valuesets"):
        assert store.offer(held[f"{ROOT}/{kind}"], "mqtt") == (True, "applied")
    assert "EU/9/99/0001" in store.verifier.valuesets.codes("vaccines-covid-19-names")
    ok, why = store.offer(first, "mqtt")
    assert not ok and "refused rollback: valuesets v1" in why

"""The ACL of each tier, on real brokers running what `greengate-provision bridge` and
`mosquitto-config` generate (tests/tiers.py): what comes down a bridge reaches only the
kiosk it is for, what goes up reaches the fleet, and neither a kiosk nor a bridge can
speak for the other side."""

from __future__ import annotations

import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from provisioning.cli import main as provision
from fleet.pki import PKI
from tests.broker import Subscriber, wait_until
from tests.tiers import Tiers

INGEST = "greengate-fleet-ingest-1"
WEB = "greengate-fleet-web-1"


@pytest.fixture(scope="module")
def tiers(tmp_path_factory):
    t = Tiers(tmp_path_factory.mktemp("tiers"), ("d1", "d2")).start()
    yield t
    t.close()


class Client:
    def __init__(self, broker, files, client_id: str):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(cafile=files.ca)
        context.load_cert_chain(files.cert, files.key)
        self.client.tls_set_context(context)
        self.connected = False
        self.client.on_connect = lambda _c, _u, _f, reason, _p: setattr(
            self, "connected", not reason.is_failure)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        wait_until(lambda: self.connected, 10, f"{client_id} connected")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _quiet(sub: Subscriber, topic_filter: str, seconds: float = 1.0) -> list:
    time.sleep(seconds)
    return sub.snapshot(topic_filter)


def test_what_comes_down_reaches_only_its_kiosk_and_what_goes_up_reaches_the_fleet(tiers):
    web = Client(tiers.core, tiers.client_tls(WEB), WEB)
    ingest_id = "greengate-fleet-ingest-1"
    try:
        with Subscriber(tiers.district["d1"], "gg/v1/#", tls=tiers.client_tls("k1"),
                        client_id="k1", persistent=False) as k1, \
                Subscriber(tiers.core, "gg/v1/kiosk/#", tls=tiers.client_tls(INGEST),
                           client_id=ingest_id, persistent=False) as fleet:
            web.publish("gg/v1/bundle/hcmc/trust", b"T1", retain=True)
            web.publish("gg/v1/confirm/k1", b"for k1")  # as the ingest would (web may not)
            ingest = Client(tiers.core, tiers.client_tls("greengate-fleet"), "greengate-fleet")
            ingest.publish("gg/v1/confirm/k1", b"confirm k1")
            ingest.publish("gg/v1/confirm/k2", b"confirm k2")
            ingest.publish("gg/v1/roster/k2", b"roster of k2", retain=True)
            ingest.close()
            k1.wait_for(lambda m: any(x.payload == b"T1" for x in m), 10, "the bundle, down")
            k1.wait_for(lambda m: any(x.payload == b"confirm k1" for x in m), 10,
                        "k1's confirmation, down")
            got = {m.payload for m in _quiet(k1, "gg/v1/#")}
            assert b"confirm k2" not in got and b"roster of k2" not in got  # k2's alone
            assert b"for k1" not in got  # a web identity cannot confirm

            kiosk = Client(tiers.district["d1"], tiers.client_tls("k1b"), "k1b")
            kiosk.publish("gg/v1/kiosk/k1b/scan", b"scan of k1b")
            kiosk.publish("gg/v1/kiosk/k9/scan", b"scan as k9")  # not its own
            kiosk.publish("gg/v1/bundle/hcmc/trust", b"forged", retain=True)
            kiosk.close()
            fleet.wait_for(lambda m: any(x.payload == b"scan of k1b" for x in m), 10,
                           "k1b's scan, up")
            assert b"scan as k9" not in {m.payload for m in _quiet(fleet, "gg/v1/#")}
        with Subscriber(tiers.district["d2"], "gg/v1/bundle/#", tls=tiers.client_tls("k3"),
                        client_id="k3", persistent=False) as k3:
            k3.wait_for(lambda m: any(x.payload == b"T1" for x in m), 10, "d2 has the bundle")
            assert b"forged" not in {m.payload for m in _quiet(k3, "gg/v1/#")}
    finally:
        web.close()


def test_no_kiosk_can_fake_a_bridge_and_a_bridge_cannot_act_as_the_fleet(tiers):
    state = "gg/v1/bridge/d1/state"
    with Subscriber(tiers.core, ["gg/v1/bridge/#", "gg/v1/bundle/#"],
                    tls=tiers.client_tls(INGEST), client_id=INGEST, persistent=False) as fleet:
        fleet.wait_for(lambda m: any(x.topic == state and x.payload == b"1" for x in m), 10,
                       "d1's retained state")
        direct = Client(tiers.core, tiers.client_tls("k5"), "k5")  # a kiosk on the core
        direct.publish(state, b"0", retain=True)
        direct.close()
        # d2's bridge identity, while d2's own link is cut (one session per name)
        tiers.cut("d2")
        try:
            bridge = Client(tiers.core, tiers.client_tls("bridge-d2"), "bridge-d2")
            bridge.publish(state, b"0", retain=True)  # another bridge's state
            bridge.publish("gg/v1/bundle/hcmc/trust", b"from a bridge", retain=True)
            bridge.close()
            seen = _quiet(fleet, "gg/v1/#", 1.5)
            assert not any(m.topic == state and m.payload == b"0" for m in seen), seen
            assert b"from a bridge" not in {m.payload for m in seen}
        finally:
            tiers.restore("d2")
            tiers.wait_bridged("d2")
    assert tiers.bridge_state("d1") == b"1"


def test_the_cli_writes_a_district_and_the_core_acl_learns_its_bridge(tmp_path, capsys):
    pki_dir = tmp_path / "pki"
    assert provision(["init", "--dir", str(pki_dir), "--host", "core.example.org"]) == 0
    core = tmp_path / "core"
    assert provision(["mosquitto-config", "--pki", str(pki_dir), "--out", str(core)]) == 0
    assert "bridge-q7" not in (core / "greengate.acl").read_text()
    capsys.readouterr()
    # no fleet config names the core's reload command: written, and the admin is told
    assert provision(["bridge", "q7", "--address", "q7.example.org:8883", "--core",
                      "core.example.org:8883", "--pki", str(pki_dir), "--out",
                      str(tmp_path / "q7"), "--acl", str(core / "greengate.acl")]) == 1
    assert "has not re-read its ACL" in capsys.readouterr().err
    conf = (tmp_path / "q7" / "greengate.conf").read_text()
    for line in ("connection q7", "address core.example.org:8883", "cleansession false",
                 "notification_topic gg/v1/bridge/q7/state", "topic gg/v1/kiosk/# out 1",
                 "topic gg/v1/confirm/# in 1", "require_certificate true"):
        assert line in conf, line
    acl = (core / "greengate.acl").read_text()
    assert "user bridge-q7\ntopic write gg/v1/kiosk/#" in acl
    assert "topic write gg/v1/bridge/q7/state" in acl
    district_acl = (tmp_path / "q7" / "greengate.acl").read_text()
    # the district names one identity: its crl-follow (the bridge's certificate), which
    # reads the CRL and says which it applies, nothing of a kiosk's
    assert [line for line in district_acl.splitlines() if line.startswith("user ")] == \
        ["user bridge-q7"]
    follower = district_acl.split("user bridge-q7\n")[1].split("\n\n")[0].splitlines()
    assert follower == ["topic read gg/v1/crl", "topic write gg/v1/bridge/q7/crl",
                        "topic deny gg/v1/kiosk/#", "topic deny gg/v1/confirm/#",
                        "topic deny gg/v1/bundle/#", "topic deny gg/v1/roster/#"]
    assert "pattern write gg/v1/kiosk/%u/scan" in district_acl
    assert "topic gg/v1/crl in 1" in conf and "topic gg/v1/bridge/q7/crl out 1" in conf
    env = (tmp_path / "q7" / "crl-follow.env").read_text()
    assert "GG_BRIDGE=q7\n" in env and "GG_BROKER=q7.example.org:8883\n" in env
    assert f"GG_FILES={(tmp_path / 'q7' / 'greengate').resolve()}\n" in env
    pki = PKI(pki_dir)
    assert pki.identities()["bridge-q7"] == "bridge"
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((tmp_path / "q7" / "greengate" / "server.pem")
                                          .read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["q7.example.org"]
    capsys.readouterr()
    assert provision(["bridge", "Q7!", "--address", "q7.example.org:8883", "--core",
                      "core.example.org:8883", "--pki", str(pki_dir), "--out",
                      str(tmp_path / "bad")]) == 2
    assert "bridge name" in capsys.readouterr().err
    assert provision(["bridge", "q8", "--address", "q8.example.org", "--core",
                      "core.example.org:8883", "--pki", str(pki_dir), "--out",
                      str(tmp_path / "bad")]) == 2
    assert "is not host:port" in capsys.readouterr().err


def test_the_crl_comes_down_from_the_fleet_alone_and_goes_up_from_its_district_alone(tiers):
    """gg/v1/crl is the fleet's (a web identity) and reaches each district's crl-follow
    (the bridge's certificate); a kiosk can neither replace it (which would hide the
    retained CRL from a district that reconnects) nor read it, nor report for a district;
    a district's follower reports for its own bridge only."""
    with Subscriber(tiers.core, "gg/v1/bridge/+/crl", tls=tiers.client_tls(INGEST),
                    client_id=INGEST, persistent=False) as fleet:
        web = Client(tiers.core, tiers.client_tls(WEB), WEB)
        web.publish("gg/v1/crl", b"CRL 1", retain=True)
        web.close()
        for name, where in (("k7", tiers.district["d1"]), ("k8", tiers.core)):
            kiosk = Client(where, tiers.client_tls(name), name)
            kiosk.publish("gg/v1/crl", f"forged by {name}".encode(), retain=True)
            kiosk.publish("gg/v1/bridge/d1/crl", b"a kiosk's report", retain=True)
            kiosk.close()
        with Subscriber(tiers.district["d1"], "gg/v1/crl", tls=tiers.client_tls("bridge-d1"),
                        client_id="bridge-d1", persistent=False) as follower, \
                Subscriber(tiers.district["d2"], "gg/v1/crl", tls=tiers.client_tls("k9"),
                           client_id="k9", persistent=False) as kiosk:
            follower.wait_for(lambda m: any(x.payload == b"CRL 1" for x in m), 10,
                              "the CRL on d1, retained")
            assert {m.payload for m in _quiet(follower, "gg/v1/crl")} == {b"CRL 1"}
            assert _quiet(kiosk, "gg/v1/crl", 0.5) == []  # a kiosk does not read it
            reporter = Client(tiers.district["d1"], tiers.client_tls("bridge-d1"), "bridge-d1")
            reporter.publish("gg/v1/bridge/d1/crl", b"d1 applies 1", retain=True)
            reporter.publish("gg/v1/bridge/d2/crl", b"d1 speaking for d2", retain=True)
            reporter.publish("gg/v1/kiosk/k1/scan", b"the follower as a kiosk")
            reporter.close()
        fleet.wait_for(lambda m: any(x.payload == b"d1 applies 1" for x in m), 10,
                       "d1's report, up its bridge")
        got = {m.payload for m in _quiet(fleet, "gg/v1/#")}
        assert b"a kiosk's report" not in got and b"d1 speaking for d2" not in got

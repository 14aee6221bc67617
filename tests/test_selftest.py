"""`greengate-kiosk selftest`: every part checked, problems said in a technician's words.

Real parts: a Mosquitto with TLS (tests/broker.py), the lights on gpiozero's
MockFactory, a folder standing in for the camera, bundles signed by a test
fleet key and stored the way the kiosk stores them.
"""

import time
from datetime import timedelta

import pytest

from device.clock import Clock
from device.cli import main
from device.state import BundleStore
from greengate.bundle import load_public_key
from provisioning.issuer import qr_png
from tests.fleetkit import FleetKit

DEPLOYMENT = "selftest"


@pytest.fixture
def kiosk_dir(tmp_path, broker, pki, es256):
    """write(tls=..., bundles=True, port=...) -> config path of a kiosk in tmp_path."""
    fleet = FleetKit(DEPLOYMENT)
    (tmp_path / "fleet.pem").write_bytes(fleet.public_pem)
    (tmp_path / "frames").mkdir()
    qr_png("HC1:TEST", tmp_path / "frames" / "one.png")
    data = tmp_path / "data"

    def write(*, tls=None, bundles=True, port=None, issued=None) -> str:
        files = tls or broker.client_tls("selftest-kiosk")
        if bundles:
            issued = issued if issued is not None else int(time.time()) - 60
            clock = Clock(data / "clock.json", 72 * 3600)
            store = BundleStore(data / "bundles", load_public_key(fleet.public_pem), DEPLOYMENT,
                                "hcmc-2021", timedelta(hours=72),
                                on_bundle=lambda b: clock.raise_floor(b.issued_at))
            for raw in (fleet.trust(1, issued, es256), fleet.policy(2, issued),
                        fleet.status(3, issued)):
                assert store.offer(raw, "test")[0]
        path = tmp_path / "kiosk.toml"
        path.write_text(f"""
[kiosk]
id = "selftest-kiosk"
deployment = "{DEPLOYMENT}"
data_dir = "data"
[source]
kind = "folder"
path = "frames"
[indicator]
backend = "mock"
[mqtt]
host = "localhost"
port = {port or broker.port}
ca = "{files.ca}"
cert = "{files.cert}"
key = "{files.key}"
[bundles]
fleet_key = "fleet.pem"
[privacy]
pseudonyms = false
""")
        return str(path)

    return write


def lines(out: str) -> dict[str, str]:
    """part -> the line about it."""
    found = {}
    for line in out.splitlines():
        if line.startswith(("OK", "PROBLEM")) and ":" in line:
            found[line.split()[1].rstrip(":")] = line
    return found


def test_all_parts_ok(kiosk_dir, capsys):
    code = main(["selftest", "--config", kiosk_dir()])
    out = capsys.readouterr().out
    got = lines(out)
    assert code == 0, out
    assert set(got) == {"lights", "camera", "clock", "bundles", "broker"}
    assert all(line.startswith("OK") for line in got.values()), out
    assert "picture received (" in got["camera"]
    assert "trust v1, policy v2, status v3" in got["bundles"]
    assert "with TLS" in got["broker"]
    assert "0 problem(s)" in out


def test_broker_down_and_no_lists_are_named_in_plain_words(kiosk_dir, broker, capsys):
    config = kiosk_dir(bundles=False)
    broker.stop()
    code = main(["selftest", "--config", config])
    out = capsys.readouterr().out
    got = lines(out)
    assert code == 1
    assert got["broker"].startswith("PROBLEM") and "cannot reach the broker" in got["broker"]
    assert got["bundles"].startswith("PROBLEM") and "not received its lists" in got["bundles"]
    # no NTP here and no fleet data yet: the time cannot be trusted
    assert got["clock"].startswith("PROBLEM") and "cannot be trusted" in got["clock"]
    assert got["lights"].startswith("OK") and got["camera"].startswith("OK")
    assert "3 problem(s)" in out


def test_certificate_of_another_fleet_is_a_tls_problem(kiosk_dir, foreign_pki, capsys):
    code = main(["selftest", "--config", kiosk_dir(tls=foreign_pki.client("selftest-kiosk"))])
    got = lines(capsys.readouterr().out)
    assert code == 1
    assert got["broker"].startswith("PROBLEM") and "re-enrol" in got["broker"]


def test_lists_past_the_offline_budget(kiosk_dir, capsys):
    code = main(["selftest", "--config", kiosk_dir(issued=int(time.time()) - 80 * 3600)])
    got = lines(capsys.readouterr().out)
    assert code == 1
    assert got["bundles"].startswith("PROBLEM") and "older than the offline budget" in got["bundles"]
    assert got["clock"].startswith("PROBLEM") and "80 h old, beyond the offline budget of 72 h" \
        in got["clock"]


def test_missing_camera_folder_is_a_config_problem(kiosk_dir, tmp_path, capsys):
    config = kiosk_dir()
    code = main(["selftest", "--config", config, "--path", str(tmp_path / "no-camera")])
    out = capsys.readouterr().out
    assert code == 2 and "PROBLEM config" in out and "does not exist" in out

"""`greengate-kiosk selftest`: every part checked, problems said in a technician's words.

Real parts: a Mosquitto with TLS (tests/broker.py), the lights on gpiozero's
MockFactory, a folder standing in for the camera, bundles signed by a test
fleet key and stored the way the kiosk stores them.
"""

import time
from datetime import timedelta
from pathlib import Path

import pytest

from device.clock import Clock
from device.cli import main
from device.state import BundleStore
from greengate.bundle import load_public_key
from provisioning.issuer import qr_png
from tests.broker import TLSFiles
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


# --- the real cause, named -----------------------------------------------------------------

def expired_certificate(path, cn="selftest-kiosk"):
    """A self-signed client certificate that expired on 2024-01-31 12:00 UTC."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    end = dt.datetime(2024, 1, 31, 12, 0, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(end - dt.timedelta(days=30)).not_valid_after(end)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = path.with_suffix(".key")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(key_path)


def test_missing_tls_files_are_named_not_blamed_on_expiry(kiosk_dir, broker, tmp_path, capsys):
    files = broker.client_tls("selftest-kiosk")
    gone_ca, gone_cert = tmp_path / "ca.pem", tmp_path / "kiosk.pem"
    code = main(["selftest", "--config", kiosk_dir(tls=TLSFiles(str(gone_ca), str(gone_cert),
                                                                files.key))])
    got = lines(capsys.readouterr().out)
    assert code == 1
    assert got["broker"].startswith("PROBLEM")
    assert f"the broker's CA certificate: file missing: {gone_ca}" in got["broker"]
    assert f"the kiosk certificate: file missing: {gone_cert}" in got["broker"]
    assert "expired" not in got["broker"] and "retired" not in got["broker"]


def test_damaged_certificate_and_key_are_not_pem(kiosk_dir, broker, tmp_path, capsys):
    files = broker.client_tls("selftest-kiosk")
    bad_cert, bad_key = tmp_path / "kiosk.pem", tmp_path / "kiosk.key"
    bad_cert.write_bytes(Path(files.cert).read_bytes()[:120])  # cut short by a bad copy
    bad_key.write_text("not a key\n")
    code = main(["selftest", "--config", kiosk_dir(tls=TLSFiles(files.ca, str(bad_cert),
                                                                str(bad_key)))])
    got = lines(capsys.readouterr().out)
    assert code == 1
    assert f"the kiosk certificate: not a PEM certificate: {bad_cert}" in got["broker"]
    assert f"the kiosk's private key: not a PEM private key: {bad_key}" in got["broker"]
    assert "the broker's CA certificate" not in got["broker"]  # that one is fine


def test_expired_certificate_says_when(kiosk_dir, broker, tmp_path, capsys):
    cert = tmp_path / "kiosk.pem"
    key = expired_certificate(cert)
    code = main(["selftest", "--config", kiosk_dir(tls=TLSFiles(broker.client_tls("x").ca,
                                                                str(cert), key))])
    got = lines(capsys.readouterr().out)
    assert code == 1
    assert f"the kiosk certificate: expired on 2024-01-31 12:00 UTC: {cert}" in got["broker"]


def test_missing_fleet_key_file_is_named(kiosk_dir, tmp_path, capsys):
    config = kiosk_dir()
    (tmp_path / "fleet.pem").unlink()
    code = main(["selftest", "--config", config])
    got = lines(capsys.readouterr().out)
    assert code == 1
    assert f"file missing: {tmp_path / 'fleet.pem'}" in got["bundles"]


def test_bundles_on_disk_vouch_for_the_clock_after_clock_json_is_lost(kiosk_dir, tmp_path,
                                                                      capsys):
    config = kiosk_dir()
    (tmp_path / "data" / "clock.json").unlink()
    code = main(["selftest", "--config", config])
    got = lines(capsys.readouterr().out)
    assert code == 0, got
    assert "consistent with the last fleet data" in got["clock"]
    assert not (tmp_path / "data" / "clock.json").exists()  # a selftest changes nothing


def test_each_listed_broker_is_checked_and_a_dead_fallback_is_named(kiosk_dir, broker, capsys):
    """[mqtt] brokers (a district broker, then the core): a fallback nobody can reach is
    no fallback, so each is checked and named."""
    from tests.broker import free_port
    path = Path(kiosk_dir())
    dead = free_port()
    path.write_text(path.read_text().replace(
        f'host = "localhost"\nport = {broker.port}\n',
        f'brokers = ["localhost:{broker.port}", "127.0.0.1:{dead}"]\n'))
    code = main(["selftest", "--config", str(path)])
    out = capsys.readouterr().out
    about = [line for line in out.splitlines() if line.split()[1:2] == ["broker"]]
    assert about == [f"OK      broker localhost:{broker.port}: localhost:{broker.port} "
                     "reachable with TLS",
                     f"PROBLEM broker 127.0.0.1:{dead}: cannot reach the broker at "
                     f"127.0.0.1:{dead} (Connection refused); check the network cable/Wi-Fi "
                     "and the broker address"], out
    assert code == 1 and "1 problem(s)" in out

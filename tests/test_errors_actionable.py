"""Errors a person can act on (issue 15): a missing MQTT TLS file is named with its config
key (exit 2, no traceback), and a TLS failure to a real Mosquitto (a server certificate
for another name, an unknown CA, a client certificate the broker refuses) is logged at
once with host:port and the reason, and makes a one-shot `bundles publish` fail within
seconds instead of waiting out --timeout."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from fleet import cli as fleet_cli
from fleet.config import load
from fleet.ingest import IngestWorker
from fleet.mqtt_trouble import Trouble
from fleet.publisher import for_app
from fleet import pki as fleet_pki
from tests.broker import Broker, TLSFiles, wait_until


def write_config(path, fleet_config, **mqtt) -> str:
    lines = ["[fleet]", f'data_dir = "{fleet_config.data_dir}"',
             f'database_url = "{fleet_config.database_url}"', 'deployments = ["test"]', "[mqtt]"]
    lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}"
              for k, v in mqtt.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


PLAIN = {"host": "localhost", "port": 8883, "ca": "pki/ca.pem", "cert": "pki/fleet.pem",
         "key": "pki/fleet.key"}


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
@pytest.mark.parametrize("command", [["ingest"], ["bundles", "publish"], ["bundles", "refresh"]])
def test_a_missing_tls_file_is_named_with_its_key(fleet_config, tmp_path, capsys, missing,
                                                  command):
    pki = fleet_pki.init(fleet_config.data_dir / "pki", ["localhost"])
    (fleet_config.data_dir / PLAIN[missing]).unlink()
    path = write_config(tmp_path / "fleet.toml", fleet_config, **PLAIN)
    code = fleet_cli.main(["--config", path, *command])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and "FileNotFoundError" not in err
    lines = [line for line in err.splitlines() if line.startswith("greengate-fleet:")]
    assert len(lines) == 1, err
    assert f"[mqtt] {missing} = '{PLAIN[missing]}'" in lines[0]
    assert str(pki.path(PLAIN[missing].split("/", 1)[1])) in lines[0]


def test_an_identity_without_certificate_names_the_key(fleet_config, tmp_path, capsys):
    path = write_config(tmp_path / "fleet.toml", fleet_config, host="localhost",
                        ca="pki/ca.pem", cert="pki/clients/{identity}.pem",
                        key="pki/clients/{identity}.key")
    code = fleet_cli.main(["--config", path, "ingest"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "[mqtt] cert = 'pki/clients/{identity}.pem'" in err
    assert "greengate-fleet-ingest-1.pem is missing" in err


def test_a_file_that_is_not_pem_is_named(fleet_config, tmp_path, capsys):
    fleet_pki.init(fleet_config.data_dir / "pki", ["localhost"])
    (fleet_config.data_dir / "pki/fleet.pem").write_bytes(b"\x00\xffnot a certificate")
    path = write_config(tmp_path / "fleet.toml", fleet_config, **PLAIN)
    assert fleet_cli.main(["--config", path, "bundles", "publish"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "[mqtt] cert = 'pki/fleet.pem'" in err


def test_the_web_publisher_names_the_missing_file(fleet_config, caplog):
    config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]), mqtt=PLAIN)
    with caplog.at_level(logging.ERROR):
        assert for_app(config) is None
    assert "[mqtt] ca = 'pki/ca.pem'" in caplog.text and "does not exist" in caplog.text


# --- TLS to a real broker ------------------------------------------------------------------
def tls_case(case: str, tmp_path, foreign_pki):
    """(fleet PKI directory's parent, broker started, the [mqtt] ca to use, expected text)."""
    wrong = fleet_pki.init(tmp_path / "data" / "pki", ["broker.example.invalid"])
    right = fleet_pki.init(tmp_path / "other" / "pki", ["127.0.0.1"])
    ca, expect = "pki/ca.pem", None
    if case == "wrong name":  # the server certificate names another host
        server = TLSFiles(str(wrong.path("ca.pem")), str(wrong.path("server.pem")),
                          str(wrong.path("server.key")))
        expect = "does not name [mqtt] host '127.0.0.1'"
    elif case == "unknown ca":  # [mqtt] ca is not the CA that signed the broker's cert
        server = TLSFiles(str(wrong.path("ca.pem")), str(right.path("server.pem")),
                          str(right.path("server.key")))
        expect = "not signed by [mqtt] ca 'pki/ca.pem'"
    else:  # "client refused": the broker trusts another CA for its clients
        server = TLSFiles(foreign_pki.ca, str(right.path("server.pem")),
                          str(right.path("server.key")))
        ca = str(right.path("ca.pem"))
        expect = "the broker refused this process's client certificate"
    broker = Broker(tmp_path / "broker", SimpleNamespace(server=server)).start()
    return broker, ca, expect


CASES = ["wrong name", "unknown ca", "client refused"]


@pytest.mark.parametrize("case", CASES)
def test_a_tls_failure_fails_bundles_publish_at_once_with_the_reason(
        fleet_config, tmp_path, capsys, mosquitto, foreign_pki, case):
    broker, ca, expect = tls_case(case, tmp_path, foreign_pki)
    try:
        fleet = load(None, env={}, fleet={**fleet_config.sections["fleet"],
                                           "data_dir": str(tmp_path / "data")})
        path = write_config(tmp_path / "fleet.toml", fleet, host="127.0.0.1", port=broker.port,
                            ca=ca, cert="pki/clients/{identity}.pem",
                            key="pki/clients/{identity}.key")
        started = time.monotonic()
        code = fleet_cli.main(["--config", path, "bundles", "refresh", "--timeout", "60"])
        took = time.monotonic() - started
    finally:
        broker.stop()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"127.0.0.1:{broker.port}" in err and expect in err, err
    # the old behaviour waited out --timeout (60 s) and said only "cannot connect"
    assert took < 30, took


@pytest.mark.parametrize("case", CASES)
def test_a_tls_failure_is_logged_by_ingest_at_once(fleet_config, tmp_path, caplog, mosquitto,
                                                   foreign_pki, case):
    broker, ca, expect = tls_case(case, tmp_path, foreign_pki)
    config = load(None, env={}, fleet={**fleet_config.sections["fleet"],
                                        "data_dir": str(tmp_path / "data")},
                  mqtt={"host": "127.0.0.1", "port": broker.port, "ca": ca,
                        "cert": "pki/clients/{identity}.pem",
                        "key": "pki/clients/{identity}.key"})
    worker = IngestWorker(config, presence=False)
    try:
        with caplog.at_level(logging.INFO, logger="greengate.fleet.ingest"):
            worker.start()
            wait_until(lambda: any(expect in r.getMessage() for r in caplog.records),
                       timeout=15, what="the TLS failure logged")
            wait_until(lambda: worker.trouble.failures >= 3, timeout=30,
                       what="more attempts")
    finally:
        worker.stop()
        broker.stop()
    failures = [r for r in caplog.records if "cannot connect to MQTT" in r.getMessage()]
    assert failures[0].levelno == logging.ERROR
    assert f"127.0.0.1:{broker.port}" in failures[0].getMessage()
    assert len(failures) == 1, [r.getMessage() for r in failures]  # repeats rate-limited
    assert not worker.connected and expect in worker.problem


def test_repeats_are_rate_limited_and_a_new_reason_is_logged_at_once(caplog):
    now = [0.0]
    config = load(None, env={}, mqtt={"host": "broker", "port": 8883})
    trouble = Trouble("test", config, logging.getLogger("t.trouble"), repeat_every=60,
                      clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t.trouble"):
        for _ in range(5):
            trouble.connect_failed(ConnectionRefusedError(111, "Connection refused"))
            now[0] += 5
        assert len(caplog.records) == 1 and "broker:8883" in caplog.text
        assert not trouble.permanent
        now[0] = 61
        trouble.connect_failed(ConnectionRefusedError(111, "Connection refused"))
        assert len(caplog.records) == 2 and "4 more failed attempt(s)" in caplog.messages[1]
        trouble.connect_failed(TimeoutError("timed out"))
        assert len(caplog.records) == 3 and "no answer" in caplog.messages[2]
        trouble.connected()
        assert "after 7 failed attempt(s)" in caplog.messages[3]
        assert trouble.reason is None and trouble.failures == 0


# --- the kiosk's selftest: one cause, one thing to do --------------------------------------
def test_selftest_tells_missing_camera_software_from_a_loose_cable():
    import importlib.util

    from device import selftest
    from device.sources import Picamera2Source, SourceError

    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here (a Pi): the missing-software case cannot occur")
    with pytest.raises(SourceError) as missing:
        Picamera2Source()  # the real constructor, on a machine without picamera2
    text = selftest._camera_problem("picamera2", "", missing.value)
    assert text.startswith("the camera software is not installed") and "picamera2" in text
    assert "cable" not in text
    cable = selftest._camera_problem("picamera2", "", SourceError("cannot open the Pi camera 0"))
    assert "ribbon cable" in cable and "not installed" not in cable
    usb = selftest._camera_problem("v4l2", "/dev/video9", SourceError("no frames"))
    assert "USB cable" in usb and "/dev/video9" in usb and "ribbon" not in usb


def test_the_demo_keeps_gunicorns_control_socket_out_of_home():
    import importlib.util
    from pathlib import Path

    from gunicorn.config import Config

    spec = importlib.util.spec_from_file_location(
        "demo", Path(__file__).resolve().parents[1] / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    options = demo.no_control_socket()
    config = Config()
    parsed = config.parser().parse_args([*options, "fleet.wsgi:app"])
    if "control_socket_disable" not in config.settings:
        assert options == []  # an older gunicorn: it has no control socket to keep out
        return
    assert options == ["--no-control-socket"] and parsed.control_socket_disable is True

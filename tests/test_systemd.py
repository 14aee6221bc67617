"""The kiosk's systemd unit (systemd/greengate-kiosk.service) and sd_notify (greengate/watchdog.py)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from greengate import watchdog

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "greengate-kiosk.service"
EXEC = "/opt/greengate/.venv/bin/greengate-kiosk"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None,
                                   reason="systemd-analyze is not installed (package systemd)")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> [values] (keys like DeviceAllow= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(key: str) -> str:
    return parse_unit(UNIT.read_text())["Service"][key][-1]


def analyze(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})


@pytest.fixture
def unit_copy(tmp_path):
    """The unit with the kiosk's programs (not installed here) swapped for an existing one.

    Everything else, including the arguments, stays as shipped.
    """
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"/opt/greengate/\.venv/bin/[\w.-]+", sys.executable, text))
    return copy


def _about(output: str, unit: Path) -> list[str]:
    return [line for line in output.splitlines() if unit.name in line or str(unit) in line]


# --- the unit file --------------------------------------------------------------------------

def test_unit_runs_the_kiosk_as_a_notify_service_with_a_watchdog():
    s = parse_unit(UNIT.read_text())["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{EXEC} run --config /etc/greengate/kiosk.toml"]
    assert s["WatchdogSec"] == ["30"]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"] == ["2"]
    assert (s["User"], s["Group"]) == (["greengate"], ["greengate"])
    assert s["SupplementaryGroups"] == ["gpio video dialout"]
    assert s["StateDirectory"] == ["greengate"]
    # After any stop (crash, watchdog kill) the outputs are forced off, failures ignored.
    assert s["ExecStopPost"] == ["-/opt/greengate/.venv/bin/python -m device.indicator off "
                                 "--config /etc/greengate/kiosk.toml"]
    assert parse_unit(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_is_hardened():
    s = parse_unit(UNIT.read_text())["Service"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "LockPersonality", "RestrictRealtime", "MemoryDenyWriteExecute"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/greengate"]
    assert s["SystemCallArchitectures"] == ["native"]
    assert set(s["RestrictAddressFamilies"][0].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6",
                                                           "AF_NETLINK"}
    assert s["CapabilityBoundingSet"] == [""]


def test_unit_opens_only_the_kiosk_devices():
    s = parse_unit(UNIT.read_text())["Service"]
    assert s["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0] for entry in s["DeviceAllow"]}
    # gpiochip, video + v4l-subdev, media, dma_heap, serial scanners
    assert allowed == {"char-gpiochip", "char-video4linux", "char-media", "char-dma_heap",
                       "char-ttyACM", "char-ttyUSB", "char-ttyAMA"}
    assert "PrivateDevices" not in s  # would hide /dev/gpiochip* and the camera


def test_watchdog_ping_interval_matches_the_unit(monkeypatch):
    seconds = int(service("WatchdogSec"))
    monkeypatch.setenv("WATCHDOG_USEC", str(seconds * 1_000_000))  # what systemd sets
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog.watchdog_interval() == seconds / 2


@needs_analyze
def test_systemd_analyze_verify_finds_nothing(unit_copy):
    result = analyze("verify", "--man=no", str(unit_copy), cwd=unit_copy.parent)
    output = result.stdout + result.stderr
    assert _about(output, unit_copy) == [], output
    assert result.returncode == 0, output


@needs_analyze
def test_systemd_analyze_verify_would_catch_mistakes(unit_copy):
    """The check above is meaningful: the same call reports a misspelt key and a bad binary."""
    text = unit_copy.read_text()
    unit_copy.write_text(text.replace("ProtectHome=yes", "ProtectHomme=yes")
                         .replace(f"ExecStart={sys.executable} ", f"ExecStart={EXEC} "))
    result = analyze("verify", "--man=no", str(unit_copy), cwd=unit_copy.parent)
    problems = "\n".join(_about(result.stdout + result.stderr, unit_copy))
    assert "ProtectHomme" in problems
    assert EXEC in problems


@needs_analyze
def test_systemd_analyze_security_rates_the_unit_ok(unit_copy):
    """Overall exposure below 2.0 ("OK") in systemd's own offline security review."""
    result = analyze("security", "--offline=yes", "--threshold=20", str(unit_copy),
                     cwd=unit_copy.parent)
    output = result.stdout + result.stderr
    if "--offline" in output and "unrecognized" in output:
        pytest.skip("systemd-analyze older than 250 has no offline security review")
    assert result.returncode == 0, output
    assert "Overall exposure level" in output


# --- sd_notify ------------------------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's notify socket (a filesystem path)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_without_systemd_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert watchdog.notify("READY=1") is False
    assert watchdog.ready() is False and watchdog.watchdog_ping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a transport we don't speak
    assert watchdog.notify("READY=1") is False


def test_notifications_reach_the_socket(notify_socket):
    assert watchdog.ready() is True
    assert notify_socket.recv(4096) == b"READY=1"
    assert watchdog.watchdog_ping() is True
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert watchdog.status("scanning\n12 scans, outbox 0") is True
    assert notify_socket.recv(4096) == b"STATUS=scanning 12 scans, outbox 0"
    assert watchdog.ready("running, broker connected") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=running, broker connected"
    assert watchdog.stopping() is True
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"greengate-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert watchdog.watchdog_ping() is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_missing_socket_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert watchdog.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@greengate-nobody-{uuid.uuid4().hex}")
    assert watchdog.watchdog_ping() is False


@pytest.mark.parametrize("usec, pid, expected", [
    ("30000000", None, 15.0),
    ("30000000", "self", 15.0),
    ("30000000", "other", None),  # the watchdog is meant for another process
    (None, None, None),
    ("0", None, None),
    ("soon", None, None),
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    assert watchdog.watchdog_interval() == expected


# --- the fleet's ingest worker (systemd/greengate-fleet-ingest.service) ----------------------
INGEST = ROOT / "systemd" / "greengate-fleet-ingest.service"
FLEET_EXEC = "/opt/greengate/.venv/bin/greengate-fleet"


def ingest_service() -> dict[str, list[str]]:
    return parse_unit(INGEST.read_text())["Service"]


def test_ingest_unit_runs_the_presence_worker_as_a_notify_service():
    s = ingest_service()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{FLEET_EXEC} --config /etc/greengate/fleet.toml ingest --worker 1 "
                              "--standby"]
    assert "--no-presence" not in s["ExecStart"][0]  # this one tracks presence
    assert s["Restart"] == ["on-failure"]
    assert (s["User"], s["Group"]) == (["greengate-fleet"], ["greengate-fleet"])
    assert s["StateDirectory"] == ["greengate-fleet"]
    unit = parse_unit(INGEST.read_text())
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_ingest_unit_arguments_are_the_cli_s(tmp_path, capsys):
    """ExecStart's arguments parse with the real command line (a typo would be a usage
    error); only the config file is missing here."""
    from fleet import cli

    args = ingest_service()["ExecStart"][0].split()[1:]
    args[args.index("--config") + 1] = str(tmp_path / "missing.toml")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "cannot read the configuration" in err and "usage" not in err


def test_ingest_watchdog_and_stop_timeouts_fit_the_worker():
    from fleet import ingest

    s = ingest_service()
    watchdog_sec = int(s["WatchdogSec"][0])
    assert ingest.PING_EVERY <= watchdog_sec / 2
    # a long write by the web server is waited for: SQLite's busy timeout (fleet/db.py)
    # blocks the worker's loop without pings for up to 30 s
    assert "busy_timeout=30000" in (ROOT / "fleet" / "db.py").read_text()
    assert watchdog_sec > 30
    # SIGTERM: the last batch (<= batch_seconds) plus the database grace period fit
    assert int(s["TimeoutStopSec"][0]) > ingest.STOP_GRACE + 5


def test_ingest_unit_is_hardened():
    s = ingest_service()
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "LockPersonality", "RestrictRealtime",
                "MemoryDenyWriteExecute", "RestrictSUIDSGID"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/greengate-fleet"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["CapabilityBoundingSet"] == [""]
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged"]




# --- the fleet's web server unit ----------------------------------------------------------
WEB = ROOT / "systemd" / "greengate-fleet-web.service"
GUNICORN_EXEC = "/opt/greengate/.venv/bin/gunicorn"


def web_service() -> dict[str, list[str]]:
    return parse_unit(WEB.read_text())["Service"]


def test_web_unit_upgrades_the_schema_then_runs_gunicorn_on_the_wsgi_entry():
    s = web_service()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStartPre"] == [f"{FLEET_EXEC} db upgrade"]
    assert "GREENGATE_FLEET_CONFIG=/etc/greengate/fleet.toml" in s["Environment"]
    start = s["ExecStart"][0].split()
    assert start[0] == GUNICORN_EXEC and start[-1] == "fleet.wsgi:app"
    # the same user and state directory as the ingest worker: one SQLite file, one key
    assert (s["User"], s["StateDirectory"]) == (ingest_service()["User"],
                                                ingest_service()["StateDirectory"])
    assert s["ReadWritePaths"] == ["/var/lib/greengate-fleet"]


def test_web_unit_gunicorn_arguments_parse():
    """ExecStart's options are gunicorn's (a typo would stop the service at boot)."""
    from gunicorn.config import Config

    args = web_service()["ExecStart"][0].split()[1:]
    parser = Config(usage="%(prog)s").parser()
    parsed = parser.parse_args(args)
    assert parsed.workers == 4 and parsed.bind == ["127.0.0.1:8000"]
    assert parsed.args == ["fleet.wsgi:app"]




# --- the fleet's hourly upkeep ------------------------------------------------------------
MAINTAIN = ROOT / "systemd" / "greengate-fleet-maintain.service"
MAINTAIN_TIMER = ROOT / "systemd" / "greengate-fleet-maintain.timer"


def test_upkeep_purges_then_refreshes_the_lists_with_real_commands(tmp_path, capsys):
    """Every ExecStart line parses with the real command line (a typo is a usage error)."""
    from fleet import cli

    s = parse_unit(MAINTAIN.read_text())["Service"]
    assert s["Type"] == ["oneshot"]
    starts = [line.split() for line in s["ExecStart"]]
    assert [start[1:3] for start in starts] == [["scans", "purge"], ["scans", "rollup"],
                                                ["sealing", "purge"], ["bundles", "refresh"],
                                                ["reports", "weekly"]]
    for start in starts:
        assert start[0] == FLEET_EXEC
        args = ["--config", str(tmp_path / "missing.toml"), *start[1:]]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "cannot read the configuration" in err and "usage" not in err
    assert s["User"] == ingest_service()["User"]


def test_upkeep_runs_hourly_well_inside_the_offline_budget():
    from device.config import SCHEMA as KIOSK_SCHEMA
    from fleet.config import SCHEMA as FLEET_SCHEMA

    timer = parse_unit(MAINTAIN_TIMER.read_text())
    assert timer["Timer"]["OnCalendar"] == ["hourly"] and timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    refresh = FLEET_SCHEMA["bundles"]["refresh_hours"][1]
    budget = KIOSK_SCHEMA["bundles"]["offline_budget_hours"].default
    assert refresh + 1 <= budget / 2  # a list is re-signed long before a kiosk gives up


# --- every fleet unit, as systemd reads it ----------------------------------------------------
FLEET_UNITS = {"ingest": (INGEST,), "web": (WEB,), "upkeep": (MAINTAIN, MAINTAIN_TIMER)}
ALERTS = ROOT / "systemd" / "greengate-fleet-alerts.service"
FLEET_UNITS["alerts"] = (ALERTS,)  # the alert dispatcher (tests at the end of this file)


def fleet_copies(tmp_path, units) -> list[Path]:
    """The units with their programs (not installed here) swapped for an existing one,
    everything else as shipped."""
    copies = []
    for unit in units:
        copy = tmp_path / unit.name
        copy.write_text(re.sub(r"/opt/greengate/\.venv/bin/[\w.-]+", sys.executable,
                               unit.read_text()))
        copies.append(copy)
    return copies


@needs_analyze
@pytest.mark.parametrize("name", FLEET_UNITS)
def test_fleet_units_pass_systemd_analyze_verify(tmp_path, name):
    copies = fleet_copies(tmp_path, FLEET_UNITS[name])
    result = analyze("verify", "--man=no", *map(str, copies), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert [line for c in copies for line in _about(output, c)] == [], output
    assert result.returncode == 0, output


@needs_analyze
@pytest.mark.parametrize("name", FLEET_UNITS)
def test_fleet_unit_security_review_is_ok(tmp_path, name):
    """Overall exposure below 2.0 ("OK") in systemd's offline security review."""
    service = fleet_copies(tmp_path, FLEET_UNITS[name])[0]
    result = analyze("security", "--offline=yes", "--threshold=20", str(service), cwd=tmp_path)
    output = result.stdout + result.stderr
    if "--offline" in output and "unrecognized" in output:
        pytest.skip("systemd-analyze older than 250 has no offline security review")
    assert result.returncode == 0, output
    assert "Overall exposure level" in output


# --- the fleet's alert dispatcher (systemd/greengate-fleet-alerts.service) -------------------
def alerts_service() -> dict[str, list[str]]:
    return parse_unit(ALERTS.read_text())["Service"]


def test_alerts_unit_runs_the_dispatcher_as_a_notify_service():
    s = alerts_service()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{FLEET_EXEC} --config /etc/greengate/fleet.toml alerts"]
    assert s["Restart"] == ["on-failure"]
    # the same user and state directory as the ingest worker: one SQLite file and its locks
    for key in ("User", "Group", "StateDirectory", "ReadWritePaths"):
        assert s[key] == ingest_service()[key], key
    unit = parse_unit(ALERTS.read_text())
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_alerts_unit_arguments_are_the_cli_s(tmp_path, capsys):
    from fleet import cli

    args = alerts_service()["ExecStart"][0].split()[1:]
    args[args.index("--config") + 1] = str(tmp_path / "missing.toml")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "cannot read the configuration" in err and "usage" not in err


def test_alerts_watchdog_and_stop_timeouts_fit_the_dispatcher():
    from fleet import alerts
    from fleet.config import SCHEMA

    s = alerts_service()
    watchdog_sec = int(s["WatchdogSec"][0])
    assert alerts.PING_EVERY <= watchdog_sec / 2
    assert watchdog_sec > 30  # SQLite's busy timeout (fleet/db.py) is waited for
    # SIGTERM: a send in progress may take its full timeout before it is recorded
    longest = max(SCHEMA["alerts"]["webhook_timeout"][1], SCHEMA["alerts"]["smtp_timeout"][1])
    assert int(s["TimeoutStopSec"][0]) > longest + 5


def test_alerts_unit_is_hardened_like_the_ingest_worker():
    s, ingest = alerts_service(), ingest_service()
    keys = [k for k in ingest if k.startswith(("Protect", "Private", "Restrict", "Lock",
                                               "Memory", "SystemCall", "NoNew", "Capability",
                                               "Ambient", "Device", "Remove", "Keyring",
                                               "ProcSubset"))]
    assert len(keys) > 20
    for key in keys:
        assert s[key] == ingest[key], key


# --- a district broker's CRL follower (systemd/greengate-crl-follow.service) -----------------
FOLLOW = ROOT / "systemd" / "greengate-crl-follow.service"


def test_crl_follow_unit_runs_what_bridge_writes_its_environment_for(tmp_path):
    from provisioning import bridge_config
    s = parse_unit(FOLLOW.read_text())["Service"]
    assert s["EnvironmentFile"] == ["/etc/greengate/crl-follow.env"]
    assert s["Restart"] == ["always"]
    (exec_start,) = s["ExecStart"]
    assert exec_start.startswith("/opt/greengate/.venv/bin/greengate-provision crl-follow ")
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    written = {line.split("=", 1)[0] for line in bridge_config.follow_env(
        "d1", "d1.example:8883", tmp_path).splitlines() if line and line[0] != "#"}
    assert used == written == {"GG_BRIDGE", "GG_FILES", "GG_BROKER"}
    # the arguments parse: the same command line with the environment filled in
    from provisioning.cli import main
    args = exec_start.split(" ", 1)[1].replace("${GG_BRIDGE}", "D!").replace(
        "${GG_FILES}", str(tmp_path)).replace("${GG_BROKER}", "d1.example:8883").split()
    assert main(args) == 2  # the bad name refused before anything connects


@needs_analyze
def test_crl_follow_unit_passes_systemd_analyze_verify(tmp_path):
    (copy,) = fleet_copies(tmp_path, [FOLLOW])
    result = analyze("verify", "--man=no", str(copy), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert _about(output, copy) == [], output
    assert result.returncode == 0, output

"""Never dark: a camera or scanner missing or lost, a key file damaged, SIGTERM on an
empty scanner FIFO.

Real parts: a Mosquitto with TLS (tests/broker.py) the kiosk reports to, the lights
on gpiozero's MockFactory (read from the pins), the Picamera2 stand-in of
tests/test_sources.py (it can be "unplugged"), a pty standing in for a serial
scanner, FIFOs, and `greengate-kiosk run` subprocesses for the signal and exit-code
behaviour. Signed bundles are stored the way the kiosk stores them, so the only
fault left is the one each test makes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from device import config as config_module
from device import indicator as indicator_module
from device import kiosk as kiosk_module
from device.clock import Clock
from device.sources import Picamera2Source, Recovering
from device.state import BundleStore
from greengate import messages
from greengate.bundle import load_public_key
from tests.broker import wait_until
from tests.fleetkit import FleetKit
from tests.test_sources import FakePicamera2, picamera2  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
KIOSK = "recovery-kiosk"
DEPLOYMENT = "recovery"


# --- a kiosk in this process, its pins readable ----------------------------------------------

class Site:
    def __init__(self, tmp: Path, broker, issuer):
        self.tmp, self.broker = tmp, broker
        self.fleet = FleetKit(DEPLOYMENT)
        (tmp / "fleet.pem").write_bytes(self.fleet.public_pem)
        self.data = tmp / "data"
        issued = int(time.time()) - 60
        clock = Clock(self.data / "clock.json", 72 * 3600)
        store = BundleStore(self.data / "bundles", load_public_key(self.fleet.public_pem),
                            DEPLOYMENT, "hcmc-2021", timedelta(hours=72),
                            on_bundle=lambda b: clock.raise_floor(b.issued_at))
        for raw in (self.fleet.trust(1, issued, issuer), self.fleet.policy(1, issued),
                    self.fleet.status(1, issued)):
            assert store.offer(raw, "test")[0]

    def toml(self, kind: str, path: str, *, fleet_key="fleet.pem", extra="") -> str:
        tls = self.broker.client_tls(KIOSK)
        return f"""
[kiosk]
id = "{KIOSK}"
deployment = "{DEPLOYMENT}"
data_dir = "{self.data}"

[source]
kind = "{kind}"
path = "{path}"
width = 320
height = 240

[indicator]
backend = "mock"
red_seconds = 0.3
green_seconds = 0.3

[mqtt]
host = "{self.broker.host}"
port = {self.broker.port}
ca = "{tls.ca}"
cert = "{tls.cert}"
key = "{tls.key}"
heartbeat = 1.0
keepalive = 5

[bundles]
fleet_key = "{fleet_key}"
{extra}"""

    def config_obj(self, kind, path, **options):
        file = self.tmp / "kiosk.toml"
        file.write_text(self.toml(kind, path, **options))
        return config_module.load(file)


@pytest.fixture
def site(tmp_path, broker, es256):
    return Site(tmp_path, broker, es256)


class Running:
    """Kiosk.run() in a thread (signals are the subprocess tests' business)."""

    def __init__(self, cfg):
        self.kiosk = kiosk_module.Kiosk(cfg)
        self.status = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.status = self.kiosk.run(keep_running=True)

    def pin(self, name):
        return self.kiosk.indicator._devices[name].pin

    def source_attempts(self) -> int:
        return self.kiosk.source.attempts

    def stop(self) -> int:
        self.kiosk.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the kiosk did not stop"
        return self.status


def flashes(run: Running, seconds: float = 2.2) -> tuple[int, bool]:
    """(times the red LED came on, whether green ever lit) over `seconds`."""
    red, green = run.pin("red"), run.pin("green")
    red.clear_states()
    green.clear_states()
    time.sleep(seconds)
    ons = sum(1 for entry in red.states[1:] if entry.state)
    return ons, any(entry.state for entry in green.states)


def beats(sub) -> list[dict]:
    topic = messages.heartbeat_topic(KIOSK)
    return [json.loads(m.payload) for m in sub.snapshot() if m.topic == topic]


def beat_faults(sub, after: int = 0) -> list[list[tuple[str, str]]]:
    return [[(f["kind"], f["detail"]) for f in b.get("faults", [])] for b in beats(sub)[after:]]


# --- Recovering on its own -----------------------------------------------------------------

def test_recovering_opens_again_with_backoff_and_reports(picamera2, monkeypatch):  # noqa: F811
    monkeypatch.setattr(Picamera2Source, "stall_seconds", 1.0)
    events = []
    picamera2.plugged = False
    source = Recovering(lambda: Picamera2Source(320, 240, ticks=True), "camera",
                        on_fault=lambda d: events.append(("fault", d)),
                        on_recovered=lambda: events.append(("ok", "")), first=0.2, longest=0.8)
    phase, frames, deadline = "missing", 0, time.monotonic() + 30
    for item in source:
        assert time.monotonic() < deadline, (phase, events)
        if phase == "missing" and source.attempts >= 4:
            picamera2.plugged, phase = True, "plugged"  # plugged in after 4 failed attempts
        elif phase == "plugged" and item is not None:
            frames += 1
            if frames == 3:
                picamera2.plugged, phase = False, "lost"  # unplugged mid-run
        elif phase == "lost" and events[-1][0] == "fault":
            picamera2.plugged, phase = True, "back"  # and plugged back
        elif phase == "back" and item is not None:
            break
    source.close()
    changes = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert [kind for kind, _ in changes] == ["fault", "ok", "fault", "ok"], events
    assert changes[0][1].startswith("camera not found: cannot open the Pi camera 0: ")
    assert changes[2][1] == "camera lost: the Pi camera delivered no frame for 1 s"
    assert len(picamera2.instances) >= 2 and picamera2.instances[0].calls[-1] == ("close",)


def test_recovering_ends_with_a_finite_source(tmp_path):
    from device.sources import FolderSource
    from provisioning.issuer import qr_png
    qr_png("HC1:X", tmp_path / "a.png")
    source = Recovering(lambda: FolderSource(tmp_path), "folder")
    assert sum(1 for item in source if item is not None) == 1 and source.finished


def test_recovering_close_ends_a_wait_at_once():
    def missing():
        raise OSError("no such device")
    source = Recovering(missing, "camera", first=60)
    iterator = iter(source)
    assert next(iterator) is None  # waiting 60 s before the next attempt
    started = time.monotonic()
    threading.Timer(0.2, source.close).start()
    assert list(iterator) in ([], [None])
    assert time.monotonic() - started < 2


# --- a kiosk whose camera is missing, comes, goes and comes back ----------------------------

def test_camera_missing_then_lost_and_back_without_a_restart(site, subscriber, picamera2,  # noqa: F811
                                                             monkeypatch):
    monkeypatch.setattr(Picamera2Source, "stall_seconds", 1.0)
    picamera2.plugged = False
    sub = subscriber(site.broker, messages.heartbeat_topic(KIOSK))
    run = Running(site.config_obj("picamera2", ""))
    try:
        # no camera: the kiosk runs, reports and shows the source fault
        sub.wait_for(lambda m: any("source" in dict(f) for f in beat_faults(sub)), 20,
                     "a heartbeat with the source fault")
        detail = dict(beat_faults(sub)[-1])["source"]
        assert detail.startswith("camera not found: cannot open the Pi camera 0"), detail
        wait_until(lambda: run.kiosk.indicator.pattern == "source_fault", 5, "source pattern")
        red_flashes, green_lit = flashes(run)
        assert red_flashes >= 3 and not green_lit  # three flashes every 2 s, never green

        # plugged in: frames flow, the fault ends, on the light and in the heartbeat
        picamera2.plugged = True
        wait_until(lambda: not run.kiosk.faults.is_set("source"), 20, "the camera back")
        mark = len(beats(sub))
        sub.wait_for(lambda m: any(f == [] for f in beat_faults(sub, mark)), 10,
                     "a heartbeat without faults")
        wait_until(lambda: run.kiosk.indicator.pattern is None, 5, "the light off")
        assert FakePicamera2.instances[-1].frames > 0

        # unplugged mid-run: lost, said so, and back again without a restart
        cameras = len(FakePicamera2.instances)
        picamera2.plugged = False
        wait_until(lambda: run.kiosk.faults.is_set("source"), 10, "the camera lost")
        mark = len(beats(sub))
        sub.wait_for(lambda m: any(dict(f).get("source", "").startswith("camera lost: ")
                                   for f in beat_faults(sub, mark)), 10, "lost in a heartbeat")
        wait_until(lambda: run.kiosk.indicator.pattern == "source_fault", 5, "source pattern")
        picamera2.plugged = True
        wait_until(lambda: not run.kiosk.faults.is_set("source"), 20, "the camera back again")
        assert len(FakePicamera2.instances) > cameras  # opened again, same process
        assert run.thread.is_alive()
    finally:
        assert run.stop() == 0


# --- a serial scanner unplugged and plugged back (a pty behind a stable path) ---------------

def test_scanner_lost_and_back_resumes_scanning(site, subscriber, tmp_path):
    link = tmp_path / "ttyACM-scanner"  # the stable name udev gives a scanner (by-id)
    master, slave = os.openpty()
    link.symlink_to(os.ttyname(slave))
    sub = subscriber(site.broker, f"{messages.ROOT}/kiosk/{KIOSK}/#")
    run = Running(site.config_obj("scanner", str(link)))
    try:
        sub.wait_for(lambda m: beats(sub), 20, "a heartbeat")
        assert not run.kiosk.faults.is_set("source")

        os.close(master)  # unplugged
        os.close(slave)
        wait_until(lambda: run.kiosk.faults.is_set("source"), 10, "the scanner lost")
        mark = len(beats(sub))
        sub.wait_for(lambda m: any(dict(f).get("source", "").startswith("scanner lost: ")
                                   for f in beat_faults(sub, mark)), 10, "lost in a heartbeat")
        wait_until(lambda: run.kiosk.indicator.pattern == "source_fault", 5, "source pattern")
        red_flashes, green_lit = flashes(run)
        assert red_flashes >= 3 and not green_lit

        master, slave = os.openpty()  # plugged back: a new tty behind the same name
        link.unlink()
        link.symlink_to(os.ttyname(slave))
        wait_until(lambda: not run.kiosk.faults.is_set("source"), 40, "the scanner back")
        os.write(master, b"HC1:NOT-A-CERTIFICATE\r\n")
        scans = messages.scan_topic(KIOSK)
        got = sub.wait_for(lambda m: any(x.topic == scans for x in m), 15, "a scan after")
        scan = json.loads([m for m in got if m.topic == scans][-1].payload)
        assert (scan["decision"], scan["reason"]) == ("red", "unreadable")
        assert run.thread.is_alive()
    finally:
        assert run.stop() == 0
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


# --- key files: the file-and-line message, the config fault, still reporting ----------------

def test_damaged_fleet_key_is_a_config_fault_not_a_crash(site, subscriber, caplog):
    (site.tmp / "fleet.pem").write_text("-----BEGIN PUBLIC KEY-----\nbroken\n"
                                        "-----END PUBLIC KEY-----\n")
    sub = subscriber(site.broker, messages.heartbeat_topic(KIOSK))
    fifo = site.tmp / "scanner"
    os.mkfifo(fifo)
    cfg = site.config_obj("scanner", str(fifo))
    line = next(n for n, text in enumerate(cfg.text.splitlines(), 1)
                if text.startswith("fleet_key"))
    run = Running(cfg)
    try:
        detail = dict(run.kiosk.faults.active())["config"]
        assert detail == (f"{site.tmp / 'kiosk.toml'}, line {line}: 'fleet_key': not a PEM "
                          f"public key: {site.tmp / 'fleet.pem'}")
        sub.wait_for(lambda m: any(dict(f).get("config") == detail for f in beat_faults(sub)),
                     20, "a heartbeat with the config fault")
        wait_until(lambda: run.kiosk.indicator.pattern == "config_fault", 5, "config pattern")
        red_flashes, green_lit = flashes(run, 1.0)
        assert red_flashes >= 4 and not green_lit  # the flicker: 0.1 s on, 0.1 s off
        assert run.kiosk.store.verifier is None  # nothing can be trusted without the key
    finally:
        assert run.stop() == 0
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


def kiosk_process(tmp: Path, config: Path, env=None) -> subprocess.Popen:
    log = open(tmp / "kiosk.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(config)],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def read_log(tmp: Path) -> str:
    path = tmp / "kiosk.log"
    return path.read_text(errors="replace") if path.exists() else ""


def stop(proc: subprocess.Popen, within: float) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the kiosk ignored SIGTERM for {within} s")
    return code, time.monotonic() - started


def test_missing_fleet_key_process_keeps_running_and_reports(site, subscriber):
    fifo = site.tmp / "scanner"
    os.mkfifo(fifo)
    config = site.tmp / "kiosk.toml"
    config.write_text(site.toml("scanner", str(fifo), fleet_key="gone.pem"))
    sub = subscriber(site.broker, messages.heartbeat_topic(KIOSK))
    proc = kiosk_process(site.tmp, config)
    try:
        sub.wait_for(lambda m: any("config" in dict(f) for f in beat_faults(sub)), 30,
                     "a heartbeat with the config fault")
        assert proc.poll() is None  # no exit, so no systemd restart loop
    finally:
        code, _ = stop(proc, 10)
    out = read_log(site.tmp)
    assert code == 0, out
    assert f"{config}, line " in out and f"'fleet_key': file missing: {site.tmp / 'gone.pem'}" \
        in out
    assert "Traceback" not in out


# --- SIGTERM ----------------------------------------------------------------------------------

def test_sigterm_stops_a_kiosk_waiting_on_an_empty_fifo(site):
    """No writer ever opens the FIFO: open() and read() would block for ever."""
    fifo = site.tmp / "scanner"
    os.mkfifo(fifo)
    config = site.tmp / "kiosk.toml"
    config.write_text(site.toml("scanner", str(fifo)))
    proc = kiosk_process(site.tmp, config)
    try:
        wait_until(lambda: f"kiosk {KIOSK} running" in read_log(site.tmp), 30, "running")
        time.sleep(1.0)  # well inside the wait for a writer
    finally:
        code, took = stop(proc, 10)
    assert code == 0, read_log(site.tmp)
    assert took < 5, f"{took:.1f} s to stop"


# --- a configuration that cannot be used at all --------------------------------------------

@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    got = []

    def read():
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return
    threading.Thread(target=read, daemon=True).start()
    yield str(path), got
    sock.close()


def test_unparseable_config_under_systemd_shows_the_fault_until_stopped(tmp_path, notify_socket):
    path, notes = notify_socket
    config = tmp_path / "kiosk.toml"
    config.write_text('[kiosk]\nid = "x"\n[indicator]\nbackend = "mock"\n[mqtt]\nport = 0\n'
                      '[bundles]\nfleet_key = "fleet.pem"\n')
    proc = kiosk_process(tmp_path, config, {"NOTIFY_SOCKET": path})
    try:
        wait_until(lambda: any(n.startswith("READY=1") for n in notes), 20, "READY=1")
        time.sleep(0.5)
        assert proc.poll() is None  # up, not in a restart loop
    finally:
        code, took = stop(proc, 10)
    out = read_log(tmp_path)
    assert code == 2 and took < 5, out
    assert f"{config}, line 6: 'port' must be 1-65535" in out and "Traceback" not in out
    assert "cannot show the configuration fault" not in out  # the mock pins of its file
    ready = next(n for n in notes if n.startswith("READY=1"))
    assert "STATUS=configuration error:" in ready and "STOPPING=1" in notes


def test_unparseable_config_outside_systemd_exits_2_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = tmp_path / "kiosk.toml"
    config.write_text("[kiosk\n")
    proc = kiosk_process(tmp_path, config)
    assert proc.wait(30) == 2
    assert "not valid TOML" in read_log(tmp_path)


def test_config_fault_pattern_on_the_files_own_pins(tmp_path, monkeypatch):
    """The pattern shown while the file cannot be used: on its [indicator] pins where
    those are valid, read here from the MockFactory pins."""
    made = []
    real = indicator_module.make_indicator

    def capture(section, pin_factory=None):
        made.append(real(section, pin_factory))
        return made[-1]
    monkeypatch.setattr(indicator_module, "make_indicator", capture)
    config = tmp_path / "kiosk.toml"
    config.write_text('[indicator]\nbackend = "mock"\nred_pin = 5\n[kiosk]\nid = 3\n')
    message = str(pytest.raises(config_module.ConfigError, config_module.load, config).value)
    stopping = threading.Event()
    result = []
    thread = threading.Thread(target=lambda: result.append(
        kiosk_module.config_fault(config, message, stopping)))
    thread.start()
    try:
        wait_until(lambda: made and made[0].pattern == "config_fault", 5, "config pattern")
        red = made[0]._devices["red"].pin
        assert red.info.name == "GPIO5"
        red.clear_states()
        time.sleep(0.8)
        assert sum(1 for s in red.states[1:] if s.state) >= 3
        assert not any(s.state for s in made[0]._devices["green"].pin.states)
    finally:
        stopping.set()
        thread.join(5)
    assert result == [2]


# --- the watchdog: fed while the loop waits or retries, not while it hangs --------------------

def test_watchdog_fed_while_waiting_and_retrying_but_not_when_the_loop_hangs(
        site, notify_socket, monkeypatch):
    path, notes = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s; none after 0.8 s stuck
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    fifo = site.tmp / "scanner"
    os.mkfifo(fifo)
    run = Running(site.config_obj("scanner", str(fifo)))
    writer = None
    try:
        def pings_during(seconds):
            before = notes.count("WATCHDOG=1")
            time.sleep(seconds)
            return notes.count("WATCHDOG=1") - before

        wait_until(lambda: run.kiosk.pipeline is not None, 20, "the frame loop")
        assert pings_during(2.0) >= 5  # an empty FIFO, nobody scanning: alive

        release = threading.Event()
        real = run.kiosk.pipeline.process
        monkeypatch.setattr(run.kiosk.pipeline, "process",
                            lambda item, now: release.wait(30) and real(item, now))
        writer = os.open(fifo, os.O_WRONLY)
        os.write(writer, b"HC1:HANGS\n")  # the loop hangs on this one
        time.sleep(1.2)  # past the 0.8 s without progress
        assert pings_during(1.5) == 0  # a hung loop is left to systemd
        release.set()
        assert pings_during(1.0) >= 3
    finally:
        if writer is not None:
            os.close(writer)
        assert run.stop() == 0


def test_watchdog_fed_while_a_missing_camera_is_retried(site, notify_socket, monkeypatch):
    path, notes = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    run = Running(site.config_obj("v4l2", "/dev/video-greengate-none"))
    try:
        wait_until(lambda: run.kiosk.faults.is_set("source"), 20, "the camera not found")
        assert dict(run.kiosk.faults.active())["source"].startswith(
            "camera not found: cannot open camera '/dev/video-greengate-none'")
        before = notes.count("WATCHDOG=1")
        time.sleep(4.0)  # backoff 1, 2, 4 s: waits far longer than the 0.8 s limit
        assert notes.count("WATCHDOG=1") - before >= 10
        assert run.source_attempts() >= 2
    finally:
        assert run.stop() == 0

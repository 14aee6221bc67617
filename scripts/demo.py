"""GreenGate demo: a whole fleet on one machine, offline (README "Two commands", docs/demo.md).

    .venv/bin/python scripts/demo.py [--duration SECONDS] [--outage-after S] [--outage-for S]

Sets up, in a temporary directory and with the real commands: the fleet PKI and a
Mosquitto on the generated TLS/ACL configuration (greengate-provision init,
mosquitto-config), the fleet server on SQLite (greengate-fleet db upgrade, user add,
token create, gunicorn, ingest), a test issuer whose signer goes on the fleet's trust
list (POST /api/v1/trust/hcmc) and the signed bundles published (greengate-fleet
bundles refresh / publish), and three kiosks enrolled in three districts
(greengate-provision enrol --out) that run `greengate-kiosk run --source folder` on a
loop of camera-like frames (green and red cases mixed) with mock lights. One kiosk is
killed after --outage-after seconds and restarted --outage-for seconds later, so an
outage opens and closes on the dashboard.

Prints "[demo] ..." progress lines, the dashboard URL and a one-time admin login.
Runs until Ctrl-C / SIGTERM (or --duration seconds, then exits 0), stops every
child process and removes the temporary directory unless KEEP_DEMO_DIR=1.
Exit status: 0 stopped as asked; 1 a step failed (its output is printed); 2 bad usage.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def no_control_socket() -> list[str]:
    """Recent gunicorn (27 here) opens a control socket in ~/.gunicorn/ by default: a file
    outside the demo's folder that outlives it, for a feature the demo does not use."""
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return []
    return (["--no-control-socket"] if any(s.name == "control_socket_disable"
                                           for s in KNOWN_SETTINGS) else [])
DEPLOYMENT = "hcmc"
ADMIN = "admin"

# (kiosk id, location code, location name, district code, district name)
KIOSKS = [
    ("hcm-q1-0001", "q1-benthanh", "Chợ Bến Thành", "q1", "Quận 1"),
    ("hcm-q7-0001", "q7-coopmart-pmh", "Co.op Mart Phú Mỹ Hưng", "q7", "Quận 7"),
    ("hcm-td-0001", "td-vincom-thuduc", "Vincom Thủ Đức", "thu-duc", "TP Thủ Đức"),
]
OUTAGE_KIOSK = KIOSKS[2][0]


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class Stop(Exception):
    """SIGINT or SIGTERM: stop everything."""


class StepFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StepFailed(f"{what} exited with status {proc.returncode}" + _tail(log))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StepFailed(f"{what} did not open port {port} within {timeout:.0f} s" + _tail(log))


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log) + " (end) ---\n" + "\n".join(text)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the demo itself dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Demo:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="greengate-demo."))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GREENGATE_")}
        self.config_path = self.tmp / "fleet.toml"
        self.env["GREENGATE_FLEET_CONFIG"] = str(self.config_path)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.pki = self.tmp / "fleet-data" / "pki"
        self.mqtt_port = args.mqtt_port or free_port()
        self.web_port = args.web_port or free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.services: dict[str, subprocess.Popen] = {}  # broker, web, ingest
        self.kiosks: dict[str, subprocess.Popen] = {}
        self.kiosk_configs: dict[str, Path] = {}
        self.token = ""
        self.password = ""

    # --- running things --------------------------------------------------------------
    def run(self, *cmd, stdin: str | None = None, what: str) -> str:
        result = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True,
                                text=True, env=self.env, cwd=self.tmp,
                                stdin=None if stdin is not None else subprocess.DEVNULL)
        if result.returncode != 0:
            raise StepFailed(f"{what} failed (exit {result.returncode}): "
                             f"{' '.join(str(c) for c in cmd)}\n{result.stdout}{result.stderr}")
        return result.stdout

    def spawn(self, name: str, *cmd) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        try:
            return subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()

    def wait_web(self, web: subprocess.Popen, timeout: float = 60) -> None:
        """Until the web server answers the API (gunicorn opens its port before its
        worker has loaded the app)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api("GET", "/api/v1/presence")
                return
            except (OSError, ValueError):
                if web.poll() is not None or time.monotonic() > deadline:
                    raise StepFailed("the web server does not answer" +
                                     _tail(self.logs / "web.log")) from None
                time.sleep(0.2)

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    # --- set-up steps ------------------------------------------------------------------
    def setup(self) -> None:
        say(f"working directory {self.tmp}")
        say("fleet PKI: CA, broker certificate, one MQTT identity per fleet process, "
            "bundle-signing key (greengate-provision init)")
        self.run(BIN / "greengate-provision", "init", "--dir", self.pki, "--host", "localhost",
                 "--host", "127.0.0.1", what="greengate-provision init")

        say(f"broker configuration: TLS, client certificates, ACL (greengate-provision "
            f"mosquitto-config), port {self.mqtt_port}")
        conf_dir = self.tmp / "mosquitto"
        persist = self.tmp / "mosquitto-data"
        persist.mkdir()
        self.run(BIN / "greengate-provision", "mosquitto-config", "--pki", self.pki, "--out",
                 conf_dir, "--port", self.mqtt_port, "--bind", "127.0.0.1",
                 "--persistence-dir", persist, what="greengate-provision mosquitto-config")
        self.write_fleet_config(conf_dir)
        self.start_broker(conf_dir)

        say("fleet database: SQLite (greengate-fleet db upgrade)")
        self.run(BIN / "greengate-fleet", "db", "upgrade", what="greengate-fleet db upgrade")
        self.password = secrets.token_urlsafe(12)
        self.run(BIN / "greengate-fleet", "user", "add", ADMIN, "--role", "admin",
                 "--password-stdin", stdin=self.password + "\n", what="greengate-fleet user add")
        self.token = self.run(BIN / "greengate-fleet", "token", "create", ADMIN, "--name",
                              "demo", what="greengate-fleet token create").strip()
        credentials = self.tmp / "credentials.json"
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": self.url, "user": ADMIN, "password": self.password,
                       "token": self.token}, fh)

        for kiosk_id, location, location_name, district, district_name in KIOSKS:
            say(f"enrolling kiosk {kiosk_id} at {location_name}, {district_name} "
                "(greengate-provision enrol --out)")
            self.enrol(kiosk_id, location, location_name, district, district_name)

        say(f"fleet web server: gunicorn on {self.url} (plain HTTP, this machine only)")
        web = self.spawn("web", BIN / "gunicorn", "-w", "1", "--threads", "4", "-b",
                         f"127.0.0.1:{self.web_port}", "--graceful-timeout", "5",
                         *no_control_socket(), "fleet.wsgi:app")
        self.services["web"] = web
        say("ingest worker with presence tracking (greengate-fleet ingest --worker 1)")
        self.services["ingest"] = self.spawn("ingest", BIN / "greengate-fleet", "ingest",
                                             "--worker", "1")
        wait_port(self.web_port, 60, "the web server", web, self.logs / "web.log")
        self.wait_web(web)

        say("signing the first bundles: trust list, policies, status list "
            "(greengate-fleet bundles refresh)")
        self.run(BIN / "greengate-fleet", "bundles", "refresh", what="greengate-fleet bundles "
                 "refresh")
        frames = self.make_issuer_and_frames()
        say("adding the test issuer's signer to the trust list (POST /api/v1/trust/hcmc)")
        signer = (self.tmp / "issuer" / "signer.pem").read_text()
        try:
            added = self.api("POST", f"/api/v1/trust/{DEPLOYMENT}",
                             {"certificate": signer, "reason": "GreenGate demo test issuer"})
        except (OSError, ValueError) as exc:
            raise StepFailed(f"POST /api/v1/trust/{DEPLOYMENT} failed: {exc}") from None
        say(f"trust list version {added['version']} signed; publishing the bundles retained "
            "on the broker (greengate-fleet bundles publish)")
        self.run(BIN / "greengate-fleet", "bundles", "publish", what="greengate-fleet bundles "
                 "publish")

        for kiosk_id, *_ in KIOSKS:
            self.kiosk_configs[kiosk_id] = self.kiosk_config(kiosk_id, frames[kiosk_id])
            self.start_kiosk(kiosk_id)
            say(f"kiosk {kiosk_id} started: greengate-kiosk run --source folder "
                f"({len(list(frames[kiosk_id].iterdir()))} frames on a loop, mock lights)")

    def write_fleet_config(self, conf_dir: Path) -> None:
        p = self.pki
        self.config_path.write_text(f'''# GreenGate demo fleet (scripts/demo.py)
[fleet]
data_dir = "{self.tmp / 'fleet-data'}"
deployments = ["{DEPLOYMENT}"]
[mqtt]
host = "127.0.0.1"
port = {self.mqtt_port}
ca = "{p / 'ca.pem'}"
cert = "{p / 'clients'}/{{identity}}.pem"
key = "{p / 'clients'}/{{identity}}.key"
[bundles]
signing_key = "{p / 'bundle-signing.key'}"
[pki]
dir = "{p}"
broker_crl = "{conf_dir / 'greengate' / 'crl.pem'}"
broker_reload = ""
[enrol]
broker_host = "127.0.0.1"
broker_port = {self.mqtt_port}
[web]
language = "en"
secure_cookies = false
''')

    def start_broker(self, conf_dir: Path) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(mosquitto, os.X_OK):
            raise StepFailed("mosquitto is not installed: run `bash scripts/setup.sh --with mqtt`")
        lines = [(conf_dir / "greengate.conf").read_text()]
        if os.getuid() == 0:
            lines.append("user root")  # else Mosquitto drops to user mosquitto
        conf = self.tmp / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        say(f"starting Mosquitto on 127.0.0.1:{self.mqtt_port} with the generated configuration")
        broker = self.spawn("mosquitto", mosquitto, "-c", conf)
        self.services["broker"] = broker
        wait_port(self.mqtt_port, 15, "mosquitto", broker, self.logs / "mosquitto.log")

    def enrol(self, kiosk_id, location, location_name, district, district_name) -> None:
        out = self.tmp / "enrol" / f"{kiosk_id}.tar"
        out.parent.mkdir(exist_ok=True)
        self.run(BIN / "greengate-provision", "enrol", kiosk_id, "--location", location,
                 "--location-name", location_name, "--district", district, "--district-name",
                 district_name, "--deployment", DEPLOYMENT, "--out", out,
                 what=f"greengate-provision enrol {kiosk_id}")
        with tarfile.open(out) as tar:
            tar.extractall(self.tmp / "kiosks" / kiosk_id, filter="data")

    def kiosk_config(self, kiosk_id: str, frames: Path) -> Path:
        """The enrolment's kiosk.toml, plus what a simulated kiosk needs: its data folder,
        the frame folder on a loop, mock lights, and quicker heartbeats."""
        from greengate import enrolment
        folder = self.tmp / "kiosks" / kiosk_id / enrolment.BUNDLE_DIR
        path = folder / "kiosk.toml"
        text = path.read_text()
        text = text.replace("[kiosk]\n", f'[kiosk]\ndata_dir = "{folder / "data"}"\n', 1)
        text = text.replace("[mqtt]\n", "[mqtt]\nkeepalive = 10\nheartbeat = 10.0\n", 1)
        text += f'''
[source]
kind = "folder"
path = "{frames}"
loop = true
interval = {self.args.interval}

[decoder]
cooldown = 3.0

[indicator]
backend = "mock"
'''
        path.write_text(text)
        return path

    def start_kiosk(self, kiosk_id: str) -> None:
        self.kiosks[kiosk_id] = self.spawn(f"kiosk-{kiosk_id}", BIN / "greengate-kiosk", "run",
                                           "--config", self.kiosk_configs[kiosk_id],
                                           "--keep-running")

    # --- certificates and frames ---------------------------------------------------------
    def make_issuer_and_frames(self) -> dict[str, Path]:
        from provisioning.issuer import Issuer
        say("test issuer: a document signer that mints real HC1 certificates "
            "(provisioning/issuer.py)")
        issuer = Issuer.create(name="GreenGate Demo Issuer")
        issuer.save(self.tmp / "issuer")
        stranger = Issuer.create(name="Unknown Issuer", country="XX")  # not on the trust list
        now = datetime.now(timezone.utc)

        def day(days: int) -> str:
            return (now + timedelta(days=days)).date().isoformat()

        def vacc(signer, who, dose_days_ago, *, exp_days=365, dose=2):
            family, given, dob = who
            dcc = signer.vaccination(date=day(-dose_days_ago), dose=dose, of=2, family=family,
                                     given=given, dob=dob)
            return signer.mint(dcc, iat=now - timedelta(days=min(dose_days_ago, 300)),
                               exp=now + timedelta(days=exp_days))

        people = [("Nguyễn", "Văn An", "1990-01-01"), ("Trần", "Thị Bình", "1985-05-12"),
                  ("Lê", "Minh Châu", "1972-11-30"), ("Phạm", "Quốc Dũng", "2001-03-08"),
                  ("Hoàng", "Thu Hà", "1995-07-21"), ("Võ", "Thanh Hải", "1968-02-14")]
        frames: dict[str, Path] = {}
        say("making camera-like frames for each kiosk: green (vaccinated), red (dose too "
            "recent, expired, unknown issuer)")
        for n, (kiosk_id, *_) in enumerate(KIOSKS):
            folder = self.tmp / "frames" / kiosk_id
            folder.mkdir(parents=True)
            p = people[(2 * n) % len(people):] + people[:(2 * n) % len(people)]
            cases = [
                ("1-green-vaccinated", vacc(issuer, p[0], 40)),
                ("2-red-too-recent", vacc(issuer, p[1], 3)),
                ("3-green-vaccinated", vacc(issuer, p[2], 120)),
                ("4-red-expired", vacc(issuer, p[3], 400, exp_days=-20)),
                ("5-green-vaccinated", vacc(issuer, p[4], 60)),
                ("6-red-unknown-issuer", vacc(stranger, p[5], 50)),
            ]
            for i, (name, text) in enumerate(cases):
                (folder / f"{name}.jpg").write_bytes(camera_frame(text, seed=100 * n + i))
            frames[kiosk_id] = folder
        return frames

    # --- running -------------------------------------------------------------------------
    def banner(self) -> None:
        say("=" * 66)
        say(f"dashboard: {self.url}/")
        say(f"one-time admin login: user {ADMIN}  password {self.password}")
        say(f"API token (also in {self.tmp / 'credentials.json'}): {self.token}")
        say("kiosks: " + ", ".join(f"{k} ({loc}, {dn})" for k, _, loc, _, dn in KIOSKS))
        say(f"kiosk {OUTAGE_KIOSK} will lose power after {self.args.outage_after:.0f} s and "
            f"come back {self.args.outage_for:.0f} s later (an outage on the dashboard)")
        say("Ctrl-C stops everything" + (f"; or it stops by itself after "
                                           f"{self.args.duration:.0f} s"
                                           if self.args.duration else ""))
        say("=" * 66)

    def watch(self, started: float) -> None:
        outage_at = time.monotonic() + self.args.outage_after
        back_at = None
        outage_done = False
        next_report = time.monotonic() + self.args.report_every
        while True:
            now = time.monotonic()
            if self.args.duration and now - started >= self.args.duration:
                say(f"--duration {self.args.duration:.0f} s reached")
                return
            for name, proc in self.services.items():
                if proc.poll() is not None:
                    raise StepFailed(f"{name} exited with status {proc.returncode}"
                                     + _tail(self.logs / f"{name}.log"))
            for kiosk_id, proc in self.kiosks.items():
                if proc.poll() is not None and not (kiosk_id == OUTAGE_KIOSK and back_at):
                    say(f"kiosk {kiosk_id} exited (status {proc.returncode}); restarting it"
                        + _tail(self.logs / f"kiosk-{kiosk_id}.log", 5))
                    self.start_kiosk(kiosk_id)
            if not outage_done and back_at is None and now >= outage_at:
                proc = self.kiosks[OUTAGE_KIOSK]
                proc.kill()
                proc.wait()
                back_at = now + self.args.outage_for
                say(f"kiosk {OUTAGE_KIOSK} killed (a power cut): the broker sends its last "
                    "will, the dashboard shows it offline with an open outage")
            elif back_at is not None and now >= back_at:
                self.start_kiosk(OUTAGE_KIOSK)
                back_at, outage_done = None, True
                say(f"kiosk {OUTAGE_KIOSK} restarted: back online with a new session, its "
                    "outage closes")
            if now >= next_report:
                next_report = now + self.args.report_every
                self.report()
            time.sleep(0.2)

    def report(self) -> None:
        try:
            kiosks = self.api("GET", "/api/v1/kiosks?limit=100")
            stats = self.api("GET", "/api/v1/stats/scans-per-hour")
            outages = self.api("GET", "/api/v1/outages")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            say(f"(could not read the fleet's API: {exc})")
            return
        items = kiosks.get("items", kiosks.get("kiosks", []))
        states = ", ".join(f"{k.get('id')} {k.get('state')}" for k in items)
        totals = stats.get("totals", {})
        closed = sum(1 for o in outages.get("items", []) if not o.get("open"))
        open_ = sum(1 for o in outages.get("items", []) if o.get("open"))
        say(f"scans {totals.get('total', 0)} (green {totals.get('green', 0)}, red "
            f"{totals.get('red', 0)}); outages open {open_}, closed {closed}; {states}")

    # --- stopping --------------------------------------------------------------------------
    def stop(self) -> None:
        procs = list(self.kiosks.items()) + [(n, self.services[n]) for n in
                                              ("ingest", "web", "broker") if n in self.services]
        for name, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # anything a child left in its process group (gunicorn's workers)
        for _, proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        say("every process stopped")
        if os.environ.get("KEEP_DEMO_DIR") == "1":
            say(f"files kept in {self.tmp} (KEEP_DEMO_DIR=1)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            say(f"removed {self.tmp}")


def camera_frame(text: str, seed: int) -> bytes:
    """A JPEG camera frame of `text` (bench/frames.py's renderer: perspective, blur, light,
    noise), in a range the kiosk decodes; checked with the kiosk's own decoder."""
    import cv2
    import numpy as np

    from bench import frames
    from device.decoders import make_decoder
    decoder = make_decoder("auto")
    for attempt in range(8):
        rng = np.random.default_rng([seed, attempt])
        scene = frames.draw_scene(rng)
        scene.size = float(rng.uniform(0.5, 0.75))
        scene.defocus, scene.motion, scene.glare = 0.6, 0.0, False
        scene.noise, scene.jpeg = 4.0, 85
        scene.white, scene.black = float(rng.uniform(180, 240)), float(rng.uniform(10, 50))
        jpeg = frames.render_jpeg(text, scene, rng)
        gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        if text in decoder.decode(gray):
            return jpeg
    raise StepFailed("could not render a decodable frame")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float,
                        default=float(os.environ.get("GREENGATE_DEMO_DURATION") or 0),
                        help="stop after this many seconds and exit 0 (default: until Ctrl-C; "
                             "env GREENGATE_DEMO_DURATION)")
    parser.add_argument("--outage-after", type=float, default=45.0,
                        help="seconds after the kiosks start until one is killed (45)")
    parser.add_argument("--outage-for", type=float, default=15.0,
                        help="seconds it stays down (15)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between camera frames at each kiosk (2)")
    parser.add_argument("--report-every", type=float, default=15.0,
                        help="seconds between progress lines with the fleet's counts (15)")
    parser.add_argument("--web-port", type=int, default=0, help="dashboard port (default: free)")
    parser.add_argument("--mqtt-port", type=int, default=0, help="broker port (default: free)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0

    def on_signal(signum, _frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    demo = None
    code = 0
    try:
        demo = Demo(args)
        setup_started = time.monotonic()
        demo.setup()
        say(f"set up in {time.monotonic() - setup_started:.0f} s")
        demo.banner()
        demo.watch(setup_started)
    except Stop as why:
        print(flush=True)
        say(f"{why}: stopping")
    except StepFailed as exc:
        say(f"ERROR: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if demo is not None:
            demo.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())

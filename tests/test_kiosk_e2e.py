"""The whole kiosk as a process: `greengate-kiosk run --config FILE` with a folder of
QR images, a real Mosquitto (TLS, client certificates), bundles published retained
the way the fleet does, and a recording subscriber standing in for the fleet.

The kiosk runs in a subprocess with the gpiozero MockFactory lights. It reads the
clock of the day (it is a real process), so the certificates here are minted
relative to now, not to the fixed calendar of conftest.py.
"""

import collections
import http.server
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.outbox import Outbox
from greengate import messages
from greengate.status import cert_hash
from provisioning.issuer import qr_png
from tests.broker import wait_until
from tests.conftest import HOLDER
from tests.fleetkit import FleetKit

ROOT = Path(__file__).resolve().parents[1]
KIOSK = "e2e-kiosk-1"
DEPLOYMENT = "e2e"
SCANS = messages.scan_topic(KIOSK)
SCAN_LINE = re.compile(r"scan ([0-9a-f]{32}): (green|red) ")
PSEUDONYM_KEY = "5a" * 16  # what kiosk.toml held before sealing: removed at start


def today(days: int = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).date().isoformat()


def now(days: float = 0) -> datetime:
    return datetime.now(timezone.utc) + timedelta(days=days)


def mint(issuer, *, dose_days_ago: int = 40, **names) -> tuple[str, str]:
    """(HC1 text, ci) of a vaccination dose_days_ago days back, valid for a year."""
    dcc = issuer.vaccination(date=today(-dose_days_ago), dose=2, of=2, **names)
    return issuer.mint(dcc, iat=now(-dose_days_ago), exp=now(365)), dcc["v"][0]["ci"]


class Site:
    """A broker, a fleet key, signed bundles on the broker, a kiosk config and its frames."""

    def __init__(self, tmp: Path, broker, issuer):
        self.tmp, self.broker, self.issuer = tmp, broker, issuer
        self.fleet = FleetKit(DEPLOYMENT)
        (tmp / "fleet.pem").write_bytes(self.fleet.public_pem)
        self.data = tmp / "data"
        self.frames = tmp / "frames"
        self.frames.mkdir()
        self.issued = int(time.time()) - 60

    def publish(self, kind: str, payload: bytes) -> None:
        """Retained QoS 1, as the fleet publishes its bundles."""
        files = self.broker.client_tls("fleet-publisher")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-publisher")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
        ctx.load_cert_chain(files.cert, files.key)
        client.tls_set_context(ctx)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            topic = kind if "/" in kind else messages.bundle_topic(DEPLOYMENT, kind)
            info = client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(10)
            assert info.is_published()
        finally:
            client.disconnect()
            client.loop_stop()

    def publish_lists(self, revoked=()) -> None:
        self.publish("trust", self.fleet.trust(1, self.issued, self.issuer))
        self.publish("policy", self.fleet.policy(1, self.issued))
        self.publish("status", self.fleet.status(1, self.issued, revoked=revoked))

    def frame(self, name: str, text: str) -> None:
        qr_png(text, self.frames / f"{name}.png", scale=3)

    def config(self, name: str = "kiosk.toml", *, folder: Path | None = None, loop=False,
               interval=0.0, cooldown=3.0, heartbeat=30.0, http_url: str = "") -> Path:
        tls = self.broker.client_tls(KIOSK)
        path = self.tmp / name
        path.write_text(f"""
[kiosk]
id = "{KIOSK}"
deployment = "{DEPLOYMENT}"
policy = "hcmc-2021"
data_dir = "{self.data}"

[source]
kind = "folder"
path = "{folder or self.frames}"
loop = {str(loop).lower()}
interval = {interval}

[decoder]
backend = "auto"
cooldown = {cooldown}

[indicator]
backend = "mock"

[mqtt]
host = "{self.broker.host}"
port = {self.broker.port}
ca = "{tls.ca}"
cert = "{tls.cert}"
key = "{tls.key}"
heartbeat = {heartbeat}
keepalive = 5

[bundles]
fleet_key = "fleet.pem"
http_url = "{http_url}"
http_interval = 0.5

[privacy]
pseudonym_key = "{PSEUDONYM_KEY}"
""")
        return path

    def kiosk(self, config: Path, log: str, *extra) -> subprocess.Popen:
        err = open(self.tmp / log, "ab")
        return subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config",
                                 str(config), *extra], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=err, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    def logged_scans(self, name: str) -> list[str]:
        return SCAN_LINE.findall(self.log(name))


@pytest.fixture
def site(tmp_path, broker, es256):
    # The fleet's part in delivery: scans leave a kiosk's outbox only when confirmed
    # (docs/protocol.md#delivery-guarantees); the confirmer stands in for the ingest.
    from tests.helpers.confirmer import Confirmer
    fleet = Confirmer(broker).start()
    yield Site(tmp_path, broker, es256)
    fleet.close()


def scans(msgs) -> list[dict]:
    return [messages.parse_scan(m.payload, KIOSK) for m in msgs if m.topic == SCANS]


def finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_simulated_kiosk_reports_every_decision(site, subscriber):
    """Done-when of the kiosk issue: a folder-source kiosk against a real Mosquitto,
    every decision arrives with its reason, and no name or birth date leaves it."""
    person = {"family": HOLDER.family, "given": HOLDER.given, "dob": HOLDER.dob}
    good, _ = mint(site.issuer, **person)
    recent, _ = mint(site.issuer, dose_days_ago=3, **person)
    revoked, revoked_ci = mint(site.issuer, **person)
    site.frame("1-good", good)
    site.frame("2-recent", recent)
    site.frame("3-revoked", revoked)
    site.frame("4-garbage", "HC1:NOT-A-CERTIFICATE")
    site.frame("5-good-again", good)  # within the cooldown: the same scan
    site.publish_lists(revoked=[cert_hash(revoked_ci)])
    sub = subscriber(site.broker, f"{messages.ROOT}/kiosk/{KIOSK}/#")

    proc = site.kiosk(site.config(), "kiosk.log")
    assert finish(proc, 90) == 0, site.log("kiosk.log")

    msgs = sub.wait_for(lambda m: len(scans(m)) >= 4, 10, "four scans")
    got = scans(msgs)
    assert [(s["decision"], s["reason"]) for s in got] == [
        ("green", "ok"), ("red", "policy_failed"), ("red", "revoked"), ("red", "unreadable")]
    assert got[1]["sub"] == "vaccination_too_recent"
    assert len({s["id"] for s in got}) == 4
    assert [m.qos for m in msgs if m.topic == SCANS] == [1] * 4
    assert got[0]["type"] == "v" and got[0]["policy"] == "hcmc-2021"
    # The holder travels sealed to the fleet's key (docs/privacy.md): three seals of the
    # same person share nothing, and only the fleet's private key opens them, each for
    # its own scan, to the same identity (from which the fleet derives one pseudonym).
    sealed = [s["sealed"] for s in got[:3]]
    assert all(s["holder"] is None for s in got) and "sealed" not in got[3]
    assert len(set(sealed)) == 3
    identities = {site.fleet.opener.open(text, kiosk=KIOSK, scan_id=s["id"])
                  for text, s in zip(sealed, got)}
    assert identities == {f"{HOLDER.family_std}\x1f{HOLDER.given_std}\x1f{HOLDER.dob}".encode()}
    raw = b"".join(m.payload for m in msgs)
    for private in (HOLDER.family, HOLDER.given, HOLDER.dob, HOLDER.family_std):
        assert private.encode() not in raw
    # The old pseudonym key is gone from the kiosk's configuration and was never written
    # anywhere in its data (outbox, bundles, clock, session).
    assert "pseudonym_key" not in (site.tmp / "kiosk.toml").read_text()
    assert "removed the old pseudonym key" in site.log("kiosk.log")
    for path in [site.tmp / "kiosk.toml", *site.data.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert PSEUDONYM_KEY.encode() not in data and bytes.fromhex(PSEUDONYM_KEY) not in data
    # Graceful stop: online, then offline of the same session (not the last will).
    sub.wait_for(lambda m: any(json.loads(x.payload).get("state") == "offline" for x in m
                               if x.topic == messages.presence_topic(KIOSK)), 5, "offline")
    presence = [messages.parse_presence(m.payload, KIOSK) for m in sub.snapshot()
                if m.topic == messages.presence_topic(KIOSK)]
    assert [(p["session"], p["state"]) for p in presence] == [(1, "online"), (1, "offline")]
    assert "applied trust bundle v1" in site.log("kiosk.log")


def test_running_kiosk_heartbeats_and_refuses_bad_bundles(site, subscriber):
    """Heartbeats carry what the fleet needs; the kiosk follows the status list by
    deltas and takes a full snapshot only when the head says it must; a forged,
    rolled-back or tampered bundle is refused, logged, and the old one kept."""
    good, _ = mint(site.issuer)
    site.frame("1-good", good)
    site.publish_lists()
    sub = subscriber(site.broker, f"{messages.ROOT}/kiosk/{KIOSK}/#")
    heartbeat_topic = messages.heartbeat_topic(KIOSK)

    def beats(msgs):
        return [messages.parse_heartbeat(m.payload, KIOSK) for m in msgs
                if m.topic == heartbeat_topic]

    proc = site.kiosk(site.config(heartbeat=1.0), "kiosk.log", "--keep-running")
    try:
        msgs = sub.wait_for(lambda m: len(scans(m)) == 1 and beats(m), 60, "a scan and a beat")
        beat = beats(msgs)[-1]
        assert beat["bundles"] == {"trust": 1, "policy": 1, "status": 1, "valuesets": None}
        assert beat["clock"] == "floor"  # no NTP here: bounded by the signed bundle times
        assert beat["lists"] == "fresh" and beat["outbox"] == 0 and beat["session"] == 1
        assert beat["uptime"] > 0

        # Holding status v1, the kiosk listens to the delta from v1 only: the full
        # list on the retained "status" topic is not downloaded again.
        def status_version(after: int):
            return [b["bundles"]["status"] for b in beats(sub.snapshot()[after:])]

        delta_topic = messages.status_delta_topic(DEPLOYMENT, 1)
        site.publish("status", site.fleet.status(9, site.issued + 5))
        site.publish(delta_topic, site.fleet.delta(2, site.issued + 10, base=1))
        mark = len(sub.snapshot())
        wait_until(lambda: 2 in status_version(mark), 10, "the delta from v1 applied")
        assert 9 not in status_version(0)

        # The head says there is no delta from v2: the kiosk takes the full snapshot,
        # refusing a foreign, a rolled-back and a tampered one, and keeping v2 meanwhile.
        site.publish("status", site.fleet.status(1, site.issued))  # retained: clear v9
        site.publish("status-head", site.fleet.head(5, site.issued + 40, bases=[4]))
        wait_until(lambda: "listening to gg/v1/bundle/e2e/status\n" in site.log("kiosk.log"), 10,
                   "subscribed to the full snapshot")
        foreign = FleetKit(DEPLOYMENT)
        site.publish("status", foreign.status(5, site.issued + 40))  # another key
        tampered = bytearray(site.fleet.status(5, site.issued + 40))
        tampered[-40] ^= 0x01
        site.publish("status", bytes(tampered))
        wait_until(lambda: site.log("kiosk.log").count("refused") >= 3, 15, "three refusals")
        for reason in ("rollback", "wrong_key", "bad_signature"):
            assert reason in site.log("kiosk.log"), reason
        mark = len(sub.snapshot())
        sub.wait_for(lambda m: len(beats(m[mark:])) >= 2, 10, "beats after refusals")
        assert status_version(mark)[-1] == 2

        newer = site.fleet.status(5, site.issued + 40)
        site.publish("status", newer)
        mark = len(sub.snapshot())
        wait_until(lambda: 5 in status_version(mark), 10, "status v5 applied")
        site.publish(messages.status_delta_topic(DEPLOYMENT, 5),
                     site.fleet.delta(6, site.issued + 50, base=5))
        wait_until(lambda: 6 in status_version(mark), 10, "then the delta from v5")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = finish(proc, 20)
    assert code == 0, site.log("kiosk.log")
    assert (site.data / "bundles" / "status.bundle").read_bytes() == newer
    assert (site.data / "bundles" / "status-delta-6.bundle").exists()


def test_kiosk_killed_mid_stream_and_broker_down_loses_nothing(site, subscriber):
    """SIGKILL the kiosk while the broker hangs, keep the broker down while a new
    kiosk process decides more scans, then bring it back: every decision the kiosk
    logged arrives, and counted by scan id (as the fleet does) each counts once."""
    texts = [mint(site.issuer)[0] for _ in range(6)]
    for i, text in enumerate(texts):
        site.frame(f"{i}", text)
    site.publish_lists()
    sub = subscriber(site.broker, SCANS)  # persistent session: queued while it is down
    # Each code comes round every 6 x 0.05 s, past its 0.2 s cooldown: a steady stream.
    looping = site.config("loop.toml", loop=True, interval=0.05, cooldown=0.2)
    first = site.kiosk(looping, "first.log")
    try:
        sub.wait_for(lambda m: len(m) >= 20, 60, "scans flowing")
        site.broker.pause()  # hangs: publishes wait for PUBACKs, a backlog grows
        base = len(site.logged_scans("first.log"))
        wait_until(lambda: len(site.logged_scans("first.log")) >= base + 30, 20, "a backlog")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        site.broker.resume()
    site.broker.stop()

    once = site.config("once.toml", cooldown=0.0)
    second = site.kiosk(once, "second.log")
    time.sleep(4.0)  # the broker stays down while the second kiosk decides its scans
    assert second.poll() is None, site.log("second.log")
    site.broker.start()
    assert finish(second, 90) == 0, site.log("second.log")

    first_ids = [sid for sid, _ in site.logged_scans("first.log")]
    second_ids = [sid for sid, _ in site.logged_scans("second.log")]
    # at least the backlog it built (the subscriber's 20 may hold a redelivered copy)
    assert len(second_ids) == 6 and len(first_ids) >= base + 30 >= 49
    logged = set(first_ids) | set(second_ids)
    msgs = sub.wait_for(lambda m: logged <= {s["id"] for s in scans(m)}, 30,
                        "every logged decision")
    time.sleep(0.5)
    received = collections.Counter(s["id"] for s in scans(sub.snapshot()))
    # At most one unlogged scan: stored in the outbox, killed before its log line.
    assert len(set(received) - logged) <= 1
    # QoS 1 is at least once: only what was in flight at the kill may come twice
    # (the broker may also redeliver across its restart with the DUP flag).
    fresh = collections.Counter(s["id"] for s in scans(m for m in sub.snapshot() if not m.dup))
    again = {sid: n - 1 for sid, n in fresh.items() if n > 1}
    assert set(again) <= set(first_ids) and sum(again.values()) <= 20, again
    # The second kiosk found the first one's backlog in the outbox and added its own.
    left = re.search(r"reporting the (\d+) decision", site.log("second.log"))
    assert left and int(left.group(1)) >= 6


class BundleServer:
    """The fleet's bundle endpoint as the kiosk sees it: GET with ETag / 304."""

    def __init__(self, bundles: dict[str, bytes]):
        self.bundles = bundles
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                kind = self.path.split("?")[0].rsplit("/", 1)[-1]
                etag = f'"{kind}-1"'
                server.requests.append((self.path, self.headers.get("If-None-Match")))
                if self.path.split("?")[0] != f"/api/v1/bundles/{DEPLOYMENT}/{kind}" \
                        or kind not in server.bundles:
                    self.send_error(404)
                elif self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                else:
                    body = server.bundles[kind]
                    self.send_response(200)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_bundles_come_over_http_when_the_broker_is_down(site):
    """With the broker unreachable, a fresh kiosk fetches its lists from the fleet's
    HTTP endpoint, decides with them, and asks again only with If-None-Match."""
    good, _ = mint(site.issuer)
    site.frame("1-good", good)
    server = BundleServer({"trust": site.fleet.trust(1, site.issued, site.issuer),
                           "policy": site.fleet.policy(1, site.issued),
                           "status": site.fleet.status(1, site.issued)})
    site.broker.stop()
    proc = site.kiosk(site.config(http_url=server.url), "kiosk.log", "--keep-running")
    try:
        wait_until(lambda: site.logged_scans("kiosk.log"), 40, "a decision")
        assert site.logged_scans("kiosk.log")[0][1] == "green", site.log("kiosk.log")
        assert "applied status bundle v1 from http" in site.log("kiosk.log")
        wait_until(lambda: any(tag for _, tag in server.requests), 10, "a conditional GET")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = finish(proc, 20)
        server.close()
    assert code == 0, site.log("kiosk.log")
    paths = {path for path, _ in server.requests}
    base = f"/api/v1/bundles/{DEPLOYMENT}"
    # Holding status v1, it asks for the delta from there (the fleet answers with the
    # delta, or the snapshot if it has none).
    # Value sets are asked for too (this server has none: the vendored copy serves).
    assert paths == {f"{base}/trust", f"{base}/policy", f"{base}/status",
                     f"{base}/status?from=1", f"{base}/valuesets"}
    # the decision waits in the outbox for the broker
    with Outbox(site.data / "outbox.sqlite") as outbox:
        assert outbox.depth() == 1

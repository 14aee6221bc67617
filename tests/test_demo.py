"""The demo (scripts/demo.py, README command 1) as a user runs it: real Mosquitto, fleet
web server and ingest worker, three kiosk processes. The dashboard is reached with the
admin login the demo prints; Ctrl-C (SIGINT) stops every process it started."""

from __future__ import annotations

import html.parser
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIOSKS = ("hcm-q1-0001", "hcm-q7-0001", "hcm-td-0001")
RESTARTED = "hcm-td-0001"


class Output:
    """The demo's stdout, read by a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, proc: subprocess.Popen) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            assert proc.poll() is None, f"demo exited ({proc.returncode}):\n{self.text()}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")


def descendants(pid: int) -> set[int]:
    """Every process below pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class CsrfField(html.parser.HTMLParser):
    token = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name") == "csrf_token":
            self.token = attrs.get("value")


class Dashboard:
    """A browser's login session on the dashboard (plain HTTP, cookie kept)."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = CsrfField()
        form.feed(self.opener.open(f"{url}/login", timeout=10).read().decode())
        assert form.token, "no CSRF token on the login page"
        body = urllib.parse.urlencode({"csrf_token": form.token, "username": user,
                                       "password": password, "next": ""}).encode()
        with self.opener.open(f"{url}/login", data=body, timeout=10) as response:
            assert response.status == 200 and not response.url.endswith("/login"), response.url

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})
        with self.opener.open(request, timeout=10) as response:
            return json.loads(response.read())


def test_demo_runs_a_fleet_and_stops_cleanly():
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--duration", "150",
         "--outage-after", "10", "--outage-for", "5", "--interval", "1.0",
         "--report-every", "10"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={k: v for k, v in os.environ.items() if k != "KEEP_DEMO_DIR"})
    out = Output(proc)
    seen: set[int] = set()
    try:
        workdir = Path(out.wait_for(r"\[demo\] working directory (\S+)", 20, proc).group(1))
        url = out.wait_for(r"\[demo\] dashboard: (http://127\.0\.0\.1:\d+)/", 60, proc).group(1)
        password = out.wait_for(r"one-time admin login: user admin  password (\S+)", 5,
                                proc).group(1)
        seen |= descendants(proc.pid)
        out.wait_for(rf"kiosk {RESTARTED} killed", 30, proc)
        out.wait_for(rf"kiosk {RESTARTED} restarted", 20, proc)
        seen |= descendants(proc.pid)
        assert len(seen) >= 7, seen  # broker, gunicorn + worker, ingest, 3 kiosks (+1)

        dashboard = Dashboard(url, "admin", password)
        assert "<html" in dashboard.opener.open(f"{url}/", timeout=10).read().decode().lower()

        def state():
            kiosks = {k["id"]: k for k in dashboard.get("/api/v1/kiosks")["items"]}
            decisions = {(kiosk, decision): dashboard.get(
                f"/api/v1/scans?kiosk={kiosk}&decision={decision}&limit=1")["items"]
                for kiosk in KIOSKS for decision in ("green", "red")}
            outages = dashboard.get(f"/api/v1/outages?kiosk={RESTARTED}")["items"]
            return kiosks, decisions, outages

        deadline = time.monotonic() + 40
        while True:
            kiosks, decisions, outages = state()
            ok = (sorted(kiosks) == sorted(KIOSKS)
                  and all(k["state"] == "online" for k in kiosks.values())
                  and all(decisions.values())
                  and any(not o["open"] and o["ended"] for o in outages))
            if ok or time.monotonic() > deadline:
                break
            seen |= descendants(proc.pid)
            time.sleep(1)
        assert {k: v["state"] for k, v in kiosks.items()} == dict.fromkeys(KIOSKS, "online")
        assert all(decisions.values()), {k: bool(v) for k, v in decisions.items()}
        closed = [o for o in outages if not o["open"]]
        assert closed and closed[0]["cause"] == "connection lost", outages
        assert {k["district"]["code"] for k in kiosks.values()} == {"q1", "q7", "thu-duc"}
        reds = dashboard.get("/api/v1/scans?decision=red&limit=200")["items"]
        assert {"expired", "policy_failed", "unknown_issuer"} <= {s["reason"] for s in reds}
        seen |= descendants(proc.pid)
        assert workdir.is_dir()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        out.thread.join(5)
        time.sleep(0.5)
        left = [pid for pid in seen if alive(pid)]
        for pid in left:  # do not leave them to the rest of the suite
            os.kill(pid, signal.SIGKILL)
    assert code == 0, out.text()
    assert "[demo] SIGINT: stopping" in out.text()
    assert "[demo] every process stopped" in out.text()
    assert not left, f"processes left behind: {left}"
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(workdir) not in ps, ps
    assert not workdir.exists()

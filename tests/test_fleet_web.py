"""The production web entry: gunicorn runs fleet.wsgi:app as the systemd unit does
(systemd/greengate-fleet-web.service), configured by GREENGATE_FLEET_CONFIG only, on
SQLite and PostgreSQL; the command line sets the fleet up first, as an admin would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.broker import free_port

VENV_BIN = Path(sys.executable).parent


def fleet(env, *args, stdin=None) -> str:
    done = subprocess.run([sys.executable, "-m", "fleet.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def fetch(url, token=None, etag=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if etag:
        request.add_header("If-None-Match", etag)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def gunicorn(tmp_path, database_url):
    """`greengate-fleet db upgrade`, a signing key, an admin token, then gunicorn with
    the unit's worker model on a free port."""
    config = tmp_path / "fleet.toml"
    config.write_text(f'[fleet]\ndata_dir = "{tmp_path}"\ndatabase_url = "{database_url}"\n'
                      'deployments = ["hcmc"]\n[mqtt]\nhost = ""\n')
    env = {**os.environ, "GREENGATE_FLEET_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    fleet(env, "db", "upgrade")
    fleet(env, "bundles", "key", "--create")
    fleet(env, "user", "create", "admin", "--role", "admin", "--password-stdin",
          stdin="a long enough secret\n")
    token = fleet(env, "token", "create", "admin", "--name", "test").strip()
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen([str(VENV_BIN / "gunicorn"), "--workers", "2", "--bind",
                             f"127.0.0.1:{port}", "--graceful-timeout", "5", "fleet.wsgi:app"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/metrics", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)
    yield base, token, proc, tmp_path / "gunicorn.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log.close()


def test_gunicorn_serves_the_api_bundles_and_metrics(gunicorn):
    base, token, proc, log = gunicorn
    status, _, body = fetch(base + "/api/v1/kiosks")
    assert status == 401 and "API token" in json.loads(body)["message"]
    status, _, body = fetch(base + "/api/v1/kiosks", token)
    assert status == 200 and json.loads(body)["items"] == []
    # the signed trust list: issued on first request, then conditional GETs are cheap,
    # whichever worker answers
    status, headers, trust = fetch(base + "/api/v1/bundles/hcmc/trust")
    assert status == 200 and headers["X-Bundle-Kind"] == "trust" and trust
    for _ in range(4):
        assert fetch(base + "/api/v1/bundles/hcmc/trust", etag=headers["ETag"])[0] == 304
    status, _, metrics = fetch(base + "/metrics")
    assert status == 200 and b"greengate_fleet_up 1.0" in metrics
    assert b'greengate_fleet_bundle_version{deployment="hcmc",kind="trust"} 1.0' in metrics
    # SIGTERM (systemctl stop): gunicorn finishes and exits cleanly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()

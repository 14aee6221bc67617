"""scripts/setup.sh and install-kiosk.sh wait for another package manager (issue 15):
apt_wait (scripts/apt-alternatives.sh) runs a real `apt-get update` while another process
holds the package lists' lock (apt 2.6 does not wait for that one itself, whatever
DPkg::Lock::Timeout says), says who holds it, and succeeds once the lock is free.

apt-get runs on a private state directory (Dir::State, Dir::Cache, no sources): no
network, nothing of the machine's own apt state touched or locked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian system")


def private_apt(tmp_path: Path) -> list[str]:
    for d in ("dpkg", "lists/partial", "cache/archives/partial", "parts"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("dpkg/status", "dpkg/lock-frontend", "dpkg/lock", "lists/lock"):
        (tmp_path / f).touch()
    (tmp_path / "sources.list").write_text("")
    return ["apt-get", "-q", "-o", f"Dir::State::status={tmp_path}/dpkg/status",
            "-o", f"Dir::State::Lists={tmp_path}/lists", "-o", f"Dir::Cache={tmp_path}/cache",
            "-o", f"Dir::Etc::SourceList={tmp_path}/sources.list",
            "-o", f"Dir::Etc::SourceParts={tmp_path}/parts", "-o", "DPkg::Lock::Timeout=1"]


def hold(lock: Path, seconds: float) -> subprocess.Popen:
    """A process holding `lock` as apt does (fcntl), for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))",
         str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def apt_wait(apt: list[str], *args: str, wait: int = 60) -> subprocess.CompletedProcess:
    script = 'source scripts/apt-alternatives.sh; apt_wait "$@"'
    return subprocess.run(["bash", "-c", script, "apt_wait", *apt, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "APT_LOCK_RETRY": "0.5",
                               "APT_LOCK_WAIT": str(wait)})


def test_update_waits_for_the_lists_lock_and_says_who_holds_it(tmp_path):
    apt = private_apt(tmp_path)
    holder = hold(tmp_path / "lists/lock", 3)
    try:
        # without apt_wait apt fails at once: the failure apt_wait exists for
        plain = subprocess.run([*apt, "update"], capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0 and "Could not get lock" in plain.stderr
        proc = apt_wait(apt, "update")
    finally:
        holder.wait(30)
    assert proc.returncode == 0, proc.stderr
    assert "another package manager is running" in proc.stderr
    assert f"held by process {holder.pid}" in proc.stderr


def test_a_lock_held_too_long_fails_with_apts_message(tmp_path):
    apt = private_apt(tmp_path)
    holder = hold(tmp_path / "dpkg/lock-frontend", 30)
    try:
        # wait 1 s: apt's own 1 s lock timeout uses it all up, as on a busy machine
        proc = apt_wait(apt, "install", "-y", "hello", wait=1)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    assert "waiting for it to finish" in proc.stderr and "dpkg frontend lock" in proc.stderr
    assert "giving up" in proc.stderr


def test_other_failures_are_not_retried(tmp_path):
    apt = private_apt(tmp_path)
    proc = apt_wait(apt, "install", "-y", "no-such-package-greengate", wait=60)
    assert proc.returncode != 0 and "waiting" not in proc.stderr
    assert "no-such-package-greengate" in proc.stderr

"""The kiosk's data directory (issue 15): one per kiosk id by default, an earlier
version's shared /var/lib/greengate moved into it on the first start, and a second
kiosk process on a directory in use refused with a message (an flock, held for life)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from device import config as config_module
from device import datadir
from device import kiosk as kiosk_module
from device import selftest


def kiosk_toml(tmp_path: Path, kiosk_id: str, data_dir: str | None) -> Path:
    path = tmp_path / f"{kiosk_id}.toml"
    line = f'data_dir = "{data_dir}"\n' if data_dir is not None else ""
    path.write_text(f'[kiosk]\nid = "{kiosk_id}"\n{line}[indicator]\nbackend = "mock"\n'
                    '[mqtt]\ntls = false\n[bundles]\nfleet_key = "fleet.pub.pem"\n')
    return path


def cfg(tmp_path, kiosk_id="k-1", data_dir=None):
    return config_module.load(kiosk_toml(tmp_path, kiosk_id, data_dir))


def test_the_default_is_one_directory_per_kiosk_id(tmp_path):
    root = tmp_path / "lib"
    a, b = cfg(tmp_path, "q7-0001"), cfg(tmp_path, "q7-0002")
    assert a.kiosk.data_dir == ""
    assert datadir.location(a, root) == root / "q7-0001"
    held_a, held_b = datadir.claim(a, root), datadir.claim(b, root)
    try:
        assert held_a.path != held_b.path and held_b.path.is_dir()
    finally:
        held_a.release()
        held_b.release()
    # an explicit data_dir is taken as given (relative to the config file)
    assert datadir.location(cfg(tmp_path, "x", "state"), root) == tmp_path / "state"


def test_a_second_kiosk_on_the_same_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    held = datadir.claim(cfg(tmp_path, "k-1", str(shared)))
    try:
        with pytest.raises(datadir.DataDirBusy, match="another kiosk process .*pid .*k-1"):
            datadir.claim(cfg(tmp_path, "k-2", str(shared)))
    finally:
        held.release()
    datadir.claim(cfg(tmp_path, "k-2", str(shared))).release()  # free again once released


def test_greengate_kiosk_run_refuses_a_directory_another_process_holds(tmp_path, capsys):
    shared = tmp_path / "shared"
    config_a = kiosk_toml(tmp_path, "k-1", str(shared))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from device import config, datadir; "
         f"h = datadir.claim(config.load({str(config_a)!r})); print('held', flush=True); "
         "sys.stdin.read()"],
        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        code = kiosk_module.run(SimpleNamespace(config=str(kiosk_toml(tmp_path, "k-2",
                                                                      str(shared))),
                                                source=None, path=None, keep_running=False))
        assert code == 2 and time.monotonic() - started < 30
        out = capsys.readouterr().out
        assert f"data directory {shared}" in out and "two kiosks must not share" in out
        assert f"pid {holder.pid}" in out
    finally:
        holder.stdin.close()
        holder.wait(10)
    # the holder is gone: its lock went with it (no stale lock file blocks a restart)
    datadir.claim(cfg(tmp_path, "k-2", str(shared))).release()


def old_layout(root: Path) -> None:
    (root / "bundles").mkdir(parents=True)
    (root / "bundles" / "trust.bin").write_bytes(b"trust")
    (root / "outbox.sqlite").write_bytes(b"rows")
    (root / "clock.json").write_text('{"floor": 1}')
    (root / "session").write_text("41\n")


def test_an_upgraded_kiosk_moves_the_old_shared_files_into_its_own_directory(tmp_path):
    root = tmp_path / "lib"
    old_layout(root)
    first = cfg(tmp_path, "q7-0001")
    assert selftest.datadir.readable(first, root) == root  # before the move: the old place
    held = datadir.claim(first, root)
    try:
        mine = root / "q7-0001"
        assert held.path == mine
        assert (mine / "outbox.sqlite").read_bytes() == b"rows"
        assert (mine / "bundles" / "trust.bin").read_bytes() == b"trust"
        assert (mine / "session").read_text() == "41\n"
        assert not (root / "outbox.sqlite").exists() and not (root / "bundles").exists()
        assert datadir.readable(first, root) == mine
        # a second kiosk id gets a directory of its own, empty: the files were the first's
        other = datadir.claim(cfg(tmp_path, "q7-0002"), root)
        assert sorted(p.name for p in other.path.iterdir()) == ["kiosk.lock"]
        other.release()
    finally:
        held.release()


def test_a_move_cut_short_is_finished_at_the_next_start(tmp_path):
    root = tmp_path / "lib"
    old_layout(root)
    staging = root / ".q7-0001.moving"  # as a power cut after two renames leaves it
    staging.mkdir()
    (root / "outbox.sqlite").rename(staging / "outbox.sqlite")
    (root / "bundles").rename(staging / "bundles")
    held = datadir.claim(cfg(tmp_path, "q7-0001"), root)
    try:
        names = sorted(p.name for p in held.path.iterdir())
        assert names == ["bundles", "clock.json", "kiosk.lock", "outbox.sqlite", "session"]
        assert not staging.exists()
    finally:
        held.release()


def test_an_explicit_data_dir_is_never_moved_into(tmp_path):
    root = tmp_path / "lib"
    old_layout(root)
    held = datadir.claim(cfg(tmp_path, "q7-0001", str(root)), root)
    held.release()
    assert (root / "outbox.sqlite").exists() and not (root / "q7-0001").exists()

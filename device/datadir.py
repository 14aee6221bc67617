"""The kiosk's data directory: one per kiosk id, held by one process.

    path = location(cfg)            # where it is (no side effects): selftest, tools
    held = claim(cfg)               # the kiosk: migrate the old layout, lock, for life
    held.path; held.release()

`[kiosk] data_dir` empty (the default) means /var/lib/greengate/<kiosk id>: two kiosks
on one machine (the README's simulated kiosks, a test bench) no longer share one outbox,
where each took the other's scans and the broker refused them ("Not authorized").

Kiosks of earlier versions kept everything directly in /var/lib/greengate. A Pi
upgraded in place with a kiosk.toml that does not name data_dir finds its outbox,
bundles, clock floor and session counter there: claim() moves them into the kiosk's own
directory (a rename each, same file system) before anything opens them, so undelivered
scans are neither lost nor sent twice under a new session counter. Only when the new
directory does not exist yet; under a lock in the parent, so two kiosks starting at once
cannot split the files between them.

A second process on a directory in use is refused: an flock on `kiosk.lock` in it, held
for the process's life (the kernel drops it when the process dies, even by SIGKILL), so a
stale lock file never blocks a restart.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/lib/greengate")
LOCK = "kiosk.lock"
# what a kiosk keeps in its data directory (device/kiosk.py), moved by the migration
LEGACY = ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm", "outbox.sqlite-journal",
          "bundles", "clock.json", "session")
MIGRATE_LOCK = ".greengate-migrate.lock"


class DataDirBusy(RuntimeError):
    """Another kiosk process holds this data directory."""


def location(cfg, root: Path = DEFAULT_ROOT) -> Path:
    """The data directory of this kiosk: [kiosk] data_dir (relative to the config file),
    else <root>/<kiosk id>."""
    if cfg.kiosk.data_dir:
        return cfg.resolve(cfg.kiosk.data_dir)
    return Path(root) / cfg.kiosk.id


def readable(cfg, root: Path = DEFAULT_ROOT) -> Path:
    """Where the kiosk's files are now: location(), or the old shared directory while a
    kiosk of this version has not started there yet (selftest reads, never moves)."""
    path = location(cfg, root)
    if not cfg.kiosk.data_dir and not path.exists() and _legacy_files(Path(root)):
        return Path(root)
    return path


def _legacy_files(root: Path) -> list[Path]:
    return [root / name for name in LEGACY if (root / name).exists()]


class Held:
    def __init__(self, path: Path, handle):
        self.path = path
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None


def claim(cfg, root: Path = DEFAULT_ROOT) -> Held:
    """Create (and, from the old shared layout, fill) this kiosk's data directory and
    lock it for this process. DataDirBusy if another process holds it; OSError if it
    cannot be created."""
    path = location(cfg, root)
    if not cfg.kiosk.data_dir:
        _migrate(Path(root), path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip()[:80]
        handle.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise DataDirBusy(
            f"another kiosk process{f' ({holder})' if holder else ''} is running on the data "
            f"directory {path}: two kiosks must not share an outbox. Stop it, or give this "
            f"kiosk its own [kiosk] data_dir (the default, /var/lib/greengate/<kiosk id>, "
            f"is one per kiosk id)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, kiosk {cfg.kiosk.id}\n")
    handle.flush()
    return Held(path, handle)


def _migrate(root: Path, target: Path) -> None:
    """Move an earlier version's files from `root` into `target` (see the module doc)."""
    staging = root / f".{target.name}.moving"
    if target.exists() or not (_legacy_files(root) or staging.exists()):
        return
    try:
        guard = open(root / MIGRATE_LOCK, "a+")
    except OSError as exc:
        log.warning("cannot lock %s for the move into %s (%s); the kiosk starts with an "
                    "empty data directory, the old files stay", root, target, exc)
        return
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another kiosk moving them: wait, then re-check
        if target.exists():
            return
        found = _legacy_files(root)
        if not found and not staging.exists():
            return
        # a hidden directory first, renamed into place when complete: a crash half way
        # leaves files in staging that the next start moves on, never a half-filled target
        staging.mkdir(parents=True, exist_ok=True)
        for item in found:
            os.rename(item, staging / item.name)
        os.rename(staging, target)
        log.warning("moved this kiosk's data (%s) from %s into its own directory %s: each "
                    "kiosk now has one (an earlier version shared %s)",
                    ", ".join(p.name for p in found), root, target, root)
    finally:
        guard.close()

"""Writing a kiosk file so that a power cut leaves the old or the new one, never half.

The kiosk is switched off at the wall; every file it must find again after a
restart (bundles, time floor, session counter, enrolment, its own config) goes
through here: a temporary file beside the target, fsync, rename, fsync of the
directory (the rename itself must reach the disk).
"""

import os
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace `path` with `data`. Raises OSError (a full disk, say) with the target
    untouched; the temporary file is removed then."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask, and ignored for a leftover
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""Holder identities sealed to the fleet: contact tracing without a linking key on the kiosk.

The kiosk seals the ICAO-standardised name and birth date of each holder to the fleet's
X25519 public key (greengate/sealing.py), bound to the scan's kiosk and id; the fleet's
ingest opens it and derives the keyed pseudonym with a secret only the fleet holds. The
kiosk holds public keys only, and in memory the current epoch's sealing key (one
ephemeral key for at most ten minutes, never written): neither its memory nor its SD
card can compute a pseudonym, and two seals of the same person are unlinkable.
docs/privacy.md.

The public key comes in the signed trust bundle (device/state.py). Until the kiosk holds
a trust bundle that carries one (a fleet older than sealing), scans carry no holder.

Kiosks of earlier versions held the pseudonym key in kiosk.toml (`[privacy]
pseudonym_key`): `scrub_legacy_key` removes it from the file at start.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from greengate import sealing

from .files import write_atomic

log = logging.getLogger(__name__)


class Sealer:
    """Seals holder identities to the fleet's current public key. `key_source()` gives the
    SealingKey of the trust bundle held (or None). The epochs (sealing.EpochSealer) hold
    the current epoch's AEAD key, in memory only: it opens this kiosk's envelopes of the
    last few minutes (people it saw), and links or computes nothing else."""

    __slots__ = ("_key_source", "_warned", "_epochs")

    def __init__(self, key_source, epochs: sealing.EpochSealer | None = None):
        self._key_source = key_source
        self._warned = False
        self._epochs = sealing.EpochSealer() if epochs is None else epochs

    def __call__(self, holder: tuple[str, str, str] | None, *, kiosk: str,
                 scan_id: str) -> str | None:
        if holder is None:
            return None
        try:
            key = self._key_source()
            if key is not None:
                self._warned = False
                return self._epochs(sealing.identity_bytes(holder), key, kiosk=kiosk,
                                    scan_id=scan_id)
        except Exception:  # the light must not wait on this: the scan goes without a holder
            self._epochs.end()
            log.exception("could not seal the holder of scan %s; sent without one", scan_id)
            return None
        self._epochs.end()  # no key to seal to (or pseudonyms off): keep no epoch either
        if not self._warned:
            self._warned = True
            log.warning("no holder-sealing key in the trust bundle held (a fleet older "
                        "than sealing?): scans carry no holder until one comes")
        return None

    def expire(self) -> None:
        """Drop the epoch key once its time is up, scans or not (called every second)."""
        self._epochs.expire()


# `pseudonym_key = ...` in the [privacy] table of kiosk.toml, as enrolment wrote it
_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_LEGACY = re.compile(r"^\s*pseudonym_key\s*=")


def scrub_legacy_key(path: Path) -> bool:
    """Remove `[privacy] pseudonym_key` from the kiosk's configuration file: the secret a
    thief of the SD card would want. Rewritten atomically with the file's mode. True if
    it was removed; a file that cannot be rewritten is logged (the key stays unused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    lines = text.splitlines(keepends=True)
    section, kept, removed = None, [], 0
    for line in lines:
        m = _SECTION.match(line)
        if m:
            section = m.group(1)
        if section == "privacy" and _LEGACY.match(line):
            removed += 1
            continue
        kept.append(line)
    if not removed:
        return False
    try:
        write_atomic(path, "".join(kept), mode=path.stat().st_mode & 0o7777)
    except OSError as exc:
        log.error("%s holds the old pseudonym key ([privacy] pseudonym_key), which this "
                  "version never uses; it could not be removed (%s): remove that line by hand",
                  path, exc.strerror or exc)
        return False
    log.warning("removed the old pseudonym key ([privacy] pseudonym_key) from %s: holder "
                "identities are now sealed to the fleet's key, which keeps the pseudonym "
                "secret (docs/privacy.md)", path)
    return True


def main(argv: list[str]) -> int:
    """`python -m device.privacy scrub FILE...`: the kiosk unit's privileged start step
    (the service itself may not rewrite /etc/greengate, nor the enrolment folder on the
    boot partition). Files that do not exist are skipped; never fails the start."""
    import sys
    if not argv or argv[0] != "scrub":
        print("usage: python -m device.privacy scrub FILE...", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in argv[1:]:
        path = Path(name)
        if path.is_file():
            scrub_legacy_key(path)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))

"""The fleet's holder-sealing keys and the pseudonym secret (docs/privacy.md).

Kiosks seal each holder's identity to the fleet's current X25519 public key
(greengate/sealing.py), which reaches them in the signed trust bundle. The ingest opens
the envelope with the private key and derives the pseudonym with the pseudonym secret
(`[privacy] pseudonym_key`, the PKI's `pseudonym.key`: the key kiosks held before, so
pseudonyms stored before keep linking with new ones). Neither ever leaves the fleet.

On disk, `[privacy] sealing_dir` (default: `sealing/` in the PKI directory):

    keys.json      {"current": kid, "keys": {kid: {"created": t, "retired": t | null,
                                                   "public": raw public key, hex}}}
    <kid>.key      the X25519 private key, PKCS#8 PEM, mode 0600

`rotate` makes a new current key and marks the old one retired; a retired key still
opens envelopes for `[privacy] grace_days` (a kiosk's outbox holds scans sealed before
it learnt the new key for days), then `purge` deletes it. The first use (a trust bundle
issued, an ingest worker started) creates the first key pair: that is the upgrade of a
fleet from kiosk-held pseudonym keys. Changes are made under an exclusive lock on
`keys.lock`, so two processes starting at once make one key, not two.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from greengate import sealing

log = logging.getLogger("greengate.fleet.sealing")


class KeyError_(ValueError):
    """A key file the fleet cannot use: the message names the file and what is wrong."""


def sealing_dir(config) -> Path:
    given = config.privacy.sealing_dir
    return config.resolve(given) if given else config.resolve(config.pki.dir) / "sealing"


def secret_path(config) -> Path:
    given = config.privacy.pseudonym_key
    return config.resolve(given) if given else config.resolve(config.pki.dir) / "pseudonym.key"


def pseudonym_secret(config, create: bool = True) -> bytes:
    """The pseudonym secret's bytes. Made on first use only where none exists (a fleet
    without a PKI: development and tests); `greengate-provision init` makes the real one."""
    path = secret_path(config)
    if create and not path.exists() and (config.resolve(config.pki.dir) / "ca.pem").exists():
        # a PKI without its secret is damaged: a new secret would silently stop every
        # new pseudonym from linking with the stored ones
        raise KeyError_(f"{path}: the pseudonym secret is missing from the fleet PKI: "
                        "restore it from the PKI's backup")
    return hex_secret(path, what="pseudonym secret", error=KeyError_, sizes=range(16, 65),
                      rule="32-128", make=create,
                      made="created a NEW pseudonym secret %s: pseudonyms made with any "
                           "other key will not link with the new ones")


def hex_secret(path: Path, *, what: str, error, sizes: range, rule: str, make: bool,
               made: str) -> bytes:
    """A secret kept as hex in a file of its own (0600). Missing: made (32 random bytes)
    when `make`, with the warning `made` (%s: the path), else `error`."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not make:
            raise error(f"{path}: the {what} does not exist") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        text = secrets.token_hex(32)
        try:
            _write(path, (text + "\n").encode(), exclusive=True)
            log.warning(made, path)
        except FileExistsError:  # another process made it meanwhile
            text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) not in sizes:
        raise error(f"{path}: the {what} must be {rule} hex digits")
    return key


@dataclass
class Keyring:
    current: sealing.SealingKey | None
    opener: sealing.Opener
    entries: dict  # kid hex -> {"created": t, "retired": t | None}

    def describe(self, grace: float, now: float) -> list[str]:
        out = []
        for kid, e in sorted(self.entries.items(), key=lambda kv: kv[1]["created"]):
            if e["retired"] is None:
                state = "current"
            else:
                left = e["retired"] + grace - now
                state = (f"retired, opens old envelopes for {left / 86400:.1f} more days"
                         if left > 0 else "retired, past its grace period (purge deletes it)")
            out.append(f"{kid}  created {_iso(e['created'])}  {state}")
        return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write(path: Path, data: bytes, exclusive: bool = False) -> None:
    """0600 from the first byte, fsynced, renamed into place (exclusive: fail if it exists)."""
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "keys.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_index(directory: Path) -> dict:
    path = directory / "keys.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"current": None, "keys": {}}
    except (OSError, ValueError) as exc:
        raise KeyError_(f"{path}: cannot read the sealing key index: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("created"), (int, float)) and
            (e.get("retired") is None or isinstance(e.get("retired"), (int, float)))
            for e in keys.values()) or (doc.get("current") is not None and
                                        doc.get("current") not in keys):
        raise KeyError_(f"{path}: not a sealing key index (current, keys)")
    return doc


def _write_index(directory: Path, index: dict) -> None:
    _write(directory / "keys.json", (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())


def _new_key(directory: Path, index: dict, now: float) -> str:
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    kid = sealing.Opener([private]).kids().pop().hex()
    _write(directory / f"{kid}.key", pem)
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    index["keys"][kid] = {"created": now, "retired": None, "public": public.hex()}
    index["current"] = kid
    return kid


def _load_private(path: Path):
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise KeyError_(f"{path}: the sealing key is missing") from None
    except (OSError, ValueError, TypeError) as exc:
        raise KeyError_(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyError_(f"{path}: not an X25519 key")
    return key


def load(config, create: bool = True, now: float | None = None) -> Keyring:
    """Every held key pair (current and retired ones not yet purged). create: make the
    first key pair if the fleet has none (the upgrade)."""
    directory = sealing_dir(config)
    with _locked(directory):
        index = _read_index(directory)
        if index["current"] is None and create:
            kid = _new_key(directory, index, time.time() if now is None else now)
            _write_index(directory, index)
            log.warning("created the fleet's first holder-sealing key %s in %s: kiosks seal "
                        "holder identities to it once their trust bundle carries it", kid,
                        directory)
        opener = sealing.Opener()
        current = None
        for kid in index["keys"]:
            private = _load_private(directory / f"{kid}.key")
            if opener.add(private).hex() != kid:
                raise KeyError_(f"{directory / (kid + '.key')}: the key is not the one its "
                                "name says")
            if kid == index["current"]:
                current = sealing.SealingKey.from_raw(private.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        return Keyring(current, opener, index["keys"])


def current_public(config) -> sealing.SealingKey | None:
    """The current public key only, for whoever issues trust bundles (the web server, the
    command line): read from the index, so their memory never holds a private key. The
    first use makes the key pair (then the private key is in hand once)."""
    directory = sealing_dir(config)
    with _locked(directory):
        index = _read_index(directory)
    kid = index["current"]
    public = index["keys"][kid].get("public") if kid is not None else None
    if kid is None or not isinstance(public, str):
        return load(config).current  # none yet, or an index from before "public"
    try:
        key = sealing.SealingKey.from_raw(bytes.fromhex(public))
    except ValueError:
        key = None
    if key is None or key.kid.hex() != kid:
        raise KeyError_(f"{directory / 'keys.json'}: the public key of {kid} is not its own")
    return key


def rotate(config, now: float | None = None) -> tuple[str, str | None]:
    """A new current key; the old one is retired (still opens envelopes during the grace
    period). Returns (new kid, old kid)."""
    now = time.time() if now is None else now
    directory = sealing_dir(config)
    with _locked(directory):
        index = _read_index(directory)
        old = index["current"]
        if old is not None:
            index["keys"][old]["retired"] = now
        kid = _new_key(directory, index, now)
        _write_index(directory, index)
    log.info("sealing key rotated: %s is current, %s retired", kid, old)
    return kid, old


def purge(config, now: float | None = None) -> list[str]:
    """Delete the private keys retired more than [privacy] grace_days ago; returns their
    kids. An envelope sealed to one of them no longer opens (counted by the ingest)."""
    now = time.time() if now is None else now
    grace = float(config.privacy.grace_days) * 86400
    directory = sealing_dir(config)
    gone = []
    with _locked(directory):
        index = _read_index(directory)
        for kid, entry in list(index["keys"].items()):
            if entry["retired"] is not None and entry["retired"] + grace <= now:
                gone.append(kid)
                del index["keys"][kid]
        if gone:
            _write_index(directory, index)  # first: a key listed must exist
            for kid in gone:
                (directory / f"{kid}.key").unlink(missing_ok=True)
    for kid in gone:
        log.info("sealing key %s purged (retired more than %g days ago)", kid,
                 config.privacy.grace_days)
    return gone


# --- greengate-fleet sealing ... ------------------------------------------------------
def run(config, args) -> int:
    """greengate-fleet sealing show | rotate [--no-publish] | purge."""
    import sys

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    grace = float(config.privacy.grace_days) * 86400
    try:
        if args.action == "show":
            ring = load(config, create=False)
            for line in ring.describe(grace, time.time()) or ["no sealing key yet (made on "
                                                              "first use)"]:
                print(line)
            return 0
        if args.action == "purge":
            gone = purge(config)
            print(f"purged {len(gone)} sealing key(s){': ' + ', '.join(gone) if gone else ''}")
            return 0
        kid, old = rotate(config)
        gone = purge(config)
    except KeyError_ as exc:
        print(f"greengate-fleet: {exc}", file=sys.stderr)
        return 2
    print(f"current sealing key: {kid}" + (f" (retired {old})" if old else "") +
          (f"; purged {', '.join(gone)}" if gone else ""))
    return _reissue_trust(config, args, kid, old)


def _reissue_trust(config, args, kid: str, old: str | None) -> int:
    """The new key reaches the kiosks in a new trust bundle version of every deployment."""
    import sys

    from . import audit, bundles
    from .bundles import SYSTEM
    from .db import make_engine, make_sessions

    engine = make_engine(config.database_url)
    sessions = make_sessions(engine)
    status = 0
    try:
        for number, deployment in enumerate(config.fleet.deployments):
            with sessions() as session:
                def work():
                    if number == 0:  # one audit entry, committed with the first bundle
                        audit.record(session, "cli", "sealing.rotate", kid, retired=old)
                    return bundles.issue(session, config, deployment, "trust",
                                         key=bundles.load_signing_key(config), actor=SYSTEM,
                                         action="sealing key rotated", at=time.time())
                try:
                    version = bundles.in_transaction(session, work)
                except bundles.ListError as exc:
                    print(f"greengate-fleet: {deployment}: {exc.message}", file=sys.stderr)
                    status = 1
                    continue
            print(f"{deployment}: trust v{version} carries the new key")
            if not getattr(args, "no_publish", False):
                why = bundles.publish_now(config, sessions, deployment, ["trust"], timeout=30)
                if why:
                    print(f"{deployment}: not published now ({why}); the publisher sends it "
                          "on its next round", file=sys.stderr)
    finally:
        engine.dispose()
    return status


# --- the ingest's side ----------------------------------------------------------------
RELOAD_UNKNOWN = 5.0  # at most this often, an unknown kid re-reads the keys (a rotation)
RELOAD_EVERY = 300.0  # and this often anyway (a purge drops keys from memory)


class Unsealer:
    """Opens a scan's `sealed` identity and derives its holder pseudonym (the ingest
    worker's; fleet/ingest.py). Keys are re-read when an envelope names a key the worker
    does not hold (another process rotated) and every RELOAD_EVERY seconds; the opener's
    cache of kiosk epochs is carried over for the keys still held."""

    def __init__(self, config, clock=time.monotonic):
        self.config = config
        self.clock = clock
        self.secret = pseudonym_secret(config)
        self._pseudonym = sealing.Pseudonymiser(self.secret)
        self._ring = load(config)
        self._loaded = clock()

    def _reload(self, now: float) -> None:
        try:
            ring = load(self.config, create=False)
        except KeyError_ as exc:  # keep the keys held: a half-written index must not stop us
            log.error("sealing keys not reloaded (%s); keeping those held", exc)
        else:
            # the kiosks' epoch keys stay opened, except those of a kid now purged
            ring.opener.adopt(self._ring.opener)
            self._ring = ring
        self._loaded = now

    @property
    def opener(self) -> sealing.Opener:
        return self._ring.opener

    def holder(self, doc: dict, kiosk: str) -> str:
        """The pseudonym of the identity sealed in doc["sealed"] for this scan, or
        sealing.SealError (why: malformed, unknown_key, invalid)."""
        return self.pseudonym(doc["sealed"], kiosk, doc["id"])

    def pseudonym(self, text, kiosk: str, scan_id: str) -> str:
        """The pseudonym of the identity sealed in `text` for the scan (kiosk, scan_id),
        or sealing.SealError (why: malformed, unknown_key, invalid)."""
        return self._pseudonym(self.identity(text, kiosk, scan_id))

    def pseudonym_of(self, identity: bytes) -> str:
        """The pseudonym of an identity `identity()` opened."""
        return self._pseudonym(identity)

    def identity(self, text, kiosk: str, scan_id: str) -> bytes:
        """The identity bytes sealed in `text` for the scan (kiosk, scan_id), or
        sealing.SealError (why: malformed, unknown_key, invalid)."""
        now = self.clock()
        if now - self._loaded >= RELOAD_EVERY:
            self._reload(now)
        try:
            identity = self._ring.opener.open(text, kiosk=kiosk, scan_id=scan_id)
        except sealing.SealError as exc:
            if exc.reason != "unknown_key" or now - self._loaded < RELOAD_UNKNOWN:
                raise
            self._reload(now)
            identity = self._ring.opener.open(text, kiosk=kiosk, scan_id=scan_id)
        return identity

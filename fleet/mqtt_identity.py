"""Which MQTT identity a fleet process connects as, and its TLS context
(docs/provisioning.md#fleet-identities).

The broker makes a client's id its certificate's CN (`use_username_as_clientid`), so
two processes with one certificate would take over each other's session. With
`[mqtt] cert = "pki/clients/{identity}.pem"` (and `key` likewise) each process
loads the certificate named for its own identity:

    ingest worker NAME   <client_id>-ingest-NAME    one per worker name
    bundle publishers    <client_id>-web-N          the first N whose certificate exists
                                                    here and that no other process on
                                                    this host holds (a lock file in
                                                    data_dir): gunicorn workers and
                                                    `greengate-fleet bundles` runs

A plain path (no {identity}) is the old shared certificate: every process uses it, and
on a broker with `use_username_as_clientid` only one of them can be connected at once.
"""

from __future__ import annotations

import fcntl
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PLACEHOLDER = "{identity}"
LOCK_DIR = "mqtt-identities"  # under data_dir
MAX_SLOTS = 1000  # a guard against a loop over a directory nobody could fill


class IdentityError(ValueError):
    pass


@dataclass
class Identity:
    client_id: str
    cert: Path | None
    key: Path | None
    _lock: object | None = field(default=None, repr=False)

    def release(self) -> None:
        """Give the numbered identity back (also happens when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def templated(config) -> bool:
    return bool(config.mqtt.tls) and PLACEHOLDER in config.mqtt.cert


def _paths(config, name: str) -> tuple[Path | None, Path | None]:
    m = config.mqtt
    cert = config.resolve(m.cert.replace(PLACEHOLDER, name)) if m.cert else None
    key = config.resolve(m.key.replace(PLACEHOLDER, name)) if m.key else None
    return cert, key


def _missing(config, name: str, cert: Path, hint: str) -> IdentityError:
    return IdentityError(f"[mqtt] cert = {config.mqtt.cert!r}: no certificate for the MQTT "
                         f"identity {name} ({cert} is missing): issue it with `{hint}` on the "
                         "host that holds the fleet CA (a new fleet: `greengate-provision "
                         "init` makes the PKI with these identities)")


def ingest(config, worker: str) -> Identity:
    """The identity of ingest worker `worker`: <client_id>-ingest-<worker>."""
    name = f"{config.mqtt.client_id}-ingest-{worker}"
    cert, key = _paths(config, name)
    if templated(config) and not cert.exists():
        raise _missing(config, name, cert, f"greengate-provision identity add ingest {worker}")
    return Identity(name, cert, key)


def claim(config, role: str, default_client_id: str) -> Identity:
    """The first free numbered identity <client_id>-<role>-N of this host (held until
    release() or the process's end); with a plain [mqtt] cert, the shared certificate
    under `default_client_id`."""
    if not templated(config):
        cert, key = _paths(config, "")
        return Identity(default_client_id, cert, key)
    lock_dir = config.resolve(LOCK_DIR)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        lock_dir = None
        log.warning("cannot create %s (%s): the first %s identity is used unlocked, and two "
                    "processes of this host may then take over each other's MQTT session",
                    config.resolve(LOCK_DIR), exc, role)
    first = None
    for number in range(1, MAX_SLOTS + 1):
        name = f"{config.mqtt.client_id}-{role}-{number}"
        cert, key = _paths(config, name)
        if not cert.exists():
            break
        first = first or Identity(name, cert, key)
        if lock_dir is None:
            return first
        lock = open(lock_dir / f"{name}.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process (or another publisher in this one)
            lock.close()
            continue
        return Identity(name, cert, key, lock)
    if first is None:
        name = f"{config.mqtt.client_id}-{role}-1"
        raise _missing(config, name, _paths(config, name)[0],
                       f"greengate-provision identity add {role}")
    raise IdentityError(f"every {role} MQTT identity whose certificate is on this host is in "
                        f"use by another process; issue one more with `greengate-provision "
                        f"identity add {role}` and copy it here")


def _readable(config, key: str, path: Path) -> str:
    """`path` (from [mqtt] `key`) as a string, or IdentityError naming both."""
    value = getattr(config.mqtt, key)
    where = f"[mqtt] {key} = {value!r}"
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise IdentityError(f"{where}: {path} does not exist (`greengate-provision init` "
                            "makes the fleet's PKI; docs/fleet-config.md#mqtt)") from None
    except PermissionError:
        raise IdentityError(f"{where}: {path} cannot be read by this user "
                            "(the fleet's services run as greengate-fleet)") from None
    except IsADirectoryError:
        raise IdentityError(f"{where}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise IdentityError(f"{where}: {path} cannot be read ({exc.strerror})") from None
    return str(path)


def tls_context(config, identity: Identity) -> ssl.SSLContext:
    """A client context that checks the broker against [mqtt] ca and presents
    `identity`'s certificate (if any). IdentityError names the file and its config key
    (ssl's own errors name neither)."""
    m = config.mqtt
    cafile = _readable(config, "ca", config.resolve(m.ca)) if m.ca else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except ssl.SSLError as exc:
        raise IdentityError(f"[mqtt] ca = {m.ca!r}: {cafile} holds no PEM CA certificate "
                            f"({exc.reason or exc})") from None
    if identity.cert is not None:
        cert = _readable(config, "cert", identity.cert)
        key = _readable(config, "key", identity.key) if identity.key is not None else None
        try:
            # a password callback: an encrypted key must fail, not prompt on a terminal
            context.load_cert_chain(cert, key, password=lambda: b"")
        except ssl.SSLError as exc:
            raise IdentityError(
                f"[mqtt] cert = {m.cert!r}, key = {m.key!r}: {cert} and {key or cert} are not "
                f"a PEM certificate and its unencrypted private key ({exc.reason or exc})"
            ) from None
    return context

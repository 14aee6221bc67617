"""`greengate-provision mosquitto-config`: the broker's configuration for a fleet.

Writes into OUT (e.g. /etc/mosquitto/conf.d/, the Debian package includes it):

    greengate.conf   one TLS listener; client certificate required and its CN is the
                     username; anonymous refused; the fleet CRL; the ACL; persistence
    greengate.acl    what each identity may publish and read
    greengate/       the files Mosquitto reads: ca.pem, server.pem, server.key, crl.pem
                     (copies: the PKI directory itself stays private to root)

The ACL (topics in greengate/messages.py): a kiosk, known by its certificate's CN,
publishes only under gg/v1/kiosk/<its id>/ and reads only the bundle topics; the
fleet's services (CN greengate-fleet) read every kiosk's topics and publish the
bundles. Mosquitto checks a will's topic when the client connects, so a kiosk cannot
leave a will under another id either.
"""

from __future__ import annotations

import grp
import os
import shutil
from pathlib import Path

from greengate import messages

from .pki import FLEET_IDENTITY, PKI, PKIError

KIOSK_TOPICS = ("scan", "summary", "heartbeat", "presence")


def acl_text(fleet_identity: str = FLEET_IDENTITY) -> str:
    root = messages.ROOT
    lines = [
        "# GreenGate broker ACL (greengate-provision mosquitto-config). Usernames are the",
        "# client certificates' CN (use_identity_as_username).",
        "",
        "# The fleet's services: ingest workers and presence read every kiosk; the",
        "# publisher writes the signed bundles (retained).",
        f"user {fleet_identity}",
        f"topic read {root}/kiosk/#",
        f"topic readwrite {root}/bundle/#",
        "",
        "# Every other identity is a kiosk: its own topics (%u = its CN), and the bundles.",
    ]
    lines += [f"pattern write {root}/kiosk/%u/{kind}" for kind in KIOSK_TOPICS]
    lines += [f"pattern read {root}/bundle/#"]
    return "\n".join(lines) + "\n"


def conf_text(*, port: int, files: Path, acl: Path, persistence_dir: str,
              bind: str | None = None) -> str:
    listener = f"listener {port}" + (f" {bind}" if bind else "")
    return "\n".join([
        "# GreenGate broker (greengate-provision mosquitto-config). TLS only, every client",
        "# proves who it is with a certificate of the fleet CA; revoked ones are in the CRL",
        "# (re-read on SIGHUP: `greengate-provision retire` does that).",
        "per_listener_settings false",
        listener,
        "protocol mqtt",
        f"cafile {files / 'ca.pem'}",
        f"certfile {files / 'server.pem'}",
        f"keyfile {files / 'server.key'}",
        f"crlfile {files / 'crl.pem'}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {acl}",
        "",
        "# Retained bundles, kiosks' will-carrying sessions and the ingest workers' queued",
        "# scans survive a broker restart.",
        "persistence true",
        f"persistence_location {persistence_dir.rstrip('/')}/",
        "autosave_interval 60",
        # A fleet outage of a few hours at a busy checkpoint city: the ingest sessions
        # must queue the scans, not drop them (docs/fleet.md#failures).
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "",
    ])


def write(pki: PKI, out: Path, *, port: int = 8883, persistence_dir: str = "/var/lib/mosquitto",
          bind: str | None = None, group: str | None = "mosquitto") -> dict[str, Path]:
    """Write greengate.conf, greengate.acl and the broker's copies of the PKI files.
    The key is readable by `group` (the broker's) when that group exists."""
    for name in ("ca.pem", "server.pem", "server.key", "crl.pem"):
        if not pki.path(name).exists():
            raise PKIError(f"{pki.path(name)} is missing: run `greengate-provision init` first")
    out = Path(out)
    files = out / "greengate"
    files.mkdir(parents=True, exist_ok=True)
    gid = None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            gid = None
    os.chmod(files, 0o750 if gid is not None else 0o700)
    if gid is not None and os.geteuid() == 0:
        os.chown(files, 0, gid)
    for name, mode in (("ca.pem", 0o644), ("server.pem", 0o644), ("crl.pem", 0o644),
                       ("server.key", 0o640 if gid is not None else 0o600)):
        target = files / name
        shutil.copyfile(pki.path(name), target)
        os.chmod(target, mode)
        if gid is not None and os.geteuid() == 0:
            os.chown(target, 0, gid)
    acl = out / "greengate.acl"
    acl.write_text(acl_text())
    conf = out / "greengate.conf"
    conf.write_text(conf_text(port=port, files=files.resolve(), acl=acl.resolve(),
                              persistence_dir=persistence_dir, bind=bind))
    return {"conf": conf, "acl": acl, "crl": files / "crl.pem", "files": files}

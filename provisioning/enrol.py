"""Enrolling a kiosk: its record in the fleet, then what goes onto the Pi.

Two ways (docs/provisioning.md#enrolling-a-kiosk):

* a bundle: the key is made here, and the folder `greengate/` (kiosk.toml, kiosk.key,
  kiosk.pem, ca.pem, fleet-bundle.pem) goes into a tar file or straight onto the SD
  card's boot partition; scripts/install-kiosk.sh installs it on first boot;
* a one-time token: the Pi makes its own key and exchanges a CSR and the token for its
  certificate over HTTPS (`greengate-kiosk enrol`, fleet/api/enrol.py). The token is
  `gge1.<secret>.<pin>`: the pin is the start of the fleet CA's SHA-256 fingerprint,
  so the Pi can check it talks to this fleet before it sends anything.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import os
import secrets
import tarfile
import time
import urllib.parse
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from fleet import audit, kiosks, rosters
from fleet.bundles import ListError
from fleet.kiosk_config import KioskSpec
from fleet.models import Bridge, District, EnrolmentToken, Kiosk, Location
from fleet.pki import PKI
from greengate import enrolment
from greengate.enrolment import BUNDLE_DIR
from greengate.messages import KIOSK_ID


class EnrolError(Exception):
    pass


# --- where the kiosk finds the fleet --------------------------------------------------
LOCAL_HOSTS = ("localhost", "localhost.localdomain", "ip6-localhost", "::1")


def _local(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_warning(kiosk_id: str, *, broker_host: str, broker_port: int,
                     http_url: str) -> str | None:
    """One line when the kiosk would look for the fleet on itself, or has no web URL;
    None when its configuration names real hosts."""
    problems = []
    if _local(broker_host):
        problems.append(f"its broker is {broker_host}:{broker_port}, the kiosk itself")
    web_host = urllib.parse.urlsplit(http_url).hostname if http_url else None
    if not http_url:
        problems.append("it has no http_url (no list fallback over HTTPS)")
    elif web_host is None or _local(web_host):
        problems.append(f"its http_url {http_url} is the kiosk itself")
    if not problems:
        return None
    return (f"kiosk {kiosk_id}'s kiosk.toml: {'; '.join(problems)}. Give init the fleet's "
            "real --host and --http-url, set [enrol] broker_host / http_url, or pass "
            "--broker-host / --http-url")


# --- the fleet's record --------------------------------------------------------------
def register(session, config, *, kiosk_id: str, location_code: str | None,
             location_name: str | None, district_code: str | None, deployment: str | None,
             policy: str, actor: str, district_name: str | None = None,
             bridge: str | None = None) -> KioskSpec:
    """Register the kiosk (fleet/kiosks.py rules). A new location is created when a
    district is named; a new district only when its name is given too (a typo in a
    code must not make a district); a named district must match an existing
    location's."""
    if not KIOSK_ID.match(kiosk_id):
        raise EnrolError(f"kiosk id {kiosk_id!r} is not valid: 1 to 63 letters, digits, '_', "
                         "'.' or '-', starting with a letter or digit")
    reserved = config.mqtt.client_id.lower()
    if reserved and kiosk_id.lower().startswith(reserved):
        # the broker makes a certificate's CN the client id: a kiosk under a fleet
        # process's name could take over that process's session
        raise EnrolError(f"kiosk ids starting with {config.mqtt.client_id!r} are the "
                         "fleet's own MQTT identities ([mqtt] client_id): choose another id")
    deployments = config.fleet.deployments
    if deployment is None:
        if len(deployments) > 1:
            raise EnrolError(f"this fleet serves several deployments ({', '.join(deployments)}):"
                             " name one with --deployment")
        deployment = deployments[0]
    district = None
    if district_code:
        district = session.scalar(select(District).where(District.code == district_code))
        if district is None and district_name:
            district = District(code=district_code, name=district_name)
            session.add(district)
            session.flush()
            audit.record(session, actor, "district.create", district_code, name=district_name)
        if district is None:
            raise EnrolError(f"no district with code {district_code!r}: create it with "
                             "--district-name NAME, in the dashboard or with POST "
                             "/api/v1/districts")
    location = None
    if location_code:
        location = session.scalar(select(Location).where(Location.code == location_code))
        if location is None:
            if district is None:
                raise EnrolError(f"no location with code {location_code!r}: name its district "
                                 "(--district) to create it, with --location-name")
            location = Location(code=location_code, name=location_name or location_code,
                                address="", district_id=district.id)
            session.add(location)
            session.flush()
            audit.record(session, actor, "location.create", location_code,
                         name=location.name, district=district.code)
        elif district is not None and location.district_id != district.id:
            raise EnrolError(f"location {location_code!r} is not in district {district_code!r}")
        if district is None and location.district_id is not None:
            district = session.get(District, location.district_id)
    district_broker = None
    if bridge is not None:
        row = session.get(Bridge, bridge)
        if row is None or not row.address:
            raise EnrolError(f"no bridge {bridge!r} registered: `greengate-provision bridge "
                             f"{bridge} --address HOST:PORT --fleet-config …` first")
        district_broker = row.address
    try:
        kiosks.register(session, config, kiosk_id=kiosk_id, deployment=deployment,
                        policy=policy, location=location, actor=actor, at=time.time())
    except kiosks.KioskError as exc:
        raise EnrolError(exc.message) from None
    session.get(Kiosk, kiosk_id).bridge = bridge
    reissued = ([], [])
    if location is not None and location.organisation_id is not None:
        # before it first connects, the kiosk must be in the policy bundle's maps (a
        # workers-only or closed place) and named by its organisation's roster: else it
        # would admit anyone green until the next re-issue
        try:
            reissued = rosters.placement_changed(session, config, [kiosk_id], actor=actor)
        except ListError as exc:
            raise EnrolError(f"kiosk {kiosk_id!r} is at an organisation's control point and "
                             f"its bundles cannot be signed: {exc.message}") from None
    return KioskSpec(kiosk_id, deployment, policy, location, district, reissued,
                     district_broker)


# --- bundle -------------------------------------------------------------------------------
def bundle_files(pki: PKI, key, cert, config_text: str) -> dict[str, tuple[bytes, int]]:
    """name -> (content, mode) of the folder `greengate/` for the Pi."""
    return {
        enrolment.CONFIG: (config_text.encode(), 0o600),
        enrolment.KEY: (key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600),
        enrolment.CERT: (cert.public_bytes(serialization.Encoding.PEM), 0o644),
        enrolment.CA: (pki.ca_pem(), 0o644),
        enrolment.FLEET_KEY: (pki.bundle_public_pem(), 0o644),
    }


def write_tar(path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A tar (gzip when the name ends .gz / .tgz) holding greengate/<files>, mode 0600:
    it carries a private key."""
    path = Path(path)
    mode = "w:gz" if path.suffix in (".gz", ".tgz") else "w"
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:
        now = time.time()
        folder = tarfile.TarInfo(BUNDLE_DIR)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o700, now
        tar.addfile(folder)
        for name, (data, file_mode) in files.items():
            info = tarfile.TarInfo(f"{BUNDLE_DIR}/{name}")
            info.size, info.mode, info.mtime = len(data), file_mode, now
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return path


def write_folder(boot: Path, files: dict[str, tuple[bytes, int]], force: bool = False) -> Path:
    """greengate/ on a mounted boot partition (FAT: modes mean nothing there; the install
    script moves the files to /etc/greengate and deletes them from the card)."""
    boot = Path(boot)
    if not boot.is_dir():
        raise EnrolError(f"{boot} is not a directory: mount the SD card's boot partition "
                         "(bookworm: the FAT partition with config.txt) and name it")
    folder = boot / BUNDLE_DIR
    if (folder / enrolment.CONFIG).exists() and not force:
        raise EnrolError(f"{folder} holds an enrolment already; --force replaces it")
    folder.mkdir(exist_ok=True)
    for name, (data, mode) in files.items():
        target = folder / name
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(target, mode)
        except OSError:  # FAT
            pass
    return folder


# --- token --------------------------------------------------------------------------------
def create_token(session, pki: PKI, kiosk_id: str, hours: float, actor: str) -> tuple[str, float]:
    """A one-time token for the kiosk; only its hash is stored. Returns (token, expires)."""
    secret = secrets.token_urlsafe(24)
    now = time.time()
    expires = now + hours * 3600
    session.add(EnrolmentToken(token_hash=enrolment.secret_hash(secret), kiosk_id=kiosk_id,
                               created_at=now, created_by=actor, expires_at=expires))
    return enrolment.format_token(secret, pki.ca_fingerprint()), expires


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

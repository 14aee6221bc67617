"""What a kiosk is told about itself and where to find the fleet: its kiosk.toml, and the
fleet's record of the certificate it was given. Both enrolment paths write these:
`greengate-provision enrol` (a bundle) and the fleet web server's token exchange
(fleet/api/enrol.py), so they live on the fleet's side of the layers
(docs/kiosk-config.md, docs/provisioning.md#enrolling-a-kiosk)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from greengate import enrolment, messages

from .models import Bridge, District, Kiosk, KioskCertificate, Location
from .pki import PKI, read_endpoints


@dataclass
class KioskSpec:
    kiosk_id: str
    deployment: str
    policy: str
    location: Location | None
    district: District | None
    # deployments whose policy bundle / rosters were re-signed for this kiosk: to publish
    reissued: tuple[list[str], list[str]] = ([], [])
    # host:port of its district broker (`--bridge`), tried before the core
    district_broker: str | None = None


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kiosk_toml(spec: KioskSpec, *, broker_host: str, broker_port: int, http_url: str,
               data_dir: str | None = None) -> str:
    """The kiosk's configuration; paths are relative to it (docs/kiosk-config.md). It holds
    no pseudonym key: kiosks seal holder identities to the fleet's public key, which the
    trust bundle carries (docs/privacy.md)."""
    location = spec.location.name if spec.location else ""
    district = spec.district.name if spec.district else ""
    if spec.district_broker:  # its district's broker first, the core as its fallback
        core = messages.broker_text(broker_host, int(broker_port))
        where = [f"brokers = [{_toml_string(spec.district_broker)}, {_toml_string(core)}]"]
    else:
        where = [f"host = {_toml_string(broker_host)}", f"port = {int(broker_port)}"]
    return "\n".join([
        "# GreenGate kiosk, made by `greengate-provision enrol`. Every key: docs/kiosk-config.md.",
        "[kiosk]",
        f"id = {_toml_string(spec.kiosk_id)}",
        f"location = {_toml_string(location)}",
        f"district = {_toml_string(district)}",
        f"deployment = {_toml_string(spec.deployment)}",
        f"policy = {_toml_string(spec.policy)}",
        *([f"data_dir = {_toml_string(data_dir)}"] if data_dir else []),
        "",
        "[mqtt]",
        *where,
        "tls = true",
        f'ca = "{enrolment.CA}"',
        f'cert = "{enrolment.CERT}"',
        f'key = "{enrolment.KEY}"',
        "",
        "[bundles]",
        f'fleet_key = "{enrolment.FLEET_KEY}"',
        f"http_url = {_toml_string(http_url)}",
        "",
        "[privacy]",
        "pseudonyms = true",
        "",
    ])


def endpoints(config, pki: PKI, *, broker_host: str | None = None,
              broker_port: int | None = None, http_url: str | None = None) -> dict:
    """broker_host, broker_port, http_url for a kiosk's configuration. Each comes from the
    flag, else the fleet configuration's [enrol] (its broker_host and broker_port go
    together), else what `init` recorded (fleet.json), else [mqtt] host."""
    recorded = read_endpoints(pki.dir)
    if config.enrol.broker_host:
        host, port = config.enrol.broker_host, config.enrol.broker_port
    elif "broker_host" in recorded:
        host, port = recorded["broker_host"], recorded.get("broker_port",
                                                           config.enrol.broker_port)
    else:
        host, port = config.mqtt.host, config.enrol.broker_port
    return {"broker_host": broker_host or host,
            "broker_port": broker_port if broker_port is not None else port,
            "http_url": http_url if http_url is not None else
            (config.enrol.http_url or recorded.get("http_url", ""))}


def district_broker(session, kiosk: Kiosk) -> str | None:
    """The address of the kiosk's district broker (`enrol --bridge`), if any."""
    row = session.get(Bridge, kiosk.bridge) if kiosk.bridge else None
    return row.address if row is not None else None


def record_certificate(session, kiosk_id: str, cert, via: str) -> None:
    session.add(KioskCertificate(
        serial=format(cert.serial_number, "x"), kiosk_id=kiosk_id, issued_at=time.time(),
        not_after=cert.not_valid_after_utc.timestamp(), via=via))

"""District brokers' bridges to the core, as the fleet knows them (docs/scaling.md).

`greengate-provision bridge NAME --address HOST:PORT --fleet-config …` registers a
bridge with the address its kiosks connect to; the presence tracker writes each bridge's
state from the core's retained gg/v1/bridge/<name>/state (Mosquitto's own notification:
"1" connected, "0" its last will). A kiosk whose heartbeats name that address as their
broker is "unreachable through bridge NAME" while the bridge is down, not offline. The ingest
also writes which CRL each district broker applies, from its crl-follow's retained
gg/v1/bridge/<name>/crl: `retire` waits for it (provisioning/retire.py).
"""

from __future__ import annotations

import time

from sqlalchemy import select

from greengate import messages

from .models import Bridge


class BridgeError(ValueError):
    pass


def check(name: str, address: str | None) -> None:
    if not isinstance(name, str) or not messages.BRIDGE_NAME.match(name):
        raise BridgeError(f"bridge name {str(name)[:40]!r}: 1 to 32 lowercase letters, digits "
                          "or '-'")
    if address is not None:
        try:
            messages.broker_address(address)
        except messages.MessageError as exc:
            raise BridgeError(str(exc)) from None


def register(session, name: str, address: str, *, at: float | None = None) -> Bridge:
    """Create the bridge, or give it its (new) address. No commit."""
    check(name, address)
    bridge = session.get(Bridge, name)
    if bridge is None:
        bridge = Bridge(name=name)
        session.add(bridge)
    bridge.address = address
    bridge.registered_at = time.time() if at is None else at
    return bridge


def listed(session) -> list[Bridge]:
    return list(session.scalars(select(Bridge).order_by(Bridge.name)))


def by_address(session) -> dict[str, str]:
    """address -> bridge name, of the registered bridges."""
    return {b.address: b.name for b in listed(session) if b.address}


def as_json(bridge: Bridge) -> dict:
    return {"name": bridge.name, "address": bridge.address,
            "state": "unknown" if bridge.connected is None
            else ("connected" if bridge.connected else "down"),
            "since": bridge.since,
            # the CRL its broker applies (provisioning/crl_follow.py); None: never said
            "crl": None if bridge.crl_at is None else
            {"number": bridge.crl_number, "at": bridge.crl_at, "error": bridge.crl_error}}

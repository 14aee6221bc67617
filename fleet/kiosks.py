"""Enrolling and retiring kiosks: the rules shared by the API (fleet/api/fleet_objects.py)
and the provisioning tools (provisioning/enrol.py), so both check and audit alike.

Functions take an open session and leave the commit to the caller."""

from __future__ import annotations

from sqlalchemy import select

from greengate import policy as greengate_policy

from . import audit
from .models import NEVER_SEEN, RETIRED, Kiosk, KioskCertificate, Location, Outage, Policy, \
    PresenceEvent

# Identities the fleet's own services hold on the broker: no kiosk may be named so,
# or its certificate would carry their rights (provisioning/mosquitto_config.py).
RESERVED_PREFIX = "greengate-"


class KioskError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_deployment(config, deployment: str) -> None:
    known = config.fleet.deployments
    if deployment not in known:
        raise KioskError(422, f"unknown deployment {deployment!r}; this fleet serves: "
                              f"{', '.join(known)}")


def check_policy(session, deployment: str, name: str) -> None:
    """The policy must be one the deployment's policy bundle carries: a kiosk refuses a
    policy bundle that lacks its policy (docs/bundles.md). A deployment without policies
    yet gets the built-ins on first use (fleet/policies.py)."""
    names = set(session.scalars(select(Policy.name).where(Policy.deployment == deployment)))
    names = names or set(greengate_policy.BUILTIN)
    if name not in names:
        raise KioskError(422, f"deployment {deployment!r} has no policy {name!r}; its "
                              f"policies: {', '.join(sorted(names))}")


def register(session, config, *, kiosk_id: str, deployment: str, policy: str,
             location: Location | None, actor: str, at: float) -> tuple[Kiosk, bool]:
    """Create the kiosk's record, or adopt the row the ingest worker made for a kiosk it
    heard of before anyone enrolled it (that row keeps its presence history).
    Returns (kiosk, adopted)."""
    if kiosk_id.lower().startswith(RESERVED_PREFIX):
        raise KioskError(422, f"kiosk ids starting with {RESERVED_PREFIX!r} are reserved for "
                              "the fleet's own services")
    check_deployment(config, deployment)
    check_policy(session, deployment, policy)
    kiosk = session.get(Kiosk, kiosk_id)
    adopted = kiosk is not None and kiosk.enrolled_at is None and kiosk.state != RETIRED
    if kiosk is not None and kiosk.state == RETIRED:
        # an id is never reused: its history, certificates and outages stay its own
        raise KioskError(409, f"kiosk {kiosk_id!r} is retired; a retired id is not used "
                              "again: enrol the kiosk under a new id")
    if kiosk is not None and not adopted:
        raise KioskError(409, f"a kiosk {kiosk_id!r} exists already")
    if adopted:
        kiosk.location_id = location.id if location else None
        kiosk.deployment, kiosk.policy, kiosk.enrolled_at = deployment, policy, at
    else:
        kiosk = Kiosk(id=kiosk_id, location_id=location.id if location else None,
                      deployment=deployment, policy=policy, state=NEVER_SEEN, state_since=at,
                      detail="", session=0, enrolled_at=at)
        session.add(kiosk)
    audit.record(session, actor, "kiosk.create", kiosk_id, deployment=deployment,
                 policy=policy, location=location.code if location else None,
                 **({"adopted": True} if adopted else {}))
    return kiosk, adopted


def retire(session, kiosk: Kiosk, *, reason: str, actor: str, at: float) -> list[str]:
    """Mark the kiosk retired, end its open outage, mark its certificates revoked.
    Returns the serials (hex) newly revoked: provisioning puts them on the broker's CRL."""
    if kiosk.state == RETIRED:
        raise KioskError(409, f"kiosk {kiosk.id!r} is retired already (since "
                              f"{_iso(kiosk.retired_at or kiosk.state_since)})")
    session.add(PresenceEvent(kiosk_id=kiosk.id, at=at, previous=kiosk.state, state=RETIRED,
                              session=kiosk.session, detail=reason or "retired"))
    for outage in session.scalars(select(Outage).where(Outage.kiosk_id == kiosk.id,
                                                       Outage.ended.is_(None))):
        outage.ended = at  # a retired kiosk is no longer an outage
    previous = kiosk.state
    kiosk.state, kiosk.state_since, kiosk.retired_at = RETIRED, at, at
    kiosk.detail = reason or "retired"
    serials = []
    for cert in session.scalars(select(KioskCertificate).where(
            KioskCertificate.kiosk_id == kiosk.id, KioskCertificate.revoked_at.is_(None))):
        cert.revoked_at = at
        serials.append(cert.serial)
    audit.record(session, actor, "kiosk.retire", kiosk.id, previous=previous, reason=reason,
                 **({"certificates": serials} if serials else {}))
    return serials


def _iso(ts: float | None) -> str | None:
    from .api.common import iso
    return iso(ts)

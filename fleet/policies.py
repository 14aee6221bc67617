"""The checkpoint policies of a deployment (service layer, no Flask).

Policies are data (greengate/policy.py documents), validated here exactly as
the kiosk will read them, and distributed together in one signed `policy`
bundle; each kiosk applies the one its config names. A deployment starts with
the built-in policies (greengate/policies/*.json). Every change is audited and
makes a new policy bundle version.
"""

from __future__ import annotations

import re
import time

from sqlalchemy import select

from greengate import policy as greengate_policy

from . import audit, bundles
from .bundles import ListError
from .models import Policy

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def all_policies(session, config, deployment: str, now: float | None = None) -> list[Policy]:
    """Every policy of the deployment (the built-ins seeded on first use)."""
    bundles.check_deployment(config, deployment)
    rows = list(session.scalars(select(Policy).where(Policy.deployment == deployment)
                                .order_by(Policy.name)))
    if not rows:
        bundles.ensure_issued(session, config, deployment, now=now)  # seeds, signs the built-ins
        rows = list(session.scalars(select(Policy).where(Policy.deployment == deployment)
                                    .order_by(Policy.name)))
    return rows


def validate(name: str, document) -> dict:
    if not NAME.match(name or ""):
        raise ListError(f"policy name {name!r} is not allowed: letters, digits, '.', '_' and "
                        "'-', at most 64, starting with a letter or digit", 400)
    if not isinstance(document, dict):
        raise ListError("a policy is a JSON object (see docs/verification.md#policies)", 400)
    document = dict(document)
    if document.setdefault("name", name) != name:
        raise ListError(f"the document is named {document['name']!r} but is sent as {name!r}; "
                        "make them equal")
    try:
        greengate_policy.from_document(document)
    except greengate_policy.PolicyError as exc:
        raise ListError(f"invalid policy {name!r}: {exc}") from None
    return document


def put(session, config, deployment: str, name: str, document, *, actor: str,
        reason: str = "", now: float | None = None, key=None) -> tuple[Policy, int, str]:
    """Create or replace a policy; (row, policy version, "created" | "updated" |
    "unchanged"). Commits; an unchanged document makes no new version."""
    bundles.check_deployment(config, deployment)
    document = validate(name, document)
    at = time.time() if now is None else float(now)
    signer = key or bundles.load_signing_key(config)

    def work():
        bundles.seed_policies(session, deployment, at)
        row = session.scalars(select(Policy).where(Policy.deployment == deployment,
                                                   Policy.name == name)).first()
        created = row is None
        if created:
            row = Policy(deployment=deployment, name=name)
            session.add(row)
        elif row.document == document:
            return row, None, "unchanged"
        previous = None if created else row.document
        row.document, row.updated_by, row.updated_at = document, actor, at
        version = bundles.issue(session, config, deployment, "policy", key=signer, actor=actor,
                                action="policy.put", at=at, changes=1)
        audit.record(session, actor, "policy.create" if created else "policy.update",
                     f"{deployment}/{name}", reason=reason, version=version,
                     previous=previous, document=document)
        return row, version, "created" if created else "updated"

    row, version, outcome = bundles.in_transaction(session, work)
    if version is None:
        version = bundles.current_version(session, deployment, "policy")
    return row, version, outcome

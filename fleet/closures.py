"""A case closes the workplace: organisations suspended after a case, as their kiosks see it."""

from __future__ import annotations

from . import organisations


def closed_kiosks(session, deployment: str) -> dict:
    """kiosk id -> {"organisation": code, "since": iso} for every kiosk of a suspended
    organisation (filled in by issue 16 part 5)."""
    return {}


def change_status(session, config, org, new_status: str, *, actor: str, role: str,
                  reason: str = "", quota: int | None = None, lift_by: str | None = None,
                  detail: dict | None = None, at: float | None = None):
    """Every status change of an organisation goes through here (API, pages, CLI), so a
    suspension or a reopening re-signs the policy bundle its kiosks read. Returns
    (history row, deployments whose policy bundle was re-issued)."""
    change = organisations.set_status(session, org, new_status, actor=actor, role=role,
                                      reason=reason, quota=quota, lift_by=lift_by,
                                      detail=detail, at=at)
    return change, []

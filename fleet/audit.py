"""The audit log: every change to lists, policies, trust, devices and users."""

import time

from .models import AuditLog


def record(session, actor: str, action: str, target: str = "", **detail) -> AuditLog:
    """Add an entry to `session`; it commits with the change it describes."""
    entry = AuditLog(at=time.time(), actor=actor, action=action, target=target,
                     detail=detail or None)
    session.add(entry)
    return entry

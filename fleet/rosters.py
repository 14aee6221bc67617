"""Worker rosters: workers, quota, roster bundles."""

from __future__ import annotations


def workers_only_kiosks(session, deployment: str) -> dict:
    """kiosk id -> organisation code, for kiosks at "workers only" control points."""
    return {}

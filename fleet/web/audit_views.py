"""The audit log page (admins only, as the API): newest first, keyset-paginated, filtered
by action and actor (docs/dashboard.md#audit-log)."""

from __future__ import annotations

import json

from flask import render_template, request
from flask_babel import gettext as _
from sqlalchemy import select

from ..api.common import keyset_page
from ..app import db
from ..auth import AuthError
from ..models import ADMIN, AuditLog
from . import bp, page

PAGE_SIZE = 50
DETAIL_CHARS = 2000  # a batch of 10,000 revocations has a detail of megabytes
# Offered in the action filter; any other action typed in works too.
KNOWN_ACTIONS = ("user.login", "status.revoke", "status.suspend", "status.reinstate",
                 "trust.add", "trust.remove", "policy.create", "policy.update",
                 "district.create", "district.update", "location.create", "location.update",
                 "kiosk.create", "kiosk.update", "kiosk.retire", "trace.query")


@bp.get("/audit")
@page(ADMIN)
def audit_log():
    action = request.args.get("action", "").strip()
    actor = request.args.get("actor", "").strip()
    after_text = request.args.get("after", "").strip()
    if after_text and not after_text.isdigit():
        raise AuthError(400, _("The page link is damaged: start again from the first page."))
    stmt = select(AuditLog)
    if action:
        stmt = stmt.where(AuditLog.action == action)
    if actor:
        stmt = stmt.where(AuditLog.actor == actor)
    rows, cursor = keyset_page(db(), stmt, AuditLog.id, PAGE_SIZE,
                               int(after_text) if after_text else None)
    entries = []
    for (entry,) in rows:
        detail = json.dumps(entry.detail, ensure_ascii=False, sort_keys=True) \
            if entry.detail else ""
        entries.append({"id": entry.id, "at": entry.at, "actor": entry.actor,
                        "action": entry.action, "target": entry.target,
                        "detail": detail[:DETAIL_CHARS],
                        "cut": len(detail) > DETAIL_CHARS})
    return render_template("audit.html", entries=entries, action=action, actor=actor,
                           next_after=cursor, paged=bool(after_text), actions=KNOWN_ACTIONS)

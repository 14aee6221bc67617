"""GET /api/v1/quarantine: the messages the ingest refused (fleet/quarantine.py).

Admins and operators see every row, kiosk-less ones included (a topic that named no
kiosk); a district officer sees the rows of the kiosks in their district only. The
payload's first bytes are given as base64 (what was stored, at most 512 bytes) and as
a preview (hex and printable ASCII): never decoded into the JSON as text. Pseudonyms
(runs of 32+ hex digits) are masked for all but admins, as in scan listings.
"""

from __future__ import annotations

import base64

from flask import jsonify
from sqlalchemy import select

from .. import quarantine
from ..app import db
from ..auth import require
from ..models import (ADMIN, DISTRICT_OFFICER, OPERATOR, QUARANTINE_KINDS, WARD_OFFICER, Kiosk,
                      Location)
from . import bp
from .activity import TRACERS
from .common import (caller, choice_arg, iso, keyset_page, location_clause, now, page_args,
                     pattern_arg, time_range)
from .fleet_objects import KIOSK_ID, KIOSK_RULE

TABLE = quarantine.TABLE
READERS = (ADMIN, OPERATOR, DISTRICT_OFFICER, WARD_OFFICER)


def quarantine_json(row, tracer: bool) -> dict:
    """tracer: the caller may see pseudonyms (admins); for the others every run of 32+
    hex digits in the payload is masked (a scan's cert and holder are such runs)."""
    raw = bytes(row.raw) if isinstance(row.raw, (bytes, bytearray, memoryview)) else b""
    if not tracer:
        raw = quarantine.mask_pseudonyms(raw, truncated=(row.size or 0) > len(raw))
    return {"id": row.id, "received": iso(row.received), "kiosk": row.kiosk_id,
            "topic": row.topic, "kind": row.kind, "reason": row.reason, "detail": row.detail,
            "size": row.size, "raw_base64": base64.b64encode(raw).decode("ascii"),
            "masked": not tracer,
            "preview": quarantine.preview(raw)}


def scoped(stmt):
    """Rows the caller may see: an officer only their district's kiosks' rows."""
    clause = location_clause()
    if clause is None:
        return stmt
    mine = (select(Kiosk.id).join(Location, Kiosk.location_id == Location.id)
            .where(clause))
    return stmt.where(TABLE.c.kiosk_id.in_(mine))


@bp.get("/quarantine")
@require(*READERS)
def list_quarantine():
    """Newest first, keyset-paginated (limit, after). Filters: kiosk, kind, since/until
    (received)."""
    session = db()
    stmt = scoped(select(*quarantine.COLUMNS))
    kiosk_id = pattern_arg("kiosk", KIOSK_ID, KIOSK_RULE)
    if kiosk_id is not None:
        stmt = stmt.where(TABLE.c.kiosk_id == kiosk_id)
    kind = choice_arg("kind", QUARANTINE_KINDS)
    if kind is not None:
        stmt = stmt.where(TABLE.c.kind == kind)
    since, until = time_range()
    if since is not None:
        stmt = stmt.where(TABLE.c.received >= since)
    if until is not None:
        stmt = stmt.where(TABLE.c.received < until)
    limit, after = page_args()
    rows, cursor = keyset_page(session, stmt, TABLE.c.id, limit, after)
    tracer = caller().role in TRACERS
    return jsonify(items=[quarantine_json(r, tracer) for r in rows], next=cursor, at=iso(now()))

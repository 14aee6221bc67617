"""The quarantine (dead-letter) table: what the ingest refused, kept for a human.

Write side (the ingest worker, inside its batch transaction):

    rows = quarantine.rows_for(refused, received)   # objects or dicts with kiosk, topic,
    quarantine.insert(connection, rows)              # kind, reason, detail, raw[, size]

Everything in a quarantined message is hostile by definition, and a quarantine row the
database refuses would put the poison back into the batch it was meant to leave. So
`row()` accepts anything and returns only what both databases take: text coerced to str,
NUL, other control characters and lone surrogates replaced (PostgreSQL refuses NUL in
text, psycopg refuses surrogates), truncated to the column; the payload coerced to
bytes and cut to RAW_BYTES; the size a non-negative int that fits the column.

Read side (the API, the kiosk page, /metrics): `recent`, `listing`, `count_by_kiosk`,
`totals`; `preview` to show raw bytes safely and `mask_pseudonyms` for the roles that
may not see certificate hashes and holder pseudonyms.
"""

from __future__ import annotations

import binascii
import re

from sqlalchemy import func, select

from .models import QUARANTINE_KINDS, QuarantinedMessage

TABLE = QuarantinedMessage.__table__
RAW_BYTES = 512  # of a quarantined payload: enough for a human to see what it was
KIOSK_CHARS, TOPIC_CHARS, KIND_CHARS, REASON_CHARS, DETAIL_CHARS = 63, 255, 20, 40, 300
SIZE_MAX = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL
# NUL and the other C0/C1 controls (tab excepted), and lone surrogates
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(value, limit: int) -> str:
    """Any value -> a str both databases store, at most `limit` characters."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # a hostile __str__ must not cost the row
            value = f"<{type(value).__name__}>"
    return _UNSAFE.sub("\ufffd", value[:limit])


def clean_bytes(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return clean_text(value, RAW_BYTES).encode("utf-8")


def _size(size, payload: bytes) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        size = len(payload)
    return min(max(size, 0), SIZE_MAX)


def row(*, received: float, kiosk=None, topic="", kind="unknown", reason="", detail="",
        raw=b"", size=None) -> dict:
    """One quarantine row (a dict for a Core insert) from anything at all."""
    payload = clean_bytes(raw)
    kind = clean_text(kind, KIND_CHARS)
    kiosk = clean_text(kiosk, KIOSK_CHARS) or None
    return {"received": float(received), "kiosk_id": kiosk,
            "topic": clean_text(topic, TOPIC_CHARS),
            "kind": kind if kind in QUARANTINE_KINDS else "unknown",
            "reason": clean_text(reason, REASON_CHARS) or "unknown",
            "detail": clean_text(detail, DETAIL_CHARS),
            "raw": payload[:RAW_BYTES], "size": _size(size, payload)}


_FIELDS = ("kiosk", "topic", "kind", "reason", "detail", "raw", "size")


def rows_for(items, received: float) -> list[dict]:
    """Rows from objects (attributes) or mappings with kiosk, topic, kind, reason, detail,
    raw and optionally size (the whole payload's length; default len(raw))."""
    out = []
    for item in items:
        if isinstance(item, dict):
            fields = {f: item.get(f) for f in _FIELDS}
        else:
            fields = {f: getattr(item, f, None) for f in _FIELDS}
        out.append(row(received=received, **fields))
    return out


def insert(connection, rows: list[dict]) -> int:
    """Insert rows (from `row`/`rows_for`) in the caller's transaction, one executemany."""
    if rows:
        connection.execute(TABLE.insert(), rows)
    return len(rows)


# --- reading ------------------------------------------------------------------------
COLUMNS = (TABLE.c.id, TABLE.c.received, TABLE.c.kiosk_id, TABLE.c.topic, TABLE.c.kind,
           TABLE.c.reason, TABLE.c.detail, TABLE.c.raw, TABLE.c.size)


def listing(session, *, kiosks=None, kiosk: str | None = None, since: float | None = None,
            before_id: int | None = None, limit: int = 100) -> list[dict]:
    """Newest first. kiosks: None (all, kiosk-less rows included) or the ids a caller may
    see (kiosk-less rows then excluded); before_id: keyset paging (the last page's
    smallest id)."""
    query = select(*COLUMNS).order_by(TABLE.c.id.desc()).limit(limit)
    if kiosks is not None:
        query = query.where(TABLE.c.kiosk_id.in_(sorted(kiosks)))
    if kiosk is not None:
        query = query.where(TABLE.c.kiosk_id == kiosk)
    if since is not None:
        query = query.where(TABLE.c.received >= since)
    if before_id is not None:
        query = query.where(TABLE.c.id < before_id)
    return [dict(r) for r in session.execute(query).mappings()]


def recent(session, kiosk: str, limit: int = 20) -> list[dict]:
    return listing(session, kiosk=kiosk, limit=limit)


def count_by_kiosk(session, kiosks=None) -> dict[str, int]:
    query = (select(TABLE.c.kiosk_id, func.count()).where(TABLE.c.kiosk_id.is_not(None))
             .group_by(TABLE.c.kiosk_id))
    if kiosks is not None:
        query = query.where(TABLE.c.kiosk_id.in_(sorted(kiosks)))
    return {k: n for k, n in session.execute(query)}


def totals(session, since: float | None = None) -> dict[tuple[str, str], int]:
    """(kind, reason) -> rows held (received >= since, if given)."""
    query = select(TABLE.c.kind, TABLE.c.reason, func.count()).group_by(TABLE.c.kind,
                                                                         TABLE.c.reason)
    if since is not None:
        query = query.where(TABLE.c.received >= since)
    return {(kind, reason): n for kind, reason, n in session.execute(query)}


# A scan's `cert` and `holder` are 64 hex digits, a status key 32: pseudonyms only admins
# and health officials may see (docs/api.md#roles). A refused message is not parsed, so
# every run of that many hex digits is masked for the others, whatever field it is in.
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{32,}")
_HEX_TAIL = re.compile(rb"[0-9A-Fa-f]{32,}|[0-9A-Fa-f]+\Z")


def mask_pseudonyms(raw, truncated: bool = False) -> bytes:
    """The payload with every run of 32 or more hex digits replaced by '*'s. truncated:
    the stored bytes are a cut payload, so a hex run at the very end may be the start of
    a longer one: masked too."""
    pattern = _HEX_TAIL if truncated else _HEX_RUN
    return pattern.sub(lambda m: b"*" * len(m.group(0)), clean_bytes(raw))


def preview(raw, limit: int = 64) -> dict:
    """The first `limit` bytes as hex and as printable ASCII ('.' for anything else):
    shown escaped, never decoded, so no payload can inject markup or break a page."""
    data = clean_bytes(raw)[:limit]
    return {"hex": binascii.hexlify(data, " ").decode("ascii"),
            "text": "".join(chr(b) if 0x20 <= b < 0x7f else "." for b in data)}

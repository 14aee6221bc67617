"""Gap detection: decisions a kiosk says the fleet confirmed, that the fleet does not hold.

Every decision gets a per-outbox sequence number (seq 1, 2, 3, ...; docs/protocol.md).
A heartbeat says `seq` (the highest given so far) and `confirmed` (every decision up to
it was confirmed by the fleet and left the outbox). So the scans of (seq_checked,
confirmed] must all be in the scan table; those that are not are lost for good (the
kiosk no longer has them). When the presence tracker flushes (fleet/presence.py, every
`seen_flush` seconds, not per heartbeat), `record` counts each window once:

    seq_missing += (confirmed - seq_checked) - distinct seqs held in (seq_checked, confirmed]
    seq_checked  = confirmed

A window is counted once, when the watermark passes it: retention purging those scans
later does not make a gap appear. Limits (docs/fleet.md#gaps):

* first sight of a kiosk (seq_reported NULL): the window starts just below the lowest
  seq the fleet holds of it, so a fleet upgraded under kiosks that already numbered
  their decisions does not count everything before the upgrade as lost; decisions lost
  before the first one ever stored are not seen;
* a kiosk whose outbox was replaced starts again at 1 (confirmed goes backwards): the
  window restarts at 0. Rows of the old numbering are still in the table, so a seq held
  from the old numbering hides the loss of the same seq in the new one (distinct seqs
  are counted, so nothing is counted twice and missing never goes negative).
"""

from __future__ import annotations

import logging

from sqlalchemy import and_, func, select, update

from .models import Kiosk, Scan

log = logging.getLogger("greengate.fleet.gaps")

KIOSK = Kiosk.__table__
SCAN = Scan.__table__


def _int(value) -> int | None:
    return value if type(value) is int and value >= 0 else None


def positions(beats) -> dict[str, tuple[int | None, int | None]]:
    """(kiosk, heartbeat doc) pairs -> kiosk: (seq, confirmed) of its last heartbeat that
    has them. Anything not a well-formed count is ignored, not trusted."""
    out = {}
    for kid, doc in beats:
        if not isinstance(doc, dict):
            continue
        seq, confirmed = _int(doc.get("seq")), _int(doc.get("confirmed"))
        if seq is None and confirmed is None:
            continue
        if confirmed is not None and seq is not None and confirmed > seq:
            confirmed = None
        out[kid] = (seq, confirmed)
    return out


def _held(connection, kid: str, low: int, high: int) -> int:
    return connection.execute(
        select(func.count(SCAN.c.seq.distinct()))
        .where(SCAN.c.kiosk_id == kid, SCAN.c.seq > low, SCAN.c.seq <= high)).scalar_one()


def _lowest(connection, kid: str, high: int) -> int | None:
    return connection.execute(
        select(func.min(SCAN.c.seq))
        .where(SCAN.c.kiosk_id == kid, SCAN.c.seq > 0, SCAN.c.seq <= high)).scalar_one()


def record(connection, beats) -> dict[str, int]:
    """Count the new windows of these kiosks' heartbeats inside the caller's transaction.
    beats: (kiosk, heartbeat doc) pairs, later ones win. Returns kiosk: decisions found
    missing now (only kiosks with a new gap)."""
    latest = positions(beats)
    if not latest:
        return {}
    rows = connection.execute(select(KIOSK.c.id, KIOSK.c.seq_reported, KIOSK.c.seq_checked)
                              .where(KIOSK.c.id.in_(sorted(latest)))).all()
    found = {}
    for kid, reported, checked in rows:
        seq, confirmed = latest[kid]
        checked = checked or 0
        values = {} if seq is None or seq == reported else {"seq_reported": seq}
        if confirmed is not None and confirmed != checked:
            low = checked
            if confirmed < checked:
                log.warning("kiosk %s: confirmed %d is below the %d already counted: its "
                            "outbox was replaced; counting again from 1", kid, confirmed,
                            checked)
                low = 0
            elif reported is None and checked == 0:
                lowest = _lowest(connection, kid, confirmed)
                low = confirmed if lowest is None else lowest - 1
            missing = max(0, confirmed - low - _held(connection, kid, low, confirmed))
            values["seq_checked"] = confirmed
            if missing:
                values["seq_missing"] = KIOSK.c.seq_missing + missing
                found[kid] = missing
                log.warning("kiosk %s: %d decision(s) between seq %d and %d confirmed by "
                            "the kiosk are not in the fleet's database", kid, missing, low + 1,
                            confirmed)
        if values:
            # on the watermark we read: a second writer (if ever) cannot count twice
            connection.execute(update(KIOSK).where(and_(KIOSK.c.id == kid,
                                                        KIOSK.c.seq_checked == checked))
                               .values(**values))
    return found

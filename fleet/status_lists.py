"""The status lists: revoke, suspend and reinstate certificates (service layer, no Flask).

A certificate is named by its certificate identifier `ci`, by its QR text
(`HC1:...`), or by its 16-byte key (hex) = first 16 bytes of SHA-256(ci), the
key the kiosks look up. Revocation is permanent; a suspension has an end
date (`until`) and lapses by itself (kiosks compare `until` with their clock;
the fleet also drops lapsed suspensions from the next version).

A QR text is only taken from a certificate whose signature verifies against
the deployment's own trust list: the fleet reads the `ci` out of the signed
payload, and an unverified text could be a forgery or a corrupted scan naming
someone else's ci — listing it would turn an innocent certificate red while
the one meant stays green. Expiry is not checked: an expired certificate may
still be revoked.

Every call is one batch = at most ONE new status version (none if nothing
changes): StatusEntry rows updated, StatusChange rows written with that
version, snapshot/deltas/head signed (fleet/bundles.py), one audit row
naming who, when and why for each entry, all in one transaction.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select

from greengate import cose, hc1
from greengate.content import CLAIM_HCERT
from greengate.errors import Rejected
from greengate.status import cert_hash
from greengate.trust import TrustError, TrustList, load_signer

from . import audit, bundles
from .bundles import ListError
from .models import REINSTATED, REVOKED, SUSPENDED, StatusChange, StatusEntry, TrustEntry

MAX_BATCH = 10_000
MAX_REASON = 1000
MAX_CI = 200  # StatusEntry.ci; the DCC schema allows 80
MAX_SUSPENSION = 5 * 366 * 86400  # an "until" further away than this is surely a typo
_KEY_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
_CI = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces (URN:UVCI:01:VN:...)


@dataclass
class Target:
    key: bytes
    ci: str | None = None
    reason: str = ""
    until: float | None = None
    source: str = "ci"  # ci | qr | key


@dataclass
class ChangeResult:
    version: int | None  # the status version after the call
    changed: int
    entries: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"version": self.version, "changed": self.changed, "entries": self.entries}


# --- naming a certificate -----------------------------------------------------------
def trust_list(session, deployment: str) -> TrustList:
    certs = session.scalars(select(TrustEntry.certificate).where(
        TrustEntry.deployment == deployment, TrustEntry.removed_at.is_(None))).all()
    signers = []
    for der in certs:
        try:
            signers.append(load_signer(der))
        except TrustError:
            continue
    return TrustList(signers)


def ci_from_qr(text: str, trust: TrustList, deployment: str) -> str:
    """The ci of an HC1 QR text whose signature verifies against `trust`; ListError saying
    why not otherwise."""
    try:
        sign1 = cose.parse(hc1.decode(text))
    except Rejected as exc:
        raise ListError(f"not a readable HC1 QR text ({exc.detail})") from None
    kid = sign1.kid
    if not isinstance(kid, bytes) or len(kid) != cose.KID_LENGTH:
        raise ListError("the HC1 QR text names no valid signer key (kid), so it cannot be "
                        "verified")
    signers = trust.candidates(kid)
    if not signers:
        raise ListError(f"the HC1 QR text is signed by kid {kid.hex()}, which is not in the "
                        f"trust list of deployment {deployment!r}; the fleet takes a "
                        "certificate identifier only from a certificate it can verify (send "
                        "its 'ci' or 'key' instead if you have it from a trusted source)")
    for signer in signers:
        try:
            sign1.verify(signer.public_key)
            break
        except Rejected:
            continue
    else:
        raise ListError(f"the signature of the HC1 QR text does not verify with the trust-list "
                        f"key {kid.hex()}: it is forged or damaged, and its ci cannot be trusted")
    try:
        claims = cose.loads(sign1.payload)
        hcert = claims[CLAIM_HCERT][1]
        entries = [hcert[t] for t in ("v", "t", "r") if t in hcert]
        ci = entries[0][0]["ci"] if len(entries) == 1 else None
    except Exception:
        ci = None
    if not isinstance(ci, str) or not ci:
        raise ListError("the HC1 QR text verifies but its payload has no single v/t/r entry "
                        "with a certificate identifier (ci)")
    return ci


def _check_ci(ci: str) -> str:
    ci = ci.strip()
    if not ci or len(ci) > MAX_CI or not _CI.match(ci):
        raise ListError(f"not a certificate identifier or HC1 QR text: {ci[:60]!r} (a ci is "
                        f"printable text without spaces, at most {MAX_CI} characters, e.g. "
                        "URN:UVCI:01:VN:...)")
    return ci


def parse_time(value, what: str = "until") -> float:
    """Epoch seconds from an ISO 8601 text with a time zone, or from epoch seconds."""
    if isinstance(value, bool) or value is None:
        raise ListError(f"'{what}' is missing: give the end of the suspension as ISO 8601 with "
                        "a time zone, e.g. 2021-10-20T00:00:00+07:00")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ListError(f"'{what}' is not an ISO 8601 date and time: {value[:40]!r} (e.g. "
                            "2021-10-20T00:00:00+07:00)") from None
    else:
        raise ListError(f"'{what}' must be an ISO 8601 text, e.g. 2021-10-20T00:00:00+07:00")
    if moment.tzinfo is None:
        raise ListError(f"'{what}' has no time zone: {value!s:.40}; add one, e.g. +07:00 for "
                        "Vietnam or Z for UTC")
    return moment.timestamp()


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as the API writes times: 2021-10-05T08:00:00.000Z."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def targets_from(session, deployment: str, items, *, until=None, reason: str = "") -> list[Target]:
    """Parse a batch of {"ci"|"qr"|"key": ..., "reason": ..., "until"?: ...} into Targets;
    ListError naming the entry on the first problem (nothing is changed then)."""
    if not isinstance(items, list) or not items:
        raise ListError("'entries' must be a non-empty list of {\"ci\"|\"qr\"|\"key\": ..., "
                        "\"reason\": ...}", 400)
    if len(items) > MAX_BATCH:
        raise ListError(f"{len(items)} entries in one call; at most {MAX_BATCH}: split the list",
                        413)
    trust = None
    seen: dict[bytes, int] = {}
    targets = []
    # entries are numbered from 1, as the dashboard's lines are (docs/lists.md)
    for number, item in enumerate(items, 1):
        where = f"entry {number}"
        if not isinstance(item, dict):
            raise ListError(f"{where}: must be an object like {{\"ci\": \"URN:UVCI:...\", "
                            "\"reason\": \"...\"}", 400)
        named = [k for k in ("ci", "qr", "key") if item.get(k) not in (None, "")]
        if len(named) != 1:
            raise ListError(f"{where}: give exactly one of 'ci', 'qr' or 'key'"
                            + (f" (got {', '.join(named)})" if named else ""))
        source = named[0]
        value = item[source]
        if not isinstance(value, str):
            raise ListError(f"{where}: '{source}' must be text")
        try:
            if source == "key":
                if not _KEY_HEX.match(value.strip()):
                    raise ListError(f"not a status key: {value[:40]!r} (32 hex digits = the "
                                    "first 16 bytes of SHA-256 of the ci)")
                target = Target(bytes.fromhex(value.strip()), None, source="key")
            elif source == "qr" or value.strip().upper().startswith(hc1.PREFIX):
                if source == "qr" and not value.strip().upper().startswith(hc1.PREFIX):
                    raise ListError(f"not an HC1 QR text (it must start with 'HC1:'): "
                                    f"{value[:40]!r}")
                if trust is None:
                    trust = trust_list(session, deployment)
                ci = ci_from_qr(value, trust, deployment)
                target = Target(cert_hash(ci), ci, source="qr")
            else:
                ci = _check_ci(value)
                target = Target(cert_hash(ci), ci, source="ci")
        except ListError as exc:
            raise ListError(f"{where}: {exc.message}", exc.status) from None
        entry_reason = item.get("reason", reason) or ""
        if not isinstance(entry_reason, str) or len(entry_reason) > MAX_REASON:
            raise ListError(f"{where}: 'reason' must be text of at most {MAX_REASON} characters")
        target.reason = entry_reason.strip()
        entry_until = item.get("until", until)
        if entry_until is not None:
            try:
                target.until = parse_time(entry_until)
            except ListError as exc:
                raise ListError(f"{where}: {exc.message}") from None
        if target.key in seen:
            raise ListError(f"{where} names the same certificate as entry {seen[target.key]} "
                            f"(key {target.key.hex()})")
        seen[target.key] = number
        targets.append(target)
    return targets


# --- changes -------------------------------------------------------------------------
def revoke(session, config, deployment: str, items, *, actor: str, reason: str = "",
           now: float | None = None, key=None) -> ChangeResult:
    """Revoke (permanently) every named certificate. One new version if anything changed."""
    targets = targets_from(session, deployment, items, reason=reason)
    return _change(session, config, deployment, "revoke", targets, actor=actor, now=now, key=key)


def suspend(session, config, deployment: str, items, *, until=None, actor: str,
            reason: str = "", now: float | None = None, key=None) -> ChangeResult:
    """Suspend every named certificate until `until` (or each entry's own 'until')."""
    targets = targets_from(session, deployment, items, until=until, reason=reason)
    return _change(session, config, deployment, "suspend", targets, actor=actor, now=now, key=key)


def reinstate(session, config, deployment: str, items, *, actor: str, reason: str = "",
              now: float | None = None, key=None, allow_revoked: bool = False) -> ChangeResult:
    """Take certificates off the list. A revoked one only with allow_revoked (admins,
    correcting a mistake): revocation is otherwise permanent."""
    targets = targets_from(session, deployment, items, reason=reason)
    return _change(session, config, deployment, "reinstate", targets, actor=actor, now=now,
                   key=key, allow_revoked=allow_revoked)


def preview(session, config, deployment: str, action: str, items, *, actor: str,
            until=None, reason: str = "", now: float | None = None, key=None,
            allow_revoked: bool = False) -> ChangeResult:
    """What revoke / suspend / reinstate would do, changing nothing (the dashboard's
    confirmation step). The very same code runs, inside a transaction that is then rolled
    back, so the preview cannot drift from the change; errors are the same ListErrors.
    `version` is None: no version is made."""
    if action not in ("revoke", "suspend", "reinstate"):
        raise ListError(f"unknown status change {action!r}: revoke, suspend or reinstate")
    targets = targets_from(session, deployment, items,
                           until=until if action == "suspend" else None, reason=reason)
    return _change(session, config, deployment, action, targets, actor=actor, now=now, key=key,
                   allow_revoked=allow_revoked, dry_run=True)


class _Nothing(Exception):
    """Nothing changed: roll back the version claimed."""


class _DryRun(Exception):
    """A preview: roll back everything."""


def _change(session, config, deployment, action, targets, *, actor, now, key,
            allow_revoked=False, dry_run=False) -> ChangeResult:
    bundles.check_deployment(config, deployment)
    at = time.time() if now is None else float(now)
    if action == "suspend":
        for number, target in enumerate(targets, 1):
            if target.until is None:
                raise ListError(f"entry {number}: a suspension needs 'until' (ISO 8601 with a "
                                "time zone), for the whole call or per entry")
            if target.until <= at:
                raise ListError(f"entry {number}: 'until' {iso(target.until)} is not in the "
                                "future; a suspension that has already ended changes nothing")
            if target.until > at + MAX_SUSPENSION:
                raise ListError(f"entry {number}: 'until' {iso(target.until)} is more than 5 "
                                "years away; revoke the certificate instead")
            # whole seconds on the wire, rounded up: never lapse before the time given
            target.until = float(math.ceil(target.until))
    signer = key or bundles.load_signing_key(config)
    results: list[dict] = []

    def work():
        results.clear()
        row = bundles.claim_version(session, deployment, "status", actor=actor,
                                    action=f"status.{action}", at=at)
        existing = {}
        keys = [t.key for t in targets]
        for start in range(0, len(keys), 500):
            for entry in session.scalars(select(StatusEntry).where(
                    StatusEntry.deployment == deployment,
                    StatusEntry.key.in_(keys[start:start + 500]))):
                existing[bytes(entry.key)] = entry
        changed = 0
        for number, target in enumerate(targets, 1):
            entry = existing.get(target.key)
            result, note = _apply(session, deployment, row.version, action, target, entry,
                                  actor, at, allow_revoked, number)
            changed += result != "unchanged"
            results.append({"key": target.key.hex(), "ci": target.ci or (entry.ci if entry else None),
                            "result": result, "note": note,
                            "until": iso(target.until) if action == "suspend" else None})
        if dry_run:
            raise _DryRun
        if not changed:
            raise _Nothing
        row.changes = changed
        session.flush()
        bundles.issue_status(session, config, deployment, row, signer, at)
        audit.record(session, actor, f"status.{action}", deployment, version=row.version,
                     changed=changed,
                     entries=[{"key": t.key.hex(), "ci": t.ci, "reason": t.reason,
                               "until": iso(t.until) if action == "suspend" else None,
                               "result": r["result"], "by": t.source}
                              for t, r in zip(targets, results)])
        return row.version

    try:
        version = bundles.in_transaction(session, work)
        changed = sum(r["result"] != "unchanged" for r in results)
    except _Nothing:
        version = bundles.current_version(session, deployment, "status")
        changed = 0
    except _DryRun:
        return ChangeResult(None, sum(r["result"] != "unchanged" for r in results),
                            list(results))
    return ChangeResult(version, changed, list(results))


def _apply(session, deployment, version, action, target, entry, actor, at, allow_revoked,
           number) -> tuple[str, str]:
    """Change one entry; (result, note). Adds the StatusChange row for a change."""
    def record(kind, until=None):
        session.add(StatusChange(deployment=deployment, version=version, key=target.key,
                                 kind=kind, until=until))

    if action == "revoke":
        if entry is not None and entry.kind == REVOKED:
            return "unchanged", "already revoked"
        note = "was suspended" if entry is not None else ""
        if entry is None:
            entry = StatusEntry(deployment=deployment, key=target.key, created_at=at)
            session.add(entry)
        entry.kind, entry.until = REVOKED, None
        entry.ci = target.ci or entry.ci
        entry.reason, entry.created_by, entry.created_at, entry.updated_at = \
            target.reason, actor, at, at
        record(REVOKED)
        return REVOKED, note
    if action == "suspend":
        if entry is not None and entry.kind == REVOKED:
            return "unchanged", "revoked, which is permanent and stronger than a suspension"
        until = target.until
        if entry is not None and entry.kind == SUSPENDED and entry.until == until and \
                entry.until > at:
            return "unchanged", "already suspended until then"
        note = f"was suspended until {iso(entry.until)}" if entry is not None else ""
        if entry is None:
            entry = StatusEntry(deployment=deployment, key=target.key, created_by=actor,
                                created_at=at)
            session.add(entry)
        entry.kind, entry.until = SUSPENDED, until
        entry.ci = target.ci or entry.ci
        entry.reason, entry.created_by, entry.updated_at = target.reason, actor, at
        record(SUSPENDED, until)
        return SUSPENDED, note
    # reinstate
    if entry is None:
        return "unchanged", "not on the list"
    if entry.kind == REVOKED and not allow_revoked:
        raise ListError(f"entry {number}: certificate {target.key.hex()} is revoked, which is "
                        "permanent; only an admin may reinstate a revoked certificate (to correct "
                        "a mistake)", 409)
    note = f"was {entry.kind}"
    if entry.kind == SUSPENDED and entry.until is not None and entry.until <= at:
        note += " (already lapsed)"
    session.delete(entry)
    record(REINSTATED)
    return REINSTATED, note


# --- reading -------------------------------------------------------------------------
def entry_dict(entry: StatusEntry, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    return {"key": bytes(entry.key).hex(), "ci": entry.ci, "kind": entry.kind,
            "until": iso(entry.until),
            "lapsed": entry.kind == SUSPENDED and entry.until is not None and entry.until <= now,
            "reason": entry.reason, "by": entry.created_by, "since": iso(entry.created_at),
            "updated": iso(entry.updated_at)}


def entries(session, deployment: str, *, kind: str | None = None, after: bytes | None = None,
            limit: int = 100) -> list[StatusEntry]:
    """A page of the list in key order (`after`: the last key of the previous page)."""
    query = select(StatusEntry).where(StatusEntry.deployment == deployment)
    if kind is not None:
        query = query.where(StatusEntry.kind == kind)
    if after is not None:
        query = query.where(StatusEntry.key > after)
    return list(session.scalars(query.order_by(StatusEntry.key).limit(limit)))


def entry(session, deployment: str, key: bytes) -> StatusEntry | None:
    return session.scalars(select(StatusEntry).where(StatusEntry.deployment == deployment,
                                                     StatusEntry.key == key)).first()

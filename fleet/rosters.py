"""Worker rosters as the fleet signs them for kiosks (docs/rosters.md).

Each organisation has a roster key, HKDF-SHA256 of the fleet's roster secret with the
organisation's code: the keyed hashes of its workers' identities (greengate/roster.py)
are made with it, kept in Worker.holder_key, and sent with the key to the organisation's
kiosks in a signed `roster` bundle, retained on each kiosk's own topic
(gg/v1/roster/<kiosk>). The key is per organisation so that a kiosk, which must hold its
key to hash whoever it scans, learns nothing about any other organisation's roster.

On disk, `roster.secret` in the PKI directory: 64 hex digits, mode 0600, made on first
use (no fleet PKI predates rosters, so none is "missing" one). Back it up with the PKI:
without it the stored holder keys no longer match what kiosks compute, and every worker
would have to be linked again. So once a worker is linked by holder, a missing secret is
refused, never made anew: a new one would make every workers-only kiosk turn every worker
away. Rotation is not built (nothing needs it yet: a new secret
means re-linking every worker, see docs/rosters.md).

Versions: one counter per deployment for kind "roster" (bundles.claim_version), so a
kiosk that moves to another organisation still sees versions rise and refuses older
bundles (rollback). PublishedBundle rows of kind "roster" keep the organisation's id in
`base` (a roster has no base version; deltas are not stored by the fleet yet).

Workers (fleet/roster_workers.py) call publish() after a change of the roster, commit,
then notify() the app's publisher.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, select

from greengate import bundle as bundle_format
from greengate import cose, messages
from greengate import roster as roster_format
from greengate.sealing import identity_bytes

from . import audit
from .models import RETIRED, Kiosk, Location, Organisation, PublishedBundle, Worker

log = logging.getLogger(__name__)

KIND = "roster"
DELTA_KIND = "roster-delta"
KEEP = 2  # roster bundles kept per organisation and deployment: the current one, the last
_INFO = b"greengate roster key\x00"


class RosterError(ValueError):
    """The roster secret cannot be used: the message names the file."""


# --- the roster secret and each organisation's key -------------------------------------
def secret_path(config) -> Path:
    return config.resolve(config.pki.dir) / "roster.secret"


def roster_secret(config, session=None) -> bytes:
    """session: where to look for workers already linked with the secret (None: trust the
    caller that a missing secret may be made)."""
    from .sealing_keys import hex_secret
    path = secret_path(config)
    if session is not None and not path.exists() and session.scalars(
            select(Worker.id).where(Worker.holder_key.is_not(None)).limit(1)).first():
        raise RosterError(f"{path}: the roster secret is missing, but workers are linked with "
                          "it: restore it from the PKI's backup (a new secret would make "
                          "workers-only kiosks turn every worker away)")
    return hex_secret(secret_path(config), what="roster secret", error=RosterError,
                      sizes=range(32, 33), rule="64", make=True,
                      made="created the fleet's roster secret %s: back it up with the PKI "
                           "(workers' stored holder keys are made with it)")


_KEYS: dict[tuple, bytes] = {}  # (secret file, its mtime, code) -> key: a CSV of 1,000 rows


def org_key(config, org_code: str, session=None) -> bytes:
    """The organisation's roster key (32 bytes): in its kiosks' roster bundles. session:
    as for roster_secret."""
    path = secret_path(config)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None  # made (or refused) by roster_secret below
    cached = _KEYS.get((str(path), stamp, org_code)) if stamp is not None else None
    if cached is not None:
        return cached
    key = HKDF(hashes.SHA256(), 32, None, _INFO + org_code.encode("utf-8")).derive(
        roster_secret(config, session))
    if stamp is not None:
        if len(_KEYS) > 4096:
            _KEYS.clear()
        _KEYS[(str(path), stamp, org_code)] = key
    return key


def holder_entry_hex(config, org_code: str, holder_tuple, session=None) -> str:
    """Worker.holder_key of a holder (family, given, dob as the DCC's fnt, gnt, dob):
    32 hex digits, what the organisation's kiosks compute of that holder's certificates."""
    return identity_entry_hex(config, org_code, identity_bytes(tuple(holder_tuple)), session)


def identity_entry_hex(config, org_code: str, identity: bytes, session=None) -> str:
    """As holder_entry_hex, from the identity bytes (what the ingest's Unsealer opens
    from a scan's sealed holder)."""
    return roster_format.entry(org_key(config, org_code, session), identity).hex()


def cert_entry_hex(ci: str) -> str:
    """Worker.cert_key of a certificate identifier (matches that certificate only)."""
    return roster_format.cert_entry(ci).hex()


# --- which kiosks -----------------------------------------------------------------
def workers_only_kiosks(session, deployment: str) -> dict:
    """kiosk id -> organisation code, for kiosks at "workers only" control points."""
    rows = session.execute(
        select(Kiosk.id, Organisation.code)
        .join(Location, Kiosk.location_id == Location.id)
        .join(Organisation, Location.organisation_id == Organisation.id)
        .where(Kiosk.deployment == deployment, Kiosk.state != RETIRED,
               Location.workers_only.is_(True))
        .order_by(Kiosk.id))
    return dict(rows.all())


def _kiosks_by_deployment(session, org) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kiosk_id, deployment in session.execute(
            select(Kiosk.id, Kiosk.deployment)
            .join(Location, Kiosk.location_id == Location.id)
            .where(Location.organisation_id == org.id, Kiosk.state != RETIRED)
            .order_by(Kiosk.id)):
        out.setdefault(deployment, []).append(kiosk_id)
    return out


def _entries(values) -> list[bytes]:
    out = []
    for value in values:
        try:
            raw = bytes.fromhex(value or "")
        except ValueError:
            raw = b""
        if len(raw) == roster_format.ENTRY_BYTES:
            out.append(raw)
        elif value:
            log.warning("a worker's key %r is not %d hex bytes; left out of the roster",
                        value, roster_format.ENTRY_BYTES)
    return out


def body_of(session, config, org) -> dict:
    """What the organisation's roster holds now (every deployment's bundle has it)."""
    holders, certs = [], []
    for holder_key, cert_key in session.execute(
            select(Worker.holder_key, Worker.cert_key)
            .where(Worker.organisation_id == org.id, Worker.removed_at.is_(None))):
        holders.append(holder_key)
        certs.append(cert_key)
    return {"holders": _entries(holders), "certs": _entries(certs)}


# --- issuing ---------------------------------------------------------------------
def publish(session, config, org, *, actor: str, at: float | None = None, key=None) -> list[str]:
    """Sign a new roster bundle for the organisation's kiosks (not retired) from its
    workers not removed, in each deployment they are in. No commit: the caller commits,
    then hands the returned deployments to notify(). An organisation without kiosks gets
    no bundle (the next change after it has one does)."""
    from . import bundles  # bundles imports this module

    at = time.time() if at is None else at
    by_deployment = _kiosks_by_deployment(session, org)
    if not by_deployment:
        return []
    signer = key or bundles.load_signing_key(config)
    content = body_of(session, config, org)
    try:
        secret_key = org_key(config, org.code, session)
    except RosterError as exc:
        raise bundles.ListError(str(exc), 503) from None
    done = []
    for deployment in sorted(by_deployment):
        kiosks = by_deployment[deployment]
        row = bundles.claim_version(session, deployment, KIND, actor=actor,
                                    action=f"roster {org.code}"[:64], at=at)
        row.changes = len(content["holders"]) + len(content["certs"])
        body = roster_format.roster_body(org.code, kiosks, secret_key, content["holders"],
                                         content["certs"])
        issued = int(at)
        raw = bundle_format.seal(KIND, row.version, issued, body, signer, deployment)
        previous = _newest(session, deployment, org.id)
        bundles._store(session, deployment, KIND, row.version, issued, raw, base=org.id)
        if previous is not None:
            delta = _delta_body(previous, org.code, kiosks, content)
            if delta is not None:
                bundles._store(session, deployment, DELTA_KIND, row.version, issued,
                               bundle_format.seal(DELTA_KIND, row.version, issued, delta,
                                                  signer, deployment), base=org.id)
        session.flush()
        old = session.scalars(
            select(PublishedBundle.version)
            .where(PublishedBundle.deployment == deployment, PublishedBundle.kind == KIND,
                   PublishedBundle.base == org.id)
            .order_by(PublishedBundle.version.desc()).offset(KEEP).limit(1)).first()
        if old is not None:
            session.execute(delete(PublishedBundle).where(
                PublishedBundle.deployment == deployment,
                PublishedBundle.kind.in_((KIND, DELTA_KIND)),
                PublishedBundle.base == org.id, PublishedBundle.version <= old))
        done.append(deployment)
    audit.record(session, actor, "roster.publish", org.code, deployments=done,
                 holders=len(content["holders"]), certs=len(content["certs"]))
    return done


def _newest(session, deployment: str, org_id: int) -> PublishedBundle | None:
    return session.scalars(
        select(PublishedBundle)
        .where(PublishedBundle.deployment == deployment, PublishedBundle.kind == KIND,
               PublishedBundle.base == org_id)
        .order_by(PublishedBundle.version.desc()).limit(1)).first()


def _body(raw: bytes):
    """The body of a roster bundle the fleet stored (signed by it: read unverified)."""
    try:
        return cbor2.loads(cose.parse(raw).payload).get("body")
    except Exception:
        return None


def _delta_body(previous: PublishedBundle, code: str, kiosks, content) -> dict | None:
    """The roster-delta from the previous roster to `content` (None if the previous one
    cannot be read: its kiosks then take the full roster)."""
    try:
        old = roster_format.parse_roster(_body(bytes(previous.raw)), previous.version)
    except ValueError:
        log.warning("roster v%d of %s unreadable: no delta from it", previous.version, code)
        return None
    if old.organisation != code:
        return None
    holders = {int(e) for e in roster_format._ints(content["holders"]).tolist()}
    certs = {int(e) for e in roster_format._ints(content["certs"]).tolist()}
    return roster_format.delta_body(
        previous.version, code, kiosks, add_holders=holders - old.holders,
        remove_holders=old.holders - holders, add_certs=certs - old.certs,
        remove_certs=old.certs - certs)


def notify(publisher, deployments) -> str:
    """After the commit: hand the new roster bundles to the app's publisher (or None)."""
    from .publisher import hand_off
    results = {hand_off(publisher, d, {KIND}) for d in deployments}
    return ", ".join(sorted(results)) if results else "nothing to publish"


def kiosks_in(raw: bytes) -> list[str]:
    """The kiosk ids a stored roster bundle names (signed by the fleet: read unverified);
    [] for anything unreadable."""
    try:
        kiosks = _body(raw).get("kiosks")
        return [k for k in kiosks if isinstance(k, str)]
    except Exception:
        return []


def _delta_for(session, deployment: str, org_id: int, version: int, raw: bytes) -> dict:
    """kiosk id -> what its delta topic holds beside roster `version` of the organisation
    (its full bundle `raw`): the delta to it, for the kiosks its base named too (a kiosk
    can hold that base), else b"" (an empty retained payload clears the topic: a kiosk
    holding any other roster takes the full one)."""
    delta = session.scalars(
        select(PublishedBundle.raw)
        .where(PublishedBundle.deployment == deployment, PublishedBundle.kind == DELTA_KIND,
               PublishedBundle.base == org_id, PublishedBundle.version == version)
        .limit(1)).first()
    named = set()
    if delta is not None:
        base = (_body(bytes(delta)) or {}).get("from")
        prior = session.scalars(
            select(PublishedBundle.raw)
            .where(PublishedBundle.deployment == deployment, PublishedBundle.kind == KIND,
                   PublishedBundle.base == org_id, PublishedBundle.version == base)
            .limit(1)).first() if type(base) is int else None
        named = set(kiosks_in(bytes(prior))) if prior is not None else set()
    return {k: (bytes(delta) if k in named else b"") for k in kiosks_in(raw)}


def kiosk_messages(session, organisation_id: int, deployments) -> list[tuple[str, bytes]]:
    """(topic, payload) for each kiosk the organisation's newest roster names, in
    `deployments`: the full roster, then its delta topic's (the delta, or b"" to clear
    it). What the ingest publishes itself after linking a worker by a scan."""
    out = []
    for deployment in deployments:
        newest = _newest(session, deployment, organisation_id)
        if newest is None:
            continue
        raw = bytes(newest.raw)
        deltas = _delta_for(session, deployment, organisation_id, newest.version, raw)
        for kiosk_id in kiosks_in(raw):
            out += [(messages.roster_topic(kiosk_id), raw),
                    (messages.roster_delta_topic(kiosk_id), deltas[kiosk_id])]
    return out


def current(session, deployment: str) -> dict[str, tuple[int, bytes]]:
    """kiosk id -> (version, raw) of the roster bundle each kiosk should hold now: the
    newest of its organisation's, if it names the kiosk (a kiosk moved to another
    organisation waits for that organisation's next roster)."""
    latest = (select(PublishedBundle.base, func.max(PublishedBundle.version).label("version"))
              .where(PublishedBundle.deployment == deployment, PublishedBundle.kind == KIND)
              .group_by(PublishedBundle.base).subquery())
    newest: dict[int, tuple[int, bytes]] = {}
    for org_id, version, raw in session.execute(
            select(PublishedBundle.base, PublishedBundle.version, PublishedBundle.raw)
            .join(latest, (PublishedBundle.base == latest.c.base) &
                  (PublishedBundle.version == latest.c.version))
            .where(PublishedBundle.deployment == deployment, PublishedBundle.kind == KIND)):
        newest[org_id] = (version, bytes(raw))
    if not newest:
        return {}
    out = {}
    for kiosk_id, org_id in _placed(session, deployment):
        held = newest.get(org_id)
        if held is not None and kiosk_id in kiosks_in(held[1]):
            out[kiosk_id] = held
    return out


def _placed(session, deployment: str):
    return session.execute(
            select(Kiosk.id, Location.organisation_id)
            .join(Location, Kiosk.location_id == Location.id)
            .where(Kiosk.deployment == deployment, Kiosk.state != RETIRED,
                   Location.organisation_id.is_not(None))).all()


def current_with_deltas(session, deployment: str) -> dict[str, tuple[int, bytes, bytes]]:
    """As current(), with what each kiosk's delta topic holds beside it: kiosk id ->
    (version, full roster, delta or b"")."""
    full = current(session, deployment)
    by_org: dict[int, tuple[int, bytes]] = {}
    org_of = dict(_placed(session, deployment))
    for kiosk_id, held in full.items():
        by_org.setdefault(org_of[kiosk_id], held)
    deltas: dict[str, bytes] = {}
    for org_id, (version, raw) in by_org.items():
        deltas.update(_delta_for(session, deployment, org_id, version, raw))
    return {k: (v, raw, deltas.get(k, b"")) for k, (v, raw) in full.items()}


def publish_for_kiosks(session, config, kiosk_ids, *, actor: str, at: float | None = None
                       ) -> list[str]:
    """Re-issue the rosters of the organisations these kiosks belong to (a location made
    workers-only, a kiosk placed at another organisation's control point)."""
    org_ids = set(session.scalars(
        select(Location.organisation_id).join(Kiosk, Kiosk.location_id == Location.id)
        .where(Kiosk.id.in_(list(kiosk_ids)), Location.organisation_id.is_not(None))))
    done: set[str] = set()
    for org in session.scalars(select(Organisation).where(Organisation.id.in_(org_ids))):
        done.update(publish(session, config, org, actor=actor, at=at))
    return sorted(done)


def placement_changed(session, config, kiosk_ids, *, actor: str, at: float | None = None,
                      policy: bool = True) -> tuple[list[str], list[str]]:
    """After kiosks changed place (a location made workers-only or not, given to another
    organisation, a kiosk moved): a new policy bundle for their deployments (its
    `workers_only` map) and new rosters of their organisations (a roster names the kiosks
    it is for). No commit. Returns (policy deployments, roster deployments) for the
    publisher after the commit."""
    from . import bundles

    at = time.time() if at is None else at
    kiosk_ids = list(kiosk_ids)
    if not kiosk_ids:
        return [], []
    session.flush()
    deployments = sorted(set(session.scalars(
        select(Kiosk.deployment).where(Kiosk.id.in_(kiosk_ids), Kiosk.state != RETIRED))))
    if policy:
        signer = bundles.load_signing_key(config)
        for deployment in deployments:
            bundles.issue(session, config, deployment, "policy", key=signer, actor=actor,
                          action="workers only", at=at)
    return (deployments if policy else []), publish_for_kiosks(session, config, kiosk_ids,
                                                               actor=actor, at=at)


def hand_over(publisher, policy_deployments, roster_deployments) -> str:
    """After the commit of placement_changed: both kinds to the app's publisher."""
    from .publisher import hand_off
    said = {hand_off(publisher, d, {"policy"}) for d in policy_deployments}
    said |= {hand_off(publisher, d, {KIND}) for d in roster_deployments}
    return ", ".join(sorted(said)) if said else "nothing to publish"

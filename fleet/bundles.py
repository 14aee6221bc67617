"""Building, versioning and signing the bundles the fleet distributes (docs/lists.md).

Per deployment the fleet holds four lists — the trust list (TrustEntry), the
policies (Policy, with each kiosk's assigned policy), the status list
(StatusEntry, with its history in StatusChange) and the EU value sets
(ValueSet) — and signs each version of each as a bundle
(greengate/bundle.py) with its bundle-signing key. Every signed bundle is kept
in PublishedBundle (raw bytes, ETag = hex SHA-256): the HTTP endpoints serve it
from there and the MQTT publisher (fleet/publisher.py) republishes it retained.
The database is the source of truth; MQTT is a cache of it.

A new status version is published as
- `status`: the full snapshot (lapsed suspensions dropped),
- `status-delta`: one per base version in the window (the last `[bundles]
  deltas` versions), folded from StatusChange; a delta not smaller than the
  snapshot is skipped,
- `status-head`: {"version": current, "from": [bases with a published delta]}.

Versions are claimed by inserting a ListVersion row (unique per deployment,
kind, version): of two concurrent changes one wins, the other rolls back and
retries (`in_transaction`). `refresh()` re-issues lists that did not change for
`[bundles] refresh_hours`, because kiosks stop trusting lists whose
`issued_at` is older than their offline budget (72 h by default).

Also the command `greengate-fleet bundles refresh | publish | key` (`run`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from greengate import bundle, cose, status
from greengate import policy as policies

from . import closures, rosters
from .models import (REINSTATED, RETIRED, REVOKED, SUSPENDED, Kiosk, ListVersion, Policy,
                     PublishedBundle, StatusChange, StatusEntry, TrustEntry)

log = logging.getLogger(__name__)

LISTS = ("trust", "policy", "status", "valuesets")  # what is versioned and changed
# GET /api/v1/bundles/<dep>/<kind>
SERVED = ("trust", "policy", "status", "status-head", "valuesets")
STATUS_KINDS = ("status", "status-delta", "status-head")
SYSTEM = "system"  # the actor of what the fleet does by itself (first issue, refresh)


class ListError(Exception):
    """A change or a request the fleet refuses; `status` is the HTTP status it maps to
    (400 bad request, 404 unknown, 409 conflict, 422 invalid, 503 not set up)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


# --- the bundle-signing key -----------------------------------------------------
def signing_key_path(config) -> Path:
    return config.resolve(config.bundles.signing_key)


def load_signing_key(config):
    """The fleet's bundle-signing key (EC P-256). Creates nothing: provisioning does."""
    path = signing_key_path(config)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ListError(f"the bundle-signing key {path} does not exist: create the fleet PKI "
                        "with `greengate-provision init` (development: `greengate-fleet bundles "
                        "key --create`)", 503) from None
    except OSError as exc:
        raise ListError(f"cannot read the bundle-signing key {path}: {exc.strerror}", 503) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ListError(f"the bundle-signing key {path} is not an unencrypted PEM private "
                        f"key: {exc}", 503) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ListError(f"the bundle-signing key {path} must be an EC P-256 key (bundles are "
                        "ES256)", 503)
    return key


def ensure_signing_key(config):
    """Tests and development: the key, generated (and logged loudly) if it is missing."""
    path = signing_key_path(config)
    if not path.exists():
        if not path.parent.exists():
            # the folder holds private keys: as private as `greengate-provision init` makes it
            path.parent.mkdir(mode=0o700, parents=True)
            path.parent.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        log.warning("created a NEW bundle-signing key %s (development/tests only): kiosks "
                    "must pin its public half (`greengate-fleet bundles key`); production keys "
                    "come from `greengate-provision init`", path)
    return load_signing_key(config)


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


# --- deployments, versions, transactions ------------------------------------------
def check_deployment(config, deployment: str) -> str:
    if deployment not in config.fleet.deployments:
        raise ListError(f"unknown deployment {deployment!r}: this fleet signs lists for "
                        f"{', '.join(config.fleet.deployments)} ([fleet] deployments)", 404)
    return deployment


def current_version(session, deployment: str, kind: str) -> int | None:
    return session.scalar(select(func.max(ListVersion.version))
                          .where(ListVersion.deployment == deployment, ListVersion.kind == kind))


def claim_version(session, deployment: str, kind: str, *, actor: str, action: str,
                  at: float) -> ListVersion:
    """The next version of a list, claimed now (flushed: a concurrent claimer of the same
    number fails on the unique key and retries)."""
    row = ListVersion(deployment=deployment, kind=kind,
                      version=(current_version(session, deployment, kind) or 0) + 1,
                      at=at, actor=actor, action=action, changes=0)
    session.add(row)
    session.flush()
    return row


def in_transaction(session, work, attempts: int = 6):
    """Run work() and commit; on a lost race for a version number (unique key, or SQLite
    busy), roll back and run it again. Anything else rolls back and propagates."""
    for attempt in range(attempts):
        try:
            result = work()
            session.commit()
            return result
        except (IntegrityError, OperationalError) as exc:
            session.rollback()
            busy = isinstance(exc, IntegrityError) or "locked" in str(exc) or "busy" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
            log.info("concurrent list change, retrying (%s)", type(exc).__name__)
            time.sleep(0.01 * (attempt + 1))
        except BaseException:
            session.rollback()
            raise
    raise AssertionError("unreachable")


def _store(session, deployment, kind, version, issued_at, raw, base=None) -> PublishedBundle:
    row = PublishedBundle(deployment=deployment, kind=kind, version=version, base=base,
                          issued_at=issued_at, raw=raw, etag=hashlib.sha256(raw).hexdigest())
    session.add(row)
    return row


# --- building each kind -----------------------------------------------------------
def seed_policies(session, deployment: str, at: float) -> int:
    """On first use a deployment gets the built-in policies (greengate/policies/*.json)."""
    if session.scalar(select(func.count(Policy.id)).where(Policy.deployment == deployment)):
        return 0
    folder = resources.files("greengate").joinpath("policies")
    seeded = 0
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        policies.from_document(doc)  # the built-ins are valid; never ship one that is not
        session.add(Policy(deployment=deployment, name=doc["name"], document=doc,
                           updated_by=SYSTEM, updated_at=at))
        seeded += 1
    session.flush()
    return seeded


def issue_trust(session, deployment: str, row: ListVersion, key, at: float,
                sealing=None) -> PublishedBundle:
    """sealing: the fleet's current holder-sealing public key (greengate/sealing.py), which
    kiosks seal holder identities to; it travels signed, so nobody can slip kiosks theirs."""
    certs = session.scalars(select(TrustEntry.certificate)
                            .where(TrustEntry.deployment == deployment,
                                   TrustEntry.removed_at.is_(None))
                            .order_by(TrustEntry.added_at, TrustEntry.id)).all()
    issued = int(at)
    body = {"certificates": list(certs)}
    if sealing is not None:
        body["sealing"] = sealing.body()
    raw = bundle.seal("trust", row.version, issued, body, key, deployment)
    return _store(session, deployment, "trust", row.version, issued, raw)


def current_sealing_key(config):
    """The fleet's current holder-sealing public key, made on first use (the upgrade of a
    fleet whose kiosks held the pseudonym key: fleet/sealing_keys.py)."""
    from . import sealing_keys
    try:
        return sealing_keys.current_public(config)
    except sealing_keys.KeyError_ as exc:
        raise ListError(f"cannot read the holder-sealing keys: {exc}", 503) from None


def _current_kid(config) -> bytes | None:
    current = current_sealing_key(config)
    return current.kid if current is not None else None


def trust_sealing_kid(raw: bytes) -> bytes | None:
    """The sealing kid a stored trust bundle carries (None: none, or unreadable). The
    fleet signed it, so it is read without verifying."""
    try:
        body = cbor2.loads(cose.parse(raw).payload).get("body")
        return body["sealing"]["kid"]
    except Exception:  # an old bundle or anything odd: re-issue it
        return None


def assignments(session, deployment: str) -> dict[str, str]:
    """kiosk id -> the policy the fleet assigned it (kiosks not retired)."""
    return dict(session.execute(select(Kiosk.id, Kiosk.policy).where(
        Kiosk.deployment == deployment, Kiosk.state != RETIRED).order_by(Kiosk.id)).all())


def issue_policy(session, deployment: str, row: ListVersion, key, at: float) -> PublishedBundle:
    seed_policies(session, deployment, at)
    docs = {p.name: p.document for p in session.scalars(
        select(Policy).where(Policy.deployment == deployment).order_by(Policy.name))}
    # A kiosk applies its assigned policy; one assigned a policy that does not exist keeps
    # the one its config names (it must not refuse the whole bundle over one record).
    assigned = {k: p for k, p in assignments(session, deployment).items() if p in docs}
    issued = int(at)
    body = {"policies": docs, "assigned": assigned,
            # kiosks whose organisation is suspended after a case answer red (docs/bundles.md)
            "closed": closures.closed_kiosks(session, deployment),
            # kiosks at "workers only" control points: kiosk id -> organisation code
            "workers_only": rosters.workers_only_kiosks(session, deployment)}
    raw = bundle.seal("policy", row.version, issued, body, key, deployment)
    return _store(session, deployment, "policy", row.version, issued, raw)


def issue_valuesets(session, deployment: str, row: ListVersion, key,
                    at: float, strict=()) -> PublishedBundle:
    """strict: `[bundles] strict_value_fields`; the kiosks read them from the bundle, so a
    deployment's choice reaches every kiosk with the value sets it applies to."""
    from greengate.valuesets import FIELD_VALUE_SETS

    from . import value_sets  # it builds on this module
    unknown = sorted(set(strict) - set(FIELD_VALUE_SETS))
    if unknown:
        raise ValueError(f"[bundles] strict_value_fields: {', '.join(unknown)} not a "
                         f"value-set field (one of {', '.join(sorted(FIELD_VALUE_SETS))})")
    value_sets.seed(session, deployment, at)
    issued = int(at)
    body = {"valueSets": value_sets.current(session, deployment)}
    if strict:
        body["strictFields"] = sorted(set(strict))
    raw = bundle.seal("valuesets", row.version, issued, body, key, deployment)
    return _store(session, deployment, "valuesets", row.version, issued, raw)


def fold(changes) -> dict[bytes, tuple[str, float | None]]:
    """key -> (kind, until) of the last change of each key (changes in order)."""
    state: dict[bytes, tuple[str, float | None]] = {}
    for change in changes:
        state[bytes(change.key)] = (change.kind, change.until)
    return state


def delta_body(base: int, folded: dict[bytes, tuple[str, float | None]]):
    revoked = sorted(k for k, (kind, _) in folded.items() if kind == REVOKED)
    suspended = {k: int(u) for k, (kind, u) in sorted(folded.items()) if kind == SUSPENDED}
    reinstated = sorted(k for k, (kind, _) in folded.items() if kind == REINSTATED)
    return status.delta_body(base, revoked=revoked, suspended=suspended, reinstated=reinstated)


def issue_status(session, config, deployment: str, row: ListVersion, key,
                 at: float) -> list[PublishedBundle]:
    """Snapshot, deltas and head for status version row.version, whose StatusChange rows
    are already in the session. Suspensions lapsed by `at` are removed here, recorded
    as reinstated in this version, so every delta turns the previous snapshot into
    exactly the new one."""
    version, issued = row.version, int(at)
    lapsed = session.scalars(select(StatusEntry).where(
        StatusEntry.deployment == deployment, StatusEntry.kind == SUSPENDED,
        StatusEntry.until <= issued)).all()
    for entry in lapsed:
        session.add(StatusChange(deployment=deployment, version=version, key=entry.key,
                                 kind=REINSTATED, until=None))
        session.delete(entry)
    if lapsed:
        row.changes += len(lapsed)
        log.info("status %s v%d: %d lapsed suspension(s) dropped", deployment, version,
                 len(lapsed))
    session.flush()

    revoked, suspended = [], {}
    for entry_key, kind, until in session.execute(
            select(StatusEntry.key, StatusEntry.kind, StatusEntry.until)
            .where(StatusEntry.deployment == deployment).order_by(StatusEntry.key)):
        if kind == REVOKED:
            revoked.append(bytes(entry_key))
        elif kind == SUSPENDED:
            suspended[bytes(entry_key)] = int(until)
    snapshot = bundle.seal("status", version, issued, status.snapshot_body(revoked, suspended),
                           key, deployment)
    made = [_store(session, deployment, "status", version, issued, snapshot)]

    window = max(0, int(config.bundles.deltas))
    low = max(1, version - window)
    by_version: dict[int, list] = {}
    for change in session.scalars(select(StatusChange).where(
            StatusChange.deployment == deployment, StatusChange.version > low,
            StatusChange.version <= version).order_by(StatusChange.version, StatusChange.id)):
        by_version.setdefault(change.version, []).append(change)
    bases = []
    for base in range(version - 1, low - 1, -1):
        changes = [c for v in range(base + 1, version + 1) for c in by_version.get(v, ())]
        raw = bundle.seal("status-delta", version, issued, delta_body(base, fold(changes)),
                          key, deployment)
        if len(raw) >= len(snapshot):
            log.info("status %s v%d: delta from v%d (%d bytes) is not smaller than the snapshot "
                     "(%d bytes); not published", deployment, version, base, len(raw),
                     len(snapshot))
            continue
        made.append(_store(session, deployment, "status-delta", version, issued, raw, base))
        bases.append(base)
    head = bundle.seal("status-head", version, issued, status.head_body(version, sorted(bases)),
                       key, deployment)
    made.append(_store(session, deployment, "status-head", version, issued, head))
    # Only the current version is served; keep a few older ones for inspection.
    session.execute(delete(PublishedBundle).where(
        PublishedBundle.deployment == deployment, PublishedBundle.kind.in_(STATUS_KINDS),
        PublishedBundle.version < version - window))
    return made


def issue(session, config, deployment: str, kind: str, *, key, actor: str, action: str,
          at: float, changes: int = 0) -> int:
    """A new version of an unchanged-or-already-changed trust, policy or value-set list (or
    a status version without entry changes: refresh); returns the version. No commit."""
    row = claim_version(session, deployment, kind, actor=actor, action=action, at=at)
    row.changes = changes
    if kind == "trust":
        issue_trust(session, deployment, row, key, at, sealing=current_sealing_key(config))
    elif kind == "policy":
        issue_policy(session, deployment, row, key, at)
    elif kind == "status":
        issue_status(session, config, deployment, row, key, at)
    elif kind == "valuesets":
        issue_valuesets(session, deployment, row, key, at,
                        strict=config.bundles.strict_value_fields)
    else:
        raise ValueError(f"not a list kind: {kind!r}")
    return row.version


# --- reading ----------------------------------------------------------------------
def latest(session, deployment: str, kind: str) -> PublishedBundle | None:
    """The current trust, policy, status (snapshot), status-head or valuesets bundle."""
    return session.scalars(select(PublishedBundle)
                           .where(PublishedBundle.deployment == deployment,
                                  PublishedBundle.kind == kind)
                           .order_by(PublishedBundle.version.desc(), PublishedBundle.id.desc())
                           .limit(1)).first()


def deltas(session, deployment: str, version: int | None = None) -> list[PublishedBundle]:
    """The published deltas to status `version` (default: the current one), by base."""
    if version is None:
        snap = latest(session, deployment, "status")
        if snap is None:
            return []
        version = snap.version
    return list(session.scalars(select(PublishedBundle)
                                .where(PublishedBundle.deployment == deployment,
                                       PublishedBundle.kind == "status-delta",
                                       PublishedBundle.version == version)
                                .order_by(PublishedBundle.base)))


def delta_from(session, deployment: str, base: int) -> PublishedBundle | None:
    """The delta from status version `base` to the current one, if published."""
    snap = latest(session, deployment, "status")
    if snap is None:
        return None
    return session.scalars(select(PublishedBundle)
                           .where(PublishedBundle.deployment == deployment,
                                  PublishedBundle.kind == "status-delta",
                                  PublishedBundle.version == snap.version,
                                  PublishedBundle.base == base).limit(1)).first()


def missing(session, deployment: str) -> list[str]:
    return [k for k in LISTS if latest(session, deployment, k) is None]


def ensure_issued(session, config, deployment: str, key=None,
                  now: float | None = None) -> list[str]:
    """First use of a deployment: sign version 1 of every list not issued yet (policies
    seeded with the built-ins). Commits; returns the kinds issued."""
    check_deployment(config, deployment)
    if not missing(session, deployment):
        return []

    def work():
        todo = missing(session, deployment)
        signer = key or load_signing_key(config)
        at = time.time() if now is None else now
        for kind in todo:
            issue(session, config, deployment, kind, key=signer, actor=SYSTEM, action="initial",
                  at=at)
        return todo

    issued = in_transaction(session, work)
    if issued:
        log.info("deployment %s: first %s bundle(s) issued", deployment, ", ".join(issued))
    return issued


def refresh(session, config, deployment: str, *, key=None, now: float | None = None,
            force: bool = False) -> list[str]:
    """Re-issue (new version, new issued_at) every list whose newest bundle is older than
    [bundles] refresh_hours, so kiosks never reach their offline budget on unchanged
    lists. Commits; returns the kinds re-issued."""
    check_deployment(config, deployment)
    limit = float(config.bundles.refresh_hours) * 3600

    def work():
        at = time.time() if now is None else now
        stale = []
        for kind in LISTS:
            newest = latest(session, deployment, kind)
            if force or newest is None or newest.issued_at <= at - limit:
                stale.append(kind)
            elif kind == "trust" and trust_sealing_kid(newest.raw) != _current_kid(config):
                stale.append(kind)  # the sealing key changed (first made, or rotated)
        if stale:
            signer = key or load_signing_key(config)
            for kind in stale:
                issue(session, config, deployment, kind, key=signer, actor=SYSTEM,
                      action="refresh", at=at)
        return stale

    return in_transaction(session, work)


# --- the command line -------------------------------------------------------------
def command_deployment(config, given: str | None) -> str:
    """--deployment, or the fleet's only deployment."""
    if given:
        return check_deployment(config, given)
    if len(config.fleet.deployments) != 1:
        raise ListError("this fleet signs lists for several deployments ("
                        f"{', '.join(config.fleet.deployments)}): name one with --deployment", 400)
    return config.fleet.deployments[0]


def publish_now(config, sessions, deployment: str, kinds, timeout: float) -> str | None:
    """After a change made from the command line: publish it on MQTT and wait for the
    broker; None when done, else why not (the change is committed either way)."""
    if not config.mqtt.host:
        return "[mqtt] host is not set"
    from .publisher import GIVE_UP, Publisher
    try:
        publisher = Publisher(config, sessions, give_up=GIVE_UP).start()
    except (OSError, ValueError) as exc:  # IdentityError names the file and its key
        return f"MQTT set-up failed: {exc}"
    try:
        seq = publisher.notify(deployment, kinds)
        if publisher.wait(deployment, seq, timeout):
            return None
        return publisher.problem or "timed out"
    finally:
        publisher.stop()


# --- greengate-fleet bundles ...  -----------------------------------------------
def run(config, args) -> int:
    """greengate-fleet bundles refresh [--force] | publish | key [--create]."""
    import sys

    from .db import make_engine, make_sessions

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "key":
        try:
            key = ensure_signing_key(config) if args.create else load_signing_key(config)
        except ListError as exc:
            print(f"greengate-fleet: {exc.message}", file=sys.stderr)
            return 2
        sys.stdout.write(public_pem(key).decode())
        return 0
    targets = args.deployment or list(config.fleet.deployments)
    engine = make_engine(config.database_url)
    sessions = make_sessions(engine)
    publisher = None
    status_code = 0
    try:
        for deployment in targets:
            check_deployment(config, deployment)
        if args.action == "refresh":
            with sessions() as session:
                for deployment in targets:
                    ensure_issued(session, config, deployment)
                    kinds = refresh(session, config, deployment, force=args.force)
                    print(f"{deployment}: " + (f"re-issued {', '.join(kinds)}" if kinds else
                                               "every list is fresh"))
        if not args.no_publish:
            from .mqtt_identity import IdentityError
            from .publisher import GIVE_UP, Publisher
            try:
                publisher = Publisher(config, sessions, give_up=GIVE_UP).start()
            except IdentityError as exc:  # a TLS file: named with its config key
                print(f"greengate-fleet: not published to MQTT: {exc}; the lists are in the "
                      "database, and the web server and kiosks' HTTP fallback serve them",
                      file=sys.stderr)
                return 2
            for deployment in targets:
                if publisher.publish_all(deployment, timeout=args.timeout):
                    print(f"{deployment}: published to {config.mqtt.host}:{config.mqtt.port}")
                else:
                    print(f"greengate-fleet: {deployment}: not published to MQTT "
                          f"({publisher.problem or 'timed out'}); the lists are in the "
                          "database and the web server and kiosks' HTTP fallback serve them",
                          file=sys.stderr)
                    status_code = 1
    except ListError as exc:
        print(f"greengate-fleet: {exc.message}", file=sys.stderr)
        return 2
    finally:
        if publisher is not None:
            publisher.stop()
        engine.dispose()
    return status_code

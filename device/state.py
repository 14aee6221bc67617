"""The kiosk's local state: the last good signed bundles, and the verifier built from them.

Bundles arrive from MQTT (retained) or HTTP. Each is verified against the
pinned fleet key; a lower version than the one held is refused (no rollback),
as is the same version with other content. Accepted bundles are written
atomically (temporary file, fsync, rename) so a power cut leaves either the
old or the new one, and are verified again when read back at start-up.
A new Verifier is built and swapped in with one reference assignment, so a
scan in progress finishes on the lists it started with.

Value sets are optional: until the fleet sends a `valuesets` bundle (a fleet
older than value-set bundles never does) the verifier uses the copy vendored
with the software. The policy applied is the one the policy bundle assigns to
this kiosk, else the one its config names.
"""

import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from greengate import bundle, policy, roster, sealing, status
from greengate.bundle import Bundle, BundleError
from greengate.trust import TrustList, load_signer
from greengate.valuesets import ValueSetError, ValueSets
from greengate.verifier import Verifier

from .files import write_atomic

log = logging.getLogger(__name__)

STORED = ("trust", "policy", "status", "valuesets")
REQUIRED = ("trust", "policy", "status")  # no verifier without them
MAX_VALUE_SETS = 256


class BundleStore:
    def __init__(self, directory: str | Path, fleet_key, deployment: str, policy_name: str,
                 budget: timedelta, on_bundle=None, kiosk_id: str | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fleet_key = fleet_key
        self.deployment = deployment
        self.policy_name = policy_name  # from the config; the policy bundle may assign another
        self.kiosk_id = kiosk_id
        self.budget = budget
        self.on_bundle = on_bundle  # called with each accepted Bundle (the clock's floor)
        self.on_write = None  # on_write(OSError): a bundle could not be stored (the kiosk)
        self._lock = threading.Lock()
        self.bundles: dict[str, Bundle] = {}
        self._status: status.StatusList | None = None
        self.verifier: Verifier | None = None
        self.problem = "no trust list, policy or status list yet"
        self.refused = 0
        # {"organisation": code, "since": iso} while the policy bundle lists this kiosk in
        # `closed` (its organisation suspended after a case), else None; the stored policy
        # bundle brings it back after a restart
        self.closed: dict | None = None
        # the organisation whose roster alone this kiosk admits (the policy bundle's
        # `workers_only`), and the roster held (its own topic; docs/rosters.md)
        self.workers_only: str | None = None
        self.roster: roster.Roster | None = None
        for kind in (*STORED, "roster") if fleet_key is not None else ():
            path = self.dir / f"{kind}.bundle"
            if path.exists():
                try:
                    self._accept(bundle.open_bundle(path.read_bytes(), fleet_key, deployment),
                                 persist=False)
                except (BundleError, ValueError) as exc:
                    log.error("stored %s bundle %s is invalid (%s); ignoring it", kind, path, exc)
        for kind in ("status-delta", "roster-delta") if fleet_key is not None else ():
            for path in sorted(self.dir.glob(f"{kind}-*.bundle"), key=_delta_version):
                try:
                    accepted, why = self._accept(bundle.open_bundle(
                        path.read_bytes(), fleet_key, deployment), persist=False)
                except (BundleError, ValueError) as exc:
                    accepted, why = False, str(exc)
                if not accepted:
                    log.info("stored %s %s not replayed (%s); removing it", kind, path.name, why)
                    path.unlink(missing_ok=True)
        self._rebuild()
        if fleet_key is None:
            self.problem = "the pinned fleet key cannot be used: no list can be trusted"
        if on_bundle:
            # Verified again just now, so signed fleet data: their times raise the clock's
            # floor at start, as they did on arrival (a lost clock.json is rebuilt here).
            for held in list(self.bundles.values()):
                on_bundle(held)

    # --- intake ------------------------------------------------------------
    def offer(self, raw: bytes, source: str = "mqtt") -> tuple[bool, str]:
        """Verify and maybe apply a bundle; return (accepted, why) and log the reason."""
        if self.fleet_key is None:
            return False, "no usable fleet key to verify it with"
        try:
            candidate = bundle.open_bundle(raw, self.fleet_key, self.deployment)
        except BundleError as exc:
            return self._refuse(source, f"{exc.reason}: {exc}")
        with self._lock:
            try:
                accepted, why = self._accept(candidate, persist=True)
            except ValueError as exc:
                return self._refuse(source, f"malformed {candidate.kind} body: {exc}")
            except OSError as exc:
                # a full disk: keep the lists held (the bundle comes again: retained on
                # the broker, polled over HTTP) and tell the kiosk, never raise
                if self.on_write is None:
                    raise
                self.on_write(exc)
                log.warning("cannot store %s bundle v%d: %s", candidate.kind,
                            candidate.version, exc)
                return False, f"cannot store: {exc}"
            if not accepted:
                if why.startswith("refused"):
                    return self._refuse(source, why)
                return False, why
            self._rebuild()
        log.info("applied %s bundle v%d from %s", candidate.kind, candidate.version, source)
        if self.on_bundle:
            self.on_bundle(candidate)
        return True, "applied"

    def _refuse(self, source: str, why: str) -> tuple[bool, str]:
        self.refused += 1
        log.warning("refused bundle from %s: %s", source, why)
        return False, why

    def _accept(self, candidate: Bundle, persist: bool) -> tuple[bool, str]:
        kind = candidate.kind
        if kind == "status-delta":
            return self._accept_delta(candidate, persist)
        if kind in ("roster", "roster-delta"):
            return self._accept_roster(candidate, persist)
        current = self.bundles.get(kind)
        if current is not None:
            if candidate.version < current.version:
                return False, (f"refused rollback: {kind} v{candidate.version} is older than "
                               f"the v{current.version} held")
            derived = kind == "status" and current.body is None  # base + deltas
            if candidate.version == current.version and not derived:
                if candidate.raw == current.raw:
                    return False, "already held"
                return False, f"refused: {kind} v{candidate.version} differs from the one held"
        new_status = status.from_body(candidate.body) if kind == "status" else None
        if kind == "trust":
            _trust_from(candidate)  # refuse a trust body we could not use
        if kind == "policy":
            _policy_from(candidate, self._policy_name(candidate))
        if kind == "valuesets":
            _valuesets_from(candidate)
        if persist:
            self._write(kind, candidate.raw)
            if kind == "status":  # a new snapshot supersedes every delta held
                for old in self.dir.glob("status-delta-*.bundle"):
                    old.unlink(missing_ok=True)
        self.bundles[kind] = candidate
        if kind == "policy":
            self.closed = closed_entry(candidate.body, self.kiosk_id)
            self.workers_only = workers_only_entry(candidate.body, self.kiosk_id)
        if new_status is not None:
            self._status = new_status
        return True, "applied"

    def _accept_delta(self, delta: Bundle, persist: bool) -> tuple[bool, str]:
        current = self.bundles.get("status")
        body = delta.body if isinstance(delta.body, dict) else {}
        if current is None or body.get("from") != current.version:
            held = current.version if current else None
            return False, f"delta from v{body.get('from')} does not apply to status v{held}"
        if delta.version <= current.version:
            return False, "already held"
        new_status = status.apply_delta(self._status, body)
        # The kiosk cannot re-sign a merged list, so it keeps the signed base
        # and every signed delta on top of it, and replays them at start-up.
        snapshot = Bundle("status", delta.deployment, delta.version, delta.issued_at,
                          None, current.raw)
        if persist:
            self._write(f"status-delta-{delta.version}", delta.raw)
        self.bundles["status"] = snapshot
        self._status = new_status
        return True, "applied"

    def _accept_roster(self, candidate: Bundle, persist: bool) -> tuple[bool, str]:
        """A roster bundle (or a delta on the roster held): for this kiosk, not older than
        the one held (versions count per deployment, so a kiosk moved to another
        organisation still sees them rise)."""
        held = self.roster
        if held is not None and candidate.version <= held.version:
            if candidate.version < held.version:
                return False, (f"refused rollback: {candidate.kind} v{candidate.version} is "
                               f"older than the roster v{held.version} held")
            current = self.bundles.get("roster")
            if candidate.kind == "roster" and current is not None and \
                    current.version == held.version and candidate.raw != current.raw:
                return False, f"refused: roster v{candidate.version} differs from the one held"
            # the full roster of the version reached through deltas replaces the chain
            # (the feed asks for it once the chain is long: each delta is replayed at start)
            if not (candidate.kind == "roster" and current is not None and
                    current.version < held.version):
                return False, "already held"
        if candidate.kind == "roster":
            new = roster.parse_roster(candidate.body, candidate.version)
        else:
            if held is None or roster.delta_base(candidate.body) != held.version:
                return False, (f"roster delta from v{roster.delta_base(candidate.body)} does "
                               f"not apply to roster v{held.version if held else None}")
            new = roster.apply_delta(held, candidate.body, candidate.version)
        if not self.kiosk_id or self.kiosk_id not in new.kiosks:
            return False, (f"refused: roster v{candidate.version} of {new.organisation} is "
                           f"not for this kiosk ({self.kiosk_id})")
        if persist:
            if candidate.kind == "roster":
                self._write("roster", candidate.raw)
                for old in self.dir.glob("roster-delta-*.bundle"):
                    old.unlink(missing_ok=True)
            else:  # kept signed, replayed on the base at start-up (as status deltas)
                self._write(f"roster-delta-{candidate.version}", candidate.raw)
        if candidate.kind == "roster":
            self.bundles["roster"] = candidate
        self.roster = new
        return True, "applied"

    def _write(self, kind: str, raw: bytes) -> None:
        write_atomic(self.dir / f"{kind}.bundle", raw)

    # --- the verifier ------------------------------------------------------
    def _policy_name(self, b: Bundle) -> str:
        assigned = b.body.get("assigned") if isinstance(b.body, dict) else None
        if self.kiosk_id and isinstance(assigned, dict) and \
                isinstance(assigned.get(self.kiosk_id), str):
            return assigned[self.kiosk_id]
        return self.policy_name

    @property
    def policy_in_use(self) -> str:
        """The name of the policy the kiosk applies (reported with each scan)."""
        held = self.bundles.get("policy")
        return self._policy_name(held) if held is not None else self.policy_name

    def _rebuild(self) -> None:
        missing = [k for k in REQUIRED if k not in self.bundles]
        if missing:
            self.verifier = None
            self.problem = f"missing {', '.join(missing)} bundle"
            return
        trust = _trust_from(self.bundles["trust"])
        pol = _policy_from(self.bundles["policy"], self.policy_in_use)
        held = self.bundles.get("valuesets")
        valuesets = _valuesets_from(held) if held is not None else None  # None: vendored
        oldest = min(self.bundles[k].issued_at for k in ("trust", "status"))
        valid_until = datetime.fromtimestamp(oldest, timezone.utc) + self.budget
        self.verifier = Verifier(trust, pol, self._status, valid_until=valid_until,
                                 valuesets=valuesets, workers_only=self.workers_only,
                                 roster=self.roster)
        self.problem = None

    @property
    def sealing_key(self) -> sealing.SealingKey | None:
        """The public key the kiosk seals holder identities to: the trust bundle's."""
        held = self.bundles.get("trust")
        if held is None:
            return None
        # read once per trust bundle held, not once per decision (the Sealer asks each time)
        cached = getattr(self, "_sealing_cache", None)
        if cached is None or cached[0] is not held:
            cached = self._sealing_cache = (held, _sealing_from(held))
        return cached[1]

    def chain_length(self) -> int:
        """Signed deltas held on top of the status snapshot (replayed at every start)."""
        return sum(1 for _ in self.dir.glob("status-delta-*.bundle"))

    def roster_chain_length(self) -> int:
        """Signed roster deltas held on top of the stored roster (replayed at start-up)."""
        return sum(1 for _ in self.dir.glob("roster-delta-*.bundle"))

    def versions(self) -> dict:
        return {k: (self.bundles[k].version if k in self.bundles else None) for k in STORED}

    def freshness(self, now: datetime) -> str:
        if self.verifier is None:
            return "missing"
        return "fresh" if now <= self.verifier.valid_until else "stale"


def closed_entry(body, kiosk_id: str | None) -> dict | None:
    """This kiosk's entry of a policy body's `closed` map, read tolerantly: a fleet older
    than closures sends none (open); an entry the kiosk cannot read still closes it (the
    signed bundle names the kiosk: it is meant closed), with what can be read of it."""
    closed = body.get("closed") if isinstance(body, dict) else None
    if not kiosk_id or not isinstance(closed, dict) or kiosk_id not in closed:
        return None
    entry = closed[kiosk_id]
    entry = entry if isinstance(entry, dict) else {}
    organisation, since = entry.get("organisation"), entry.get("since")
    return {"organisation": organisation[:64] if isinstance(organisation, str) else "",
            "since": since[:40] if isinstance(since, str) else ""}


def workers_only_entry(body, kiosk_id: str | None) -> str | None:
    """The organisation whose roster this kiosk admits only (the policy body's
    `workers_only` map), or None. An entry the kiosk cannot read still makes it
    workers-only (the signed bundle names the kiosk): with no roster of that name, no one
    is green."""
    workers = body.get("workers_only") if isinstance(body, dict) else None
    if not kiosk_id or not isinstance(workers, dict) or kiosk_id not in workers:
        return None
    org = workers[kiosk_id]
    return org[:64] if isinstance(org, str) and org else "?"


def _delta_version(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _trust_from(b: Bundle) -> TrustList:
    certs = b.body.get("certificates") if isinstance(b.body, dict) else None
    if not isinstance(certs, list) or not all(isinstance(c, bytes) for c in certs):
        raise ValueError("trust body needs 'certificates': a list of DER certificates")
    _sealing_from(b)  # a trust bundle with a sealing key the kiosk cannot use is refused
    return TrustList(load_signer(c) for c in certs)


def _sealing_from(b: Bundle) -> sealing.SealingKey | None:
    """The fleet's holder-sealing public key a trust bundle carries (None: a fleet older
    than sealing)."""
    entry = b.body.get("sealing") if isinstance(b.body, dict) else None
    return None if entry is None else sealing.SealingKey.from_body(entry)


def _valuesets_from(b: Bundle):
    """The body {"valueSets": {id: EU value-set document}} -> ValueSets; a body the kiosk
    could not use is refused here, not at the first scan."""
    docs = b.body.get("valueSets") if isinstance(b.body, dict) else None
    if not isinstance(docs, dict) or not docs or len(docs) > MAX_VALUE_SETS:
        raise ValueError("valuesets body needs 'valueSets': a map of value-set id to document")
    for vid, doc in docs.items():
        if not isinstance(doc, dict) or doc.get("valueSetId") != vid or \
                not isinstance(doc.get("valueSetValues"), dict):
            raise ValueError(f"value set {str(vid)[:64]!r} is not an EU value-set document "
                             "(valueSetId, valueSetValues)")
    # the deployment's choice of fields where an unknown code is invalid content
    strict = b.body.get("strictFields", [])
    if not isinstance(strict, list) or not all(isinstance(f, str) for f in strict):
        raise ValueError("valuesets body: 'strictFields' must be a list of field names")
    try:
        return ValueSets.from_documents(docs.values(), strict_fields=strict)
    except ValueSetError as exc:
        raise ValueError(f"valuesets body: {exc}") from None


def _policy_from(b: Bundle, name: str) -> policy.Policy:
    docs = b.body.get("policies") if isinstance(b.body, dict) else None
    if not isinstance(docs, dict):
        raise ValueError("policy body needs 'policies': a map of name to policy document")
    if name not in docs:
        raise ValueError(f"policy bundle has no policy {name!r} (has: {', '.join(docs)})")
    return policy.from_document(docs[name])

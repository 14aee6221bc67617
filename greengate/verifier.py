"""The decision engine: HC1 text in, exactly one green/red Decision out.

Stages run cheapest-and-most-fundamental first; the first failing stage
gives the reason. Nothing raises out of `verify`: an unexpected error is a red
`unreadable` with its description, because a kiosk must always show a light.
"""

import base64
import inspect
from collections.abc import Collection
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo

from . import cose, hc1
from .content import Certificate, check_plausibility, parse_claims, parse_date
from .decision import Decision, Reason, red
from .errors import Rejected
from .policy import Policy
from .roster import NOT_ON_ROSTER, ROSTER_MISSING, Roster
from .sealing import identity_bytes
from .status import REVOKED, StatusList, cert_hash
from .trust import TrustList
from .valuesets import ValueSets


class Verifier:
    def __init__(self, trust: TrustList, policy: Policy, status: StatusList | None = None,
                 valid_until: datetime | None = None, valuesets: ValueSets | None = None,
                 country: str = "VN", zone: tzinfo | str | None = None,
                 workers_only: str | None = None, roster: Roster | None = None):
        """country: the kiosk's country (CertLogic's external.countryCode).
        zone: the calendar in which a recovery certificate's df/du dates are
        read; default the policy's timezone, else UTC.
        workers_only: the organisation whose roster this kiosk admits only (the policy
        bundle's `workers_only`), with `roster` the one the kiosk holds (docs/rosters.md)."""
        self.workers_only = workers_only
        self.roster = roster
        self.trust = trust
        self.policy = policy
        self.status = status
        self.valuesets = valuesets if valuesets is not None else ValueSets.default()
        self.country = country
        self.timezone = _zone(zone if zone is not None else getattr(policy, "timezone", None))
        # Policies evaluate(cert, at, external) with the EU verifiers' data; an
        # older Policy takes (cert, at). Decided once, not per scan.
        try:
            self._pass_external = "external" in inspect.signature(policy.evaluate).parameters
        except (TypeError, ValueError):
            self._pass_external = False
        # Only what the rules read is formatted per scan (None: all of it).
        self._external_keys = getattr(policy, "external_keys", None)
        # Past this moment the lists are older than the offline budget.
        if valid_until is not None and valid_until.tzinfo is None:
            valid_until = valid_until.replace(tzinfo=timezone.utc)
        self.valid_until = valid_until

    def verify(self, text: str, at: datetime | None) -> Decision:
        try:
            decision = self._verify(text, at)
        except Rejected as exc:
            return red(exc.reason, exc.detail, sub_reason=exc.sub_reason)
        except Exception as exc:  # a kiosk must always answer; never let input crash it
            return red(Reason.UNREADABLE, f"cannot read certificate: {type(exc).__name__}: {exc}")
        if self.workers_only is not None and decision.decision == "green":
            # after every certificate check: a red certificate keeps its own reason
            return self._on_roster(decision)
        return decision

    def _on_roster(self, decision: Decision) -> Decision:
        facts = {"type": decision.type, "kid": decision.kid, "cert_hash": decision.cert_hash,
                 "holder": decision.holder}
        held = self.roster
        if held is None or held.organisation != self.workers_only:
            # never green without the roster: a workers-only place admits no one unchecked
            return red(Reason.POLICY_FAILED, f"no roster of {self.workers_only} on this kiosk",
                       sub_reason=ROSTER_MISSING, **facts)
        try:
            identity = identity_bytes(decision.holder) if decision.holder else None
            cert_key = bytes.fromhex(decision.cert_hash) if decision.cert_hash else None
            member = held.member_hash(identity, cert_key)
        except Exception as exc:  # never green on what could not be checked
            return red(Reason.POLICY_FAILED, f"roster check failed: {exc}",
                       sub_reason=NOT_ON_ROSTER, **facts)
        if not member:
            return red(Reason.POLICY_FAILED, f"not on the roster of {self.workers_only}",
                       sub_reason=NOT_ON_ROSTER, **facts)
        return decision

    def _verify(self, text: str, at: datetime | None) -> Decision:
        if at is None:
            return red(Reason.CLOCK_UNKNOWN, "the kiosk's clock is not trustworthy")
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        if self.valid_until is not None and at > self.valid_until:
            return red(Reason.OUT_OF_SERVICE, "trust or status lists are older than the offline budget")

        sign1 = cose.parse(hc1.decode(text))
        kid = sign1.kid
        if not isinstance(kid, bytes):
            raise Rejected(Reason.UNKNOWN_ISSUER, "certificate names no signer key (kid)")
        facts = {"kid": kid.hex()}
        if len(kid) != cose.KID_LENGTH:
            return red(Reason.UNKNOWN_ISSUER, f"kid is {len(kid)} bytes, DCC kids are 8", **facts)
        signers = self.trust.candidates(kid)
        if not signers:
            return red(Reason.UNKNOWN_ISSUER, "signer is not in the trust list", **facts)
        signer = None
        failure = None
        for candidate in signers:
            try:
                sign1.verify(candidate.public_key)
                signer = candidate
                break
            except Rejected as exc:
                failure = exc
        if signer is None:
            return red(failure.reason, failure.detail, **facts)

        try:
            claims = cose.loads(sign1.payload)
        except Exception as exc:
            return red(Reason.UNREADABLE, f"signed payload is not valid CBOR: {exc}", **facts)
        try:
            cert = parse_claims(claims)
            check_plausibility(cert)
            self.valuesets.check_strict(cert)
        except Rejected as exc:
            return red(exc.reason, exc.detail, **facts)
        facts.update(type=cert.type, cert_hash=cert_hash(cert.ci).hex(),
                     holder=(cert.family, cert.given, cert.dob))

        if not signer.may_sign(cert.type):
            allowed = "/".join(sorted(signer.allowed_types))
            return red(Reason.WRONG_KEY_USAGE,
                       f"signer may sign only {allowed} certificates, not {cert.type}", **facts)
        problem = check_times(cert, signer, at) or check_validity_window(cert, at, self.timezone)
        if problem:
            return red(*problem, **facts)
        if self.status is not None:
            status = self.status.lookup(bytes.fromhex(facts["cert_hash"]), at)
            if status is not None:
                if status.kind == REVOKED:
                    return red(Reason.REVOKED, "certificate is revoked", **facts)
                until = f" until {status.until.isoformat()}" if status.until else ""
                return red(Reason.SUSPENDED, f"certificate is suspended{until}", **facts)
        if self._pass_external:
            verdict = self.policy.evaluate(cert, at, self.external(cert, at, kid,
                                                                   self._external_keys))
        else:
            verdict = self.policy.evaluate(cert, at)
        if verdict:
            sub_reason, detail = verdict
            return red(Reason.POLICY_FAILED, detail, sub_reason=sub_reason, **facts)
        return Decision("green", Reason.OK, f"accepted by policy {self.policy.name}", **facts)

    def external(self, cert: Certificate, at: datetime, kid: bytes,
                 keys: Collection[str] | None = None) -> dict:
        """CertLogic's `external`: the data the EU verifier apps pass to business rules.

        keys: only these need to be there (the policy's `external_keys`, what its
        rules read); None gives them all. The constant ones always are: they cost
        nothing, while formatting the times and the kid is a good part of a scan.
        """
        external = {
            "valueSets": self.valuesets.as_external(),
            "countryCode": self.country,
            "issuerCountryCode": cert.country,
        }
        if keys is None or "validationClock" in keys:
            external["validationClock"] = at.isoformat()
        if keys is None or "exp" in keys:
            external["exp"] = datetime.fromtimestamp(cert.exp, timezone.utc).isoformat()
        if keys is None or "iat" in keys:
            external["iat"] = datetime.fromtimestamp(cert.iat, timezone.utc).isoformat()
        if keys is None or "kid" in keys:
            external["kid"] = base64.b64encode(kid).decode("ascii")
        return external


def _zone(value) -> tzinfo:
    if value is None:
        return timezone.utc
    if isinstance(value, str):
        return ZoneInfo(value)
    return value


def check_times(cert: Certificate, signer, at: datetime) -> tuple[Reason, str] | None:
    now = at.timestamp()
    if now < cert.iat:
        return Reason.NOT_YET_VALID, "validation time is before the certificate was issued"
    if now > cert.exp:
        return Reason.EXPIRED, "certificate has expired"
    if at < signer.not_before:
        return Reason.NOT_YET_VALID, "validation time is before the signer certificate is valid"
    if at > signer.not_after:
        return Reason.EXPIRED, "signer certificate has expired"
    return None


def check_validity_window(cert: Certificate, at: datetime, zone: tzinfo = timezone.utc
                          ) -> tuple[Reason, str] | None:
    """A recovery certificate's own window: valid from `df` through `du`, both
    whole days in `zone`'s calendar (technical validity, as exp is)."""
    if cert.type != "r":
        return None
    today = at.astimezone(zone).date()
    entry = cert.entry
    if today < parse_date(entry["df"]):
        return Reason.NOT_YET_VALID, f"recovery certificate is valid only from {entry['df'][:10]}"
    if today > parse_date(entry["du"]):
        return Reason.EXPIRED, f"recovery certificate was valid until {entry['du'][:10]}"
    return None

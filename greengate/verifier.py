"""The decision engine: HC1 text in, exactly one green/red Decision out.

Stages run cheapest-and-most-fundamental first; the first failing stage
gives the reason. Nothing raises out of `verify`: an unexpected error is a red
`unreadable` with its description, because a kiosk must always show a light.
"""

from datetime import datetime, timezone

from . import cose, hc1
from .content import Certificate, parse_claims
from .decision import Decision, Reason, red
from .errors import Rejected
from .policy import Policy
from .status import REVOKED, StatusList, cert_hash
from .trust import TrustList


class Verifier:
    def __init__(self, trust: TrustList, policy: Policy, status: StatusList | None = None,
                 valid_until: datetime | None = None):
        self.trust = trust
        self.policy = policy
        self.status = status
        # Past this moment the lists are older than the offline budget.
        if valid_until is not None and valid_until.tzinfo is None:
            valid_until = valid_until.replace(tzinfo=timezone.utc)
        self.valid_until = valid_until

    def verify(self, text: str, at: datetime | None) -> Decision:
        try:
            return self._verify(text, at)
        except Rejected as exc:
            return red(exc.reason, exc.detail, sub_reason=exc.sub_reason)
        except Exception as exc:  # a kiosk must always answer; never let input crash it
            return red(Reason.UNREADABLE, f"cannot read certificate: {type(exc).__name__}: {exc}")

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
        except Rejected as exc:
            return red(exc.reason, exc.detail, **facts)
        facts.update(type=cert.type, cert_hash=cert_hash(cert.ci).hex(),
                     holder=(cert.family, cert.given, cert.dob))

        if not signer.may_sign(cert.type):
            allowed = "/".join(sorted(signer.allowed_types))
            return red(Reason.WRONG_KEY_USAGE,
                       f"signer may sign only {allowed} certificates, not {cert.type}", **facts)
        problem = check_times(cert, signer, at)
        if problem:
            return red(*problem, **facts)
        if self.status is not None:
            status = self.status.lookup(bytes.fromhex(facts["cert_hash"]), at)
            if status is not None:
                if status.kind == REVOKED:
                    return red(Reason.REVOKED, "certificate is revoked", **facts)
                until = f" until {status.until.isoformat()}" if status.until else ""
                return red(Reason.SUSPENDED, f"certificate is suspended{until}", **facts)
        verdict = self.policy.evaluate(cert, at)
        if verdict:
            sub_reason, detail = verdict
            return red(Reason.POLICY_FAILED, detail, sub_reason=sub_reason, **facts)
        return Decision("green", Reason.OK, f"accepted by policy {self.policy.name}", **facts)


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

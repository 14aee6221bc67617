"""The trust list of a deployment: the issuers' document-signer (DSC) certificates kiosks
accept signatures from (service layer, no Flask). Every change is audited and makes a
new signed trust bundle version (fleet/bundles.py); removed entries are kept, marked."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from greengate.trust import TrustError, certificate_der, load_signer

from . import audit, bundles
from .bundles import ListError
from .models import TrustEntry

_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def check_signer_certificate(data: bytes | str, now: float) -> tuple[bytes, dict]:
    """(DER, facts) of a certificate fit to be a document signer; ListError saying why not."""
    try:
        der = certificate_der(data)
        signer = load_signer(der)
    except TrustError as exc:
        raise ListError(f"not a certificate: {exc} (send a PEM, or DER in base64)") from None
    subject, country, ca = "", "", False
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        cert = None  # the lenient reader parsed it (some national DSCs are not strict DER)
    if cert is not None:
        subject = cert.subject.rfc4514_string()[:400]
        countries = cert.subject.get_attributes_for_oid(x509.NameOID.COUNTRY_NAME)
        country = str(countries[0].value)[:2] if countries else ""
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.digital_signature:
                raise ListError("the certificate's key usage does not allow digital signatures, "
                                "so it cannot be a document signer")
        except x509.ExtensionNotFound:
            pass
    if ca:
        raise ListError("this is a CA certificate (basicConstraints CA:TRUE); the trust list "
                        "holds the document-signer certificates that sign health certificates")
    key = signer.public_key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise ListError(f"the signer's EC curve {key.curve.name} is not one of "
                            f"{', '.join(_CURVES)}")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ListError(f"the signer's RSA key has {key.key_size} bits; at least 2048")
    else:
        raise ListError("the signer's key is neither EC (ES256) nor RSA (PS256)")
    not_after = signer.not_after.timestamp()
    if not_after < now:
        raise ListError(f"the certificate expired on {signer.not_after.date().isoformat()}; an "
                        "expired signer cannot make a valid health certificate")
    facts = {"kid": signer.kid.hex(), "subject": subject, "country": country,
             "not_before": signer.not_before.timestamp(), "not_after": not_after,
             "types": sorted(signer.allowed_types) if signer.allowed_types else None}
    return der, facts


def entries(session, deployment: str, include_removed: bool = False) -> list[TrustEntry]:
    query = select(TrustEntry).where(TrustEntry.deployment == deployment)
    if not include_removed:
        query = query.where(TrustEntry.removed_at.is_(None))
    return list(session.scalars(query.order_by(TrustEntry.added_at, TrustEntry.id)))


def entry_dict(entry: TrustEntry) -> dict:
    facts = {}
    try:
        signer = load_signer(entry.certificate)
        facts = {"not_before": _iso(signer.not_before.timestamp()),
                 "types": sorted(signer.allowed_types) if signer.allowed_types else None}
    except TrustError:
        pass
    return {"id": entry.id, "kid": entry.kid, "subject": entry.subject, "country": entry.country,
            **facts, "not_after": _iso(entry.not_after), "added_by": entry.added_by,
            "added_at": _iso(entry.added_at), "removed_at": _iso(entry.removed_at),
            "removed_by": entry.removed_by}


def add(session, config, deployment: str, data: bytes | str, *, actor: str, reason: str = "",
        now: float | None = None, key=None) -> tuple[TrustEntry, int]:
    """Add a signer certificate; (entry, new trust version). Commits."""
    bundles.check_deployment(config, deployment)
    at = time.time() if now is None else float(now)
    der, facts = check_signer_certificate(data, at)
    signer = key or bundles.load_signing_key(config)

    def work():
        same = session.scalars(select(TrustEntry).where(
            TrustEntry.deployment == deployment, TrustEntry.kid == facts["kid"],
            TrustEntry.removed_at.is_(None))).all()
        if any(bytes(e.certificate) == der for e in same):
            raise ListError(f"this certificate (kid {facts['kid']}) is already in the trust list "
                            f"of deployment {deployment!r}", 409)
        entry = TrustEntry(deployment=deployment, kid=facts["kid"], certificate=der,
                           subject=facts["subject"], country=facts["country"],
                           not_after=facts["not_after"], added_by=actor, added_at=at)
        session.add(entry)
        version = bundles.issue(session, config, deployment, "trust", key=signer, actor=actor,
                                action="trust.add", at=at, changes=1)
        audit.record(session, actor, "trust.add", deployment, kid=facts["kid"],
                     subject=facts["subject"], reason=reason, version=version)
        return entry, version

    return bundles.in_transaction(session, work)


def remove(session, config, deployment: str, kid_hex: str, *, actor: str, reason: str = "",
           now: float | None = None, key=None) -> tuple[list[TrustEntry], int]:
    """Remove every active certificate with this kid; (removed entries, new version). Commits."""
    bundles.check_deployment(config, deployment)
    kid_hex = kid_hex.strip().lower()
    if len(kid_hex) != 16 or any(c not in "0123456789abcdef" for c in kid_hex):
        raise ListError(f"not a kid: {kid_hex[:40]!r} (16 hex digits: the first 8 bytes of "
                        "SHA-256 of the signer certificate)", 400)
    at = time.time() if now is None else float(now)
    signer = key or bundles.load_signing_key(config)

    def work():
        found = session.scalars(select(TrustEntry).where(
            TrustEntry.deployment == deployment, TrustEntry.kid == kid_hex,
            TrustEntry.removed_at.is_(None))).all()
        if not found:
            raise ListError(f"no certificate with kid {kid_hex} is in the trust list of "
                            f"deployment {deployment!r}", 404)
        for entry in found:
            entry.removed_at, entry.removed_by = at, actor
        version = bundles.issue(session, config, deployment, "trust", key=signer, actor=actor,
                                action="trust.remove", at=at, changes=len(found))
        audit.record(session, actor, "trust.remove", deployment, kid=kid_hex,
                     subjects=[e.subject for e in found], reason=reason, version=version)
        return list(found), version

    return bundles.in_transaction(session, work)


# The EU DCC's extended key usages: a document signer limited to these types of
# certificate (none of them: it may sign every type). Two arcs are in use.
DCC_EKUS = {"1.3.6.1.4.1.1847.2021.1.1": "test", "1.3.6.1.4.1.1847.2021.1.2": "vaccination",
            "1.3.6.1.4.1.1847.2021.1.3": "recovery",
            "1.3.6.1.4.1.0.1847.2021.1.1": "test", "1.3.6.1.4.1.0.1847.2021.1.2": "vaccination",
            "1.3.6.1.4.1.0.1847.2021.1.3": "recovery"}
_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment",
               "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")


def describe(data: bytes | str, now: float | None = None) -> dict:
    """What the dashboard shows of a certificate (never raises on a stored one): kid,
    subject, issuer, country, validity (expired flagged), key usages, extended key usages
    with the DCC ones named, and the certificate types it may sign."""
    at = time.time() if now is None else float(now)
    out = {"kid": "", "subject": "", "issuer": "", "country": "", "not_before": None,
           "not_after": None, "expired": False, "not_yet_valid": False, "key_usages": [],
           "ekus": [], "types": None, "problem": None}
    try:
        der = certificate_der(data)
        signer = load_signer(der)
    except TrustError as exc:
        out["problem"] = str(exc)
        return out
    out.update(kid=signer.kid.hex(), not_before=signer.not_before.timestamp(),
               not_after=signer.not_after.timestamp(),
               types=sorted(signer.allowed_types) if signer.allowed_types else None)
    out["expired"] = out["not_after"] < at
    out["not_yet_valid"] = out["not_before"] > at
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return out  # the lenient reader's facts only
    out["subject"] = cert.subject.rfc4514_string()[:400]
    out["issuer"] = cert.issuer.rfc4514_string()[:400]
    countries = cert.subject.get_attributes_for_oid(x509.NameOID.COUNTRY_NAME)
    out["country"] = str(countries[0].value)[:2] if countries else ""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        for name in _KEY_USAGES:
            if getattr(usage, name):
                out["key_usages"].append(name)
    except (x509.ExtensionNotFound, ValueError):
        pass
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        out["ekus"] = [{"oid": e.dotted_string, "name": DCC_EKUS.get(e.dotted_string) or (
            "" if getattr(e, "_name", "") == "Unknown OID" else getattr(e, "_name", ""))}
            for e in ekus]
    except (x509.ExtensionNotFound, ValueError):
        pass
    return out


def pem(data: bytes | str) -> str:
    """The certificate as PEM text (the dashboard's confirm form carries it back)."""
    import base64
    der = certificate_der(data)
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _iso(epoch):
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")

"""Trust list: the signer (DSC) certificates whose signatures the kiosk accepts.

Keys are parsed once when the list is loaded, so a verification costs one
dictionary look-up before the signature check.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import der

# DCC key-usage OIDs; the "0" variants are the ones the early test data used.
_USAGE_SUFFIX = {"1": "t", "2": "v", "3": "r"}
_USAGE_PREFIXES = ("1.3.6.1.4.1.1847.2021.1.", "1.3.6.1.4.1.0.1847.2021.1.")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


class TrustError(ValueError):
    pass


@dataclass(frozen=True)
class Signer:
    kid: bytes
    public_key: object
    not_before: datetime
    not_after: datetime
    # None: the certificate carries no DCC key-usage OID and may sign any type.
    allowed_types: frozenset[str] | None
    der: bytes = field(repr=False)
    lenient: bool = False  # parsed by the fallback DER walker

    def may_sign(self, cert_type: str) -> bool:
        return self.allowed_types is None or cert_type in self.allowed_types


def kid_of(der_bytes: bytes) -> bytes:
    return hashlib.sha256(der_bytes).digest()[:8]


def allowed_types_from(oids: Iterable[str] | None) -> frozenset[str] | None:
    types = set()
    for oid in oids or ():
        for prefix in _USAGE_PREFIXES:
            if oid.startswith(prefix) and oid[len(prefix):] in _USAGE_SUFFIX:
                types.add(_USAGE_SUFFIX[oid[len(prefix):]])
    return frozenset(types) or None


def certificate_der(data: bytes | str) -> bytes:
    """DER bytes from PEM, DER, or base64-encoded DER."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    match = _PEM.search(raw)
    if match:
        try:
            raw = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            raise TrustError("PEM certificate body is not valid base64") from None
    elif not raw.startswith(b"\x30"):
        try:
            raw = base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            raise TrustError("certificate is neither PEM, DER nor base64 DER") from None
    if not raw.startswith(b"\x30"):
        raise TrustError("certificate is not a DER SEQUENCE")
    return raw


def load_signer(data: bytes | str) -> Signer:
    der_bytes = certificate_der(data)
    try:
        cert = x509.load_der_x509_certificate(der_bytes)
        key = cert.public_key()
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        try:
            eku = [o.dotted_string for o in
                   cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
        except x509.ExtensionNotFound:
            eku = None
        return Signer(kid_of(der_bytes), key, not_before, not_after,
                      allowed_types_from(eku), der_bytes)
    except (ValueError, TypeError):
        pass  # fall through to the lenient reader below
    try:
        parts = der.parse_certificate(der_bytes)
        key = serialization.load_der_public_key(parts["spki"])
    except Exception as exc:
        raise TrustError(f"certificate cannot be parsed: {exc}") from None
    return Signer(kid_of(der_bytes), key, parts["not_before"], parts["not_after"],
                  allowed_types_from(parts["eku"]), der_bytes, lenient=True)


class TrustList:
    def __init__(self, signers: Iterable[Signer] = ()):
        self._by_kid: dict[bytes, list[Signer]] = {}
        for signer in signers:
            self.add(signer)

    @classmethod
    def from_certificates(cls, certs: Iterable[bytes | str]) -> "TrustList":
        return cls(load_signer(c) for c in certs)

    def add(self, signer: Signer) -> None:
        same = self._by_kid.setdefault(signer.kid, [])
        if all(s.der != signer.der for s in same):
            same.append(signer)

    def candidates(self, kid: bytes) -> list[Signer]:
        # kids are not unique in the EU scheme; every match gets a chance.
        return self._by_kid.get(kid, [])

    def __len__(self) -> int:
        return sum(map(len, self._by_kid.values()))

    def __iter__(self):
        for signers in self._by_kid.values():
            yield from signers

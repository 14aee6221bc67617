"""Signed bundles: how the fleet hands kiosks their trust list, policies, status lists and
value sets.

A bundle is a COSE_Sign1 (ES256) by the fleet's bundle-signing key over a
CBOR map:

    {"fmt": 1, "kind": str, "deployment": str, "version": int,
     "issued_at": int (epoch seconds), "body": kind-specific}

Kiosks pin the public half of that key at provisioning. The version is
monotonic per (deployment, kind); kiosks refuse a lower one (no rollback).
`issued_at` also feeds the kiosk's time floor. The format is documented in
docs/bundles.md.
"""

import hashlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import cose
from .errors import Rejected

FORMAT = 1
KINDS = ("trust", "policy", "status", "status-delta", "status-head", "valuesets", "roster",
         "roster-delta")
MAX_BUNDLE = 32 * 1024 * 1024  # a national status list is a few MB


class BundleError(ValueError):
    """A bundle is refused; `reason` is one of: malformed, bad_signature, wrong_key, wrong_deployment."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Bundle:
    kind: str
    deployment: str
    version: int
    issued_at: int
    body: object
    raw: bytes  # the signed bytes, kept so a kiosk can persist exactly what it verified


def key_id(public_key) -> bytes:
    spki = public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()[:8]


def seal(kind: str, version: int, issued_at: int, body, private_key, deployment: str) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}")
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError("bundles are signed with an EC P-256 key (ES256)")
    payload = cbor2.dumps({"fmt": FORMAT, "kind": kind, "deployment": deployment,
                           "version": int(version), "issued_at": int(issued_at), "body": body})
    return cose.sign(payload, private_key, key_id(private_key.public_key()), alg=cose.ES256)


def open_bundle(data: bytes, fleet_key, deployment: str | None = None) -> Bundle:
    """Verify and decode a bundle; raise BundleError saying why it is refused."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_BUNDLE:
        raise BundleError("malformed", "bundle is not bytes or is too large")
    data = bytes(data)
    try:
        sign1 = cose.parse(data)
    except Rejected as exc:
        raise BundleError("malformed", exc.detail) from None
    if sign1.kid != key_id(fleet_key):
        raise BundleError("wrong_key", "bundle is signed by another key than the pinned fleet key")
    if sign1.alg != cose.ES256:
        raise BundleError("bad_signature", "bundle is not ES256")
    try:
        sign1.verify(fleet_key)
    except Rejected as exc:
        raise BundleError("bad_signature", exc.detail) from None
    try:
        doc = cbor2.loads(sign1.payload)
    except Exception as exc:
        raise BundleError("malformed", f"bundle payload is not CBOR: {exc}") from None
    if not isinstance(doc, dict) or doc.get("fmt") != FORMAT:
        raise BundleError("malformed", "bundle payload is not a format-1 bundle")
    kind, ver, issued, dep = (doc.get(k) for k in ("kind", "version", "issued_at", "deployment"))
    if kind not in KINDS or type(ver) is not int or type(issued) is not int or not isinstance(dep, str):
        raise BundleError("malformed", "bundle kind, version, issued_at or deployment is missing")
    if deployment is not None and dep != deployment:
        raise BundleError("wrong_deployment", f"bundle is for deployment {dep!r}, not {deployment!r}")
    return Bundle(kind, dep, ver, issued, doc.get("body"), data)


def load_public_key(pem_or_der: bytes):
    if pem_or_der.lstrip().startswith(b"-----"):
        return serialization.load_pem_public_key(pem_or_der)
    return serialization.load_der_public_key(pem_or_der)

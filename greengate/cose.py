"""COSE_Sign1 (RFC 9052) as the EU DCC uses it: ES256 or PS256, one signer.

Parsing is strict about structure and lenient only where the DCC test suite
says verifiers must be: kid and alg may sit in the unprotected header when the
protected one lacks them.
"""

import io
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .errors import Rejected

ES256 = -7
PS256 = -37
HEADER_ALG = 1
HEADER_KID = 4
TAG_SIGN1 = 18
TAG_CWT = 61
KID_LENGTH = 8
MAX_DEPTH = 16  # a DCC nests 5 deep; anything far deeper is an attack

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_SHA256 = hashes.SHA256()
_ECDSA = ec.ECDSA(_SHA256)


def loads(data: bytes):
    """CBOR decode with the limits every untrusted input gets.

    Trailing bytes are refused: otherwise two different QR texts would verify
    as the same certificate.
    """
    stream = io.BytesIO(data)
    obj = cbor2.CBORDecoder(stream, max_depth=MAX_DEPTH, allow_duplicate_keys=False).decode()
    if stream.tell() != len(data):
        raise ValueError(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    return obj


@dataclass(slots=True)
class Sign1:
    protected: bytes
    protected_header: Mapping
    unprotected_header: Mapping
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> bytes | None:
        kid = self.protected_header.get(HEADER_KID)
        if kid is None:
            kid = self.unprotected_header.get(HEADER_KID)
        return kid

    @property
    def alg(self):
        alg = self.protected_header.get(HEADER_ALG)
        if alg is None:
            alg = self.unprotected_header.get(HEADER_ALG)
        return alg

    def to_be_signed(self) -> bytes:
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])

    def verify(self, public_key) -> None:
        """Raise Rejected('bad_signature') unless the signature holds for this key."""
        alg = self.alg
        tbs = self.to_be_signed()
        try:
            if alg == ES256:
                if not isinstance(public_key, ec.EllipticCurvePublicKey):
                    raise Rejected("bad_signature", "ES256 signature but the signer's key is not EC")
                # ES256 means P-256, but national signers (ES test data) sign
                # SHA-256 with P-384 keys and EU verifiers accept that; the
                # signature size must still match the key's curve.
                size = (public_key.curve.key_size + 7) // 8
                if len(self.signature) != 2 * size:
                    raise Rejected("bad_signature",
                                   f"ES256 signature is {len(self.signature)} bytes, not {2 * size}")
                r = int.from_bytes(self.signature[:size], "big")
                s = int.from_bytes(self.signature[size:], "big")
                public_key.verify(encode_dss_signature(r, s), tbs, _ECDSA)
            elif alg == PS256:
                if not isinstance(public_key, rsa.RSAPublicKey):
                    raise Rejected("bad_signature", "PS256 signature but the signer's key is not RSA")
                public_key.verify(self.signature, tbs, _PSS, _SHA256)
            else:
                raise Rejected("bad_signature", f"algorithm {alg!r} is not ES256 (-7) or PS256 (-37)")
        except InvalidSignature:
            raise Rejected("bad_signature", "signature does not verify with the signer's key") from None


def parse(data: bytes) -> Sign1:
    """COSE_Sign1 from CBOR bytes, untagged, tagged 18, or tagged 61(18(...))."""
    try:
        obj = loads(data)
    except Exception as exc:  # cbor2 raises several types, and RecursionError on some builds
        raise Rejected("unreadable", f"COSE is not valid CBOR: {exc}") from None
    if isinstance(obj, cbor2.CBORTag) and obj.tag == TAG_CWT:
        obj = obj.value
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != TAG_SIGN1:
            raise Rejected("unreadable", f"CBOR tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise Rejected("unreadable", "COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise Rejected("unreadable", "COSE headers have the wrong types")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise Rejected("unreadable", "COSE payload and signature must be byte strings")
    if protected:
        protected_header = _protected_header(protected)
    else:
        protected_header = {}
    return Sign1(protected, protected_header, unprotected, payload, signature)


# A signer's certificates all carry the same protected header ({alg, kid}, ~15
# bytes), so its decoded map is kept: one dict lookup instead of a CBOR decoder
# per scan. Keyed by the exact bytes, bounded, read-only (a mapping proxy): the
# result is the same as decoding them again.
_HEADERS: dict[bytes, Mapping] = {}
_HEADERS_MAX = 256
_HEADER_CACHED_SIZE = 64


def _protected_header(protected: bytes) -> Mapping:
    header = _HEADERS.get(protected)
    if header is not None:
        return header
    try:
        header = loads(protected)
    except Exception as exc:
        raise Rejected("unreadable", f"protected header is not valid CBOR: {exc}") from None
    if not isinstance(header, Mapping):
        raise Rejected("unreadable", "protected header is not a map")
    if len(protected) <= _HEADER_CACHED_SIZE and type(header) is dict:
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()
        header = _HEADERS[protected] = MappingProxyType(header)
    return header


def sign(payload: bytes, private_key, kid: bytes, *, alg: int | None = None,
         kid_in: str = "protected", tag: bool = True) -> bytes:
    """Build a COSE_Sign1 (used by the test issuer and the fleet's bundle signer)."""
    if alg is None:
        alg = PS256 if isinstance(private_key, rsa.RSAPrivateKey) else ES256
    protected_header = {HEADER_ALG: alg}
    unprotected = {}
    if kid_in == "protected":
        protected_header[HEADER_KID] = kid
    elif kid_in == "unprotected":
        unprotected[HEADER_KID] = kid
    protected = cbor2.dumps(protected_header)
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    if alg == ES256:
        size = (private_key.curve.key_size + 7) // 8
        r, s = decode_dss_signature(private_key.sign(tbs, _ECDSA))
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == PS256:
        signature = private_key.sign(tbs, _PSS, _SHA256)
    else:
        raise ValueError(f"cannot sign with algorithm {alg}")
    body = [protected, unprotected, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, body) if tag else body)

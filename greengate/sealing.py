"""Sealed holder identities: the kiosk encrypts, only the fleet can link.

A kiosk seals the ICAO-standardised identity of a certificate's holder
(family \\x1f given \\x1f date of birth, the input of the holder pseudonym) to the
fleet's X25519 public key; the fleet's ingest opens it and derives the pseudonym
with a secret that never leaves the fleet (fleet/sealing_keys.py). The kiosk holds
only public keys, so neither it nor its SD card can compute a pseudonym.

Envelope (bytes; on the wire base64url without padding, the scan's `sealed` field):

    version (1 byte, 2) | kid (8) | epoch public key (32) | nonce (12) |
    ChaCha20-Poly1305 ciphertext of the padded identity + tag (PAD + 16)

    shared = X25519(epoch private, fleet public)
    key    = HKDF-SHA256(shared, salt = epoch public | fleet public,
                         info = "greengate holder seal v2"), 32 bytes
    nonce  = 12 random bytes, fresh for every seal
    AAD    = "gg-seal-v2" | version | kid | epoch public | nonce | kiosk id | 0x1f | scan id
    padded = length (2 bytes, big-endian) | identity (UTF-8) | zero bytes to PAD

An *epoch* is one ephemeral X25519 key pair and the AEAD key derived from it, kept in
memory only (never written) for at most EPOCH_SECONDS or EPOCH_SEALS seals, whichever
comes first, and dropped for a new one then and whenever the fleet's key changes. The
private half is dropped as soon as the AEAD key is derived. Within an epoch every seal
has its own random nonce (at EPOCH_SEALS seals per key, two 96-bit random nonces collide
with probability below 1e-20), so two seals of the same person are unlinkable without
the fleet's private key; what the shared epoch public key says, "same kiosk, same few
minutes", each scan's kiosk and ts fields say already. The fleet derives the AEAD key
once per (kid, epoch key) and keeps it in a bounded LRU (Opener), so the X25519 exchange
is paid once per kiosk epoch instead of once per scan.

The AAD binds an envelope to the scan it came with: copied into another scan (another
kiosk or scan id), it does not open. Every identity a DCC can hold (names of at most 80
characters each) fits PAD, so all envelopes have one length; a longer one (not a valid
DCC) is padded to the next multiple of PAD.

kid: the first 8 bytes of SHA-256 of the raw public key; it names the key pair so the
fleet can rotate keys and still open envelopes sealed to an older one.

This is the only envelope format: an earlier one (a fresh X25519 key per seal, version
1) was never released, and an envelope of it is refused as malformed.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 2
KID_BYTES = 8
EPK_BYTES = 32
NONCE_BYTES = 12
PAD = 256  # padded identity: 2-byte length + up to 254 bytes (DCC names are <= 80 each)
TAG = 16
_EPOCH_END = 1 + KID_BYTES + EPK_BYTES  # version | kid | epoch key: what an epoch shares
HEADER = _EPOCH_END + NONCE_BYTES
SIZE = HEADER + PAD + TAG  # every envelope of a valid DCC
MAX_TEXT = 1400  # base64url characters a scan's `sealed` may hold (parsers refuse more)
EPOCH_SECONDS = 600.0  # a kiosk's epoch key lives at most this long ...
EPOCH_SEALS = 10_000  # ... and seals at most this many identities
CACHE_ENTRIES = 4096  # AEAD keys the fleet's Opener keeps, one per (kid, epoch key)
_INFO = b"greengate holder seal v2"
_AAD = b"gg-seal-v2"
# base64url -> the standard alphabet for binascii; "+" and "/" are not base64url, so they
# become a byte strict mode refuses
_FROM_URL = bytes.maketrans(b"-_+/", b"+/!!")
_TO_URL = bytes.maketrans(b"+/", b"-_")
_PADDING = (b"", b"=", b"==", b"===")


class SealError(ValueError):
    """An envelope that does not open. `reason`: malformed, unknown_key or invalid (wrong
    key, tampered, or bound to another scan: AEAD cannot tell these apart)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def key_id(public_raw: bytes) -> bytes:
    return hashlib.sha256(public_raw).digest()[:KID_BYTES]


@dataclass(frozen=True)
class SealingKey:
    """A public sealing key: all a kiosk ever holds of the fleet's."""
    kid: bytes
    public: bytes  # 32 raw bytes

    @classmethod
    def from_raw(cls, public: bytes) -> "SealingKey":
        if not isinstance(public, (bytes, bytearray)) or len(public) != 32:
            raise ValueError("a sealing key is 32 bytes (X25519)")
        return cls(key_id(bytes(public)), bytes(public))

    @classmethod
    def from_body(cls, body) -> "SealingKey":
        """From a trust bundle's `sealing` entry {"kid": 8 bytes, "key": 32 bytes}; the kid
        must be the key's own (a bundle cannot name one key and carry another)."""
        if not isinstance(body, dict) or not isinstance(body.get("key"), bytes) or \
                not isinstance(body.get("kid"), bytes):
            raise ValueError("'sealing' needs 'kid' (8 bytes) and 'key' (32 bytes)")
        key = cls.from_raw(body["key"])
        if body["kid"] != key.kid:
            raise ValueError("'sealing' kid is not the key's")
        X25519PublicKey.from_public_bytes(key.public)  # refuse what the library would
        return key

    def body(self) -> dict:
        return {"kid": self.kid, "key": self.public}


def identity_bytes(holder: tuple[str, str, str]) -> bytes:
    """The pseudonym's input: what both the old kiosk-side HMAC and the fleet use."""
    family, given, dob = holder
    return f"{family}\x1f{given}\x1f{dob}".encode()


def _aad(header: bytes, kiosk: str, scan_id: str) -> bytes:
    return b"".join((_AAD, header, kiosk.encode(), b"\x1f", scan_id.encode()))


def _derive(shared: bytes, eph_public: bytes, fleet_public: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, eph_public + fleet_public, _INFO).derive(shared)


def _pad(data: bytes) -> bytes:
    if len(data) > 0xFFFF - 2:
        raise ValueError("identity too long to seal")
    size = PAD * max(1, -(-(len(data) + 2) // PAD))
    return len(data).to_bytes(2, "big") + data + bytes(size - 2 - len(data))


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).rstrip(b"=").translate(
        _TO_URL).decode("ascii")


# --- the kiosk's side ---------------------------------------------------------------------
class Epoch:
    """One epoch's sealing state: the fleet key it is for, the epoch's public key (in
    `prefix`, the envelope's first bytes) and the AEAD built on the derived key. The
    ephemeral private key is not kept: it is needed once, to derive."""

    __slots__ = ("public", "prefix", "started", "left", "_cipher")

    def __init__(self, key: SealingKey, started: float, seals: int = EPOCH_SEALS):
        eph = X25519PrivateKey.generate()
        epk = eph.public_key().public_bytes_raw()
        shared = eph.exchange(X25519PublicKey.from_public_bytes(key.public))
        self._cipher = ChaCha20Poly1305(_derive(shared, epk, key.public))
        self.public = key.public
        self.prefix = bytes([VERSION]) + key.kid + epk
        self.started = started
        self.left = seals

    def seal(self, identity: bytes, kiosk: str, scan_id: str) -> str:
        self.left -= 1
        header = self.prefix + os.urandom(NONCE_BYTES)
        sealed = self._cipher.encrypt(header[_EPOCH_END:], _pad(identity),
                                      _aad(header, kiosk, scan_id))
        return _b64(header + sealed)


class EpochSealer:
    """Seals to the key it is given, in epochs: a new epoch (a new ephemeral key) when
    the key changes, after `seconds` or after `seals` seals. Holds no secret beyond the
    current epoch's AEAD key, in memory."""

    __slots__ = ("seconds", "seals", "clock", "epoch")

    def __init__(self, seconds: float = EPOCH_SECONDS, seals: int = EPOCH_SEALS,
                 clock=time.monotonic):
        if not seconds > 0 or seals < 1:
            raise ValueError("an epoch needs a positive duration and at least one seal")
        self.seconds = seconds
        self.seals = seals
        self.clock = clock
        self.epoch: Epoch | None = None

    def __call__(self, identity: bytes, key: SealingKey, *, kiosk: str, scan_id: str) -> str:
        epoch = self.epoch
        now = self.clock()
        if epoch is None or epoch.left <= 0 or epoch.public != key.public or \
                not 0 <= now - epoch.started < self.seconds:
            self.epoch = None  # the old key goes first, whatever happens next
            epoch = self.epoch = Epoch(key, now, self.seals)
        return epoch.seal(identity, kiosk, scan_id)

    def expire(self) -> None:
        """Drop the current epoch if its time is up, sealing or not: an idle kiosk must not
        keep the key of its last scans for hours (the kiosk calls this every second)."""
        epoch = self.epoch
        if epoch is not None and not 0 <= self.clock() - epoch.started < self.seconds:
            if self.epoch is epoch:  # a seal may have just begun a new one
                self.epoch = None

    def end(self) -> None:
        """Drop the current epoch (its AEAD key): the next seal starts a new one."""
        self.epoch = None


def seal(identity: bytes, key: SealingKey, *, kiosk: str, scan_id: str) -> str:
    """The envelope of `identity` for the scan (kiosk, scan_id), as base64url text, in
    an epoch of its own (one X25519 key pair for this seal alone). Kiosks use an
    EpochSealer; this is for one-off seals (tests, tools)."""
    return Epoch(key, 0.0, 1).seal(identity, kiosk, scan_id)


# --- the fleet's side ---------------------------------------------------------------------
def decode(text) -> bytes:
    """The envelope bytes of a `sealed` text, or SealError("malformed"). Total."""
    try:
        data = text.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        raise SealError("malformed", "sealed value is not base64url text") from None
    if not 0 < len(data) <= MAX_TEXT:
        raise SealError("malformed", "sealed value is not base64url text of a bounded size")
    try:
        raw = binascii.a2b_base64(data.translate(_FROM_URL) + _PADDING[-len(data) % 4],
                                  strict_mode=True)
    except binascii.Error:
        raise SealError("malformed", "sealed value is not base64url") from None
    if len(raw) < SIZE or (len(raw) - HEADER - TAG) % PAD or raw[0] != VERSION:
        raise SealError("malformed", f"sealed value is not a version-{VERSION} envelope")
    return raw


class Opener:
    """The fleet side: private keys by kid (current and those in their grace period),
    and the AEAD of each (kid, epoch key) seen lately, at most `cache` of them, least
    recently used first out. Only an epoch key one of its envelopes opened with enters
    the cache: envelopes with made-up epoch keys cost an exchange each but push nothing
    out. A kid no longer held opens nothing, cached or not."""

    def __init__(self, private_keys=(), cache: int = CACHE_ENTRIES):
        if cache < 1:
            raise ValueError("the cache holds at least one entry")
        self._keys: dict[bytes, tuple[X25519PrivateKey, bytes]] = {}
        self._ciphers: OrderedDict[bytes, ChaCha20Poly1305] = OrderedDict()
        self.cache_size = cache
        self.derived = 0  # X25519 exchanges made (the cache's misses)
        for private in private_keys:
            self.add(private)

    def add(self, private: X25519PrivateKey) -> bytes:
        public = private.public_key().public_bytes_raw()
        kid = key_id(public)
        self._keys[kid] = (private, public)
        return kid

    def kids(self) -> set[bytes]:
        return set(self._keys)

    def cached(self) -> int:
        return len(self._ciphers)

    def adopt(self, older: "Opener") -> None:
        """Take over the cached AEADs of `older` (the same fleet's keys read again) for
        the kids this one holds: a reload does not cost every kiosk epoch an exchange."""
        for ident, cipher in older._ciphers.items():
            if ident[:KID_BYTES] in self._keys and ident not in self._ciphers:
                self._ciphers[ident] = cipher
        while len(self._ciphers) > self.cache_size:
            self._ciphers.popitem(last=False)

    def open(self, text, *, kiosk: str, scan_id: str) -> bytes:
        """The identity sealed in `text` for (kiosk, scan_id), or SealError. Never anything
        else, whatever `text` holds."""
        raw = decode(text)
        ident = raw[1:_EPOCH_END]  # kid | epoch key
        entry = self._keys.get(ident[:KID_BYTES])
        if entry is None:
            raise SealError("unknown_key", f"sealed to key {ident[:KID_BYTES].hex()}, which "
                                           "this fleet does not hold (retired, or never its own)")
        ciphers = self._ciphers
        cipher = ciphers.pop(ident, None)  # popped and put back last: the LRU order
        known = cipher is not None
        if not known:
            private, public = entry
            epk = ident[KID_BYTES:]
            try:
                shared = private.exchange(X25519PublicKey.from_public_bytes(epk))
            except ValueError:  # a low-order point: the all-zero shared secret is refused
                raise SealError("invalid", "sealed value has an invalid epoch key") from None
            self.derived += 1
            cipher = ChaCha20Poly1305(_derive(shared, epk, public))
        try:
            padded = cipher.decrypt(raw[_EPOCH_END:HEADER], raw[HEADER:],
                                    _aad(raw[:HEADER], kiosk, scan_id))
        except InvalidTag:
            if known:  # the epoch key is sound; this envelope is not
                ciphers[ident] = cipher
            raise SealError("invalid", "sealed value does not open: tampered, or bound to "
                                       "another scan") from None
        ciphers[ident] = cipher
        if not known and len(ciphers) > self.cache_size:
            ciphers.popitem(last=False)
        size = int.from_bytes(padded[:2], "big")
        if size > len(padded) - 2 or padded.count(0, 2 + size) != len(padded) - 2 - size:
            raise SealError("invalid", "sealed value's padding is wrong")
        return padded[2:2 + size]


def pseudonym(secret: bytes, identity: bytes) -> str:
    """The holder pseudonym: the same derivation kiosks used before sealing, so the
    pseudonyms stored before keep linking with new ones."""
    return hmac.digest(secret, identity, "sha256")[:16].hex()


class Pseudonymiser:
    """pseudonym(secret, ·) for one secret, per call a third of hmac.digest's time: the
    HMAC's keyed inner and outer SHA-256 states are made once and copied per call (RFC
    2104, written out for a key of at most one block; a longer key is hashed first)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes):
        if len(secret) > 64:
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, identity: bytes) -> str:
        inner = self._inner.copy()
        inner.update(identity)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:16].hex()


# The quarantine keeps the first bytes of a refused payload; a sealed identity must not
# be among them (only the ingest sees it, for the time of one batch).
_SEALED_VALUE = re.compile(rb'("sealed"\s*:\s*")[^"]*("|\Z)')


def strip(raw: bytes) -> bytes:
    """The payload with the value of every `"sealed":"..."` blanked (to "-"), also one
    cut off at the end."""
    if b"sealed" not in raw:
        return raw
    return _SEALED_VALUE.sub(lambda m: m.group(1) + b"-" + m.group(2), raw)

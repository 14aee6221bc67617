"""Worker rosters as kiosks hold them: keyed hashes of holders, never names.

An organisation's roster reaches its kiosks as a signed bundle (greengate/bundle.py) of
kind `roster` (or `roster-delta`), on the kiosk's own topic (docs/rosters.md). The body:

    roster:       {"organisation": code, "kiosks": [kiosk ids], "key": 32 bytes,
                   "holders": keyset, "certs": keyset}
    roster-delta: {"organisation": code, "kiosks": [kiosk ids], "from": base version,
                   "add_holders": keyset, "remove_holders": keyset,
                   "add_certs": keyset, "remove_certs": keyset}

A holder entry is entry(key, identity): HMAC-SHA256 under the organisation's roster key
of the same ICAO-standardised (family, given, date of birth) identity the kiosk seals
(greengate/sealing.py identity_bytes), so a worker's next certificate (a new dose, a new
test: another ci) still matches; a cert entry is the status list's cert_hash(ci), for a
worker known only by a certificate identifier (it matches that certificate only). The
key travels in the body because the kiosk must compute the entry of whoever it scans,
offline; it is the organisation's own (derived per organisation by the fleet), so a
kiosk's roster says nothing of any other organisation's, and it is not the tracing
pseudonym's secret. docs/privacy.md says what a stolen kiosk learns from it.

Like the status list, the keysets (greengate/keyset.py) carry the first 8 of the 16
bytes of each entry: a stranger matches a roster of n workers with probability n/2^64.

Parsing is total: any body gives a Roster or ValueError.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from . import keyset
from .sealing import identity_bytes
from .status import cert_hash

ENTRY_BYTES = 16
# a workers-only kiosk's red sub-reasons (reason policy_failed; docs/verification.md)
NOT_ON_ROSTER = "not_on_roster"  # a green certificate whose holder is not on the roster
ROSTER_MISSING = "roster_missing"  # the kiosk holds no roster of its organisation
KEY_BYTES = 32
MAX_KIOSKS = 10_000  # kiosk ids a body may name (an organisation has a handful)
_DOMAIN = b"greengate-roster-v1\x00"
_PREFIX = struct.Struct(">Q").unpack_from
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KIOSK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def entry(key: bytes, identity: bytes) -> bytes:
    """The 16-byte roster entry of a holder identity (identity_bytes of (family, given,
    dob)) under an organisation's roster key."""
    return hmac.new(key, _DOMAIN + identity, hashlib.sha256).digest()[:ENTRY_BYTES]


def holder_entry(key: bytes, holder: tuple[str, str, str]) -> bytes:
    return entry(key, identity_bytes(holder))


def cert_entry(ci: str) -> bytes:
    """The entry of one certificate (the status list's key of its ci)."""
    return cert_hash(ci)


def _ints(entries) -> np.ndarray:
    """16-byte entries (or their 8-byte prefixes as ints) as distinct sorted uint64."""
    out = []
    for e in entries:
        if isinstance(e, (bytes, bytearray)):
            if len(e) != ENTRY_BYTES:
                raise ValueError(f"a roster entry is {ENTRY_BYTES} bytes, not {len(e)}")
            out.append(_PREFIX(bytes(e))[0])
        elif isinstance(e, int) and 0 <= e < 1 << 64:
            out.append(e)
        else:
            raise ValueError(f"not a roster entry: {e!r}")
    return np.unique(np.array(out, dtype=np.uint64))


@dataclass(frozen=True)
class Roster:
    organisation: str
    kiosks: frozenset
    version: int
    key: bytes = field(repr=False)  # not in logs
    holders: frozenset = field(repr=False)  # 8-byte entry prefixes as ints: a set look-up
    certs: frozenset = field(repr=False)

    def __post_init__(self):
        # the HMAC keyed and fed the domain once: a scan copies it (half the time of a
        # fresh hmac.new; bench/roster.py)
        object.__setattr__(self, "_mac", hmac.new(self.key, _DOMAIN, hashlib.sha256))

    def _holder(self, identity: bytes) -> int:
        mac = self._mac.copy()
        mac.update(identity)
        return _PREFIX(mac.digest())[0]

    def member(self, identity: bytes | None, ci: str | None = None) -> bool:
        """Is the holder (identity_bytes) or the certificate (ci) on the roster?"""
        return self.member_hash(identity, cert_hash(ci) if ci is not None else None)

    def member_hash(self, identity: bytes | None, cert_key: bytes | None) -> bool:
        """As member, with the certificate given by its cert_hash (what the verifier has)."""
        if identity is not None and self.holders and self._holder(identity) in self.holders:
            return True
        return cert_key is not None and len(cert_key) == ENTRY_BYTES and \
            _PREFIX(cert_key)[0] in self.certs

    def __len__(self) -> int:
        return len(self.holders) + len(self.certs)

    def for_kiosk(self, kiosk: str) -> bool:
        return kiosk in self.kiosks


# --- bodies: the fleet's side ----------------------------------------------------
def _kiosk_list(kiosks) -> list[str]:
    out = sorted(set(kiosks))
    _check_kiosks(out)
    return out


def roster_body(organisation: str, kiosks, key: bytes, holders=(), certs=()) -> dict:
    """Body of a `roster` bundle: entries are 16-byte entries (entry / cert_entry)."""
    body = {"organisation": organisation, "kiosks": _kiosk_list(kiosks), "key": bytes(key),
            "holders": keyset.encode(_ints(holders)), "certs": keyset.encode(_ints(certs))}
    parse_roster(body)  # the fleet must not sign what kiosks would refuse
    return body


def delta_body(base: int, organisation: str, kiosks, *, add_holders=(), remove_holders=(),
               add_certs=(), remove_certs=()) -> dict:
    """Body of a `roster-delta` bundle on top of roster version `base` of the same
    organisation: entries added and removed (an entry in both is added)."""
    if type(base) is not int or base < 0:
        raise ValueError("a roster delta's base version must be a non-negative integer")
    add_h, add_c = _ints(add_holders), _ints(add_certs)
    rem_h, rem_c = _ints(remove_holders), _ints(remove_certs)
    rem_h, rem_c = np.setdiff1d(rem_h, add_h), np.setdiff1d(rem_c, add_c)
    return {"organisation": organisation, "kiosks": _kiosk_list(kiosks), "from": base,
            "add_holders": keyset.encode(add_h), "remove_holders": keyset.encode(rem_h),
            "add_certs": keyset.encode(add_c), "remove_certs": keyset.encode(rem_c)}


# --- bodies: the kiosk's side ----------------------------------------------------
def _check_kiosks(kiosks) -> None:
    if not isinstance(kiosks, list) or len(kiosks) > MAX_KIOSKS or not all(
            isinstance(k, str) and _KIOSK.fullmatch(k) for k in kiosks):
        raise ValueError("roster 'kiosks' must be a list of kiosk ids")


def _head(body, what: str) -> tuple[str, frozenset]:
    if not isinstance(body, dict):
        raise ValueError(f"{what} body is not a map")
    org = body.get("organisation")
    if not isinstance(org, str) or not _CODE.fullmatch(org):
        raise ValueError(f"{what} body needs 'organisation': an organisation code")
    _check_kiosks(body.get("kiosks"))
    return org, frozenset(body["kiosks"])


def _keys(body: dict, name: str, what: str) -> frozenset:
    raw = body.get(name)
    if not isinstance(raw, bytes):
        raise ValueError(f"{what} body needs {name!r}: a keyset (bytes)")
    try:
        return frozenset(keyset.decode(raw).tolist())
    except ValueError as exc:
        raise ValueError(f"{what} body {name!r}: {exc}") from None


def parse_roster(body, version: int = 0) -> Roster:
    """The kiosk's roster from a `roster` bundle body (version: the bundle's)."""
    org, kiosks = _head(body, "roster")
    key = body.get("key")
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"roster body needs 'key': {KEY_BYTES} bytes")
    if type(version) is not int or version < 0:
        raise ValueError("a roster's version must be a non-negative integer")
    return Roster(org, kiosks, version, key, _keys(body, "holders", "roster"),
                  _keys(body, "certs", "roster"))


def delta_base(body) -> int:
    """The roster version a `roster-delta` body applies on."""
    base = body.get("from") if isinstance(body, dict) else None
    if type(base) is not int or base < 0:
        raise ValueError("roster delta body needs 'from': the base version")
    return base


def apply_delta(base: Roster, body, version: int | None = None) -> Roster:
    """A new roster: `base` with the delta's entries added and removed. The delta must be
    on top of base's version and for base's organisation (another organisation's roster
    has another key: the fleet sends it whole)."""
    org, kiosks = _head(body, "roster delta")
    if delta_base(body) != base.version:
        raise ValueError(f"roster delta applies on v{body['from']}, not on v{base.version}")
    if org != base.organisation:
        raise ValueError(f"roster delta is for {org!r}, the roster held is {base.organisation!r}")
    if version is None:
        version = base.version
    if type(version) is not int or version < base.version:
        raise ValueError("a roster delta's version must not be below its base's")
    add_h, rem_h = _keys(body, "add_holders", "roster delta"), \
        _keys(body, "remove_holders", "roster delta")
    add_c, rem_c = _keys(body, "add_certs", "roster delta"), \
        _keys(body, "remove_certs", "roster delta")
    return Roster(org, kiosks, version, base.key, (base.holders - rem_h) | add_h,
                  (base.certs - rem_c) | add_c)

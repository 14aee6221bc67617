"""Status list look-up: revoked and suspended certificates, by certificate hash.

The key is the first 16 bytes of SHA-256 of the certificate identifier (ci),
as in the EU revocation scheme; callers always pass those 16 bytes. Inside,
and on the wire, only the first 8 of them are kept, as a big-endian unsigned
64-bit integer: that halves the list (a national list is a million entries)
and leaves a 2^-64 chance that a given certificate collides with a given
listed one: about 5e-14 a scan against a million-entry list. A collision can
only turn a certificate red, never let a listed one pass.

In memory the list is one sorted uint64 numpy array of every listed key, 8
bytes an entry, searched with bisect through a memoryview and a small bucket
index on the top bits; the suspended entries are marked by their positions,
with the epoch second each suspension ends (4 + 4 more bytes each, and a
bit per entry while there are any). The signed bundle bodies that fill it
carry the keys as keysets (greengate/keyset.py); docs/bundles.md has the
format.
"""

import hashlib
import math
import struct
from bisect import bisect_left
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np

from . import keyset

REVOKED = "revoked"
SUSPENDED = "suspended"
KEY_BYTES = 16  # what callers pass: cert_hash(ci)
MAX_UNTIL = (1 << 32) - 1  # suspension ends travel as uint32 epoch seconds (to 2106)

_PREFIX = struct.Struct(">Q").unpack_from  # the 8 bytes that are kept, as an int


def cert_hash(ci: str) -> bytes:
    return hashlib.sha256(ci.encode("utf-8")).digest()[:16]


class Status(NamedTuple):
    # A named tuple rather than a frozen dataclass: as immutable, and built in
    # half the time on the suspended-hit path of lookup().
    kind: str  # REVOKED | SUSPENDED
    until: datetime | None = None  # suspensions lapse by themselves at this time


_REVOKED_STATUS = Status(REVOKED)
_EMPTY_KEYS = np.zeros(0, dtype=np.uint64)
_EMPTY_UNTIL = np.zeros(0, dtype=np.uint32)


class _SortedKeys:
    """A read-only sorted uint64 array, and what makes bisect on it fast from Python.

    bisect over a memoryview reads plain ints (numpy scalars would be several
    times slower); the index narrows it to the keys sharing their top bits,
    about 4-8 of them, so a look-up costs ~3 comparisons, not ~20.
    """

    __slots__ = ("values", "view", "index", "shift")

    def __init__(self, values: np.ndarray):
        values.flags.writeable = False
        bits = min(16, max(0, len(values).bit_length() - 3))
        index = np.empty((1 << bits) + 1, dtype=np.uint32)  # bucket b: values[index[b]:index[b+1]]
        index[0], index[-1] = 0, len(values)
        if bits:
            starts = np.arange(1, 1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
            index[1:-1] = np.searchsorted(values, starts)
        self.values = values
        self.view = memoryview(values)
        self.index = memoryview(index)
        self.shift = 64 - bits

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.index.nbytes


class StatusList:
    """Immutable once published to a verifier: deltas build a new list (see apply_delta).

    All listed keys, revoked or suspended, are in one sorted array, so the
    common case, a certificate that is not listed, costs one search however
    the list splits. The suspended ones are marked by their sorted positions
    in that array, with the epoch second each suspension ends alongside, and
    by a bit per entry so that a revoked hit need not search those positions.
    """

    __slots__ = ("_keys", "_held", "_flags", "_until")

    def __init__(self):
        self._set(_EMPTY_KEYS.copy(), _EMPTY_KEYS.copy(), _EMPTY_UNTIL.copy())

    @classmethod
    def _of(cls, keys: np.ndarray, suspended: np.ndarray, until: np.ndarray) -> "StatusList":
        """From every listed key (sorted uint64), the suspended ones among them and their ends."""
        status = cls.__new__(cls)
        status._set(keys, suspended, until)
        return status

    def _set(self, keys, suspended, until) -> None:
        held = np.searchsorted(keys, suspended).astype(np.uint32)
        held.flags.writeable = until.flags.writeable = False
        self._keys = _SortedKeys(keys)
        self._held = memoryview(held)
        flags = None
        if len(held):  # a bit per entry: is it suspended
            bits = np.zeros(len(keys), dtype=bool)
            bits[held] = True
            flags = np.packbits(bits, bitorder="little").tobytes()
        self._flags = flags
        self._until = memoryview(until)

    # Single-entry edits rebuild the arrays (O(n)): for tests and small lists;
    # the kiosk's lists come whole from bundle bodies.
    def revoke(self, key: bytes) -> None:
        k = _prefix(key)
        rev, sus, ends = self.arrays()
        sus, ends = _without(sus, ends, k)
        self._set(_union(_with(rev, k), sus), sus, ends)

    def suspend(self, key: bytes, until: datetime | int) -> None:
        k, end = _prefix(key), _epoch(until)
        rev, sus, ends = self.arrays()
        sus, ends = _without(sus, ends, k)
        at = int(np.searchsorted(sus, np.uint64(k)))
        sus, ends = np.insert(sus, at, np.uint64(k)), np.insert(ends, at, np.uint32(end))
        self._set(_union(_without(rev, None, k)[0], sus), sus, ends)

    def lookup(self, key: bytes, at: datetime) -> Status | None:
        # This runs on every scan: plain ints, bisect and memoryviews, no numpy calls.
        if len(key) != KEY_BYTES:
            raise ValueError(f"status key must be {KEY_BYTES} bytes, not {len(key)}")
        (k,) = _PREFIX(key)
        keys = self._keys
        view = keys.view
        bucket = k >> keys.shift
        i = bisect_left(view, k, keys.index[bucket], keys.index[bucket + 1])
        if i == len(view) or view[i] != k:
            return None
        flags = self._flags
        if flags is None or not flags[i >> 3] >> (i & 7) & 1:
            return _REVOKED_STATUS
        until = datetime.fromtimestamp(self._until[bisect_left(self._held, i)], timezone.utc)
        return Status(SUSPENDED, until) if at < until else None

    def __len__(self) -> int:
        return len(self._keys.values)

    def counts(self) -> tuple[int, int]:
        """(revoked, suspended)."""
        return len(self._keys.values) - len(self._held), len(self._held)

    def nbytes(self) -> int:
        """Memory held by the list's arrays and index (what a kiosk keeps resident)."""
        return self._keys.nbytes + self._held.nbytes + len(self._flags or b"") + self._until.nbytes

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(revoked keys, suspended keys, until): new sorted uint64, uint64 and uint32 arrays."""
        keys, held = self._keys.values, np.asarray(self._held)
        revoked = np.ones(len(keys), dtype=bool)
        revoked[held] = False
        return keys[revoked], keys[held], np.array(self._until)


def _prefix(key) -> int:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"status key must be {KEY_BYTES} bytes (cert_hash of the ci)")
    return _PREFIX(key)[0]


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two sorted, disjoint key arrays as one sorted array."""
    return np.insert(a, np.searchsorted(a, b), b)


def _with(keys: np.ndarray, k: int) -> np.ndarray:
    at = int(np.searchsorted(keys, np.uint64(k)))
    if at < len(keys) and int(keys[at]) == k:
        return keys
    return np.insert(keys, at, np.uint64(k))


def _without(keys: np.ndarray, until, k: int):
    at = int(np.searchsorted(keys, np.uint64(k)))
    if at < len(keys) and int(keys[at]) == k:
        return np.delete(keys, at), (np.delete(until, at) if until is not None else None)
    return keys, until


def _epoch(until) -> int:
    if isinstance(until, datetime):
        if until.tzinfo is None:
            raise ValueError("suspension end must be an aware datetime")
        # rounded up: a suspension must not lapse before the moment the fleet gave
        value = math.ceil(until.timestamp())
    elif type(until) is int:
        value = until
    else:
        raise ValueError(f"suspension end must be a datetime or epoch seconds, not {until!r}")
    if not 0 <= value <= MAX_UNTIL:
        raise ValueError(f"suspension end {value} is outside uint32 epoch seconds")
    return value


# --- bundle bodies: the fleet's side (pure functions) -------------------------
# A key listed twice after truncation to 8 bytes (the same certificate twice,
# or two certificates colliding in 64 bits) gets the strictest state:
# revoked over suspended over reinstated, and the latest end of suspension.

def _keys16(keys) -> np.ndarray:
    """16-byte keys (any iterable) as their uint64 prefixes, unsorted, maybe repeated."""
    keys = list(keys)
    for key in keys:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"status key must be {KEY_BYTES} bytes (cert_hash of the ci), "
                             f"not {key!r}")
    if not keys:
        return _EMPTY_KEYS.copy()
    wide = np.frombuffer(b"".join(keys), dtype=">u8")
    return wide[0::2].astype(np.uint64)


def _suspensions(suspended) -> tuple[np.ndarray, np.ndarray]:
    """{16-byte key: until} as sorted distinct uint64 keys and their uint32 ends."""
    items = list(dict(suspended or {}).items())
    keys = _keys16(k for k, _ in items)
    ends = np.array([_epoch(u) for _, u in items], dtype=np.uint32)
    order = np.lexsort((ends, keys))  # by key, then end: the last of a key's run is its latest
    keys, ends = keys[order], ends[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    return keys[last], ends[last]


def _minus(keys: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Mask of the sorted `keys` not in the sorted `drop`."""
    if not len(drop) or not len(keys):
        return np.ones(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(drop, keys), len(drop) - 1)
    return drop[at] != keys


def _states(revoked, suspended, reinstated=()) -> tuple:
    rev = np.unique(_keys16(revoked))
    sus, ends = _suspensions(suspended)
    keep = _minus(sus, rev)
    sus, ends = sus[keep], ends[keep]
    back = np.unique(_keys16(reinstated))
    back = back[_minus(back, rev) & _minus(back, sus)]
    return rev, sus, ends, back


def snapshot_body(revoked=(), suspended=None) -> dict:
    """Body of a `status` bundle: revoked 16-byte keys, and {16-byte key: until} suspensions.

    `until` is an aware datetime or epoch seconds; the suspension lapses then.
    """
    rev, sus, ends, _ = _states(revoked, suspended)
    return {"revoked": keyset.encode(rev), "suspended": keyset.encode(sus),
            "until": ends.astype(">u4").tobytes()}


def delta_body(base_version: int, revoked=(), suspended=None, reinstated=()) -> dict:
    """Body of a `status-delta` bundle on top of status version `base_version`.

    Each key named takes the state given here, whatever the base held:
    revoked, suspended (until), or reinstated (listed no more).
    """
    if type(base_version) is not int or base_version < 0:
        raise ValueError("a delta's base version must be a non-negative integer")
    rev, sus, ends, back = _states(revoked, suspended, reinstated)
    return {"from": base_version, "revoked": keyset.encode(rev), "suspended": keyset.encode(sus),
            "until": ends.astype(">u4").tobytes(), "reinstated": keyset.encode(back)}


def head_body(version: int, bases) -> dict:
    """Body of a `status-head` bundle: the current status version, the versions with a delta to it."""
    body = {"version": version, "from": sorted(set(bases))}
    parse_head(body)  # the fleet must not publish what kiosks would refuse
    return body


# --- bundle bodies: the kiosk's side -------------------------------------------
def parse_head(body) -> tuple[int, frozenset[int]]:
    """(current status version, versions from which a delta to it is published)."""
    if not isinstance(body, dict):
        raise ValueError("status-head body is not a map")
    version, bases = body.get("version"), body.get("from")
    if type(version) is not int or version < 0:
        raise ValueError("status-head version must be a non-negative integer")
    if not isinstance(bases, list) or not all(type(b) is int and 0 <= b < version for b in bases):
        raise ValueError("status-head 'from' must list versions below the head's version")
    return version, frozenset(bases)


def _field(body: dict, name: str) -> np.ndarray:
    if not isinstance(body.get(name), bytes):
        raise ValueError(f"status body needs {name!r}: a keyset (bytes)")
    try:
        return keyset.decode(body[name])
    except ValueError as exc:
        raise ValueError(f"status body {name!r}: {exc}") from None


def _ends(body: dict, count: int) -> np.ndarray:
    raw = body.get("until")
    if not isinstance(raw, bytes) or len(raw) != 4 * count:
        raise ValueError(f"status body needs 'until': 4 bytes for each of the {count} suspensions")
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def _disjoint(*named) -> None:
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            small, large = (a, b) if len(a) <= len(b) else (b, a)
            if not _minus(small, large).all():
                raise ValueError(f"status body lists a key as both {name_a} and {name_b}")


def from_body(body) -> StatusList:
    """The kiosk's list from a `status` bundle body."""
    if not isinstance(body, dict):
        raise ValueError("status body is not a map")
    rev, sus = _field(body, "revoked"), _field(body, "suspended")
    ends = _ends(body, len(sus))
    _disjoint((REVOKED, rev), (SUSPENDED, sus))
    return StatusList._of(_union(rev, sus), sus, ends)


def apply_delta(base: StatusList, body) -> StatusList:
    """A new list: `base` with the delta's keys set to the states the delta gives."""
    if not isinstance(body, dict):
        raise ValueError("status delta body is not a map")
    if type(body.get("from")) is not int:
        raise ValueError("status delta body needs 'from': the base version")
    rev, sus = _field(body, "revoked"), _field(body, "suspended")
    ends = _ends(body, len(sus))
    back = _field(body, "reinstated")
    _disjoint((REVOKED, rev), (SUSPENDED, sus), ("reinstated", back))
    listed = np.union1d(rev, sus)
    touched = np.union1d(listed, back)
    keys = _merge(base._keys.values, touched, listed)[0]
    old_sus, old_ends = base._keys.values[np.asarray(base._held)], np.asarray(base._until)
    return StatusList._of(keys, *_merge(old_sus, touched, sus, old_ends, ends))


def _merge(keys, drop, add, values=None, add_values=None):
    """Sorted `keys` less those in `drop`, plus the sorted `add` (disjoint from what is left).

    `values` run parallel to `keys`, `add_values` to `add`. Work is O(len(keys))
    copies plus O(len(drop) log len(keys)) searches: deltas are small, lists large.
    """
    at = np.searchsorted(keys, drop)
    hit = at < len(keys)
    hit[hit] = keys[at[hit]] == drop[hit]
    gone = at[hit]
    kept = np.delete(keys, gone)
    where = np.searchsorted(kept, add)
    merged = np.insert(kept, where, add)
    if values is None:
        return merged, None
    return merged, np.insert(np.delete(values, gone), where, add_values)

"""Compact byte encoding of a sorted set of distinct 64-bit keys (the status lists' keys).

The keys are uniformly random (hash prefixes), so the best any code can do is
about log2(C(2^64, n)) bits for n keys; both methods below stay close to it.
The format is self-describing: one method byte, the key count n as a varint,
then the method's parameters and bit fields. docs/bundles.md specifies it.

- ELIAS_FANO: each key is split into L low bits, stored at a fixed width, and
  a high part, stored in unary. Decoding is a handful of numpy passes.
- GOLOMB: the gaps between keys (geometric, for random keys) are Golomb-coded
  with a parameter M that need not be a power of two, which puts the code
  within a few hundredths of a bit per key of the entropy bound; Elias-Fano's
  unary high part spends about half a bit more. That half bit is what keeps
  a 10,000-key delta under 64 KB. Unlike the textbook interleaved layout,
  the three kinds of field (remainder prefixes, remainder extra bits, unary
  quotients) are kept in three separate runs, so decoding is vectorised as
  well and the method serves million-key snapshots, not only small deltas.

The encoder writes whichever method is shorter. Decoding refuses malformed
input (truncation, trailing bytes, non-zero padding, non-minimal varints,
keys out of order or beyond 2^64 - 1) with ValueError, and bounds its memory
by MAX_KEYS and the input's length before allocating.
"""

import math

import numpy as np

ELIAS_FANO = 1
GOLOMB = 2
METHODS = (ELIAS_FANO, GOLOMB)

MAX_KEYS = 1 << 23  # a 32 MB bundle (bundle.MAX_BUNDLE) holds < 6 million keys at ~5.7 B each
MAX_M = 1 << 63  # keeps every Golomb quantity inside numpy's uint64

_U64 = np.uint64


# --- public ------------------------------------------------------------------
def encode(keys, method: int | None = None) -> bytes:
    """Encode distinct uint64 keys (any order, any iterable or numpy array) to bytes.

    method=None picks the shorter of the two methods; a method may be forced
    (tests, benchmarks).
    """
    arr = as_sorted_keys(keys)
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown keyset method {method!r}")
    if method == ELIAS_FANO:
        return _encode_ef(arr)
    if method == GOLOMB:
        return _encode_golomb(arr)
    if len(arr) == 0:
        return _encode_ef(arr)
    ef = _encode_ef(arr)
    golomb = _encode_golomb(arr)
    return golomb if len(golomb) < len(ef) else ef


def decode(data: bytes) -> np.ndarray:
    """Decode to a sorted uint64 numpy array; ValueError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("keyset must be bytes")
    data = bytes(data)
    if not data:
        raise ValueError("keyset is empty (no method byte)")
    method = data[0]
    n, pos = read_varint(data, 1, "key count")
    if n > MAX_KEYS:
        raise ValueError(f"keyset claims {n} keys, more than the {MAX_KEYS} allowed")
    if n == 0:
        if method not in METHODS:
            raise ValueError(f"unknown keyset method {method}")
        if pos != len(data):
            raise ValueError("empty keyset has trailing bytes")
        return np.zeros(0, dtype=_U64)
    # every key takes at least one bit of its unary run: a cheap bound before allocating
    if n > 8 * (len(data) - pos):
        raise ValueError(f"keyset claims {n} keys but has only {len(data) - pos} bytes")
    if method == ELIAS_FANO:
        return _decode_ef(data, pos, n)
    if method == GOLOMB:
        return _decode_golomb(data, pos, n)
    raise ValueError(f"unknown keyset method {method}")


def as_sorted_keys(keys) -> np.ndarray:
    """Distinct keys as a sorted uint64 array; ValueError for duplicates or out-of-range keys."""
    if isinstance(keys, np.ndarray):
        if keys.dtype != _U64:
            raise ValueError(f"keys must be uint64, not {keys.dtype}")
        arr = np.sort(keys.ravel())
    else:
        values = list(keys)
        for k in values:
            if type(k) is not int or not 0 <= k < 1 << 64:
                raise ValueError(f"key {k!r} is not an integer in [0, 2^64)")
        arr = np.array(sorted(values), dtype=_U64)
    if len(arr) > 1 and not bool(np.all(arr[1:] != arr[:-1])):
        raise ValueError("keys must be distinct")
    if len(arr) > MAX_KEYS:
        raise ValueError(f"{len(arr)} keys are more than the {MAX_KEYS} a keyset may hold")
    return arr


def entropy_bytes(n: int, universe_bits: int = 64) -> float:
    """log2(C(2^universe_bits, n)) / 8: no encoding of an arbitrary n-key set is shorter.

    Computed as n*universe_bits - log2(n!) - n(n-1)/(2u ln 2), which is exact to
    far below a bit while n is much smaller than u = 2^universe_bits (lgamma of
    u itself would lose everything to rounding).
    """
    u = float(1 << universe_bits)
    ln2 = math.log(2)
    bits = n * universe_bits - math.lgamma(n + 1) / ln2 - n * (n - 1) / (2 * u * ln2)
    return bits / 8


# --- varints (LEB128: 7 bits a byte, low group first, high bit = more follow) ---
def write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            # a zero final group after the first byte is a longer spelling of a shorter number
            if byte == 0 and i > pos:
                raise ValueError(f"keyset {what} is not minimally encoded")
            if value >= 1 << 64:
                raise ValueError(f"keyset {what} is too large")
            return value, i + 1
    raise ValueError(f"keyset {what} is truncated or too long")


# --- Elias-Fano --------------------------------------------------------------
def _ef_low_bits(arr: np.ndarray) -> int:
    """The L that makes the encoding shortest (the textbook floor(log2(u/n)) can be one off)."""
    n = len(arr)
    top = int(arr[-1])
    guess = max(0, (top // n).bit_length() - 1) if n else 0
    best, best_size = None, None
    for low_bits in range(max(0, guess - 1), min(63, guess + 2) + 1):
        size = -(-n * low_bits // 8) + -(-(n + (top >> low_bits)) // 8)
        if best_size is None or size < best_size:
            best, best_size = low_bits, size
    return best


def _encode_ef(arr: np.ndarray) -> bytes:
    n = len(arr)
    head = bytes([ELIAS_FANO]) + write_varint(n)
    if n == 0:
        return head
    low_bits = _ef_low_bits(arr)
    low = arr & _U64((1 << low_bits) - 1) if low_bits else None
    high = (arr >> _U64(low_bits)).astype(np.int64)  # at most a few times n, by the choice of L
    return (head + bytes([low_bits]) + _pack_fixed(low, low_bits, n)
            + _pack_unary_positions(high + np.arange(n, dtype=np.int64)))


def _decode_ef(data: bytes, pos: int, n: int) -> np.ndarray:
    if pos >= len(data):
        raise ValueError("Elias-Fano keyset is truncated (no low-bit width)")
    low_bits = data[pos]
    if low_bits > 63:
        raise ValueError(f"Elias-Fano low-bit width {low_bits} is over 63")
    pos += 1
    keys, pos = _read_fixed(data, pos, n, low_bits, "Elias-Fano low bits")
    high = _read_unary_positions(data, pos, n, "Elias-Fano high bits")
    high -= np.arange(n, dtype=np.int64)  # position of the i-th set bit = high part + i
    if int(high[-1]) >> (64 - low_bits):
        raise ValueError("Elias-Fano keyset has a key beyond 2^64 - 1")
    keys |= high.view(_U64) << _U64(low_bits)
    del high
    if n > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise ValueError("Elias-Fano keyset keys are not strictly increasing")
    return keys


# --- Golomb ------------------------------------------------------------------
def _golomb_shape(m: int) -> tuple[int, int]:
    """(width of the remainder prefix, cutoff) of truncated binary for remainders in [0, m).

    With b = ceil(log2 m): a remainder r < cutoff = 2^b - m takes b - 1 bits;
    any other is written as r + cutoff in b bits, i.e. a (b-1)-bit prefix that
    is >= cutoff, then one extra bit. m = 1 has no remainder bits at all.
    """
    if m == 1:
        return 0, 0
    b = (m - 1).bit_length()
    return b - 1, (1 << b) - m


def _golomb_gaps(arr: np.ndarray) -> np.ndarray:
    gaps = np.empty_like(arr)
    gaps[0] = arr[0]
    np.subtract(arr[1:], arr[:-1], out=gaps[1:])
    gaps[1:] -= _U64(1)  # keys are distinct, so a gap of zero is two adjacent keys
    return gaps


def _golomb_size(gaps: np.ndarray, m: int) -> int:
    n = len(gaps)
    width, cutoff = _golomb_shape(m)
    mm = _U64(m)
    unary = n + int((gaps // mm).sum(dtype=np.uint64))
    extra = int(np.count_nonzero(gaps % mm >= _U64(cutoff))) if m > 1 else 0
    return len(write_varint(m)) + -(-n * width // 8) + -(-extra // 8) + -(-unary // 8)


def _golomb_parameter(gaps: np.ndarray) -> int:
    """The M (near ln 2 times the mean gap, as for geometric gaps) that gives the fewest bytes."""
    mean = float(gaps.mean(dtype=np.float64)) + 1.0
    centre = mean * math.log(2)
    candidates = {min(MAX_M, max(1, round(centre * f))) for f in np.linspace(0.7, 1.3, 25)}
    return min(sorted(candidates), key=lambda m: _golomb_size(gaps, m))


def _encode_golomb(arr: np.ndarray) -> bytes:
    n = len(arr)
    head = bytes([GOLOMB]) + write_varint(n)
    if n == 0:
        return head
    gaps = _golomb_gaps(arr)
    m = _golomb_parameter(gaps)
    width, cutoff = _golomb_shape(m)
    mm = _U64(m)
    quotients = (gaps // mm).astype(np.int64)
    rem = gaps % mm
    del gaps
    if m > 1:
        long = rem >= _U64(cutoff)
        coded = rem + _U64(cutoff) * long  # r + cutoff for the long ones, < 2^b
        prefixes = np.where(long, coded >> _U64(1), coded)
        extra = np.packbits((coded[long] & _U64(1)).astype(np.uint8)).tobytes()
    else:
        prefixes, extra = None, b""
    ends = np.cumsum(quotients + 1) - 1  # each quotient: that many 0 bits, then a 1
    return (head + write_varint(m) + _pack_fixed(prefixes, width, n) + extra
            + _pack_unary_positions(ends))


def _decode_golomb(data: bytes, pos: int, n: int) -> np.ndarray:
    m, pos = read_varint(data, pos, "Golomb parameter")
    if not 1 <= m <= MAX_M:
        raise ValueError(f"Golomb parameter {m} is not in [1, 2^63]")
    width, cutoff = _golomb_shape(m)
    rem, pos = _read_fixed(data, pos, n, width, "Golomb remainders")
    if m > 1:
        long = rem >= _U64(cutoff)
        count = int(np.count_nonzero(long))
        extra_bytes = -(-count // 8)
        if pos + extra_bytes > len(data):
            raise ValueError("Golomb keyset is truncated (remainder extra bits)")
        bits = np.unpackbits(np.frombuffer(data, np.uint8, extra_bytes, pos))
        if bits[count:].any():
            raise ValueError("Golomb keyset has non-zero padding after the extra bits")
        pos += extra_bytes
        rem[long] = ((rem[long] << _U64(1)) | bits[:count]) - _U64(cutoff)
        del long, bits
    ends = _read_unary_positions(data, pos, n, "Golomb quotients")
    quotients = np.diff(ends, prepend=np.int64(-1))
    quotients -= 1
    del ends
    # exact (Python int) last key, so that no uint64 sum below can have wrapped
    rem_sum = (int((rem >> _U64(32)).sum(dtype=np.uint64)) << 32) + int(
        (rem & _U64(0xFFFFFFFF)).sum(dtype=np.uint64))
    if int(quotients.sum()) * m + rem_sum + n - 1 >= 1 << 64:
        raise ValueError("Golomb keyset has a key beyond 2^64 - 1")
    keys = quotients.view(_U64)
    keys *= _U64(m)
    keys += rem
    del rem
    keys += _U64(1)
    np.cumsum(keys, out=keys)
    keys -= _U64(1)
    return keys


# --- bit fields shared by both methods ---------------------------------------
# Bits are written most significant first, within a byte and within a field.

def _pack_fixed(values: np.ndarray | None, width: int, n: int) -> bytes:
    """n values of `width` bits each, back to back, zero-padded to a whole byte."""
    if width == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=_U64)
    # 8192 values at a time keep the bit matrix to a few MB; a multiple of 8
    # values fills whole bytes, so the chunks' bytes simply follow each other
    chunk = 8192
    parts = []
    for start in range(0, n, chunk):
        bits = (values[start:start + chunk, None] >> shifts) & _U64(1)
        parts.append(np.packbits(bits.astype(np.uint8).ravel()).tobytes())
    return b"".join(parts)


def _read_fixed(data: bytes, pos: int, n: int, width: int, what: str) -> tuple[np.ndarray, int]:
    """Inverse of _pack_fixed; returns (values as uint64, position after the field)."""
    if width == 0:
        return np.zeros(n, dtype=_U64), pos
    size = -(-n * width // 8)
    if pos + size > len(data):
        raise ValueError(f"{what}: keyset is truncated")
    tail_bits = n * width % 8
    if tail_bits and data[pos + size - 1] & ((1 << (8 - tail_bits)) - 1):
        raise ValueError(f"{what}: non-zero padding")
    # Eight consecutive values span exactly `width` bytes, so value 8g + j starts
    # at byte g*width + (j*width >> 3), bit (j*width & 7): for each j that is a
    # strided view. Nine bytes hold any value of up to 64 bits at any bit offset.
    buf = np.zeros(size + 16, dtype=np.uint8)
    buf[:size] = np.frombuffer(data, np.uint8, size, pos)
    out = np.empty(n, dtype=_U64)
    for j in range(min(8, n)):
        count = (n - j + 7) // 8
        first, shift = j * width >> 3, j * width & 7
        word = np.ndarray((count,), dtype=">u8", buffer=buf, offset=first, strides=(width,))
        value = word.astype(_U64)
        if shift:
            nxt = np.ndarray((count,), dtype=np.uint8, buffer=buf, offset=first + 8,
                             strides=(width,))
            value <<= _U64(shift)
            value |= nxt.astype(_U64) >> _U64(8 - shift)
        value >>= _U64(64 - width)
        out[j::8] = value
    return out, pos + size


def _pack_unary_positions(positions: np.ndarray) -> bytes:
    """A bit string with a 1 at each (increasing) position, ending with the byte of the last 1."""
    bits = np.zeros(int(positions[-1]) + 1, dtype=np.uint8)
    bits[positions] = 1
    return np.packbits(bits).tobytes()


def _read_unary_positions(data: bytes, pos: int, n: int, what: str) -> np.ndarray:
    """Positions of the n set bits in data[pos:], which must end with the byte holding the last one.

    Only the non-zero bytes are expanded to bits, so memory follows n and not
    the length of the run (a hostile run of zero bytes costs nothing).
    """
    run = np.frombuffer(data, np.uint8, len(data) - pos, pos)
    busy = np.flatnonzero(run)
    if len(busy) > n:
        raise ValueError(f"{what}: more than {n} keys")
    if len(busy) == 0 or busy[-1] != len(run) - 1:
        raise ValueError(f"{what}: truncated, or trailing bytes after the last key")
    bits = np.unpackbits(run[busy])
    found = np.flatnonzero(bits)
    del bits
    if len(found) != n:
        raise ValueError(f"{what}: {len(found)} keys where {n} were announced")
    positions = busy[found >> 3] * 8
    positions += found & 7
    return positions

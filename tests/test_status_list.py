"""Status lists: the keyset encoding, the kiosk's look-up, and the status bundle bodies."""

import hashlib
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greengate import bundle, keyset
from greengate.keyset import ELIAS_FANO, GOLOMB, MAX_KEYS, write_varint
from greengate.status import (REVOKED, SUSPENDED, StatusList, apply_delta, cert_hash, delta_body,
                              from_body, head_body, parse_head, snapshot_body)

TOP = (1 << 64) - 1
AT = datetime(2021, 10, 5, 8, tzinfo=timezone.utc)
METHODS = pytest.mark.parametrize("method", [ELIAS_FANO, GOLOMB])


def random_keys(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 1 << 64, size=n, dtype=np.uint64))
    while len(keys) < n:  # duplicates among n random 64-bit values are rare, but possible
        more = rng.integers(0, 1 << 64, size=n - len(keys), dtype=np.uint64)
        keys = np.unique(np.concatenate([keys, more]))
    return keys


def key16(prefix: int, rest: bytes = b"\0" * 8) -> bytes:
    return prefix.to_bytes(8, "big") + rest


# --- keyset: round trips --------------------------------------------------------
@METHODS
@pytest.mark.parametrize("keys", [
    [], [0], [1], [TOP], [0, TOP], [0, 1], [TOP - 1, TOP], [7, 8, 9, 10],
    list(range(1000)), list(range(TOP - 300, TOP + 1)), [1 << 63, (1 << 63) + 1, TOP],
    [0, 1, 2, 1 << 40, (1 << 40) + 1, TOP - 1, TOP],
], ids=lambda k: f"{len(k)}keys")
def test_keyset_round_trips_edge_sets(method, keys):
    data = keyset.encode(keys, method)
    assert data[0] == method
    decoded = keyset.decode(data)
    assert decoded.dtype == np.uint64
    assert decoded.tolist() == sorted(keys)


@METHODS
@pytest.mark.parametrize("n", [10_000, 200_000])
def test_keyset_round_trips_random_sets(method, n):
    keys = random_keys(n, seed=n)
    assert np.array_equal(keyset.decode(keyset.encode(keys, method)), keys)


def test_encoder_writes_the_shorter_method():
    for n in (1, 5, 10_000):
        keys = random_keys(n)
        sizes = {m: len(keyset.encode(keys, m)) for m in (ELIAS_FANO, GOLOMB)}
        assert len(keyset.encode(keys)) == min(sizes.values())
    # small sets: Elias-Fano (Golomb pays for its parameter); large: Golomb, nearer the bound
    assert keyset.encode(random_keys(1))[0] == ELIAS_FANO
    assert keyset.encode(random_keys(10_000))[0] == GOLOMB


def test_golomb_is_close_to_the_entropy_bound():
    keys = random_keys(10_000)
    size = len(keyset.encode(keys, GOLOMB))
    bound = keyset.entropy_bytes(10_000)
    assert bound < size < bound * 1.002
    assert len(keyset.encode(keys, ELIAS_FANO)) > size  # the half bit a key Elias-Fano spends more


def test_encoder_accepts_any_order_and_refuses_bad_keys():
    assert keyset.decode(keyset.encode([5, 1, 3])).tolist() == [1, 3, 5]
    for bad in ([1, 1], [-1], [1 << 64], [1.0], ["1"]):
        with pytest.raises(ValueError):
            keyset.encode(bad)
    with pytest.raises(ValueError):
        keyset.encode(np.array([1, 2], dtype=np.int64))
    with pytest.raises(ValueError):
        keyset.encode([1], method=9)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.integers(0, TOP), max_size=200), st.sampled_from([ELIAS_FANO, GOLOMB, None]))
def test_any_set_round_trips(keys, method):
    assert keyset.decode(keyset.encode(keys, method)).tolist() == sorted(keys)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, TOP - 5000), st.sets(st.integers(0, 5000), min_size=1, max_size=300),
       st.sampled_from([ELIAS_FANO, GOLOMB]))
def test_clustered_sets_round_trip(base, offsets, method):
    keys = sorted(base + o for o in offsets)
    assert keyset.decode(keyset.encode(keys, method)).tolist() == keys


def decodes_or_refuses(data: bytes) -> None:
    try:
        keys = keyset.decode(data)
    except ValueError:
        return
    assert keys.dtype == np.uint64
    assert bool(np.all(keys[1:] > keys[:-1]))
    assert keyset.decode(keyset.encode(keys, data[0])).tolist() == keys.tolist()


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_sorted_set_or_raise(data):
    decodes_or_refuses(data)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([ELIAS_FANO, GOLOMB]), st.integers(0, 40), st.binary(max_size=48))
def test_any_body_after_a_plausible_header_decodes_or_raises(method, n, rest):
    decodes_or_refuses(bytes([method]) + write_varint(n) + rest)


@settings(max_examples=500, deadline=None)
@given(st.sets(st.integers(0, TOP), min_size=1, max_size=50), st.sampled_from([ELIAS_FANO, GOLOMB]),
       st.integers(0, 10_000), st.integers(1, 255))
def test_corrupted_encodings_decode_or_raise(keys, method, where, flip):
    data = bytearray(keyset.encode(keys, method))
    data[where % len(data)] ^= flip
    decodes_or_refuses(bytes(data))


@METHODS
def test_truncated_or_extended_encodings_are_refused(method):
    data = keyset.encode(random_keys(300), method)
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            keyset.decode(data[:cut])
    for extra in (b"\0", b"\x01", b"\xff", data):
        with pytest.raises(ValueError):
            keyset.decode(data + extra)


def ef(n: int, low_bits: int, low: bytes, high: bytes) -> bytes:
    return bytes([ELIAS_FANO]) + write_varint(n) + bytes([low_bits]) + low + high


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"\x07\x00", "unknown keyset method"),
    (b"\x01\x00\x00", "trailing"),
    (b"\x01\x80\x00", "minimally"),
    (b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "truncated or too long"),
    (b"\x01" + write_varint(MAX_KEYS + 1) + b"\xff" * 64, "more than"),
    (b"\x01" + write_varint(100) + b"\xff" * 8, "only"),  # refused before any allocation
    (ef(2, 8, b"\x05\x03", b"\xc0"), "strictly increasing"),  # same high part, lows 5 then 3
    (ef(2, 8, b"\x05\x05", b"\xc0"), "strictly increasing"),  # a repeated key
    (ef(1, 64, b"\0" * 8, b"\x80"), "over 63"),
    (ef(1, 63, b"\0" * 8, b"\x20"), "beyond 2"),  # high part 2 << 63
    (ef(2, 4, b"\x12", b"\xc0\x00"), "trailing"),
    (ef(2, 4, b"\x12", b"\x80"), "1 keys where 2"),
    (ef(1, 4, b"\x11", b"\x80"), "padding"),
    (bytes([GOLOMB, 1, 0]), "Golomb parameter 0"),
    (bytes([GOLOMB, 1]) + write_varint((1 << 63) + 1) + b"\0" * 9, "Golomb parameter"),
    # M = 2^63, remainders 0, quotients 0 then 2: the second key is 2^64
    (bytes([GOLOMB, 2]) + write_varint(1 << 63) + b"\0" * 17 + b"\x90", "beyond 2"),
])
def test_malformed_keysets_are_refused_with_a_reason(data, words):
    with pytest.raises(ValueError, match=words):
        keyset.decode(data)


def test_long_runs_cost_memory_by_the_keys_not_the_bytes():
    # two keys with 4 MB of zero bytes between their unary terminators: only
    # the two non-zero bytes are expanded to bits
    run = b"\x80" + b"\0" * (4 << 20) + b"\x01"
    assert keyset.decode(bytes([GOLOMB, 2, 1]) + run).tolist() == [0, 8 * ((4 << 20) + 1) + 7]
    with pytest.raises(ValueError, match="beyond 2"):  # the same run with M = 2^63 overflows
        keyset.decode(bytes([GOLOMB, 2]) + write_varint(1 << 63) + b"\0" * 17 + run)


def test_entropy_bound_of_small_sets():
    assert keyset.entropy_bytes(0) == 0
    assert keyset.entropy_bytes(1) == pytest.approx(8)
    assert keyset.entropy_bytes(2) == pytest.approx((128 - 1) / 8)


# --- the kiosk's list -------------------------------------------------------------
def keys(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def test_lookup_revoked_suspended_lapsed_and_unknown():
    revoked, suspended = keys(50), keys(50)
    until = AT + timedelta(days=3)
    status = from_body(snapshot_body(revoked, {k: until for k in suspended}))
    assert len(status) == 100 and status.counts() == (50, 50)
    assert all(status.lookup(k, AT).kind == REVOKED for k in revoked)
    assert all(status.lookup(k, until + timedelta(days=400)).kind == REVOKED for k in revoked)
    hit = status.lookup(suspended[0], AT)
    assert hit.kind == SUSPENDED and hit.until == until
    assert status.lookup(suspended[0], until - timedelta(seconds=1)).kind == SUSPENDED
    assert status.lookup(suspended[0], until) is None  # lapses at `until`
    assert all(status.lookup(k, AT) is None for k in keys(200))


def test_lookup_needs_a_16_byte_key():
    status = from_body(snapshot_body(keys(3)))
    for bad in (b"", b"x" * 8, b"x" * 32):
        with pytest.raises(ValueError, match="16 bytes"):
            status.lookup(bad, AT)


def test_keys_are_truncated_to_64_bits_and_collisions_are_accepted():
    """Two certificates whose hashes share their first 8 bytes are one entry.

    This is the accepted cost of 8-byte keys: for a given certificate and a
    million-entry list, a 1-in-18-trillion chance of a red it did not earn
    (never a green it did not earn)."""
    listed = key16(0x0123456789ABCDEF, b"A" * 8)
    other = key16(0x0123456789ABCDEF, b"B" * 8)
    neighbour = key16(0x0123456789ABCDF0, b"A" * 8)
    status = from_body(snapshot_body([listed]))
    assert status.lookup(other, AT).kind == REVOKED
    assert status.lookup(neighbour, AT) is None
    assert from_body(snapshot_body([listed, other])).counts() == (1, 0)


def test_extreme_keys_and_a_dense_list():
    edge = [key16(0), key16(1), key16(TOP - 1), key16(TOP)]
    dense = [key16((5 << 48) + i) for i in range(3000)]  # one index bucket, crowded
    status = from_body(snapshot_body(edge + dense))
    assert all(status.lookup(k, AT) for k in edge + dense)
    assert status.lookup(key16(2), AT) is None and status.lookup(key16(TOP - 2), AT) is None
    assert status.lookup(key16((5 << 48) + 3000), AT) is None
    assert status.lookup(key16((5 << 48) - 1), AT) is None


def test_empty_list_finds_nothing():
    for status in (StatusList(), from_body(snapshot_body())):
        assert len(status) == 0 and status.lookup(key16(0), AT) is None


def test_single_edits_keep_one_state_per_key():
    status, (a, b) = StatusList(), keys(2)
    status.revoke(a)
    status.revoke(a)
    status.suspend(b, AT + timedelta(hours=1))
    assert status.counts() == (1, 1)
    status.suspend(a, AT + timedelta(hours=2))  # the last word wins
    assert status.counts() == (0, 2) and status.lookup(a, AT).kind == SUSPENDED
    status.revoke(b)
    assert status.counts() == (1, 1) and status.lookup(b, AT).kind == REVOKED
    with pytest.raises(ValueError):
        status.revoke(hashlib.sha256(b"x").digest())
    with pytest.raises(ValueError):
        status.suspend(keys(1)[0], datetime(2022, 1, 1))  # naive: which time zone?
    with pytest.raises(ValueError):
        status.suspend(keys(1)[0], 1 << 32)


# --- bodies -------------------------------------------------------------------------
def test_snapshot_body_shape_and_precedence():
    a, b, c = keys(3)
    body = snapshot_body([a, b], {b: AT, c: int(AT.timestamp()) + 0})
    assert set(body) == {"revoked", "suspended", "until"}
    assert all(isinstance(v, bytes) for v in body.values())
    status = from_body(body)
    assert status.counts() == (2, 1)  # b is both: revoked is the stricter state
    assert status.lookup(b, AT).kind == REVOKED
    assert body["until"] == int(AT.timestamp()).to_bytes(4, "big")


def test_suspension_end_rounds_up_and_colliding_suspensions_keep_the_latest():
    late = AT + timedelta(microseconds=1)
    body = snapshot_body((), {key16(9, b"A" * 8): AT, key16(9, b"B" * 8): late})
    assert body["until"] == (int(AT.timestamp()) + 1).to_bytes(4, "big")


def test_suspensions_in_key_order_carry_their_own_ends():
    pairs = {key16(p): int(AT.timestamp()) + p % 1000 for p in (900, 5, 77, (1 << 60) + 3)}
    status = from_body(snapshot_body((), pairs))
    for key, end in pairs.items():
        assert status.lookup(key, AT).until == datetime.fromtimestamp(end, timezone.utc)


@pytest.mark.parametrize("body, words", [
    ([], "not a map"),
    ({"suspended": keyset.encode([]), "until": b""}, "'revoked'"),
    ({"revoked": [b"x" * 16], "suspended": keyset.encode([]), "until": b""}, "'revoked'"),
    ({"revoked": keyset.encode([]), "suspended": keyset.encode([1]), "until": b""}, "'until'"),
    ({"revoked": keyset.encode([]), "suspended": keyset.encode([1]), "until": b"12345"}, "'until'"),
    ({"revoked": keyset.encode([1]), "suspended": keyset.encode([1]), "until": b"1234"}, "both"),
    ({"revoked": b"\x01\x05", "suspended": keyset.encode([]), "until": b""}, "'revoked': keyset"),
])
def test_malformed_snapshot_bodies_are_refused(body, words):
    with pytest.raises(ValueError, match=words):
        from_body(body)


def test_delta_moves_keys_between_states_and_leaves_the_base_alone():
    rev, sus, other = keys(4), keys(4), keys(4)
    until = AT + timedelta(days=1)
    base = from_body(snapshot_body(rev, {k: until for k in sus}))
    later = AT + timedelta(days=9)
    body = delta_body(3, revoked=[sus[0], other[0]], suspended={rev[0]: later, other[1]: later},
                      reinstated=[rev[1], sus[1], other[2]])
    assert body["from"] == 3
    new = apply_delta(base, body)
    assert new is not base
    assert new.lookup(sus[0], AT).kind == REVOKED  # suspended, now revoked
    assert new.lookup(other[0], AT).kind == REVOKED
    assert new.lookup(rev[0], AT + timedelta(days=2)).kind == SUSPENDED  # revoked, now suspended
    assert new.lookup(rev[0], later) is None
    assert new.lookup(other[1], AT).until == later
    assert new.lookup(rev[1], AT) is None and new.lookup(sus[1], AT) is None  # reinstated
    assert new.lookup(rev[2], AT).kind == REVOKED and new.lookup(sus[2], AT).kind == SUSPENDED
    assert new.lookup(sus[2], AT).until == until  # untouched suspensions keep their end
    assert new.counts() == (4, 4)
    assert base.counts() == (4, 4) and base.lookup(rev[1], AT).kind == REVOKED  # unchanged
    assert base.lookup(sus[0], AT).kind == SUSPENDED


def test_delta_builder_resolves_a_key_named_twice_to_the_strictest_state():
    a, b = keys(2)
    body = delta_body(1, revoked=[a], suspended={a: AT, b: AT}, reinstated=[a, b])
    new = apply_delta(StatusList(), body)
    assert new.lookup(a, AT - timedelta(1)).kind == REVOKED
    assert new.lookup(b, AT - timedelta(1)).kind == SUSPENDED


def test_delta_bodies_naming_a_key_twice_or_without_base_are_refused():
    empty = keyset.encode([])
    good = delta_body(1, revoked=[key16(1)])
    with pytest.raises(ValueError, match="both revoked and reinstated"):
        apply_delta(StatusList(), dict(good, reinstated=keyset.encode([1])))
    with pytest.raises(ValueError, match="'from'"):
        apply_delta(StatusList(), {k: v for k, v in good.items() if k != "from"})
    with pytest.raises(ValueError, match="'reinstated'"):
        apply_delta(StatusList(), {"from": 1, "revoked": empty, "suspended": empty, "until": b""})
    with pytest.raises(ValueError):
        delta_body(-1)


def test_large_snapshot_and_delta():
    base_keys = random_keys(200_000, seed=7)
    added = random_keys(10_000, seed=8)
    as16 = [int(k).to_bytes(8, "big") + b"\xee" * 8 for k in base_keys]
    ends = {k: int(AT.timestamp()) + 60 for k in as16[190_000:]}
    base = from_body(snapshot_body(as16[:190_000], ends))
    assert base.counts() == (190_000, 10_000)
    new = apply_delta(base, delta_body(1, revoked=[int(k).to_bytes(8, "big") + b"\0" * 8
                                                   for k in added],
                                       reinstated=as16[:1000] + as16[-1000:]))
    assert len(np.intersect1d(added, base_keys)) == 0  # so the counts below are exact
    assert new.counts() == (199_000, 9000)
    assert all(new.lookup(k, AT).kind == REVOKED for k in as16[1000:190_000:997])
    assert all(new.lookup(int(k).to_bytes(8, "big") + b"x" * 8, AT).kind == REVOKED
               for k in added[::101])
    assert all(new.lookup(k, AT) is None for k in as16[:1000:37] + as16[-1000::37])
    assert new.lookup(as16[195_000], AT).kind == SUSPENDED


def test_a_10k_delta_fits_in_64_kb_signed():
    """The issue's delta target, as a size regression guard on the format (the bench reports it)."""
    added = [int(k).to_bytes(8, "big") + b"\0" * 8 for k in random_keys(10_000, seed=3)]
    raw = bundle.seal("status-delta", 6, 1_633_420_800, delta_body(5, revoked=added),
                      ec.generate_private_key(ec.SECP256R1()), "hcm-q7")
    assert len(raw) <= 65_536


# --- head ---------------------------------------------------------------------------
def test_head_body_round_trip():
    body = head_body(12, [11, 4, 10, 11])
    assert body == {"version": 12, "from": [4, 10, 11]}
    assert parse_head(body) == (12, frozenset({4, 10, 11}))
    assert parse_head(head_body(1, [])) == (1, frozenset())


@pytest.mark.parametrize("body", [
    None, [], {"from": []}, {"version": -1, "from": []}, {"version": True, "from": []},
    {"version": 3}, {"version": 3, "from": [3]}, {"version": 3, "from": ["1"]},
    {"version": 3, "from": 1}, {"version": 3, "from": [-1]},
])
def test_bad_heads_are_refused(body):
    with pytest.raises(ValueError):
        parse_head(body)


def test_head_builder_refuses_what_kiosks_would_refuse():
    with pytest.raises(ValueError):
        head_body(3, [5])


def test_cert_hash_is_still_16_bytes():
    assert len(cert_hash("URN:UVCI:01:NL:ABC")) == 16

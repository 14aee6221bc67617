"""Status lists: wire size, kiosk memory and look-up time of the compact format.

For a list of random certificate keys (the first 16 bytes of SHA-256, as the
fleet gets them) it reports: the full snapshot's size per entry (keyset
payload, and the whole signed bundle, P-256), the kiosk's decode time and the
memory its structure keeps, and the look-up time of StatusList.lookup (what
the verifier calls on each scan; hit and miss, median over batches), side by
side with a Python set of the 16-byte keys and a Bloom filter at a 1e-12
false-positive rate. Then a delta adding revocations to it: the whole signed
bundle against 64 KB and against the entropy bound log2(C(2^64, n))/8, and
the time the kiosk takes to apply it. Verdict lines per target of the issue.
"""

import argparse
import gc
import math
import statistics
import time
import tracemalloc
from datetime import datetime, timezone

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from greengate import bundle, keyset, status

from .common import best_of, header, pin_one_core

AT = datetime(2021, 10, 5, 8, tzinfo=timezone.utc)
ISSUED = int(AT.timestamp())
TARGET_BYTES_PER_ENTRY = 6.0
TARGET_DELTA_BYTES = 65_536
TARGET_LOOKUP_NS = 2_000
TARGET_RAM = 10_000_000  # 10 MB, decimal: the stricter reading
BATCH = 1000  # look-ups timed together; the median is taken over batches


def random_keys(rng, n: int) -> list[bytes]:
    raw = rng.bytes(16 * n)
    return [raw[i:i + 16] for i in range(0, len(raw), 16)]


class Bloom:
    """A plain Bloom filter over the 16-byte keys, sized for a false-positive rate p.

    The k probe positions come from double hashing on the key's two 64-bit
    halves (the keys are already hash output).
    """

    def __init__(self, keys: list[bytes], p: float):
        n = len(keys)
        self.m = math.ceil(-n * math.log(p) / math.log(2) ** 2)
        self.k = max(1, round(self.m / n * math.log(2)))
        halves = np.frombuffer(b"".join(keys), dtype=">u8").astype(np.uint64).reshape(-1, 2)
        h1, h2 = halves[:, 0], halves[:, 1] | np.uint64(1)
        bits = np.zeros(self.m, dtype=bool)
        m = np.uint64(self.m)
        for i in range(self.k):
            bits[(h1 + np.uint64(i) * h2) % m] = True
        self.bits = np.packbits(bits, bitorder="little").tobytes()

    def __contains__(self, key: bytes) -> bool:
        h1 = int.from_bytes(key[:8], "big")
        h2 = int.from_bytes(key[8:], "big") | 1
        bits, m = self.bits, self.m
        for i in range(self.k):
            p = (h1 + i * h2) % (1 << 64) % m
            if not bits[p >> 3] >> (p & 7) & 1:
                return False
        return True

    @property
    def nbytes(self) -> int:
        return len(self.bits)


def median_ns(fn, probes: list[bytes]) -> float:
    """Median over batches of BATCH look-ups of the time per look-up, in ns."""
    per = []
    for start in range(0, len(probes) - BATCH + 1, BATCH):
        batch = probes[start:start + BATCH]
        t = time.perf_counter_ns()
        for key in batch:
            fn(key, AT)
        per.append((time.perf_counter_ns() - t) / BATCH)
    return statistics.median(per)


def traced(build):
    """(result, bytes it still holds, peak bytes while building), as tracemalloc sees them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = build()
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held - before, peak - before


def snapshot(n: int, suspended: int, rng, key, lookups: int) -> dict:
    keys = random_keys(rng, n)
    ends = rng.integers(ISSUED + 3600, ISSUED + 86_400 * 14, size=suspended)  # all active at AT
    until = {k: int(e) for k, e in zip(keys[:suspended], ends)}
    r = {"n": n, "suspended": suspended, "keys": keys}
    t = time.perf_counter()
    body = status.snapshot_body(keys[suspended:], until)
    r["build_s"] = time.perf_counter() - t
    r["body"] = body
    payload = sum(len(v) for v in body.values())
    r["payload"] = payload
    r["bundle"] = len(bundle.seal("status", 1, ISSUED, body, key, "bench"))
    r["methods"] = {name: body[name][0] for name in ("revoked", "suspended")}
    revoked = keyset.decode(body["revoked"])
    r["ef"] = len(keyset.encode(revoked, keyset.ELIAS_FANO))
    r["golomb"] = len(keyset.encode(revoked, keyset.GOLOMB))
    r["revoked_entropy"] = keyset.entropy_bytes(len(revoked))
    del revoked
    r["decode_s"] = best_of(lambda: status.from_body(body), 3)
    sl, r["ram"], r["ram_peak"] = traced(lambda: status.from_body(body))
    r["list"] = sl
    r["nbytes"] = sl.nbytes()
    hits = [keys[i] for i in rng.integers(suspended, n, size=lookups)]  # revoked ones
    misses = random_keys(rng, lookups)
    r["lookup_hit"] = median_ns(sl.lookup, hits)
    r["lookup_miss"] = median_ns(sl.lookup, misses)
    if suspended:
        r["lookup_suspended"] = median_ns(
            sl.lookup, [keys[i] for i in rng.integers(0, suspended, size=lookups)])
    # correctness at full scale: every listed key found, no random key found
    r["false_negatives"] = sum(sl.lookup(k, AT) is None for k in keys)
    r["false_positives"] = sum(sl.lookup(k, AT) is not None for k in misses)
    r["fp_probes"] = len(misses)
    s, r["set_ram"], _ = traced(lambda: set(random_keys(np.random.default_rng(1), n)))
    del s
    as_set = set(keys)
    r["set_hit"] = median_ns(lambda k, at: k in as_set, hits)
    r["set_miss"] = median_ns(lambda k, at: k in as_set, misses)
    del as_set
    bloom = Bloom(keys, 1e-12)
    r["bloom"] = (bloom.nbytes, bloom.k, median_ns(lambda k, at: k in bloom, hits[:lookups // 4]),
                  median_ns(lambda k, at: k in bloom, misses))
    return r


def delta(base: dict, added: int, rng, key) -> dict:
    new = random_keys(rng, added)
    t = time.perf_counter()
    body = status.delta_body(1, revoked=new)
    build_s = time.perf_counter() - t
    raw = bundle.seal("status-delta", 2, ISSUED, body, key, "bench")
    entropy = keyset.entropy_bytes(added)
    applied = status.apply_delta(base["list"], body)
    assert applied.counts()[0] == base["list"].counts()[0] + added
    assert all(applied.lookup(k, AT) for k in new[::97])
    return {"added": added, "bundle": len(raw), "keyset": len(body["revoked"]),
            "method": body["revoked"][0], "entropy": entropy, "build_s": build_s,
            "apply_s": best_of(lambda: status.apply_delta(base["list"], body), 3)}


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


METHOD = {keyset.ELIAS_FANO: "Elias-Fano", keyset.GOLOMB: "Golomb"}


def report(r: dict) -> None:
    n = r["n"]
    mix = f" ({r['suspended']:,} of them suspended)" if r["suspended"] else ""
    print(f"-- {n:,} random entries{mix}")
    print(f"snapshot: keyset payload {r['payload']:,} B = {r['payload'] / n:.3f} B/entry; "
          f"signed bundle {r['bundle']:,} B = {r['bundle'] / n:.3f} B/entry "
          f"(built in {r['build_s']:.2f} s)")
    print(f"    revoked keyset: {METHOD[r['methods']['revoked']]}; Elias-Fano {r['ef']:,} B, "
          f"Golomb {r['golomb']:,} B, entropy bound {r['revoked_entropy']:,.0f} B")
    print(f"kiosk decode (from_body): {r['decode_s'] * 1e3:.1f} ms; "
          f"RAM held {r['ram'] / 1e6:.2f} MB ({r['ram'] / n:.2f} B/entry; arrays "
          f"{r['nbytes'] / 1e6:.2f} MB), peak while decoding {r['ram_peak'] / 1e6:.1f} MB")
    print(f"{'':24s}{'memory':>14s}{'lookup hit':>14s}{'lookup miss':>14s}")  # hit: revoked
    print(f"{'StatusList (this)':24s}{r['ram'] / 1e6:11.2f} MB{r['lookup_hit']:11.0f} ns"
          f"{r['lookup_miss']:11.0f} ns")
    if "lookup_suspended" in r:
        print(f"{'':24s}{'':14s}{r['lookup_suspended']:11.0f} ns   (hit on a suspended entry: "
              f"it builds the end's datetime)")
    print(f"{'Python set, 16 B keys':24s}{r['set_ram'] / 1e6:11.2f} MB{r['set_hit']:11.0f} ns"
          f"{r['set_miss']:11.0f} ns")
    size, k, hit, miss = r["bloom"]
    print(f"{'Bloom filter, p=1e-12':24s}{size / 1e6:11.2f} MB{hit:11.0f} ns{miss:11.0f} ns"
          f"   ({size / n:.2f} B/entry, {k} probes)")
    print(f"false negatives: {r['false_negatives']} of {n:,} listed keys; false positives: "
          f"{r['false_positives']} of {r['fp_probes']:,} random keys "
          f"(64-bit keys: {n / 2**64:.1e} expected per look-up)")


def report_delta(d: dict, base_n: int) -> None:
    print(f"-- delta adding {d['added']:,} revocations to the {base_n:,}-entry list")
    print(f"signed bundle {d['bundle']:,} B (target {TARGET_DELTA_BYTES:,}); revoked keyset "
          f"{d['keyset']:,} B, {METHOD[d['method']]}; entropy bound {d['entropy']:,.0f} B "
          f"(keyset +{d['keyset'] - d['entropy']:.0f} B, bundle overhead "
          f"{d['bundle'] - d['keyset']} B)")
    print(f"built in {d['build_s'] * 1e3:.0f} ms; kiosk apply_delta {d['apply_s'] * 1e3:.1f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench status", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="entries of the main list")
    parser.add_argument("--also", type=int, default=194_000, help="entries of a second list")
    parser.add_argument("--suspended", type=float, default=0.05,
                        help="share of suspended entries in an extra, mixed list (0: skip it)")
    parser.add_argument("--delta", type=int, default=10_000, help="revocations the delta adds")
    parser.add_argument("--lookups", type=int, default=200_000, help="timed look-ups of each kind")
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args(argv)
    pinned = pin_one_core()
    print(header("status lists", ".venv/bin/python -m bench status"))
    print(f"random keys (seed {args.seed}), {pinned}\n")
    rng = np.random.default_rng(args.seed)
    key = ec.generate_private_key(ec.SECP256R1())

    main_list = snapshot(args.n, 0, rng, key, args.lookups)
    report(main_list)
    d = delta(main_list, args.delta, rng, key)
    report_delta(d, args.n)
    main_list.pop("list"), main_list.pop("keys"), main_list.pop("body")
    gc.collect()
    if args.also:
        print()
        other = snapshot(args.also, 0, rng, key, args.lookups)
        report(other)
        report_delta(delta(other, args.delta, rng, key), args.also)
        del other
        gc.collect()
    if args.suspended:
        print()
        mixed = snapshot(args.n, int(args.n * args.suspended), rng, key, args.lookups // 4)
        report(mixed)
        del mixed
    r = main_list
    lookup = max(r["lookup_hit"], r["lookup_miss"])
    print(f"\ntargets, {args.n:,} entries (all revoked):")
    print(f"snapshot <= {TARGET_BYTES_PER_ENTRY} B/entry (whole signed bundle): "
          f"{verdict(r['bundle'] / args.n <= TARGET_BYTES_PER_ENTRY)} ({r['bundle'] / args.n:.3f})")
    print(f"delta of {args.delta:,} <= {TARGET_DELTA_BYTES:,} B (whole signed bundle): "
          f"{verdict(d['bundle'] <= TARGET_DELTA_BYTES)} ({d['bundle']:,} B)")
    print(f"lookup <= {TARGET_LOOKUP_NS} ns (slower of hit and miss): "
          f"{verdict(lookup <= TARGET_LOOKUP_NS)} ({lookup:.0f} ns)")
    print(f"kiosk RAM <= {TARGET_RAM / 1e6:.0f} MB: {verdict(r['ram'] <= TARGET_RAM)} "
          f"({r['ram'] / 1e6:.2f} MB)")
    exact = r["false_negatives"] == 0 and r["false_positives"] == 0
    print(f"no false negative, no false positive beyond 64-bit collisions: {verdict(exact)} "
          f"({r['false_negatives']} missed, {r['false_positives']} false hits)")
    return 0

"""Worker rosters on the kiosk: look-up cost beside the status look-up, bundle sizes.

Reports, for rosters of random workers (docs/rosters.md):
- the roster look-up of one scan (Roster.member_hash: the HMAC of the holder's identity
  under the organisation's key, then a set look-up), for a member and for a stranger,
  beside StatusList.lookup on a status list of --status-n entries (what every scan does
  already), median over batches, in ns;
- a whole green decision (Verifier.verify of a real signed certificate) with and without
  the workers-only check, and the check alone, in µs;
- the signed `roster` bundle's bytes per entry for --sizes workers, and the kiosk's parse
  time; a `roster-delta` of --delta workers (half added, half removed), its bytes per
  entry and the time to apply it.
"""

import argparse
import statistics
import time
from datetime import datetime, timedelta, timezone

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from greengate import bundle, roster, sealing, status
from greengate import policy as policies
from greengate.trust import TrustList, load_signer
from greengate.verifier import Verifier

from .common import best_of, header, pin_one_core

AT = datetime(2021, 10, 5, 8, tzinfo=timezone.utc)
ISSUED = int(AT.timestamp())
BATCH = 1000


def identities(rng, n: int) -> list[bytes]:
    """Distinct holder identities as the kiosk seals them (family, given, date of birth)."""
    out = []
    for i in range(n):
        family = "".join(chr(65 + c) for c in rng.integers(0, 26, size=6))
        out.append(sealing.identity_bytes((family, f"VAN<{i}", f"19{rng.integers(50, 99)}-01-01")))
    return out


def median_ns(fn, items) -> float:
    return statistics.median(batches_ns(fn, items))


def batches_ns(fn, items) -> list[float]:
    """Time per call, in ns, of each batch of BATCH calls."""
    per = []
    for start in range(0, len(items) - BATCH + 1, BATCH):
        batch = items[start:start + BATCH]
        t = time.perf_counter_ns()
        for item in batch:
            fn(item)
        per.append((time.perf_counter_ns() - t) / BATCH)
    return per


def full(n: int, rng, key, org_key) -> dict:
    people = identities(rng, n)
    entries = [roster.entry(org_key, p) for p in people]
    body = roster.roster_body("acme", [f"k{i}" for i in range(4)], org_key, entries)
    raw = bundle.seal("roster", 1, ISSUED, body, key, "bench")
    opened = bundle.open_bundle(raw, key.public_key(), "bench")
    parse = best_of(lambda: roster.parse_roster(opened.body, 1), 5)
    return {"n": n, "people": people, "entries": entries, "raw": len(raw),
            "keys": len(body["holders"]), "parse_s": parse,
            "roster": roster.parse_roster(opened.body, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench roster", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000],
                        help="workers in the full rosters measured")
    parser.add_argument("--delta", type=int, default=1_000, help="workers a delta changes")
    parser.add_argument("--status-n", type=int, default=1_000_000,
                        help="entries of the status list looked up beside the roster")
    parser.add_argument("--lookups", type=int, default=100_000, help="timed look-ups of each kind")
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args(argv)
    pinned = pin_one_core()
    print(header("worker rosters", ".venv/bin/python -m bench roster"))
    print(f"random workers (seed {args.seed}), {pinned}\n")
    rng = np.random.default_rng(args.seed)
    key = ec.generate_private_key(ec.SECP256R1())
    org_key = rng.bytes(32)

    print("full roster bundles (signed, P-256):")
    rosters = []
    for n in args.sizes:
        r = full(n, rng, key, org_key)
        rosters.append(r)
        print(f"  {n:>7,} workers: bundle {r['raw']:>9,} B = {r['raw'] / n:5.2f} B/entry "
              f"(keyset {r['keys'] / n:4.2f} B/entry); kiosk parses it in "
              f"{r['parse_s'] * 1e3:6.2f} ms")

    base = rosters[-1]
    half = args.delta // 2
    added = [roster.entry(org_key, p) for p in identities(rng, args.delta - half)]
    removed = base["entries"][:half]
    body = roster.delta_body(1, "acme", [f"k{i}" for i in range(4)], add_holders=added,
                             remove_holders=removed)
    raw = bundle.seal("roster-delta", 2, ISSUED, body, key, "bench")
    opened = bundle.open_bundle(raw, key.public_key(), "bench")
    apply_s = best_of(lambda: roster.apply_delta(base["roster"], opened.body, 2), 5)
    print(f"\ndelta of {args.delta:,} workers ({args.delta - half:,} added, {half:,} removed) "
          f"on {base['n']:,}: bundle {len(raw):,} B = {len(raw) / args.delta:5.2f} B/entry; "
          f"applied in {apply_s * 1e3:.2f} ms")

    # look-ups: the roster's, beside the status list's
    held = base["roster"]
    members = [base["people"][i] for i in rng.integers(0, base["n"], size=args.lookups)]
    strangers = identities(rng, args.lookups)
    member_b = batches_ns(lambda p: held.member_hash(p, None), members)
    stranger_b = batches_ns(lambda p: held.member_hash(p, None), strangers)
    assert all(held.member_hash(p, None) for p in members[:1000])
    assert not any(held.member_hash(p, None) for p in strangers[:1000])
    raw_keys = rng.bytes(16 * args.status_n)
    listed = [raw_keys[i:i + 16] for i in range(0, len(raw_keys), 16)]
    sl = status.from_body(status.snapshot_body(listed))
    misses = [rng.bytes(16) for _ in range(args.lookups)]
    status_b = batches_ns(lambda k: sl.lookup(k, AT), misses)
    status_hit_b = batches_ns(lambda k: sl.lookup(k, AT),
                              [listed[i] for i in rng.integers(0, args.status_n,
                                                               size=args.lookups)])

    def show(per):  # the median, and the fastest batch: what an undisturbed core does
        return f"{statistics.median(per):6.0f} ns (best batch {min(per):5.0f})"
    print(f"\nlook-up per scan on the kiosk (median of batches of {BATCH}):")
    print(f"  roster of {base['n']:,}: member {show(member_b)}, stranger {show(stranger_b)} "
          "(HMAC-SHA256 of the identity + a set look-up)")
    print(f"  status list of {args.status_n:,}: not listed {show(status_b)}, "
          f"listed {show(status_hit_b)}")

    # what the check adds to a whole decision
    from provisioning.issuer import Issuer
    issuer = Issuer.create(alg="ES256")
    person = {"family": "Lê", "given": "Văn Tám", "dob": "1985-03-04"}
    text = issuer.mint(issuer.vaccination(date="2021-08-01", dose=2, of=2, **person),
                       iat=AT - timedelta(days=60), exp=AT + timedelta(days=300))
    member_key = roster.holder_entry(org_key, ("LE", "VAN<TAM", "1985-03-04"))
    with_member = roster.parse_roster(roster.roster_body(
        "acme", ["k0"], org_key, [*base["entries"], member_key]), 3)
    trust = TrustList([load_signer(issuer.der)])
    pol = policies.load("hcmc-2021")
    plain = Verifier(trust, pol, sl)
    checked = Verifier(trust, pol, sl, workers_only="acme", roster=with_member)
    assert plain.verify(text, AT).green and checked.verify(text, AT).green
    # alternated rounds, the fastest of each: the machine's other work disturbs a few rounds
    texts = [text] * BATCH
    plain_us = checked_us = float("inf")
    for _ in range(10):
        plain_us = min(plain_us, median_ns(lambda t: plain.verify(t, AT), texts) / 1e3)
        checked_us = min(checked_us, median_ns(lambda t: checked.verify(t, AT), texts) / 1e3)
    decided = plain.verify(text, AT)
    check_us = median_ns(lambda d: checked._on_roster(d), [decided] * args.lookups) / 1e3
    print(f"\na whole green decision: {plain_us:.1f} µs; at a workers-only kiosk "
          f"{checked_us:.1f} µs; the roster check alone (Verifier._on_roster of a green "
          f"decision) {check_us:.1f} µs")
    return 0

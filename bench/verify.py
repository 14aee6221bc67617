"""Verification throughput (ES256, PS256) and what each stage costs.

Each run verifies distinct certificates (no result caching); signer keys are
parsed once into the trust list, as on a kiosk. Stage costs are measured as
increments along the real chain (decode, then decode+parse, ...), because a
stage timed alone in a tight loop looks cheaper than it is in the pipeline.
Everything is on, as on a kiosk: the official schema, plausibility, the
vendored value sets handed to the rules, and the HCMC policy.

The ratio to `openssl speed ecdsap256` (raw P-256 verifications/s, run on the
same core with taskset) says what share of the machine's signature rate the
whole pipeline keeps; the two are interleaved a few times because a shared
machine's speed drifts, and the median ratio is the figure.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
from datetime import datetime, timezone

from greengate import cose, hc1, policy
from greengate.content import check_plausibility, parse_claims
from greengate.trust import TrustList, load_signer
from greengate.verifier import Verifier
from provisioning.issuer import Issuer

from .common import best_of, header, pin_one_core

AT = datetime(2021, 10, 5, 8, tzinfo=timezone.utc)
TARGET_ES256 = 8000
TARGET_RATIO = 0.6  # of `openssl speed ecdsap256` verify/s on the same core (issue 13)
_OPENSSL_ROW = re.compile(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)")


def make_certificates(issuer: Issuer, n: int) -> list[str]:
    kinds = (
        lambda: issuer.vaccination(date="2021-09-01", dose=2, of=2),
        lambda: issuer.recovery(first_positive="2021-07-01"),
        lambda: issuer.vaccination(date="2021-08-15", dose=1, of=2),
    )
    return [issuer.mint(kinds[i % 3](), iat="2021-09-01", exp="2022-09-01") for i in range(n)]


def stage_costs(texts: list[str], trust: TrustList, pol, verifier: Verifier) -> list[tuple[str, float]]:
    key = next(iter(trust)).public_key

    def upto(stage: int):
        def run():
            for text in texts:
                b45 = hc1.unprefix(text)
                raw = hc1.b45decode(b45)
                if stage < 2:
                    continue
                data = hc1.inflate(raw)
                if stage < 3:
                    continue
                sign1 = cose.parse(data)
                if stage < 4:
                    continue
                sign1.verify(key)
                if stage < 5:
                    continue
                cert = parse_claims(cose.loads(sign1.payload))
                check_plausibility(cert)
                verifier.valuesets.check_strict(cert)
                if stage < 6:
                    continue
                # as the verifier does: only the `external` keys the rules read
                keys = getattr(pol, "external_keys", None)
                pol.evaluate(cert, AT, verifier.external(cert, AT, sign1.kid, keys))
        return run

    names = ["base45", "zlib", "CBOR/COSE", "signature", "CBOR claims + schema", "policy (rules)"]
    totals = [best_of(upto(i + 1)) / len(texts) for i in range(len(names))]
    return [(name, totals[i] - (totals[i - 1] if i else 0.0)) for i, name in enumerate(names)]


def signature_alone(texts: list[str], trust: TrustList) -> float:
    """The floor: only the signature checks, back to back, with nothing else evicting caches."""
    key = next(iter(trust)).public_key
    signed = [cose.parse(hc1.decode(t)) for t in texts]

    def run():
        for sign1 in signed:
            sign1.verify(key)
    return best_of(run) / len(texts)


def run(n: int, repeat: int) -> dict:
    results = {}
    pol = policy.load("hcmc-2021")
    for alg in ("ES256", "PS256"):
        issuer = Issuer.create(alg=alg)
        trust = TrustList([load_signer(issuer.pem)])
        texts = make_certificates(issuer, n)
        verifier = Verifier(trust, pol)
        assert all(verifier.verify(t, AT).green for t in texts), "bench certificates must verify green"

        def whole():
            for text in texts:
                verifier.verify(text, AT)

        per = best_of(whole, repeat) / n
        results[alg] = {"per_second": 1 / per, "microseconds": per * 1e6,
                        "stages": stage_costs(texts, trust, pol, verifier),
                        "signature_alone": signature_alone(texts, trust) * 1e6}
    return results


def openssl_verify_rate(core: int | None, seconds: int) -> float | None:
    """Raw P-256 verifications/s from `openssl speed`, on `core`; None without openssl."""
    if shutil.which("openssl") is None:
        return None
    command = ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"]
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core)] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 30)
    match = _OPENSSL_ROW.search(done.stdout)
    return float(match.group(2)) if match else None


def ratio_rounds(n: int, rounds: int, seconds: int) -> list[tuple[float, float]]:
    """(pipeline ES256 verifications/s, openssl verify/s), interleaved `rounds` times."""
    issuer = Issuer.create(alg="ES256")
    trust = TrustList([load_signer(issuer.pem)])
    texts = make_certificates(issuer, n)
    verifier = Verifier(trust, policy.load("hcmc-2021"))
    assert all(verifier.verify(t, AT).green for t in texts), "bench certificates must verify green"
    try:
        core = min(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        core = None

    def whole():
        for text in texts:
            verifier.verify(text, AT)

    out = []
    for _ in range(rounds):
        ours = n / best_of(whole, 3)
        raw = openssl_verify_rate(core, seconds)
        if raw is None:
            return []
        out.append((ours, raw))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench verify", description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="distinct certificates per algorithm")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds against openssl speed (0: skip)")
    parser.add_argument("--openssl-seconds", type=int, default=3)
    args = parser.parse_args(argv)
    pinned = pin_one_core()
    print(header("verification throughput", "make bench  (or: .venv/bin/python -m bench verify)"))
    print(f"{args.n} distinct certificates per algorithm, best of {args.repeat}, {pinned}\n")
    results = run(args.n, args.repeat)
    for alg, r in results.items():
        print(f"{alg}: {r['per_second']:8.0f} verifications/s  ({r['microseconds']:.1f} µs each)")
        for name, seconds in r["stages"]:
            print(f"    {name:22s} {seconds * 1e6:7.1f} µs")
        print(f"    (signature checks alone, back to back: {r['signature_alone']:.1f} µs)")
    es = results["ES256"]["per_second"]
    verdict = "meets" if es >= TARGET_ES256 else "MISSES"
    print(f"\nES256 target >= {TARGET_ES256}/s on one core: {verdict} ({es:.0f}/s)")
    if args.rounds > 0:
        rounds = ratio_rounds(min(args.n, 1000), args.rounds, args.openssl_seconds)
        if not rounds:
            print("openssl speed: not available, no ratio")
            return 0
        print(f"\nagainst `openssl speed -seconds {args.openssl_seconds} ecdsap256` (verify/s), "
              "same core, interleaved:")
        for i, (ours, raw) in enumerate(rounds, 1):
            print(f"  round {i}: pipeline {ours:7.0f}/s   openssl {raw:7.0f}/s   ratio {ours / raw:.2f}")
        ratio = statistics.median(ours / raw for ours, raw in rounds)
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(f"ES256 ratio to the raw signature rate (median): {ratio:.2f}; "
              f"target >= {TARGET_RATIO}: {verdict}")
    return 0

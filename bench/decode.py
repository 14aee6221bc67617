"""QR decoding on camera-like frames: every backend side by side, per degradation model,
on the seeds the cascade was tuned on and on held-out seeds it never saw.

The corpus (bench/corpus.py) holds real HC1 certificates in 1280x960 grey
frames from four independent degradation models: `scene` (bench/frames.py),
`screen` (a phone screen), `card` (a printed card) and `camera` (the capture
itself). Every decoder sees the same frames; a frame counts as decoded only if
the decoder returns the expected text. Times are per frame, one core, one run
each (after one warm-up frame), median and 95th percentile.

Decoders: the bare backends; `auto@100ms` is the kiosk's cascade with 100 ms
per frame (a single frame, every stage it has time for); `auto@16ms` the same
decoder held to 16 ms per frame (a Pi 4's 66 ms at 15 fps, on this faster
machine), whose bursts spread the expensive stages over the burst's frames.
A burst is 3 consecutive frames of one held-up code; it counts if any frame
decodes; the stateful decoder is reset between bursts.

Also: the bare-read frames' cost (the cascade on the frames bare zxing-cpp
reads, against bare zxing-cpp, interleaved), the kiosk's whole path per frame
(bench/kiosk_rig.py: decode, verify, outbox fsync, lights) against the bare
decoder, and the smallest code size that still decodes at 1280x960.
"""

import argparse
import time
from datetime import datetime, timezone

import numpy as np

from device.decoders import DecoderUnavailable, make_decoder

from . import corpus
from . import frames as framegen
from .common import header, pin_one_core

TARGET_SINGLE = 0.72  # held-out single frames, up to 100 ms per frame
TARGET_BURST = 0.995  # held-out 3-frame bursts, 16 ms per frame
TARGET_BARE_RATIO = 1.10  # the cascade on frames bare zxing-cpp reads, against bare zxing-cpp
TARGET_OVERHEAD = 0.20
KIOSK_FRAME = 0.016  # seconds per frame: a Pi 4's 66 ms at 15 fps, on the CI machine
AT = datetime(2021, 10, 5, 8, tzinfo=timezone.utc)  # the bench certificates are green then


def decoders() -> list:
    """(label, decoder) for every decoder this machine has."""
    out = []
    for label, backend, cascade, budget in [
            ("pyzbar", "pyzbar", False, None), ("zxing-cpp", "zxing", False, None),
            ("cascade(pyzbar)@100ms", "pyzbar", True, 0.100),
            ("auto@100ms", "auto", True, 0.100), ("auto@16ms", "auto", True, KIOSK_FRAME)]:
        try:
            out.append((label, make_decoder(backend, cascade=cascade, budget=budget)))
        except DecoderUnavailable as exc:
            print(f"{label}: not available ({exc})")
    return out


def timed(decoder, frame) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = decoder.decode(frame)
    return texts, time.perf_counter() - start


def run_singles(decoder, singles) -> dict:
    decoder.decode(singles[0][0])  # warm-up: first-call costs are not per-frame costs
    hits, times, stages = 0, [], {}
    for frame, text in singles:
        if hasattr(decoder, "reset"):
            decoder.reset()  # each single frame is a different code
        texts, seconds = timed(decoder, frame)
        times.append(seconds)
        if text in texts:
            hits += 1
            stage = getattr(decoder, "last_stage", None)
            if stage:
                stages[stage] = stages.get(stage, 0) + 1
    return {"rate": hits / len(singles), "hits": hits, "median": float(np.median(times)),
            "p95": float(np.percentile(times, 95)), "stages": stages, "times": times}


def run_bursts(decoder, bursts) -> dict:
    hits, times = 0, []
    for burst, text in bursts:
        if hasattr(decoder, "reset"):
            decoder.reset()  # a new person: the previous code's rotation does not carry over
        for frame in burst:
            texts, seconds = timed(decoder, frame)
            times.append(seconds)
            if text in texts:
                hits += 1
                break
    return {"burst_rate": hits / len(bursts), "burst_hits": hits,
            "burst_p95": float(np.percentile(times, 95)), "burst_max": float(np.max(times))}


def bare_read_cost(cascade, bare, singles) -> dict:
    """The cascade against the bare backend on the frames the bare backend reads: its fast
    path must cost (almost) nothing more. Interleaved, so both see the same machine state."""
    ratios, c_times, b_times = [], [], []
    for frame, text in singles:
        if text not in bare.decode(frame):
            continue
        b = min(timed(bare, frame)[1] for _ in range(3))
        c = min(timed(cascade, frame)[1] for _ in range(3))
        b_times.append(b)
        c_times.append(c)
    if not b_times:
        return {"frames": 0}
    return {"frames": len(b_times), "bare": float(np.median(b_times)),
            "cascade": float(np.median(c_times)),
            "ratio": float(np.median(c_times)) / float(np.median(b_times))}


def pipeline_overhead(decoder, singles) -> dict:
    """The whole kiosk path per frame (decode, cooldown, verify against the stored
    lists, outbox write with fsync, lights) against the bare decoder."""
    from device.kiosk import LiveVerifier
    from device.pipeline import Pipeline

    from . import kiosk_rig

    kiosk, tmp = kiosk_rig.build(framegen.bench_issuer().der, AT)
    try:
        decisions, recording = [], [0.0]

        def on_decision(decision, now):
            decisions.append(decision)
            start = time.perf_counter()
            kiosk.on_decision(decision, now)
            recording[-1] += time.perf_counter() - start

        pipeline = Pipeline(decoder, LiveVerifier(kiosk.store), on_decision, 3.0,
                            clock=kiosk.clock.validation_time)
        base = AT.timestamp()
        bare, piped = [], []
        pipeline.process(singles[0][0], base - 100)  # warm-up
        decisions.clear()
        recording.clear()
        for i, (frame, _) in enumerate(singles):
            recording.append(0.0)
            # Interleaved, so both see the same machine state; frames 10 s apart, so the
            # cooldown never drops one.
            bare.append(timed(decoder, frame)[1])
            start = time.perf_counter()
            pipeline.process(frame, base + 10 * i)
            piped.append(time.perf_counter() - start)
        outbox_rows = kiosk.outbox.depth()
    finally:
        kiosk.outbox.close()
        kiosk.indicator.close()
        tmp.cleanup()
    m_bare, m_pipe = float(np.median(bare)), float(np.median(piped))
    p_bare, p_pipe = float(np.percentile(bare, 95)), float(np.percentile(piped, 95))
    records = [r for r in recording if r]
    processing = float(np.median(np.array(piped) - np.array(recording)))
    return {"bare_median": m_bare, "pipe_median": m_pipe, "bare_p95": p_bare, "pipe_p95": p_pipe,
            "overhead": m_pipe / m_bare - 1, "overhead_p95": p_pipe / p_bare - 1,
            "decisions": len(decisions), "green": sum(d.green for d in decisions),
            "outbox": outbox_rows, "record_median": float(np.median(records or [0])),
            "record_p95": float(np.percentile(records or [0], 95)),
            "processing_overhead": processing / m_bare - 1}


def size_sweep(decoder_pairs, sizes, per_size: int, seed: int) -> list[dict]:
    """Decode rate against code size, with everything else mild and fixed."""
    rows = []
    for blur in (0.6, 1.5):
        for size in sizes:
            rng = np.random.default_rng([seed, 7, int(size * 1000), int(blur * 10)])
            cases = []
            for _ in range(per_size):
                text = framegen.mint(rng)
                scene = framegen.draw_scene(rng)
                scene.size, scene.defocus, scene.motion = size, blur, 0.0
                scene.glare, scene.noise, scene.jpeg = False, 4.0, 80
                scene.white, scene.black = 220.0, 30.0
                scene.skew = min(scene.skew, 0.06)
                cases.append((framegen.render(text, scene, rng), text))
            modules = float(np.median([framegen.qr_matrix(t).shape[0] for _, t in cases]))
            row = {"blur": blur, "size": size, "px_per_module": size * framegen.HEIGHT / modules,
                   "modules": modules}
            for label, decoder in decoder_pairs:
                row[label] = sum(t in decoder.decode(f) for f, t in cases) / per_size
            rows.append(row)
    return rows


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _row(label, width, r, indent="") -> str:
    return (f"{indent}{label:{width}s} {r['rate']:8.1%} ({r['hits']:3d}) {ms(r['median']):>9s} "
            f"{ms(r['p95']):>9s} {r['burst_rate']:8.1%} ({r['burst_hits']:3d})")


def _combine(parts: list[dict]) -> dict:
    hits = sum(p["hits"] for p in parts)
    n = sum(p["n"] for p in parts)
    times = [t for p in parts for t in p["times"]]
    b_hits = sum(p["burst_hits"] for p in parts)
    b_n = sum(p["bursts"] for p in parts)
    stages = {}
    for p in parts:
        for stage, count in p["stages"].items():
            stages[stage] = stages.get(stage, 0) + count
    return {"rate": hits / n, "hits": hits, "n": n, "median": float(np.median(times)),
            "p95": float(np.percentile(times, 95)), "times": times,
            "burst_rate": b_hits / b_n if b_n else 0.0, "burst_hits": b_hits, "bursts": b_n,
            "burst_max": max((p.get("burst_max", 0.0) for p in parts), default=0.0),
            "stages": stages}


def run_split(split: str, seeds, models, pairs, n: int, n_bursts: int, width: int) -> dict:
    """Every decoder on every model's frames of `seeds`; prints the per-model table."""
    print(f"\n== {split} seeds {', '.join(map(str, seeds))}: {n} frames + {n_bursts} bursts of 3 "
          "per model and seed")
    print(f"  {'model':8s} {'decoder':{width}s} {'frames decoded':>16s} {'median':>9s} "
          f"{'p95':>9s} {'bursts decoded':>16s}")
    per = {label: [] for label, _ in pairs}
    bare_cost = []
    for model in models:
        began = time.perf_counter()
        singles = [f for seed in seeds for f in corpus.singles(model, seed, n)]
        bursts = [b for seed in seeds for b in corpus.bursts(model, seed, n_bursts)]
        made = time.perf_counter() - began
        for label, decoder in pairs:
            r = run_singles(decoder, singles) | run_bursts(decoder, bursts)
            r |= {"n": len(singles), "bursts": len(bursts)}
            per[label].append(r)
            print(_row(f"{model:8s} {label}", width + 9, r, "  "))
        cascade = dict(pairs).get("auto@16ms")
        bare = dict(pairs).get("zxing-cpp")
        if cascade is not None and bare is not None:
            bare_cost.append(bare_read_cost(cascade, bare, singles))
        print(f"  {model:8s} (frames made in {made:.0f} s)")
    totals = {label: _combine(parts) for label, parts in per.items()}
    costs = [c for c in bare_cost if c["frames"]]
    if costs:
        totals["bare_read"] = {
            "frames": sum(c["frames"] for c in costs),
            "ratio": float(np.median([c["ratio"] for c in costs])),
            "per_model": [round(c["ratio"], 3) for c in costs],
            "bare": float(np.median([c["bare"] for c in costs])),
            "cascade": float(np.median([c["cascade"] for c in costs]))}
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100,
                        help="single frames per model and seed (default 100)")
    parser.add_argument("--bursts", type=int, default=50,
                        help="3-frame bursts per model and seed (default 50)")
    parser.add_argument("--models", default=",".join(corpus.MODELS),
                        help=f"comma-separated, of {', '.join(corpus.MODELS)}")
    parser.add_argument("--splits", default="tune,held-out", help="tune, held-out or both")
    parser.add_argument("--tune-seeds", default=str(corpus.TUNE_SEEDS[0]),
                        help="comma-separated tune seeds for the tune split, of "
                             f"{', '.join(map(str, corpus.TUNE_SEEDS))} (default "
                             f"{corpus.TUNE_SEEDS[0]}: all of them take five times as long)")
    parser.add_argument("--sweep", type=int, default=16,
                        help="frames per point of the code-size sweep (0: skip it)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(corpus.MODELS)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}")
    splits = [s for s in args.splits.split(",") if s]
    try:
        tune_seeds = tuple(int(s) for s in args.tune_seeds.split(",") if s)
    except ValueError:
        parser.error(f"--tune-seeds: not a list of numbers: {args.tune_seeds!r}")
    if not tune_seeds or set(tune_seeds) - set(corpus.TUNE_SEEDS):
        parser.error(f"--tune-seeds must be of {', '.join(map(str, corpus.TUNE_SEEDS))} "
                     "(the held-out seeds are never tuned on)")
    pinned = pin_one_core()
    print(header("QR decoding on camera-like frames",
                 f".venv/bin/python -m bench decode --n {args.n} --bursts {args.bursts} "
                 f"--models {','.join(models)} --splits {','.join(splits)} "
                 f"--tune-seeds {','.join(map(str, tune_seeds))} --sweep {args.sweep}"))
    print(f"1280x960 frames, models {', '.join(models)}; {pinned}")
    start = time.perf_counter()
    pairs = decoders()
    width = max(len(label) for label, _ in pairs) + 2
    seeds = {"tune": tune_seeds, "held-out": corpus.HELD_OUT_SEEDS}
    results = {split: run_split(split, seeds[split], models, pairs, args.n, args.bursts, width)
               for split in splits}

    for split, totals in results.items():
        # Only the held-out rows are flush left: bench/report.py collects those.
        indent = "" if split == "held-out" else "  "
        print(f"\n== all models, {split} seeds")
        print(f"{indent}{'decoder':{width}s} {'frames decoded':>16s} {'median':>9s} {'p95':>9s} "
              f"{'bursts decoded':>16s}")
        for label, _ in pairs:
            print(_row(label, width, totals[label], indent))
        for label, _ in pairs:
            r = totals[label]
            if r["stages"]:
                found = ", ".join(f"{stage} {count}" for stage, count in
                                  sorted(r["stages"].items(), key=lambda kv: -kv[1]))
                print(f"  {label}: decoded at stage: {found}")
        if "auto@16ms" in totals:
            print(f"  auto@16ms: slowest frame of any burst {ms(totals['auto@16ms']['burst_max'])}")
        if "bare_read" in totals:
            b = totals["bare_read"]
            print(f"  frames bare zxing-cpp reads ({b['frames']}): auto {ms(b['cascade'])} against "
                  f"bare {ms(b['bare'])} (median over frames of the best of 3 runs each, "
                  "interleaved): "
                  f"{b['ratio']:.3f}x (per model {', '.join(map(str, b['per_model']))})")

    status = 0
    held = results.get("held-out")
    if held and "auto@100ms" in held and "auto@16ms" in held:
        single, burst = held["auto@100ms"]["rate"], held["auto@16ms"]["burst_rate"]
        ratio = held.get("bare_read", {}).get("ratio", float("nan"))
        print("\n== targets, on the held-out seeds")
        for name, value, ok, target in [
                ("single frames (auto, <= 100 ms a frame)", f"{single:.1%}",
                 single >= TARGET_SINGLE, f">= {TARGET_SINGLE:.0%}"),
                ("3-frame bursts (auto, 16 ms a frame)", f"{burst:.1%}", burst >= TARGET_BURST,
                 f">= {TARGET_BURST:.1%}"),
                ("frames bare zxing-cpp reads, auto's time", f"{ratio:.3f}x",
                 ratio <= TARGET_BARE_RATIO, f"<= {TARGET_BARE_RATIO}x")]:
            print(f"{name}: {value} (target {target}: {'meets' if ok else 'MISSES'})")

    kiosk = dict(pairs).get("auto@16ms") or pairs[-1][1]
    print("\n== the kiosk's whole path against the bare decoder (scene frames, tune seed, "
          "interleaved):\n   decode, cooldown, verify, outbox write + fsync, lights")
    scene = corpus.singles("scene", corpus.TUNE_SEEDS[0], args.n)
    o = pipeline_overhead(kiosk, scene)
    verdict = "meets" if o["overhead"] <= TARGET_OVERHEAD else "MISSES"
    print(f"bare decoder   median {ms(o['bare_median'])}, p95 {ms(o['bare_p95'])}")
    print(f"pipeline       median {ms(o['pipe_median'])}, p95 {ms(o['pipe_p95'])}")
    print(f"overhead       median {o['overhead']:+.1%}, p95 {o['overhead_p95']:+.1%} "
          f"(target <= {TARGET_OVERHEAD:.0%}: {verdict}); {o['decisions']} decisions, "
          f"{o['green']} green, {o['outbox']} in the outbox")
    print(f"of which outbox write + fsync + lights, per decision: median "
          f"{ms(o['record_median'])}, p95 {ms(o['record_p95'])} (an SD card's fsync is "
          "slower than this machine's disk: measure on the Pi)")
    print(f"without them (decode, cooldown, verify): median {o['processing_overhead']:+.1%} "
          "over the bare decoder")

    if args.sweep:
        sweep_pairs = [(label, d) for label, d in pairs if label in ("zxing-cpp", "pyzbar",
                                                                     "auto@100ms")]
        sizes = [0.15, 0.20, 0.25, 0.30, 0.35, 0.45]
        print(f"\n== smallest code that decodes: {args.sweep} frames per point, no glare, "
              "noise 4, JPEG 80, contrast 190, rotation +-30, skew <= 6 %")
        rows = size_sweep(sweep_pairs, sizes, args.sweep, corpus.TUNE_SEEDS[0])
        labels = [label for label, _ in sweep_pairs]
        print(f"{'defocus':>8s} {'size':>6s} {'px/module':>10s} " +
              " ".join(f"{label:>12s}" for label in labels))
        for row in rows:
            print(f"{row['blur']:>8.1f} {row['size']:>6.0%} {row['px_per_module']:>10.1f} " +
                  " ".join(f"{row[label]:>12.0%}" for label in labels))
        print(f"(codes of {rows[0]['modules']:.0f} modules median: QR version "
              f"{(rows[0]['modules'] - 17) / 4:.0f}, error correction Q)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return status

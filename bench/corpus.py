"""The decode benchmark's corpus: real HC1 codes under several independent degradation models.

Models (each documents its parameter ranges in its docstring and `RANGES`):

- `scene`: bench/frames.py, the original generator (keystone, disk defocus,
  motion, glare spot, noise, JPEG);
- `screen`: bench/degrade/screen.py, a phone screen (pixel grid and moiré,
  backlight and LCD black leak, reflections on the glass);
- `card`: bench/degrade/card.py, a printed card (paper texture, dot gain,
  creases, bending, shadows);
- `camera`: bench/degrade/camera.py, the capture itself (exposure, rolling
  shutter, Bayer mosaic with shot and read noise, ISP sharpening and the
  camera's own JPEG).

Seeds are split: frames of the TUNE seeds may be looked at and the decoder
tuned on them; frames of the HELD_OUT seeds are only ever counted, never
looked at or tuned on (the bench reports both, so a gap between them shows
over-fitting). Frame i of (model, seed) is the same image on every run with
the same OpenCV.

    python -m bench.corpus --model card --seed 1 --n 20 --out DIR

writes DIR/frame-0000.jpg ... and DIR/expected.txt, like `python -m bench.frames`.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from . import frames as scene_frames
from .degrade import camera, card, jitter, screen

# Seed 1 was the first tune set; seeds 3-6 widened it (issue 14, second follow-up) once
# the 16 ms decoder read every seed-1 burst, so the tune set showed no failures left to
# study. `python -m bench decode` runs seed 1 alone unless `--tune-seeds` names more.
TUNE_SEEDS = (1, 3, 4, 5, 6)
HELD_OUT_SEEDS = (2,)  # never tune on these
MODELS = ("scene", "screen", "card", "camera")
_MODULES = {"screen": screen, "card": card, "camera": camera}


def _rng(model: str, seed: int, kind: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, 100 + MODELS.index(model), kind, i])


def frame(model: str, seed: int, i: int) -> tuple[np.ndarray, str, object]:
    """Frame i of (model, seed): (960x1280 uint8 grey, expected HC1 text, its parameters)."""
    if model == "scene":
        return scene_frames.frame(seed, i)
    mod = _MODULES[model]
    rng = _rng(model, seed, 0, i)
    text = scene_frames.mint(rng)
    params = mod.draw(rng)
    return mod.render(text, params, rng), text, params


def burst(model: str, seed: int, i: int, length: int = 3) -> tuple[list[np.ndarray], str]:
    """Burst i: `length` consecutive frames of one held-up code (pose moves a little,
    optics, light and noise are drawn anew for every frame)."""
    if model == "scene":
        jpegs, text = scene_frames.burst_jpegs(seed, i, length)
        return [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE) for j in jpegs], text
    mod = _MODULES[model]
    rng = _rng(model, seed, 1, i)
    text = scene_frames.mint(rng)
    params = mod.draw(rng)
    out = []
    for _ in range(length):
        out.append(mod.render(text, params, rng))
        params = jitter(mod, params, rng)
    return out, text


def singles(model: str, seed: int, n: int) -> list[tuple[np.ndarray, str]]:
    return [frame(model, seed, i)[:2] for i in range(n)]


def bursts(model: str, seed: int, n: int, length: int = 3) -> list[tuple[list[np.ndarray], str]]:
    return [burst(model, seed, i, length) for i in range(n)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--seed", type=int, default=TUNE_SEEDS[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(args.n):
        gray, text, _ = frame(args.model, args.seed, i)
        name = f"frame-{i:04d}.jpg"
        cv2.imwrite(str(args.out / name), gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"{name}\t{text}")
    (args.out / "expected.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.n} {args.model} frames of seed {args.seed} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

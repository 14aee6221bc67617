"""The decode corpus's degradation models: parameters in their documented ranges, frames of the
right size, reproducible per seed, and every degradation really applied."""

import numpy as np
import pytest

from bench import corpus
from bench.degrade import camera, card, jitter, screen
from device.decoders import ZxingDecoder

MODELS = {"screen": screen, "card": card, "camera": camera}

# Per model: the mildest setting of each degradation (a clean code must read through it), and
# parameters whose other end must change the frame.
MILD = {
    "screen": {"size": 0.6, "roll": 5.0, "yaw": 0.0, "pitch": 0.0, "screen_px_per_module": 12.0,
               "pixel_fill": 0.95, "margin": 4.0, "black_leak": 0.0, "angle_loss": 0.0,
               "backlight_uneven": 0.0, "reflection": 0.0, "window": False, "blur": "defocus",
               "defocus": 0.5, "noise": 2.0, "jpeg": 92.0, "white": 230.0},
    "card": {"size": 0.6, "roll": 5.0, "yaw": 0.0, "pitch": 0.0, "border": 5.0, "paper": 230.0,
             "ink": 25.0, "dot_gain": 0.0, "speckle": 0.0, "fibres": 2.0, "mottle": 0.0,
             "creases": 0, "crease_offset": 0.0, "bend": 0.0, "shadow": False,
             "blur": "defocus", "defocus": 0.6, "noise": 2.0, "jpeg": 90.0},
    "camera": {"size": 0.6, "roll": 5.0, "yaw": 0.0, "pitch": 0.0, "border": 5.0,
               "white": 220.0, "black": 20.0, "gain": 1.0, "shutter": "global", "shear": 0.0,
               "stretch": 0.0, "smear": 0.0,
               "defocus": 0.5, "vignette": 0.0, "tint_r": 1.0, "tint_b": 1.0,
               "full_well": 20000.0, "read_noise": 0.5, "banding": 0.0, "denoise": 0.0,
               "sharpen": 0.0, "jpeg": 90.0},
}
HARSH = {
    # (a pixel grid of 4 px per module at this size is resolved: its fill shows)
    "screen": {"pixel_fill": {"pixel_fill": 0.55, "screen_px_per_module": 4.0},
               "black_leak": 0.3, "reflection": 0.35, "window": True, "blur": "motion",
               "noise": 8.0},
    "card": {"dot_gain": 0.25, "fibres": 10.0, "creases": 2,
             "crease_offset": {"crease_offset": 0.6, "creases": 1},
             "bend": 0.15, "shadow": True, "defocus": 2.5},
    "camera": {"shear": {"shear": 40.0, "shutter": "rolling"}, "gain": 0.35, "read_noise": 6.0,
               "sharpen": 1.5, "jpeg": 40.0, "smear": 8.0},
}


def text():
    from bench.frames import mint
    return mint(np.random.default_rng(11))


@pytest.mark.parametrize("name", MODELS)
def test_drawn_parameters_stay_in_their_documented_ranges(name):
    model = MODELS[name]
    rng = np.random.default_rng(0)
    for _ in range(300):
        params = model.draw(rng)
        assert set(params) == set(model.RANGES) | set(model.CHOICES)
        for key, (lo, hi) in model.RANGES.items():
            assert lo <= params[key] <= hi, (key, params[key])
        for key, options in model.CHOICES.items():
            assert params[key] in options
        after = jitter(model, params, rng)  # the next frame of a burst: ranges hold too
        for key, (lo, hi) in model.RANGES.items():
            assert lo <= after[key] <= hi, (key, after[key])
        for key in model.KEEP:
            assert after[key] == params[key]
        for key, delta in model.MOVE.items():
            assert abs(after[key] - params[key]) <= delta + 1e-9
    assert all(lo < hi for lo, hi in model.RANGES.values())


@pytest.mark.parametrize("model", corpus.MODELS)
def test_frames_are_grey_1280x960_and_the_same_per_seed(model):
    first, text_a, _ = corpus.frame(model, 7, 0)
    again, text_b, _ = corpus.frame(model, 7, 0)
    other, text_c, _ = corpus.frame(model, 7, 1)
    assert first.shape == (960, 1280) and first.dtype == np.uint8
    assert np.array_equal(first, again) and text_a == text_b
    assert text_c != text_a and not np.array_equal(first, other)
    assert text_a.startswith("HC1:")


def test_tune_and_held_out_seeds_are_disjoint():
    assert not set(corpus.TUNE_SEEDS) & set(corpus.HELD_OUT_SEEDS)


@pytest.mark.parametrize("seeds", ["2", "1,2", "x", ""])
def test_the_bench_never_tunes_on_a_held_out_seed(seeds):
    from bench import decode
    with pytest.raises(SystemExit) as exc:  # refused before any frame is made
        decode.main(["--tune-seeds", seeds, "--splits", "tune", "--models", "scene"])
    assert exc.value.code == 2


@pytest.mark.parametrize("name", MODELS)
def test_a_mild_frame_reads_and_each_degradation_changes_it(name):
    model = MODELS[name]
    base = model.draw(np.random.default_rng(3)) | MILD[name]
    hc1 = text()
    clean = model.render(hc1, base, np.random.default_rng(4))
    assert clean.shape == (960, 1280) and clean.dtype == np.uint8
    # Right way round, whole, in focus: the rendering itself does not break the code.
    assert ZxingDecoder().decode(clean) == [hc1]
    for key, value in HARSH[name].items():
        change = value if isinstance(value, dict) else {key: value}
        reference = clean
        if len(change) > 1:  # a setting `key` needs to show: only `key` differs from reference
            reference = model.render(hc1, base | change | {key: base[key]},
                                     np.random.default_rng(4))
        spoilt = model.render(hc1, base | change, np.random.default_rng(4))
        diff = np.abs(spoilt.astype(np.int16) - reference.astype(np.int16)).mean()
        assert diff > 1.0, f"{name}: {key}={value} changed the frame by only {diff:.2f}"


def test_a_burst_is_one_code_in_different_frames():
    frames, hc1 = corpus.burst("card", 5, 0)
    assert len(frames) == 3 and hc1.startswith("HC1:")
    assert not np.array_equal(frames[0], frames[1])


def test_corpus_cli_writes_a_playable_folder(tmp_path):
    from device.sources import FolderSource
    assert corpus.main(["--model", "screen", "--n", "2", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "expected.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[1].startswith("HC1:") for line in lines)
    assert len(list(FolderSource(tmp_path))) == 2

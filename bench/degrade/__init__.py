"""Degradation models for the decode corpus (bench/corpus.py), each independent of the others.

A model is a module with:

- `RANGES`: {parameter: (low, high)}, the documented range of every numeric
  parameter (tests/test_corpus.py checks that drawn parameters stay inside);
- `CHOICES`: {parameter: (option, ...)} for the categorical ones;
- `draw(rng) -> dict`: one frame's parameters;
- `KEEP` (parameters a held-up code keeps from frame to frame: the payload's
  card, the screen, the paper) and `MOVE` ({parameter: largest change per
  frame}: the pose), from which `jitter(model, params, rng)` makes the next
  frame of a burst: pose moves a little, optics, light and noise are drawn anew;
- `render(text, params, rng) -> np.ndarray`: a 960x1280 uint8 grey frame.

The helpers here are shared geometry (a true perspective view of a tilted
plane, unlike bench/frames.py's keystone) and a background; each model does its
own degradations.
"""

import math

import cv2
import numpy as np

WIDTH, HEIGHT = 1280, 960

# The pose every model shares: the code's side as a fraction of the frame height
# (the kiosk sees 35-80 %), in-plane rotation, out-of-plane tilt, where it sits.
POSE_RANGES = {
    "size": (0.35, 0.80),
    "roll": (-30.0, 30.0),  # degrees
    "yaw": (-25.0, 25.0),  # degrees, tilt about the vertical axis
    "pitch": (-25.0, 25.0),  # degrees, tilt about the horizontal axis
    "cx": (0.0, 1.0),  # position in the free room left and right
    "cy": (0.0, 1.0),
}
POSE_MOVE = {"size": 0.03, "roll": 3.0, "yaw": 3.0, "pitch": 3.0, "cx": 0.04, "cy": 0.04}


def draw_ranges(ranges: dict, rng: np.random.Generator) -> dict:
    """Every parameter of `ranges` drawn uniformly, in a fixed order (reproducible)."""
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}


def draw_choices(choices: dict, rng: np.random.Generator) -> dict:
    return {name: options[int(rng.integers(len(options)))] for name, options in choices.items()}


def jitter(model, params: dict, rng: np.random.Generator) -> dict:
    """The next camera frame of the same code under `model`."""
    fresh = model.draw(rng)
    for name in model.KEEP:
        fresh[name] = params[name]
    for name, delta in model.MOVE.items():
        lo, hi = model.RANGES[name]
        fresh[name] = float(np.clip(params[name] + rng.uniform(-delta, delta), lo, hi))
    return fresh


def _rotation(roll: float, yaw: float, pitch: float) -> np.ndarray:
    r, y, p = (math.radians(v) for v in (roll, yaw, pitch))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rz @ ry @ rx


def project(points: np.ndarray, side_px: float, roll: float, yaw: float, pitch: float,
            focal: float = 1100.0) -> np.ndarray:
    """Points of a plane (in units of its side, centred at 0) seen by a pinhole camera
    (focal length in px, about a Camera Module 3 at 1280x960) so that a side of 1,
    untilted, spans side_px pixels. Returns pixel offsets from the frame centre."""
    pts = np.column_stack([points, np.zeros(len(points))]) * side_px
    pts = pts @ _rotation(roll, yaw, pitch).T
    depth = focal + pts[:, 2]
    return pts[:, :2] * (focal / depth)[:, None]


def place(side_px: float, outer: float, params: dict, scale: float = 1.0):
    """The homography from a square source image of `outer` units (the card, with the
    code's side 1) to frame pixels (times `scale`), keeping the whole card in the frame.
    Tilt and rotation shrink only when a large card would not fit."""
    h = outer / 2
    square = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    roll, yaw, pitch = params["roll"], params["yaw"], params["pitch"]
    for _ in range(60):
        corners = project(square, side_px, roll, yaw, pitch)
        extent = corners.max(axis=0) - corners.min(axis=0)
        if extent[0] <= WIDTH - 4 and extent[1] <= HEIGHT - 4:
            break
        roll, yaw, pitch = roll * 0.9, yaw * 0.9, pitch * 0.9
    lo = -corners.min(axis=0) + 2
    room = np.maximum(np.array([WIDTH, HEIGHT]) - extent - 4, 0)
    offset = lo + room * np.array([params["cx"], params["cy"]])
    return (corners + offset) * scale


def homography(src_side: int, corners: np.ndarray) -> np.ndarray:
    s = float(src_side)
    return cv2.getPerspectiveTransform(np.float32([[0, 0], [s, 0], [s, s], [0, s]]),
                                       np.float32(corners))


def background(rng: np.random.Generator, level=(40, 200)) -> np.ndarray:
    """A counter-top scene: soft light, a few objects with edges, fine texture."""
    small = rng.uniform(*level, size=(4, 5)).astype(np.float32)
    bg = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        axes = (int(rng.integers(20, 300)), int(rng.integers(20, 300)))
        cv2.ellipse(bg, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    float(rng.uniform(0, 255)), -1, cv2.LINE_AA)
    texture = rng.normal(0, 5, size=(HEIGHT // 2, WIDTH // 2)).astype(np.float32)
    return bg + cv2.resize(texture, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)


def gaussian_blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), sigma) if sigma > 0.05 else frame


def motion_blur(frame: np.ndarray, length: float, angle: float) -> np.ndarray:
    """A straight motion path `length` px long at `angle` degrees (sub-pixel ends)."""
    if length < 0.5:
        return frame
    up = 8
    size = (int(math.ceil(length)) + 2) | 1
    big = np.zeros((size * up, size * up), np.float32)
    c, half = size * up / 2, length * up / 2
    dx, dy = math.cos(math.radians(angle)) * half, math.sin(math.radians(angle)) * half
    ends = [(int((c - dx) * 16), int((c - dy) * 16)), (int((c + dx) * 16), int((c + dy) * 16))]
    cv2.line(big, ends[0], ends[1], 1.0, up, cv2.LINE_AA, 4)  # 4 fractional bits: sub-pixel
    kernel = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.filter2D(frame, -1, kernel / kernel.sum())


def to_jpeg_gray(frame: np.ndarray, quality: int) -> np.ndarray:
    """Clip, quantise, JPEG at `quality`, decode as grey (what the kiosk's source gives)."""
    img = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)

"""A printed card (the provisioning card, or a certificate printed at home).

Print: paper white 140-240 grey levels under the kiosk's light, ink 20-90;
dot gain from -12 % to +25 % of a module (toner spreading, or a starved
printer thinning the dark modules); toner speckle (0-2 % of the area); paper
texture: fibres (2-10 grey levels) and mottling (0-8 % of the brightness).

Handling: 0-2 creases (a fold line across the card: a dark line, one side
5-30 % darker, and the module grid kinked by up to 0.6 module across it); the
card bent like a cylinder (bend 0-0.15: up to 27 degrees of arc either side of
the middle), which also shades it; a soft-edged shadow of a hand or the kiosk's
hood across the frame on half of the frames (20-60 % darker).

Pose as every model (size 35-80 % of the frame height, rotation +-30, tilt
+-25 degrees); then the camera: defocus (Gaussian sigma 0.5-2.5 px), on 30 %
of frames motion (2-8 px), sensor noise (2-8 grey levels), JPEG 55-90.
"""

import math

import cv2
import numpy as np

from . import (HEIGHT, POSE_MOVE, POSE_RANGES, WIDTH, background, draw_choices, draw_ranges,
               gaussian_blur, motion_blur, place, to_jpeg_gray)

RANGES = POSE_RANGES | {
    "border": (3.0, 8.0),  # paper around the code, modules
    "paper": (140.0, 240.0),
    "ink": (20.0, 90.0),
    "dot_gain": (-0.12, 0.25),  # fraction of a module added around dark modules
    "speckle": (0.0, 0.02),
    "fibres": (2.0, 10.0),
    "mottle": (0.0, 0.08),
    "crease_at": (0.2, 0.8),  # where the fold crosses the card, fraction of its side
    "crease_angle": (0.0, 180.0),
    "crease_step": (0.05, 0.30),
    "crease_line": (0.10, 0.40),
    "crease_offset": (0.0, 0.6),  # modules
    "crease2_at": (0.2, 0.8),
    "crease2_angle": (0.0, 180.0),
    "bend": (0.0, 0.15),
    "bend_angle": (0.0, 180.0),
    "shadow_strength": (0.20, 0.60),
    "shadow_angle": (0.0, 360.0),
    "shadow_at": (-0.3, 0.3),
    "shadow_soft": (0.01, 0.15),  # edge width, fraction of the frame width
    "defocus": (0.5, 2.5),
    "motion": (2.0, 8.0),
    "motion_angle": (0.0, 180.0),
    "noise": (2.0, 8.0),
    "jpeg": (55.0, 90.0),
}
CHOICES = {"creases": (0, 0, 1, 1, 2), "shadow": (False, True),
           "blur": ("defocus",) * 7 + ("motion", "both", "both")}
KEEP = ("border", "paper", "ink", "dot_gain", "speckle", "fibres", "mottle", "crease_at",
        "crease_angle", "crease_step", "crease_line", "crease_offset", "crease2_at",
        "crease2_angle", "creases", "bend", "bend_angle")
MOVE = POSE_MOVE

PX = 8  # card image pixels per module


def draw(rng: np.random.Generator) -> dict:
    return draw_ranges(RANGES, rng) | draw_choices(CHOICES, rng)


def _print(matrix: np.ndarray, border: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """The card as printed, PX pixels per module: ink 1, paper 0 -> grey levels."""
    n = matrix.shape[0]
    outer = n + 2 * border
    ink = np.zeros((outer, outer), np.uint8)
    ink[border:border + n, border:border + n] = matrix
    ink = cv2.resize(ink, None, fx=PX, fy=PX, interpolation=cv2.INTER_NEAREST)
    grow = round(abs(p["dot_gain"]) * PX)
    if grow:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        ink = (cv2.dilate if p["dot_gain"] > 0 else cv2.erode)(ink, kernel)
    ink = ink.astype(np.float32)
    speck = rng.random(ink.shape) < p["speckle"]
    ink[speck] = 1 - ink[speck]
    ink = cv2.GaussianBlur(ink, (0, 0), 0.8)  # toner edges are soft
    side = ink.shape[0]
    mottle = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (side, side),
                        interpolation=cv2.INTER_CUBIC)
    paper = p["paper"] * (1 + p["mottle"] * np.clip(mottle, -2, 2) / 2)
    fibres = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 1.2)
    paper = paper + p["fibres"] * fibres / max(float(fibres.std()), 1e-6)
    return paper + (p["ink"] - paper) * ink


def render(text: str, p: dict, rng: np.random.Generator) -> np.ndarray:
    from bench.frames import qr_matrix
    matrix = qr_matrix(text)
    n = matrix.shape[0]
    border = round(p["border"])
    outer = n + 2 * border
    card = _print(matrix, border, p, rng)
    corners = place(p["size"] * HEIGHT, outer / n, p)
    to_card = cv2.getPerspectiveTransform(np.float32(corners), np.float32(
        [[0, 0], [outer, 0], [outer, outer], [0, outer]])).astype(np.float32)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    w = to_card[2, 0] * xs + to_card[2, 1] * ys + to_card[2, 2]
    u = (to_card[0, 0] * xs + to_card[0, 1] * ys + to_card[0, 2]) / w - outer / 2
    v = (to_card[1, 0] * xs + to_card[1, 1] * ys + to_card[1, 2]) / w - outer / 2
    shade = np.ones_like(u)

    # Bend: the card's arc length s shows as R sin(s / R) across the bend direction.
    a = math.radians(p["bend_angle"])
    du, dv = math.cos(a), math.sin(a)
    across = u * du + v * dv
    inside = np.ones(u.shape, bool)
    if p["bend"] > 0.005:
        half = p["bend"] * math.pi  # arc either side of the middle, radians
        radius = outer / 2 * (abs(du) + abs(dv)) / half  # the card's corners reach `half`
        ratio = across / radius
        s = radius * np.arcsin(np.clip(ratio, -1, 1))
        u, v = u + (s - across) * du, v + (s - across) * dv
        shade *= 1 - 0.5 * (1 - np.cos(s / radius)) - 0.15 * np.sin(s / radius)

    # Creases: a kink in the grid, one side darker, a dark line along the fold.
    for k in range(p["creases"]):
        at, angle = (p["crease_at"], p["crease_angle"]) if k == 0 else (p["crease2_at"],
                                                                        p["crease2_angle"])
        a = math.radians(angle)
        nu, nv = math.cos(a), math.sin(a)
        dist = u * nu + v * nv - (at - 0.5) * outer
        far = dist > 0
        u = np.where(far, u - p["crease_offset"] * nu, u)
        v = np.where(far, v - p["crease_offset"] * nv, v)
        shade *= np.where(far, 1 - p["crease_step"], 1.0)
        shade *= 1 - p["crease_line"] * np.exp(-(dist / 0.35) ** 2)

    mx, my = (u + outer / 2) * PX, (v + outer / 2) * PX
    inside &= (mx >= 0) & (mx < outer * PX) & (my >= 0) & (my < outer * PX)
    # The card image has more pixels than the frame shows: pre-filter against aliasing.
    minify = outer * PX / (p["size"] * HEIGHT * outer / n)
    card = gaussian_blur(card, 0.4 * minify)
    sampled = cv2.remap(card, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    frame = np.where(inside, sampled * shade, background(rng)).astype(np.float32)

    if p["shadow"]:
        a = math.radians(p["shadow_angle"])
        t = ((xs / WIDTH - 0.5) * math.cos(a) + (ys / HEIGHT - 0.5) * math.sin(a)
             - p["shadow_at"]) / p["shadow_soft"]
        frame *= 1 - p["shadow_strength"] / (1 + np.exp(-np.clip(t, -30, 30)))
    frame = np.clip(frame, 0, 255)

    blur = p["blur"]
    frame = gaussian_blur(frame, p["defocus"] if blur != "motion" else min(p["defocus"], 0.8))
    if blur != "defocus":
        frame = motion_blur(frame, p["motion"], p["motion_angle"])
    frame = frame + rng.normal(0, 1, frame.shape).astype(np.float32) * (
        p["noise"] * np.sqrt(np.maximum(frame, 1) / 128))
    return to_jpeg_gray(frame, p["jpeg"])

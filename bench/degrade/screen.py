"""A phone screen held up to the camera.

The code is drawn on the screen's own pixel grid (4-12 screen pixels per
module, each pixel lit over 55-95 % of its pitch, the dark gaps between them
visible), which the camera samples at 0.3-2 camera pixels per screen pixel:
that beat is the moiré. The screen is seen at a true perspective tilt (up to
25 degrees each way, rotated up to 30), inside the phone's dark bezel.

Light: the backlight sets the white level (120-255); an LCD leaks light
through its black pixels (0-30 % of white, an OLED none) and loses contrast
off-axis (up to 30 % at the largest tilt); the backlight may be uneven (up to
15 %). Reflections on the glass: a blurred mirror image of the room (0-35 % of
its brightness) on every frame, and on about half of them a bright window
or ceiling light (a soft-edged band, 60-220 grey levels).

Then the camera: defocus (Gaussian sigma 0.4-2.2 px), on 40 % of frames motion
(2-8 px, any direction), sensor noise (sigma 2-8 grey levels), JPEG 60-92.
"""

import math

import cv2
import numpy as np

from . import (HEIGHT, POSE_MOVE, POSE_RANGES, WIDTH, background, draw_choices, draw_ranges,
               gaussian_blur, motion_blur, place, to_jpeg_gray)

RANGES = POSE_RANGES | {
    "screen_px_per_module": (4.0, 12.0),
    "pixel_fill": (0.55, 0.95),  # lit fraction of the pixel pitch, per axis
    "margin": (2.0, 8.0),  # white screen around the code, modules
    "bezel": (2.0, 8.0),  # dark phone body around the screen, modules
    "white": (120.0, 255.0),  # backlight
    "black_leak": (0.0, 0.30),  # black pixels' light, fraction of white (LCD; OLED ~0)
    "angle_loss": (0.0, 0.30),  # contrast lost at the largest tilt
    "backlight_uneven": (0.0, 0.15),
    "reflection": (0.0, 0.35),  # the room mirrored in the glass
    "window_level": (60.0, 220.0),
    "window_width": (0.05, 0.30),  # fraction of the screen's side
    "window_at": (0.0, 1.0),
    "window_angle": (0.0, 180.0),
    "defocus": (0.4, 2.2),
    "motion": (2.0, 8.0),
    "motion_angle": (0.0, 180.0),
    "noise": (2.0, 8.0),
    "jpeg": (60.0, 92.0),
}
CHOICES = {"window": (False, True), "blur": ("defocus", "defocus", "defocus", "motion", "both")}
KEEP = ("screen_px_per_module", "pixel_fill", "margin", "bezel", "white", "black_leak",
        "angle_loss", "backlight_uneven")
MOVE = POSE_MOVE

SUPER = 1  # samples per camera pixel and axis (the grid's footprint is integrated analytically)


def draw(rng: np.random.Generator) -> dict:
    return draw_ranges(RANGES, rng) | draw_choices(CHOICES, rng)


def render(text: str, p: dict, rng: np.random.Generator) -> np.ndarray:
    from bench.frames import qr_matrix
    matrix = qr_matrix(text)
    n = matrix.shape[0]
    margin, bezel = round(p["margin"]), round(p["bezel"])
    outer = n + 2 * (margin + bezel)  # modules
    corners = place(p["size"] * HEIGHT, outer / n, p, SUPER)
    src = cv2.getPerspectiveTransform(np.float32(corners), np.float32(
        [[0, 0], [outer, 0], [outer, outer], [0, outer]]))  # frame sample -> module units

    # Every sample point of the (supersampled) frame mapped back onto the screen.
    ys, xs = np.mgrid[0:HEIGHT * SUPER, 0:WIDTH * SUPER].astype(np.float32)
    src = src.astype(np.float32)
    ys += 0.5
    xs += 0.5
    w = src[2, 0] * xs + src[2, 1] * ys + src[2, 2]
    u = (src[0, 0] * xs + src[0, 1] * ys + src[0, 2]) / w
    v = (src[1, 0] * xs + src[1, 1] * ys + src[1, 2]) / w
    on_phone = (u >= 0) & (u < outer) & (v >= 0) & (v < outer)
    on_screen = (u >= bezel) & (u < outer - bezel) & (v >= bezel) & (v < outer - bezel)
    mu = np.floor(u - bezel - margin).astype(np.int32)
    mv = np.floor(v - bezel - margin).astype(np.int32)
    in_code = (mu >= 0) & (mu < n) & (mv >= 0) & (mv < n)
    dark = np.zeros(u.shape, bool)
    dark[in_code] = matrix[mv[in_code], mu[in_code]]
    spm = p["screen_px_per_module"]
    # Each camera pixel integrates the screen over its footprint (one camera pixel's worth of
    # screen pixels): a box filter, which passes the pixel grid's frequency at |sinc| of the
    # footprint. What survives is point-sampled here, so it aliases: the moiré.
    footprint = spm * n / (p["size"] * HEIGHT * SUPER)  # screen pixels per sample
    depth = abs(float(np.sinc(footprint)))
    fill = p["pixel_fill"]
    profile_u = np.abs((u * spm) % 1.0 - 0.5) < fill / 2
    profile_v = np.abs((v * spm) % 1.0 - 0.5) < fill / 2
    gap_level = 0.25
    mean = gap_level + (1 - gap_level) * fill * fill
    lit = gap_level + (1 - gap_level) * (profile_u & profile_v)
    grid = (mean + depth * (lit - mean)) / mean

    white = p["white"]
    tilt = (abs(p["yaw"]) + abs(p["pitch"])) / 50
    contrast = 1 - p["angle_loss"] * tilt
    black = white * p["black_leak"]
    black = black + (white - black) * (1 - contrast) / 2
    white = white - (white - black) * (1 - contrast) / 2
    ramp = 1 - p["backlight_uneven"] * np.clip((u + v) / (2 * outer), 0, 1)
    screen = np.where(dark, black, white) * ramp * grid
    bezel_level = 15.0
    phone = np.where(on_screen, screen, bezel_level)
    glass = np.zeros_like(u)
    # The room mirrored in the glass: low-frequency, moves with the phone.
    room = cv2.GaussianBlur(background(rng), (0, 0), 25)
    if SUPER != 1:
        room = cv2.resize(room, (WIDTH * SUPER, HEIGHT * SUPER), interpolation=cv2.INTER_LINEAR)
    glass += p["reflection"] * room
    if p["window"]:
        a = math.radians(p["window_angle"])
        across = (u / outer - 0.5) * math.cos(a) + (v / outer - 0.5) * math.sin(a)
        edge = (p["window_at"] - 0.5) * 0.8
        half = p["window_width"] / 2
        soft = 0.02
        band = np.clip((half - np.abs(across - edge)) / soft + 0.5, 0, 1)
        glass += p["window_level"] * band
    scene = np.where(on_phone, phone + glass, 0).astype(np.float32)
    bg = background(rng)
    if SUPER != 1:
        bg = cv2.resize(bg, (WIDTH * SUPER, HEIGHT * SUPER), interpolation=cv2.INTER_LINEAR)
    scene = np.where(on_phone, scene, bg)
    frame = cv2.resize(scene, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) if SUPER != 1 \
        else scene
    frame = np.clip(frame, 0, 255)

    blur = p["blur"]
    frame = gaussian_blur(frame, p["defocus"] if blur != "motion" else min(p["defocus"], 0.8))
    if blur != "defocus":
        frame = motion_blur(frame, p["motion"], p["motion_angle"])
    frame = frame + rng.normal(0, 1, frame.shape).astype(np.float32) * (
        p["noise"] * np.sqrt(np.maximum(frame, 1) / 128))
    return to_jpeg_gray(frame, p["jpeg"])

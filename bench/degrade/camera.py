"""The camera itself: a clean code (a plain card or screen) spoilt by the capture.

- Exposure: the scene in linear light times a gain of 0.35-2.5 (under- to
  overexposed; highlights clip at the sensor's full well), the ISP's gamma back.
- Rolling shutter (two frames in three; the rest a global shutter): rows are
  read one after the other while the code moves, so the code shears by up to
  40 px sideways and stretches or squeezes up to 8 % vertically over the
  frame's height; motion during the exposure smears it (0-8 px).
- Lens: defocus (Gaussian sigma 0.4-2.4 px), vignetting (0-40 % in the corners).
- Sensor: a Bayer mosaic (RGGB) under a tinted light (each channel's gain
  0.6-1.4), shot noise (full well 2,000-20,000 electrons before the gain, so
  the darker the exposure the noisier), read noise (ISO 100-3200: sigma 0.5-6
  grey levels) and row banding (0-2 grey levels).
- ISP: bilinear demosaic, white balance, denoising (Gaussian sigma 0-1.2),
  sharpening (unsharp mask, amount 0-1.5: halos), and the camera's own JPEG
  (quality 40-90, colour with 4:2:0 chroma), decoded to grey by the kiosk.

The code sits on a card of white 120-240 / black 10-70 grey levels in the same
pose ranges as every model.
"""

import cv2
import numpy as np

from . import (HEIGHT, POSE_MOVE, POSE_RANGES, WIDTH, background, draw_choices, draw_ranges,
               gaussian_blur, homography, motion_blur, place)

RANGES = POSE_RANGES | {
    "border": (3.0, 8.0),
    "white": (120.0, 240.0),
    "black": (10.0, 70.0),
    "gain": (0.35, 2.5),  # exposure, linear light
    "shear": (-40.0, 40.0),  # rolling shutter: px sideways from the top row to the bottom
    "stretch": (-0.08, 0.08),  # rolling shutter: vertical motion over the readout
    "smear": (0.0, 8.0),  # motion during the exposure, px
    "smear_angle": (0.0, 180.0),
    "defocus": (0.4, 2.4),
    "vignette": (0.0, 0.40),
    "tint_r": (0.6, 1.4),
    "tint_b": (0.6, 1.4),
    "full_well": (2000.0, 20000.0),  # electrons at a gain of 1
    "read_noise": (0.5, 6.0),  # grey levels (ISO)
    "banding": (0.0, 2.0),
    "denoise": (0.0, 1.2),
    "sharpen": (0.0, 1.5),
    "jpeg": (40.0, 90.0),
}
CHOICES = {"shutter": ("global", "rolling", "rolling")}
KEEP = ("border", "white", "black", "vignette", "tint_r", "tint_b", "full_well", "read_noise",
        "denoise", "sharpen")
MOVE = POSE_MOVE | {"gain": 0.15}


def draw(rng: np.random.Generator) -> dict:
    return draw_ranges(RANGES, rng) | draw_choices(CHOICES, rng)


def render(text: str, p: dict, rng: np.random.Generator) -> np.ndarray:
    from bench.frames import qr_matrix
    matrix = qr_matrix(text)
    n = matrix.shape[0]
    border = round(p["border"])
    outer = n + 2 * border
    card = np.full((outer, outer), p["white"], np.float32)
    card[border:border + n, border:border + n] = np.where(matrix, p["black"], p["white"])
    px = 8
    card = cv2.resize(card, None, fx=px, fy=px, interpolation=cv2.INTER_NEAREST)
    corners = place(p["size"] * HEIGHT, outer / n, p, 2)
    h = homography(card.shape[0], corners)
    size = (WIDTH * 2, HEIGHT * 2)
    warped = cv2.warpPerspective(card, h, size, flags=cv2.INTER_LINEAR, borderValue=-1)
    scene = cv2.resize(background(rng), size, interpolation=cv2.INTER_LINEAR)
    scene = np.where(warped >= 0, warped, scene)
    scene = cv2.resize(scene, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)

    if p["shutter"] == "rolling":
        # Row y is read y / HEIGHT of a readout later: the code has moved by then.
        ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        t = ys / HEIGHT
        scene = cv2.remap(scene, xs - p["shear"] * t, ys - p["stretch"] * HEIGHT * t,
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    scene = motion_blur(scene, p["smear"], p["smear_angle"])
    scene = gaussian_blur(scene, p["defocus"])

    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    r2 = ((xx - WIDTH / 2) ** 2 + (yy - HEIGHT / 2) ** 2) / ((WIDTH / 2) ** 2 + (HEIGHT / 2) ** 2)
    linear = (np.clip(scene, 0, 255) / 255) ** 2.2 * (1 - p["vignette"] * r2) * p["gain"]

    # The Bayer mosaic: each photosite sees one colour channel of a tinted light.
    tint = {"r": p["tint_r"], "g": 1.0, "b": p["tint_b"]}
    gains = np.ones_like(linear)  # RGGB: red at even rows and columns, blue at odd ones
    gains[0::2, 0::2], gains[1::2, 1::2] = tint["r"], tint["b"]
    mosaic = np.clip(linear * gains, 0, None)
    electrons = mosaic * p["full_well"]
    electrons = electrons + rng.normal(0, 1, electrons.shape).astype(np.float32) * np.sqrt(
        np.maximum(electrons, 0))
    raw = np.clip(electrons / p["full_well"], 0, 1) * 255
    raw += rng.normal(0, p["read_noise"], raw.shape).astype(np.float32)
    raw += rng.normal(0, p["banding"], (HEIGHT, 1)).astype(np.float32)
    raw = np.clip(raw, 0, 255).astype(np.uint8)

    # The ISP: demosaic, white balance, gamma, denoise, sharpen, JPEG.
    bgr = cv2.cvtColor(raw, cv2.COLOR_BayerRG2BGR).astype(np.float32) / 255
    bgr[:, :, 2] /= tint["r"]
    bgr[:, :, 0] /= tint["b"]
    bgr = np.clip(bgr, 0, 1) ** (1 / 2.2) * 255
    bgr = gaussian_blur(bgr, p["denoise"])
    if p["sharpen"] > 0:
        bgr = cv2.addWeighted(bgr, 1 + p["sharpen"], cv2.GaussianBlur(bgr, (0, 0), 1.2),
                              -p["sharpen"], 0)
    img = np.clip(bgr + 0.5, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(p["jpeg"])])
    return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)

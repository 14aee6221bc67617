"""Camera-like frames of real HC1 codes, for the decode benchmark, tests and demos.

Every frame is 1280x960 grey and holds one real HC1 certificate minted by a
test issuer, rendered the way a kiosk camera sees a phone or a printed card:

- the QR symbol (error correction Q, as the EU DCC spec recommends and the EU
  test data uses; 470-650 characters give QR versions 17-20) spans 35-80 % of
  the frame height, on a card with a 4-7 module light border, in front of a
  cluttered background;
- rotation within +-30 degrees (reduced only when a large code would not fit
  the frame at that angle), perspective skew up to 12 % of the code's side;
- paper/screen contrast (down to 50 grey levels) and uneven lighting vary;
- a glare spot, with a veil of reflected light around it, on a third of the
  frames;
- blur: 40 % defocus (a uniform disk, sigma 0.5-2.5 px), 40 % motion (3-9 px,
  any direction, with a slight defocus, sigma 0.3-1), 20 % both;
- sensor noise (sigma 3-10 grey levels at mid-grey), JPEG quality 50-90.

This is harder than the issue's minimum (Gaussian defocus *or* motion): with
only that (and shorter payloads), zxing-cpp read 92 % of the frames, far above the reference set's
62 %; see docs/camera.md.

A set is reproducible: frame i of seed s is the same image on every run with
the same OpenCV (the bench issuer's key is derived from a constant and it
signs deterministically, RFC 6979), so figures can be compared between runs
and machines.

Bursts are three different frames of the same code, as three consecutive
camera frames: same payload, size within 5 %, pose within a few degrees, and
blur, glare, noise and JPEG drawn anew for each frame.

    python -m bench.frames --out DIR --n 100 [--seed 1] [--bursts 0]

writes DIR/frame-0000.jpg ... and DIR/expected.txt (file name, tab, HC1 text),
a folder that the kiosk's `folder` frame source can play.
"""

import argparse
import datetime as dt
import hashlib
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 1280, 960
SUPERSAMPLE = 2

NAMES = [("Nguyễn", "Văn An"), ("Trần", "Thị Bích Ngọc"), ("Lê", "Minh"),
         ("Phạm", "Hoàng Long"), ("Huỳnh", "Thị Thu Thảo"), ("Võ", "Quốc Bảo"),
         ("Đặng", "Thị Mai Phương"), ("Bùi", "Đức Anh"), ("Đỗ", "Ngọc Hân"),
         ("Hồ", "Thị Kim Liên"), ("Ngô", "Văn Thành Trung"), ("Dương", "Tú")]

# Certificate issuer texts as real certificates carry them (they make codes denser).
ISSUERS = ["Ministry of Health", "Ministry of Health of Viet Nam",
           "Bo Y te - Ministry of Health of the Socialist Republic of Viet Nam",
           "So Y te Thanh pho Ho Chi Minh - HCMC Department of Health",
           "Cuc Y te du phong - General Dept. of Preventive Medicine, Ministry of Health"]


# --- the bench issuer: a real test issuer that signs deterministically ----------

class _DeterministicKey:
    """An EC private key whose ECDSA signatures are deterministic (RFC 6979)."""

    def __init__(self, key):
        self._key = key
        self.curve = key.curve

    def public_key(self):
        return self._key.public_key()

    def sign(self, data, algorithm):
        from cryptography.hazmat.primitives.asymmetric import ec
        return self._key.sign(data, ec.ECDSA(algorithm.algorithm, deterministic_signing=True))


@lru_cache(maxsize=1)
def bench_issuer():
    """The provisioning test issuer with a fixed ES256 key and certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from provisioning.issuer import Issuer

    secret = int.from_bytes(hashlib.sha256(b"greengate bench issuer").digest(), "big")
    key = ec.derive_private_key(secret % (2**255), ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "GreenGate Bench Issuer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x6E6E)
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
            .not_valid_after(dt.datetime(2035, 1, 1, tzinfo=dt.timezone.utc))
            .sign(key, hashes.SHA256(), ecdsa_deterministic=True))
    return Issuer(_DeterministicKey(key), cert, "VN")


def mint(rng: np.random.Generator) -> str:
    """A real HC1 certificate with a varied holder, type and identifier."""
    issuer = bench_issuer()
    family, given = NAMES[rng.integers(len(NAMES))]
    dob = f"{rng.integers(1940, 2010)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    ci = "URN:UVCI:01:VN:" + rng.bytes(12).hex().upper()
    person = {"family": family, "given": given, "dob": dob, "ci": ci}
    kind = rng.choice(["v", "v", "v", "v", "t", "r"])
    if kind == "v":
        dose = int(rng.integers(1, 4))
        dcc = issuer.vaccination(date="2021-09-01", dose=dose, of=max(dose, 2), **person)
    elif kind == "t":
        dcc = issuer.test(sampled="2021-10-04T09:00:00Z", **person)
    else:
        dcc = issuer.recovery(first_positive="2021-07-01", **person)
    entry = dcc[kind][0]
    entry["is"] = ISSUERS[rng.integers(len(ISSUERS))]
    return issuer.mint(dcc, iat="2021-09-01", exp="2022-09-01")


def qr_matrix(text: str, error: str = "q") -> np.ndarray:
    """The QR symbol as a bool array, True = dark module, no quiet zone."""
    import segno
    qr = segno.make(text, error=error, micro=False)
    return np.array([list(row) for row in qr.matrix_iter(scale=1, border=0)], dtype=bool)


# --- scene parameters ------------------------------------------------------------

@dataclass
class Scene:
    size: float  # symbol side / frame height
    angle: float  # degrees
    skew: float  # perspective: the far edge is this much shorter (fraction of side)
    skew_dir: float  # which edge is far (radians)
    cx: float  # code centre, fraction of the free room
    cy: float
    border: int  # light modules around the symbol (quiet zone + card margin)
    white: float
    black: float
    defocus: float  # sigma in px of the defocus disk (its radius is 2 sigma)
    motion: float  # length in px of the motion path (0: none)
    motion_angle: float
    glare: bool
    glare_at: tuple
    glare_sigma: float  # fraction of the symbol side
    glare_peak: float
    noise: float
    jpeg: int
    light: tuple  # illumination gradient: strength, direction


def draw_scene(rng: np.random.Generator) -> Scene:
    # Defocus blur, or motion blur (with the little defocus a fixed lens always has), or both.
    blur = rng.choice(["defocus", "motion", "both"], p=[0.4, 0.4, 0.2])
    return Scene(
        size=rng.uniform(0.35, 0.80), angle=rng.uniform(-30, 30),
        skew=rng.uniform(0, 0.12), skew_dir=rng.uniform(0, 2 * math.pi),
        cx=rng.random(), cy=rng.random(), border=int(rng.integers(4, 8)),
        white=rng.uniform(110, 245), black=rng.uniform(5, 90),
        defocus=rng.uniform(0.3, 1.0) if blur == "motion" else rng.uniform(0.5, 2.5),
        motion=0.0 if blur == "defocus" else rng.uniform(3, 9),
        motion_angle=rng.uniform(0, 180), glare=rng.random() < 1 / 3,
        glare_at=(rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)),
        glare_sigma=rng.uniform(0.06, 0.18), glare_peak=rng.uniform(150, 320),
        noise=rng.uniform(3, 10), jpeg=int(rng.integers(50, 91)),
        light=(rng.uniform(0, 0.45), rng.uniform(0, 2 * math.pi)))


def jitter(scene: Scene, rng: np.random.Generator) -> Scene:
    """The next camera frame of the same code: pose moves a little, optics and noise anew."""
    fresh = draw_scene(rng)
    fresh.size = float(np.clip(scene.size * rng.uniform(0.95, 1.05), 0.35, 0.80))
    fresh.angle = float(np.clip(scene.angle + rng.uniform(-3, 3), -30, 30))
    fresh.skew = float(np.clip(scene.skew + rng.uniform(-0.02, 0.02), 0, 0.12))
    fresh.skew_dir = scene.skew_dir + rng.uniform(-0.2, 0.2)
    fresh.cx = float(np.clip(scene.cx + rng.uniform(-0.05, 0.05), 0, 1))
    fresh.cy = float(np.clip(scene.cy + rng.uniform(-0.05, 0.05), 0, 1))
    fresh.border, fresh.white, fresh.black = scene.border, scene.white, scene.black
    fresh.light = scene.light
    return fresh


# --- rendering ----------------------------------------------------------------------

def _quad(scene: Scene, side: float, angle: float) -> np.ndarray:
    """Corners (tl, tr, br, bl) of the symbol centred at 0, rotated and keystoned."""
    h = side / 2
    pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]], dtype=np.float64)
    # Keystone: points on the far side move towards the axis.
    far = np.array([math.cos(scene.skew_dir), math.sin(scene.skew_dir)])
    along = pts @ far / h  # -1 .. 1 (up to sqrt 2 at corners)
    shrink = 1 - scene.skew * np.clip((along + 1) / 2, 0, 1)
    perp = np.array([-far[1], far[0]])
    pts = np.outer(pts @ far, far) + np.outer((pts @ perp) * shrink, perp)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T


def _placement(scene: Scene, n_modules: int) -> tuple[np.ndarray, float]:
    """Symbol corners in frame pixels; the angle shrinks only if the card would not fit."""
    side = scene.size * HEIGHT
    card = side * (n_modules + 2 * scene.border) / n_modules
    angle = scene.angle
    while True:
        corners = _quad(scene, card, angle)
        extent = corners.max(axis=0) - corners.min(axis=0)
        if extent[0] <= WIDTH - 4 and extent[1] <= HEIGHT - 4 or abs(angle) < 0.5:
            break
        angle *= 0.9
    lo = -corners.min(axis=0) + 2
    room = np.array([WIDTH, HEIGHT]) - extent - 4
    centre = lo + np.maximum(room, 0) * np.array([scene.cx, scene.cy])
    return centre, angle


def _background(rng: np.random.Generator) -> np.ndarray:
    small = rng.uniform(30, 200, size=(6, 8)).astype(np.float32)
    bg = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 9))):  # clutter: edges, shelves, a hand
        p1 = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        p2 = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        value = float(rng.uniform(0, 255))
        if rng.random() < 0.5:
            cv2.rectangle(bg, p1, p2, value, -1)
        else:
            cv2.line(bg, p1, p2, value, int(rng.integers(2, 20)))
    texture = rng.normal(0, 6, size=(HEIGHT // 4, WIDTH // 4)).astype(np.float32)
    bg += cv2.resize(texture, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    return bg


def _disk_kernel(radius: float) -> np.ndarray:
    """A lens's defocus: a uniform disk (anti-aliased), normalised. sigma = radius / 2."""
    up = 8
    size = (int(math.ceil(radius)) * 2 + 3) | 1
    big = np.zeros((size * up, size * up), np.float32)
    c = size * up / 2
    cv2.circle(big, (int(round(c * 16)), int(round(c * 16))), int(round(radius * up * 16)), 1.0,
               -1, cv2.LINE_AA, 4)
    kernel = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A straight motion path `length` pixels long (anti-aliased), normalised."""
    up = 8
    size = (int(math.ceil(length)) + 2) | 1
    big = np.zeros((size * up, size * up), np.float32)
    c = size * up / 2
    half = length * up / 2
    dx, dy = math.cos(math.radians(angle)) * half, math.sin(math.radians(angle)) * half
    shift = 4  # sub-pixel line ends
    cv2.line(big, (int(round((c - dx) * 16)), int(round((c - dy) * 16))),
             (int(round((c + dx) * 16)), int(round((c + dy) * 16))), 1.0, up, cv2.LINE_AA, shift)
    kernel = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def render(text: str, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One 1280x960 uint8 grey camera frame showing `text` as a QR code."""
    return cv2.imdecode(np.frombuffer(render_jpeg(text, scene, rng), np.uint8),
                        cv2.IMREAD_GRAYSCALE)


def render_jpeg(text: str, scene: Scene, rng: np.random.Generator) -> bytes:
    """The same frame as the camera's JPEG file (quality scene.jpeg)."""
    matrix = qr_matrix(text)
    n = matrix.shape[0]
    b = scene.border
    card = np.ones((n + 2 * b, n + 2 * b), np.float32)
    card[b:b + n, b:b + n] = ~matrix
    black = min(scene.black, scene.white - 50)  # a phone screen at its dimmest
    card = card * (scene.white - black) + black
    scale = 8  # source pixels per module
    src = cv2.resize(card, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    centre, angle = _placement(scene, n)
    side_px = scene.size * HEIGHT * (n + 2 * b) / n
    dst = (_quad(scene, side_px, angle) + centre) * SUPERSAMPLE
    s = src.shape[0]
    h = cv2.getPerspectiveTransform(np.float32([[0, 0], [s, 0], [s, s], [0, s]]), np.float32(dst))
    size = (WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE)
    warped = cv2.warpPerspective(src, h, size, flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpPerspective(np.ones_like(src), h, size, flags=cv2.INTER_LINEAR, borderValue=0)
    warped = cv2.resize(warped, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    frame = _background(rng) * (1 - mask) + warped

    # Uneven light across the frame, then glare (a specular spot on screen or laminate).
    strength, direction = scene.light
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    ramp = (xx / WIDTH - 0.5) * math.cos(direction) + (yy / HEIGHT - 0.5) * math.sin(direction)
    frame *= 1 - strength * (ramp + 0.5)
    if scene.glare:
        sym = dst / SUPERSAMPLE  # card corners; glare lands on the symbol part
        inner = b / (n + 2 * b)
        u = inner + scene.glare_at[0] * (1 - 2 * inner)
        v = inner + scene.glare_at[1] * (1 - 2 * inner)
        gx, gy = ((1 - u) * (1 - v) * sym[0] + u * (1 - v) * sym[1] + u * v * sym[2]
                  + (1 - u) * v * sym[3])
        sigma = scene.glare_sigma * scene.size * HEIGHT
        r2 = ((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sigma * sigma)
        spot = np.exp(-r2)
        # A specular spot, and the veil of reflected light around it that lowers the contrast.
        frame += scene.glare_peak * spot + 0.25 * scene.glare_peak * np.sqrt(spot)
    frame = np.clip(frame, 0, 255)

    frame = cv2.filter2D(frame, -1, _disk_kernel(2 * scene.defocus))
    if scene.motion:
        frame = cv2.filter2D(frame, -1, _motion_kernel(scene.motion, scene.motion_angle))
    frame += rng.normal(0, 1, frame.shape).astype(np.float32) * (
        scene.noise * np.sqrt(np.maximum(frame, 1) / 128))
    frame = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, scene.jpeg])
    return jpeg.tobytes()


# --- sets ----------------------------------------------------------------------------

def _rng(seed: int, kind: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"frame": 0, "burst": 1}[kind], i])


def frame_jpeg(seed: int, i: int) -> tuple[bytes, str, Scene]:
    """Frame i of set `seed` as the camera's JPEG file, its HC1 text and its scene."""
    rng = _rng(seed, "frame", i)
    text = mint(rng)
    scene = draw_scene(rng)
    return render_jpeg(text, scene, rng), text, scene


def _decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)


def frame(seed: int, i: int) -> tuple[np.ndarray, str, Scene]:
    jpeg, text, scene = frame_jpeg(seed, i)
    return _decode(jpeg), text, scene


def generate(n: int, seed: int = 1) -> list[tuple[np.ndarray, str]]:
    """n camera-like frames: (1280x960 uint8 grey frame, expected HC1 text)."""
    return [frame(seed, i)[:2] for i in range(n)]


def burst_jpegs(seed: int, i: int, length: int = 3) -> tuple[list[bytes], str]:
    rng = _rng(seed, "burst", i)
    text = mint(rng)
    scene = draw_scene(rng)
    jpegs = []
    for _ in range(length):
        jpegs.append(render_jpeg(text, scene, rng))
        scene = jitter(scene, rng)
    return jpegs, text


def bursts(n: int, seed: int = 1, length: int = 3) -> list[tuple[list[np.ndarray], str]]:
    """n bursts of `length` consecutive frames of one code: (frames, expected text)."""
    out = []
    for i in range(n):
        jpegs, text = burst_jpegs(seed, i, length)
        out.append(([_decode(j) for j in jpegs], text))
    return out


def write_folder(out: Path, n: int, seed: int, n_bursts: int = 0) -> int:
    """The set as JPEG files (the very bytes the camera model produced) + expected.txt."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        jpeg, text, _ = frame_jpeg(seed, i)
        name = f"frame-{i:04d}.jpg"
        (out / name).write_bytes(jpeg)
        lines.append(f"{name}\t{text}")
    for i in range(n_bursts):
        jpegs, text = burst_jpegs(seed, i)
        for j, jpeg in enumerate(jpegs):
            name = f"burst-{i:04d}-{j}.jpg"
            (out / name).write_bytes(jpeg)
            lines.append(f"{name}\t{text}")
    (out / "expected.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frames",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to write JPEGs into")
    parser.add_argument("--n", type=int, default=100, help="single frames (default 100)")
    parser.add_argument("--bursts", type=int, default=0, help="3-frame bursts (default 0)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    count = write_folder(args.out, args.n, args.seed, args.bursts)
    print(f"wrote {count} frames and expected.txt to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""QR decoders behind one interface: a greyscale frame in, decoded texts out.

Every decoder has a `name` and `decode(gray) -> list[str]` (QR codes only, each
text once, in the order found; [] when there is none). Three kinds:

- `PyzbarDecoder`: ZBar through pyzbar (needs the libzbar0 system library);
- `ZxingDecoder`: zxing-cpp (a main dependency; where its wheel cannot be
  installed the constructor raises `DecoderUnavailable` and `auto` falls back);
- `CascadeDecoder`: one of the two on the whole frame first (the fast path: a
  frame it reads costs just that); only when that finds nothing, and only when
  the frame holds a large patch of fine texture (a QR code, even a blurred
  one), it works on that patch: a few stages every missed frame runs, then a
  rotation of expensive stages: deconvolution (Wiener) with candidate blur
  kernels, lifting the mid-greys (against a printed card's dot gain),
  sharpening, enlarging.
  It is stateful: each frame gets a time budget, runs the stages that fit, and
  the next frame of the same held-up code goes on where it stopped.

`make_decoder(backend)` picks one for the kiosk: "auto" is the cascade over
zxing-cpp when installed, else over pyzbar; "zxing" and "pyzbar" are the
cascade over that backend. docs/camera.md has the figures behind the choice
(`python -m bench decode`).
"""

import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyzbar", "zxing")


class DecoderUnavailable(RuntimeError):
    """The decoding library is not installed."""


def as_gray(image) -> np.ndarray:
    """A C-contiguous 2-D uint8 array from a grey or BGR array or a PIL image."""
    if not hasattr(image, "shape"):  # PIL
        image = np.asarray(image.convert("L"))
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        else:
            import cv2
            code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _unique(texts) -> list[str]:
    return list(dict.fromkeys(texts))


class PyzbarDecoder:
    name = "pyzbar"

    def __init__(self):
        try:
            from pyzbar import pyzbar  # needs the libzbar0 system library
        except ImportError as exc:  # pyzbar raises ImportError when libzbar is missing
            raise DecoderUnavailable(f"pyzbar cannot load ZBar: {exc} (install libzbar0)") from exc
        self._decode = pyzbar.decode
        self._qr = [pyzbar.ZBarSymbol.QRCODE]

    def decode(self, image) -> list[str]:
        """image: a greyscale numpy array (or a PIL image, or a BGR array)."""
        gray = as_gray(image)
        if gray.size == 0:
            return []
        height, width = gray.shape
        texts = []
        for symbol in self._decode((gray.tobytes(), width, height), symbols=self._qr):
            try:
                texts.append(symbol.data.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(symbol.data.decode("latin-1"))
        return _unique(texts)


class ZxingDecoder:
    name = "zxing"

    def __init__(self, try_invert: bool = False):
        """try_invert: also look for light-on-dark codes (costs about a third more time)."""
        try:
            import zxingcpp
        except ImportError as exc:
            raise DecoderUnavailable("zxing-cpp is not installed (pip install zxing-cpp)") from exc
        self._zx = zxingcpp
        # QR codes only: in zxing-cpp 3 "QRCode" also means Micro QR and rMQR; HC1 is model 2.
        formats = zxingcpp.BarcodeFormat
        self._qr = getattr(formats, "QRCodeModel2", formats.QRCode)
        self.try_invert = try_invert

    def decode(self, image, *, try_invert: bool | None = None) -> list[str]:
        gray = as_gray(image)
        if gray.size == 0:
            return []
        invert = self.try_invert if try_invert is None else try_invert
        found = self._zx.read_barcodes(gray, formats=self._qr, try_invert=invert)
        return _unique(b.text for b in found if b.valid)


def zxing_available() -> bool:
    try:
        import zxingcpp  # noqa: F401
    except ImportError:
        return False
    return True


# --- the cascade -------------------------------------------------------------------------

LOCATE_FLOOR_PERCENTILE = 30


def locate(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) around the largest patch of fine texture, or None.

    A QR code, even blurred, is a large square of dense high-frequency detail;
    smooth walls, skin and sensor noise are not. The measure is the mean
    absolute difference from a 7x7 local mean at half resolution, pooled into
    8x8 cells and compared with the frame's own noise floor: its median, or, when that
    finds nothing, its 30th percentile. A code held close (a card filling the frame)
    covers more than half the cells, and the median is then the code's own texture; the
    median stays first because the lower floor lets a located code's box spread into a
    textured background (a larger patch makes every stage slower).
    """
    import cv2
    height, width = gray.shape
    if min(height, width) < 160:
        return (0, 0, width, height)
    half = cv2.resize(gray, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    half = half.astype(np.float32)
    detail = np.abs(half - cv2.blur(half, (7, 7)))
    cells = cv2.resize(detail, (width // 8, height // 8), interpolation=cv2.INTER_AREA)
    cells = cv2.blur(cells, (5, 5))
    for floor in (float(np.median(cells)), float(np.percentile(cells, LOCATE_FLOOR_PERCENTILE))):
        mask = (cells > max(4.0, 2.5 * floor)).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        if count < 2:
            continue
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h, area = (int(v) for v in stats[best])
        # Smaller than a code 25 % of the frame height (the kiosk sees 35-80 %): not a code.
        if area * 64 >= (0.25 * height) ** 2:
            break
    else:
        return None
    mx, my = w // 10 + 1, h // 10 + 1
    return (max(0, (x - mx) * 8), max(0, (y - my) * 8),
            min(width, (x + w + mx) * 8), min(height, (y + h + my) * 8))


def sharpen(gray: np.ndarray, sigma: float = 2.5, amount: float = 1.5) -> np.ndarray:
    """Unsharp mask: restores some of the contrast that defocus and motion took."""
    import cv2
    return cv2.addWeighted(gray, 1 + amount, cv2.GaussianBlur(gray, (0, 0), sigma), -amount, 0)


def lighten(gray: np.ndarray, gamma: float = 0.5) -> np.ndarray:
    """Contrast stretched (2nd to 98th percentile) and lifted by `gamma` < 1: grey edge
    pixels turn light, so dark modules that grew into their light neighbours (a printed
    card's dot gain, blur on a dark, dim code) shrink back toward their true width before
    the backend's binariser draws the line between them."""
    import cv2
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().cumsum()
    lo = int(np.searchsorted(hist, 0.02 * hist[-1]))
    hi = int(np.searchsorted(hist, 0.98 * hist[-1]))
    x = np.clip((np.arange(256, dtype=np.float32) - lo) / max(hi - lo, 1), 0, 1)
    return cv2.LUT(gray, (255 * x ** gamma + 0.5).astype(np.uint8))


def enlarge(gray: np.ndarray, factor: float = 1.5) -> np.ndarray:
    """Bicubic upscaling: finer sampling of small, soft modules."""
    import cv2
    return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


# --- deblurring -----------------------------------------------------------------------------

# A candidate blur kernel, in frame pixels: ("g", sigma) a defocus (Gaussian), ("m", length,
# angle in degrees) a straight motion path. Each is undone by a Wiener filter: in frequency,
# H / (H^2 + nsr), with H the kernel's (real, symmetric) transfer function and nsr the noise-
# to-signal ratio that keeps it from amplifying noise and JPEG blocks where H is small. A
# Gaussian is separable, so its filter is applied as one 1-D Wiener filter per axis (each
# regularised on its own); a motion path's along the path only. As short spatial filters
# (7-25 taps), that costs 1-2 ms on a code patch where a 2-D FFT deconvolution cost 10-25 ms,
# and on the corpus's TUNE frames it recovered more (bench/corpus.py, docs/camera.md).
DEBLUR_NSR = 0.1


@lru_cache(maxsize=64)
def deblur_taps(kernel: tuple, nsr: float = DEBLUR_NSR) -> np.ndarray:
    """The 1-D Wiener filter for `kernel` as spatial taps (odd length, sum 1)."""
    n = 256
    freq = np.fft.fftfreq(n)
    if kernel[0] == "g":
        sigma = kernel[1]
        otf = np.exp(-2 * np.pi ** 2 * sigma * sigma * freq * freq)
        half = max(3, int(round(3 * sigma)))
    elif kernel[0] == "m":
        length = kernel[1]
        otf = np.sinc(length * freq)
        half = int(round(length)) + 3
    else:
        raise ValueError(f"unknown blur kernel {kernel!r}")
    taps = np.real(np.fft.ifft(otf / (otf * otf + nsr)))
    taps = np.roll(taps, half)[:2 * half + 1]
    return (taps / taps.sum()).astype(np.float32)


def _rotate(gray: np.ndarray, angle: float) -> np.ndarray:
    """`gray` turned by `angle` degrees on a canvas large enough to keep its corners."""
    import cv2
    height, width = gray.shape
    m = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    new_w, new_h = int(height * sin + width * cos) + 1, int(height * cos + width * sin) + 1
    m[0, 2] += new_w / 2 - width / 2
    m[1, 2] += new_h / 2 - height / 2
    return cv2.warpAffine(gray, m, (new_w, new_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def deblur(gray: np.ndarray, kernel: tuple, nsr: float = DEBLUR_NSR) -> np.ndarray:
    """`gray` deconvolved (Wiener) with a candidate kernel. A motion path that is neither
    horizontal nor vertical is undone on the image turned to make it horizontal: the result
    is turned too, which a QR decoder does not mind."""
    import cv2
    taps = deblur_taps(kernel, nsr)
    one = np.ones(1, np.float32)
    image = gray
    if kernel[0] == "g":
        kx, ky = taps, taps
    else:
        angle = kernel[2] % 180
        if angle == 90:
            kx, ky = one, taps
        else:
            kx, ky = taps, one
            if angle:
                image = _rotate(gray, angle)  # image y points down: this turns the path level
    out = cv2.sepFilter2D(image.astype(np.float32), -1, kx, ky, borderType=cv2.BORDER_REFLECT)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --- the cascade -------------------------------------------------------------------------------

# The expensive stages, in the order tried after the whole frame finds nothing. The order is
# their yield on the corpus's TUNE seeds (bench/corpus.py): most frames recovered (that the
# stages before had not) per millisecond first. "sharpened" and "enlarged" work on the located
# patch; "deblur KERNEL" deconvolves it with one candidate kernel (g: Gaussian sigma, m: motion
# length/angle, in frame pixels; nsr 0.1 unless ",NSR" follows); " lightened" after a stage
# (or alone: the patch itself) lifts its mid-greys (lighten(), against dot gain).
ROTATION = ("deblur g2,0.2", "deblur g2,0.03", "deblur g2.5", "lightened", "sharpened",
            "deblur g3", "enlarged", "deblur g2 lightened", "deblur m6/90", "deblur m6/0",
            "deblur g1", "deblur m4/90", "deblur m9/90", "deblur m6/45", "deblur m6/135")

# Stages every missed frame runs first, before the rotation goes on where the last frame
# stopped: a held-up code's blur, light and noise are new in every frame, so the stages that
# read most frames are worth trying again on each one, where a rotation alone would have the
# burst's later frames try only the stages that read least. On the TUNE bursts at 16 ms a
# frame this took the misses from 2-5 of 200 to 0-1 (docs/camera.md).
HEAD = ("deblur g1.5 lightened", "deblur g1.5")

# First guesses of each stage's cost (seconds on this project's CI machine), replaced by
# running averages of what they really take on the machine at hand.
PRIOR_COST = {"locate": 0.002, "sharpened": 0.005, "enlarged": 0.005, "deblur": 0.004,
              "lightened": 0.002}

SINGLE_FRAME_BUDGET = 0.100  # a one-off image (verify --image): every stage, within 100 ms
KIOSK_BUDGET = 0.066  # a camera at 15 fps on a Pi 4: one frame's time, spent on that frame


def parse_kernel(stage: str) -> tuple[tuple, float]:
    """(kernel, nsr) of a deblur stage: "deblur g1.5" -> (("g", 1.5), DEBLUR_NSR);
    "deblur m6/45,0.05" -> (("m", 6.0, 45.0), 0.05)."""
    spec = stage.split()[1]
    nsr = DEBLUR_NSR
    if "," in spec:
        spec, value = spec.split(",")
        nsr = float(value)
    if spec[0] == "g":
        return ("g", float(spec[1:])), nsr
    if spec[0] == "m":
        length, angle = spec[1:].split("/")
        return ("m", float(length), float(angle)), nsr
    raise ValueError(f"unknown blur kernel in stage {stage!r}")


class _Patch:
    """The located code patch of one frame; each stage's picture of it."""

    def __init__(self, gray, box):
        x0, y0, x1, y1 = box
        self.patch = gray[y0:y1, x0:x1]

    def image(self, stage: str) -> tuple[np.ndarray, bool]:
        """(image to decode, also look for light-on-dark codes)."""
        if stage.endswith("lightened"):
            base = stage[:-len("lightened")].strip()
            image = self.image(base)[0] if base else self.patch
            return lighten(image), False
        if stage == "sharpened":
            return sharpen(self.patch), True
        if stage == "enlarged":
            return enlarge(self.patch), False
        kernel, nsr = parse_kernel(stage)
        return deblur(self.patch, kernel, nsr), False


class CascadeDecoder:
    """A backend on the whole frame; if nothing is found, on the code's patch, through the
    stages of HEAD and then the expensive stages of ROTATION, as many as fit in `budget`
    seconds per frame.

    Stateful across frames: a held-up code gives several frames; every missed frame runs the
    head's stages (the most productive ones, worth a try on each new frame), then goes on
    with the rotation where the frame before stopped (a 3-frame burst tries different
    rotation stages instead of the first ones three times). A frame that decodes, or one
    with no code-like patch, starts the rotation again. Each stage's cost is a running
    average of what it took here; a stage runs only if its expected cost fits in what is
    left of the frame's budget (budget=None: no limit, every stage).
    """

    def __init__(self, backend, budget: float | None = KIOSK_BUDGET, rotation=ROTATION,
                 head=HEAD, costs: dict | None = None, learn: bool = True, clock=time.perf_counter):
        self.backend = backend
        self.name = f"cascade({backend.name})"
        self.budget = budget
        self.rotation = tuple(rotation)
        self.head = tuple(head)
        for stage in self.head + self.rotation:
            base = stage.removesuffix("lightened").strip()
            if base not in ("", "sharpened", "enlarged"):
                parse_kernel(base)  # a typo fails here, not on a camera frame
        self.cost = {stage: PRIOR_COST[stage.split()[0]] for stage in self.head + self.rotation}
        self.cost["locate"] = PRIOR_COST["locate"]
        self.cost.update(costs or {})
        self.learn = learn
        self.clock = clock
        self.next_stage = 0  # index into rotation where the next missed frame goes on
        self.last_stage = None  # which stage found the code(s) of the last frame
        self.last_tried: list[str] = []  # the expensive stages the last frame ran

    def reset(self) -> None:
        """Forget where the rotation was (a different code comes next)."""
        self.next_stage = 0

    def _measure(self, stage: str, seconds: float) -> None:
        if self.learn:
            # One preempted run (the machine was busy) must not price a stage out for long.
            seconds = min(seconds, 3 * self.cost[stage])
            self.cost[stage] += 0.3 * (seconds - self.cost[stage])


    def _fits(self, stage: str, start: float) -> bool:
        return self.budget is None or self.clock() - start + self.cost[stage] <= self.budget

    def _read(self, img, invert: bool) -> list[str]:
        if invert and isinstance(self.backend, ZxingDecoder):
            return self.backend.decode(img, try_invert=True)
        return self.backend.decode(img)

    def _try(self, patch: _Patch, stage: str) -> bool:
        began = self.clock()
        image, invert = patch.image(stage)
        # Light-on-dark codes (some phone apps' dark mode): the first stage a missed frame
        # runs looks for them too, so no frame waits for the rotation to reach a stage
        # that does (it costs one more decode of the patch, ~1 ms, on a missed frame).
        self._found = self._read(image, invert or not self.last_tried)
        self._measure(stage, self.clock() - began)
        self.last_tried.append(stage)
        if self._found:
            self.last_stage = stage
        return bool(self._found)

    def decode(self, image) -> list[str]:
        start = self.clock()
        gray = as_gray(image)
        self.last_stage, self.last_tried = None, []
        if gray.size == 0:
            return []
        texts = self.backend.decode(gray)
        if texts:
            self.last_stage, self.next_stage = "frame", 0
            return texts
        if not self.rotation or not self._fits("locate", start):
            return []
        began = self.clock()
        box = locate(gray)
        self._measure("locate", self.clock() - began)
        if box is None:  # nothing like a code in view: the next code starts afresh
            self.next_stage = 0
            return []
        patch = _Patch(gray, box)
        for stage in self.head:
            if self._fits(stage, start) and self._try(patch, stage):
                self.next_stage = 0
                return self._found
        count, first = len(self.rotation), self.next_stage
        for step in range(count):  # each stage at most once a frame
            index = (first + step) % count
            stage = self.rotation[index]
            if not self._fits(stage, start):
                continue  # a cheaper stage further on may still fit
            found = self._try(patch, stage)
            self.next_stage = (index + 1) % count
            if found:
                self.next_stage = 0
                return self._found
        if not self.last_tried and self.learn:
            # Nothing fitted at all: estimates inflated by a busy spell must come down again,
            # or their stages would never run (and be re-measured) again.
            for stage in self.head + self.rotation:
                self.cost[stage] *= 0.9
        return []


def make_backend(name: str):
    """A bare backend: "pyzbar" or "zxing"."""
    if name == "pyzbar":
        return PyzbarDecoder()
    if name == "zxing":
        return ZxingDecoder()
    raise ValueError(f"unknown decoder backend {name!r}; use one of: pyzbar, zxing")


def make_decoder(backend: str = "auto", *, cascade: bool = True,
                 budget: float | None = KIOSK_BUDGET):
    """The kiosk's decoder for config [decoder] backend = auto | pyzbar | zxing.

    auto: zxing-cpp when it can be imported (faster and reads more blurred codes than
    pyzbar, see docs/camera.md), else pyzbar. cascade=False gives the bare
    backend (benchmarks compare the two). budget: the cascade's seconds per frame
    (KIOSK_BUDGET: one frame's time at 15 fps; None: no limit).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoder backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    if backend == "auto":
        if zxing_available():
            backend = "zxing"
        else:
            log.info("zxing-cpp not installed: decoding with pyzbar")
            backend = "pyzbar"
    bare = make_backend(backend)
    return CascadeDecoder(bare, budget) if cascade else bare


def decode_image_file(path: str | Path, decoder=None) -> list[str]:
    """The QR texts in an image file (PNG, JPEG, ...). OSError if it cannot be read."""
    from PIL import Image
    with Image.open(path) as img:
        gray = np.asarray(img.convert("L"))
    return (decoder or make_decoder("auto", budget=SINGLE_FRAME_BUDGET)).decode(gray)

"""QR decoders behind one interface: a greyscale frame in, decoded texts out.

Every decoder has a `name` and `decode(gray) -> list[str]` (QR codes only, each
text once, in the order found; [] when there is none). Three kinds:

- `PyzbarDecoder`: ZBar through pyzbar (needs the libzbar0 system library);
- `ZxingDecoder`: zxing-cpp (`pip install zxing-cpp`); optional, its
  constructor raises `DecoderUnavailable` when the module is missing;
- `CascadeDecoder`: one of the two on the whole frame first (the fast path);
  only when that finds nothing, and only when the frame holds a large patch of
  fine texture (a QR code, even a blurred one), it retries on that patch,
  sharpened, then enlarged. An empty frame costs the fast path and a
  2-3 ms texture check, nothing more.

`make_decoder(backend)` picks one for the kiosk: "auto" is the cascade over
zxing-cpp when installed, else over pyzbar; "zxing" and "pyzbar" are the
cascade over that backend. docs/camera.md has the figures behind the choice
(`python -m bench decode`).
"""

import logging
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

def locate(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) around the largest patch of fine texture, or None.

    A QR code, even blurred, is a large square of dense high-frequency detail;
    smooth walls, skin and sensor noise are not. The measure is the mean
    absolute difference from a 7x7 local mean at half resolution, pooled into
    8x8 cells and compared with the frame's own median (its noise floor).
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
    threshold = max(4.0, 2.5 * float(np.median(cells)))
    mask = (cells > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[best])
    # Smaller than a code 25 % of the frame height (the kiosk sees 35-80 %): not a code.
    if area * 64 < (0.25 * height) ** 2:
        return None
    mx, my = w // 10 + 1, h // 10 + 1
    return (max(0, (x - mx) * 8), max(0, (y - my) * 8),
            min(width, (x + w + mx) * 8), min(height, (y + h + my) * 8))


def sharpen(gray: np.ndarray, sigma: float = 2.5, amount: float = 1.5) -> np.ndarray:
    """Unsharp mask: restores some of the contrast that defocus and motion took."""
    import cv2
    return cv2.addWeighted(gray, 1 + amount, cv2.GaussianBlur(gray, (0, 0), sigma), -amount, 0)


def enlarge(gray: np.ndarray, factor: float = 1.5) -> np.ndarray:
    """Bicubic upscaling: finer sampling of small, soft modules."""
    import cv2
    return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


class CascadeDecoder:
    """A backend on the whole frame; if nothing is found, again on the code's patch,
    first sharpened (zxing-cpp also looks for light-on-dark codes there), then
    enlarged. Stops at the first stage that finds a code."""

    def __init__(self, backend):
        self.backend = backend
        self.name = f"cascade({backend.name})"
        self.last_stage = None  # which stage found the code(s) of the last frame

    def stages(self, gray: np.ndarray):
        """(name, image, also light-on-dark) in the order tried, made lazily."""
        yield "frame", gray, False
        box = locate(gray)
        if box is None:
            return
        x0, y0, x1, y1 = box
        patch = gray[y0:y1, x0:x1]
        yield "sharpened", sharpen(patch), True
        yield "enlarged", enlarge(patch), False

    def decode(self, image) -> list[str]:
        gray = as_gray(image)
        self.last_stage = None
        if gray.size == 0:
            return []
        zxing = isinstance(self.backend, ZxingDecoder)
        for stage, img, invert in self.stages(gray):
            texts = self.backend.decode(img, try_invert=True) if zxing and invert \
                else self.backend.decode(img)
            if texts:
                self.last_stage = stage
                return texts
        return []


def make_backend(name: str):
    """A bare backend: "pyzbar" or "zxing"."""
    if name == "pyzbar":
        return PyzbarDecoder()
    if name == "zxing":
        return ZxingDecoder()
    raise ValueError(f"unknown decoder backend {name!r}; use one of: pyzbar, zxing")


def make_decoder(backend: str = "auto", *, cascade: bool = True):
    """The kiosk's decoder for config [decoder] backend = auto | pyzbar | zxing.

    auto: zxing-cpp when installed (faster and reads more blurred codes than
    pyzbar, see docs/camera.md), else pyzbar. cascade=False gives the bare
    backend (benchmarks compare the two).
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
    return CascadeDecoder(bare) if cascade else bare


def decode_image_file(path: str | Path, decoder=None) -> list[str]:
    """The QR texts in an image file (PNG, JPEG, ...). OSError if it cannot be read."""
    from PIL import Image
    with Image.open(path) as img:
        gray = np.asarray(img.convert("L"))
    return (decoder or make_decoder("auto")).decode(gray)

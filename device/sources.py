"""Frame sources: where the kiosk's pictures (or scanned texts) come from.

Every source is an iterable of items and has close() (and works as a context
manager). An item is either

- a greyscale frame: a 2-D numpy uint8 array, for the QR decoder, or
- a str: the text a 2D barcode scanner has already decoded.

Sources:
- Picamera2Source: the Raspberry Pi camera (picamera2 exists only on Raspberry
  Pi OS and is imported only when this source is made);
- V4L2Source: a USB (UVC) or other V4L2 camera through OpenCV;
- FolderSource: a folder of images or a video file (demos, tests, benchmarks);
- ScannerSource: a serial 2D scanner, one code per line (also a file, FIFO or
  terminal, which is how HID keyboard-wedge scanners arrive).

make_source(config.source, path) builds the one the kiosk's config names.
See docs/camera.md.
"""

import logging
import os
import re
import stat
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")
MAX_LINE = 8192  # bytes; a QR code holds at most 4296 characters


class SourceError(RuntimeError):
    """The source cannot be opened or has stopped working."""


class Source:
    """Base: iterate for items; close() releases the device (idempotent)."""

    closed = False

    def __iter__(self):
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_gray(frame: np.ndarray) -> np.ndarray:
    """A 2-D uint8 array from a grey, BGR or BGRA frame."""
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 1:
        return frame[:, :, 0]
    import cv2
    code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(frame, code)


# --- Raspberry Pi camera -------------------------------------------------------------

AF_MANUAL, AF_CONTINUOUS = 0, 2  # libcamera controls.AfModeEnum values


class Picamera2Source(Source):
    """The Pi camera through picamera2: a video configuration at width x height.

    format "YUV420" (default): the Y plane is the grey frame, no conversion;
    "RGB888": converted to grey. lens_position >= 0: manual focus at that many
    dioptres (1 / distance in metres); < 0: continuous autofocus. Cameras
    without autofocus (Camera Module v1, v2, HQ) skip the focus controls.
    """

    def __init__(self, width: int = 1280, height: int = 960, lens_position: float = -1.0,
                 fps: float | None = None, format: str = "YUV420", camera_num: int = 0):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError("picamera2 is not installed: it comes with Raspberry Pi OS "
                              "(apt install python3-picamera2; create the venv with "
                              "--system-site-packages)") from exc
        self.format = format
        self.width = int(width)
        try:
            self._camera = Picamera2(camera_num)
        except Exception as exc:  # no camera connected, or in use by another program
            raise SourceError(f"cannot open the Pi camera {camera_num}: {exc}") from exc
        self._started = False
        try:
            controls = {"FrameRate": float(fps)} if fps else {}
            config = self._camera.create_video_configuration(
                main={"size": (int(width), int(height)), "format": format},
                controls=controls, buffer_count=4)
            self._camera.configure(config)
            available = getattr(self._camera, "camera_controls", None) or {}
            if "AfMode" in available:
                if lens_position >= 0:
                    self._camera.set_controls({"AfMode": AF_MANUAL,
                                               "LensPosition": float(lens_position)})
                else:
                    self._camera.set_controls({"AfMode": AF_CONTINUOUS})
            elif lens_position >= 0:
                log.warning("this camera has no focus control: lens_position ignored")
            self._camera.start()
            self._started = True
        except Exception as exc:
            self.close()
            raise SourceError(f"cannot start the Pi camera: {exc}") from exc

    def gray(self, array: np.ndarray) -> np.ndarray:
        if self.format.upper() in ("YUV420", "YVU420"):
            # Planar: the Y rows come first, then U and V (half as many rows together);
            # a row may be padded to the buffer's stride.
            return array[: array.shape[0] * 2 // 3, : self.width]
        return to_gray(array)

    def __iter__(self):
        while not self.closed:
            array = self._camera.capture_array("main")
            if self.closed:
                return
            yield self.gray(array)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._started:
                self._camera.stop()
        finally:
            self._camera.close()


# --- OpenCV captures: V4L2 cameras and video files ------------------------------------

class CaptureSource(Source):
    """An OpenCV VideoCapture (camera or video file), frames as grey.

    A camera that stops delivering (unplugged) raises SourceError after
    `max_failures` reads in a row fail; a video file ends the iteration at its
    end (or starts again if loop).
    """

    def __init__(self, target, api: int | None = None, *, width: int | None = None,
                 height: int | None = None, fps: float | None = None, loop: bool = False,
                 camera: bool = False, max_failures: int = 30):
        import cv2
        self._cv2 = cv2
        self.target = target
        self.loop = loop
        self.camera = camera
        self.max_failures = max_failures
        api = cv2.CAP_ANY if api is None else api
        self._cap = cv2.VideoCapture(target, api)
        if not self._cap.isOpened():
            self._cap.release()
            what = "camera" if camera else "video"
            hint = (" (is it connected? is the kiosk user in the 'video' group? "
                    "`v4l2-ctl --list-devices` lists the cameras)") if camera else ""
            raise SourceError(f"cannot open {what} {target!r}{hint}")
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            self._cap.set(cv2.CAP_PROP_FPS, fps)
        if camera:
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue

    def __iter__(self):
        failures = 0
        delivered = False
        while not self.closed:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                failures = 0
                delivered = True
                yield to_gray(frame)
                continue
            if self.camera:
                failures += 1
                if failures >= self.max_failures:
                    raise SourceError(f"camera {self.target!r} stopped delivering frames")
                time.sleep(0.01)
            elif self.loop and delivered:
                self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
                delivered = False
            else:
                return

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cap.release()


def _device(path) -> int | str:
    """'/dev/video0' stays a path; '0' or 0 is a camera index."""
    text = str(path).strip()
    return int(text) if text.isdigit() else text


class V4L2Source(CaptureSource):
    """A V4L2 camera (USB webcam, ...) by device path or index, through OpenCV."""

    def __init__(self, device="/dev/video0", width: int = 1280, height: int = 960,
                 fps: float | None = 15.0, **kwargs):
        import cv2
        super().__init__(_device(device), cv2.CAP_V4L2, width=width, height=height, fps=fps,
                         camera=True, **kwargs)


# --- folders and video files ------------------------------------------------------------

class FolderSource(Source):
    """A folder of images (by name: .png .jpg .jpeg .bmp .pgm), a single image, or a
    video file. interval: seconds to wait between frames; loop: start again at the end.
    Unreadable images are skipped with a warning."""

    def __init__(self, path, interval: float = 0.0, loop: bool = False, *, sleep=time.sleep):
        self.path = Path(path)
        self.interval = max(0.0, float(interval))
        self.loop = loop
        self._sleep = sleep
        self._video = None
        if self.path.is_dir():
            self.files = sorted((p for p in self.path.iterdir()
                                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                                key=lambda p: p.name)
            if not self.files:
                raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {self.path}")
        elif self.path.is_file():
            if self.path.suffix.lower() in IMAGE_SUFFIXES:
                self.files = [self.path]
            else:
                self.files = []
                self._video = CaptureSource(str(self.path), loop=loop)
        else:
            raise SourceError(f"folder or video {self.path} does not exist")

    def _frames(self):
        if self._video is not None:
            yield from self._video
            return
        import cv2
        while not self.closed:
            readable = 0
            for file in self.files:
                if self.closed:
                    return
                frame = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
                if frame is None:
                    log.warning("skipping %s: not a readable image", file)
                    continue
                readable += 1
                yield frame
            if not self.loop:
                return
            if not readable:
                log.warning("no readable image in %s: stopping", self.path)
                return

    def __iter__(self):
        first = True
        for frame in self._frames():
            if not first and self.interval:
                self._sleep(self.interval)
            first = False
            if self.closed:
                return
            yield frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._video is not None:
                self._video.close()


# --- 2D scanners -----------------------------------------------------------------------------

_LINE_END = re.compile(rb"[\r\n]")


class ScannerSource(Source):
    """A 2D scanner that sends each code as a line (CR, LF or CRLF at the end).

    port: a pyserial port or URL (/dev/ttyACM0, /dev/ttyUSB0, loop://, socket://...)
    opened at baudrate; or a FIFO or regular file (read as it is: a test feed, or a
    keyboard-wedge scanner's input piped in). A character device is opened as a
    serial port (that includes a console tty). Yields each non-empty line as text
    (invalid UTF-8 becomes U+FFFD). A FIFO or file ends at its end.
    """

    def __init__(self, port, baudrate: int = 9600, *, timeout: float = 0.2):
        self.port = str(port)
        self._serial = None
        self._fd = None
        kind = None
        if "://" not in self.port:
            try:
                kind = os.stat(self.port).st_mode
            except OSError as exc:
                raise SourceError(f"scanner port {self.port} does not exist "
                                  f"({exc.strerror})") from None
        if kind is not None and (stat.S_ISFIFO(kind) or stat.S_ISREG(kind)):
            try:
                self._fd = os.open(self.port, os.O_RDONLY)
            except OSError as exc:
                raise SourceError(f"cannot open scanner input {self.port}: "
                                  f"{exc.strerror}") from None
        else:
            import serial
            try:
                self._serial = serial.serial_for_url(self.port, baudrate=baudrate, timeout=timeout)
            except (serial.SerialException, ValueError) as exc:
                raise SourceError(f"cannot open scanner port {self.port}: {exc}") from None

    def _chunks(self):
        while not self.closed:
            if self._serial is not None:
                try:
                    data = self._serial.read(max(1, self._serial.in_waiting))
                except Exception as exc:  # serial.SerialException, or closed under us
                    if self.closed:
                        return
                    raise SourceError(f"scanner {self.port} stopped: {exc}") from exc
                if data:
                    yield data
            else:
                try:
                    data = os.read(self._fd, 4096)
                except OSError:
                    if self.closed:
                        return
                    raise
                if not data:
                    return
                yield data

    def __iter__(self):
        buffer = b""
        skipping = False  # inside a line already found too long
        for data in self._chunks():
            buffer += data
            *lines, buffer = _LINE_END.split(buffer)
            for line in lines:
                if skipping or len(line) > MAX_LINE:
                    if not skipping:
                        log.warning("scanner %s: a line of more than %d bytes without a line "
                                    "end, discarded", self.port, MAX_LINE)
                    skipping = False
                    continue
                text = _text(line)
                if text is not None:
                    yield text
            if len(buffer) > MAX_LINE:
                if not skipping:
                    log.warning("scanner %s: a line of more than %d bytes without a line "
                                "end, discarded", self.port, MAX_LINE)
                buffer, skipping = b"", True
        text = None if skipping else _text(buffer)  # a file's last line may lack its newline
        if text is not None and not self.closed:
            yield text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._serial is not None:
            self._serial.close()
        if self._fd is not None:
            os.close(self._fd)


def _text(line: bytes) -> str | None:
    text = line.decode("utf-8", errors="replace")
    return text if text.strip() else None


# --- from the configuration ----------------------------------------------------------------

KINDS = ("picamera2", "v4l2", "folder", "scanner")


def make_source(section, path=None) -> Source:
    """The source for a [source] config section (kind, path, width, height, fps,
    lens_position, interval, loop, baudrate). path: the section's path already
    resolved (config paths may be relative to the config file); default section.path."""
    kind = section.kind
    if path is None or path == "":
        path = getattr(section, "path", "")
    width = getattr(section, "width", 1280)
    height = getattr(section, "height", 960)
    fps = getattr(section, "fps", 15.0)
    if kind == "picamera2":
        return Picamera2Source(width, height, getattr(section, "lens_position", -1.0), fps=fps)
    if kind == "v4l2":
        return V4L2Source(path if path != "" else "/dev/video0", width, height, fps)
    if kind == "folder":
        return FolderSource(path, getattr(section, "interval", 0.0),
                            getattr(section, "loop", False))
    if kind == "scanner":
        return ScannerSource(path, getattr(section, "baudrate", 9600))
    raise ValueError(f"unknown source kind {kind!r}; use one of: {', '.join(KINDS)}")

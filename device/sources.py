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

make_source(config.source, path) builds the one the kiosk's config names;
Recovering wraps it so that a missing or lost device is opened again with
backoff instead of ending the kiosk. With `ticks`, a source yields None
whenever it has waited `TICK` seconds without an item, so the loop pulling
from it stays in control (it can stop on SIGTERM, and the watchdog can tell a
loop that waits from one that hangs). See docs/camera.md.
"""

import logging
import os
import re
import select
import stat
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")
MAX_LINE = 8192  # bytes; a QR code holds at most 4296 characters


class SourceError(RuntimeError):
    """The source cannot be opened or has stopped working."""


TICK = 0.5  # seconds a source with ticks waits at most before it yields None


class Source:
    """Base: iterate for items; close() releases the device (idempotent).

    finite: the end of the iteration is the end of the input (a folder, a video or
    regular file), not a device that went away. ready_on_open: a source that opened
    is known to work (a serial port); a camera proves it only with a frame, and a
    FIFO only with a line.
    """

    closed = False
    finite = False
    ready_on_open = False

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

    stall_seconds = 5.0  # no frame for this long: the camera is lost

    def __init__(self, width: int = 1280, height: int = 960, lens_position: float = -1.0,
                 fps: float | None = None, format: str = "YUV420", camera_num: int = 0,
                 *, ticks: bool = False):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError("picamera2 is not installed: it comes with Raspberry Pi OS "
                              "(apt install python3-picamera2; create the venv with "
                              "--system-site-packages)") from exc
        self.format = format
        self.width = int(width)
        self.ticks = ticks
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
        # An unplugged camera does not fail a blocking capture_array(): it never returns.
        # So the capture is asked for without waiting and waited for in slices.
        while not self.closed:
            waited = 0.0
            try:
                try:
                    job = self._camera.capture_array("main", wait=False)
                except TypeError:  # a picamera2 too old for asynchronous captures: blocks
                    job, array = None, self._camera.capture_array("main")
                while job is not None:
                    try:
                        array = self._camera.wait(job, timeout=TICK)
                        break
                    except TypeError:  # wait() without a timeout (an old picamera2): blocks
                        array = self._camera.wait(job)
                        break
                    except TimeoutError:
                        waited += TICK
                        if self.closed:
                            return
                        if waited >= self.stall_seconds:
                            raise SourceError(f"the Pi camera delivered no frame for "
                                              f"{waited:.0f} s") from None
                        if self.ticks:
                            yield None
            except SourceError:
                raise
            except Exception as exc:  # libcamera errors come as RuntimeError and others
                if self.closed:
                    return
                raise SourceError(f"the Pi camera failed: {exc}") from exc
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
        self.finite = not camera
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

    finite = True

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
    (invalid UTF-8 becomes U+FFFD). A FIFO or file ends at its end: for a FIFO,
    when its writer closes it.

    A FIFO is opened without waiting for a writer and read through poll() with a
    timeout: a blocking open() or read() of an empty FIFO would leave the kiosk
    deaf to SIGTERM. A serial port or a device that fails (unplugged) raises
    SourceError.
    """

    def __init__(self, port, baudrate: int = 9600, *, timeout: float = 0.2,
                 ticks: bool = False):
        self.port = str(port)
        self.ticks = ticks
        self._serial = None
        self._fd = None
        self._poll = None
        kind = None
        if "://" not in self.port:
            try:
                kind = os.stat(self.port).st_mode
            except OSError as exc:
                raise SourceError(f"scanner port {self.port} does not exist "
                                  f"({exc.strerror})") from None
        if kind is not None and (stat.S_ISFIFO(kind) or stat.S_ISREG(kind)):
            self.finite = self.ready_on_open = stat.S_ISREG(kind)
            try:
                self._fd = os.open(self.port, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise SourceError(f"cannot open scanner input {self.port}: "
                                  f"{exc.strerror}") from None
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
        else:
            import serial
            self.ready_on_open = True
            try:
                self._serial = serial.serial_for_url(self.port, baudrate=baudrate, timeout=timeout)
            except (serial.SerialException, ValueError, OSError) as exc:
                raise SourceError(f"cannot open scanner port {self.port}: {exc}") from None

    def _chunks(self):
        """Bytes as they come; b"" after a wait with nothing (the serial timeout or TICK)."""
        while not self.closed:
            if self._serial is not None:
                try:
                    data = self._serial.read(max(1, self._serial.in_waiting))
                except Exception as exc:  # serial.SerialException, or closed under us
                    if self.closed:
                        return
                    raise SourceError(f"scanner {self.port} stopped: {exc}") from exc
                yield data
                continue
            try:
                if not self._poll.poll(TICK * 1000):
                    yield b""
                    continue
                data = os.read(self._fd, 4096)
            except BlockingIOError:  # woken with nothing to read after all
                yield b""
                continue
            except (OSError, ValueError) as exc:  # ValueError: the fd closed under us
                if self.closed:
                    return
                raise SourceError(f"scanner input {self.port} failed: {exc}") from exc
            if not data:  # end of file, or the FIFO's last writer closed it
                return
            yield data

    def __iter__(self):
        buffer = b""
        skipping = False  # inside a line already found too long
        for data in self._chunks():
            if not data:
                if self.ticks:
                    yield None
                continue
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


def make_source(section, path=None, *, ticks: bool = False) -> Source:
    """The source for a [source] config section (kind, path, width, height, fps,
    lens_position, interval, loop, baudrate). path: the section's path already
    resolved (config paths may be relative to the config file); default section.path.
    ticks: the source yields None while it waits (see the module's docstring)."""
    kind = section.kind
    if path is None or path == "":
        path = getattr(section, "path", "")
    width = getattr(section, "width", 1280)
    height = getattr(section, "height", 960)
    fps = getattr(section, "fps", 15.0)
    if kind == "picamera2":
        return Picamera2Source(width, height, getattr(section, "lens_position", -1.0), fps=fps,
                               ticks=ticks)
    if kind == "v4l2":
        return V4L2Source(path if path != "" else "/dev/video0", width, height, fps)
    if kind == "folder":
        return FolderSource(path, getattr(section, "interval", 0.0),
                            getattr(section, "loop", False))
    if kind == "scanner":
        return ScannerSource(path, getattr(section, "baudrate", 9600), ticks=ticks)
    raise ValueError(f"unknown source kind {kind!r}; use one of: {', '.join(KINDS)}")


# --- a device that comes back --------------------------------------------------------------

DEVICE_NAMES = {"picamera2": "camera", "v4l2": "camera", "scanner": "scanner", "folder": "folder"}


class Recovering(Source):
    """A source opened by `opener()`, and opened again with backoff (`first` seconds,
    doubling to `longest`) whenever it cannot be opened or stops: a camera unplugged
    and plugged back resumes without a restart. Yields None while it waits (every
    TICK seconds), like a source with ticks.

    on_fault(detail) is called when the device is missing or lost ("camera not found:
    ...", "scanner lost: ..."), on_recovered() when it works again: a frame or line
    arrived, or, for a source whose opening proves it (a serial port), it opened. A
    finite source (a folder) that reaches its end ends this iteration too.
    """

    def __init__(self, opener, what: str, on_fault=None, on_recovered=None, *,
                 first: float = 1.0, longest: float = 30.0):
        self._opener = opener
        self.what = what
        self._on_fault = on_fault or (lambda detail: None)
        self._on_recovered = on_recovered or (lambda: None)
        self.first, self.longest = first, longest
        self.current: Source | None = None
        self.failing = False
        self.finished = False  # a finite source came to its end
        self.attempts = 0
        self._wake = threading.Event()

    def _fault(self, detail: str) -> None:
        self.failing = True
        self._on_fault(detail)

    def _ok(self) -> None:
        if self.failing:
            self.failing = False
            self._on_recovered()

    def _wait(self, seconds: float):
        deadline = time.monotonic() + seconds
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(TICK, left))
            yield None

    def __iter__(self):
        delay = self.first
        opened_once = False
        while not self.closed:
            self.attempts += 1
            try:
                source = self._opener()
            except Exception as exc:  # SourceError, and whatever a driver raises
                if not isinstance(exc, SourceError):
                    log.exception("opening the %s failed", self.what)
                state = "lost" if opened_once else "not found"
                self._fault(f"{self.what} {state}: {exc}")
                log.info("opening the %s again in %.0f s", self.what, delay)
                yield from self._wait(delay)
                delay = min(self.longest, delay * 2)
                continue
            opened_once = True
            self.current = source
            if source.ready_on_open:
                self._ok()
            try:
                for item in source:
                    if item is not None:
                        self._ok()
                        delay = self.first
                    yield item
                    if self.closed:
                        return
                if self.closed:
                    return
                if source.finite:
                    self.finished = True
                    return
                problem = f"{self.what} lost: it stopped delivering"
            except Exception as exc:
                if self.closed:
                    return
                if not isinstance(exc, SourceError):
                    log.exception("the %s failed", self.what)
                problem = f"{self.what} lost: {exc}"
            finally:
                self.current = None
                try:
                    source.close()
                except Exception:  # a device gone away may fail its own close
                    log.debug("closing the lost %s failed", self.what, exc_info=True)
            self._fault(problem)
            log.info("opening the %s again in %.0f s", self.what, delay)
            yield from self._wait(delay)
            delay = min(self.longest, delay * 2)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        current = self.current
        if current is not None:
            current.close()

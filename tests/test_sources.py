"""Frame sources: Picamera2 (against a stand-in module), V4L2/OpenCV, folders, scanners."""

import itertools
import logging
import os
import sys
import threading
import time
import types

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from device import config as config_module
from device import sources
from device.sources import (CaptureSource, FolderSource, Picamera2Source, ScannerSource,
                            SourceError, V4L2Source, make_source)


def section(**values):
    """A [source] config section with the schema's defaults."""
    defaults = {key: default for key, (_, default, _) in config_module.SCHEMA["source"].items()}
    defaults.update(values)
    return SimpleNamespace(**defaults)


# --- Picamera2, against a stand-in with the same API ---------------------------------------

class FakePicamera2:
    """Records what the source asks of the camera; returns planar YUV420 or BGR frames.

    plugged = False stands for a camera unplugged: Picamera2() fails as the real one
    does with no camera (IndexError from its camera list), and a capture in progress
    never completes (wait() times out), which is what libcamera does."""

    instances = []
    plugged = True
    controls_advertised = {"AfMode": (0, 2, 0), "LensPosition": (0.0, 32.0, 1.0),
                           "FrameRate": (1.0, 60.0, 30.0)}

    def __init__(self, camera_num=0):
        if not FakePicamera2.plugged:
            raise IndexError("list index out of range")
        self.calls = [("init", camera_num)]
        self.camera_controls = dict(self.controls_advertised)
        self.config = None
        self.frames = 0
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main=None, controls=None, **kwargs):
        self.calls.append(("create_video_configuration", main, controls, kwargs))
        return {"main": dict(main), "controls": dict(controls or {})}

    def configure(self, config):
        self.calls.append(("configure", config))
        self.config = config

    def set_controls(self, controls):
        self.calls.append(("set_controls", dict(controls)))

    def start(self):
        self.calls.append(("start",))

    def capture_array(self, name="main", wait=None):
        self.calls.append(("capture_array", name))
        if wait is False:  # picamera2: a job to wait() for
            return ("job", name)
        return self._frame()

    def wait(self, job, timeout=None):
        if not FakePicamera2.plugged:
            time.sleep(timeout or 0)
            raise TimeoutError()
        return self._frame()

    def _frame(self):
        self.frames += 1
        width, height = self.config["main"]["size"]
        if self.config["main"]["format"] == "YUV420":
            array = np.full((height * 3 // 2, width), 128, np.uint8)
            array[:height] = self.frames % 256  # Y plane: the frame number as its grey level
            return array
        array = np.zeros((height, width, 3), np.uint8)
        array[:, :, 2] = 255  # pure red in BGR order
        return array

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


@pytest.fixture
def picamera2(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    FakePicamera2.instances = []
    monkeypatch.setattr(FakePicamera2, "plugged", True)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return FakePicamera2


def names(camera):
    return [c[0] for c in camera.calls]


def test_picamera2_yuv_frames_are_the_y_plane(picamera2):
    source = Picamera2Source(640, 480, lens_position=-1.0, fps=15.0)
    frames = list(itertools.islice(source, 3))
    source.close()
    camera = picamera2.instances[0]
    assert [f.shape for f in frames] == [(480, 640)] * 3
    assert [int(f[0, 0]) for f in frames] == [1, 2, 3] and all(f.dtype == np.uint8 for f in frames)
    _, main, controls, _ = camera.calls[1]
    assert main == {"size": (640, 480), "format": "YUV420"} and controls == {"FrameRate": 15.0}
    assert names(camera) == ["init", "create_video_configuration", "configure", "set_controls",
                             "start", "capture_array", "capture_array", "capture_array",
                             "stop", "close"]


def test_picamera2_autofocus_when_lens_position_negative(picamera2):
    Picamera2Source(1280, 960, lens_position=-1.0).close()
    assert ("set_controls", {"AfMode": 2}) in picamera2.instances[0].calls


def test_picamera2_manual_focus_at_lens_position(picamera2):
    Picamera2Source(1280, 960, lens_position=4.0).close()
    assert ("set_controls", {"AfMode": 0, "LensPosition": 4.0}) in picamera2.instances[0].calls


def test_picamera2_without_focus_control_sets_none(picamera2, monkeypatch, caplog):
    monkeypatch.setattr(FakePicamera2, "controls_advertised", {"FrameRate": (1.0, 60.0, 30.0)})
    with caplog.at_level(logging.WARNING):
        Picamera2Source(1280, 960, lens_position=4.0).close()
    assert "set_controls" not in names(picamera2.instances[0])
    assert "no focus control" in caplog.text


def test_picamera2_rgb_frames_become_grey(picamera2):
    with Picamera2Source(320, 240, format="RGB888") as source:
        frame = next(iter(source))
    assert frame.shape == (240, 320) and frame.dtype == np.uint8
    assert int(frame[0, 0]) == 76  # BT.601 luma of pure red


def test_picamera2_close_is_idempotent(picamera2):
    source = Picamera2Source(320, 240)
    source.close()
    source.close()
    assert names(picamera2.instances[0]).count("close") == 1
    assert list(source) == []


def test_picamera2_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        Picamera2Source(1280, 960)


def test_picamera2_start_failure_closes_the_camera(picamera2, monkeypatch):
    def broken(self):
        raise RuntimeError("camera in use")
    monkeypatch.setattr(FakePicamera2, "start", broken)
    with pytest.raises(SourceError, match="camera in use"):
        Picamera2Source(1280, 960)
    assert names(picamera2.instances[0])[-1] == "close"


# --- V4L2 and video files through OpenCV -------------------------------------------------------

def test_v4l2_missing_device_is_a_clear_error():
    with pytest.raises(SourceError, match=r"cannot open camera '/dev/video-greengate-none'"):
        V4L2Source("/dev/video-greengate-none", 640, 480, 15)


def test_v4l2_index_is_parsed():
    assert sources._device("0") == 0 and sources._device(" 2 ") == 2
    assert sources._device("/dev/video0") == "/dev/video0"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An MJPEG AVI of 5 frames, 160x120, frame i a flat grey of 40 * (i + 1)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPEG AVI")
    for i in range(5):
        writer.write(np.full((120, 160, 3), 40 * (i + 1), np.uint8))
    writer.release()
    return path


def test_video_file_through_the_opencv_capture(video):
    with CaptureSource(str(video)) as source:
        frames = list(source)
    assert len(frames) == 5 and all(f.shape == (120, 160) and f.dtype == np.uint8 for f in frames)
    assert [round(float(f.mean()) / 40) for f in frames] == [1, 2, 3, 4, 5]


def test_folder_source_plays_a_video_and_loops(video):
    assert len(list(FolderSource(video))) == 5
    with FolderSource(video, loop=True) as source:
        frames = list(itertools.islice(source, 12))
    assert [round(float(f.mean()) / 40) for f in frames] == [1, 2, 3, 4, 5] * 2 + [1, 2]


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open video"):
        FolderSource(bad)


# --- folders of images ------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    for name, value in [("b.png", 20), ("a.jpg", 10), ("c.bmp", 30), ("d.pgm", 40),
                        ("e.jpeg", 50)]:
        channels = () if name.endswith(".pgm") else (3,)  # PGM is grey only
        cv2.imwrite(str(tmp_path / name), np.full((48, 64, *channels), value, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def levels(frames):
    return [round(float(f.mean()) / 10) * 10 for f in frames]


def test_folder_images_in_name_order_as_grey(folder):
    frames = list(FolderSource(folder))
    assert levels(frames) == [10, 20, 30, 40, 50]
    assert all(f.ndim == 2 and f.dtype == np.uint8 and f.shape == (48, 64) for f in frames)


def test_folder_skips_unreadable_images_with_a_warning(folder, caplog):
    (folder / "bb.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING, logger="device.sources"):
        frames = list(FolderSource(folder))
    assert levels(frames) == [10, 20, 30, 40, 50]
    assert "bb.png" in caplog.text


def test_folder_interval_sleeps_between_frames(folder):
    naps = []
    frames = list(FolderSource(folder, interval=0.25, sleep=naps.append))
    assert len(frames) == 5 and naps == [0.25] * 4


def test_folder_loops(folder):
    with FolderSource(folder, loop=True) as source:
        assert levels(itertools.islice(source, 7)) == [10, 20, 30, 40, 50, 10, 20]


def test_folder_of_only_broken_images_stops_even_when_looping(tmp_path):
    (tmp_path / "x.png").write_bytes(b"broken")
    assert list(FolderSource(tmp_path, loop=True)) == []


def test_single_image_file(folder):
    assert levels(FolderSource(folder / "c.bmp")) == [30]


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        FolderSource(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "missing")


def test_folder_close_stops_iteration(folder):
    source = FolderSource(folder, loop=True)
    seen = []
    for frame in source:
        seen.append(frame)
        if len(seen) == 2:
            source.close()
    assert len(seen) == 2


# --- serial and piped scanners -------------------------------------------------------------------

FEED = (b"HC1:6BFOXN%TS3DH0YOJ58S S-W5HDC *M0II5XHC9B5G2+$N IOP-IA%NFQGRJPC%OQHIZC4.OI1RM8ZA"
        b".A5:S9MKN4NN3F85QNCY0O%0VZ001HOC9JU0D0HT0HB2PL/IB*09B9LW4T*8+DCMH0LDK2%K:XFE70*LP$V25"
        b"$0Q:J:4MO1P0%0L0HD+9E/HY+4J6TH48S%4K.GJ2PT3QY:GQ3TE2I+-CPHN6D7LLK*2HG%89UV-0LZ 2ZJJ524"
        b"-LH/CJTK96L6SR9MU9DHGZ%P WUQRENS431T1XCNCF+47AY0-IFO0500TGPN8F5G.41Q2E4T8ALW.INSV$ 07UV"
        b"5SR+BNQHNML7 /KD3TU 4V*CAT3ZGLQMI/XI%ZJNSBBXK2:UG%UJMI:TU+MMPZ5$/PMX19UE:-PSR3/$NU44CBE"
        b"6DQ3D7B0FBOFX0DV2DGMB$YPF62I$60/F$Z2I6IFX21XNI-LM%3/DF/U6Z9FEOJVRLVW6K$UG+BKK57:1+D10%4"
        b"K83F+1VWD1NE")


def test_scanner_lines_over_serial_loop():
    source = ScannerSource("loop://", 115200)
    source._serial.write(FEED + b"\r\n" + b"second\n\r\n" + b"third\rfourth\r\n"
                         + b"bad \xff\xfe bytes\n   \n")
    items = list(itertools.islice(source, 5))
    source.close()
    assert items == [FEED.decode(), "second", "third", "fourth", "bad \ufffd\ufffd bytes"]
    assert all(isinstance(i, str) for i in items)


def test_scanner_line_split_across_reads():
    source = ScannerSource("loop://")
    got = []

    def feed():
        for part in (b"HC1:AB", b"CD\r", b"\nnext", b"\r\n"):
            source._serial.write(part)
    threading.Thread(target=feed).start()
    for item in source:
        got.append(item)
        if len(got) == 2:
            source.close()
    assert got == ["HC1:ABCD", "next"]


def test_scanner_reads_a_pipe(tmp_path):
    fifo = tmp_path / "scanner"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as fh:
            fh.write(b"HC1:FIRST\r\n\nHC1:SECOND\nHC1:LAST-WITHOUT-NEWLINE")
    thread = threading.Thread(target=writer)
    thread.start()
    with ScannerSource(fifo) as source:
        items = list(source)  # the pipe ends when the writer closes it
    thread.join()
    assert items == ["HC1:FIRST", "HC1:SECOND", "HC1:LAST-WITHOUT-NEWLINE"]


def test_scanner_overlong_garbage_is_discarded(tmp_path, caplog):
    feed = tmp_path / "feed"
    feed.write_bytes(b"x" * (sources.MAX_LINE + 10) + b"\nHC1:OK\n")
    with caplog.at_level(logging.WARNING, logger="device.sources"):
        items = list(ScannerSource(feed))
    assert items == ["HC1:OK"] and "without a line end" in caplog.text


def test_scanner_missing_port_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        ScannerSource(tmp_path / "ttyACM9")
    with pytest.raises(SourceError, match="cannot open scanner port"):
        ScannerSource("nosuchscheme://x")


# --- make_source ---------------------------------------------------------------------------------

def test_make_source_folder_with_a_resolved_path(folder, tmp_path):
    cfg = section(kind="folder", path="frames", interval=0.0, loop=False)  # relative in the config
    with make_source(cfg, folder) as source:
        assert isinstance(source, FolderSource) and len(list(source)) == 5


def test_make_source_uses_section_path_when_not_given(folder):
    with make_source(section(kind="folder", path=str(folder), loop=True)) as source:
        assert source.loop and len(list(itertools.islice(source, 6))) == 6


def test_make_source_scanner():
    with make_source(section(kind="scanner", path="loop://", baudrate=19200)) as source:
        assert isinstance(source, ScannerSource) and source._serial.baudrate == 19200


def test_make_source_picamera2(picamera2):
    with make_source(section(kind="picamera2", width=800, height=600, lens_position=2.5,
                             fps=10.0)) as source:
        assert isinstance(source, Picamera2Source)
    calls = picamera2.instances[0].calls
    assert calls[1][1] == {"size": (800, 600), "format": "YUV420"}
    assert ("set_controls", {"AfMode": 0, "LensPosition": 2.5}) in calls


def test_make_source_v4l2_error():
    with pytest.raises(SourceError, match="cannot open camera"):
        make_source(section(kind="v4l2", path="/dev/video-greengate-none"))


def test_make_source_unknown_kind():
    with pytest.raises(ValueError, match="unknown source kind"):
        make_source(section(kind="carrier-pigeon"))


# --- never stuck, never silent: timeouts, lost devices ------------------------------------------

def test_scanner_fifo_without_a_writer_opens_at_once_and_ticks(tmp_path):
    """open() of a FIFO waits for a writer and read() for data, deaf to SIGTERM: the
    source opens without waiting and, with ticks, hands control back every TICK."""
    fifo = tmp_path / "scanner"
    os.mkfifo(fifo)
    started = time.monotonic()
    source = ScannerSource(fifo, ticks=True)  # no writer: this used to block for ever
    items = list(itertools.islice(source, 2))
    source.close()
    assert items == [None, None]
    assert time.monotonic() - started < 4 * sources.TICK
    assert not source.finite and not source.ready_on_open  # a FIFO proves itself by a line


def test_scanner_fifo_with_ticks_still_reads_lines(tmp_path):
    fifo = tmp_path / "scanner"
    os.mkfifo(fifo)
    source = ScannerSource(fifo, ticks=True)
    writer = os.open(fifo, os.O_WRONLY)
    os.write(writer, b"HC1:ONE\r\n")
    got = []
    for item in source:
        if item is not None:
            got.append(item)
            if len(got) == 1:
                os.write(writer, b"HC1:TWO\n")
                os.close(writer)  # the writer goes: the FIFO ends
    assert got == ["HC1:ONE", "HC1:TWO"]


def test_scanner_regular_file_is_finite():
    assert ScannerSource(__file__).finite


def test_scanner_unplugged_is_a_source_error():
    """A serial scanner on a pty: closing the master end is what unplugging a USB
    scanner looks like to the reader (EIO)."""
    master, slave = os.openpty()
    port = os.ttyname(slave)
    source = ScannerSource(port, ticks=True)
    os.write(master, b"HC1:BEFORE\r\n")
    got, error = [], None
    try:
        for item in source:
            if item is not None:
                got.append(item)
                os.close(master)
    except SourceError as exc:
        error = exc
    finally:
        source.close()
        os.close(slave)
    assert got == ["HC1:BEFORE"]
    assert error is not None and "stopped" in str(error) and port in str(error)


def test_picamera2_that_stops_delivering_is_a_source_error(picamera2, monkeypatch):
    monkeypatch.setattr(Picamera2Source, "stall_seconds", 1.0)
    source = Picamera2Source(320, 240, ticks=True)
    seen = []
    with pytest.raises(SourceError, match="delivered no frame for 1 s"):
        for item in source:
            seen.append(item)
            if len(seen) == 2:
                picamera2.plugged = False  # unplugged: the capture never completes
    source.close()
    assert [s is None for s in seen] == [False, False, True]  # a tick while it waited


def test_picamera2_capture_error_is_a_source_error(picamera2, monkeypatch):
    def broken(self, job, timeout=None):
        raise RuntimeError("Camera frontend has timed out!")
    monkeypatch.setattr(FakePicamera2, "wait", broken)
    with Picamera2Source(320, 240) as source:
        with pytest.raises(SourceError, match="Camera frontend has timed out"):
            next(iter(source))


def test_picamera2_without_a_camera_is_a_clear_error(picamera2):
    picamera2.plugged = False
    with pytest.raises(SourceError, match="cannot open the Pi camera 0"):
        Picamera2Source(320, 240)


def test_picamera2_too_old_for_asynchronous_captures_still_delivers(picamera2, monkeypatch):
    """Older picamera2 releases have neither capture_array(wait=) nor wait(timeout=):
    the source falls back to the blocking calls instead of failing every frame."""
    def capture_array(self, name="main"):
        self.calls.append(("capture_array", name))
        return self._frame()
    monkeypatch.setattr(FakePicamera2, "capture_array", capture_array)
    with Picamera2Source(320, 240, ticks=True) as source:
        frames = list(itertools.islice(source, 2))
    assert [int(f[0, 0]) for f in frames] == [1, 2]

"""RealSense (pyrealsense2) and OpenCV (VideoCapture) camera drivers against recording fakes of their SDKs:
stream configuration, colour / aligned depth, depth units, timestamps on our monotonic clock, intrinsics,
several cameras by serial, missing devices and stalls."""

from __future__ import annotations

import enum
import time
import types

import numpy as np
import pytest

from hardware.drivers.opencv_camera import OpenCVCamera
from hardware.drivers.realsense import ClockMapper, RealSenseCamera, list_realsense_serials
from hardware.errors import CameraStalledError, DeviceNotFoundError

H, W = 48, 64


# ------------------------------------------------------------ fake pyrealsense2 -------------------------
class _Stream(enum.Enum):
    color = 1
    depth = 2


class _Format(enum.Enum):
    rgb8 = 1
    z16 = 2


class _Domain(enum.Enum):
    hardware_clock = 0
    system_time = 1
    global_time = 2


class _Info(enum.Enum):
    serial_number = 1


class _Option(enum.Enum):
    global_time_enabled = 1


def make_fake_rs(serials=("111", "222"), depth_scale=0.001, domain="global_time", clock_offset=0.0):
    """A pyrealsense2-shaped module; `log` records (time, call, args)."""
    log: list = []
    rs = types.SimpleNamespace(stream=_Stream, format=_Format, camera_info=_Info, option=_Option, log=log)
    state = {"pipelines": []}

    class Dev:
        def __init__(self, serial):
            self.serial = serial

        def get_info(self, what):
            assert what is _Info.serial_number
            return self.serial

    class Context:
        def query_devices(self):
            return [Dev(s) for s in serials]

    class Config:
        def __init__(self):
            self.device, self.streams = None, []

        def enable_device(self, serial):
            log.append(("enable_device", serial))
            self.device = serial

        def enable_stream(self, stream, w, h, fmt, fps):
            log.append(("enable_stream", stream, w, h, fmt, fps))
            self.streams.append((stream, w, h, fmt, fps))

    class VFrame:
        def __init__(self, data, ts, dom, n):
            self._data, self._ts, self._dom, self._n = data, ts, dom, n

        def __bool__(self):
            return True

        def get_data(self):
            return self._data

        def get_timestamp(self):
            return self._ts

        def get_frame_timestamp_domain(self):
            return self._dom

    class FrameSet:
        def __init__(self, color, depth, aligned=False):
            self.color, self.depth, self.aligned = color, depth, aligned

        def get_color_frame(self):
            return self.color

        def get_depth_frame(self):
            return self.depth

    class Align:
        def __init__(self, to):
            log.append(("align", to))

        def process(self, fs):
            return FrameSet(fs.color, fs.depth, aligned=True)

    class Intr:
        fx, fy, ppx, ppy = 600.0, 601.0, 31.5, 23.5
        width, height = W, H
        model, coeffs = "distortion.inverse_brown_conrady", [0.0] * 5

    class Profile:
        def __init__(self, cfg):
            self.cfg = cfg

        def get_device(self):
            return DeviceHandle()

        def get_stream(self, stream):
            assert stream is _Stream.color
            return types.SimpleNamespace(
                as_video_stream_profile=lambda: types.SimpleNamespace(get_intrinsics=Intr)
            )

    class Sensor:
        def supports(self, opt):
            return True

        def set_option(self, opt, v):
            log.append(("set_option", opt, v))

        def get_depth_scale(self):
            return depth_scale

    class DeviceHandle:
        def query_sensors(self):
            return [Sensor()]

        def first_depth_sensor(self):
            return Sensor()

    class Pipeline:
        def __init__(self, ctx=None):
            self.n, self.running, self.stall = 0, False, False
            state["pipelines"].append(self)

        def start(self, cfg):
            log.append(("start", cfg.device))
            for s in cfg.streams:
                if s[1] != W:
                    raise RuntimeError("Couldn't resolve requests")
            self.cfg, self.running = cfg, True
            return Profile(cfg)

        def try_wait_for_frames(self, timeout_ms):
            log.append(("try_wait_for_frames", timeout_ms))
            if self.stall:
                time.sleep(timeout_ms / 1000)
                return False, None
            time.sleep(0.005)
            k = self.n
            self.n += 1
            now_mono = time.monotonic()
            if domain == "hardware_clock":
                ts = (now_mono - 1000.0 + clock_offset) * 1000.0  # device clock: some other origin
            else:
                ts = (time.time() - 0.004) * 1000.0  # captured 4 ms ago on the host clock
            color = np.full((H, W, 3), k % 256, np.uint8)
            depth = np.full((H, W), 500 + k, np.uint16)  # raw units
            dom = getattr(_Domain, domain)
            return True, FrameSet(VFrame(color, ts, dom, k), VFrame(depth, ts, dom, k))

        def stop(self):
            log.append(("stop",))
            self.running = False

    rs.context, rs.config, rs.pipeline, rs.align = Context, Config, Pipeline, Align
    rs.state = state
    return rs


def test_realsense_streams_aligned_depth_and_converts_units_and_clock():
    rs = make_fake_rs(depth_scale=0.0001)  # D405-like: 0.1 mm per unit
    cam = RealSenseCamera(serial="222", name="wrist", width=W, height=H, fps=60, rs_module=rs)
    cam.start()
    try:
        f = cam.latest()
        assert ("enable_device", "222") in rs.log
        assert ("enable_stream", _Stream.color, W, H, _Format.rgb8, 60) in rs.log
        assert ("enable_stream", _Stream.depth, W, H, _Format.z16, 60) in rs.log
        assert ("align", _Stream.color) in rs.log  # depth aligned to colour
        assert ("set_option", _Option.global_time_enabled, 1.0) in rs.log
        assert f.color.shape == (H, W, 3) and f.depth.dtype == np.uint16
        raw = 500 + f.index
        assert np.all(f.depth == round(raw * 0.1))  # raw units * 0.1 mm
        age = time.monotonic() - f.timestamp
        assert 0.003 < age < 0.1, age  # host-clock ms -> our monotonic clock (captured ~4 ms before)
        assert cam.timestamp_domain == "global_time"
        K = cam.intrinsics()
        assert np.allclose(K, [[600, 0, 31.5], [0, 601, 23.5], [0, 0, 1]])
        timeouts = [e[1] for e in rs.log if e[0] == "try_wait_for_frames"]
        assert max(timeouts) <= 500
    finally:
        cam.stop()
    assert rs.log[-1] == ("stop",)


def test_realsense_hardware_clock_offset_follows_the_fastest_frame():
    m = ClockMapper(window=10)
    # device ms with another origin; arrival = capture + latency (min latency 2 ms)
    for k, lat in enumerate([0.010, 0.002, 0.030, 0.005]):
        cap = 50.0 + k * 0.033
        stamp = m.to_monotonic((cap - 40.0) * 1000.0, "hardware_clock", cap + lat, 0.0)
    assert stamp == pytest.approx(50.0 + 3 * 0.033 + 0.002)
    assert m.to_monotonic(2_000.0, "global_time", 0.0, 1.5) == pytest.approx(0.5)
    rs = make_fake_rs(domain="hardware_clock")
    cam = RealSenseCamera(serial="111", width=W, height=H, depth=False, rs_module=rs)
    cam.start()
    try:
        time.sleep(0.05)
        f = cam.latest()
        assert f.depth is None and not any(e[0] == "align" for e in rs.log)
        assert 0.0 <= time.monotonic() - f.timestamp < 0.1
    finally:
        cam.stop()


def test_realsense_several_cameras_by_serial_and_missing_serial():
    rs = make_fake_rs(serials=("111", "222"))
    assert list_realsense_serials(rs) == ["111", "222"]
    a = RealSenseCamera(serial="111", name="a", width=W, height=H, rs_module=rs)
    b = RealSenseCamera(serial="222", name="b", width=W, height=H, rs_module=rs)
    a.start(), b.start()
    try:
        assert [e[1] for e in rs.log if e[0] == "start"] == ["111", "222"]
        assert a.latest().shape == b.latest().shape == (H, W)
    finally:
        a.stop(), b.stop()
    with pytest.raises(DeviceNotFoundError, match=r"serial 999 not found.*111, 222"):
        RealSenseCamera(serial="999", rs_module=rs).start()
    with pytest.raises(DeviceNotFoundError, match="2 RealSense devices"):
        RealSenseCamera(serial=None, rs_module=rs).start()
    with pytest.raises(DeviceNotFoundError, match="refused 1280x720"):
        RealSenseCamera(serial="111", width=1280, height=720, rs_module=rs).start()


def test_realsense_stall_mid_episode_raises_camera_stalled():
    rs = make_fake_rs()
    cam = RealSenseCamera(serial="111", name="front", width=W, height=H, stall_timeout=0.15, rs_module=rs)
    cam.start()
    try:
        cam.latest()
        rs.state["pipelines"][-1].stall = True  # unplugged: no more frames
        time.sleep(0.35)
        with pytest.raises(CameraStalledError, match="front") as ei:
            cam.latest()
        assert ei.value.age > 0.15
    finally:
        cam.stop()


# ------------------------------------------------------------ fake cv2 ----------------------------------
def make_fake_cv2(opened=True, deliver=(H, W), frames=None):
    log: list = []

    class Cap:
        def __init__(self, device, api, params):
            log.append(("VideoCapture", device, api, tuple(params)))
            self.props, self.n = {}, 0

        def isOpened(self):  # noqa: N802
            return opened

        def set(self, prop, value):
            log.append(("set", prop, value))
            self.props[prop] = value
            return True

        def get(self, prop):
            if prop == cv2.CAP_PROP_FRAME_WIDTH:
                return float(deliver[1])
            if prop == cv2.CAP_PROP_FRAME_HEIGHT:
                return float(deliver[0])
            return self.props.get(prop, 0.0)

        def read(self):
            time.sleep(0.005)
            if frames is not None and self.n >= frames:
                return False, None
            bgr = np.zeros((deliver[0], deliver[1], 3), np.uint8)
            bgr[..., 0] = 255  # blue in BGR
            self.n += 1
            return True, bgr

        def release(self):
            log.append(("release",))

    cv2 = types.SimpleNamespace(
        __name__="fake_cv2", CAP_ANY=0, CAP_V4L2=200, CAP_PROP_FRAME_WIDTH=3, CAP_PROP_FRAME_HEIGHT=4,
        CAP_PROP_FPS=5, CAP_PROP_FOURCC=6, CAP_PROP_BUFFERSIZE=38, CAP_PROP_OPEN_TIMEOUT_MSEC=53,
        CAP_PROP_READ_TIMEOUT_MSEC=54, VideoCapture=Cap, log=log,
        VideoWriter_fourcc=lambda *c: sum(ord(ch) << (8 * i) for i, ch in enumerate(c)),
    )  # fmt: skip
    return cv2


def test_opencv_configures_capture_and_converts_bgr_to_rgb():
    cv2 = make_fake_cv2()
    cam = OpenCVCamera(device="/dev/video4", name="front", width=W, height=H, fps=30, backend="v4l2",
                       open_timeout=2.0, read_timeout=0.5, cv2_module=cv2)  # fmt: skip
    cam.start()
    try:
        f = cam.latest()
        assert cv2.log[0] == ("VideoCapture", "/dev/video4", 200, (53, 2000, 54, 500))
        sets = {e[1]: e[2] for e in cv2.log if e[0] == "set"}
        assert sets[3] == W and sets[4] == H and sets[5] == 30 and sets[38] == 1
        assert sets[6] == cv2.VideoWriter_fourcc(*"MJPG")
        assert f.color.shape == (H, W, 3)
        assert np.all(f.color[..., 2] == 255) and np.all(
            f.color[..., 0] == 0
        )  # blue lands in channel 2 (RGB)
        assert time.monotonic() - f.timestamp < 0.5
        K = cam.intrinsics()
        assert K[0, 2] == pytest.approx((W - 1) / 2) and K[0, 0] == K[1, 1] > 0
    finally:
        cam.stop()
    assert cv2.log[-1] == ("release",)
    cam2 = OpenCVCamera(width=W, height=H, intrinsics=[500, 510, 30, 20], cv2_module=make_fake_cv2())
    assert np.allclose(cam2.intrinsics(), [[500, 0, 30], [0, 510, 20], [0, 0, 1]])


def test_opencv_missing_device_wrong_mode_and_stall():
    with pytest.raises(DeviceNotFoundError, match=r"device 7.*could not be opened.*Video devices present"):
        OpenCVCamera(device=7, cv2_module=make_fake_cv2(opened=False)).start()
    with pytest.raises(DeviceNotFoundError, match=r"does not support 1920x1080 \(it delivers 64x48\)"):
        OpenCVCamera(width=1920, height=1080, cv2_module=make_fake_cv2()).start()
    with pytest.raises(ValueError, match="backend"):
        OpenCVCamera(backend="quicktime")
    cam = OpenCVCamera(name="side", width=W, height=H, stall_timeout=0.15, cv2_module=make_fake_cv2(frames=3))
    cam.start()
    try:
        time.sleep(0.35)
        with pytest.raises(CameraStalledError, match="side"):
            cam.latest()
    finally:
        cam.stop()

"""Intel RealSense (D4xx / D405 / L515) through pyrealsense2: colour + depth aligned to colour.

Several cameras are told apart by serial number (`list_realsense_serials()`); each gets its own pipeline.
Frame timestamps are converted to this machine's monotonic clock:

- `global_time` (the default where the firmware supports it: librealsense maps the device clock onto the
  host's system clock, in ms since the epoch) and `system_time` (host arrival time, epoch ms):
  monotonic = ts / 1000 - (time.time() - time.monotonic());
- `hardware_clock` (device ms with an unknown origin): monotonic = ts / 1000 + offset, where offset is the
  smallest (arrival time - device time) seen over the last `clock_window` frames: the frame with the least
  transport latency fixes the offset, and the window follows the drift of the device clock.

Depth is converted from the sensor's units (`depth_scale` metres per unit: 0.001 on D4xx, 0.0001 on D405 /
L515 by default) to uint16 millimetres, as `Frame.depth` documents.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from hardware.calibration import parse_base_from_camera
from hardware.drivers._threaded_camera import ThreadedCamera
from hardware.errors import DeviceNotFoundError


def _rs(module: Any = None) -> Any:
    if module is not None:
        return module
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DeviceNotFoundError(
            "pyrealsense2 is not installed: `pip install -e .[hardware]` (or pyrealsense2>=2.55)"
        ) from e
    return rs


def list_realsense_serials(rs_module: Any = None) -> list[str]:
    """Serial numbers of the RealSense devices connected now."""
    rs = _rs(rs_module)
    ctx = rs.context()
    return [d.get_info(rs.camera_info.serial_number) for d in ctx.query_devices()]


class ClockMapper:
    """Maps a camera's frame timestamps (ms, some clock domain) onto time.monotonic() seconds."""

    def __init__(self, window: int = 120) -> None:
        self._offsets: collections.deque[float] = collections.deque(maxlen=window)

    def to_monotonic(self, ts_ms: float, domain: str, arrival: float, wall_minus_mono: float) -> float:
        if domain in ("global_time", "system_time"):
            return ts_ms / 1000.0 - wall_minus_mono
        self._offsets.append(arrival - ts_ms / 1000.0)  # hardware_clock: latency-minimum offset
        return ts_ms / 1000.0 + min(self._offsets)


class RealSenseCamera(ThreadedCamera):
    """One RealSense camera by serial number.

    Args:
        serial: the device's serial number; None takes the only connected device (an error if several).
        name: camera name (observation key `images/<name>`).
        width, height, fps: colour (and depth) stream mode, e.g. 640x480@30, 848x480@60, 1280x720@30.
        depth: also stream depth, aligned to the colour image, into `Frame.depth` (uint16 mm).
        global_time: ask the firmware for global timestamps (device clock mapped to the host clock).
        stall_timeout: `latest()` raises CameraStalledError when the newest frame is older than this (s).
        rs_module: the pyrealsense2 module (tests inject a fake).
        base_from_camera: extrinsic calibration, camera (OpenCV axes: x right, y down, z forward) to the
            robot's base frame, e.g. from a hand-eye calibration: a 4x4 matrix or {position, quaternion (wxyz)
            | quaternion_xyzw} (hardware/calibration.py); what `camera_geometry()` reports for turning depth
            into base-frame points (robopolicy.perception). None: unknown (camera_geometry raises).
    """

    def __init__(
        self,
        serial: str | None = None,
        name: str = "realsense",
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        depth: bool = True,
        global_time: bool = True,
        clock_window: int = 120,
        stall_timeout: float = 0.5,
        start_timeout: float = 10.0,
        rs_module: Any = None,
        base_from_camera: Any = None,
    ) -> None:
        super().__init__(name, stall_timeout=stall_timeout, start_timeout=start_timeout)
        self.serial = None if serial is None else str(serial)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.depth = depth
        self.global_time = global_time
        self._rs_module = rs_module
        self._clock = ClockMapper(clock_window)
        self._pipeline = None
        self._align = None
        self._depth_scale_mm = 1.0  # multiply raw depth units by this to get millimetres
        self._K: np.ndarray | None = None
        self.base_from_camera = parse_base_from_camera(base_from_camera, f"camera '{name}': base_from_camera")
        self.distortion: tuple[str, list[float]] | None = None  # (model, coefficients) of the colour stream
        self.timestamp_domain: str | None = None

    def _describe(self) -> str:
        return f"RealSense camera '{self.name}' (serial {self.serial or 'any'})"

    def _open(self) -> None:
        rs = _rs(self._rs_module)
        serials = list_realsense_serials(rs)
        if self.serial is None:
            if len(serials) != 1:
                raise DeviceNotFoundError(
                    f"{self._describe()}: serial not given and {len(serials)} RealSense devices are connected "
                    f"({', '.join(serials) or 'none'}); set `serial` in configs/camera/realsense.yaml"
                )
            self.serial = serials[0]
        elif self.serial not in serials:
            raise DeviceNotFoundError(
                f"{self._describe()}: serial {self.serial} not found. Connected RealSense serials: "
                f"{', '.join(serials) if serials else 'none'}. Check the USB 3 cable and port (`rs-enumerate-devices`), "
                "that no other program (realsense-viewer) holds the camera, and the udev rules."
            )
        pipeline = rs.pipeline(rs.context())
        cfg = rs.config()
        cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        if self.depth:
            cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        try:
            profile = pipeline.start(cfg)
        except RuntimeError as e:
            raise DeviceNotFoundError(
                f"{self._describe()} refused {self.width}x{self.height}@{self.fps} (colour"
                f"{' + depth' if self.depth else ''}): {e}. Pick a mode the model supports "
                "(`rs-enumerate-devices -c`) and check it is on a USB 3 port."
            ) from e
        device = profile.get_device()
        for sensor in device.query_sensors():
            if self.global_time and sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1.0)
        if self.depth:
            scale_m = float(device.first_depth_sensor().get_depth_scale())
            self._depth_scale_mm = scale_m * 1000.0
            self._align = rs.align(rs.stream.color)
        # Depth is aligned to colour (rs.align above), so the colour stream's intrinsics are the ones of both
        # `Frame.color` and `Frame.depth`; the depth sensor's own intrinsics describe the unaligned image.
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        size = (getattr(intr, "width", self.width), getattr(intr, "height", self.height))
        if tuple(int(v) for v in size) != (self.width, self.height):
            raise DeviceNotFoundError(f"{self._describe()}: the colour stream's intrinsics are for {size[0]}x"
                                      f"{size[1]}, not the {self.width}x{self.height} requested")
        self._K = np.array([[intr.fx, 0.0, intr.ppx], [0.0, intr.fy, intr.ppy], [0.0, 0.0, 1.0]])
        # Back-projection is pinhole (no distortion): D4xx colour streams report zero coefficients. Kept so a
        # camera that reports non-zero ones can be told apart (`distortion`).
        coeffs = [float(c) for c in getattr(intr, "coeffs", ())]
        self.distortion = (str(getattr(intr, "model", "none")).rsplit(".", 1)[-1], coeffs)
        self._pipeline = pipeline

    def _grab(self, timeout: float) -> tuple[np.ndarray, np.ndarray | None, float] | None:
        ok, frames = self._pipeline.try_wait_for_frames(int(timeout * 1000))
        arrival = time.monotonic()
        wall_minus_mono = time.time() - arrival
        if not ok:
            return None
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        rgb = np.asanyarray(color.get_data()).copy()
        depth_mm = None
        if self.depth:
            d = frames.get_depth_frame()
            if not d:
                return None
            raw = np.asanyarray(d.get_data())
            if abs(self._depth_scale_mm - 1.0) < 1e-9:
                depth_mm = raw.astype(np.uint16, copy=True)
            else:
                depth_mm = np.clip(np.rint(raw * self._depth_scale_mm), 0, 65535).astype(np.uint16)
        domain = str(color.get_frame_timestamp_domain()).rsplit(".", 1)[-1]
        self.timestamp_domain = domain
        stamp = self._clock.to_monotonic(float(color.get_timestamp()), domain, arrival, wall_minus_mono)
        return rgb, depth_mm, stamp

    def _close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            finally:
                self._pipeline = None
                self._align = None

    def intrinsics(self) -> np.ndarray:
        if self._K is None:
            raise DeviceNotFoundError(f"{self._describe()}: intrinsics are known once the camera has started")
        return self._K.copy()

    def camera_geometry(self) -> dict[str, Any]:
        """What depth -> base-frame points needs: K of the (colour-aligned) depth image, the extrinsic
        calibration base_from_camera, and depth_scale in metres per unit of `Frame.depth` (uint16 mm)."""
        if not self.depth:
            raise ValueError(f"{self._describe()} streams no depth: set `depth: true` in its camera config "
                             "(configs/camera/realsense.yaml kwargs) to use it for point clouds")
        if self.base_from_camera is None:
            raise ValueError(f"{self._describe()}: no extrinsic calibration; set base_from_camera (a 4x4 matrix or "
                             "{position: [x, y, z], quaternion: [w, x, y, z]}, camera to robot base, OpenCV axes) in "
                             "its camera config (configs/camera/realsense.yaml kwargs) to use its depth as point clouds")
        return {"intrinsics": self.intrinsics(), "base_from_camera": self.base_from_camera.copy(),
                "depth_scale": 0.001}

    @property
    def depth_scale_mm(self) -> float:
        """Millimetres per raw depth unit of this device."""
        return self._depth_scale_mm

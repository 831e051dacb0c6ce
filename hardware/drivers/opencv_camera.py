"""Any UVC / V4L2 camera (or a video file / stream URL) through OpenCV's VideoCapture."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from hardware.drivers._threaded_camera import ThreadedCamera
from hardware.drivers._util import list_video_devices
from hardware.errors import DeviceNotFoundError

BACKENDS = {
    "any": "CAP_ANY",
    "v4l2": "CAP_V4L2",
    "gstreamer": "CAP_GSTREAMER",
    "ffmpeg": "CAP_FFMPEG",
    "dshow": "CAP_DSHOW",
    "msmf": "CAP_MSMF",
    "avfoundation": "CAP_AVFOUNDATION",
}


class OpenCVCamera(ThreadedCamera):
    """A camera read by `cv2.VideoCapture` in a capture thread; frames are converted BGR -> RGB.

    Args:
        device: camera index (0 = /dev/video0), a device path ("/dev/video2", "/dev/v4l/by-id/...") or a URL.
        name: camera name (observation key `images/<name>`).
        width, height, fps: requested capture mode; None keeps the camera's default. The delivered size is
            checked against the request (a camera silently falls back to another mode otherwise).
        backend: "any", "v4l2", "gstreamer", "ffmpeg", "dshow", "msmf" or "avfoundation".
        fourcc: pixel format to request, e.g. "MJPG" (needed for 640x480@30 and above on most USB 2 webcams).
        open_timeout, read_timeout: seconds, passed to backends that honour them.
        intrinsics: [fx, fy, cx, cy] at the delivered size from a calibration; without it K is estimated
            from `hfov_deg` (a guess: calibrate for anything metric).
        stall_timeout: `latest()` raises CameraStalledError when the newest frame is older than this.
        cv2_module: the OpenCV module (tests inject a fake).
    """

    def __init__(
        self,
        device: int | str = 0,
        name: str = "opencv",
        width: int | None = 640,
        height: int | None = 480,
        fps: float | None = 30.0,
        backend: str = "any",
        fourcc: str | None = "MJPG",
        open_timeout: float = 5.0,
        read_timeout: float = 1.0,
        intrinsics: list[float] | None = None,
        hfov_deg: float = 69.0,
        buffer_size: int = 1,
        stall_timeout: float = 0.5,
        start_timeout: float = 5.0,
        cv2_module: Any = None,
    ) -> None:
        super().__init__(name, stall_timeout=stall_timeout, start_timeout=start_timeout)
        if backend not in BACKENDS:
            raise ValueError(f"unknown OpenCV backend '{backend}'; choose one of {', '.join(BACKENDS)}")
        if fourcc is not None and len(fourcc) != 4:
            raise ValueError(f"fourcc must have 4 characters, got {fourcc!r}")
        self.device = device
        self.width, self.height, self.fps = width, height, fps
        self.backend, self.fourcc = backend, fourcc
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self._intr = None if intrinsics is None else [float(v) for v in intrinsics]
        self.hfov_deg = hfov_deg
        self.buffer_size = buffer_size
        self._cv2 = cv2_module
        self._cap = None
        self._size: tuple[int, int] | None = None  # delivered (height, width)

    def _describe(self) -> str:
        return f"OpenCV camera '{self.name}' (device {self.device!r})"

    @property
    def cv2(self) -> Any:
        if self._cv2 is None:
            import cv2

            self._cv2 = cv2
        return self._cv2

    def _open(self) -> None:
        cv2 = self.cv2
        api = getattr(cv2, BACKENDS[self.backend], 0)
        params: list[int] = []
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000)]
        if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000)]
        cap = cv2.VideoCapture(self.device, api, params)
        if not cap.isOpened():
            cap.release()
            present = list_video_devices()
            raise DeviceNotFoundError(
                f"{self._describe()} could not be opened with backend '{self.backend}'. Video devices present: "
                f"{', '.join(present) if present else 'none'}. Check that the camera is plugged in, that "
                "no other program holds it, that the index / path is right, and that your user is in the "
                "'video' group."
            )
        if self.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(self.width))
        if self.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(self.height))
        if self.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, float(self.fps))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, float(self.buffer_size))  # newest frame, not a stale queue
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if (self.width is not None and w != self.width) or (self.height is not None and h != self.height):
            cap.release()
            raise DeviceNotFoundError(
                f"{self._describe()} does not support {self.width}x{self.height} (it delivers {w}x{h}); "
                "list its modes with `v4l2-ctl --list-formats-ext` and pick one, or set width/height to null"
            )
        if self.fps is not None:
            got = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if got > 0 and abs(got - self.fps) > 0.5:
                self.fps_delivered = got  # noted, not fatal: many UVC cameras report their nominal rate
        self._size = (h, w)
        self._cap = cap

    def _grab(self, timeout: float) -> tuple[np.ndarray, None, float] | None:
        ok, bgr = self._cap.read()
        stamp = (
            time.monotonic()
        )  # read() returns when the frame is decoded: the best stamp VideoCapture gives
        if not ok or bgr is None:
            time.sleep(min(timeout, 0.01))
            return None
        if bgr.ndim == 2:
            rgb = np.repeat(bgr[:, :, None], 3, axis=2)
        else:
            rgb = np.ascontiguousarray(bgr[:, :, 2::-1])
        return rgb, None, stamp

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None

    def intrinsics(self) -> np.ndarray:
        if self._size is not None:
            h, w = self._size
        else:
            h, w = (self.height or 480), (self.width or 640)
        if self._intr is not None:
            fx, fy, cx, cy = self._intr
        else:
            fx = fy = (w / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)
            cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

"""`ThreadedCamera`: the part every real camera driver shares.

A capture thread calls the driver's blocking `_grab()` in a loop and keeps the newest frame; `latest()`
returns it without blocking and raises `CameraStalledError` when the newest frame is older than
`stall_timeout` (the camera stopped delivering: unplugged, USB bandwidth, a crashed driver), so the caller
can mark the episode and hold the arm. `wait_for_frame()` lets a consumer (the camera process publishing
into shared memory) block until a new frame arrives instead of polling.
"""

from __future__ import annotations

import abc
import threading
import time
import types

import numpy as np

from hardware.camera import Camera, Frame
from hardware.errors import (
    CameraStalledError,
    DeviceAlreadyConnectedError,
    DeviceNotFoundError,
    HardwareError,
)


class ThreadedCamera(Camera):
    """Base of the OpenCV and RealSense drivers.

    Subclasses implement `_open()` (raise DeviceNotFoundError with a helpful message), `_grab(timeout)`
    -> (color RGB uint8 [H, W, 3], depth uint16 mm [H, W] or None, capture time on the monotonic clock) or
    None when no frame came within `timeout`, `_close()` and `intrinsics()`.
    """

    def __init__(self, name: str, stall_timeout: float = 0.5, start_timeout: float = 5.0) -> None:
        if stall_timeout <= 0 or start_timeout <= 0:
            raise ValueError("stall_timeout and start_timeout must be positive")
        self._name = name
        self.stall_timeout = float(stall_timeout)
        self.start_timeout = float(start_timeout)
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._frame_arrival = 0.0
        self._error: BaseException | None = None
        self.n_frames = 0
        self.n_timeouts = 0
        self._listeners: list = []

    # ---- pickling (ProcessCamera sends an unstarted camera to its child process) --------------------
    def __getstate__(self) -> dict:
        if self._running:
            raise TypeError(f"{self._describe()} is running and cannot be pickled; pass it unstarted")
        st = self.__dict__.copy()
        st["_listeners"] = []
        for k in ("_cond", "_stop_evt", "_thread"):
            st.pop(k, None)
        for k, v in list(st.items()):
            if isinstance(v, types.ModuleType):  # an SDK module: the child imports its own
                st[k] = None
        return st

    def __setstate__(self, st: dict) -> None:
        self.__dict__.update(st)
        self._cond, self._stop_evt, self._thread = threading.Condition(), threading.Event(), None

    # ---- subclass hooks ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _grab(self, timeout: float) -> tuple[np.ndarray, np.ndarray | None, float] | None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _describe(self) -> str:
        """What the device is (for error messages), e.g. "RealSense serial 123"."""
        return f"camera '{self.name}'"

    # ---- Camera ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def is_running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._running:
            raise DeviceAlreadyConnectedError(f"camera '{self.name}' is already running")
        self._open()
        self._stop_evt.clear()
        self._frame, self._error, self.n_frames = None, None, 0
        self._thread = threading.Thread(target=self._loop, name=f"camera-{self.name}", daemon=True)
        self._running = True
        self._thread.start()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._frame is not None or self._error is not None, self.start_timeout
            )
        if self._error is not None or not ok:
            err = self._error
            self.stop()
            if err is not None:
                raise HardwareError(f"{self._describe()} failed while starting: {err}") from err
            raise DeviceNotFoundError(
                f"{self._describe()} opened but delivered no frame within {self.start_timeout} s: check the "
                "cable / USB port (USB 3 for depth), that no other program uses the camera, and that the "
                "requested resolution and fps are supported"
            )

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._thread = None
        try:
            self._close()
        finally:
            with self._cond:
                self._cond.notify_all()

    def latest(self) -> Frame:
        self._require_running()
        with self._cond:
            frame, arrival, err = self._frame, self._frame_arrival, self._error
        if err is not None:
            raise HardwareError(f"{self._describe()} capture failed: {err!r}") from err
        if frame is None:  # cannot happen after start(), kept for safety
            raise CameraStalledError(self.name, float("inf"), self.stall_timeout, -1, "no frame yet")
        age = time.monotonic() - arrival
        if age > self.stall_timeout:
            raise CameraStalledError(
                self.name,
                age,
                self.stall_timeout,
                frame.index,
                f"{self._describe()}: check the cable and power",
            )
        return frame

    def add_frame_listener(self, callback) -> None:
        """Call `callback(frame)` from the capture thread for every new frame (used by ProcessCamera's child
        to publish each frame into shared memory without a thread hop)."""
        self._listeners.append(callback)

    def wait_for_frame(self, after_index: int, timeout: float) -> Frame | None:
        """Block until a frame with index > `after_index` exists (or `timeout`); returns it or None."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    (self._frame is not None and self._frame.index > after_index)
                    or self._error is not None
                    or not self._running
                ),
                timeout,
            )
            if self._error is not None:
                raise HardwareError(f"{self._describe()} capture failed: {self._error!r}") from self._error
            f = self._frame
        return f if f is not None and f.index > after_index else None

    # ---- capture thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        index = 0
        try:
            while not self._stop_evt.is_set():
                got = self._grab(min(0.1, self.stall_timeout))
                if got is None:
                    self.n_timeouts += 1
                    continue
                color, depth, stamp = got
                frame = Frame(color=color, timestamp=stamp, index=index, depth=depth)
                index += 1
                with self._cond:
                    self._frame, self._frame_arrival = frame, time.monotonic()
                    self.n_frames = index
                    self._cond.notify_all()
                for cb in self._listeners:
                    cb(frame)
        except BaseException as e:  # surfaced by latest()
            with self._cond:
                self._error = e
                self._cond.notify_all()

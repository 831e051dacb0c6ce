"""`ProcessCamera`: run any `Camera` in a child process that publishes into a shared-memory `FrameRing`.

    cam = ProcessCamera(OpenCVCamera(index=0, name="front"))          # an unstarted, picklable Camera
    cam = ProcessCamera(functools.partial(make_camera, "realsense", serial="..."), name="wrist")
    cam.start(); frame = cam.latest(); cam.stop()

The child is started with the "spawn" method (safe next to threads, CUDA and OpenGL), builds / starts the
camera, creates the ring once it knows the frame size, sends the ring's name back through a one-shot pipe
(the only message that goes through it), then copies every new frame into the ring. `latest()` in the
parent reads the newest frame straight from shared memory (one memcpy, no pickling, no pipe), and raises
`CameraStalledError` when the newest frame is older than `stall_timeout` or the child has died.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable

import numpy as np

from hardware.camera import Camera, Frame
from hardware.errors import (
    CameraStalledError,
    DeviceAlreadyConnectedError,
    DeviceNotFoundError,
    HardwareError,
)
from hardware.shm_ring import STATE_ERROR, STATE_RUNNING, STATE_STOPPED, FrameRing

CameraSpec = Camera | Callable[[], Camera]


def _child_main(spec: CameraSpec, n_slots: int, conn, stop_conn, poll_interval: float) -> None:
    # `stop_conn` is the read end of a pipe: readable when the parent asks to stop, or at EOF when the parent
    # died (the child then exits too and releases the device). A pipe, not an Event: a child killed while it
    # waits on an mp.Event leaves the Event's condition broken and the parent's set() would hang.
    ring: FrameRing | None = None
    cam: Camera | None = None
    try:
        cam = spec if isinstance(spec, Camera) else spec()
        cam.start()
        first = cam.latest()
        h, w = first.shape
        ring = FrameRing.create(h, w, depth=first.depth is not None, n_slots=n_slots)
        ring.set_intrinsics(cam.intrinsics())
        ring.write(first.color, first.timestamp, first.index, first.depth)
        ring.set_state(STATE_RUNNING)
        conn.send(("ok", ring.name, _static_geometry(cam)))
        conn.close()
        last = first.index
        if hasattr(cam, "add_frame_listener"):  # publish from the capture thread: no hop, no skipped frame
            published = [last]

            def publish(f: Frame) -> None:
                if f.index > published[0]:
                    ring.write(f.color, f.timestamp, f.index, f.depth)
                    published[0] = f.index

            cam.add_frame_listener(publish)
            while not stop_conn.poll(0.05):
                ring.heartbeat()
                try:
                    cam.latest()  # surfaces a capture-thread failure; a stall is judged by the reader
                except CameraStalledError:
                    pass
        else:  # a generic Camera: poll latest()
            while not stop_conn.poll(0):
                f = cam.latest()
                if f.index == last:
                    ring.heartbeat()
                    time.sleep(poll_interval)
                    continue
                ring.write(f.color, f.timestamp, f.index, f.depth)
                last = f.index
        ring.set_state(STATE_STOPPED)
    except BaseException as e:  # report to the parent: through the ring if it exists, else the pipe
        msg = f"{type(e).__name__}: {e}"
        if ring is not None:
            ring.set_state(STATE_ERROR, msg)
        else:
            try:
                conn.send(("error", msg + "\n" + traceback.format_exc(limit=5)))
            except Exception:
                pass
    finally:
        if cam is not None:
            try:
                cam.stop()
            except Exception:
                pass
        if ring is not None:
            ring.close()  # the parent unlinks


def _static_geometry(cam: Camera) -> dict | str | None:
    """The child camera's `camera_geometry()` (sent once: a process camera's mount is fixed), the message of
    why it has none (e.g. no extrinsic calibration), or None when the driver has no such method."""
    getter = getattr(cam, "camera_geometry", None)
    if getter is None:
        return None
    try:
        return dict(getter())
    except Exception as e:  # reported when the parent asks for the geometry, not at start
        return f"{type(e).__name__}: {e}"


class ProcessCamera(Camera):
    """Runs a camera in its own process; `latest()` reads the newest frame from shared memory.

    Args:
        camera: an unstarted Camera (pickled to the child) or a picklable zero-argument factory.
        name: camera name; defaults to the wrapped camera's name (a factory needs it given).
        n_slots: ring slots (>= 2; 4 leaves the reader three frame times to copy a frame).
        stall_timeout: `latest()` raises CameraStalledError when the newest frame is older than this (s).
        start_timeout: how long `start()` waits for the child's first frame (s).
    """

    def __init__(
        self,
        camera: CameraSpec,
        name: str | None = None,
        n_slots: int = 4,
        stall_timeout: float = 0.5,
        start_timeout: float = 20.0,
        poll_interval: float = 0.001,
    ) -> None:
        if name is None:
            if not isinstance(camera, Camera):
                raise ValueError("ProcessCamera(factory) needs name=")
            name = camera.name
        self._name = name
        self._spec = camera
        self.n_slots = n_slots
        self.stall_timeout = float(stall_timeout)
        self.start_timeout = float(start_timeout)
        self.poll_interval = poll_interval
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._stop_w = None
        self._ring: FrameRing | None = None
        self._K: np.ndarray | None = None
        self._geometry: dict | str | None = None  # the child's camera_geometry() (or why it has none)
        self._cache: tuple | None = None  # (Frame, RingFrame) of the last copied read

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_running(self) -> bool:
        return self._ring is not None

    @property
    def ring(self) -> FrameRing | None:
        return self._ring

    def start(self) -> None:
        if self._ring is not None:
            raise DeviceAlreadyConnectedError(f"camera '{self.name}' is already running")
        parent_conn, child_conn = self._ctx.Pipe(duplex=False)
        stop_r, self._stop_w = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(
            target=_child_main,
            args=(self._spec, self.n_slots, child_conn, stop_r, self.poll_interval),
            name=f"camera-{self.name}",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        stop_r.close()
        try:
            if not parent_conn.poll(self.start_timeout):
                raise DeviceNotFoundError(
                    f"camera '{self.name}': its process delivered no first frame within {self.start_timeout} s"
                )
            try:
                status, payload, *rest = parent_conn.recv()
            except EOFError:
                raise HardwareError(
                    f"camera '{self.name}': its process exited (code {self._proc.exitcode}) before the first frame"
                ) from None
            if status != "ok":
                # keep the driver's own message (it names the serial / device and what to check)
                raise DeviceNotFoundError(f"camera '{self.name}' failed to start in its process: {payload}")
            self._ring = FrameRing.attach(payload)
            self._K = self._ring.intrinsics()
            self._geometry = rest[0] if rest else None
        except BaseException:
            self._shutdown_child()
            raise
        finally:
            parent_conn.close()

    def _shutdown_child(self) -> None:
        if self._stop_w is not None:
            try:
                self._stop_w.send(True)
            except OSError:  # the child is gone already
                pass
            self._stop_w.close()
            self._stop_w = None
        if self._proc is not None:
            self._proc.join(timeout=3.0)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=2.0)
        self._proc = None

    def stop(self) -> None:
        if self._ring is None:
            return
        ring, self._ring = self._ring, None
        self._cache = None
        self._shutdown_child()
        ring.close()
        ring.unlink()

    def intrinsics(self) -> np.ndarray:
        self._require_running()
        return self._K.copy()

    def camera_geometry(self) -> dict:
        """The wrapped camera's `camera_geometry()` (intrinsics, base_from_camera, depth_scale), read once
        when its process started; raises ValueError with the driver's reason when it has none."""
        self._require_running()
        if isinstance(self._geometry, dict):
            return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._geometry.items()}
        if self._geometry is None:
            raise ValueError(f"camera '{self.name}': its driver reports no camera geometry (intrinsics + "
                             "base_from_camera), so its depth cannot become base-frame points")
        raise ValueError(f"camera '{self.name}': {self._geometry}")

    def latest(self, copy: bool = True) -> Frame:
        """The newest frame from shared memory (a private copy unless copy=False).

        When nothing new was published since the previous call, the previous frame is returned again
        without copying (the checks for a stalled or dead camera still run on every call).
        """
        self._require_running()
        ring = self._ring
        cached = self._cache
        if copy and cached is not None and ring.count == cached[1].count:
            rf, frame = cached[1], cached[0]
        else:
            rf = ring.read_latest(copy=copy)
            frame = Frame(color=rf.color, timestamp=rf.timestamp, index=rf.index, depth=rf.depth)
            if copy:
                self._cache = (frame, rf)
        if ring.state == STATE_ERROR or (self._proc is not None and not self._proc.is_alive()):
            age = time.monotonic() - rf.published_at
            detail = (
                ring.error or f"camera process exited with code {self._proc.exitcode if self._proc else '?'}"
            )
            raise CameraStalledError(self.name, age, self.stall_timeout, rf.index, detail)
        age = time.monotonic() - rf.published_at
        if age > self.stall_timeout:
            raise CameraStalledError(
                self.name, age, self.stall_timeout, rf.index, "no new frame from its process"
            )
        return frame

    @property
    def frames_published(self) -> int:
        """How many frames the child has published (for drop statistics: compare with frame indices)."""
        return self._ring.count if self._ring is not None else 0

"""A synthetic camera: frames generated in a capture thread at a fixed rate, no device needed.

For tests, benchmarks and dry runs of the teleop tool. Every pixel of frame k has the value k % 256 and
every depth pixel k % 65536, so a torn frame (two frames mixed) is detectable by checking uniformity.
`stall_after` stops delivering after that many frames (a camera unplugged mid-episode).
"""

from __future__ import annotations

import time

import numpy as np

from hardware.drivers._threaded_camera import ThreadedCamera


class SyntheticCamera(ThreadedCamera):
    def __init__(
        self,
        name: str = "synthetic",
        height: int = 240,
        width: int = 320,
        fps: float = 30.0,
        depth: bool = False,
        stall_after: int | None = None,
        stall_timeout: float = 0.5,
        start_timeout: float = 5.0,
    ) -> None:
        super().__init__(name, stall_timeout=stall_timeout, start_timeout=start_timeout)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.height, self.width, self.fps = int(height), int(width), float(fps)
        self.depth = depth
        self.stall_after = stall_after
        self._k = 0
        self._next = 0.0

    def _open(self) -> None:
        self._k = 0
        self._next = time.monotonic()

    def _grab(self, timeout: float):
        if self.stall_after is not None and self._k >= self.stall_after:
            time.sleep(timeout)
            return None
        delay = self._next - time.monotonic()
        if delay > timeout:
            time.sleep(timeout)
            return None
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        k = self._k
        self._k += 1
        color = np.full((self.height, self.width, 3), k % 256, dtype=np.uint8)
        depth = np.full((self.height, self.width), k % 65536, dtype=np.uint16) if self.depth else None
        return color, depth, time.monotonic()

    def _close(self) -> None:
        pass

    def intrinsics(self) -> np.ndarray:
        f = 0.8 * self.width
        return np.array([[f, 0.0, (self.width - 1) / 2], [0.0, f, (self.height - 1) / 2], [0.0, 0.0, 1.0]])

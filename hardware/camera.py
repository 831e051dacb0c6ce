"""The `Camera` interface: timestamped colour (and optional depth) frames with intrinsics.

Drivers (RealSense, OpenCV, the simulated camera in `sim.embedded.robot`) implement it. `latest()` never
blocks for long: it returns the newest frame the camera has delivered, stamped with the monotonic time it
was captured, so the runtime can assemble observations from frames of known age.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from hardware.errors import DeviceNotConnectedError


@dataclass(frozen=True)
class Frame:
    """One camera frame."""

    color: np.ndarray  # uint8 [H, W, 3], RGB, upright
    timestamp: float  # seconds, monotonic clock, when the frame was captured
    index: int  # frame counter since start(), increases by one per new frame
    depth: np.ndarray | None = None  # uint16 [H, W], millimetres, 0 = no measurement

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the frame."""
        return int(self.color.shape[0]), int(self.color.shape[1])


class Camera(abc.ABC):
    """A camera that streams frames.

    Life cycle: `start()` -> `latest()` ... -> `stop()`. `latest()` on a camera that is not running raises
    `DeviceNotConnectedError`.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Camera name, used as the observation key `images/<name>`."""

    @abc.abstractmethod
    def start(self) -> None:
        """Open the device and start streaming. Raises DeviceAlreadyConnectedError if running."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop streaming and release the device. Safe to call twice."""

    @property
    @abc.abstractmethod
    def is_running(self) -> bool:
        """Whether the camera is streaming."""

    @abc.abstractmethod
    def latest(self) -> Frame:
        """The newest frame."""

    @abc.abstractmethod
    def intrinsics(self) -> np.ndarray:
        """The 3x3 pinhole matrix K (pixels) of the colour image at its delivered resolution."""

    def _require_running(self) -> None:
        if not self.is_running:
            raise DeviceNotConnectedError(
                f"camera '{self.name}' is not running: call start() before reading frames"
            )

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

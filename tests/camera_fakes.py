"""Test doubles for `hardware.Camera`, shared by the collect, runtime and point-cloud tests."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from hardware.camera import Camera, Frame


class WrappedCamera(Camera):
    """Forwards everything to `inner`; subclasses override `latest()` to log or alter frames."""

    def __init__(self, inner: Camera) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    @property
    def is_running(self) -> bool:
        return self.inner.is_running

    def intrinsics(self) -> np.ndarray:
        return self.inner.intrinsics()

    def camera_geometry(self) -> dict:
        return self.inner.camera_geometry()

    def latest(self) -> Frame:
        return self.inner.latest()


class StaticCamera(Camera):
    """A running camera with a fixed geometry that always gives one frame (timestamped now).

    `frame=None`: a camera that only carries a geometry (latest() is not expected to be called);
    `geometry=None`: an uncalibrated camera (camera_geometry() raises, as a driver without extrinsics does).
    """

    def __init__(self, name: str, frame: Frame | None, geometry: dict | None) -> None:
        self._name, self.frame, self.geometry = name, frame, geometry

    @property
    def name(self) -> str:
        return self._name

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def is_running(self) -> bool:
        return True

    def latest(self) -> Frame:
        if self.frame is None:
            raise AssertionError(f"camera '{self.name}' has no frame: latest() was not expected")
        return dataclasses.replace(self.frame, timestamp=time.monotonic())

    def intrinsics(self) -> np.ndarray:
        return np.asarray(self.geometry["intrinsics"])

    def camera_geometry(self) -> dict:
        if self.geometry is None:
            raise ValueError(f"camera '{self.name}': no extrinsic calibration")
        return dict(self.geometry)

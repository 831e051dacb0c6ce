"""Point clouds from running cameras (`hardware.Camera` frames): the runtime's path to `pointcloud`.

`CameraPointCloud` holds a PointCloudConfig and the cameras it names, checks once that they can give point
clouds (a depth stream, a geometry), and turns one set of `Frame`s into the `pointcloud` observation with
`pointcloud_from_frame`: the function the env wrapper (env.py: sim recording, the eval runner) calls, with
the same config, so one depth frame gives one tensor on every path.

A camera's geometry comes from its `camera_geometry()`: the RealSense driver's (K of the colour stream, which
the depth is aligned to, and the hand-eye calibration `base_from_camera` of its config,
hardware/calibration.py), a `ProcessCamera`'s (the wrapped driver's, read when its process started), or the
simulated camera's (MuJoCo's, at the current state). Depth is `Frame.depth`: uint16 millimetres, 0 = none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from hardware.camera import Camera, Frame
from robopolicy.perception.env import pointcloud_config
from robopolicy.perception.geometry import CameraGeometry
from robopolicy.perception.pointcloud import PointCloudConfig, pointcloud_from_frame


def geometry_of(camera: Camera) -> CameraGeometry:
    """The CameraGeometry of a running camera, from its `camera_geometry()` (ValueError naming the fix)."""
    getter = getattr(camera, "camera_geometry", None)
    if getter is None:
        raise ValueError(f"camera '{camera.name}' ({type(camera).__name__}) has no camera_geometry(): its frames "
                         "cannot become base-frame points; use a depth camera (RealSense, or the simulated camera "
                         "with depth: true)")
    g = getter()
    try:
        return CameraGeometry(np.asarray(g["intrinsics"]), np.asarray(g["base_from_camera"]),
                              float(g.get("depth_scale", 0.001)))
    except ValueError as e:
        raise ValueError(f"camera '{camera.name}': {e}") from e


def runtime_pointcloud_config(values: PointCloudConfig | Mapping[str, Any] | None,
                              workspace: tuple[Sequence[float], Sequence[float]] | None = None) -> PointCloudConfig:
    """A PointCloudConfig for real cameras: the crop box must be known (from `values` or `workspace`)."""
    cfg = pointcloud_config(values if isinstance(values, PointCloudConfig) else dict(values or {}))
    if cfg.workspace_lower is None:
        if workspace is None:
            raise ValueError("point clouds from real cameras need the crop box: set pointcloud.workspace_lower and "
                             "pointcloud.workspace_upper ([x, y, z] m, robot base frame) to the box the training "
                             "data was cropped to")
        cfg = cfg.with_workspace(*workspace)
    return cfg


class CameraPointCloud:
    """`frames -> pointcloud` for the cameras a PointCloudConfig names, checked against the robot's cameras.

    Args:
        cfg: the point-cloud config (workspace box set; see `runtime_pointcloud_config`).
        cameras: the robot's cameras; `cfg.cameras` must name some of them.
    """

    def __init__(self, cfg: PointCloudConfig, cameras: Sequence[Camera]) -> None:
        if cfg.workspace_lower is None:
            raise ValueError("CameraPointCloud needs a config with its workspace box set (runtime_pointcloud_config)")
        by_name = {c.name: c for c in cameras}
        missing = [c for c in cfg.cameras if c not in by_name]
        if missing:
            raise ValueError(f"pointcloud.cameras {list(missing)} are not among the robot's cameras "
                             f"{sorted(by_name)}: add a depth camera config with that name (cameras=[...]), or set "
                             "pointcloud.cameras to the names the training data used")
        self.cfg = cfg
        self.cameras = {c: by_name[c] for c in cfg.cameras}

    @property
    def shape(self) -> tuple[int, int]:
        """Per-step shape of the `pointcloud` observation: (num_points, 3 or 6)."""
        return (int(self.cfg.num_points), int(self.cfg.channels))

    def check(self) -> None:
        """Raise ValueError now (not in the control loop) if a camera gives no depth or has no geometry."""
        frames = {name: cam.latest() for name, cam in self.cameras.items()}
        for name, cam in self.cameras.items():
            check_frame(name, frames[name], self.cfg.color)
            geometry_of(cam)

    def __call__(self, frames: Mapping[str, Frame]) -> np.ndarray:
        """The (num_points, 3 or 6) float32 base-frame point cloud of one frame of each camera."""
        return self.prepare(frames)()

    def prepare(self, frames: Mapping[str, Frame]) -> Callable[[], np.ndarray]:
        """Check `frames` and read the cameras' geometry now; the returned zero-argument callable builds the
        point cloud (back-projection, crop, sampling: the costly part) later, in any thread or process.

        The geometry is read here, not in the build, because a moving camera's (the simulated wrist camera's)
        is read at the current state: the pose must be the one of these frames. The callable is picklable
        and holds only the depth (and, with colour, the image) of each camera.
        """
        depths, images, geometries = {}, {}, {}
        for name, cam in self.cameras.items():
            if name not in frames:
                raise KeyError(f"no frame of camera '{name}' to build the point cloud from (have {sorted(frames)})")
            frame = frames[name]
            check_frame(name, frame, self.cfg.color)
            depths[name], images[name] = frame.depth, frame.color
            geometries[name] = geometry_of(cam)
        return partial(pointcloud_from_frame, depths, geometries, self.cfg, images if self.cfg.color else None)


def check_frame(name: str, frame: Frame, color: bool) -> None:
    """ValueError naming the camera and the fix when `frame` cannot give a point cloud."""
    depth = frame.depth
    if depth is None:
        raise ValueError(f"camera '{name}' gives no depth, but the point cloud is built from its depth: set "
                         f"`depth: true` in its camera config (kwargs of configs/camera/*.yaml; the RealSense driver "
                         f"aligns depth to colour), or drop '{name}' from pointcloud.cameras")
    depth = np.asarray(depth)
    if depth.dtype != np.uint16:
        extra = ""
        if np.issubdtype(depth.dtype, np.floating):
            extra = f", with {int(np.count_nonzero(~np.isfinite(depth)))} NaN/inf values"
        raise ValueError(f"camera '{name}': depth must be uint16 millimetres with 0 for no measurement (Frame.depth),"
                         f" got {depth.dtype}{extra}; fix the driver's depth conversion")
    if depth.ndim != 2 or depth.shape != tuple(frame.color.shape[:2]):
        raise ValueError(f"camera '{name}': depth of shape {depth.shape} is not aligned to its colour image "
                         f"{tuple(frame.color.shape[:2])} (whose intrinsics are used); stream depth aligned to "
                         "colour at the same resolution")
    if color and (frame.color.ndim != 3 or frame.color.shape[2] != 3):
        raise ValueError(f"camera '{name}': pointcloud.color needs RGB [H, W, 3], got {frame.color.shape}")

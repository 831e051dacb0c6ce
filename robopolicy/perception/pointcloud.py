"""`pointcloud_from_frame`: the one function that turns camera frames into a policy's `pointcloud`.

Recording (the env wrapper in env.py, used by `robopolicy sim collect`), training (which reads the stored
points back) and deployment / evaluation (the same wrapper, or a runtime calling this function on a
RealSense frame) all go through it, so a policy sees identical tensors from the same depth frame.

Steps: back-project each camera's depth into the robot's base frame (geometry.py), concatenate the
cameras, keep the points inside the workspace box, sample exactly `num_points` (sampling.py). Points are
float32 metres in the base frame, (N, 3), or (N, 6) with RGB in [0, 1] when `color` is on. They are not
normalised further (DP3's convention; a workspace of about a metre keeps them O(1)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from robopolicy.perception.geometry import CameraGeometry, depth_to_points
from robopolicy.perception.sampling import SAMPLERS, sample_points


@dataclass
class PointCloudConfig:
    """How a `pointcloud` observation is built. Typed; built from the `pointcloud:` dict of env_kwargs."""

    cameras: tuple[str, ...] = ("front",)
    num_points: int = 512  # DP3 / MP1 use 512 (Adroit, Meta-World) to 1024
    workspace_lower: tuple[float, float, float] | None = None  # base-frame crop box (m); None: the env's default
    workspace_upper: tuple[float, float, float] | None = None
    sampler: str = "fps_voxel"  # fps | fps_voxel | random (chosen by scripts/bench_pointcloud.py)
    voxel_size: float = 0.02  # m, the fps_voxel pre-filter (bench: same mean coverage as exact FPS, ~2.5x faster)
    color: bool = False  # append RGB in [0, 1] from images/<camera> (N, 6)
    min_depth_m: float = 0.05
    max_depth_m: float = 3.0
    seed: int = 0  # the random sampler's (fixed: same frame -> same points)
    keep_depth: bool = True  # keep depth/<camera> in the observation beside the points
    keep_images: bool = True  # keep images/<camera> in the observation beside the points

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.cameras:
            raise ValueError("pointcloud.cameras must name at least one camera")
        if self.num_points < 1:
            raise ValueError(f"pointcloud.num_points must be >= 1, got {self.num_points}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"pointcloud.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if (self.workspace_lower is None) != (self.workspace_upper is None):
            raise ValueError("give both pointcloud.workspace_lower and workspace_upper, or neither")
        if self.workspace_lower is not None:
            lo, hi = np.asarray(self.workspace_lower, float), np.asarray(self.workspace_upper, float)
            if lo.shape != (3,) or hi.shape != (3,) or not (lo < hi).all():
                raise ValueError(f"the workspace box needs lower < upper in x, y, z; got {lo.tolist()} / {hi.tolist()}")
            self.workspace_lower = tuple(float(v) for v in lo)
            self.workspace_upper = tuple(float(v) for v in hi)

    @property
    def channels(self) -> int:
        return 6 if self.color else 3

    def with_workspace(self, lower, upper) -> PointCloudConfig:
        """A copy with the crop box set (when it was left to the env)."""
        return replace(self, workspace_lower=tuple(lower), workspace_upper=tuple(upper))


def crop_to_workspace(points: np.ndarray, lower, upper) -> np.ndarray:
    """The rows of `points` (M, C>=3) whose xyz lie inside the box [lower, upper] (inclusive)."""
    lo = np.asarray(lower, dtype=np.float32)
    hi = np.asarray(upper, dtype=np.float32)
    xyz = points[:, :3]
    inside = np.all((xyz >= lo) & (xyz <= hi), axis=1)
    return points[inside]


def pointcloud_from_frame(depths: Mapping[str, np.ndarray], cameras: Mapping[str, CameraGeometry],
                          cfg: PointCloudConfig, images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The (num_points, 3 or 6) float32 base-frame point cloud of one frame of `cfg.cameras`.

    depths: camera -> depth [H, W] (uint16 in `depth_scale` units); cameras: camera -> CameraGeometry at
    the time of the frame; images: camera -> RGB uint8 [H, W, 3] aligned with the depth (needed with color).
    An empty crop (e.g. a covered camera) gives all-zero points rather than an error, so a running robot
    does not stop on one bad frame; the count is always num_points.
    """
    if cfg.workspace_lower is None:
        raise ValueError("pointcloud config has no workspace box; set workspace_lower/workspace_upper "
                         "(the env wrapper fills them from the env's workspace)")
    parts = []
    for cam in cfg.cameras:
        if cam not in depths:
            raise KeyError(f"no depth frame for camera '{cam}' (have {sorted(depths)}); "
                           f"the env must render depth for it (depth=True, cameras including '{cam}')")
        if cam not in cameras:
            raise KeyError(f"no camera geometry for '{cam}' (have {sorted(cameras)})")
        rgb = None
        if cfg.color:
            if images is None or cam not in images:
                raise KeyError(f"pointcloud.color needs images/{cam} aligned with depth/{cam}")
            rgb = images[cam]
        pts = depth_to_points(depths[cam], cameras[cam], rgb, cfg.min_depth_m, cfg.max_depth_m)
        parts.append(crop_to_workspace(pts, cfg.workspace_lower, cfg.workspace_upper))
    points = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    return sample_points(points, cfg.num_points, cfg.sampler, cfg.voxel_size, cfg.seed)

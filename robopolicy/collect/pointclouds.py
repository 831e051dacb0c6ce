"""The `pointcloud` key of a teleop recording, built by the runtime's own builder from each step's frames.

`SessionPointCloud` wraps `robopolicy.perception.cameras.CameraPointCloud` (what the deployment daemon uses,
calling `pointcloud_from_frame` like the sim env wrapper does), so a policy trained on teleop point clouds
sees at deployment the tensors it was trained on. The PointCloudConfig, crop box included, is stored with
every episode as the attribute ``pointcloud`` (the `dataclasses.asdict` form that the sim wrapper carries):
paste it into the training task's ``env_kwargs.pointcloud`` (or the daemon's ``pointcloud:``).

The key goes through the EpisodeStore like the sim recorder's: float32 [N, 3|6], chunks of 64 frames
(data/codecs.py), chosen from the key's name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hardware.camera import Camera, Frame
from robopolicy.perception.pointcloud import PointCloudConfig

POINTCLOUD_KEY = "pointcloud"
POINTCLOUD_ATTR = "pointcloud"


class SessionPointCloud:
    """`frames -> pointcloud` for one collection session, timed, with the config stored in the episodes.

    Args:
        values: PointCloudConfig fields (cameras, num_points, color, workspace_lower/upper, sampler, ...).
        cameras: the session's cameras; `values["cameras"]` must name some of them.
        workspace: the crop box when `values` sets none (robot=sim: the embedded scene's); real robots must
            set workspace_lower / workspace_upper.
    Raises ValueError naming the fix (unknown option, no crop box, a camera that is not in the session).
    """

    def __init__(self, values: PointCloudConfig | Mapping[str, Any], cameras: Sequence[Camera],
                 workspace: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        from robopolicy.perception.cameras import CameraPointCloud, runtime_pointcloud_config

        cfg = runtime_pointcloud_config(values, workspace)
        if not cfg.keep_images:
            # the preview, `collect review` and the export read images/<cam>; a policy that takes only points
            # simply leaves the images out of its obs_keys
            raise ValueError("pointcloud.keep_images=false is not supported by the teleop tool: the store always "
                             "keeps images/<cam>; leave them out of the training task's obs_keys instead")
        self.builder = CameraPointCloud(cfg, cameras)
        self.build_s: list[float] = []  # wall seconds of every build (SessionResult.pointcloud_ms_*)

    @property
    def cfg(self):
        """The PointCloudConfig in use (crop box filled in)."""
        return self.builder.cfg

    @property
    def shape(self) -> tuple[int, int]:
        """Per-step shape of the `pointcloud` key: (num_points, 3 or 6)."""
        return self.builder.shape

    @property
    def keep_depth(self) -> bool:
        """Whether depth/<cam> is recorded beside the points (as the sim wrapper's keep_depth)."""
        return bool(self.cfg.keep_depth)

    def attrs(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (episode attribute ``pointcloud``; PointCloudConfig(**attrs) works)."""
        return json_ready(dataclasses.asdict(self.cfg))

    def check(self) -> None:
        """Refuse (ValueError) before anything is recorded if a named camera gives no depth or has no geometry.
        The cameras must be running."""
        try:
            self.builder.check()
        except ValueError as e:
            raise ValueError(f"cannot record pointcloud: {e} (nothing was recorded)") from e

    def __call__(self, frames: Mapping[str, Frame]) -> np.ndarray:
        """The (num_points, 3 or 6) float32 base-frame point cloud of this step's frames."""
        t0 = time.perf_counter()
        points = self.builder(frames)
        self.build_s.append(time.perf_counter() - t0)
        return points


def make_session_pointcloud(values: PointCloudConfig | Mapping[str, Any] | bool | None, cameras: Sequence[Camera],
                            workspace: tuple[Sequence[float], Sequence[float]] | None = None
                            ) -> SessionPointCloud | None:
    """A SessionPointCloud from the collect config's `pointcloud:` entry (None / false: off; true: defaults)."""
    if values is None or values is False:
        return None
    return SessionPointCloud({} if values is True else values, cameras, workspace)


def json_ready(value: Any) -> Any:
    """Tuples -> lists, recursively (the form the value takes after a JSON round trip)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def check_store_pointcloud(store, points: SessionPointCloud | None) -> None:
    """Fail before the first episode when the store's point clouds were built with another config (another crop
    box, sampler, camera...): one store must hold one kind of `pointcloud`, the one its training config names."""
    if points is None or not getattr(store, "n_episodes", 0):
        return
    previous = store.episode_attrs(store.n_episodes - 1).get(POINTCLOUD_ATTR)
    mine = points.attrs()
    if previous is not None and previous != mine:
        diff = sorted(k for k in set(previous) | set(mine) if previous.get(k) != mine.get(k))
        raise ValueError(f"the store at {store.path} was recorded with another pointcloud config (differs in "
                         f"{diff}: {[previous.get(k) for k in diff]} there); record with the same pointcloud "
                         "settings or into another out=")

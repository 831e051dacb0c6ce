"""The `pointcloud` observation of a gymnasium env: a wrapper, its picklable factory, and `make_env`.

A task asks for point clouds through its env_kwargs: `pointcloud: {num_points: 512, color: true, ...}`
(the fields of PointCloudConfig). `split_pointcloud_kwargs` takes that entry out (the simulators do not
know it), turns depth on, and returns the wrapper that adds the key. Demo collection, the eval runner
(through PolicyAgent.env_wrapper) and `make_env` all use it, so recording and evaluation build the points
with the same code from the same kind of frame.

The wrapped env must render `depth/<camera>` and expose `camera_geometry(camera)` -> {"intrinsics",
"base_from_camera", "depth_scale"} and, unless the config sets the box, `pointcloud_workspace`
((lower xyz), (upper xyz)) in the base frame (sim/embedded/env.py does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from robopolicy.perception.geometry import CameraGeometry
from robopolicy.perception.pointcloud import PointCloudConfig, pointcloud_from_frame

POINTCLOUD_KEY = "pointcloud"


def pointcloud_config(values: PointCloudConfig | dict[str, Any] | None) -> PointCloudConfig:
    """A PointCloudConfig from a config dict (unknown keys are an error naming the valid ones)."""
    if isinstance(values, PointCloudConfig):
        return values
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(PointCloudConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown pointcloud option(s) {unknown}; valid: {sorted(names)}")
    for k in ("cameras", "workspace_lower", "workspace_upper"):
        if isinstance(values.get(k), list):
            values[k] = tuple(values[k])
    return PointCloudConfig(**values)


def camera_geometries(env: gym.Env, cameras: tuple[str, ...]) -> dict[str, CameraGeometry]:
    """The current CameraGeometry of each camera, read from the env's `camera_geometry(camera)`."""
    inner = env.unwrapped
    getter = getattr(inner, "camera_geometry", None)
    if getter is None:
        raise TypeError(f"{type(inner).__name__} has no camera_geometry(camera): it cannot give point clouds; "
                        "tasks that can: the embedded MuJoCo scene (embedded_*)")
    out = {}
    for cam in cameras:
        g = getter(cam)
        out[cam] = CameraGeometry(np.asarray(g["intrinsics"]), np.asarray(g["base_from_camera"]),
                                  float(g.get("depth_scale", 0.001)))
    return out


class PointCloudObservation(gym.ObservationWrapper):
    """Adds `pointcloud` (num_points, 3 or 6) float32 to a Dict observation built from its depth frames."""

    def __init__(self, env: gym.Env, cfg: PointCloudConfig | dict[str, Any] | None = None):
        super().__init__(env)
        cfg = pointcloud_config(cfg)
        if cfg.workspace_lower is None:
            box = getattr(env.unwrapped, "pointcloud_workspace", None)
            if box is None:
                raise ValueError(f"{type(env.unwrapped).__name__} has no default point-cloud workspace; set "
                                 "pointcloud.workspace_lower and workspace_upper (base frame, m)")
            cfg = cfg.with_workspace(*box)
        self.cfg = cfg
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"point clouds need a Dict observation space, got {space}")
        need = [f"depth/{c}" for c in cfg.cameras] + ([f"images/{c}" for c in cfg.cameras] if cfg.color else [])
        missing = [k for k in need if k not in space.spaces]
        if missing:
            raise ValueError(f"the env does not observe {missing} that the point cloud needs (has "
                             f"{sorted(space.spaces)}); make it render depth (depth=True, obs_mode=pixels or "
                             f"both, cameras including {list(cfg.cameras)})")
        spaces = {k: s for k, s in space.spaces.items() if self._keep(k)}
        spaces[POINTCLOUD_KEY] = gym.spaces.Box(-np.inf, np.inf, shape=(cfg.num_points, cfg.channels),
                                                dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def _keep(self, key: str) -> bool:
        if key.startswith("depth/"):
            return self.cfg.keep_depth
        if key.startswith("images/"):
            return self.cfg.keep_images
        return True

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        cams = self.cfg.cameras
        depths = {c: observation[f"depth/{c}"] for c in cams}
        images = {c: observation[f"images/{c}"] for c in cams} if self.cfg.color else None
        points = pointcloud_from_frame(depths, camera_geometries(self.env, cams), self.cfg, images)
        out = {k: v for k, v in observation.items() if self._keep(k)}
        out[POINTCLOUD_KEY] = points
        return out


@dataclass(frozen=True)
class PointCloudEnvWrapper:
    """Picklable `env -> env` (for the eval runner's worker processes) applying PointCloudObservation."""

    cfg: dict[str, Any] = field(default_factory=dict)

    def __call__(self, env: gym.Env) -> gym.Env:
        return PointCloudObservation(env, self.cfg)


def split_pointcloud_kwargs(env_kwargs: dict[str, Any]) -> tuple[dict[str, Any], PointCloudEnvWrapper | None]:
    """(env kwargs for the simulator, the point-cloud wrapper or None) from a task's env_kwargs."""
    kwargs = dict(env_kwargs or {})
    pc = kwargs.pop(POINTCLOUD_KEY, None)
    if pc is None or pc is False:
        return kwargs, None
    cfg = pointcloud_config({} if pc is True else pc)  # validate now, in the caller's process
    if kwargs.get("obs_mode") == "state":
        raise ValueError("point clouds need rendered depth: use obs_mode=pixels or both, not state")
    kwargs["depth"] = True
    cams = kwargs.get("cameras")
    if cams is not None and not set(cfg.cameras) <= set(cams):
        raise ValueError(f"pointcloud.cameras {list(cfg.cameras)} must be among the env's cameras {list(cams)}")
    return kwargs, PointCloudEnvWrapper(dataclasses.asdict(cfg))


def make_env(task: str, **env_kwargs: Any) -> gym.Env:
    """`sim.registry.make_env`, plus the `pointcloud` key when env_kwargs ask for it."""
    from sim.registry import make_env as make_sim_env

    kwargs, wrapper = split_pointcloud_kwargs(env_kwargs)
    env = make_sim_env(task, **kwargs)
    return wrapper(env) if wrapper is not None else env

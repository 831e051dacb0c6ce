"""The daemon's `pointcloud` observation: its config, checked against the checkpoint and the robot.

A checkpoint whose spec has a `pointcloud` key gets a `CameraPointCloud` on the observation assembler when it
is loaded. Its PointCloudConfig is the one the checkpoint was evaluated with (`task.env_kwargs.pointcloud` of
its config.yaml: the same as the collection's, which the task config requires), with the daemon's
`pointcloud:` entries on top: the crop box and camera names of this robot, or the whole config for
checkpoints trained on teleop data, which carry none. The crop box defaults to the simulated scene's when
robot=sim. Everything is checked at load (cameras exist and stream depth, geometry known, shape matches the
spec), so that a misconfigured camera is refused before an episode starts rather than inside the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from robopolicy.deploy.robot import RobotBundle, SpecMismatchError
from robopolicy.perception.cameras import CameraPointCloud, runtime_pointcloud_config

log = logging.getLogger("robopolicy.deploy")

POINTCLOUD_KEY = "pointcloud"
# Fields that change which points a frame gives: a deploy value that differs from training is worth a warning.
_SAMPLING_FIELDS = ("sampler", "voxel_size", "seed", "min_depth_m", "max_depth_m", "num_points", "color")


def trained_pointcloud(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's point-cloud config (task.env_kwargs.pointcloud of config.yaml), or None."""
    value = ((config.get("task") or {}).get("env_kwargs") or {}).get(POINTCLOUD_KEY)
    if value is None or value is False:
        return None
    return {} if value is True else dict(value)


def pointcloud_for_policy(spec: Mapping[str, Any], config: Mapping[str, Any], deploy: Mapping[str, Any] | None,
                          robot: RobotBundle, where: str) -> CameraPointCloud | None:
    """The point-cloud builder the policy `spec` needs (None when it takes no `pointcloud`).

    Args:
        spec: the checkpoint's PolicySpec as stored in meta.json (obs_shapes).
        config: the checkpoint's resolved config.yaml.
        deploy: the daemon's `pointcloud:` entries (None: only the checkpoint's).
        robot: the connected robot (its cameras are started: their depth and geometry are checked).
        where: the checkpoint path, for messages.
    Raises SpecMismatchError naming the problem and its fix.
    """
    shape = spec["obs_shapes"].get(POINTCLOUD_KEY)
    if shape is None:
        return None
    trained = trained_pointcloud(config)
    if trained is None and deploy is None:
        raise SpecMismatchError(
            f"checkpoint {where} takes a 'pointcloud' observation but records no point-cloud config; set the "
            "daemon's `pointcloud:` (cameras, num_points, workspace_lower/upper, sampler, color: the values the "
            "training data was collected with)")
    values = {**(trained or {}), **{k: v for k, v in dict(deploy or {}).items() if v is not None}}
    for k in _SAMPLING_FIELDS:
        if trained is not None and k in (deploy or {}) and k in trained and trained[k] != values[k]:
            log.warning("pointcloud.%s=%r differs from the checkpoint's %r: the policy sees other points than it "
                        "was trained on", k, values[k], trained[k])
    try:
        cfg = runtime_pointcloud_config(values, robot.pointcloud_workspace)
        builder = CameraPointCloud(cfg, robot.cameras)
    except (ValueError, TypeError) as e:
        raise SpecMismatchError(f"checkpoint {where} takes a 'pointcloud' observation: {e}") from e
    if tuple(int(s) for s in shape) != builder.shape:
        raise SpecMismatchError(
            f"checkpoint {where} was trained on 'pointcloud' of shape {tuple(shape)}, the daemon's config gives "
            f"{builder.shape}; set pointcloud.num_points / pointcloud.color to the training values")
    try:
        builder.check()
    except ValueError as e:
        raise SpecMismatchError(f"checkpoint {where} takes a 'pointcloud' observation: {e}") from e
    return builder

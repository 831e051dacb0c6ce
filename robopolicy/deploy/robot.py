"""The daemon's robot: arm + cameras (the simulated ones by default), its observation / action spec, and
the checks that refuse a checkpoint whose spec does not match it (or whose files changed)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardware.arm import Arm
from hardware.camera import Camera
from robopolicy.runtime.actions import ActionAdapter, make_adapter
from robopolicy.runtime.observation import proprio_state, sim_full_state

STATE_MODES = ("proprio", "sim_full")


class SpecMismatchError(ValueError):
    """The checkpoint's observation / action spec is not what this robot produces / accepts."""


class ChecksumError(ValueError):
    """The checkpoint's files do not have the expected SHA-256 (or changed while loading)."""


@dataclass
class RobotBundle:
    """Everything the daemon drives, plus what only the simulator can do (reset, success)."""

    arm: Arm
    cameras: list[Camera]
    adapter: ActionAdapter
    state_fn: Callable[[Any], np.ndarray]
    state_mode: str
    sim: Any = None  # the SimRobot when robot=sim
    sim_task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # default point-cloud crop box (base frame, m): the simulated scene's; None on hardware (set in config)
    pointcloud_workspace: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def connect(self) -> None:
        self.arm.connect()
        for cam in self.cameras:
            cam.start()

    def disconnect(self) -> None:
        for cam in self.cameras:
            cam.stop()
        self.arm.disconnect()

    def obs_shapes(self, image_size: tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
        """Per-step shapes of what this robot observes (images as (3, H, W), the policy convention)."""
        shapes: dict[str, tuple[int, ...]] = {"state": tuple(self.state_fn(self.arm.read_state()).shape)}
        for cam in self.cameras:
            h, w = image_size if image_size is not None else cam.latest().color.shape[:2]
            shapes[f"images/{cam.name}"] = (3, int(h), int(w))
        return shapes

    def reset_scene(self, seed: int | None) -> str | None:
        """Simulator only: a new layout; returns its language instruction."""
        if self.sim is None:
            return None
        return self.sim.reset(seed, task=self.sim_task).language

    def success(self) -> bool | None:
        """Simulator only: whether the scene's goal holds."""
        if self.sim is None or self.sim.task is None:
            return None
        from sim.embedded.task_defs import is_success

        with self.sim.lock:
            return bool(is_success(self.sim.scene, self.sim.task))


def build_robot(robot: dict[str, Any], cameras: list[dict[str, Any]], state: str, action_mode: str,
                action_kwargs: dict[str, Any] | None = None, sim_task: str = "push", sim_seed: int = 0) -> RobotBundle:
    """The arm and cameras from device configs (configs/robot/*.yaml, configs/camera/*.yaml: name + kwargs).

    robot name "sim" builds one real-time SimRobot shared by the simulated arm and cameras.
    """
    from hardware.registry import make_from_config

    if state not in STATE_MODES:
        raise ValueError(f"state must be one of {STATE_MODES}, got {state!r}")
    sim = None
    overrides: dict[str, Any] = {}
    if robot.get("name") == "sim":
        from sim.embedded.robot import SimRobot

        sim = SimRobot(realtime=True, seed=sim_seed, task=sim_task)
        overrides = {"robot": sim}
    elif state == "sim_full":
        raise ValueError("state=sim_full reads the simulator's block poses; it needs robot=sim "
                         "(use state=proprio on hardware)")
    arm = make_from_config("arm", robot, **overrides)
    cams = [make_from_config("camera", c, **overrides) for c in cameras]
    n_joints = int(arm.limits().n_joints) if sim is None else 6
    adapter = make_adapter(action_mode, n_joints=n_joints, **(action_kwargs or {}))
    state_fn = sim_full_state(sim) if state == "sim_full" else proprio_state
    workspace = None
    if sim is not None:
        from sim.embedded.env import EmbeddedEnv

        workspace = EmbeddedEnv.pointcloud_workspace  # what the embedded tasks' point clouds are cropped to
    return RobotBundle(arm, cams, adapter, state_fn, state, sim, sim_task if sim is not None else None,
                       pointcloud_workspace=workspace)


def check_spec(policy_spec: dict[str, Any], robot_obs: dict[str, tuple[int, ...]], adapter: ActionAdapter,
               where: str) -> None:
    """Raise SpecMismatchError naming every difference and how to fix it."""
    problems = []
    for key, shape in policy_spec["obs_shapes"].items():
        shape = tuple(int(s) for s in shape)
        if key not in robot_obs:
            problems.append(f"the policy needs observation '{key}' {shape}, which this robot does not produce "
                            f"(it gives {sorted(robot_obs)})")
        elif tuple(robot_obs[key]) != shape:
            problems.append(f"observation '{key}': the policy was trained on shape {shape}, this robot gives "
                            f"{tuple(robot_obs[key])}")
    if int(policy_spec["action_dim"]) != adapter.action_dim:
        problems.append(f"the policy outputs {policy_spec['action_dim']}-D actions, this robot's action mode "
                        f"'{adapter.mode}' takes {adapter.action_dim}-D")
    if problems:
        raise SpecMismatchError(
            f"checkpoint {where} does not match this robot's observation/action spec: " + "; ".join(problems)
            + ". Fix: deploy a checkpoint trained on this robot's data, or change the daemon's `state`, `cameras`,"
            " `image_size` or `action_mode` to what the checkpoint was trained with.")


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over the checkpoint's model, normalizer, config and meta files (names and contents)."""
    from robopolicy.train.checkpoint import REQUIRED_FILES

    path = Path(path)
    h = hashlib.sha256()
    for name in sorted(REQUIRED_FILES):
        h.update(name.encode() + b"\0")
        with open(path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()

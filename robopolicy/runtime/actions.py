"""Action adapters: a policy's raw actions -> absolute arm commands (waypoints) the executor can blend.

Blending and interpolation need absolute targets, so every adapter turns a chunk of raw actions into a
chunk of *commands* in the arm's command space before the executor sees it:

- ``ee_delta`` (the embedded sim tasks' action, `sim/embedded/env.py`): [dx, dy, dz, dyaw, gripper] in
  [-1, 1]; the deltas (scaled by `pos_step` m and `yaw_step` rad per policy step) are integrated from the
  measured pose of the observation the chunk was computed from; the tool points down; gripper -1 = open.
- ``ee_target`` (teleop recordings with action_mode=target): [x, y, z, qw, qx, qy, qz, gripper width].
- ``joint_target``: [q_1 .. q_n, gripper width].

A command is [x, y, z, qw, qx, qy, qz, width] for the two end-effector modes and [q_1..q_n, width] for
joints; `send` hands it to the arm.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from hardware.arm import Arm, ArmState


def topdown_quat(yaw: float) -> np.ndarray:
    """(w, x, y, z) of a tool pointing straight down, turned by `yaw` about the base z axis (sim convention)."""
    return np.array([0.0, -np.sin(yaw / 2.0), np.cos(yaw / 2.0), 0.0])


def topdown_yaw(quat: np.ndarray) -> float:
    """Inverse of `topdown_quat` for a (nearly) top-down orientation."""
    yaw = 2.0 * np.arctan2(-quat[1], quat[2])
    return float((yaw + np.pi) % (2.0 * np.pi) - np.pi)  # q and -q are one orientation


class ActionAdapter(abc.ABC):
    """Maps raw policy actions to arm commands."""

    mode: str
    action_dim: int
    command_dim: int
    is_ee: bool = True
    # Command k of a chunk is due at obs_time + (k + due_offset) * dt: 1 for deltas (row k is where the arm
    # should be at the end of step k), 0 for absolute targets (row k is the target from step k on).
    due_offset: int = 0

    @abc.abstractmethod
    def to_commands(self, actions: np.ndarray, state: ArmState) -> np.ndarray:
        """(T, action_dim) raw actions computed from an observation with arm state `state` -> (T, command_dim)."""

    def hold_command(self, state: ArmState) -> np.ndarray:
        """The command that keeps the arm where it is measured now."""
        if self.is_ee:
            return np.concatenate([state.ee_pos, state.ee_quat, [state.gripper_width]]).astype(np.float64)
        return np.concatenate([state.joint_positions, [state.gripper_width]]).astype(np.float64)

    def hold_action(self, state: ArmState) -> np.ndarray:
        """A raw action meaning "stay" (recorded on steps where the safety layer held the arm)."""
        return self.hold_command(state).astype(np.float32)

    def send(self, arm: Arm, command: np.ndarray) -> None:
        """Command the arm (and gripper)."""
        if self.is_ee:
            arm.command_ee_pose(command[:3], command[3:7])
        else:
            arm.command_joint_positions(command[:-1])
        arm.command_gripper(float(command[-1]))


@dataclass
class EeDeltaAdapter(ActionAdapter):
    """Embedded-sim deltas (see module docstring); `pos_step`/`yaw_step` as in sim/embedded/env.py."""

    pos_step: float = 0.04
    yaw_step: float = 0.15
    yaw_limit: float = 0.5 * np.pi
    gripper_open_width: float = 0.08

    mode = "ee_delta"
    action_dim = 5
    command_dim = 8
    due_offset = 1

    def to_commands(self, actions: np.ndarray, state: ArmState) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        # NaN/inf pass through on purpose: the safety layer sees them and holds (clip would hide them).
        a = np.where(np.isfinite(a), np.clip(a, -1.0, 1.0), a)
        pos = np.asarray(state.ee_pos, np.float64) + self.pos_step * np.cumsum(a[:, :3], axis=0)
        yaw = np.clip(topdown_yaw(state.ee_quat) + self.yaw_step * np.cumsum(a[:, 3]), -self.yaw_limit,
                      self.yaw_limit)
        quat = np.stack([topdown_quat(y) for y in yaw])
        width = 0.5 * self.gripper_open_width * (1.0 - a[:, 4])
        return np.concatenate([pos, quat, width[:, None]], axis=1)

    def hold_action(self, state: ArmState) -> np.ndarray:
        grip = 1.0 - 2.0 * state.gripper_width / self.gripper_open_width
        return np.array([0.0, 0.0, 0.0, 0.0, np.clip(grip, -1.0, 1.0)], np.float32)


@dataclass
class EeTargetAdapter(ActionAdapter):
    """Absolute end-effector pose + gripper width, as recorded by teleop with action_mode=target."""

    mode = "ee_target"
    action_dim = 8
    command_dim = 8

    def to_commands(self, actions: np.ndarray, state: ArmState) -> np.ndarray:
        return np.asarray(actions, dtype=np.float64).copy()


@dataclass
class JointTargetAdapter(ActionAdapter):
    """Absolute joint positions + gripper width."""

    n_joints: int = 6
    mode = "joint_target"
    is_ee = False

    @property
    def action_dim(self) -> int:  # type: ignore[override]
        return self.n_joints + 1

    @property
    def command_dim(self) -> int:  # type: ignore[override]
        return self.n_joints + 1

    def to_commands(self, actions: np.ndarray, state: ArmState) -> np.ndarray:
        return np.asarray(actions, dtype=np.float64).copy()


ACTION_MODES = ("ee_delta", "ee_target", "joint_target")


def make_adapter(mode: str, n_joints: int = 6, **kwargs: float) -> ActionAdapter:
    """An adapter by mode name (ACTION_MODES)."""
    if mode == "ee_delta":
        return EeDeltaAdapter(**kwargs)
    if mode == "ee_target":
        return EeTargetAdapter()
    if mode == "joint_target":
        return JointTargetAdapter(n_joints=n_joints)
    raise ValueError(f"unknown action mode {mode!r}; use one of {ACTION_MODES}")

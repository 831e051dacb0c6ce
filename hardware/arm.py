"""The `Arm` interface: what the teleop tool, the runtime and the safety layer need from a robot arm.

Drivers (UR, xArm, hobby arms, the simulated arm in `sim.embedded.robot`) implement it. Units are SI:
metres, radians, seconds; quaternions are (w, x, y, z) like MuJoCo; poses are in the robot's base frame.
Timestamps come from `time.monotonic()` of the machine the driver runs on (or the simulator's clock,
which is kept on the same time base).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from hardware.errors import CommandRejectedError, DeviceNotConnectedError


@dataclass(frozen=True)
class ArmState:
    """One measured state of the arm."""

    timestamp: float  # seconds, monotonic clock, when the state was measured
    joint_positions: np.ndarray  # float64 [n_joints], rad
    ee_pos: np.ndarray  # float64 [3], m, end-effector (tool centre point) position
    ee_quat: np.ndarray  # float64 [4], (w, x, y, z), end-effector orientation
    gripper_width: float  # m, distance between the fingers (0 = closed)
    joint_velocities: np.ndarray | None = None  # float64 [n_joints], rad/s, where the driver measures it


@dataclass(frozen=True)
class ArmLimits:
    """Static limits that the safety layer enforces before a command reaches the arm."""

    joint_lower: np.ndarray  # float64 [n_joints], rad
    joint_upper: np.ndarray  # float64 [n_joints], rad
    max_joint_velocity: np.ndarray  # float64 [n_joints], rad/s
    workspace_lower: np.ndarray  # float64 [3], m, lower corner of the allowed end-effector box
    workspace_upper: np.ndarray  # float64 [3], m, upper corner of the allowed end-effector box
    gripper_max_width: float = 0.08  # m
    max_ee_speed: float = 0.5  # m/s, translational end-effector speed
    extra: dict[str, float] = field(default_factory=dict)  # driver-specific limits (e.g. max force)

    @property
    def n_joints(self) -> int:
        """Number of arm joints (the gripper excluded)."""
        return int(self.joint_lower.shape[0])

    def clip_ee_pos(self, pos: np.ndarray) -> np.ndarray:
        """Clip an end-effector position into the workspace box."""
        return np.clip(pos, self.workspace_lower, self.workspace_upper)


class Arm(abc.ABC):
    """A robot arm with a gripper.

    Life cycle: `connect()` -> read / command -> `disconnect()`. Every read or command on an arm that is not
    connected raises `DeviceNotConnectedError`. Commands return at once; the arm's own controller tracks
    the latest target (the runtime streams targets at its control rate).
    """

    name: str = "arm"

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (and start the controller). Raises DeviceAlreadyConnectedError if connected."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop the arm (hold position) and close the connection. Safe to call twice."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether `connect()` succeeded and `disconnect()` has not been called since."""

    @abc.abstractmethod
    def read_state(self) -> ArmState:
        """The latest measured state."""

    @abc.abstractmethod
    def command_joint_positions(self, q: np.ndarray) -> None:
        """Move towards joint positions `q` [n_joints] (rad)."""

    @abc.abstractmethod
    def command_ee_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Move the end effector towards position `pos` [3] and orientation `quat` [4] (w, x, y, z)."""

    @abc.abstractmethod
    def command_ee_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        """Move the end effector with `linear` [3] (m/s) and `angular` [3] (rad/s) velocity, base frame."""

    @abc.abstractmethod
    def command_gripper(self, width: float) -> None:
        """Open / close the gripper to `width` (m; 0 closes, `limits().gripper_max_width` opens fully)."""

    @abc.abstractmethod
    def limits(self) -> ArmLimits:
        """Joint, velocity and workspace limits of this arm."""

    # Helpers shared by drivers: name the problem and the fix in the message.
    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(
                f"arm '{self.name}' is not connected: call connect() before reading or commanding it"
            )

    @staticmethod
    def _as_vector(x: np.ndarray, size: int, what: str) -> np.ndarray:
        """Validate a command vector: right size, finite; returns a float64 copy."""
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
        if arr.shape[0] != size:
            raise CommandRejectedError(f"{what} must have {size} values, got {arr.shape[0]}")
        if not np.all(np.isfinite(arr)):
            raise CommandRejectedError(f"{what} contains NaN or inf: {arr}")
        return arr

    def __enter__(self) -> Arm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

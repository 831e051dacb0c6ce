"""The `TeleopDevice` interface: a human input device (SpaceMouse, keyboard, gamepad, leader arm).

`poll()` returns the device's latest command without blocking. A command is either a *delta* of the
end-effector pose (what a SpaceMouse or keyboard gives, scaled to metres / radians per poll) or an
*absolute* target pose (what a tracked leader device gives), or a *joints* target (what a leader arm with
the follower's kinematics gives, in `joint_positions`); the teleop tool maps it onto the arm.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hardware.errors import DeviceNotConnectedError


@dataclass(frozen=True)
class TeleopCommand:
    """One reading of a teleop device."""

    timestamp: float  # seconds, monotonic clock
    mode: Literal["delta", "absolute", "joints"]
    # delta: translation [3] (m) and rotation vector [3] (rad) to add to the current EE pose;
    # absolute: target position [3] (m) in the base frame and, in `quat`, the target orientation.
    pos: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.zeros(3))  # rotation vector (delta mode)
    quat: np.ndarray | None = None  # (w, x, y, z), absolute mode
    gripper: float = 1.0  # 0 = closed, 1 = open (fraction of the maximum width)
    buttons: dict[str, bool] = field(default_factory=dict)  # e.g. {"record": True, "reset": False}
    # joints: absolute joint-position target [n_joints] (rad) of a leader arm (`pos` is unused, zeros).
    joint_positions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("delta", "absolute", "joints"):
            raise ValueError(f"TeleopCommand.mode must be 'delta', 'absolute' or 'joints', got {self.mode!r}")
        if self.mode == "absolute" and self.quat is None:
            raise ValueError("an absolute TeleopCommand needs a target orientation in `quat` (w, x, y, z)")
        if self.mode == "joints" and self.joint_positions is None:
            raise ValueError("a joints TeleopCommand needs `joint_positions` (rad)")


class TeleopDevice(abc.ABC):
    """A teleoperation input device. `poll()` on a device that is not connected raises an error."""

    name: str = "teleop"

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Close the device. Safe to call twice."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether the device is open."""

    @abc.abstractmethod
    def poll(self) -> TeleopCommand:
        """The latest command (non-blocking)."""

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(
                f"teleop device '{self.name}' is not connected: call connect() before poll()"
            )

    def __enter__(self) -> TeleopDevice:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

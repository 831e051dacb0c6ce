"""Teleop command -> end-effector target, the arm and gripper commands, and the recorded action.

A ``relative`` command (a delta) is added to the previous *target*, not to the measured pose, so a slow arm
does not make the operator's motion shrink; the target is kept within `max_lead` of the measured EE position
so it cannot run away while the arm lags. An ``absolute`` command is the target itself. The recorded action
is the commanded target (``action_mode=target``) or its change since the previous step (``delta``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.arm import Arm, ArmState
from hardware.teleop import TeleopCommand
from robopolicy.collect.geometry import (
    quat_conj,
    quat_from_rotvec,
    quat_mul,
    quat_normalize,
    rotvec_from_quat,
)


class TargetTracker:
    """The commanded EE pose of a session, carried from one step to the next.

    Args:
        action_mode: target | delta (what :meth:`command` returns for recording).
        max_lead: how far (m) a delta target may run ahead of the measured EE position.
    """

    def __init__(self, action_mode: str, max_lead: float) -> None:
        self.action_mode = action_mode
        self.max_lead = float(max_lead)
        self.limits: Any = None  # the arm's limits; known once the arm is connected
        self.pos = np.zeros(3)
        self.quat = np.array([1.0, 0.0, 0.0, 0.0])

    def anchor(self, state: ArmState) -> None:
        """Put the target on the measured pose (a new scene: the old target means nothing there)."""
        self.pos = np.asarray(state.ee_pos, np.float64).copy()
        self.quat = quat_normalize(state.ee_quat)

    def initial_target(self) -> list[float]:
        """The current target as stored with a delta-mode episode (position then quaternion), so the
        absolute poses can be rebuilt from the deltas."""
        return [*map(float, self.pos), *map(float, self.quat)]

    def command(self, arm: Arm, cmd: TeleopCommand, state: ArmState) -> np.ndarray:
        """Turn `cmd` into the next target, command `arm` there, and return the action to record (float32)."""
        lim = self.limits
        if cmd.mode == "absolute":
            pos = lim.clip_ee_pos(np.asarray(cmd.pos, np.float64))
            quat = quat_normalize(cmd.quat)
        else:
            ee = np.asarray(state.ee_pos, np.float64)
            pos = lim.clip_ee_pos(self.pos + np.asarray(cmd.pos, np.float64))
            lead = pos - ee
            n = float(np.linalg.norm(lead))
            if n > self.max_lead:
                pos = ee + lead * (self.max_lead / n)
            quat = quat_normalize(quat_mul(quat_from_rotvec(cmd.rot), self.quat))
        if float(np.dot(quat, self.quat)) < 0:  # keep the sign continuous (q and -q are one pose)
            quat = -quat
        width = float(np.clip(cmd.gripper, 0.0, 1.0)) * lim.gripper_max_width
        arm.command_ee_pose(pos, quat)
        arm.command_gripper(width)
        if self.action_mode == "target":
            vec = np.concatenate([pos, quat, [width]])
        else:
            drot = rotvec_from_quat(quat_mul(quat, quat_conj(self.quat)))
            vec = np.concatenate([pos - self.pos, drot, [width]])
        self.pos, self.quat = pos, quat
        return vec.astype(np.float32)

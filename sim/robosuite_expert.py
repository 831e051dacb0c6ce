"""Scripted pick-and-place experts for the robosuite tasks (Lift, PickPlaceCan, NutAssemblySquare).

Each expert is a small state machine over waypoints computed from privileged object poses
(`env.unwrapped.rs`, the robosuite env). A proportional controller turns the waypoint error into the
OSC_POSE delta action (position in the first three entries, axis-angle in the next three, gripper
last: -1 open, +1 closed). `reset(seed)` draws the episode's strategy (approach height, grasp offsets,
grasp yaw branch, speed, transport path, action noise) so that demonstrations are multimodal.
Phases that carry an object check that the object is still held and start over if it slipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

# OSC_POSE scales a unit action to 0.05 m and 0.5 rad of goal offset (robosuite's default output range).
_POS_SCALE = 0.05
_ROT_SCALE = 0.5
OPEN, CLOSED = -1.0, 1.0
# Top-down gripper orientation at yaw 0: eef x along world +y, eef y along world +x, eef z down.
# At this orientation the fingers close along world y.
_R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotvec(rot: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.reshape(-1))
    vel = np.zeros(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


def _wrap(angle: float, period: float = 2 * np.pi) -> float:
    """Wrap an angle to [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def _yaw_of_quat(wxyz: np.ndarray) -> float:
    w, x, y, z = wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


@dataclass
class Strategy:
    """Per-episode parameters of the scripted expert (drawn in `reset(seed)`)."""

    speed: float  # max |action| on the position axes
    gain: float  # proportional gain: position action = gain * error in metres
    noise: float  # std of Gaussian noise added to position actions in free space
    approach_height: float  # hover height above the grasp point before descending
    grasp_offset: np.ndarray  # (3,) grasp point offset: world xyz; for the nut (along, across handle, z)
    yaw_offset: float  # added to the nominal grasp yaw
    yaw_branch: int  # which of the symmetric grasp yaws to use (0 or 1)
    close_steps: int  # steps to hold still while the gripper closes
    carry_height: float  # z of the transport phase
    place_offset: np.ndarray  # (2,) xy offset of the drop point
    via_offset: np.ndarray  # (2,) xy offset of a mid-way waypoint (path variation)
    release_height: float  # height above the goal at which the object is released


class RobosuiteExpert:
    """Scripted expert for `robosuite_lift`, `robosuite_can` and `robosuite_square`."""

    def __init__(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        task = getattr(self.env, "task", None)
        if task is None or task.env_name not in ("Lift", "PickPlaceCan", "NutAssemblySquare"):
            raise ValueError(f"RobosuiteExpert needs a robosuite task env, got {type(self.env).__name__}")
        self.kind = task.env_name
        self._rng = np.random.default_rng()
        self.strategy = self._draw_strategy()
        self.phase = "approach"
        self._phase_steps = 0
        self._grasp_yaw = 0.0
        self._carry_yaw = 0.0
        self._nut_goal_yaw = 0.0
        self._via = np.zeros(2)
        self._regrasps = 0

    # -- episode set-up ------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; `seed` fixes the strategy and the action noise."""
        self._rng = np.random.default_rng(seed)
        self.strategy = self._draw_strategy()
        self._regrasps = 0
        self._set_phase("approach")

    def _draw_strategy(self) -> Strategy:
        r = self._rng
        fine = self.kind == "NutAssemblySquare"
        return Strategy(
            speed=float(r.uniform(0.6, 1.0)),
            gain=float(r.uniform(15.0, 25.0)),
            noise=float(r.uniform(0.02, 0.1)),
            approach_height=float(r.uniform(0.05, 0.12)),
            grasp_offset=np.array(
                [r.uniform(0.004, 0.012), r.uniform(-0.003, 0.003), r.uniform(-0.01, 0.0)]
                if fine else [r.uniform(-0.008, 0.008), r.uniform(-0.008, 0.008), r.uniform(-0.012, 0.004)]
            ),
            yaw_offset=float(r.uniform(-0.15, 0.15)) if fine else float(r.uniform(-0.3, 0.3)),
            yaw_branch=int(r.integers(2)),
            close_steps=int(r.integers(8, 14)),
            carry_height=float(r.uniform(1.0, 1.1)),
            place_offset=r.uniform(-0.015, 0.015, size=2),
            via_offset=r.uniform(-0.08, 0.08, size=2),
            release_height=float(r.uniform(0.1, 0.16)),
        )

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    # -- privileged state ----------------------------------------------------------------------------

    @property
    def _rs(self) -> Any:
        return self.env.rs

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        rs = self._rs
        sid = rs.robots[0].eef_site_id["right"]
        return rs.sim.data.site_xpos[sid].copy(), rs.sim.data.site_xmat[sid].reshape(3, 3).copy()

    def _eef_yaw(self) -> float:
        _, rot = self._eef()
        x_axis = rot[:, 0]  # equals Rz(yaw) @ world +y
        return float(np.arctan2(-x_axis[0], x_axis[1]))

    def _object(self) -> tuple[np.ndarray, float]:
        """Position and yaw of the task object."""
        rs = self._rs
        if self.kind == "Lift":
            body = rs.cube_body_id
        elif self.kind == "PickPlaceCan":
            body = rs.obj_body_id["Can"]
        else:
            body = rs.obj_body_id["SquareNut"]
        return rs.sim.data.body_xpos[body].copy(), _yaw_of_quat(rs.sim.data.body_xquat[body])

    # -- control -------------------------------------------------------------------------------------

    def _action(self, target: np.ndarray, yaw: float, gripper: float, noisy: bool = True,
                speed: float | None = None) -> np.ndarray:
        pos, rot = self._eef()
        s = self.strategy
        vmax = s.speed if speed is None else speed
        dpos = np.clip(s.gain * (target - pos), -vmax, vmax)
        if noisy:
            dpos = dpos + self._rng.normal(0.0, s.noise, 3)
        err = _rotvec(_rot_z(yaw) @ _R_DOWN @ rot.T)
        drot = np.clip(err / _ROT_SCALE, -0.6, 0.6)
        return np.clip(np.concatenate([dpos, drot, [gripper]]), -1.0, 1.0).astype(np.float32)

    def act(self, obs: dict, info: dict) -> np.ndarray:
        """Next action (float32 [7]) from the privileged simulator state."""
        self._phase_steps += 1
        if self.kind == "NutAssemblySquare":
            return self._act_square()
        return self._act_pick_place()

    def _cube_grasp_yaw(self, cube_yaw: float) -> float:
        """Gripper yaw with the fingers on two opposite cube faces.

        The fingers are symmetric under a half turn and the cube under a quarter turn, so there are two
        distinct grasps: the one nearest the current yaw, and (strategy branch 1) the other pair of faces
        when it is less than 60 degrees away.
        """
        base = _wrap(cube_yaw, np.pi / 2)
        alt = base - np.sign(base) * np.pi / 2
        yaw = alt if self.strategy.yaw_branch and abs(alt) < np.pi / 3 else base
        return _wrap(yaw + self.strategy.yaw_offset, np.pi)

    def _act_pick_place(self) -> np.ndarray:
        s = self.strategy
        pos, _ = self._eef()
        obj, obj_yaw = self._object()
        grasp = obj + s.grasp_offset
        if self.phase == "approach":
            if self.kind == "Lift":
                self._grasp_yaw = self._cube_grasp_yaw(obj_yaw)
            else:
                self._grasp_yaw = self._can_grasp_yaw(obj)
            # After a failed grasp, try the other finger direction.
            self._grasp_yaw = _wrap(self._grasp_yaw + self._regrasps * np.pi / 2, np.pi)
            target = grasp + np.array([0.0, 0.0, s.approach_height])
            if np.linalg.norm((target - pos)[:2]) < 0.012 and abs(target[2] - pos[2]) < 0.02:
                self._set_phase("descend")
            return self._action(target, self._grasp_yaw, OPEN)
        if self.phase == "descend":
            if np.linalg.norm(grasp - pos) < 0.01 or self._phase_steps > 60:
                self._set_phase("close")
            return self._action(grasp, self._grasp_yaw, OPEN, noisy=False, speed=0.5)
        if self.phase == "close":
            if self._phase_steps >= s.close_steps:
                self._set_phase("lift")
            return self._action(pos, self._grasp_yaw, CLOSED, noisy=False)
        if self._dropped(pos, obj):
            self._regrasps += 1
            self._set_phase("approach")
            return self._action(pos + np.array([0, 0, 0.05]), self._grasp_yaw, OPEN)
        if self.kind == "Lift":
            return self._action(np.array([pos[0], pos[1], s.carry_height]), self._grasp_yaw, CLOSED)
        return self._can_transport(pos)

    def _can_grasp_yaw(self, can: np.ndarray) -> float:
        """Gripper yaw for the (round) can: free, except that the fingers must not hit a bin wall.

        At yaw 0 the fingers open along world y; when the can is closer to a y wall of its bin than to
        an x wall (and close to it), turn a quarter so that they open along x instead.
        """
        rs = self._rs
        half = np.asarray(rs.bin_size[:2]) / 2
        margin = half - np.abs(can[:2] - rs.bin1_pos[:2])  # distance to the nearest x and y walls
        turn = np.pi / 2 if margin[1] < 0.08 and margin[1] < margin[0] else 0.0
        return _wrap(turn + self.strategy.yaw_offset, np.pi)

    def _dropped(self, pos: np.ndarray, obj: np.ndarray) -> bool:
        """True when the carried object is no longer between the fingers."""
        carrying = self.phase in ("lift", "via", "transport", "lower")
        return carrying and np.linalg.norm(obj - pos) > 0.06

    def _can_transport(self, pos: np.ndarray) -> np.ndarray:
        s = self.strategy
        rs = self._rs
        # The can's compartment is the bin quadrant whose inner corner is the bin's centre; its centre is
        # at the edge of the Panda's reach, so aim 5-6 cm inside from that inner corner instead.
        goal = rs.target_bin_placements[rs.object_id].copy()
        goal[:2] += -np.asarray(rs.bin_size[:2]) / 4 + np.array([0.05, 0.065]) + s.place_offset
        yaw = self._grasp_yaw
        # Carry gently: a can held near its top (cans at the far corners are out of reach lower down)
        # slips out of the fingers when the gripper accelerates hard.
        carry = min(s.speed, 0.7)
        if self.phase == "lift":
            if pos[2] > s.carry_height - 0.03:
                self._set_phase("via")
            return self._action(np.array([pos[0], pos[1], s.carry_height]), yaw, CLOSED)
        if self.phase == "via":
            # A mid-way waypoint between the bins varies the transport path across episodes.
            if self._phase_steps == 1:
                self._via = 0.5 * (pos[:2] + goal[:2]) + s.via_offset
            target = np.array([*self._via, s.carry_height])
            if np.linalg.norm((target - pos)[:2]) < 0.04:
                self._set_phase("transport")
            return self._action(target, yaw, CLOSED, speed=carry)
        if self.phase == "transport":
            target = np.array([goal[0], goal[1], s.carry_height])
            if np.linalg.norm((target - pos)[:2]) < 0.015:
                self._set_phase("lower")
            return self._action(target, yaw, CLOSED, speed=carry)
        if self.phase == "lower":
            target = np.array([goal[0], goal[1], goal[2] + s.release_height])
            if abs(target[2] - pos[2]) < 0.015 or self._phase_steps > 60:
                self._set_phase("release")
            return self._action(target, yaw, CLOSED, noisy=False)
        if self.phase == "release":
            if self._phase_steps >= 6:
                self._set_phase("retreat")
            return self._action(pos, yaw, OPEN, noisy=False)
        return self._action(np.array([pos[0], pos[1], s.carry_height + 0.05]), yaw, OPEN)

    # -- NutAssemblySquare -----------------------------------------------------------------------------

    def _handle(self) -> np.ndarray:
        rs = self._rs
        return rs.sim.data.site_xpos[rs.sim.model.site_name2id("SquareNut_handle_site")].copy()

    def _pick_nut_goal_yaw(self, nut_yaw: float) -> float:
        """Yaw to carry the nut at: sides parallel to the peg's, handle never pointing away from the robot.

        With the handle towards +x the gripper would have to reach ~6 cm beyond the peg, at the edge of
        the Panda's workspace, so the goal is one of pi/2, pi, -pi/2: the nearest, or with the strategy's
        other branch the second nearest when it is within 100 degrees.
        """
        eef_yaw = self._eef_yaw()
        options = []
        for goal in (np.pi / 2, np.pi, -np.pi / 2):
            turn = _wrap(goal - nut_yaw)
            if abs(eef_yaw + turn) < 2.6:  # keep the wrist inside its joint range
                options.append((abs(turn), goal))
        if not options:
            return float(nut_yaw + _wrap(-nut_yaw, np.pi / 2))
        options.sort()
        if self.strategy.yaw_branch and len(options) > 1 and options[1][0] < np.radians(100):
            return float(options[1][1])
        return float(options[0][1])

    def _act_square(self) -> np.ndarray:
        s = self.strategy
        rs = self._rs
        pos, _ = self._eef()
        nut, nut_yaw = self._object()
        handle = self._handle()
        along = np.array([np.cos(nut_yaw), np.sin(nut_yaw), 0.0])  # handle axis, pointing away from the ring
        across = np.array([-along[1], along[0], 0.0])
        grasp = handle + s.grasp_offset[0] * along + s.grasp_offset[1] * across
        grasp[2] += s.grasp_offset[2]
        if self.phase == "approach":
            # The fingers must close across the handle: gripper yaw = nut yaw (mod pi).
            self._grasp_yaw = _wrap(nut_yaw + s.yaw_offset, np.pi)
            target = grasp + np.array([0.0, 0.0, s.approach_height])
            if np.linalg.norm((target - pos)[:2]) < 0.008 and abs(target[2] - pos[2]) < 0.02:
                self._set_phase("descend")
            return self._action(target, self._grasp_yaw, OPEN)
        if self.phase == "descend":
            if np.linalg.norm(grasp - pos) < 0.008 or self._phase_steps > 60:
                self._set_phase("close")
            return self._action(grasp, self._grasp_yaw, OPEN, noisy=False, speed=0.5)
        if self.phase == "close":
            if self._phase_steps >= s.close_steps:
                self._nut_goal_yaw = self._pick_nut_goal_yaw(nut_yaw)
                self._set_phase("lift")
            return self._action(pos, self._grasp_yaw, CLOSED, noisy=False)
        if self.phase in ("lift", "align", "lower") and np.linalg.norm(handle - pos) > 0.04:
            self._regrasps += 1
            self._set_phase("approach")  # the nut slipped out: start over
            return self._action(pos + np.array([0, 0, 0.05]), self._grasp_yaw, OPEN)
        peg = rs.sim.data.body_xpos[rs.peg1_body_id]
        # Move the gripper by the nut's offset from the peg (feedback on the nut, not the gripper).
        shift = peg[:2] - nut[:2]
        if self.phase == "lift":
            target = np.array([pos[0], pos[1], pos[2] + (s.carry_height - 0.02) - nut[2]])
            if nut[2] > s.carry_height - 0.05:
                self._set_phase("align")
            return self._action(target, self._carry_yaw, CLOSED)
        # Keep turning the gripper until the nut reaches its goal yaw (feedback on the nut yaw).
        self._carry_yaw = self._eef_yaw() + _wrap(self._nut_goal_yaw - nut_yaw)
        if self.phase == "align":
            hover = peg[2] + 0.1 + 0.05  # peg top is 0.1 above its centre; nut centre 5 cm above it
            target = np.array([pos[0] + shift[0], pos[1] + shift[1], pos[2] + hover - nut[2]])
            yaw_err = abs(_wrap(nut_yaw, np.pi / 2))
            if np.linalg.norm(shift) < 0.004 and abs(hover - nut[2]) < 0.015 and yaw_err < 0.05:
                self._set_phase("lower")
            return self._action(target, self._carry_yaw, CLOSED, noisy=np.linalg.norm(shift) > 0.03,
                                speed=min(s.speed, 0.6))
        if self.phase == "lower":
            target = np.array([pos[0] + shift[0], pos[1] + shift[1], pos[2] - 0.05])
            if nut[2] < rs.table_offset[2] + 0.045 or self._phase_steps > 60:
                self._set_phase("release")
            return self._action(target, self._carry_yaw, CLOSED, noisy=False, speed=0.4)
        if self.phase == "release":
            if self._phase_steps >= 6:
                self._set_phase("retreat")
            return self._action(pos, self._carry_yaw, OPEN, noisy=False)
        return self._action(np.array([pos[0], pos[1], rs.table_offset[2] + 0.25]), self._carry_yaw, OPEN,
                            noisy=False)

"""The embedded MuJoCo scene: model, data, named handles, and the arm's differential-IK controller.

Both the gymnasium env (`sim.embedded.env`) and the simulated robot (`sim.embedded.robot`) drive the
arm through this class, so a policy trained on the env sees the same arm as the runtime does.
"""

from __future__ import annotations

import mujoco
import numpy as np

from sim.embedded.mjcf import (
    ARM_JOINTS,
    BLOCK_COLORS,
    BLOCK_HALF,
    FINGER_MAX,
    build_scene_xml,
)

PHYSICS_DT = 0.002  # s, must match <option timestep> in the MJCF
# End-effector workspace box (m): the tool centre point stays inside it whatever the command.
WORKSPACE_LOWER = np.array([0.20, -0.40, 0.015])
WORKSPACE_UPPER = np.array([0.75, 0.40, 0.45])
HOME_EE_POS = np.array([0.35, 0.0, 0.25])
# Joint-space guess from which the home pose is solved (elbow up, wrist pointing down).
_HOME_GUESS = np.array([0.0, 0.2, 1.8, 0.0, 1.1, 0.0])


def topdown_quat(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a gripper pointing straight down, rotated by `yaw` about world z."""
    # Rz(yaw) * Ry(pi), multiplied out. Ry(pi) is what the arm reaches with the tool roll joint at zero,
    # so yaw 0 keeps that joint in the middle of its range; the fingers then open along world y.
    c, s = np.cos(yaw / 2.0), np.sin(yaw / 2.0)
    return np.array([0.0, -s, c, 0.0])


def yaw_of_quat(quat: np.ndarray) -> float:
    """Yaw (rad) of a top-down tool frame given by `quat` (inverse of `topdown_quat`)."""
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64))
    # The tool y axis (finger direction) is (-sin yaw, cos yaw, 0) for topdown_quat(yaw).
    return float(np.arctan2(-mat[1], mat[4]))


def wrap_angle(a: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return float((a + np.pi) % (2.0 * np.pi) - np.pi)


class EmbeddedScene:
    """One MuJoCo model + data of the scene, with accessors and an IK controller for the arm."""

    def __init__(self) -> None:
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml())
        self.data = mujoco.MjData(self.model)
        # A second data used only for kinematics, so IK never disturbs the simulated state.
        self._ik_data = mujoco.MjData(self.model)
        m = self.model
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in ARM_JOINTS]
        self.arm_qadr = np.array([m.jnt_qposadr[j] for j in jid])
        self.arm_dadr = np.array([m.jnt_dofadr[j] for j in jid])
        self.joint_lower = m.jnt_range[jid, 0].copy()
        self.joint_upper = m.jnt_range[jid, 1].copy()
        fid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f) for f in ("finger_left", "finger_right")]
        self.finger_qadr = np.array([m.jnt_qposadr[j] for j in fid])
        self.arm_act = np.arange(len(ARM_JOINTS))
        self.finger_act = np.array([len(ARM_JOINTS), len(ARM_JOINTS) + 1])
        self.tcp_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self.target_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "target")
        self.block_names = tuple(BLOCK_COLORS)
        self.block_qadr: dict[str, int] = {}
        self.block_dadr: dict[str, int] = {}
        self.block_geom: dict[str, int] = {}
        for name in self.block_names:
            j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"block_{name}_joint")
            self.block_qadr[name] = int(m.jnt_qposadr[j])
            self.block_dadr[name] = int(m.jnt_dofadr[j])
            self.block_geom[name] = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"block_{name}")
        self.finger_geoms = {
            mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, g) for g in ("finger_left", "finger_right")
        }
        self.home_q = self.solve_ik(HOME_EE_POS, topdown_quat(0.0), _HOME_GUESS, iters=200)
        self.reset_arm(self.home_q)

    # ---------------------------------------------------------------- state
    @property
    def time(self) -> float:
        """Simulated time (s)."""
        return float(self.data.time)

    def arm_q(self) -> np.ndarray:
        """Arm joint positions (rad)."""
        return self.data.qpos[self.arm_qadr].copy()

    def arm_qvel(self) -> np.ndarray:
        """Arm joint velocities (rad/s)."""
        return self.data.qvel[self.arm_dadr].copy()

    def ee_pos(self) -> np.ndarray:
        """Tool centre point position (m, world = robot base frame)."""
        return self.data.site_xpos[self.tcp_site].copy()

    def ee_quat(self) -> np.ndarray:
        """Tool orientation (w, x, y, z)."""
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, self.data.site_xmat[self.tcp_site])
        return q

    def ee_yaw(self) -> float:
        """Yaw of the tool about world z (rad; 0 = fingers open along world y)."""
        return yaw_of_quat(self.ee_quat())

    def gripper_width(self) -> float:
        """Distance between the fingers (m)."""
        return float(self.data.qpos[self.finger_qadr].sum())

    def block_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(position [3], quaternion [4]) of a block."""
        a = self.block_qadr[name]
        return self.data.qpos[a : a + 3].copy(), self.data.qpos[a + 3 : a + 7].copy()

    def target_pos(self) -> np.ndarray:
        """Centre of the target disc on the table."""
        return self.model.body_pos[self.target_body].copy()

    def fingers_touch(self, block: str) -> bool:
        """Whether either finger is in contact with the block."""
        g = self.block_geom[block]
        for c in self.data.contact[: self.data.ncon]:
            pair = {int(c.geom1), int(c.geom2)}
            if g in pair and pair & self.finger_geoms:
                return True
        return False

    # ---------------------------------------------------------------- setting state
    def reset_arm(self, q: np.ndarray, gripper_width: float = 2 * FINGER_MAX) -> None:
        """Teleport the arm to joint positions `q` at rest, with servo targets on the same pose."""
        self.data.qpos[self.arm_qadr] = q
        self.data.qvel[self.arm_dadr] = 0.0
        half = np.clip(gripper_width / 2.0, 0.0, FINGER_MAX)
        self.data.qpos[self.finger_qadr] = half
        self.data.ctrl[self.arm_act] = q
        self.data.ctrl[self.finger_act] = half
        mujoco.mj_forward(self.model, self.data)

    def set_block_pose(self, name: str, pos: np.ndarray, yaw: float) -> None:
        """Place a block at `pos` with a yaw about z, at rest."""
        a, d = self.block_qadr[name], self.block_dadr[name]
        self.data.qpos[a : a + 3] = pos
        self.data.qpos[a + 3 : a + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self.data.qvel[d : d + 6] = 0.0

    def set_target_pos(self, xy: np.ndarray) -> None:
        """Move the target disc (a model parameter: it has no joint)."""
        self.model.body_pos[self.target_body] = [xy[0], xy[1], 0.0]

    def reset(self) -> None:
        """Back to the initial state: arm at home, blocks in a row (callers place them afterwards)."""
        mujoco.mj_resetData(self.model, self.data)
        for i, name in enumerate(self.block_names):
            self.set_block_pose(name, np.array([0.45, -0.1 + 0.1 * i, BLOCK_HALF]), 0.0)
        self.reset_arm(self.home_q)

    # ---------------------------------------------------------------- control
    def solve_ik(
        self,
        pos: np.ndarray,
        quat: np.ndarray,
        q_init: np.ndarray,
        iters: int = 8,
        damping: float = 0.05,
        rot_weight: float = 0.5,
    ) -> np.ndarray:
        """Joint positions that put the TCP at (`pos`, `quat`): damped least squares from `q_init`.

        Uses mj_jacSite on a private MjData, so the simulated state is untouched. The orientation error
        is weighted by `rot_weight` (m per rad) so position dominates near singularities.
        """
        m, d = self.model, self._ik_data
        q = np.clip(np.asarray(q_init, dtype=np.float64).copy(), self.joint_lower, self.joint_upper)
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        cur_quat = np.zeros(4)
        rot_err = np.zeros(3)
        lam2 = damping**2
        for _ in range(iters):
            d.qpos[self.arm_qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            pos_err = pos - d.site_xpos[self.tcp_site]
            mujoco.mju_mat2Quat(cur_quat, d.site_xmat[self.tcp_site])
            # subQuat gives the rotation in the current tool frame; express it in the world frame.
            mujoco.mju_subQuat(rot_err, quat, cur_quat)
            rot_err_w = d.site_xmat[self.tcp_site].reshape(3, 3) @ rot_err
            err = np.concatenate([pos_err, rot_weight * rot_err_w])
            if np.linalg.norm(pos_err) < 1e-4 and np.linalg.norm(rot_err) < 1e-3:
                break
            mujoco.mj_jacSite(m, d, jacp, jacr, self.tcp_site)
            jac = np.vstack([jacp[:, self.arm_dadr], rot_weight * jacr[:, self.arm_dadr]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(6), err)
            q = np.clip(q + dq, self.joint_lower, self.joint_upper)
        return q

    def set_arm_target(self, q: np.ndarray) -> None:
        """Servo targets of the arm joints (clipped to the joint ranges)."""
        self.data.ctrl[self.arm_act] = np.clip(q, self.joint_lower, self.joint_upper)

    def set_gripper_target(self, width: float) -> None:
        """Servo target of the gripper opening (m, clipped to [0, max])."""
        half = float(np.clip(width / 2.0, 0.0, FINGER_MAX))
        self.data.ctrl[self.finger_act] = half

    def set_ee_target(self, pos: np.ndarray, yaw: float, iters: int = 8) -> None:
        """Servo the TCP towards `pos` (clipped to the workspace) pointing down with `yaw`."""
        pos = np.clip(pos, WORKSPACE_LOWER, WORKSPACE_UPPER)
        q = self.solve_ik(pos, topdown_quat(yaw), self.arm_q(), iters=iters)
        self.set_arm_target(q)

    def step(self, n: int = 1) -> None:
        """Advance the physics by `n` steps of PHYSICS_DT."""
        mujoco.mj_step(self.model, self.data, nstep=n)

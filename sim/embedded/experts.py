"""Scripted experts for the embedded tasks: waypoints from privileged object poses + proportional control.

Every step the expert re-reads the block poses (`env.unwrapped.scene`), so a slipped grasp or a block that
rotated during a push is recovered from rather than ignored. Per episode (seeded by `reset(seed)`) it
draws its speed, hover heights, action noise, which of the equivalent grasp yaws to use and whether its
free-space moves arc to the left or to the right, so demonstrations are multimodal. `style="plain"` fixes all
of these at their middle values with no noise: one behaviour per layout and instruction, for a store that
plain imitation can learn from a few hundred demos (the style is not in the observation).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sim.embedded.env import POS_STEP, YAW_LIMIT, YAW_STEP, EmbeddedEnv
from sim.embedded.mjcf import BLOCK_HALF
from sim.embedded.scene import EmbeddedScene, wrap_angle, yaw_of_quat
from sim.embedded.task_defs import TaskInstance, is_success

FINGER_HALF_X = 0.011  # half thickness of the closed fingers along the tool x axis (the pushing face)


def _arc_point(a: np.ndarray, b: np.ndarray, offset: float) -> np.ndarray:
    """Midpoint of the xy segment a->b shifted sideways by `offset` (m), same z as b."""
    d = b[:2] - a[:2]
    n = np.linalg.norm(d)
    mid = (a + b) / 2.0
    if n < 1e-6:
        return mid
    side = np.array([-d[1], d[0]]) / n
    mid[:2] += offset * side * min(1.0, n / 0.2)
    return mid


class EmbeddedExpert:
    """Expert for every embedded task family; the goal is read from the env at each step."""

    STYLES = ("varied", "plain")

    def __init__(self, env: gym.Env, style: str = "varied") -> None:
        inner = env.unwrapped
        if not isinstance(inner, EmbeddedEnv):
            raise TypeError(f"EmbeddedExpert needs an EmbeddedEnv, got {type(inner).__name__}")
        if style not in self.STYLES:
            raise ValueError(f"EmbeddedExpert style must be one of {self.STYLES}, got {style!r}")
        self.env = inner
        self.style = style
        self.reset(None)

    @property
    def scene(self) -> EmbeddedScene:
        """The env's scene (privileged state)."""
        return self.env.scene

    def reset(self, seed: int | None) -> None:
        """Draw this episode's style (speed, heights, noise, grasp yaw choice, arc side) from `seed`.

        With style "plain" every episode gets the middle of each range, no noise and no arc."""
        self.rng = np.random.default_rng(seed)
        r = self.rng
        self.speed = float(r.uniform(0.6, 1.0))
        self.noise = float(r.uniform(0.0, 0.15))
        self.hover = float(r.uniform(0.07, 0.12))
        self.carry = float(r.uniform(0.09, 0.14))
        self.arc = float(r.choice([-1.0, 1.0]) * r.uniform(0.0, 0.06))
        self.yaw_pick = int(r.integers(2))  # which of the two top-down grasp yaws to prefer
        self.grasp_dz = float(r.uniform(-0.004, 0.004))
        self.push_depth = float(r.uniform(0.015, 0.025))
        if self.style == "plain":
            self.speed, self.noise, self.hover, self.carry = 0.8, 0.0, 0.095, 0.115
            self.arc, self.yaw_pick, self.grasp_dz, self.push_depth = 0.0, 0, 0.0, 0.02
        self.phase = "start"
        self.counter = 0
        self.task: TaskInstance | None = None
        self.via: np.ndarray | None = None

    # ------------------------------------------------------------------ helpers
    def _move(
        self, wp: np.ndarray, yaw: float | None, grip: float, speed: float | None = None, fine: bool = False
    ) -> np.ndarray:
        """Proportional step towards `wp` (and `yaw`) with this episode's noise; less noise when `fine`."""
        s = self.scene
        speed = self.speed if speed is None else speed
        delta = np.clip((wp - s.ee_pos()) / POS_STEP, -speed, speed)
        # Noise shrinks as the hand arrives (and in fine moves), so it varies paths but not end points.
        scale = min(1.0, float(np.abs(delta).max()) * 4) * (0.25 if fine else 1.0)
        delta = delta + self.rng.normal(0.0, self.noise, size=3) * scale
        dyaw = 0.0 if yaw is None else float(np.clip(wrap_angle(yaw - s.ee_yaw()) / YAW_STEP, -1.0, 1.0))
        return np.clip(np.array([*delta, dyaw, grip]), -1.0, 1.0).astype(np.float32)

    def _grasp_yaw(self, block: str) -> float:
        """A tool yaw that puts the fingers on two opposite faces of the block, within the yaw limit."""
        _, quat = self.scene.block_pose(block)
        # A cube looks the same every 90 degrees; the tool yaw equals the block yaw modulo pi/2.
        phi = yaw_of_quat(quat) % (np.pi / 2)
        cands = sorted((c for c in (phi - np.pi / 2, phi, phi + np.pi / 2) if abs(c) <= YAW_LIMIT), key=abs)
        return float(cands[min(self.yaw_pick, len(cands) - 1)]) if abs(cands[0]) > 0.35 else float(cands[0])

    def _near(self, wp: np.ndarray, tol_xy: float = 0.012, tol_z: float = 0.012) -> bool:
        e = wp - self.scene.ee_pos()
        return bool(np.linalg.norm(e[:2]) < tol_xy and abs(e[2]) < tol_z)

    def _goto(self, wp: np.ndarray, yaw: float | None, grip: float, nxt: str) -> np.ndarray:
        """Move to `wp`, through this episode's arc point; switch to phase `nxt` on arrival."""
        ee = self.scene.ee_pos()
        if self.via is None:
            self.via = _arc_point(ee, wp, self.arc)
            self.via[2] = max(ee[2], wp[2])
        target = self.via if np.linalg.norm(self.via[:2] - ee[:2]) > 0.03 else wp
        if target is not self.via:
            self.via = wp  # passed the arc point: from now on head straight for the waypoint
        if self._near(wp):
            self._enter(nxt)
        return self._move(target, yaw, grip)

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.counter = 0
        self.via = None

    # ------------------------------------------------------------------ policy
    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        """The next action (float32 [5]) for the env's current goal."""
        task = self.env.task
        # A new goal, or a new episode (even when the caller forgot reset()): plan from the start.
        if task != self.task or self.env._elapsed == 0:
            self.task = task
            self._enter("start")
        self.counter += 1
        if task.kind == "push":
            return self._push(task)
        if task.kind == "pick_place":
            dest = self.scene.target_pos()
            dest[2] = BLOCK_HALF
            return self._pick_place(task.obj, dest)
        assert task.ref is not None
        ref_pos, _ = self.scene.block_pose(task.ref)
        dest = ref_pos + np.array([0.0, 0.0, 2 * BLOCK_HALF])
        return self._pick_place(task.obj, dest)

    def _pick_place(self, obj: str, dest: np.ndarray) -> np.ndarray:
        s = self.scene
        pos, _ = s.block_pose(obj)
        ee = s.ee_pos()
        open_, close = -1.0, 1.0
        if self.phase in ("start", "approach"):
            self.grasp_yaw = self._grasp_yaw(obj)
            wp = np.array([pos[0], pos[1], pos[2] + self.hover])
            act = self._goto(wp, self.grasp_yaw, open_, "descend")
            if self.phase == "descend" and abs(wrap_angle(self.grasp_yaw - s.ee_yaw())) > 0.08:
                self._enter("approach")  # arrived but not yet turned: keep turning above the block
            elif self.phase == "start":
                self.phase = "approach"
            return act
        if self.phase == "descend":
            wp = np.array([pos[0], pos[1], pos[2] + self.grasp_dz])
            if self._near(wp, 0.01, 0.008) or self.counter > 25:
                self._enter("close")
            return self._move(wp, self.grasp_yaw, open_, speed=0.6, fine=True)
        if self.phase == "close":
            if self.counter >= 5:
                self._enter("lift")
            return self._move(ee, None, close)
        if self.phase == "lift":
            wp = np.array([ee[0], ee[1], dest[2] + self.carry])
            if ee[2] > 0.07 and pos[2] < BLOCK_HALF + 0.01:  # the block stayed on the table: regrasp
                self._enter("approach")
                return self._move(ee + [0, 0, 0.02], None, open_)
            if self._near(wp, 0.05, 0.02):
                self._enter("carry")
            return self._move(wp, None, close)
        # From here on the block is in the hand; aim with the block, not the TCP, to cancel grasp offset.
        offset = ee - pos
        if pos[2] < BLOCK_HALF + 0.005 and self.phase in ("carry", "place"):
            self._enter("approach")  # dropped it on the way
            return self._move(ee + [0, 0, 0.02], None, open_)
        if self.phase == "carry":
            wp = np.array([dest[0] + offset[0], dest[1] + offset[1], dest[2] + self.carry])
            return self._goto(wp, None, close, "place")
        if self.phase == "place":
            wp = np.array([dest[0] + offset[0], dest[1] + offset[1], dest[2] + offset[2] + 0.004])
            if self._near(wp, 0.006, 0.006) or self.counter > 30:
                self._enter("release")
            return self._move(wp, None, close, speed=0.5, fine=True)
        if self.phase == "release":
            if self.counter >= 4:
                self._enter("retreat")
            return self._move(ee, None, open_)
        # retreat, then hold; if the block did not end up where it should (it toppled), start over
        if self.counter > 3 and not is_success(s, self.env.task) and pos[2] < BLOCK_HALF + 0.005:
            self._enter("approach")
        wp = np.array([ee[0], ee[1], max(ee[2], dest[2] + self.hover)])
        return self._move(wp, None, open_)

    def _push(self, task: TaskInstance) -> np.ndarray:
        s = self.scene
        pos, _ = s.block_pose(task.obj)
        target = s.target_pos()
        ee = s.ee_pos()
        close = 1.0
        d = target[:2] - pos[:2]
        dist = float(np.linalg.norm(d))
        u = d / max(dist, 1e-6)
        # Tool x is (-cos yaw, -sin yaw): point the pushing face of the closed fingers along u.
        # The face is the same turned by pi: take the equivalent yaw closest to the current one, so that a
        # push direction near the yaw limit does not make the hand spin half a turn mid-push.
        theta = float(np.arctan2(u[1], u[0]))
        cands = [c for c in (wrap_angle(theta), wrap_angle(theta + np.pi)) if abs(c) <= YAW_LIMIT + 1e-6]
        push_yaw = min(
            cands or [float(np.clip(wrap_angle(theta), -YAW_LIMIT, YAW_LIMIT))],
            key=lambda c: abs(wrap_angle(c - s.ee_yaw())),
        )
        standoff = BLOCK_HALF * np.sqrt(2) + FINGER_HALF_X + 0.01
        behind = pos[:2] - u * standoff
        low_z = 0.022
        if dist < 0.012 or self.phase == "retreat":
            self.phase = "retreat"
            return self._move(np.array([ee[0], ee[1], self.hover]), None, close, speed=0.5)
        if self.phase in ("start", "pre"):
            self.phase = "pre"
            wp = np.array([behind[0], behind[1], self.hover])
            act = self._goto(wp, push_yaw, close, "down")
            if self.phase == "down" and abs(wrap_angle(push_yaw - s.ee_yaw())) > 0.1:
                self._enter("pre")
            return act
        if self.phase == "down":
            wp = np.array([behind[0], behind[1], low_z])
            if self._near(wp, 0.015, 0.008):
                self._enter("push")
            elif self.counter > 20:  # something is in the way of the fingers: go up and come again
                self.arc = -self.arc
                self._enter("pre")
            return self._move(wp, push_yaw, close, speed=0.6)
        # push: stay on the line block -> target, driving a few cm into the block, slower near the goal
        rel = ee[:2] - pos[:2]
        lateral = rel - np.dot(rel, u) * u
        if np.linalg.norm(lateral) > 0.025 or np.dot(rel, u) > -BLOCK_HALF:
            self._enter("pre")  # lost the block (it turned or slid sideways): go around and line up again
            return self._move(np.array([ee[0], ee[1], self.hover]), None, close)
        contact = pos[:2] - u * (BLOCK_HALF + FINGER_HALF_X)
        advance = min(self.push_depth, dist)
        wp = np.array([*(contact + u * advance), low_z])
        return self._move(wp, push_yaw, close, speed=min(self.speed, 0.5))

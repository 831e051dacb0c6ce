"""Planning expert for PushT: geometric push proposals scored by rollouts on a cloned simulator.

Each cycle the expert (1) proposes straight pushes from contacts all around the T (edge points pushed along the
inward normal, corners along the bisector) at two speeds, (2) plays every proposal on a private copy of the
physics (`PushSimulator`) from the block's current pose and scores every prefix of it by the remaining pose
error plus a time cost (the approach path length and the push length), (3) samples one of the best proposals,
travels to its start around the T on a collision-free path (a visibility graph whose corner weights are
randomised per episode, so the agent goes round either side), and (4) makes the push, then plans again.

Demos are multimodal through the seeded choices: which near-best push is taken (softmax over costs),
which side of the T the agent travels around, the push speed scale, and small Gaussian noise on the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import shapely

from sim.pusht.env import BOARD_SIZE, PushTTask
from sim.pusht.geometry import (
    AGENT_RADIUS,
    T_CONVEX_CORNERS,
    block_polygon,
    make_contacts,
    plan_path,
    pose_error,
    rotation,
    to_world,
)
from sim.pusht.rollout import PushSimulator


@dataclass
class ExpertConfig:
    """Knobs of the PushT expert (defaults are the measured ones, see scripts/pusht_expert_check.py)."""

    contact_gap: float = 4.0  # px between agent and block at a push's start
    clearance: float = AGENT_RADIUS + 2.5  # px the agent's centre keeps from the block while travelling
    max_push_steps: int = 6  # longest push tried, in control steps
    speed_gain: float = 0.35  # push speed (px/step) = gain * pose error, clipped to [min_speed, max_speed]
    min_speed: float = 1.0
    max_speed: float = 22.0
    slow_factor: float = 0.35  # the second speed tried, relative to the first
    time_cost: float = 0.02  # cost per control step, as a fraction of the current pose error
    temperature: float = 0.04  # softmax temperature over push costs, as a fraction of the current error
    action_noise: float = 0.7  # px, Gaussian noise on travel targets
    side_noise: float = 0.35  # spread of the per-corner path weights (0 = always the shortest way round)
    max_lead: float = 80.0  # px: travel targets are at most this far ahead of the agent
    waypoint_tol: float = 10.0  # px: a travel waypoint counts as reached within this distance
    start_tol: float = 3.0  # px: the push starts when the agent is this close to its start point
    replan_tol: float = 0.6  # pose error change (px) during travel that triggers a new plan
    oblique_deg: float = 0.0  # extra push directions tilted off the edge normal (0 = normal only)


@dataclass
class _Plan:
    waypoints: list[np.ndarray]
    push_targets: list[np.ndarray]
    pose: np.ndarray  # block pose the plan was made for
    travel_steps: int = 0
    pushing: bool = False
    done_targets: int = 0


class PushTExpert:
    """Scripted PushT expert using the privileged block and agent poses of `env.unwrapped`."""

    def __init__(self, env: gym.Env, config: ExpertConfig | None = None) -> None:
        task = env.unwrapped
        if not isinstance(task, PushTTask):
            raise TypeError(f"PushTExpert needs a sim.pusht PushTTask env, got {type(task).__name__}")
        self.task = task
        self.cfg = config or ExpertConfig()
        self.contacts = make_contacts(self.cfg.contact_gap, self.cfg.oblique_deg)
        self._sim: PushSimulator | None = None
        self._plan: _Plan | None = None
        self.rng = np.random.default_rng()
        self._speed_scale = 1.0
        self._node_noise = np.ones(len(T_CONVEX_CORNERS))
        self.n_plans = 0

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: reseed the expert's own randomness (call after env.reset)."""
        self.rng = np.random.default_rng(seed)
        self._sim = None  # gym-pusht rebuilds its pymunk space on every reset
        self._plan = None
        self._speed_scale = float(self.rng.uniform(0.8, 1.2))
        self._node_noise = np.exp(self.rng.normal(0.0, self.cfg.side_noise, len(T_CONVEX_CORNERS)))
        self.n_plans = 0

    # ------------------------------------------------------------------ planning
    def _candidates(
        self, sim: PushSimulator, pose: np.ndarray, goal: np.ndarray, err0: float, agent: np.ndarray
    ) -> np.ndarray:
        """Try every push on the clone; rows of (cost, contact index, speed, n_steps, travel, pose error)."""
        cfg = self.cfg
        rot = rotation(pose[2])
        base_speed = float(np.clip(cfg.speed_gain * err0, cfg.min_speed, cfg.max_speed)) * self._speed_scale
        speeds = (base_speed, max(cfg.min_speed * 0.5, base_speed * cfg.slow_factor))
        poly = block_polygon(pose)
        steps = np.arange(1, cfg.max_push_steps + 1)
        rows = []
        for ci, c in enumerate(self.contacts):
            start = rot @ c.local_start + pose[:2]
            if not (2.0 <= start[0] <= BOARD_SIZE - 2.0 and 2.0 <= start[1] <= BOARD_SIZE - 2.0):
                continue
            direction = rot @ c.local_dir
            dist = float(np.linalg.norm(start - agent))
            # Rough travel time: straight distance, plus a detour when the block is in the way.
            if dist < 2.0 * cfg.start_tol:
                travel = 0.0
            else:
                blocked = shapely.LineString([agent, start]).distance(poly) < cfg.clearance
                travel = 3.0 + dist / 45.0 + (3.0 if blocked else 0.0)
            for speed in speeds:
                poses = sim.push(pose, start, direction, speed, cfg.max_push_steps, cfg.contact_gap)
                errs = pose_error(poses, goal)
                cost = errs + cfg.time_cost * err0 * (travel + steps)
                for k in range(cfg.max_push_steps):
                    rows.append((cost[k], ci, speed, k + 1, travel, errs[k]))
        return np.array(rows)

    def _make_plan(self) -> _Plan | None:
        task = self.task
        if self._sim is None:
            self._sim = PushSimulator(task.sim)
        pose, goal, agent = task.block_pose, task.goal_pose, task.agent_position
        err0 = float(pose_error(pose, goal))
        rows = self._candidates(self._sim, pose, goal, err0, agent)
        self.n_plans += 1
        if len(rows) == 0:
            return None
        improving = rows[rows[:, 5] < err0 - 1e-3]
        if len(improving) == 0:  # no push helps from here: take the least bad, which also repositions
            improving = rows
        cost = improving[:, 0]
        tau = max(self.cfg.temperature * err0, 1e-3)
        logits = -(cost - cost.min()) / tau
        probs = np.exp(logits)
        probs /= probs.sum()
        order = self.rng.choice(len(improving), size=min(8, len(improving)), replace=False, p=probs)
        for idx in order:
            _, ci, speed, n_steps, _, _ = improving[idx]
            contact = self.contacts[int(ci)]
            rot = rotation(pose[2])
            start = rot @ contact.local_start + pose[:2]
            direction = rot @ contact.local_dir
            if np.linalg.norm(start - agent) < 2.0 * self.cfg.start_tol:
                waypoints = [start]
            else:
                path = plan_path(agent, start, pose, self.cfg.clearance, self._node_noise)
                if path is None:
                    continue
                waypoints = path
            targets = [
                start + direction * (self.cfg.contact_gap + speed * (k + 1)) for k in range(int(n_steps))
            ]
            return _Plan(waypoints=waypoints, push_targets=targets, pose=pose)
        return None

    # ------------------------------------------------------------------ acting
    def act(self, obs: dict, info: dict) -> np.ndarray:
        """Next target position of the agent (float32 [2])."""
        del obs, info  # the expert reads the privileged state from the env
        task = self.task
        if task.elapsed_steps == 0:
            # A new episode that reset() was not told about: the old plan belongs to another block pose.
            self._plan = None
        plan = self._plan
        if plan is not None and not plan.pushing:
            moved = float(pose_error(task.block_pose, plan.pose))
            if moved > self.cfg.replan_tol or plan.travel_steps > 40:
                plan = None
        if plan is None or (plan.pushing and plan.done_targets >= len(plan.push_targets)):
            plan = self._make_plan()
            self._plan = plan
        if plan is None:
            # Nothing reachable improves the pose: back away from the block and try again next step.
            agent = task.agent_position
            centre = to_world(np.array([[0.0, 45.0]]), task.block_pose)[0]
            away = agent - centre
            target = agent + away / (np.linalg.norm(away) + 1e-9) * 20.0
            return self._clip(target + self.rng.normal(0, 3.0, 2))
        agent = task.agent_position
        if not plan.pushing:
            plan.travel_steps += 1
            while plan.waypoints:
                tol = self.cfg.start_tol if len(plan.waypoints) == 1 else self.cfg.waypoint_tol
                if np.linalg.norm(plan.waypoints[0] - agent) < tol:
                    plan.waypoints.pop(0)
                else:
                    break
            if plan.waypoints:
                target = plan.waypoints[0]
                offset = target - agent
                dist = float(np.linalg.norm(offset))
                if dist > self.cfg.max_lead:
                    # A carrot at most max_lead ahead: smooth, human-like targets instead of far jumps.
                    target = agent + offset * (self.cfg.max_lead / dist)
                noise = self.rng.normal(0, self.cfg.action_noise, 2) if len(plan.waypoints) > 1 else 0.0
                return self._clip(target + noise)
            plan.pushing = True
        target = plan.push_targets[plan.done_targets]
        plan.done_targets += 1
        return self._clip(target)

    @staticmethod
    def _clip(target: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(target, dtype=np.float64), 0.0, BOARD_SIZE).astype(np.float32)

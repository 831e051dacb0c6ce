"""A private copy of PushT's physics on which the expert tries candidate pushes before making one.

It rebuilds gym-pusht's pymunk world (walls, the T, the agent disc) with the same parameters and steps it
with the same PD law (k_p = 100, k_v = 20, 10 sub-steps of 10 ms per 0.1 s control step), so a push tried
here moves the block as the real env will, up to contact details.
"""

from __future__ import annotations

import math

import numpy as np
import pymunk

from sim.pusht.env import PushTEnv

K_P, K_V, DT, SUBSTEPS = 100.0, 20.0, 0.01, 10


class PushSimulator:
    """Clone of a gym-pusht world; `push` tries one straight push from rest and records the block poses."""

    def __init__(self, sim: PushTEnv) -> None:
        space = pymunk.Space()
        space.gravity = (0, 0)
        space.damping = sim.space.damping
        space.add(
            PushTEnv.add_segment(space, (5, 506), (5, 5), 2),
            PushTEnv.add_segment(space, (5, 5), (506, 5), 2),
            PushTEnv.add_segment(space, (506, 5), (506, 506), 2),
            PushTEnv.add_segment(space, (5, 506), (506, 506), 2),
        )
        self.agent = PushTEnv.add_circle(space, (256, 400), 15)
        self.block, _ = PushTEnv.add_tee(space, (256, 300), 0)
        self.block.center_of_gravity = sim.block.center_of_gravity
        self.space = space
        if abs(sim.k_p - K_P) > 1e-9 or abs(sim.k_v - K_V) > 1e-9 or abs(sim.dt - DT) > 1e-12:
            raise ValueError("PushSimulator assumes gym-pusht's PD gains (100, 20) and dt 0.01")

    def set_state(self, block_pose: np.ndarray, agent_pos: np.ndarray) -> None:
        """Block at rest at (x, y, angle) (angle first: pymunk rotates about the centre of gravity)."""
        self.block.angle = float(block_pose[2])
        self.block.position = (float(block_pose[0]), float(block_pose[1]))
        self.block.velocity = (0.0, 0.0)
        self.block.angular_velocity = 0.0
        self.agent.position = (float(agent_pos[0]), float(agent_pos[1]))
        self.agent.velocity = (0.0, 0.0)

    def push(
        self,
        block_pose: np.ndarray,
        start: np.ndarray,
        direction: np.ndarray,
        speed: float,
        n_steps: int,
        lead: float = 0.0,
    ) -> np.ndarray:
        """Start the agent at rest at `start`, command the targets start + direction * (lead + speed * k) for
        k = 1..n_steps, and return the block pose (x, y, angle) after each control step, shape [n_steps, 3]."""
        self.set_state(block_pose, start)
        out = np.empty((n_steps, 3))
        ax, ay = float(start[0]), float(start[1])
        vx = vy = 0.0
        dx, dy = float(direction[0]) * speed, float(direction[1]) * speed
        agent, block, space = self.agent, self.block, self.space
        for k in range(n_steps):
            tx = float(start[0]) + dx * (k + 1) + float(direction[0]) * lead
            ty = float(start[1]) + dy * (k + 1) + float(direction[1]) * lead
            for _ in range(SUBSTEPS):
                # gym-pusht's PD law, in floats (pymunk's Vec2d arithmetic is slow in a tight loop).
                vx += (K_P * (tx - ax) - K_V * vx) * DT
                vy += (K_P * (ty - ay) - K_V * vy) * DT
                agent.velocity = (vx, vy)
                space.step(DT)
                ax += vx * DT
                ay += vy * DT
            p = block.position
            out[k] = (p.x, p.y, block.angle)
        return out


def wrap_angle(a: float) -> float:
    """Angle in [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi

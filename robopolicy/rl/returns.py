"""The range a chunk-level discounted return can take, from the env's per-step reward range.

DSRL clamps its critics' bootstrap targets to this range (`algo.target_clip=auto`): without a clamp the targets
of every long sparse-reward run here climbed out of it and success collapsed (docs/results.md, stop 21-22).
The bound is exact for the reward arithmetic and loose only where the env's range is: one MDP step is a chunk
of up to T_a env steps, each paying reward_scale * r + reward_offset with r in the env's `reward_bounds`,
and the return of a state is at least one chunk, discounted per chunk by gamma and possibly unending
(a truncated episode bootstraps).
"""

from __future__ import annotations

import math
from typing import Any


def chunk_return_bounds(step_bounds: tuple[float, float], n_action_steps: int, gamma: float,
                        reward_scale: float = 1.0, reward_offset: float = 0.0) -> tuple[float, float] | None:
    """[low, high] of sum_k gamma^k c_k, c_k a chunk's summed rewards; None when unbounded (gamma >= 1 and a
    nonzero chunk reward possible at every step)."""
    lo, hi = step_bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"step reward bounds must be finite with low <= high, got {step_bounds}")
    a, b = reward_scale * lo + reward_offset, reward_scale * hi + reward_offset
    # A chunk may end early (the episode terminates), so it sums 1 .. T_a step rewards.
    c_min, c_max = min(a, n_action_steps * a), max(b, n_action_steps * b)
    horizon = math.inf if gamma >= 1 else 1.0 / (1.0 - gamma)
    low = c_min if c_min >= 0 else c_min * horizon
    high = c_max if c_max <= 0 else c_max * horizon
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return (round(float(low), 9), round(float(high), 9))  # -100, not -99.99999999999991


def env_reward_bounds(task: dict[str, Any]) -> tuple[float, float] | None:
    """The sim env's declared per-step reward range (its `reward_bounds`), or None if it declares none.
    Builds one env of the task to ask it (a few seconds for robosuite)."""
    from robopolicy.rl.common import task_env_name
    from sim.registry import make_env

    env = make_env(task_env_name(task), **dict(task.get("env_kwargs") or {}))
    try:
        bounds = getattr(env.unwrapped, "reward_bounds", None)
    finally:
        env.close()
    return None if bounds is None else (float(bounds[0]), float(bounds[1]))


def task_return_bounds(task: dict[str, Any], n_action_steps: int, gamma: float) -> tuple[float, float] | None:
    """chunk_return_bounds for a task config (its env's reward range, task.reward_scale / reward_offset)."""
    step = env_reward_bounds(task)
    if step is None:
        return None
    scale = task.get("reward_scale")
    return chunk_return_bounds(step, n_action_steps, gamma, 1.0 if scale is None else float(scale),
                               float(task.get("reward_offset") or 0.0))

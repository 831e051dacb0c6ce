"""PushT (gym-pusht) as the registered task "pusht", with a planning expert that uses privileged state.

Importing this package registers the task; `sim.make_env("pusht", obs_mode=..., image_size=...)` and
`sim.make_expert("pusht", env)` then work through the registry.
"""

from __future__ import annotations

from typing import Any

from sim.pusht.env import FPS, LANGUAGE, MAX_EPISODE_STEPS, SUCCESS_THRESHOLD, PushTTask
from sim.pusht.expert import ExpertConfig, PushTExpert
from sim.registry import TaskSpec, register_task

TASK_NAME = "pusht"


def make_env(**kwargs: Any) -> PushTTask:
    """The PushT env; kwargs go to `PushTTask` (obs_mode, image_size, render_mode, state_mode, ...)."""
    return PushTTask(**kwargs)


def make_expert(env: Any) -> PushTExpert:
    """The planning expert for a PushT env (reads the block and agent poses from `env.unwrapped`)."""
    return PushTExpert(env)


register_task(
    TaskSpec(
        name=TASK_NAME,
        make_env=make_env,
        make_expert=make_expert,
        max_episode_steps=MAX_EPISODE_STEPS,
        fps=FPS,
        description=f"{LANGUAGE} (gym-pusht; success = coverage >= {SUCCESS_THRESHOLD}, score = max of clip(coverage/0.95, 0, 1), as Diffusion Policy)",
    )
)

__all__ = ["ExpertConfig", "PushTExpert", "PushTTask", "TASK_NAME", "make_env", "make_expert"]

"""Registers the embedded tasks: embedded_push, embedded_pick_place, embedded_stack, embedded_multitask.

All four share one scene, one observation space and one action space; they differ in the goal (and its
instruction in `info["language"]`). `embedded_multitask` draws the goal and its colours per reset seed.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from sim.embedded.env import EmbeddedEnv
from sim.embedded.experts import EmbeddedExpert
from sim.registry import TaskSpec, register_task

MAX_EPISODE_STEPS: dict[str, int] = {"push": 150, "pick_place": 150, "stack": 150, "multitask": 150}
FPS = 10.0
DESCRIPTIONS: dict[str, str] = {
    "push": "6-DoF arm pushes the red block onto the target disc (embedded MuJoCo scene)",
    "pick_place": "6-DoF arm puts the green block in the target disc (embedded MuJoCo scene)",
    "stack": "6-DoF arm stacks the blue block on the red block (embedded MuJoCo scene)",
    "multitask": "push / pick-and-place / stack with colours drawn per seed; instruction in info['language']",
}


def _factory(family: str):
    def make_env(**kwargs: Any) -> gym.Env:
        kwargs.setdefault("max_episode_steps", MAX_EPISODE_STEPS[family])
        return EmbeddedEnv(task=family, **kwargs)

    make_env.__doc__ = f"Create the embedded '{family}' env (kwargs go to EmbeddedEnv)."
    return make_env


for _family in MAX_EPISODE_STEPS:
    register_task(
        TaskSpec(
            name=f"embedded_{_family}",
            make_env=_factory(_family),
            make_expert=EmbeddedExpert,
            max_episode_steps=MAX_EPISODE_STEPS[_family],
            fps=FPS,
            description=DESCRIPTIONS[_family],
        )
    )

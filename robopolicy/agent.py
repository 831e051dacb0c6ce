"""The Agent interface: what the eval runner, the demo tools and the runtime drive.

An agent takes a batch of *raw* observation histories and returns a batch of *raw* action chunks
(un-normalised, in the env's action space). Observation history (T_o frames) and chunk execution (T_a
actions per call) are the caller's job: the eval runner (robopolicy/eval/) or the runtime keeps the
queues, so an agent is stateless between calls apart from what `reset()` clears.

`robopolicy.load(path)` returns an Agent wrapping a trained policy; `ExpertAgent` wraps a task's scripted
expert from the sim registry so that experts go through the same runner as policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np


@runtime_checkable
class Agent(Protocol):
    """A policy or expert the runner can drive.

    Attributes:
        n_obs_steps: T_o, frames of observation history per call (padded at episode start by repeating
            the first frame).
        n_action_steps: T_a, actions executed per call; `act` returns exactly this many.
        nfe: network evaluations per chunk (0 for scripted agents), for the NFE-per-action report.

    Optional attributes the runner honours when present:
        env_kwargs: dict passed to the task's `make_env` (e.g. {"obs_mode": "pixels", "image_size": (96, 96)})
            so the env produces what the agent was trained on.
        env_wrapper: picklable callable `env -> env` applied inside each worker process, for agents that
            must live next to the simulator (privileged experts; see ExpertAgent).
    """

    n_obs_steps: int
    n_action_steps: int
    nfe: int

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Actions for a batch of observation histories.

        Args:
            obs: each array key ("state", "images/<cam>", "depth/<cam>", ...) shaped (B, T_o, ...) with the
                env's dtype; optionally "language": list[str] of length B (the episodes' instructions).

        Returns:
            float32 array (B, T_a, A): the next T_a raw actions of every batch row, executed in order.
        """
        ...

    def reset(self) -> None:
        """Forget anything kept between calls (called before an evaluation starts)."""
        ...


# --------------------------------------------------------------------------------------------------
# Expert adapter
# --------------------------------------------------------------------------------------------------

# The executed action is reported here in `info` by ExpertControlWrapper.
EXPERT_ACTION_KEY = "expert_action"


class ExpertControlWrapper(gym.Wrapper):
    """Runs a scripted expert *inside* the env's process and ignores the action it is given.

    Experts read privileged simulator state through `env.unwrapped`, so they cannot run in the runner's
    process when envs live in worker processes. This wrapper owns the expert: `reset(seed)` resets both,
    and `step(_)` steps the env with the expert's action. The outer action space is empty (shape (0,)):
    the runner sends nothing. The action actually executed is reported in `info["expert_action"]`.
    """

    def __init__(self, env: gym.Env, expert: Any):
        super().__init__(env)
        self.expert = expert
        self.action_space = gym.spaces.Box(low=0.0, high=0.0, shape=(0,), dtype=np.float32)
        self._obs: Any = None
        self._info: dict[str, Any] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.expert.reset(seed)
        self._obs, self._info = obs, info
        return obs, info

    def step(self, action: Any):
        expert_action = np.asarray(self.expert.act(self._obs, self._info), dtype=np.float32)
        obs, reward, terminated, truncated, info = self.env.step(expert_action)
        self._obs, self._info = obs, info
        info = dict(info)
        info[EXPERT_ACTION_KEY] = expert_action
        return obs, reward, terminated, truncated, info


@dataclass(frozen=True)
class ExpertEnvWrapper:
    """Picklable `env -> ExpertControlWrapper(env, make_expert(task, env))` for spawned workers."""

    task: str

    def __call__(self, env: gym.Env) -> gym.Env:
        # Imported here so that robopolicy.agent stays importable without the sim extras.
        from sim.registry import make_expert

        return ExpertControlWrapper(env, make_expert(self.task, env))


class ExpertAgent:
    """Agent-shaped adapter for a task's scripted expert (T_o = 1, T_a = 1, no network).

    The expert itself runs in the env's process through `env_wrapper`; `act` only returns the empty
    action (B, 1, 0) the wrapped env expects. Latency measured on this agent is therefore ~0: the expert's
    own compute time is part of the env step.
    """

    n_obs_steps = 1
    n_action_steps = 1
    nfe = 0

    def __init__(self, task: str):
        self.task = task
        self.env_wrapper = ExpertEnvWrapper(task)
        self.env_kwargs: dict[str, Any] = {}

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Empty actions (the wrapped env computes the expert's own)."""
        batch = _batch_size(obs)
        return np.zeros((batch, 1, 0), dtype=np.float32)

    def reset(self) -> None:
        """Nothing to forget: the expert is reset with each episode's seed inside its worker."""


def _batch_size(obs: dict[str, Any]) -> int:
    for key, value in obs.items():
        if key != "language":
            return int(np.shape(value)[0])
    if "language" in obs:
        return len(obs["language"])
    raise ValueError("observation batch is empty: expected at least one key such as 'state'")

"""Worker-side env construction for the eval runner: picklable factories, crash capture, vector envs.

Envs run in gymnasium vector envs. AsyncVectorEnv uses the "spawn" context by default because forking
a process that already holds an OpenGL/EGL context crashes the child (Diffusion Policy issue #76).
Every worker env is wrapped in `ErrorCapturingWrapper`, which turns an exception raised by the env (or by
an expert running inside it) into a terminal step carrying `info["error"]`; the worker survives and the
next reset rebuilds the env, so one crashing episode does not take the other workers down.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

ERROR_KEY = "error"

EnvFn = Callable[[], gym.Env]


@dataclass(frozen=True)
class TaskEnvFn:
    """Picklable factory for a registry task: `make_env(task, **env_kwargs)`."""

    task: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> gym.Env:
        from sim.registry import make_env

        return make_env(self.task, **self.env_kwargs)


def zeros_like_space(space: gym.Space) -> Any:
    """An all-zero sample of a (Dict of) Box space, used as the observation of a crashed reset."""
    if isinstance(space, gym.spaces.Dict):
        return {k: zeros_like_space(s) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Box):
        return np.zeros(space.shape, dtype=space.dtype)
    raise TypeError(f"cannot build an empty observation for space {space}; use Dict/Box observation spaces")


class ErrorCapturingWrapper(gym.Env):
    """Owns one env built by `build`; exceptions in reset/step become a terminal step with info['error'].

    After an exception the inner env is considered broken and is rebuilt on the next reset. Spaces are
    read once from the first env (they must not change between rebuilds).
    """

    def __init__(self, build: EnvFn):
        self._build = build
        self.env: gym.Env | None = build()
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.metadata = dict(getattr(self.env, "metadata", {}))
        self.render_mode = getattr(self.env, "render_mode", None)
        self._last_obs: Any = None
        self._broken = False

    def _error_info(self, where: str) -> dict[str, Any]:
        return {ERROR_KEY: f"exception in env.{where} (pid {os.getpid()}):\n{traceback.format_exc()}",
                "success": False}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        try:
            if self._broken or self.env is None:
                self._close_inner()
                self.env = self._build()
                self._broken = False
            obs, info = self.env.reset(seed=seed, options=options)
        except Exception:
            self._broken = True
            self._last_obs = zeros_like_space(self.observation_space)
            return self._last_obs, self._error_info("reset")
        self._last_obs = obs
        return obs, info

    def step(self, action: Any):
        if self._broken or self.env is None:
            # Only reached if the caller steps a crashed env without resetting it (idle rows do): stay terminal.
            return self._last_obs, 0.0, True, False, {ERROR_KEY: "env stepped after a crash", "success": False}
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception:
            self._broken = True
            return self._last_obs, 0.0, True, False, self._error_info("step")
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def render(self) -> Any:
        if self.env is None or self._broken:
            return None
        try:
            return self.env.render()
        except Exception:
            return None

    def _close_inner(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception:
                pass  # a broken env may fail to close; it is replaced anyway
            self.env = None

    def close(self) -> None:
        self._close_inner()


@dataclass(frozen=True)
class WorkerEnvFn:
    """Picklable factory run in each worker: env_fn, then the agent's wrapper, inside crash capture."""

    env_fn: EnvFn
    env_wrapper: Callable[[gym.Env], gym.Env] | None = None

    def build(self) -> gym.Env:
        env = self.env_fn()
        return self.env_wrapper(env) if self.env_wrapper is not None else env

    def __call__(self) -> gym.Env:
        return ErrorCapturingWrapper(self.build)


def make_vector_env(worker_fn: WorkerEnvFn, n_workers: int, context: str = "spawn") -> gym.vector.VectorEnv:
    """A vector env of `n_workers` copies, with autoreset disabled (the runner resets with fixed seeds).

    One worker runs in-process (SyncVectorEnv); more use AsyncVectorEnv with `context` ("spawn" or
    "forkserver"; never "fork", see the module docstring).
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if context == "fork":
        raise ValueError("context='fork' crashes with OpenGL/EGL renderers; use 'spawn' or 'forkserver'")
    # Workers inherit the parent's environment; headless MuJoCo rendering needs EGL.
    os.environ.setdefault("MUJOCO_GL", "egl")
    mode = gym.vector.AutoresetMode.DISABLED
    fns = [worker_fn] * n_workers
    if n_workers == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=mode)

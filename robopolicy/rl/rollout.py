"""Rollouts for RL fine-tuning: one MDP step = one executed action chunk, in gymnasium vector envs.

A chunked policy (T_o observations in, T_a actions out) sees the environment as an MDP whose step is
"execute T_a actions": `ChunkEnv` wraps a task env inside each worker process and does exactly that,
keeping the T_o-frame observation history (first-frame padding after a reset, as the eval runner does),
summing the rewards of the T_a steps and resetting itself when an episode ends. The per-episode results
(success, return, length) come back in `info["episode_*"]` and the boundary in `info["done"]` on the step that
ended it, so the caller never deals with gymnasium's autoreset modes (the vector env, autoreset disabled as
in eval/envs.py, is never told an episode ended).

An episode that is truncated (time limit) is reported as done without a bootstrap value: its final
observation is not returned. With the sparse success rewards of the sim tasks this loses little.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from robopolicy.eval.envs import ERROR_KEY, TaskEnvFn, WorkerEnvFn, make_vector_env

EPISODE_KEYS = ("episode_done", "episode_success", "episode_return", "episode_length", "episode_error")


class ChunkEnv(gym.Env):
    """A task env seen at the chunk level: obs = {key: (T_o, ...)}, action = (T_a, A) raw actions."""

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int, max_episode_steps: int | None,
                 reward_offset: float = 0.0, reward_scale: float = 1.0):
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}")
        if not (np.isfinite(reward_offset) and np.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"reward_offset must be finite and reward_scale > 0, got {reward_offset}, {reward_scale}")
        # Each env step pays reward_scale * r + reward_offset. An offset of -1 with a 0/1 success reward is DSRL's
        # and RL-100's robomimic setting (returns <= 0: minus the steps to success); scale 0.1 and offset -1 turn
        # Meta-World's dense 0-10 reward into [-1, 0] per step, so ending an episode early pays. Success is unaffected.
        self.reward_offset, self.reward_scale = float(reward_offset), float(reward_scale)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"RL rollouts need Dict observations (DESIGN.md), got {space}")
        self.env = env
        self.t_o, self.t_a = int(n_obs_steps), int(n_action_steps)
        self.max_steps = max_episode_steps
        self.observation_space = gym.spaces.Dict({
            k: gym.spaces.Box(np.repeat(s.low[None], self.t_o, 0), np.repeat(s.high[None], self.t_o, 0),
                              dtype=s.dtype)
            for k, s in space.spaces.items()})
        inner = env.action_space
        self.inner_action_space = inner
        self.action_space = gym.spaces.Box(np.repeat(inner.low[None], self.t_a, 0),
                                           np.repeat(inner.high[None], self.t_a, 0), dtype=inner.dtype)
        self._history: deque = deque(maxlen=self.t_o)
        self._steps = 0
        self._return = 0.0
        self._success = False

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: np.stack([h[k] for h in self._history]) for k in self._history[0]}

    def _start(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._history = deque([obs] * self.t_o, maxlen=self.t_o)
        self._steps, self._return, self._success = 0, 0.0, False
        return self._obs()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._start(obs), info

    def step(self, chunk: np.ndarray):
        chunk = np.asarray(chunk, dtype=self.inner_action_space.dtype).reshape(self.action_space.shape)
        chunk = np.clip(chunk, self.inner_action_space.low, self.inner_action_space.high)
        reward, terminated, truncated, error, n = 0.0, False, False, None, 0
        for action in chunk:
            obs, r, term, trunc, info = self.env.step(action)
            n += 1
            self._steps += 1
            reward += self.reward_scale * float(r) + self.reward_offset
            self._history.append(obs)
            self._success = self._success or bool(info.get("success", False))
            error = info.get(ERROR_KEY)
            terminated = bool(term) or error is not None
            truncated = bool(trunc) or (self.max_steps is not None and self._steps >= self.max_steps)
            if terminated or truncated:
                break
        self._return += reward
        out_info: dict[str, Any] = {"env_steps": n, "success": self._success, "done": terminated or truncated,
                                    "terminated": terminated}
        obs_out = self._obs()
        if terminated or truncated:
            out_info.update(episode_done=True, episode_success=self._success and error is None,
                            episode_return=self._return, episode_length=self._steps,
                            episode_error=str(error) if error is not None else "")
            obs_out, _ = self.reset()  # autoreset here: the env RNG continues from its first seed
        # The vector env never sees an end (it would refuse the next step with autoreset disabled): the
        # episode boundary travels in info["done"] / info["terminated"].
        return obs_out, reward, False, False, out_info

    def close(self) -> None:
        self.env.close()


@dataclass(frozen=True)
class ChunkEnvFn:
    """Picklable worker factory: the task env (crash-captured, as in the eval runner) inside a ChunkEnv."""

    task: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    n_obs_steps: int = 2
    n_action_steps: int = 8
    max_episode_steps: int | None = None
    reward_offset: float = 0.0
    reward_scale: float = 1.0

    def __call__(self) -> gym.Env:
        inner = WorkerEnvFn(TaskEnvFn(self.task, dict(self.env_kwargs)))()
        return ChunkEnv(inner, self.n_obs_steps, self.n_action_steps, self.max_episode_steps, self.reward_offset,
                        self.reward_scale)


@dataclass
class EpisodeStats:
    """Finished episodes seen by a ChunkVectorEnv since the last `pop`."""

    success: list[bool] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Rates over the episodes that finished in this window. Early in a run these over-count quick
        successes (only short episodes can have finished yet): see `ChunkVectorEnv.recent_success_rate`."""
        if not self.success:
            return {}
        return {"episodes": float(len(self.success)), "success_rate": float(np.mean(self.success)),
                "return_mean": float(np.mean(self.returns)), "length_mean": float(np.mean(self.lengths))}


class ChunkVectorEnv:
    """`n_envs` ChunkEnvs in worker processes (one in-process when n_envs == 1 or `in_process`).

    `step(chunks)` returns (obs, reward, done, env_steps) as numpy arrays and collects finished episodes
    into `stats`; `env_steps` counts the low-level steps actually taken (episodes may end mid-chunk).
    """

    def __init__(self, fn: Callable[[], gym.Env], n_envs: int, context: str = "spawn", in_process: bool = False,
                 recent_episodes: int = 64):
        """`fn` builds one ChunkEnv (a picklable ChunkEnvFn for worker processes); `recent_episodes` is the
        window of `recent_success_rate`."""
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.n_envs = int(n_envs)
        if in_process and n_envs > 1:
            self.envs: gym.vector.VectorEnv = gym.vector.SyncVectorEnv(
                [fn] * n_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        else:
            self.envs = make_vector_env(fn, n_envs, context)  # type: ignore[arg-type]
        self.stats = EpisodeStats()
        self.total_env_steps = 0
        # Per env, whether an episode ended in success on the last step (RL-100 keeps those episodes' chunks).
        self.last_success = np.zeros(self.n_envs, dtype=bool)
        self._recent: deque[bool] = deque(maxlen=int(recent_episodes))
        self._in_first = np.ones(self.n_envs, dtype=bool)  # env i has not finished an episode since the reset

    @property
    def recent_success_rate(self) -> float | None:
        """Success over the last `recent_episodes` finished episodes, or None while the run warms up.

        A per-iteration rate is biased: after a reset only quick episodes (mostly successes) can finish in the
        first iterations, and with synchronised time-outs an iteration holds either a few successes or a wave of
        failures (PushT: 1-30 episodes per iteration). Here each env's first episode always counts, later
        episodes count once every env has finished its first, so the window starts from an unbiased sample."""
        if not self.first_episodes_done or not self._recent:
            return None
        return float(np.mean(self._recent))

    @property
    def first_episodes_done(self) -> bool:
        """Whether every env has finished an episode since the last reset (an unbiased batch is in)."""
        return not self._in_first.any()

    @property
    def chunk_space(self) -> gym.spaces.Box:
        return self.envs.single_action_space  # type: ignore[return-value]

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Reset every env; env i gets seed `seed + i` and then continues its own RNG across episodes."""
        obs, _ = self.envs.reset(seed=[int(seed) + i for i in range(self.n_envs)])
        self._recent.clear()
        self._in_first[:] = True
        return obs

    def step(self, chunks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int]:
        obs, reward, _, _, info = self.envs.step(np.asarray(chunks))
        done = np.asarray(info["done"], dtype=bool)
        n_steps = int(np.sum(info["env_steps"])) if "env_steps" in info else self.n_envs
        self.total_env_steps += n_steps
        self.last_success = np.zeros(self.n_envs, dtype=bool)
        if "episode_done" in info:
            mask = info.get("_episode_done", info["episode_done"])
            for i in np.flatnonzero(mask):
                self.stats.success.append(bool(info["episode_success"][i]))
                self.last_success[i] = bool(info["episode_success"][i])
                if self._in_first[i] or not self._in_first.any():
                    self._recent.append(bool(info["episode_success"][i]))
                self._in_first[i] = False
                self.stats.returns.append(float(info["episode_return"][i]))
                self.stats.lengths.append(int(info["episode_length"][i]))
                if info["episode_error"][i]:
                    self.stats.errors.append(str(info["episode_error"][i]))
        return obs, np.asarray(reward, dtype=np.float32), done.astype(np.float32), n_steps

    def pop_stats(self) -> EpisodeStats:
        stats, self.stats = self.stats, EpisodeStats()
        return stats

    def close(self) -> None:
        self.envs.close()

"""The evaluation runner: any Agent over N seeded episodes in parallel gymnasium vector envs.

How it works
- Episode i is reset with seed `seed + i`, whichever worker runs it, so results do not depend on the
  worker count (for agents whose output for a batch row depends only on that row).
- The vector env runs with autoreset disabled; when an episode ends, the runner resets that worker alone
  (`reset(seed=..., options={"reset_mask": mask})`) with the next episode's seed. With gymnasium's default
  next-step autoreset the worker would restart on its own with an unseeded reset, losing the fixed seeds.
- Observation history (T_o frames, padded at episode start by repeating the first frame) and action-chunk
  execution (T_a actions per agent call) live here. Workers whose queue is empty are batched into one
  agent call; the others keep executing their chunk.
- An episode ends on `terminated`, `truncated`, the first success (unless `stop_on_success=False`), an env
  error, or `max_episode_steps`.
- A crash inside an env is captured in its worker (see envs.py) and fails that episode with the traceback.
  If a worker process dies, the vector env is rebuilt, the dead worker's episode fails and the other
  in-flight episodes restart from their seeds.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from robopolicy.agent import Agent
from robopolicy.eval.envs import ERROR_KEY, TaskEnvFn, WorkerEnvFn, make_vector_env
from robopolicy.eval.metrics import EpisodeRecord, summarize
from robopolicy.eval.video import VideoSelector, fit_frame, frame_from_obs

log = logging.getLogger(__name__)

DEFAULT_EVAL_SEED = 100_000  # far from the demo-collection seeds (0, 1, ...), as in Diffusion Policy


@dataclass
class EvalResult:
    """Everything an evaluation produced (report files are written by `report.write_report`)."""

    records: list[EpisodeRecord]
    summary: dict[str, Any]
    latencies_ms: list[float]
    videos: list[tuple[EpisodeRecord, list[np.ndarray]]]
    config: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)


@dataclass
class _Row:
    """Bookkeeping of one vector-env worker."""

    episode: int = -1  # -1: idle (no episode left for it)
    seed: int = 0
    steps: int = 0
    reward: float = 0.0
    score: float = 0.0
    success: bool = False
    language: str = ""
    history: deque = field(default_factory=deque)
    queue: deque = field(default_factory=deque)
    frames: list[np.ndarray] | None = None
    idle_action: np.ndarray | None = None
    stream: int = -1  # unique per started episode: names a streaming agent's buffer

    @property
    def active(self) -> bool:
        return self.episode >= 0


def _info_at(info: dict[str, Any], key: str, i: int) -> Any:
    """Value of `key` for worker i in a vector-env info dict, or None when that worker did not report it."""
    if key not in info:
        return None
    mask = info.get("_" + key)
    if mask is not None and not mask[i]:
        return None
    return info[key][i]


class _Runner:
    def __init__(self, agent: Agent, worker_fn: WorkerEnvFn, n_episodes: int, seed: int, n_workers: int,
                 max_episode_steps: int | None, stop_on_success: bool, videos_per_outcome: int,
                 context: str, max_restarts: int, progress: bool):
        self.agent = agent
        self.worker_fn = worker_fn
        self.seeds = [seed + i for i in range(n_episodes)]
        self.n_workers = max(1, min(n_workers, n_episodes))
        self.max_steps = max_episode_steps
        self.stop_on_success = stop_on_success
        self.context = context
        self.max_restarts = max_restarts
        self.t_o = int(agent.n_obs_steps)
        self.t_a = int(agent.n_action_steps)
        if self.t_o < 1 or self.t_a < 1:
            raise ValueError(f"agent needs n_obs_steps >= 1 and n_action_steps >= 1, got {self.t_o}, {self.t_a}")
        self.pending: deque[int] = deque(range(n_episodes))
        self.records: dict[int, EpisodeRecord] = {}
        self.restarts: dict[int, int] = {}
        self.latencies_ms: list[float] = []
        self.batch_sizes: list[int] = []
        self.selector = VideoSelector(videos_per_outcome)
        self.bar = tqdm(total=n_episodes, desc="eval", unit="ep", disable=not progress, dynamic_ncols=True)
        self.envs: gym.vector.VectorEnv | None = None
        self._rendered: tuple | None = None  # this step's render() of all workers, when needed
        self.rows: list[_Row] = []
        self._next_stream = 0

    # ---------------------------------------------------------------- env lifecycle
    def _open(self) -> None:
        self.envs = make_vector_env(self.worker_fn, self.n_workers, self.context)
        space = self.envs.single_observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"the eval runner needs Dict observations (DESIGN.md), got {space}")
        self.has_cameras = any(k.startswith("images/") for k in space.spaces)
        self.can_render = self.envs.render_mode == "rgb_array"
        self.action_space = self.envs.single_action_space
        self.rows = [_Row() for _ in range(self.n_workers)]
        self._assign_and_reset(list(range(self.n_workers)), full=True)

    def _close(self, terminate: bool = False) -> None:
        if self.envs is not None:
            try:
                with warnings.catch_warnings():  # closing mid-call after a worker death warns; expected here
                    warnings.simplefilter("ignore")
                    self.envs.close(terminate=terminate)
            except Exception as e:  # a broken vector env may fail to close cleanly
                log.warning("closing the vector env failed: %s", e)
            self.envs = None

    # ---------------------------------------------------------------- episodes
    def _assign_and_reset(self, idx: list[int], full: bool = False) -> None:
        """Give each listed worker its next episode (or leave it idle) and reset it with that seed."""
        for i in idx:
            row = self.rows[i]
            if self.pending:
                row.episode = self.pending.popleft()
                row.seed = self.seeds[row.episode]
            else:
                row.episode = -1  # idle: reset anyway so the env is never stepped past its end
        seeds = [int(r.seed) for r in self.rows]
        try:
            if full:
                obs, info = self.envs.reset(seed=seeds)
            else:
                mask = np.zeros(self.n_workers, dtype=bool)
                mask[idx] = True
                obs, info = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        except Exception as e:  # a worker died or raised outside the env's own code
            self._recover(e)
            return
        self._rendered = None
        for i in idx:
            row = self.rows[i]
            if not row.active:
                continue
            first = {k: v[i] for k, v in obs.items()}
            row.steps, row.reward, row.score, row.success = 0, 0.0, 0.0, False
            row.language = str(_info_at(info, "language", i) or "")
            row.history = deque([first] * self.t_o, maxlen=self.t_o)  # first-frame padding
            row.queue.clear()
            row.stream, self._next_stream = self._next_stream, self._next_stream + 1
            row.frames = [] if self.selector.wants_frames(row.episode) else None
            if row.frames is not None:
                self._capture(row, first, i)
            err = _info_at(info, ERROR_KEY, i)
            if err is not None:
                self._finish(i, error=str(err))

    def _capture(self, row: _Row, obs_i: dict[str, np.ndarray], i: int) -> None:
        frame = frame_from_obs(obs_i) if self.has_cameras else None
        if frame is None and self.can_render:
            # One render() call covers every worker; cache it for the other rows of this step.
            if self._rendered is None:
                self._rendered = self.envs.render() or ()
            if i < len(self._rendered) and self._rendered[i] is not None:
                frame = fit_frame(self._rendered[i])
        if frame is not None:
            row.frames.append(frame)

    def _finish(self, i: int, error: str | None = None) -> None:
        row = self.rows[i]
        record = EpisodeRecord(index=row.episode, seed=row.seed, success=bool(row.success) and error is None,
                               score=float(row.score), length=row.steps, reward=float(row.reward),
                               language=row.language, error=error)
        self.records[row.episode] = record
        if row.frames:
            self.selector.offer(record, row.frames)
        row.frames = None
        row.episode = -1
        row.queue.clear()
        n_done = len(self.records)
        n_succ = sum(r.success for r in self.records.values())
        self.bar.update(1)
        self.bar.set_postfix(success=f"{n_succ}/{n_done} ({n_succ / n_done:.0%})")

    # ---------------------------------------------------------------- agent
    def _query_agent(self, need: list[int]) -> None:
        keys = list(self.rows[need[0]].history[0].keys())
        batch: dict[str, Any] = {
            k: np.stack([np.stack([h[k] for h in self.rows[i].history]) for i in need]) for k in keys
        }
        batch["language"] = [self.rows[i].language for i in need]
        t0 = time.perf_counter()
        if getattr(self.agent, "streaming", False):  # keeps a buffer per episode (Streaming Diffusion Policy)
            chunk = np.asarray(self.agent.act(batch, streams=[self.rows[i].stream for i in need]))
        else:
            chunk = np.asarray(self.agent.act(batch))
        self.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        self.batch_sizes.append(len(need))
        expected = (len(need), self.t_a, *self.action_space.shape)
        if chunk.shape != expected:
            raise ValueError(
                f"agent.act returned actions of shape {chunk.shape}, expected (B, T_a, A) = {expected}. "
                "An agent returns exactly n_action_steps actions, starting at the current step."
            )
        chunk = chunk.astype(self.action_space.dtype, copy=False)
        for j, i in enumerate(need):
            self.rows[i].queue.extend(chunk[j])

    # ---------------------------------------------------------------- main loop
    def _step(self) -> None:
        need = [i for i, r in enumerate(self.rows) if r.active and not r.queue]
        if need:
            self._query_agent(need)
        actions = []
        for row in self.rows:
            if row.active:
                row.idle_action = row.queue.popleft()
            elif row.idle_action is None:
                row.idle_action = np.zeros(self.action_space.shape, dtype=self.action_space.dtype)
            actions.append(row.idle_action)
        try:
            obs, reward, terminated, truncated, info = self.envs.step(np.stack(actions))
        except Exception as e:  # a worker died or raised outside the env's own code
            self._recover(e)
            return

        self._rendered = None
        to_reset = []
        for i, row in enumerate(self.rows):
            if not row.active:
                if terminated[i] or truncated[i]:
                    to_reset.append(i)
                continue
            obs_i = {k: v[i] for k, v in obs.items()}
            row.steps += 1
            row.reward += float(reward[i])
            success = _info_at(info, "success", i)
            row.success = row.success or bool(success)
            score = _info_at(info, "score", i)
            row.score = max(row.score, float(score) if score is not None else float(bool(success)))
            row.history.append(obs_i)
            if row.frames is not None:
                self._capture(row, obs_i, i)
            error = _info_at(info, ERROR_KEY, i)
            done = (bool(terminated[i]) or bool(truncated[i]) or error is not None
                    or (self.stop_on_success and row.success)
                    or (self.max_steps is not None and row.steps >= self.max_steps))
            if done:
                self._finish(i, error=None if error is None else str(error))
                to_reset.append(i)
        if to_reset:
            self._assign_and_reset(to_reset)

    def _recover(self, exc: BaseException) -> None:
        """A worker process died or raised outside the env: rebuild the vector env and carry on."""
        dead = []
        if isinstance(self.envs, gym.vector.AsyncVectorEnv):
            dead = [i for i, p in enumerate(self.envs.parent_pipes) if p is None]
            if not dead:  # a process that died outright closes its pipe first: give it a moment to exit
                for p in self.envs.processes:
                    p.join(timeout=0.5)
                dead = [i for i, p in enumerate(self.envs.processes) if not p.is_alive()]
        elif self.n_workers == 1:
            dead = [0]
        message = f"vector env failure ({type(exc).__name__}: {exc})"
        log.warning("%s; rebuilding the workers (dead: %s)", message, dead or "unknown")
        self._close(terminate=True)
        for i, row in enumerate(self.rows):
            if not row.active:
                continue
            n = self.restarts[row.episode] = self.restarts.get(row.episode, 0) + 1
            if i in dead or n > self.max_restarts:
                self._finish(i, error=f"{message} in worker {i}")
            else:
                self.pending.appendleft(row.episode)  # restart from its seed: same result
        self.pending = deque(sorted(self.pending))

    def run(self) -> list[EpisodeRecord]:
        try:
            self.agent.reset()
            while self.pending or any(r.active for r in self.rows):
                if self.envs is None:
                    self._open()
                    continue
                self._step()
        finally:
            self._close()
            self.bar.close()
        return [self.records[i] for i in sorted(self.records)]


def evaluate(
    agent: Agent,
    env: str | Callable[[], gym.Env],
    *,
    n_episodes: int = 50,
    seed: int = DEFAULT_EVAL_SEED,
    n_workers: int = 1,
    env_kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    stop_on_success: bool = True,
    videos_per_outcome: int = 2,
    out_dir: str | Path | None = None,
    context: str = "spawn",
    max_restarts: int = 2,
    progress: bool = True,
) -> EvalResult:
    """Run `agent` for `n_episodes` episodes (seeds `seed`, `seed + 1`, ...) and summarise.

    Args:
        agent: an Agent (robopolicy.agent); its optional `env_kwargs` / `env_wrapper` are honoured.
        env: a registry task name ("pusht", "robosuite_lift", ...) or a picklable zero-argument env factory.
        n_workers: worker processes (1 runs in-process).
        env_kwargs: extra `make_env` arguments for a task name (override the agent's).
        max_episode_steps: safety cap on episode length; defaults to the task's registered limit.
        videos_per_outcome: episodes kept per outcome (success / failure) for the mp4; 0 disables video.
        out_dir: when given, the JSON report, mp4 and summary PNG are written there.
        context: multiprocessing start method for AsyncVectorEnv ("spawn" or "forkserver").
        max_restarts: restarts allowed per episode after a worker process death before it counts as failed.

    With n_workers > 1 the workers are spawned processes, which re-import the calling script: a script
    that calls `evaluate` needs the usual `if __name__ == "__main__":` guard.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    fps = 10.0
    task_name = env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__)
    if isinstance(env, str):
        from sim.registry import get_task

        spec = get_task(env)
        fps = spec.fps
        max_episode_steps = max_episode_steps or spec.max_episode_steps
        kwargs = {**dict(getattr(agent, "env_kwargs", {}) or {}), **(env_kwargs or {})}
        if videos_per_outcome > 0 and kwargs.get("obs_mode") == "state":
            kwargs.setdefault("render_mode", "rgb_array")  # no camera in the obs: render for the video
        env_fn: Callable[[], gym.Env] = TaskEnvFn(env, kwargs)
    else:
        env_fn = env
        kwargs = dict(env_kwargs or {})
    worker_fn = WorkerEnvFn(env_fn, getattr(agent, "env_wrapper", None))
    runner = _Runner(agent, worker_fn, n_episodes, seed, n_workers, max_episode_steps, stop_on_success,
                     videos_per_outcome, context, max_restarts, progress)
    t0 = time.perf_counter()
    records = runner.run()
    wall = time.perf_counter() - t0
    summary = summarize(records, runner.latencies_ms, runner.t_o, runner.t_a, int(getattr(agent, "nfe", 0)))
    summary["agent_batch_mean"] = float(np.mean(runner.batch_sizes)) if runner.batch_sizes else 0.0
    summary["wall_s"] = wall
    summary["env_steps_per_s"] = sum(r.length for r in records) / wall if wall > 0 else float("nan")
    config = {"task": task_name, "n_episodes": n_episodes, "seed": seed, "n_workers": runner.n_workers,
              "env_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
              "max_episode_steps": max_episode_steps, "stop_on_success": stop_on_success,
              "agent": type(agent).__name__, "fps": fps}
    result = EvalResult(records, summary, runner.latencies_ms, runner.selector.selected(), config)
    if out_dir is not None:
        from robopolicy.eval.report import write_report

        write_report(result, Path(out_dir))
    return result

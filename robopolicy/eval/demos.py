"""Expert demonstration collection: run a task's scripted expert over seeds into an EpisodeStore.

Episode k of a collection is reset with seed `seed + k`; the expert is reset with the same seed, so
a collection is reproducible. An episode is written as T (observation, action) pairs: the observation
the expert saw and the action it took, with sim timestamps `step / fps`. Successful episodes are written
until `n` of them are stored; failed attempts are written too (success=False) only with keep_failures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data import EpisodeStore

log = logging.getLogger(__name__)

# Robot names per task family, for the episode attributes (task envs may expose `robot_name` instead).
ROBOT_BY_PREFIX = {"pusht": "pusht_pusher", "robosuite_": "panda", "metaworld_": "sawyer", "embedded_": "embedded_arm"}


@dataclass
class CollectResult:
    """Summary of a collection run."""

    path: str
    n_written: int
    n_success: int
    n_attempts: int
    seeds_written: list[int] = field(default_factory=list)
    failed_seeds: list[int] = field(default_factory=list)

    @property
    def expert_success_rate(self) -> float:
        return self.n_success / self.n_attempts if self.n_attempts else float("nan")


def _robot_name(task: str, env: Any) -> str:
    name = getattr(env.unwrapped, "robot_name", None)
    if isinstance(name, str) and name:
        return name
    for prefix, robot in ROBOT_BY_PREFIX.items():
        if task.startswith(prefix):
            return robot
    return "sim"


def _image_size(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or [H, W], got {image_size!r}")
    return size  # type: ignore[return-value]


def run_expert_episode(env: Any, expert: Any, seed: int, max_steps: int,
                       stop_on_success: bool = True) -> tuple[dict[str, list], bool, str, float]:
    """Roll the expert out once. Returns (per-key lists of obs and actions, success, language, max score)."""
    obs, info = env.reset(seed=seed)
    expert.reset(seed)
    language = str(info.get("language", ""))
    steps: dict[str, list] = {k: [] for k in obs}
    steps["action"] = []
    success, score = False, 0.0
    for _ in range(max_steps):
        action = np.asarray(expert.act(obs, info), dtype=np.float32)
        for k, v in obs.items():
            steps[k].append(np.array(v))  # copy: renderers may reuse their buffers
        steps["action"].append(action)
        obs, _, terminated, truncated, info = env.step(action)
        success = success or bool(info.get("success", False))
        score = max(score, float(info.get("score", float(success))))
        if terminated or truncated or (stop_on_success and success):
            break
    return steps, success, language, score


def collect_demos(
    task: str,
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    keep_failures: bool = False,
    image_size: int | tuple[int, int] | None = 96,
    obs_mode: str | None = "both",
    max_attempts: int | None = None,
    stop_on_success: bool = True,
    overwrite: bool = False,
    append: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    expert_kwargs: dict[str, Any] | None = None,
) -> CollectResult:
    """Collect `n` successful expert episodes of `task` into the EpisodeStore at `out`.

    Args:
        seed: seed of the first attempt; attempt k uses `seed + k`.
        keep_failures: also write failed attempts (attrs success=False); they do not count towards `n`.
        image_size: camera resolution (int or (H, W)); None keeps the task's default.
        obs_mode: "state", "pixels" or "both"; None keeps the task's default.
        max_attempts: stop after this many attempts even if fewer than `n` succeeded (default 2n + 10).
        stop_on_success: end an episode at the expert's first success (else run to termination/time limit).
        overwrite / append: what to do when `out` exists (by default it is an error).
        expert_kwargs: arguments of the task's expert (embedded tasks: style="plain" for one fixed behaviour).
    """
    from sim.registry import get_task, make_env, make_expert

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    spec = get_task(task)
    expert_kwargs = dict(expert_kwargs or {})
    out = Path(out)
    if out.exists() and not (overwrite or append):
        raise FileExistsError(f"{out} already exists; pass append=true to add episodes or overwrite=true to replace it")
    kwargs = dict(env_kwargs or {})
    if obs_mode is not None:
        kwargs.setdefault("obs_mode", obs_mode)
    size = _image_size(image_size)
    if size is not None and kwargs.get("obs_mode") != "state":
        kwargs.setdefault("image_size", size)
    from robopolicy.perception.env import split_pointcloud_kwargs

    kwargs, pointcloud_wrapper = split_pointcloud_kwargs(kwargs)  # env_kwargs {pointcloud: {...}}: add the key
    env = make_env(task, **kwargs)
    if pointcloud_wrapper is not None:
        env = pointcloud_wrapper(env)
    try:
        expert = make_expert(task, env, **expert_kwargs)
        # Only now touch `out`: a bad expert argument must not replace an existing store with an empty one.
        store = EpisodeStore.open(out, mode="a") if (append and out.exists()) else EpisodeStore.create(
            out, fps=spec.fps, overwrite=overwrite)
    except Exception:
        env.close()
        raise
    robot = _robot_name(task, env)
    max_attempts = max_attempts if max_attempts is not None else 2 * n + 10
    result = CollectResult(path=str(out), n_written=0, n_success=0, n_attempts=0)
    bar = tqdm(total=n, desc=f"collect {task}", unit="demo", disable=not progress, dynamic_ncols=True)
    try:
        while result.n_success < n and result.n_attempts < max_attempts:
            ep_seed = seed + result.n_attempts
            steps, success, language, score = run_expert_episode(env, expert, ep_seed, spec.max_episode_steps,
                                                                 stop_on_success)
            result.n_attempts += 1
            if success:
                result.n_success += 1
            else:
                result.failed_seeds.append(ep_seed)
            bar.set_postfix(expert_success=f"{result.n_success}/{result.n_attempts} "
                                           f"({result.n_success / result.n_attempts:.0%})", refresh=False)
            bar.update(int(success))
            if not steps["action"] or not (success or keep_failures):
                continue
            arrays = {k: np.stack(v) for k, v in steps.items()}
            arrays["state"] = arrays["state"].astype(np.float32)
            arrays["timestamp"] = np.arange(len(arrays["action"]), dtype=np.float64) / spec.fps
            store.add_episode(arrays, {"task": task, "language": language, "success": success,
                                       "source": "expert", "robot": robot, "seed": ep_seed,
                                       "score": score, **({"expert": expert_kwargs} if expert_kwargs else {})})
            result.n_written += 1
            result.seeds_written.append(ep_seed)
    finally:
        bar.close()
        env.close()
    if result.n_success < n:
        log.warning("only %d of %d requested successful demos after %d attempts (expert success %.0f%%)",
                    result.n_success, n, result.n_attempts, 100 * result.expert_success_rate)
    return result

"""Helpers every RL fine-tuning method shares (ReinFlow, RL-100, DSRL): start checkpoint, envs, eval, saving.

- `load_start(path)`: the imitation checkpoint to fine-tune (policy, normalizer, config, meta), with a clear
  error for a missing or non-generative one.
- `chunk_env_fn(task, spec)` / `make_chunk_envs(...)`: chunk-level vector envs (robopolicy/rl/rollout.py)
  built from a resolved task config dict (configs/task/*.yaml: env, env_kwargs, max_episode_steps).
- `ObsBatcher`: raw observation histories (numpy, from the envs) -> normalized policy tensors, and
  normalized chunks -> raw executed actions (the same conversions as PolicyAgent, reused from it).
- `evaluate_success(policy, normalizer, task, ...)`: the eval runner (robopolicy.eval.runner.evaluate) on
  fixed seeds with the deterministic sampler, as `robopolicy eval checkpoint=...` would score it.
- `save_finetuned(dir, policy, start, extra_meta)`: an imitation-format checkpoint (train/checkpoint.py),
  loadable by `robopolicy.load`, `robopolicy eval` and the runtime unchanged.
- `LearningCurves` (rl/curves.py): tensorboard + metrics.jsonl + curves.png (success vs env steps / wall).
- `set_seed`, `finetune_summary`: seeding and the summary dict every `finetune(...)` returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopolicy.data.normalizer import NormalizerSet
from robopolicy.policies.base import GenerativePolicy, Policy, PolicySpec
from robopolicy.policies.flow import FlowPolicy
from robopolicy.policy_agent import PolicyAgent
from robopolicy.rl.curves import LearningCurves, plot_curves
from robopolicy.rl.rollout import ChunkEnvFn, ChunkVectorEnv
from robopolicy.train import checkpoint as ckpt

__all__ = ["LearningCurves", "ObsBatcher", "chunk_env_fn", "evaluate_success", "finetune_summary", "load_start",
           "make_chunk_envs", "plot_curves", "save_finetuned", "set_seed", "task_max_steps"]

EVAL_SEED = 100000  # the eval runner's default first seed; training rollouts use other seeds


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def bare_head(policy: Policy) -> Iterator[Policy]:
    """Within: a flow head without its chain noise (ReinFlow's noise net, RL-100's fixed stds), so that its
    weights are exactly an imitation head's (for saving and loading checkpoints); the noise is put back after."""
    if not isinstance(policy, FlowPolicy):
        yield policy
        return
    step_std = policy.step_std
    policy.set_step_std(None)
    try:
        yield policy
    finally:
        policy.set_step_std(step_std)


def begin_run(checkpoint: str | Path, out_dir: str | Path, seed: int, num_threads: int
              ) -> tuple[Path, ckpt.LoadedCheckpoint]:
    """What every finetune(...) does first: torch threads, seeds, out_dir created, the start checkpoint loaded."""
    torch.set_num_threads(num_threads)
    set_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir, load_start(checkpoint)


def open_resume(path: str | Path, state_file: str, algo: str, kept_elsewhere: str
                ) -> tuple[ckpt.LoadedCheckpoint, dict[str, Any]]:
    """The checkpoint at `algo.resume_from=path` and its `state_file` (our own torch.save: RNG states inside).
    Raises with the fix when `path` holds no state (`kept_elsewhere` says which directories keep only weights)
    or was written by another algo."""
    path = Path(path)
    if not (path / state_file).is_file():
        raise ValueError(f"algo.resume_from={path} holds no {state_file}: give the last/ directory of an earlier "
                         f"`robopolicy finetune algo={algo}` run ({kept_elsewhere})")
    try:
        saved = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        raise ValueError(f"algo.resume_from={path}: {e}") from None
    written_by = (saved.meta.get("finetune") or {}).get("algo")
    if written_by != algo:
        raise ValueError(f"algo.resume_from={path} was written by algo={written_by}, not {algo}: resume it with "
                         f"algo={written_by}")
    return saved, torch.load(path / state_file, map_location="cpu", weights_only=False)


def load_start(path: str | Path, device: str = "cpu") -> ckpt.LoadedCheckpoint:
    """The imitation checkpoint to fine-tune; raises with the fix when it is missing or not generative."""
    try:
        loaded = ckpt.load_checkpoint(path, device=device)
    except ckpt.CheckpointError as e:
        raise ValueError(f"cannot fine-tune from checkpoint={path}: {e}. Train one first with "
                         "`robopolicy train task=... policy=flow_cpu` and pass its best/ or last/ directory") from e
    if not isinstance(loaded.policy, GenerativePolicy):
        raise ValueError(f"checkpoint {path} holds a {type(loaded.policy).__name__}, which has no denoising chain; "
                         "RL fine-tuning needs a diffusion or flow head")
    if loaded.policy.spec.language:
        # The chunk envs return arrays only, so the instruction never reaches the head during rollouts.
        raise ValueError(f"checkpoint {path} holds a language-conditioned head; RL fine-tuning runs single-task "
                         "envs that carry no instruction. Fine-tune a head trained without task.language")
    return loaded


def task_max_steps(task: dict[str, Any]) -> int:
    """The episode cap: the task config's max_episode_steps, else the sim registry's limit."""
    if task.get("max_episode_steps"):
        return int(task["max_episode_steps"])
    from sim.registry import get_task

    return int(get_task(task_env_name(task)).max_episode_steps)


def task_env_name(task: dict[str, Any]) -> str:
    name = task.get("env")
    if not name:
        raise ValueError(f"the task config {task.get('name', '?')!r} names no sim env (`env:`); RL fine-tuning "
                         "needs a simulated task to roll out in")
    return str(name)


def task_label(task: dict[str, Any]) -> str:
    """The sim task for plot titles: `metaworld_push`, not the config family `metaworld`."""
    return str(task.get("env") or task.get("name") or "?")


def task_from_config(name: str, env: str | None = None, root: str | Path = "configs/task") -> dict[str, Any]:
    """The task dict of `configs/task/<name>.yaml` for scripts outside hydra, with `env` overriding its sim task."""
    import yaml

    path = Path(root) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"task {name!r}: no {path}; choose one of {sorted(p.stem for p in Path(root).glob('*.yaml'))}"
                         " (and an env for the sim task, e.g. metaworld + metaworld_reach)")
    task = yaml.safe_load(path.read_text())
    if env:
        task["env"] = env
    return task


def chunk_env_fn(task: dict[str, Any], spec: PolicySpec) -> ChunkEnvFn:
    """The picklable worker factory of chunk-level envs for `task` and a policy with `spec`.

    Optional `task.reward_scale` and `task.reward_offset` (e.g. `+task.reward_offset=-1` on the command line):
    every env step pays reward_scale * r + reward_offset during fine-tuning."""
    scale = task.get("reward_scale")
    return ChunkEnvFn(task_env_name(task), dict(task.get("env_kwargs") or {}), int(spec.n_obs_steps),
                      int(spec.n_action_steps), task_max_steps(task), float(task.get("reward_offset") or 0.0),
                      1.0 if scale is None else float(scale))


def make_chunk_envs(task: dict[str, Any], spec: PolicySpec, n_envs: int, context: str = "spawn",
                    in_process: bool = False) -> ChunkVectorEnv:
    """`n_envs` chunk-level envs in worker processes (in-process when `in_process`)."""
    return ChunkVectorEnv(chunk_env_fn(task, spec), n_envs, context=context, in_process=in_process)


class ObsBatcher:
    """Raw env observations <-> the policy's normalized tensors, with the checkpoint's normalizer."""

    def __init__(self, policy: Policy, normalizer: NormalizerSet, action_key: str = "action"):
        self.agent = PolicyAgent(policy, normalizer, action_key=action_key)
        policy.train()  # PolicyAgent switches to eval mode; fine-tuning keeps training mode
        self.spec = policy.spec
        self.normalizer = normalizer
        self.action_key = action_key

    def obs(self, raw: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """{key: (B, T_o, ...)} raw -> normalized tensors."""
        return self.agent.prepare_obs(raw)

    def executed_actions(self, chunk: torch.Tensor) -> np.ndarray:
        """Normalized (B, T_p, A) chunk -> the raw (B, T_a, A) actions executed from the current step."""
        raw = self.normalizer.unnormalize(self.action_key, chunk.detach().float())
        start = self.spec.n_obs_steps - 1
        return raw[:, start:start + self.spec.n_action_steps].cpu().numpy().astype(np.float32)


def evaluate_success(policy: Policy, normalizer: NormalizerSet, task: dict[str, Any], n_episodes: int = 20,
                     seed: int = EVAL_SEED, n_workers: int = 1, action_key: str = "action") -> dict[str, Any]:
    """Success of the deterministic sampler over seeds seed..seed+n-1 (the eval runner; no video).

    Returns the runner's summary (success_rate, success_ci95, score_mean, ...). The policy is left in
    training mode afterwards.
    """
    from robopolicy.eval.runner import evaluate

    was_training = policy.training
    agent = PolicyAgent(policy, normalizer, action_key=action_key,
                        env_kwargs=dict(task.get("env_kwargs") or {}), seed=seed)
    try:
        result = evaluate(agent, task_env_name(task), n_episodes=n_episodes, seed=seed, n_workers=n_workers,
                          max_episode_steps=task.get("max_episode_steps"), videos_per_outcome=0, progress=False)
    finally:
        policy.train(was_training)
    return dict(result.summary)


def save_finetuned(directory: str | Path, policy: Policy, start: ckpt.LoadedCheckpoint,
                   extra_meta: dict[str, Any], extra_config: dict[str, Any] | None = None,
                   extra_files: Callable[[Path], None] | None = None) -> Path:
    """Write `policy` as an imitation-format checkpoint (atomic), keeping the start's config and spec.

    The saved weights must fit `make_policy(config.policy)`: a method that attaches extra modules to the
    policy (ReinFlow's noise net) detaches them before calling this and saves them beside it with
    `extra_files(staging_dir)`, which writes into the checkpoint before it is committed.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.begin(directory)
    config = dict(start.config)
    if dataclasses.is_dataclass(getattr(policy, "cfg", None)):  # the sampler settings fine-tuning used (K, ...)
        config["policy"] = {**dict(config.get("policy") or {}), "config": dataclasses.asdict(policy.cfg)}
    if extra_config:
        config.update(extra_config)
    meta = {k: v for k, v in start.meta.items() if k not in ("format", "version", "created")}
    meta.update(extra_meta)
    meta["start_checkpoint"] = str(start.path)
    meta["git_revision"] = ckpt.git_revision()
    ckpt.write_model_files(tmp, policy, start.normalizer, config, meta)
    if extra_files is not None:
        extra_files(tmp)
    return ckpt.commit(directory)


def finetune_summary(*, algo: str, start_path: str | Path, before: dict[str, Any] | None,
                     after: dict[str, Any] | None, env_steps: int, wall_s: float, final_checkpoint: Path,
                     **extra: Any) -> dict[str, Any]:
    """The dict every `finetune(...)` returns (and writes as summary.json)."""
    def rate(s: dict[str, Any] | None) -> float | None:
        return None if s is None else float(s["success_rate"])

    return {"algo": algo, "start_checkpoint": str(start_path), "success_before": rate(before),
            "success_after": rate(after), "eval_before": before, "eval_after": after, "env_steps": int(env_steps),
            "wall_s": float(wall_s), "final_checkpoint": str(final_checkpoint),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}

"""What the trainer measures besides the training loss: validation loss, sim success, and for language heads
how much the instruction changes the prediction.

Both run inside `isolated_rng`, so they never move the training RNG stream: a run with frequent
evaluations draws the same training noise as one without, and a resumed run reproduces the original.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from robopolicy.data.normalizer import NormalizerSet
from robopolicy.policies.base import Policy
from robopolicy.train.config import TaskConfig, TrainerConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with torch/numpy/python RNGs seeded to `seed`, restoring the outer states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def normalize_batch(batch: dict[str, Any], normalizer: NormalizerSet, action_key: str) -> dict[str, Any]:
    """Raw dataset batch -> what `Policy.compute_loss` takes (images [0, 1], low-dim in [-1, 1])."""
    return {"obs": normalizer.normalize(batch["obs"]), "action": normalizer[action_key](batch["action"])}


@torch.no_grad()
def validation_loss(policy: Policy, loader: DataLoader, normalizer: NormalizerSet, action_key: str,
                    device: torch.device, max_batches: int, seed: int) -> float:
    """Mean 'loss' over up to `max_batches` val batches (0: all), with fixed noise draws (`seed`)."""
    was_training = policy.training
    policy.eval()
    total, n = 0.0, 0
    with isolated_rng(seed):
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            batch = _to_device(batch, device)
            out = policy.compute_loss(normalize_batch(batch, normalizer, action_key))
            total += float(out["loss"].detach().float().mean())
            n += 1
    policy.train(was_training)
    return total / max(n, 1)


@torch.no_grad()
def instruction_gap(policy: Policy, loader: DataLoader, normalizer: NormalizerSet, action_key: str,
                    device: torch.device, max_batches: int, seed: int) -> float | None:
    """How far the instruction moves a language head's prediction: mean |chunk(own) - chunk(another)| in
    normalized action units, each val row re-asked with the next distinct instruction of its batch and the
    same noise. Near 0: the head ignores the words. None when no val batch holds two distinct instructions."""
    was_training = policy.training
    policy.eval()
    total, n = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        obs = normalize_batch(_to_device(batch, device), normalizer, action_key)["obs"]
        texts = [str(t) for t in obs["language"]]
        distinct = sorted(set(texts))
        if len(distinct) < 2:
            continue
        other = [distinct[(distinct.index(t) + 1) % len(distinct)] for t in texts]
        with isolated_rng(seed + i):
            own = policy.predict_chunk(obs)
        with isolated_rng(seed + i):
            swapped = policy.predict_chunk({**obs, "language": other})
        total += float((own - swapped).abs().mean())
        n += 1
    policy.train(was_training)
    return total / n if n else None


def sim_evaluation(policy: Policy, normalizer: NormalizerSet, task: TaskConfig, cfg: TrainerConfig,
                   device: torch.device, out_dir: Path | None) -> dict[str, float]:
    """Success of `policy` (the EMA weights) on `cfg.eval_episodes` seeds of the task's sim env."""
    from robopolicy.eval import evaluate
    from robopolicy.streaming_agent import make_agent

    # make_agent: a streaming head is evaluated with its streaming sampler, as it will be deployed
    agent = make_agent(policy, normalizer, device=device, action_key=task.action_key,
                       env_kwargs=dict(task.env_kwargs), seed=cfg.eval_seed)
    was_training = policy.training
    with isolated_rng(cfg.eval_seed):
        result = evaluate(agent, task.env, n_episodes=cfg.eval_episodes, seed=cfg.eval_seed,
                          n_workers=cfg.eval_workers, max_episode_steps=task.max_episode_steps,
                          videos_per_outcome=cfg.eval_videos, out_dir=None, progress=False)
    policy.train(was_training)
    if out_dir is not None:
        from robopolicy.eval.report import write_report

        try:  # the numbers are in hand: a failing plot or video must not end hours of training
            write_report(result, out_dir)
        except Exception as e:
            log.warning("could not write the evaluation report into %s: %s: %s", out_dir, type(e).__name__, e)
    s = result.summary
    return {"eval/success_rate": float(s["success_rate"]), "eval/score_mean": float(s["score_mean"]),
            "eval/latency_ms_median": float(s["latency_ms_median"]), "eval/wall_s": float(s["wall_s"])}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch

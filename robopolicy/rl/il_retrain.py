"""RL-100's imitation re-training between offline iterations: grow the data, re-fit the policy by imitation.

RL-100's Algorithm 1 merges every iteration's rollouts into the dataset and re-trains the imitation policy
on the merged set before the next PPO step; the paper calls this crucial for stability, since it turns what
the rollouts found into the policy itself rather than leaving it to a one-step critic. Here:

- `SuccessfulChunks` keeps, for every collection episode that ended in success, the normalized observation
  and the whole sampled chunk (T_p steps, as the policy produced it) at each control step. Failed episodes are
  dropped: with a sparse success reward, imitating them would copy the failures (our choice; the official code
  re-trains on its whole buffer, which on the real robot is mostly human-corrected successes).
- `DemoBatches` draws normalized batches from the demos the start checkpoint was trained on (its own task
  config: the same store and `max_train_episodes`), so re-training does not forget them.
- `retrain_imitation` runs the head's own imitation loss on half demo, half successful-rollout batches.

The policy is warm-started (re-trained from its current weights, not from scratch as the paper does): on a
CPU budget that is the difference between minutes and an hour per iteration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from robopolicy.policies.base import GenerativePolicy


class SuccessfulChunks:
    """(obs, sampled chunk) pairs of the collection episodes that succeeded, tracked per env."""

    def __init__(self, n_envs: int):
        self._pending: list[list[tuple[dict[str, torch.Tensor], torch.Tensor]]] = [[] for _ in range(n_envs)]
        self.obs: list[dict[str, torch.Tensor]] = []
        self.chunks: list[torch.Tensor] = []
        self.episodes = 0

    def __len__(self) -> int:
        return len(self.chunks)

    def drop_pending(self) -> None:
        """Forget the episodes in progress (the envs were reset: they will never end)."""
        self._pending = [[] for _ in self._pending]

    def add(self, obs: dict[str, torch.Tensor], chunks: torch.Tensor, done: np.ndarray,
            success: np.ndarray) -> None:
        """One vector step: `obs` and `chunks` (B, T_p, A) as sampled, then the step's done and success flags."""
        for i in range(len(self._pending)):
            self._pending[i].append(({k: v[i:i + 1] for k, v in obs.items()}, chunks[i:i + 1].detach()))
            if done[i]:
                if success[i]:
                    self.episodes += 1
                    for o, c in self._pending[i]:
                        self.obs.append(o)
                        self.chunks.append(c)
                self._pending[i] = []

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        idx = torch.randint(0, len(self.chunks), (batch_size,), generator=generator).tolist()
        return {"obs": {k: torch.cat([self.obs[j][k] for j in idx]) for k in self.obs[0]},
                "action": torch.cat([self.chunks[j] for j in idx])}


class DemoBatches:
    """Endless normalized batches from the start checkpoint's own training demos (its task's store and split);
    raises with the fix when the checkpoint's config names no store."""

    def __init__(self, start: Any, batch_size: int, seed: int):
        from robopolicy.policies.registry import build_config
        from robopolicy.train.config import TaskConfig
        from robopolicy.train.data import make_datasets, make_loader, open_store
        from robopolicy.train.evaluation import normalize_batch

        task_dict = dict((start.config or {}).get("task") or {})
        if not task_dict.get("store"):
            raise ValueError("the start checkpoint's config names no task.store, so its demos cannot be mixed "
                             "into RL-100's imitation re-training; set algo.il_demo_fraction=0")
        task = build_config(TaskConfig, task_dict, where="the start checkpoint's task")
        train, _ = make_datasets(task, open_store(task))
        self.loader = make_loader(train, batch_size, seed, num_workers=0, shuffle=True, drop_last=True)
        self._normalize = lambda batch: normalize_batch(batch, start.normalizer, task.action_key)
        self._it: Iterator[Any] = iter(self.loader)

    def next(self) -> dict[str, Any]:
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            batch = next(self._it)
        return self._normalize(batch)


def retrain_imitation(policy: GenerativePolicy, rollouts: SuccessfulChunks, demos: DemoBatches | None,
                      steps: int, lr: float, batch_size: int, demo_fraction: float,
                      ema: float = 0.0) -> dict[str, float]:
    """`steps` AdamW steps of the head's imitation loss on demo and successful-rollout batches; with `ema` > 0
    the policy ends as the EMA of its weights over those steps (imitation checkpoints are EMA weights too, and
    the raw weights of a short fine-tune are noticeably worse).

    Each step's batch is `demo_fraction` demos and the rest rollouts (only demos, as many as the demo loader
    gives, when no rollout succeeded yet).
    """
    if steps <= 0 or (len(rollouts) == 0 and demos is None):
        return {"il/steps": 0.0}
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-6)
    if demos is None:
        n_demo = 0
    elif len(rollouts) == 0:  # nothing succeeded yet: a demo batch alone
        n_demo = batch_size
    else:
        n_demo = round(batch_size * demo_fraction)
    n_roll = batch_size - n_demo
    was_training = policy.training
    policy.train()
    shadow = [p.detach().clone() for p in params] if ema > 0 else None
    losses = []
    for _ in range(steps):
        parts = []
        if n_demo:
            b = demos.next()  # type: ignore[union-attr]
            parts.append(({k: v[:n_demo] for k, v in b["obs"].items()}, b["action"][:n_demo]))
        if n_roll:
            b = rollouts.sample(n_roll)
            parts.append((b["obs"], b["action"]))
        obs = {k: torch.cat([p[0][k] for p in parts]) for k in parts[0][0]}
        loss = policy.compute_loss({"obs": obs, "action": torch.cat([p[1] for p in parts])})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if shadow is not None:
            torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - ema)
        losses.append(float(loss.detach()))
    if shadow is not None:
        with torch.no_grad():
            for p, e in zip(params, shadow, strict=True):
                p.copy_(e)
    policy.train(was_training)
    return {"il/steps": float(steps), "il/loss_first": losses[0], "il/loss_last": float(np.mean(losses[-20:])),
            "il/rollout_chunks": float(len(rollouts)), "il/rollout_episodes": float(rollouts.episodes)}

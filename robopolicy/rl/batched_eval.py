"""Success of a policy over seeded episodes, run in one process in blocks of episodes at once.

The eval runner (robopolicy/eval) calls the policy per worker and per episode; on a 2-core CPU, stepping all
episodes in one in-process vector env with one batched policy call per chunk is ~3x cheaper. DSRL's in-run
evaluations, the GPC weight search and scripts/noise_headroom.py use it. Its noise comes from a seeded
generator, so two policies evaluated with the same seeds see the same initial noises (paired comparisons). A policy
that is not a GenerativePolicy (DSRL's steered head) gets no noise and acts as `robopolicy eval` and deployment run
it: the steered head with its actor's mean noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robopolicy.policies.base import GenerativePolicy
from robopolicy.rl import common


def success_in_process(policy: Any, normalizer: Any, task: dict, seed: int, n_episodes: int,
                       noise_seed: int = 0, action_key: str = "action", max_batch: int | None = None) -> dict[str, Any]:
    """Success over episodes with seeds seed .. seed + n - 1 (the eval runner's seeds), in blocks of up to
    `max_batch` episodes run at once (None: all at once); a block's initial noises come from a generator seeded
    with `noise_seed` (the first block) or `noise_seed` + its first episode's index (the others). Every env lives
    for its block: robosuite's take ~130 MB each. Returns success_rate, successes, length_mean."""
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    block = max_batch or max(n_episodes, 1)
    success, length = np.zeros(n_episodes, bool), np.zeros(n_episodes, int)
    for start in range(0, n_episodes, block):
        n = min(block, n_episodes - start)
        success[start:start + n], length[start:start + n] = _run_block(
            policy, normalizer, task, seed + start, n, noise_seed + start, action_key)
    return {"success_rate": float(success.mean()), "n_episodes": n_episodes, "seed": seed,
            "successes": success.tolist(), "length_mean": float(length.mean())}


def _run_block(policy: Any, normalizer: Any, task: dict, seed: int, n_episodes: int, noise_seed: int,
               action_key: str) -> tuple[np.ndarray, np.ndarray]:
    envs = common.make_chunk_envs(task, policy.spec, n_episodes, in_process=True)
    batcher = common.ObsBatcher(policy, normalizer, action_key)
    policy.eval()
    gen = torch.Generator().manual_seed(noise_seed)
    done, success, length = np.zeros(n_episodes, bool), np.zeros(n_episodes, bool), np.zeros(n_episodes, int)
    try:
        raw = envs.reset(seed)
        while not done.all():
            noise = torch.randn(n_episodes, policy.spec.horizon, policy.spec.action_dim, generator=gen)
            if not isinstance(policy, GenerativePolicy):  # as PolicyAgent does: a DSRL-steered policy acts with
                noise = None                              # its actor's mean, as deployed, not a sample of it
            with torch.no_grad():
                chunk = policy.predict_chunk(batcher.obs(raw), noise)
            raw, _, _, _, info = envs.envs.step(batcher.executed_actions(chunk))
            ended = np.asarray(info["done"], bool) & ~done
            if ended.any():  # the episode_* keys are present only on steps where some episode ended
                success[ended] = np.asarray(info["episode_success"], bool)[ended]
                length[ended] = np.asarray(info["episode_length"])[ended]
            done |= ended
    finally:
        envs.close()
    return success, length

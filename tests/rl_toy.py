"""Shared toy for the RL tests: a one-step 2-D bandit over a bimodal flow policy (ALGORITHMS.md tier 1).

The policy is pre-trained by flow matching on two trajectory modes (+x and -x); the bandit rewards the
+x mode. Actions are the policy's normalized chunk (identity normalization), executed as one chunk.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from robopolicy.nn import unet_preset
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.flow import FlowPolicy
from robopolicy.rl.rollout import ChunkEnv, ChunkVectorEnv

# Two modes of a 4-step 2-D trajectory: straight to +x or to -x.
TEMPLATES = torch.tensor([[0.8, 0.0], [-0.8, 0.0]])[:, None, :] * (torch.arange(1, 5) / 4)[None, :, None]
SPEC = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=1, horizon=4, n_action_steps=4)


class Bandit(gym.Env):
    """Four env steps per episode (one chunk); reward 1/4 per step whose x is positive (mode A)."""

    observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (2,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"state": (0.1 * self.np_random.standard_normal(2)).astype(np.float32)}, {}

    def step(self, action):
        self.t += 1
        good = bool(action[0] > 0)
        return {"state": np.zeros(2, np.float32)}, float(good) / 4, False, self.t >= 4, {"success": good}


class QuickSuccess(Bandit):
    """Half the episodes succeed after 1 step; the rest time out after `fail_after` (as PushT's failures run
    to 300): right after a reset only successes can have finished."""

    def __init__(self, fail_after: int = 6):
        self.fail_after = fail_after

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.wins = bool(self.np_random.random() < 0.5)
        return obs, info

    def step(self, action):
        self.t += 1
        return {"state": np.zeros(2, np.float32)}, 0.0, self.wins, self.t >= self.fail_after, {"success": self.wins}


def bandit_env() -> ChunkEnv:
    return ChunkEnv(Bandit(), SPEC.n_obs_steps, SPEC.n_action_steps, 4)


def bandit_envs(n: int) -> ChunkVectorEnv:
    return ChunkVectorEnv(bandit_env, n, in_process=True)


class IdentityBatcher:
    """Raw obs -> tensors; normalized chunk -> executed actions (the toy needs no normalizer)."""

    def obs(self, raw):
        return {"state": torch.as_tensor(raw["state"]).float()}

    def executed_actions(self, chunk):
        return chunk[:, : SPEC.n_action_steps].detach().numpy()


def pretrained_bimodal_flow(steps: int = 200, k: int = 4, seed: int = 0) -> FlowPolicy:
    """A small flow head trained on both modes with equal weight."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    p = FlowPolicy(SPEC, FlowPolicy.Config(unet=unet_preset("tiny", down_dims=[32]), num_inference_steps=k))
    opt = torch.optim.AdamW(p.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        mode = torch.randint(0, 2, (128,), generator=g)
        batch = {"obs": {"state": 0.1 * torch.randn(128, 1, 2, generator=g)},
                 "action": TEMPLATES[mode] + 0.05 * torch.randn(128, 4, 2, generator=g)}
        loss = p.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return p


def mode_stats(policy: FlowPolicy, n: int = 400) -> tuple[float, float]:
    """(mass of the rewarded mode, fraction of chunks within 0.15 RMS of a mode) of the mean-path sampler."""
    with torch.no_grad():
        obs = {"state": 0.1 * torch.randn(n, 1, 2, generator=torch.Generator().manual_seed(1))}
        chunks = policy.predict_chunk(obs, torch.randn(n, 4, 2, generator=torch.Generator().manual_seed(2)))
    rms = ((chunks[:, None] - TEMPLATES[None]) ** 2).mean((-1, -2)).sqrt()
    dist, mode = rms.min(1)
    return float((mode == 0).float().mean()), float((dist < 0.15).float().mean())

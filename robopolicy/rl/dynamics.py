"""Learned chunk-level dynamics for RL-100's OPE gate (ALGORITHMS.md section 8, stage 2, steps 2 and 4).

RL-100 scores each PPO candidate by rolling a learned dynamics ensemble (7 models, 5 elites, 4 x 400 MLPs) from
dataset states and reading the critic along the imagined rollouts. Here one transition is one executed chunk, as
everywhere in the offline stage: the model maps (flattened normalized observation history s, executed normalized
actions a) to a Gaussian over the change of s and the chunk's summed reward, plus a termination probability.

The estimate per start state is the H-step model return bootstrapped with the critic,

    v(s_0) = sum_{h<H} gamma^h m_h r_h + gamma^H m_H Q(s_H, pi(s_H)),   m_0 = 1, m_{h+1} = m_h (1 - p_done_h),

with every a_h = pi(s_h) the candidate's mean-path chunk from fixed noise and s_{h+1}, r_h, p_done_h the mean of
the elites' predictions, so candidates are compared on the same imagined starts without sampling noise. With
H = 0 it is the one-step AM-Q on dataset states, Q(s, pi(s)). The bootstrapped return rather than Uni-O4's sum
of Q along the rollout: a sum of Q over the steps after a predicted success would charge a policy for finishing
early.

Written here rather than taken from a library: the maintained model-based RL libraries (mbrl-lib) are archived and
expect gym transitions of single actions; this is the ensemble of MBPO / RL-100 in ~150 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class DynamicsConfig:
    """The `algo.dynamics` block of configs/algo/rl100.yaml."""

    members: int = 7  # RL-100's ensemble: 7 models, the 5 with the lowest held-out error are used
    elites: int = 5
    hidden: tuple[int, ...] = (400, 400, 400, 400)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    steps: int = 1000  # gradient steps per offline iteration (each member sees its own bootstrap batch)
    batch_size: int = 256
    holdout_fraction: float = 0.1  # held-out transitions that rank the members

    def validate(self) -> None:
        if not 1 <= self.elites <= self.members:
            raise ValueError(f"need 1 <= dynamics.elites <= dynamics.members, got {self.elites} of {self.members}")
        if self.steps < 1 or self.batch_size < 1 or not self.hidden:
            raise ValueError("dynamics.steps, dynamics.batch_size and dynamics.hidden must be non-empty / >= 1")
        if not 0 < self.holdout_fraction < 0.5:
            raise ValueError(f"dynamics.holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class ChunkDynamics(nn.Module):
    """Ensemble of Gaussian models of (delta s, r) given (s, a), with a termination logit per member."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: DynamicsConfig | None = None):
        super().__init__()
        self.cfg = cfg or DynamicsConfig()
        self.cfg.validate()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        e, out = self.cfg.members, obs_dim + 1  # delta s and reward
        dims = [obs_dim + act_dim, *self.cfg.hidden]
        self.layers = nn.ModuleList(EnsembleLinear(e, i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))
        self.head = EnsembleLinear(e, dims[-1], 2 * out + 1)  # mean, log-variance, termination logit
        # MBPO's soft bounds on the log-variance, learned with the model
        self.max_logvar = nn.Parameter(torch.full((1, 1, out), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out), -10.0))
        for name in ("in_mean", "in_std", "out_mean", "out_std"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("elite_idx", torch.arange(self.cfg.elites))
        self.opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _raw(self, s: torch.Tensor, a: torch.Tensor, members: torch.Tensor | None = None):
        """(mean, logvar, done logit) in standardized target units; input (B, .) or (E, B, .)."""
        x = (torch.cat([s, a], -1) - self.in_mean) / self.in_std
        if x.dim() == 2:
            x = x.expand(self.cfg.members, *x.shape)
        for layer in self.layers:
            x = F.silu(layer(x))
        out = self.head(x)
        k = self.obs_dim + 1
        mean, logvar, done = out[..., :k], out[..., k:2 * k], out[..., -1]
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        if members is not None:
            mean, logvar, done = mean[members], logvar[members], done[members]
        return mean, logvar, done

    def fit(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor, done: torch.Tensor,
            seed: int = 0) -> dict[str, float]:
        """Train every member on its own bootstrap batches, then keep the `elites` with the lowest held-out MSE.
        The next state of a finished transition is the next episode's first (autoreset): its change is not
        learned, only its reward and termination."""
        n = s.shape[0]
        if n < 10:
            raise ValueError(f"the dynamics model needs at least 10 transitions, got {n}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        n_hold = max(1, int(n * self.cfg.holdout_fraction))
        hold, train = perm[:n_hold], perm[n_hold:]
        target = torch.cat([s2 - s, r[:, None]], -1)
        with torch.no_grad():  # standardize with the training split's statistics
            x = torch.cat([s, a], -1)[train]
            self.in_mean, self.in_std = x.mean(0), x.std(0).clamp_min(1e-6)
            live = train[done[train] < 0.5]
            delta = target[live, :-1] if live.numel() > 1 else target[train, :-1]
            rew = target[train, -1:]
            self.out_mean = torch.cat([delta.mean(0), rew.mean(0)])
            self.out_std = torch.cat([delta.std(0), rew.std(0)]).clamp_min(1e-6)
        y = (target - self.out_mean) / self.out_std
        e = self.cfg.members
        logs: dict[str, float] = {}
        for _ in range(self.cfg.steps):
            idx = train[torch.randint(0, train.numel(), (e, min(self.cfg.batch_size, train.numel())), generator=g)]
            mean, logvar, logit = self._raw(s[idx], a[idx])
            nll = self._nll(mean, logvar, y[idx], done[idx])
            bce = F.binary_cross_entropy_with_logits(logit, done[idx], reduction="none").mean(1)
            loss = (nll + bce).sum() + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            logs = {"dynamics/nll": float(nll.mean().detach()), "dynamics/done_bce": float(bce.mean().detach())}
        with torch.no_grad():
            mean, _, logit = self._raw(s[hold], a[hold])
            mse = self._nll(mean, torch.zeros_like(mean), y[hold].expand_as(mean), done[hold].expand(e, -1))
            self.elite_idx = torch.argsort(mse)[:self.cfg.elites]
            done_acc = ((logit[self.elite_idx] > 0).float() == done[hold]).float().mean()
        logs.update({"dynamics/holdout_mse": float(mse[self.elite_idx].mean()),
                     "dynamics/holdout_done_acc": float(done_acc)})
        return logs

    @staticmethod
    def _nll(mean: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL per member (E,), averaged over targets: the reward of every transition, the change of s
        only of those that did not end (after an end, s' is the next episode's reset state)."""
        err = ((mean - y) ** 2) * torch.exp(-logvar) + logvar
        live = (1.0 - done)[..., None]
        n = y.shape[-1]
        state = (err[..., :-1] * live).sum((1, 2)) / live.sum((1, 2)).clamp_min(1.0)
        return (state + err[..., -1].mean(1)) / n

    @torch.no_grad()
    def predict(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean over the elites: next s (B, obs_dim), reward (B,), probability that the chunk ends the episode (B,)."""
        mean, _, logit = self._raw(s, a, self.elite_idx)
        out = mean.mean(0) * self.out_std + self.out_mean
        return s + out[:, :-1], out[:, -1], torch.sigmoid(logit).mean(0)


class ObsLayout:
    """Flat critic features <-> the policy's observation dict (rl100.flat_obs's order: sorted low-dim keys,
    each flattened). Keys that are not flattened (language) are carried through unchanged."""

    def __init__(self, obs: dict[str, torch.Tensor], flat_keys: list[str]):
        self.keys = flat_keys
        self.shapes = {k: tuple(obs[k].shape[1:]) for k in flat_keys}
        self.sizes = [math.prod(self.shapes[k]) for k in flat_keys]

    def unflatten(self, x: torch.Tensor, carried: dict[str, Any]) -> dict[str, Any]:
        parts = torch.split(x, self.sizes, -1)
        out = {k: p.reshape(x.shape[0], *self.shapes[k]) for k, p in zip(self.keys, parts, strict=True)}
        return {**carried, **out}

"""IQL critics on chunk-level transitions (RL-100's offline stage, ALGORITHMS.md section 8).

Q(s, a) (double, with Polyak targets) and V(s) are fitted without querying the policy:
    L_V = E[ |tau - 1(u < 0)| u^2 ],  u = min_j Q_target_j(s, a) - V(s)     (expectile tau = 0.7)
    L_Q = E[ (r + gamma (1 - done) V(s') - Q_j(s, a))^2 ]
s is the flattened normalized observation history, a the executed part of the normalized chunk (T_a x A),
r the summed reward of the chunk and gamma the per-chunk discount.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.Mish()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """E[|tau - 1(diff < 0)| diff^2]: tau > 0.5 weights under-estimates of the upper expectile more."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.pow(2)).mean()


@dataclass
class IQLConfig:
    hidden: tuple[int, ...] = (256, 256)
    expectile: float = 0.7
    gamma: float = 0.99
    polyak: float = 0.005
    lr: float = 3e-4


class IQLCritics(nn.Module):
    """Double Q(s, a) with targets and V(s) on flat feature vectors."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig | None = None):
        super().__init__()
        self.cfg = cfg or IQLConfig()
        if not 0 < self.cfg.expectile < 1:
            raise ValueError(f"expectile must be in (0, 1), got {self.cfg.expectile}")
        self.q1 = mlp(obs_dim + act_dim, self.cfg.hidden, 1)
        self.q2 = mlp(obs_dim + act_dim, self.cfg.hidden, 1)
        self.v = mlp(obs_dim, self.cfg.hidden, 1)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in (*self.q1_target.parameters(), *self.q2_target.parameters()):
            p.requires_grad_(False)
        self.opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters(), *self.v.parameters()],
                                    lr=self.cfg.lr)

    def q(self, s: torch.Tensor, a: torch.Tensor, target: bool = True) -> torch.Tensor:
        """min of the two (target) Q heads, (B,)."""
        sa = torch.cat([s, a], -1)
        q1, q2 = (self.q1_target, self.q2_target) if target else (self.q1, self.q2)
        return torch.minimum(q1(sa), q2(sa)).squeeze(-1)

    def value(self, s: torch.Tensor) -> torch.Tensor:
        return self.v(s).squeeze(-1)

    def advantage(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.q(s, a) - self.value(s)

    def update(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor,
               done: torch.Tensor) -> dict[str, float]:
        """One gradient step on V and both Q heads, then the Polyak target update."""
        with torch.no_grad():
            q_t = self.q(s, a)
            target = r + self.cfg.gamma * (1.0 - done) * self.value(s2)
        v_loss = expectile_loss(q_t - self.value(s), self.cfg.expectile)
        sa = torch.cat([s, a], -1)
        q_loss = 0.5 * ((self.q1(sa).squeeze(-1) - target).pow(2).mean() + (self.q2(sa).squeeze(-1) - target).pow(2).mean())
        self.opt.zero_grad(set_to_none=True)
        (v_loss + q_loss).backward()
        self.opt.step()
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, pt in zip(net.parameters(), tgt.parameters(), strict=True):
                    pt.lerp_(p, self.cfg.polyak)
        return {"iql/v_loss": float(v_loss.detach()), "iql/q_loss": float(q_loss.detach())}


def monte_carlo_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted returns of recorded chunks, (T, n_envs) each in time order: (G, complete), where `complete` marks
    the chunks whose episode ended inside the record (the others' returns are cut short)."""
    g, run = torch.zeros_like(rewards, dtype=torch.float32), torch.zeros(rewards.shape[1])
    complete, ended = torch.zeros_like(g, dtype=torch.bool), torch.zeros(rewards.shape[1], dtype=torch.bool)
    for t in range(rewards.shape[0] - 1, -1, -1):
        run = rewards[t].float() + gamma * (1.0 - dones[t].float()) * run
        ended = ended | (dones[t] > 0.5)
        g[t], complete[t] = run, ended
    return g, complete

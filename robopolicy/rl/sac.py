"""Soft actor-critic pieces for DSRL (ALGORITHMS.md section 7): twin critics, a replay buffer, the
auto-tuned temperature and the losses, in the latent-noise space of a frozen base head.

The actor is `robopolicy.policies.steered.NoiseActor` (it ships inside the deployed checkpoint); the
critics here are training-only. Every network input is a flat vector: frozen observation features
(`steered.base_features`) concatenated with a noise vector w (DSRL-SAC, Q^W) or an executed normalized
action chunk a (DSRL-NA's Q^A).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robopolicy.nn import MLP


class TwinCritic(nn.Module):
    """`n` independent Q(x, u) MLPs (LayerNorm, as DSRL's official nets); `forward` -> (n, B)."""

    def __init__(self, x_dim: int, u_dim: int, hidden: Sequence[int], n: int = 2, layer_norm: bool = True,
                 activation: str = "mish"):
        super().__init__()
        self.qs = nn.ModuleList([MLP(x_dim + u_dim, list(hidden), 1, layer_norm=layer_norm, activation=activation)
                                 for _ in range(n)])

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        xu = torch.cat([x, u], -1)
        return torch.stack([q(xu).squeeze(-1) for q in self.qs])


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a deep copy that takes no gradients."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


class Temperature(nn.Module):
    """SAC's entropy coefficient alpha = exp(log_alpha), tuned towards `target_entropy`."""

    def __init__(self, init: float, target_entropy: float):
        super().__init__()
        if init <= 0:
            raise ValueError(f"the initial temperature must be > 0, got {init}")
        self.log_alpha = nn.Parameter(torch.tensor(float(init)).log())
        self.target_entropy = float(target_entropy)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """-log_alpha * (log pi + target): raises alpha when the entropy is below the target."""
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()


def critic_loss(critic: TwinCritic, x: torch.Tensor, u: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 sum_j (Q_j(x, u) - y)^2, averaged over the batch; `target` (B,) or (n, B) (one target per critic)."""
    q = critic(x, u)
    return 0.5 * ((q - target.detach()) ** 2).sum(0).mean()


def soft_target(q_next: torch.Tensor, log_prob_next: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
                gamma: float, alpha: torch.Tensor) -> torch.Tensor:
    """y = r + gamma (1 - d) (min_j Q_targ_j(s', u') - alpha log pi(w' | s')), (B,)."""
    return reward + gamma * (1.0 - done) * (q_next.min(0).values - alpha * log_prob_next)


class ReplayBuffer:
    """A ring buffer of flat float32 tensors (one per field) plus dict-valued observation fields."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.data: dict[str, Any] = {}
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def _alloc(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype)

    def add(self, batch: dict[str, Any]) -> None:
        """Append a batch: values are tensors (B, ...) or dicts of such tensors (observations)."""
        n = _batch_len(batch)
        if n > self.capacity:
            raise ValueError(f"a batch of {n} does not fit a replay of capacity {self.capacity}")
        idx = (torch.arange(n) + self.pos) % self.capacity
        for key, value in batch.items():
            if isinstance(value, dict):
                store = self.data.setdefault(key, {})
                for k, v in value.items():
                    if k not in store:
                        store[k] = self._alloc(k, v)
                    store[k][idx] = v.detach().cpu()
            else:
                if key not in self.data:
                    self.data[key] = self._alloc(key, value)
                self.data[key][idx] = value.detach().cpu()
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def state_dict(self) -> dict[str, Any]:
        """The filled rows and the ring position (copies: a slice would save the whole preallocated storage)."""
        def head(v: torch.Tensor) -> torch.Tensor:
            return v[: self.size].clone()

        return {"capacity": self.capacity, "size": self.size, "pos": self.pos,
                "data": {k: ({kk: head(vv) for kk, vv in v.items()} if isinstance(v, dict) else head(v))
                         for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s rows into this (empty or not) buffer of the same capacity."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"the saved replay has capacity {state['capacity']}, this one {self.capacity}: "
                             "keep the replay size of the run being resumed")

        def full(v: torch.Tensor) -> torch.Tensor:
            out = self._alloc("", v)
            out[: v.shape[0]] = v
            return out

        self.data = {k: ({kk: full(vv) for kk, vv in v.items()} if isinstance(v, dict) else full(v))
                     for k, v in state["data"].items()}
        self.size, self.pos = int(state["size"]), int(state["pos"])

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        return {k: ({kk: vv[idx] for kk, vv in v.items()} if isinstance(v, dict) else v[idx])
                for k, v in self.data.items()}


def _batch_len(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, dict):
            return int(next(iter(value.values())).shape[0])
        return int(value.shape[0])
    raise ValueError("empty batch")

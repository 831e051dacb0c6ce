"""The Policy interface every head implements (DESIGN.md, "The policy interface").

Policies are stateless `nn.Module`s: the observation history and the action queue live in the caller
(the eval runner, the runtime). Everything here works on *normalized* tensors; `robopolicy.agent`-level
wrappers turn raw observations into normalized ones and predicted chunks back into raw actions with the
NormalizerSet that travels in every checkpoint.

Shapes (B = batch, T_o = n_obs_steps, T_p = horizon, A = action_dim):
- obs: dict key -> (B, T_o, *per-step shape); images float in [0, 1] as (B, T_o, 3, H, W); optional
  "language": list[str] of length B.
- predict_chunk -> (B, T_p, A); index T_o - 1 is the current step, the caller executes [T_o-1, T_o-1+T_a).
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class PolicySpec:
    """What a policy consumes and produces; checked against datasets, envs and robots before use."""

    obs_shapes: dict[str, tuple[int, ...]]  # per-step shapes, images as (3, H, W)
    action_dim: int
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    language: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["obs_shapes"] = {k: list(v) for k, v in self.obs_shapes.items()}
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> PolicySpec:
        d = dict(d)
        d["obs_shapes"] = {k: tuple(v) for k, v in d["obs_shapes"].items()}
        return PolicySpec(**d)


@dataclass
class Chain:
    """One sampled denoising chain, as RL fine-tuning needs it (DPPO / ReinFlow / RL-100 / DSRL).

    xs[:, 0] is the initial noise and xs[:, -1] the final (normalized) action chunk; step k maps
    xs[:, k] -> xs[:, k+1] through a Gaussian N(means[:, k], stds[:, k]^2). For a deterministic sampler
    (DDIM eta=0, Euler) the stds are zero and the chain has no density, only the noise -> action map.
    """

    xs: torch.Tensor  # (B, K+1, T_p, A)
    means: torch.Tensor  # (B, K, T_p, A)
    stds: torch.Tensor  # (B, K, T_p, A), broadcastable
    timesteps: torch.Tensor  # (K,) the step index or time of each transition

    @property
    def actions(self) -> torch.Tensor:
        return self.xs[:, -1]

    @property
    def n_steps(self) -> int:
        return self.means.shape[1]


class Policy(nn.Module, abc.ABC):
    """A visuomotor policy head: observations in, an action chunk out."""

    spec: PolicySpec

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training loss on a normalized batch {"obs": {...}, "action": (B, T_p, A)}: 'loss' plus diagnostics."""

    @abc.abstractmethod
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized action chunk (B, T_p, A); deterministic given `noise` (B, T_p, A)."""

    @property
    @abc.abstractmethod
    def nfe(self) -> int:
        """Network evaluations per predicted chunk with the current inference settings."""


class GenerativePolicy(Policy):
    """A head that samples through a denoising chain (diffusion, flow): exposes the chain for RL."""

    @abc.abstractmethod
    def sample_chain(self, obs: dict[str, Any], noise: torch.Tensor | None = None, stochastic: bool = True) -> Chain:
        """Sample a chunk and return every intermediate x_k with its Gaussian step parameters."""

    @abc.abstractmethod
    def chain_log_prob(self, obs: dict[str, Any], chain: Chain) -> torch.Tensor:
        """Log-probability (B,) of the chain's transitions under the current parameters (summed over steps,
        horizon and action dims); differentiable, for PPO ratios."""

    def noise_shape(self, batch_size: int) -> tuple[int, int, int]:
        return (batch_size, self.spec.horizon, self.spec.action_dim)

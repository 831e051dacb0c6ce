"""The denoising-chain MDP (ALGORITHMS.md sections 0, 6, 10).

Outer MDP: the environment, one step per executed action chunk. Inner MDP: the K denoising steps that
produce that chunk, each a Gaussian transition x_k -> x_{k+1} ~ N(mean_theta(x_k, t_k, s), std_k^2). The
log-probability of an executed chain is the sum of its Gaussian step log-probs (the initial noise term is
constant in theta and left out). PPO treats every (env step, denoising step) pair as one sample: its
log-prob is that step's, its advantage the env step's (optionally discounted along the chain, DPPO).

The heads compute their own step log-probs (`step_log_probs(obs, chain)` in policies/flow.py and
policies/diffusion.py) by recomputing the means on the chain's stored time grid in one batched call.
`stored_step_log_probs` evaluates the same density from the means/stds recorded while sampling; the two
agree exactly only when rollout and recomputation use one time grid (ReinFlow pitfall 1), which is what
the "ratio = 1 before the first update" check measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from robopolicy.policies.base import Chain, GenerativePolicy


def step_log_probs(policy: GenerativePolicy, obs: dict[str, Any], chain: Chain, **kwargs: Any) -> torch.Tensor:
    """Per-step log-probs (B, K) of `chain` under the policy's current parameters (differentiable)."""
    fn = getattr(policy, "step_log_probs", None)
    if fn is None:
        raise TypeError(f"{type(policy).__name__} exposes no step_log_probs(obs, chain); RL fine-tuning needs a "
                        "head with a Gaussian denoising chain (diffusion, flow)")
    lp = fn(obs, chain, **kwargs)
    if lp.shape != (chain.xs.shape[0], chain.n_steps):
        raise ValueError(f"step_log_probs returned {tuple(lp.shape)}, expected (B, K) = "
                         f"{(chain.xs.shape[0], chain.n_steps)}")
    return lp


def chain_log_prob(policy: GenerativePolicy, obs: dict[str, Any], chain: Chain, **kwargs: Any) -> torch.Tensor:
    """log pi(x_1..x_K | x_0, s) = sum of the step log-probs, (B,)."""
    return step_log_probs(policy, obs, chain, **kwargs).sum(1)


def stored_step_log_probs(chain: Chain) -> torch.Tensor:
    """Per-step log-probs (B, K) from the means and stds recorded at sampling time (no network call).

    An independent implementation with torch.distributions (tests compare the heads against it). Steps
    whose stds are all zero are deterministic (the last DDIM step) and contribute 0, as in the heads; a
    chain with no stochastic step has no density and raises.
    """
    target = chain.xs[:, 1:]
    stds = torch.broadcast_to(chain.stds, target.shape).flatten(2)
    stochastic = (stds > 0).all(-1)
    if not bool(((stds == 0).all(-1) | stochastic).all()) or not bool(stochastic.any()):
        raise ValueError("the chain has zero stds (a deterministic sampler): it has no density; sample it with "
                         "stochastic=True and a positive step std")
    safe = torch.where(stds > 0, stds, torch.ones_like(stds))
    lp = torch.distributions.Normal(chain.means.flatten(2), safe).log_prob(target.flatten(2)).sum(-1)
    return torch.where(stochastic, lp, torch.zeros_like(lp))


def gaussian_entropy(stds: torch.Tensor) -> torch.Tensor:
    """Entropy of N(., diag std^2) per step, (B, K) for stds (B, K, ...): sum(log std) + d/2 log(2 pi e)."""
    flat = stds.flatten(2)
    return flat.log().sum(-1) + 0.5 * flat.shape[-1] * (1.0 + math.log(2.0 * math.pi))


def denoising_discounts(k: int, gamma_denoising: float, device: torch.device | None = None) -> torch.Tensor:
    """DPPO's advantage weights along the chain: gamma^(K-1-i) for step i (the final step gets 1), (K,)."""
    i = torch.arange(k, dtype=torch.float32, device=device)
    return gamma_denoising ** (k - 1 - i)


@dataclass
class ChainBatch:
    """Executed chains of a rollout, flattened over (iteration step, env): everything PPO needs."""

    obs: dict[str, torch.Tensor]  # normalized, (N, T_o, ...)
    chains: Chain  # xs (N, K+1, T_p, A), means, stds, timesteps (K,)
    old_step_log_probs: torch.Tensor  # (N, K)
    advantages: torch.Tensor  # (N,)
    returns: torch.Tensor  # (N,)
    old_values: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return int(self.advantages.shape[0])

    def select(self, idx: torch.Tensor) -> ChainBatch:
        """A minibatch of env steps (each with all of its K denoising steps)."""
        c = self.chains
        return ChainBatch(
            obs={k: v[idx] for k, v in self.obs.items()},
            chains=Chain(xs=c.xs[idx], means=c.means[idx], stds=torch.broadcast_to(c.stds, c.means.shape)[idx],
                         timesteps=c.timesteps),
            old_step_log_probs=self.old_step_log_probs[idx], advantages=self.advantages[idx],
            returns=self.returns[idx], old_values=self.old_values[idx])


def cat_chains(chains: list[Chain]) -> Chain:
    """Concatenate chains sampled on the same time grid along the batch."""
    ts = chains[0].timesteps
    for c in chains[1:]:
        if not torch.equal(c.timesteps, ts):
            raise ValueError("cannot concatenate chains sampled on different time grids")
    return Chain(xs=torch.cat([c.xs for c in chains]), means=torch.cat([c.means for c in chains]),
                 stds=torch.cat([torch.broadcast_to(c.stds, c.means.shape) for c in chains]), timesteps=ts)


def detach_chain(chain: Chain) -> Chain:
    return Chain(xs=chain.xs.detach(), means=chain.means.detach(), stds=chain.stds.detach(),
                 timesteps=chain.timesteps.detach())

"""The denoising-chain MDP (robopolicy/rl/chain.py): the log-prob of an executed chain is the sum of its
Gaussian step log-probs, the heads' recomputation matches an independent torch.distributions evaluation,
K = 1 is a Gaussian policy, and the batch bookkeeping PPO relies on."""

from __future__ import annotations

import math

import pytest
import torch

from robopolicy.nn import unet_preset
from robopolicy.policies.base import Chain, PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.flow import FlowPolicy
from robopolicy.rl.chain import (
    ChainBatch,
    cat_chains,
    chain_log_prob,
    denoising_discounts,
    gaussian_entropy,
    step_log_probs,
    stored_step_log_probs,
)
from robopolicy.rl.reinflow import ReinFlowConfig, attach_noise_net

torch.set_num_threads(1)
SPEC = PolicySpec(obs_shapes={"state": (3,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=2)


def _flow(k: int = 4, dtype=torch.float64) -> FlowPolicy:
    torch.manual_seed(0)
    p = FlowPolicy(SPEC, FlowPolicy.Config(unet=unet_preset("tiny", down_dims=[16, 32]), num_inference_steps=k))
    attach_noise_net(p, ReinFlowConfig(num_inference_steps=k, min_std=0.05, max_std=0.3))
    return p.to(dtype)


def _obs(b: int = 5, dtype=torch.float64) -> dict:
    return {"state": torch.randn(b, 2, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)}


def _manual_step_log_probs(p: FlowPolicy, obs: dict, chain: Chain) -> torch.Tensor:
    """Independent recomputation, one step at a time: mean = clip(x + v / K), std from the noise net."""
    cond = p.encode_obs(obs)
    k = chain.n_steps
    out = []
    for i in range(k):
        x = chain.xs[:, i]
        t = torch.full((x.shape[0],), i / k, dtype=x.dtype)
        mean = (x + p.velocity(x, t, cond) / k).clamp(-1, 1)
        std = p.step_std(x, t, cond, i)
        out.append(torch.distributions.Normal(mean, std).log_prob(chain.xs[:, i + 1]).flatten(1).sum(-1))
    return torch.stack(out, 1)


def test_flow_chain_log_prob_is_the_sum_of_gaussian_step_log_probs():
    p = _flow()
    obs = _obs()
    with torch.no_grad():
        chain = p.sample_chain(obs, torch.randn(5, 4, 2, dtype=torch.float64))
        steps = step_log_probs(p, obs, chain)
        manual = _manual_step_log_probs(p, obs, chain)
        stored = stored_step_log_probs(chain)
        total = chain_log_prob(p, obs, chain)
    assert steps.shape == (5, 4)
    assert torch.allclose(steps, manual, atol=1e-8, rtol=0)
    assert torch.allclose(steps, stored, atol=1e-8, rtol=0)  # rollout-time density == recomputation
    assert torch.allclose(total, manual.sum(1), atol=1e-8, rtol=0)
    assert torch.allclose(total, p.chain_log_prob(obs, chain), atol=1e-8, rtol=0)
    # with the initial noise term: + log N(x_0; 0, I)
    x0 = chain.xs[:, 0].flatten(1)
    full = p.chain_log_prob(obs, chain, include_initial=True)
    assert torch.allclose(full, total + torch.distributions.Normal(0.0, 1.0).log_prob(x0).sum(-1), atol=1e-8)


def test_k1_chain_is_a_gaussian_policy():
    """K = 1: one Gaussian step N(clip(x0 + v(x0, 0, s)), sigma^2) around the one-step Euler action."""
    p = _flow(k=1)
    obs = _obs(3)
    with torch.no_grad():
        noise = torch.randn(3, 4, 2, dtype=torch.float64)
        chain = p.sample_chain(obs, noise)
        cond = p.encode_obs(obs)
        mean = (noise + p.velocity(noise, torch.zeros(3, dtype=torch.float64), cond)).clamp(-1, 1)
        std = p.step_std(noise, torch.zeros(3, dtype=torch.float64), cond, 0)
        want = torch.distributions.Normal(mean, std).log_prob(chain.actions).flatten(1).sum(-1)
        assert torch.allclose(chain.means[:, 0], mean)
        assert torch.allclose(chain_log_prob(p, obs, chain), want, atol=1e-8)


def test_chain_log_prob_is_differentiable_in_velocity_and_noise_nets():
    p = _flow(dtype=torch.float32)
    obs = _obs(4, torch.float32)
    with torch.no_grad():
        chain = p.sample_chain(obs)
    chain_log_prob(p, obs, chain).sum().backward()
    vel_grads = [q.grad for n, q in p.named_parameters() if not n.startswith("step_std.")]
    noise_grads = [q.grad for q in p.step_std.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in vel_grads)
    assert all(g is not None for g in noise_grads) and sum(float(g.abs().sum()) for g in noise_grads) > 0


def test_ddpm_chain_log_prob_sums_its_stochastic_steps():
    torch.manual_seed(0)
    p = DiffusionPolicy(SPEC, DiffusionPolicy.Config(unet=unet_preset("tiny", down_dims=[16, 32]),
                                                     num_train_timesteps=20, num_inference_steps=20)).double()
    p.set_inference(scheduler="ddpm", num_inference_steps=20)
    obs = _obs(3)
    with torch.no_grad():
        chain = p.sample_chain(obs, torch.randn(3, 4, 2, dtype=torch.float64), min_std=0.1)
        steps = step_log_probs(p, obs, chain, min_std=0.1)
    assert torch.allclose(steps, stored_step_log_probs(chain), atol=1e-7)
    assert torch.allclose(chain_log_prob(p, obs, chain, min_std=0.1), steps.sum(1))


def test_stored_log_prob_refuses_a_deterministic_chain():
    p = _flow()
    with torch.no_grad():
        chain = p.sample_chain(_obs(2), stochastic=False)
    with pytest.raises(ValueError, match="no density"):
        stored_step_log_probs(chain)


def test_entropy_and_denoising_discounts():
    stds = torch.rand(3, 4, 5, 2) + 0.1
    want = torch.distributions.Normal(torch.zeros_like(stds), stds).entropy().flatten(2).sum(-1)
    assert torch.allclose(gaussian_entropy(stds), want, atol=1e-5)
    d = denoising_discounts(4, 0.9)
    assert torch.allclose(d, torch.tensor([0.9**3, 0.9**2, 0.9, 1.0]))
    assert torch.equal(denoising_discounts(3, 1.0), torch.ones(3))
    assert math.isclose(float(gaussian_entropy(torch.ones(1, 1, 1))[0, 0]), 0.5 * math.log(2 * math.pi * math.e),
                        rel_tol=1e-6)


def test_cat_and_select_keep_every_denoising_step_of_an_env_step():
    p = _flow()
    obs = _obs(6)
    with torch.no_grad():
        a, b = p.sample_chain({"state": obs["state"][:3]}), p.sample_chain({"state": obs["state"][3:]})
    both = cat_chains([a, b])
    assert both.xs.shape == (6, 5, 4, 2) and torch.equal(both.xs[3:], b.xs)
    batch = ChainBatch(obs=obs, chains=both, old_step_log_probs=stored_step_log_probs(both),
                       advantages=torch.arange(6.0), returns=torch.zeros(6), old_values=torch.zeros(6))
    mb = batch.select(torch.tensor([4, 1]))
    assert len(mb) == 2 and torch.equal(mb.chains.xs[0], both.xs[4]) and torch.equal(mb.advantages, torch.tensor([4.0, 1.0]))
    assert torch.allclose(stored_step_log_probs(mb.chains), batch.old_step_log_probs[[4, 1]])
    shifted = Chain(b.xs, b.means, b.stds, b.timesteps + 0.01)
    with pytest.raises(ValueError, match="time grids"):
        cat_chains([a, shifted])

"""DiffusionPolicy: scheduler identities, chunk indexing, overfitting, determinism, the denoising chain,
and the 2-D multimodal toy (the head learns both modes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from robopolicy.data import EpisodeStore
from robopolicy.data.dataset import SequenceConfig, SequenceDataset
from robopolicy.nn import unet_preset
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.obs_conditioning import ObsEncoderConfig, executed_slice

torch.set_num_threads(1)


def _small_policy(horizon: int = 8, state_dim: int = 3, action_dim: int = 2, **cfg) -> DiffusionPolicy:
    spec = PolicySpec(obs_shapes={"state": (state_dim,)}, action_dim=action_dim, n_obs_steps=2, horizon=horizon,
                      n_action_steps=4)
    unet = cfg.pop("unet", unet_preset("tiny"))
    return DiffusionPolicy(spec, DiffusionPolicy.Config(unet=unet, **cfg))


def _train(policy, batch_fn, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    losses = []
    policy.train()
    for _ in range(steps):
        loss = policy.compute_loss(batch_fn())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    policy.eval()
    return losses


# ---------------------------------------------------------------------------- scheduler identities
def _cosine_alpha_bar(k: np.ndarray, n: int = 100) -> np.ndarray:
    """Nichol-Dhariwal cosine schedule, written independently of diffusers (float64, beta capped at 0.999)."""
    f = lambda s: np.cos((s / n + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    betas = np.minimum(1 - f(np.arange(1, n + 1)) / f(np.arange(n)), 0.999)
    return np.cumprod(1 - betas)[k]


def test_ddpm_posterior_identity():
    """Forward to step t with eps, one reverse step given the true eps: the mean is the closed-form posterior
    mean mu~(x0, x_t) and mean + std * z equals DDPMScheduler.step with the same z (ALGORITHMS.md 1, test 1)."""
    torch.manual_seed(0)
    p = _small_policy()
    x0 = torch.rand(4, 8, 2, dtype=torch.float64) * 1.8 - 0.9  # inside [-1, 1]: clip_sample is inactive
    eps = torch.randn_like(x0)
    ref = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    ref.set_timesteps(100)
    for t in (99, 50, 7, 1, 0):
        xt = p.train_scheduler.add_noise(x0, eps, torch.full((4,), t))
        mean, std = p._transition(eps, t, xt)
        a_t, a_prev = _cosine_alpha_bar(t), (_cosine_alpha_bar(t - 1) if t > 0 else 1.0)
        beta = 1 - a_t / a_prev
        mu = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * xt
        assert torch.allclose(mean, mu, atol=1e-5), t
        assert float(std) ** 2 == pytest.approx((1 - a_prev) / (1 - a_t) * beta if t > 0 else 0.0, abs=1e-6)
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        step = ref.step(eps, t, xt, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.allclose(step, mean + std * z, atol=1e-6), t


def test_ddim_step_mean_and_std():
    torch.manual_seed(0)
    p = _small_policy()
    p.set_inference(scheduler="ddim", num_inference_steps=8, eta=1.0)
    assert p._timesteps().tolist() == [84, 72, 60, 48, 36, 24, 12, 0]
    x0 = torch.rand(2, 8, 2, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn_like(x0)
    t, prev = 60, 48
    xt = p.train_scheduler.add_noise(x0, eps, torch.full((2,), t))
    mean, std = p._transition(eps, t, xt)
    a_t, a_prev = _cosine_alpha_bar(t), _cosine_alpha_bar(prev)
    sigma = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    assert float(std) == pytest.approx(sigma, rel=1e-5)
    assert torch.allclose(mean, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps, atol=1e-5)


def test_set_inference_validates():
    p = _small_policy()
    with pytest.raises(ValueError, match="scheduler"):
        p.set_inference(scheduler="euler")
    with pytest.raises(ValueError, match="num_inference_steps"):
        p.set_inference(num_inference_steps=0)
    p.set_inference(scheduler="ddim", num_inference_steps=8)
    assert p.nfe == 8 and p.cfg.scheduler == "ddim"
    p.set_inference(scheduler="ddpm", num_inference_steps=100)
    assert p.nfe == 100


# ---------------------------------------------------------------------------- overfit + chunk indexing
T_O, T_P, T_A = 2, 8, 4


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A policy overfit to one batch of 8 dataset windows (T_o=2) from a synthetic store."""
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    store = EpisodeStore.create(path, fps=10)
    for ep in range(2):
        t = np.arange(12)
        store.add_episode({
            "timestamp": t / 10.0,
            # state encodes (step, episode) so the test can find the frame of every observation
            "state": np.stack([t / 11.0, np.full(12, ep, dtype=float)], 1).astype(np.float32),
            "action": np.stack([np.sin(t / 3.0 + ep), 0.5 * np.cos(t / 4.0) + 0.2 * ep], 1).astype(np.float32),
        })
    ds = SequenceDataset(store, SequenceConfig(obs_keys=["state"], n_obs_steps=T_O, horizon=T_P, n_action_steps=T_A,
                                               val_ratio=0.0))
    idx = np.linspace(0, len(ds) - 1, 8).astype(int)
    items = [ds[int(i)] for i in idx]
    raw = {"state": torch.stack([it["obs"]["state"] for it in items]), "action": torch.stack([it["action"] for it in items])}
    norm = ds.get_normalizer()
    batch = {"obs": {"state": norm["state"](raw["state"])}, "action": norm["action"](raw["action"])}
    torch.manual_seed(0)
    p = _small_policy(horizon=T_P, state_dim=2, unet=unet_preset("tiny", down_dims=[32]))
    big = {"obs": {"state": batch["obs"]["state"].repeat(8, 1, 1)}, "action": batch["action"].repeat(8, 1, 1)}
    losses = _train(p, lambda: big, steps=600)
    return {"store": store, "raw": raw, "batch": batch, "policy": p, "losses": losses, "norm": norm}


def test_chunk_indexing_dataset_window(overfit):
    """Index T_o-1 of a window's action chunk is the action taken at the last observed frame."""
    store, raw = overfit["store"], overfit["raw"]
    for state, action in zip(raw["state"], raw["action"], strict=True):
        step, ep = round(float(state[T_O - 1, 0]) * 11), round(float(state[T_O - 1, 1]))
        expected = store.get_episode(ep)["action"][step]
        assert np.allclose(action[T_O - 1].numpy(), expected)


def test_overfit_one_batch(overfit):
    p, batch = overfit["policy"], overfit["batch"]
    assert np.mean(overfit["losses"][-50:]) < min(0.02, 0.05 * np.mean(overfit["losses"][:10]))
    target = batch["action"]
    for kw in (dict(scheduler="ddpm", num_inference_steps=100), dict(scheduler="ddim", num_inference_steps=8)):
        p.set_inference(**kw)
        pred = p.predict_chunk(batch["obs"], torch.randn(target.shape, generator=torch.Generator().manual_seed(1)))
        assert ((pred - target) ** 2).mean() < 1e-2, kw
        # the executed first action (index T_o-1) is the demo's action at the last observed frame
        now = executed_slice(p.spec).start
        assert ((pred[:, now] - target[:, T_O - 1]) ** 2).mean() < 1e-2, kw
    p.set_inference(scheduler="ddpm", num_inference_steps=100)


def test_determinism_given_noise(overfit):
    p, obs = overfit["policy"], overfit["batch"]["obs"]
    noise = torch.randn(8, T_P, 2, generator=torch.Generator().manual_seed(3))
    for kw in (dict(scheduler="ddpm", num_inference_steps=100), dict(scheduler="ddim", num_inference_steps=8, eta=0.0),
               dict(scheduler="ddim", num_inference_steps=8, eta=1.0)):
        p.set_inference(**kw)
        a, b = p.predict_chunk(obs, noise), p.predict_chunk(obs, noise.clone())
        assert torch.equal(a, b), kw
        # a row's chunk depends only on its own noise, not on the rest of the batch
        single = p.predict_chunk({"state": obs["state"][2:3]}, noise[2:3])
        assert torch.allclose(single, a[2:3], atol=1e-5), kw
    p.set_inference(scheduler="ddpm", num_inference_steps=100, eta=0.0)
    with pytest.raises(ValueError, match="noise must have shape"):
        p.predict_chunk(obs, torch.randn(8, T_P + 1, 2))


# ---------------------------------------------------------------------------- the chain
@pytest.mark.parametrize("kw", [dict(scheduler="ddpm", num_inference_steps=10),
                                dict(scheduler="ddim", num_inference_steps=5, eta=1.0)])
def test_chain_log_prob_is_sum_of_gaussian_steps(kw):
    torch.manual_seed(0)
    p = _small_policy(obs=ObsEncoderConfig(state_encoder="mlp", state_hidden=[16], state_feature_dim=8)).double()
    p.set_inference(**kw)
    obs = {"state": torch.randn(3, 2, 3, dtype=torch.float64)}
    noise = torch.randn(3, 8, 2, dtype=torch.float64)
    chain = p.sample_chain(obs, noise)
    k = p.nfe
    assert chain.xs.shape == (3, k + 1, 8, 2) and chain.means.shape == (3, k, 8, 2)
    assert torch.equal(chain.xs[:, 0], noise)
    # independent computation from the stored transitions (steps with std 0 carry no density)
    expected = torch.zeros(3, dtype=torch.float64)
    for i in range(k):
        std = chain.stds[:, i]
        if (std > 0).all():
            expected += torch.distributions.Normal(chain.means[:, i], std).log_prob(chain.xs[:, i + 1]).sum((1, 2))
        else:
            assert (std == 0).all() and torch.equal(chain.xs[:, i + 1], chain.means[:, i])
    lp = p.chain_log_prob(obs, chain)
    assert torch.allclose(lp, expected, atol=1e-6)  # recomputed means == stored means (PPO ratio 1)
    lp.sum().backward()
    grads = [q.grad for q in p.model.parameters()] + [q.grad for q in p.obs_encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # the per-step noises can be given explicitly
    z = torch.randn(3, k, 8, 2, dtype=torch.float64)
    with torch.no_grad():
        chain2 = p.sample_chain(obs, noise, step_noise=z)
    assert torch.allclose(chain2.xs[:, 1], chain2.means[:, 0] + chain2.stds[:, 0] * z[:, 0])


def test_deterministic_chains():
    torch.manual_seed(0)
    p = _small_policy()
    obs = {"state": torch.randn(2, 2, 3)}
    p.set_inference(scheduler="ddim", num_inference_steps=8, eta=0.0)
    chain = p.sample_chain(obs, torch.randn(2, 8, 2))
    assert (chain.stds == 0).all()
    with pytest.raises(ValueError, match="deterministic"):
        p.chain_log_prob(obs, chain)
    # DPPO's lower bound on the std makes every step stochastic
    assert torch.isfinite(p.chain_log_prob(obs, chain, min_std=0.1)).all()
    p.set_inference(scheduler="ddpm", num_inference_steps=10)
    chain = p.sample_chain(obs, torch.randn(2, 8, 2), stochastic=False)
    assert (chain.stds == 0).all() and torch.equal(chain.xs[:, 1:], chain.means)


# ---------------------------------------------------------------------------- multimodal toy
# Two equally likely action chunks for the same (uninformative) observation: straight lines from the origin
# to (+0.8, 0) or (-0.8, 0) over 4 steps, plus N(0, 0.05^2) noise. A regressor predicts their mean (~0).
TOY_TEMPLATES = torch.tensor([[0.8, 0.0], [-0.8, 0.0]])[:, None, :] * (torch.arange(1, 5) / 4)[None, :, None]


def toy_batch(b: int, gen: torch.Generator) -> dict:
    mode = torch.randint(0, 2, (b,), generator=gen)
    action = TOY_TEMPLATES[mode] + 0.05 * torch.randn(b, 4, 2, generator=gen)
    return {"obs": {"state": 0.1 * torch.randn(b, 2, 2, generator=gen)}, "action": action}


TOY_ON_MODE_RMS = 0.05 * math.sqrt(26.124 / 8)  # chi2.ppf(0.999, 8 dof): holds 99.9 % of a mode's own samples


def toy_mode_stats(chunks: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-mode mass (nearest template by RMS) and the fraction of chunks inside their mode's 99.9 % region."""
    rms = ((chunks[:, None] - TOY_TEMPLATES[None]) ** 2).mean((-1, -2)).sqrt()
    dist, mode = rms.min(1)
    return torch.bincount(mode, minlength=2).float() / len(chunks), float((dist < TOY_ON_MODE_RMS).float().mean())


def test_diffusion_learns_both_modes_of_a_2d_toy():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    p = _small_policy(horizon=4, state_dim=2, unet=unet_preset("tiny", down_dims=[32]))
    _train(p, lambda: toy_batch(128, gen), steps=300)
    obs = toy_batch(400, torch.Generator().manual_seed(1))["obs"]
    noise = torch.randn(400, 4, 2, generator=torch.Generator().manual_seed(2))
    # Seed 0 measured: DDPM-100 on-mode 0.985, DDIM-8 0.82 (few deterministic steps blur a small net more).
    for kw, min_on_mode in ((dict(scheduler="ddpm", num_inference_steps=100), 0.9),
                            (dict(scheduler="ddim", num_inference_steps=8), 0.7)):
        p.set_inference(**kw)  # same weights, sampler chosen at inference
        mass, on_mode = toy_mode_stats(p.predict_chunk(obs, noise))
        assert ((mass - 0.5).abs() < 0.1).all(), (kw, mass)  # each mode within 10 points of its true 50 %
        assert on_mode > min_on_mode, (kw, on_mode)  # samples sit on the modes, not between them

"""MeanFlowPolicy (MP1): the jvp tangent order against finite differences, the (t, r) sampling, the loss's
special cases, the dispersive loss, the deterministic chain, and the 2-mode toy (one NFE covers both modes,
an MSE regressor collapses to their mean)."""

from __future__ import annotations

import pytest
import torch
from test_policy_diffusion import TOY_TEMPLATES, _train, toy_batch, toy_mode_stats

from robopolicy.nn import MLP, unet_preset
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.meanflow import MeanFlowPolicy, dispersive_loss

torch.set_num_threads(1)


def _mf(horizon: int = 8, state_dim: int = 3, **cfg) -> MeanFlowPolicy:
    spec = PolicySpec(obs_shapes={"state": (state_dim,)}, action_dim=2, n_obs_steps=2, horizon=horizon, n_action_steps=4)
    unet = cfg.pop("unet", unet_preset("tiny"))
    return MeanFlowPolicy(spec, MeanFlowPolicy.Config(unet=unet, **cfg))


# ---------------------------------------------------------------------------- the MeanFlow identity
def test_jvp_tangent_order_matches_finite_differences():
    """u_tgt = v_hat - (t - r) d/dt u with d/dt u the derivative along (z, t, r) + h (v_hat, 1, 0) (r fixed);
    checked against a central finite difference in float64 (ALGORITHMS.md 3, test 1 and pitfall 4)."""
    torch.manual_seed(0)
    p = _mf().double()
    b = 3
    cond = p.encode_obs({"state": torch.randn(b, 2, 3, dtype=torch.float64)})
    z = torch.randn(b, 8, 2, dtype=torch.float64)
    v_hat = torch.randn_like(z)
    t = torch.tensor([0.9, 0.6, 0.35], dtype=torch.float64)
    r = torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)
    u, u_tgt, _ = p.meanflow_target(z, t, r, v_hat, cond)
    assert torch.allclose(u, p.average_velocity(z, t, r, cond), atol=1e-12)  # the primal output is u(z, r, t)
    h = 1e-5
    with torch.no_grad():
        def along(dz, dt, dr, s):
            return p.average_velocity(z + s * dz, t + s * dt, r + s * dr, cond)

        ones, zeros = torch.ones_like(t), torch.zeros_like(t)
        fd = (along(v_hat, ones, zeros, h) - along(v_hat, ones, zeros, -h)) / (2 * h)
        fd_swapped = (along(v_hat, zeros, ones, h) - along(v_hat, zeros, ones, -h)) / (2 * h)  # tangent on r
    dudt = (v_hat - u_tgt) / (t - r)[:, None, None]
    rel = (dudt - fd).norm() / fd.norm()
    assert rel < 1e-4, float(rel)
    # the test can tell the orders apart: moving r instead of t gives a different derivative
    assert (dudt - fd_swapped).norm() / fd.norm() > 1e-2


def test_r_equal_t_reduces_to_flow_matching():
    """With r = t the target is v_hat itself, and with w = 1, p = 0 and no dispersive term the loss is the
    flow-matching MSE ||u(z, t, t) - (e - x)||^2 (ALGORITHMS.md 3, test 4)."""
    torch.manual_seed(0)
    p = _mf(flow_ratio=1.0, cfg_scale=1.0, adaptive_p=0.0, dispersive_weight=0.0).double()
    batch = {"obs": {"state": torch.randn(6, 2, 3, dtype=torch.float64)},
             "action": torch.rand(6, 8, 2, dtype=torch.float64) * 2 - 1}
    torch.manual_seed(5)
    loss = p.compute_loss(batch)["loss"]
    torch.manual_seed(5)
    x = batch["action"]
    e = torch.randn_like(x)
    t, r = p.sample_times(6, x)
    assert torch.equal(t, r)
    z = (1 - t[:, None, None]) * x + t[:, None, None] * e
    u = p.average_velocity(z, t, t, p.encode_obs(batch["obs"]))
    assert torch.allclose(loss, ((u - (e - x)) ** 2).mean(), atol=1e-10)


def test_time_sampling_follows_mp1():
    torch.manual_seed(0)
    p = _mf()
    t, r = p.sample_times(1000, torch.zeros(1))
    assert ((t >= r) & (t > 0) & (t < 1) & (r > 0)).all()
    assert int((t == r).sum()) == 500  # flow_ratio 0.5 of the batch has r = t exactly
    # logit-normal(-0.4, 1): the median of one draw is sigmoid(-0.4) ~ 0.40; t is the max of two draws
    assert 0.45 < float(t.median()) < 0.6


def test_adaptive_weight_and_dispersive_term_in_loss():
    torch.manual_seed(0)
    p = _mf(unet=unet_preset("tiny"))  # two levels: one dispersive feature map
    out = p.compute_loss({"obs": {"state": torch.randn(16, 2, 3)}, "action": torch.rand(16, 8, 2) * 2 - 1})
    assert {"loss", "mse", "loss_meanflow", "loss_dispersive"} <= set(out)
    assert torch.allclose(out["loss"], out["loss_meanflow"] + 0.5 * out["loss_dispersive"])
    # adaptive weight 1/sqrt(delta^2 + c) with p = 0.5: the weighted loss is below the plain mean of delta^2
    assert out["loss_meanflow"] < out["mse"]
    out["loss"].backward()
    assert all(q.grad is not None for q in p.parameters())


def test_dispersive_loss():
    """Lower for spread-out features; a batch of one gives 0 with zero gradient (ALGORITHMS.md 3, test 5)."""
    torch.manual_seed(0)
    spread = torch.randn(8, 16) * 3
    clustered = spread * 0.0 + torch.randn(1, 16) + 0.01 * torch.randn(8, 16)
    clustered[0] += 2.0  # one outlier so max(D) does not rescale the cluster's distances up
    assert dispersive_loss(spread) < dispersive_loss(clustered)
    one = torch.randn(1, 16, requires_grad=True)
    val = dispersive_loss(one)
    val.backward()
    assert val.item() == pytest.approx(0.0, abs=1e-7) and torch.equal(one.grad, torch.zeros_like(one))


# ---------------------------------------------------------------------------- sampling and the chain
def test_one_step_sampler_chain_and_determinism():
    torch.manual_seed(0)
    p = _mf()
    obs = {"state": torch.randn(3, 2, 3)}
    noise = torch.randn(3, 8, 2)
    cond = p.encode_obs(obs)
    assert p.nfe == 1
    with torch.no_grad():
        one = noise - p.average_velocity(noise, torch.ones(3), torch.zeros(3), cond)  # x = z_1 - u(z_1, 0, 1)
    assert torch.allclose(p.predict_chunk(obs, noise), one, atol=1e-6)
    assert torch.equal(p.predict_chunk(obs, noise), p.predict_chunk(obs, noise.clone()))
    assert torch.allclose(p.predict_chunk({"state": obs["state"][1:2]}, noise[1:2]), one[1:2], atol=1e-5)
    for k in (1, 3):
        p.set_inference(num_inference_steps=k)
        chain = p.sample_chain(obs, noise)
        assert chain.xs.shape == (3, k + 1, 8, 2) and (chain.stds == 0).all()
        assert torch.allclose(chain.timesteps, 1 - torch.arange(k) / k)
        assert torch.equal(chain.xs[:, 1:], chain.means)
        with pytest.raises(ValueError, match="deterministic"):
            p.chain_log_prob(obs, chain)
    with pytest.raises(ValueError, match="num_inference_steps"):
        p.set_inference(num_inference_steps=0)
    with pytest.raises(ValueError, match="noise must have shape"):
        p.predict_chunk(obs, torch.randn(3, 9, 2))


def test_min_std_chain_log_prob():
    torch.manual_seed(0)
    p = _mf(num_inference_steps=2).double()
    obs = {"state": torch.randn(3, 2, 3, dtype=torch.float64)}
    noise = torch.randn(3, 8, 2, dtype=torch.float64)
    with torch.no_grad():
        chain = p.sample_chain(obs, noise, min_std=0.1)
    assert (chain.stds == 0.1).all() and not torch.equal(chain.xs[:, 1], chain.means[:, 0])
    expected = sum(torch.distributions.Normal(chain.means[:, i], 0.1).log_prob(chain.xs[:, i + 1]).sum((1, 2))
                   for i in range(2))
    lp = p.chain_log_prob(obs, chain, min_std=0.1)
    assert torch.allclose(lp, expected, atol=1e-8)  # PPO ratio 1 right after sampling
    lp.sum().backward()
    assert sum(q.grad.abs().sum() for q in p.model.parameters()) > 0


# ---------------------------------------------------------------------------- multimodal toy
def _regressor_on_mode(gen: torch.Generator, test: dict) -> tuple[float, torch.Tensor]:
    reg = MLP(4, [64, 64], 8)
    opt = torch.optim.Adam(reg.parameters(), lr=3e-3)
    for _ in range(300):
        b = toy_batch(128, gen)
        loss = ((reg(b["obs"]["state"].flatten(1)).view(-1, 4, 2) - b["action"]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = reg(test["obs"]["state"].flatten(1)).view(-1, 4, 2)
    return toy_mode_stats(pred)[1], pred


def _toy_run(steps: int) -> tuple[MeanFlowPolicy, list[float], dict, torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    p = _mf(horizon=4, state_dim=2, unet=unet_preset("tiny", down_dims=[32]))
    losses = _train(p, lambda: toy_batch(128, gen), steps=steps)
    test = toy_batch(400, torch.Generator().manual_seed(1))
    noise = torch.randn(400, 4, 2, generator=torch.Generator().manual_seed(2))
    return p, losses, test, noise, gen


def test_meanflow_one_step_covers_both_modes_and_regression_collapses():
    # Seed 0, 300 steps of batch 128 (~20 s on one CPU thread): 1 NFE on-mode 0.69, K=2 0.97, K=4 0.98;
    # mode masses 0.53 / 0.47. 600 steps (the slow test): 1 NFE 0.84.
    p, losses, test, noise, gen = _toy_run(300)
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:10]) / 10
    for k, min_on_mode in ((1, 0.6), (2, 0.9)):
        p.set_inference(num_inference_steps=k)
        mass, on_mode = toy_mode_stats(p.predict_chunk(test["obs"], noise))
        assert ((mass - 0.5).abs() < 0.1).all(), (k, mass)
        assert on_mode > min_on_mode, (k, on_mode)
    reg_on_mode, pred = _regressor_on_mode(gen, test)
    assert reg_on_mode < 0.05 and pred.abs().max() < 0.5 * TOY_TEMPLATES.abs().max()


@pytest.mark.slow
def test_meanflow_one_step_longer_training():
    p, _, test, noise, _ = _toy_run(600)
    mass, on_mode = toy_mode_stats(p.predict_chunk(test["obs"], noise))
    assert ((mass - 0.5).abs() < 0.05).all(), mass  # within 5 points of the true 50 %
    assert on_mode > 0.8, on_mode  # measured 0.84 (seed 0); ALGORITHMS.md's 90 % is not reached at this budget
    # The key contrast (ALGORITHMS.md 3, test 3): one Euler step of a plain rectified flow trained on the same
    # toy lands between the modes (measured on-mode 0.00 after 300 steps; K = 4 gives 0.87).
    from test_policy_flow import _flow

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rf = _flow(horizon=4, state_dim=2, unet=unet_preset("tiny", down_dims=[32]), num_inference_steps=1)
    _train(rf, lambda: toy_batch(128, gen), steps=300)
    _, rf_on_mode = toy_mode_stats(rf.predict_chunk(test["obs"], noise))
    assert rf_on_mode < 0.2 and on_mode > rf_on_mode + 0.5, (rf_on_mode, on_mode)


def test_registry_builds_meanflow_and_validates():
    from robopolicy.policies.registry import PolicyConfigError, make_policy

    spec = _mf().spec
    p = make_policy("meanflow", spec, {"unet": {"down_dims": [32, 64], "diffusion_step_embed_dim": 32},
                                       "num_inference_steps": 2})
    assert isinstance(p, MeanFlowPolicy) and p.nfe == 2
    with pytest.raises(PolicyConfigError, match="flow_ratio"):
        make_policy("meanflow", spec, {"unet": {"down_dims": [32, 64]}, "flow_ratio": 1.5})

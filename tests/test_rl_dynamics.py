"""RL-100's OPE dynamics (robopolicy/rl/dynamics.py) and the model-based gate estimate (rl100.ope_values): the
ensemble learns a known chunk system with terminations and ranks its members, the estimate is the H-chunk return
bootstrapped with Q, and the gated offline stage on the toy bandit still moves mass to the rewarded mode with it."""

from __future__ import annotations

import pytest
import torch
from rl_toy import IdentityBatcher, bandit_envs, mode_stats, pretrained_bimodal_flow

from robopolicy.rl.dynamics import ChunkDynamics, DynamicsConfig, ObsLayout
from robopolicy.rl.iql import IQLConfig, IQLCritics
from robopolicy.rl.rl100 import (
    RL100Config,
    Transitions,
    collect_episodes,
    executed,
    fit_critics,
    fit_dynamics,
    flat_obs,
    make_stochastic,
    offline_improve,
    ope_start_states,
    ope_values,
)

torch.set_num_threads(1)
SMALL = DynamicsConfig(members=3, elites=2, hidden=(64, 64), steps=600, batch_size=128, lr=3e-3)


def linear_system(n: int, seed: int = 0):
    """s' = s + B a, reward = s'[0], done when s'[0] > 1 (then s' is an unrelated reset state)."""
    g = torch.Generator().manual_seed(seed)
    s, a = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    b = torch.tensor([[0.5, 0.0, 0.2], [0.0, -0.3, 0.4]])
    nxt = s + a @ b
    done = (nxt[:, 0] > 1.0).float()
    reward = nxt[:, 0]
    nxt = torch.where(done[:, None] > 0, torch.randn(n, 3, generator=g), nxt)  # autoreset: the next episode's
    return s, a, reward, nxt, done


def test_ensemble_learns_a_chunk_system_with_terminations_and_keeps_its_best_members():
    s, a, r, s2, d = linear_system(3000)
    model = ChunkDynamics(3, 2, SMALL)
    logs = model.fit(s, a, r, s2, d, seed=0)
    assert logs["dynamics/holdout_done_acc"] > 0.9, logs
    ts, ta, tr, ts2, td = linear_system(500, seed=1)
    pred_s, pred_r, p_done = model.predict(ts, ta)
    live = td < 0.5
    assert float((pred_s - ts2)[live].abs().mean()) < 0.15  # targets' delta is ~0.45 on average
    assert float((pred_r - tr)[live].abs().mean()) < 0.15
    assert float(((p_done > 0.5).float() == td).float().mean()) > 0.9
    assert model.elite_idx.numel() == 2 and len(set(model.elite_idx.tolist())) == 2
    with pytest.raises(ValueError, match="at least 10 transitions"):
        ChunkDynamics(3, 2, SMALL).fit(s[:5], a[:5], r[:5], s2[:5], d[:5])
    with pytest.raises(ValueError, match="elites"):
        DynamicsConfig(members=2, elites=3).validate()


class KnownDynamics:
    """s' = s, reward 1, and the chunk ends the episode with probability 1/2."""

    def predict(self, s, a):
        return s.clone(), torch.ones(s.shape[0]), torch.full((s.shape[0],), 0.5)


def test_model_estimate_is_the_h_chunk_return_bootstrapped_with_q():
    torch.manual_seed(0)
    policy = pretrained_bimodal_flow(steps=20)
    make_stochastic(policy, RL100Config(num_inference_steps=2, flow_std=0.1))
    critics = IQLCritics(2, 8, IQLConfig(hidden=(16,), gamma=0.9))
    obs = {"state": torch.randn(32, 1, 2)}
    noise = torch.randn(policy.noise_shape(32), generator=torch.Generator().manual_seed(5))
    q0 = critics.q(flat_obs(obs), executed(policy.predict_chunk(obs, noise), policy.spec))
    assert torch.allclose(ope_values(policy, critics, obs, seed=5), q0)  # horizon 0: AM-Q on the given states
    # horizon 2 with s' = s: 1 + 0.9 * 0.5 * 1 + 0.81 * 0.25 * Q(s, pi(s)) (the third chunk's noise is another draw)
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn(policy.noise_shape(32), generator=g) for _ in range(3)]
    q2 = critics.q(flat_obs(obs), executed(policy.predict_chunk(obs, draws[2]), policy.spec))
    value = ope_values(policy, critics, obs, seed=5, dynamics=KnownDynamics(), horizon=2)
    assert torch.allclose(value, 1 + 0.45 + 0.2025 * q2, atol=1e-6)
    with pytest.raises(ValueError, match="needs a fitted dynamics model"):
        ope_values(policy, critics, obs, horizon=1)


def test_obs_layout_round_trips_the_critic_features():
    obs = {"b": torch.randn(4, 2, 3), "a": torch.randn(4, 2, 1), "language": ["x"] * 4}
    layout = ObsLayout(obs, ["a", "b"])
    back = layout.unflatten(flat_obs(obs), {"language": obs["language"]})
    assert torch.equal(back["a"], obs["a"]) and torch.equal(back["b"], obs["b"]) and back["language"] == obs["language"]


def test_model_gated_offline_stage_moves_mass_to_the_rewarded_mode():
    torch.manual_seed(0)
    policy = pretrained_bimodal_flow(steps=200)
    cfg = RL100Config(num_inference_steps=4, flow_std=0.1, iql=IQLConfig(hidden=(32, 32), lr=3e-3),
                      offline_steps=120, offline_lr=1e-4, gate_every=20, batch_size=64, ope_horizon=1,
                      ope_states=50, dynamics=SMALL)
    cfg.validate()
    kwargs = make_stochastic(policy, cfg)
    data = Transitions()
    collect_episodes(policy, bandit_envs(16), IdentityBatcher(), 96, 0, kwargs, data)
    assert len(ope_start_states(data, cfg, 0)["state"]) == 50
    critics = IQLCritics(flat_obs(data.obs[0]).shape[-1], data.actions[0].shape[-1], cfg.iql)
    fit_critics(critics, data, steps=300, batch_size=64)
    dynamics, logs = fit_dynamics(data, cfg, seed=0)
    assert logs["dynamics/holdout_done_acc"] > 0.95  # every bandit chunk ends its episode
    out = offline_improve(policy, critics, data, cfg, kwargs, dynamics)
    accepted = [h["estimate"] for h in out["gate_history"] if h["accepted"]]
    assert out["offered"] == 6 and out["accepted"] >= 1 and accepted == sorted(accepted)
    mass_after, on_mode = mode_stats(policy)
    assert mass_after >= 0.9 and on_mode > 0.8, (mass_after, on_mode)
    with pytest.raises(ValueError, match="ope_horizon"):
        RL100Config(ope_horizon=-1).validate()

"""DSRL (robopolicy/rl/dsrl.py, policies/steered.py): the base head never changes, the steered head is an
ordinary checkpoint, and on a 2-D two-mode toy with a reward on one mode both DSRL-SAC and DSRL-NA move
most of the mass there while staying on the base head's modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_policy_diffusion import TOY_TEMPLATES, _train, toy_batch, toy_mode_stats

from robopolicy.policies.base import PolicySpec
from robopolicy.policies.flow import FlowPolicy
from robopolicy.policies.registry import ConfigError, build_config, make_policy
from robopolicy.policies.steered import NoiseActorConfig, SteeredPolicy, parameter_hash
from robopolicy.rl.dsrl import DSRLConfig, DSRLLearner, train_dsrl

torch.set_num_threads(1)

TOY_SPEC = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=4)
TOY_FLOW = {"unet": {"down_dims": [32], "kernel_size": 3, "n_groups": 8, "diffusion_step_embed_dim": 32},
            "num_inference_steps": 4}


@pytest.fixture(scope="module")
def toy_base() -> FlowPolicy:
    """A flow head trained on the two-mode toy (mode A ends at x = +0.8, mode B at x = -0.8)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    base = make_policy("flow", TOY_SPEC, TOY_FLOW)
    _train(base, lambda: toy_batch(128, gen), steps=200)
    return base


class ToyBandit:
    """One-step episodes: obs ~ the toy's observation, reward 1 when the chunk lands on mode A."""

    def __init__(self, n_envs: int):
        self.n_envs = n_envs
        self.rng = np.random.default_rng(0)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": (0.1 * self.rng.standard_normal((self.n_envs, 2, 2))).astype(np.float32)}

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self.rng = np.random.default_rng(seed)
        return self._obs()

    def step(self, chunks: np.ndarray):
        mode = toy_modes(torch.as_tensor(chunks))
        return self._obs(), (mode == 0).numpy().astype(np.float32), np.ones(self.n_envs, np.float32), self.n_envs


class IdentityBatcher:
    def obs(self, raw):
        return {k: torch.as_tensor(v) for k, v in raw.items()}

    def executed_actions(self, chunk):
        return chunk.numpy()


def toy_modes(chunks: torch.Tensor) -> torch.Tensor:
    rms = ((chunks[:, None] - TOY_TEMPLATES[None]) ** 2).mean((-1, -2)).sqrt()
    return rms.argmin(1)


def _steer(base: FlowPolicy, variant: str) -> tuple[SteeredPolicy, DSRLLearner]:
    torch.manual_seed(1)
    steered = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW, NoiseActorConfig(hidden_dims=(64, 64))),
                            base=base)
    cfg = DSRLConfig(total_env_steps=800, n_envs=16, init_rollout_steps=160, batch_size=128, utd=0.25,
                     critic_hidden=(64, 64), init_temperature=0.01, target_entropy=-8.0, actor_lr=1e-3,
                     critic_lr=1e-3, gamma=0.0, na_target_batch_size=16, noise_critic_grad_steps=1,
                     prior_samples_per_state=2, eval_every_env_steps=10_000)
    learner = DSRLLearner(steered, cfg, variant, seed=0)
    train_dsrl(learner, ToyBandit(16), IdentityBatcher(), seed=0)
    return steered, learner


@pytest.mark.parametrize("variant", ["sac", "na"])
def test_dsrl_moves_mass_to_the_rewarded_mode_and_leaves_the_base_unchanged(toy_base, variant):
    obs = toy_batch(400, torch.Generator().manual_seed(5))["obs"]
    prior = torch.randn(400, 4, 2, generator=torch.Generator().manual_seed(6))
    base_mass, _ = toy_mode_stats(toy_base.predict_chunk(obs, prior))
    assert 0.3 < base_mass[0] < 0.7  # the base head covers both modes
    before = parameter_hash(toy_base)
    steered, _ = _steer(toy_base, variant)
    assert parameter_hash(toy_base) == before  # DSRL never changes the base weights
    assert all(not p.requires_grad for p in toy_base.parameters())
    # Seed 0 measured (800 env steps, 200 gradient steps): SAC and NA put 1.00 of the mass on mode A with the actor
    # mean and >= 0.99 with actor samples, all chunks on-mode (base: 0.53 / 0.47, on-mode 0.83).
    for chunks in (steered.predict_chunk(obs), steered.predict_chunk(obs, torch.randn(400, 4, 2))):
        mass, on_mode = toy_mode_stats(chunks)
        assert mass[0] >= 0.9, f"{variant}: mass on the rewarded mode {mass[0]:.2f}"
        assert on_mode >= 0.8  # steering picks the base head's own mode, it does not leave the manifold


def test_noise_actor_is_bounded_and_starts_near_the_prior():
    cfg = NoiseActorConfig(hidden_dims=(32,), action_magnitude=1.5)
    steered = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW, cfg))
    feat = torch.randn(2000, steered.actor.trunk.in_dim)
    with torch.no_grad():
        w, log_prob = steered.actor.sample(feat)
        assert w.abs().max() <= 1.5 and torch.isfinite(log_prob).all()
        assert abs(float(w.std()) - 0.95) < 0.1  # tanh(N(0, 1)) * 1.5 has std ~0.94: close to the N(0, I) prior
        assert float(steered.actor.mean(feat).abs().max()) < 0.1
    # log-density check against an independent change of variables on one dimension
    mu, std = steered.actor.distribution(feat[:1])
    z = torch.randn(1, steered.noise_dim)
    w1, lp = steered.actor.sample(feat[:1], z)
    u = torch.atanh(w1 / 1.5)
    ref = torch.distributions.Normal(mu, std).log_prob(u) - torch.log(1.5 * (1 - torch.tanh(u) ** 2))
    assert torch.allclose(lp, ref.sum(-1), atol=1e-3)
    assert math.isfinite(float(lp.detach()))


def test_steered_checkpoint_round_trip(toy_base, tmp_path):
    """A steered head is a registry head: it rebuilds from its config with base.* and actor.* weights."""
    from safetensors.torch import load_model, save_model

    cfg = {"base_name": "flow", "base_config": TOY_FLOW, "actor": {"hidden_dims": [32]}}
    steered = make_policy("steered", TOY_SPEC, cfg)
    steered.base.load_state_dict(toy_base.state_dict())
    save_model(steered, str(tmp_path / "m.safetensors"))
    again = make_policy("steered", TOY_SPEC, cfg)
    missing, unexpected = load_model(again, str(tmp_path / "m.safetensors"))
    assert not missing and not unexpected
    obs = {"state": torch.randn(5, 2, 2)}
    assert torch.equal(again.predict_chunk(obs), steered.predict_chunk(obs))
    assert parameter_hash(again.base) == parameter_hash(toy_base)
    with pytest.raises(ValueError, match="trained by RL"):
        again.compute_loss({})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(DSRLConfig, {"utd": 1, "batch": 3}, where="algo 'dsrl'")
    with pytest.raises(ValueError, match="variant"):
        DSRLLearner(steered, DSRLConfig(), "ppo")


def test_wall_clock_stop_still_evaluates_the_final_actor(toy_base):
    steered = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW, NoiseActorConfig(hidden_dims=(16,))),
                            base=toy_base)
    cfg = DSRLConfig(total_env_steps=10_000, n_envs=4, init_rollout_steps=4, batch_size=8, critic_hidden=(16,),
                     max_wall_s=0.0, eval_every_env_steps=10_000)
    evals: list[int] = []
    stats = train_dsrl(DSRLLearner(steered, cfg, "sac"), ToyBandit(4), IdentityBatcher(), seed=0,
                       on_eval=lambda steps, wall: evals.append(steps) or {})
    assert stats["stopped_by"] == "max_wall_s" and evals == [stats["env_steps"]] == [4]


def test_critics_use_the_official_tanh_and_a_bad_activation_is_refused():
    from torch import nn

    from robopolicy.nn.mlp import MLP
    from robopolicy.rl.sac import TwinCritic

    assert DSRLConfig().critic_activation == "tanh"
    critic = TwinCritic(3, 2, [8, 8], activation="tanh")
    kinds = {type(m) for m in critic.modules()}
    assert nn.Tanh in kinds and nn.Mish not in kinds
    assert nn.Mish in {type(m) for m in MLP(3, [8], 1).modules()}  # the default elsewhere is unchanged
    with pytest.raises(ValueError, match="activation"):
        MLP(3, [8], 1, activation="gelu")
    with pytest.raises(ValueError, match="critic_activation"):
        DSRLConfig(critic_activation="gelu")


@pytest.mark.parametrize("variant", ["sac", "na"])
def test_target_clip_keeps_the_critic_targets_in_the_return_range(toy_base, variant):
    steered = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW, NoiseActorConfig(hidden_dims=(16,))),
                            base=toy_base)
    cfg = DSRLConfig(total_env_steps=64, n_envs=8, init_rollout_steps=64, batch_size=32, critic_hidden=(16,),
                     na_target_batch_size=32, gamma=0.0, target_clip=[0.0, 0.25], eval_every_env_steps=10_000)
    learner = DSRLLearner(steered, cfg, variant, seed=0)
    train_dsrl(learner, ToyBandit(8), IdentityBatcher(), seed=0)  # prior-noise rollouts fill the replay
    assert float(learner.replay.data["reward"][: len(learner.replay)].max()) == 1.0  # unclipped targets reach 1
    for _ in range(3):
        info = learner.update()
        assert 0.0 <= info["target_mean"] <= 0.25
    with pytest.raises(ValueError, match="target_clip"):
        DSRLConfig(target_clip=[1.0, 0.0])


def test_executed_steering_sets_only_the_executed_rows(toy_base):
    """steer="executed": the actor sets rows n_obs_steps-1 .. +n_action_steps of the noise, the rest stay 0."""
    spec = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4)
    flow = {**TOY_FLOW, "unet": {**TOY_FLOW["unet"]}}
    steered = make_policy("steered", spec, {"base_name": "flow", "base_config": flow,
                                            "actor": {"hidden_dims": [32], "steer": "executed"}})
    assert steered.noise_dim == 4 * 2
    w = torch.arange(1, 9, dtype=torch.float32).reshape(1, 8)
    noise = steered.to_noise(w)
    assert noise.shape == (1, 8, 2)
    assert torch.equal(noise[0, 1:5].flatten(), w[0]) and noise[0, [0, 5, 6, 7]].abs().sum() == 0
    # a draw over the full (T_p, A) noise uses only its executed rows: other rows cannot change the chunk
    obs = {"state": torch.randn(3, 2, 2)}
    z = torch.randn(3, 8, 2)
    z2 = z.clone()
    z2[:, [0, 5, 6, 7]] = torch.randn(3, 4, 2)
    assert torch.equal(steered.predict_chunk(obs, z), steered.predict_chunk(obs, z2))
    with pytest.raises(ValueError, match="steer"):
        make_policy("steered", spec, {"base_name": "flow", "base_config": flow, "actor": {"steer": "first"}})
    # DSRL-SAC on the toy still learns with the smaller noise space (TOY_SPEC: the executed rows are 1..3)
    torch.manual_seed(1)
    toy = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW,
                                                       NoiseActorConfig(hidden_dims=(64, 64), steer="executed")),
                        base=toy_base)
    assert toy.noise_dim == 3 * 2
    cfg = DSRLConfig(total_env_steps=800, n_envs=16, init_rollout_steps=160, batch_size=128, utd=0.25,
                     critic_hidden=(64, 64), init_temperature=0.01, target_entropy=-6.0, actor_lr=1e-3,
                     critic_lr=1e-3, gamma=0.0, eval_every_env_steps=10_000)
    train_dsrl(DSRLLearner(toy, cfg, "sac", seed=0), ToyBandit(16), IdentityBatcher(), seed=0)
    mass, _ = toy_mode_stats(toy.predict_chunk(toy_batch(400, torch.Generator().manual_seed(5))["obs"]))
    assert mass[0] >= 0.9


def test_noise_spread_tells_a_noise_blind_base_from_a_multimodal_one(toy_base):
    """DSRL's pre-flight measure: the two-mode toy head moves with its noise, a head that ignores it does not."""
    from robopolicy.rl.noise_spread import noise_spread, spread_warning

    obs = toy_batch(8, torch.Generator().manual_seed(3))["obs"]
    gen = torch.Generator().manual_seed(0)
    prior = lambda n: torch.randn(n, 4 * 2, generator=gen)  # noqa: E731
    rows = slice(0, 4)
    multimodal = noise_spread(lambda o, w: toy_base.predict_chunk(o, w.reshape(-1, 4, 2)), obs, prior, rows)
    # mode A ends at +0.8, mode B at -0.8: the noise picks the mode, so it moves the actions more than the state
    assert multimodal["noise_spread"] > 0.15 and multimodal["ratio"] > 1 and spread_warning(multimodal) is None
    blind = noise_spread(lambda o, w: toy_base.predict_chunk(o, torch.zeros(w.shape[0], 4, 2)), obs, prior, rows)
    assert blind["noise_spread"] < 1e-6 and blind["ratio"] < 1e-3
    assert "barely depend on its noise" in spread_warning(blind)
    with pytest.raises(ValueError, match="at least 2"):
        noise_spread(lambda o, w: w, {"state": torch.zeros(1, 2, 2)}, prior, rows)
    # train_dsrl logs the measure before its first step
    rows_logged = []
    torch.manual_seed(1)
    steered = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW, NoiseActorConfig(hidden_dims=(16,))),
                            base=toy_base)
    cfg = DSRLConfig(total_env_steps=32, n_envs=16, init_rollout_steps=32, batch_size=16, critic_hidden=(16,),
                     eval_every_env_steps=10_000)
    train_dsrl(DSRLLearner(steered, cfg, "sac", seed=0), ToyBandit(16), IdentityBatcher(), seed=0,
               log=lambda step, row: rows_logged.append(row))
    assert rows_logged[0]["base/ratio"] > 0.5


def test_auto_target_clip_is_the_return_range_of_the_rewards():
    from robopolicy.rl.returns import chunk_return_bounds, task_return_bounds

    # -1 per chunk until success (0.125 * r - 0.125 per step, T_a = 8) at gamma 0.99: DSRL's setting
    assert chunk_return_bounds((0.0, 1.0), 8, 0.99, 0.125, -0.125) == pytest.approx((-100.0, 0.0))
    # a 0/1 reward: at most 1 per step, 8 per chunk, forever
    assert chunk_return_bounds((0.0, 1.0), 8, 0.99) == pytest.approx((0.0, 800.0))
    # a chunk that ends early sums fewer steps: -1 per step can be -1 for one chunk, not only -8
    assert chunk_return_bounds((0.0, 0.0), 8, 0.5, 1.0, -1.0) == pytest.approx((-16.0, -1.0))
    assert chunk_return_bounds((0.0, 1.0), 8, 1.0, 1.0, -0.5) is None  # undiscounted and unending: unbounded
    with pytest.raises(ValueError, match="finite"):
        chunk_return_bounds((1.0, 0.0), 8, 0.99)
    pusht = {"name": "pusht", "env": "pusht", "env_kwargs": {"obs_mode": "state"}}
    assert task_return_bounds(pusht, 8, 0.99) == pytest.approx((0.0, 800.0))
    assert task_return_bounds({**pusht, "reward_scale": 0.125, "reward_offset": -0.125}, 8, 0.99) == pytest.approx(
        (-100.0, 0.0))
    assert DSRLConfig().target_clip == "auto" and DSRLConfig(target_clip=[-1, 0]).target_clip == (-1.0, 0.0)
    with pytest.raises(ValueError, match="auto"):
        DSRLConfig(target_clip="yes")

"""ReinFlow (robopolicy/rl/reinflow.py): noise-net bounds and schedule, the 2-D toy (reward on one mode of a
bimodal flow -> the mass moves there and stays on the modes), checkpoints loadable by robopolicy.load, and the
`robopolicy finetune` dispatch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from rl_toy import SPEC, IdentityBatcher, bandit_envs, mode_stats, pretrained_bimodal_flow

import robopolicy
from robopolicy.cli import finetune as finetune_cli
from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
from robopolicy.policies.registry import ConfigError
from robopolicy.rl import common
from robopolicy.rl.ppo import PPO, PPOConfig, PPOHooks, ValueCritic
from robopolicy.rl.reinflow import (
    NoiseNet,
    ReinFlowConfig,
    attach_noise_net,
    build_config_from,
    evaluate_terms,
    load_before_eval,
    max_std_at,
    w2_regularizer,
)
from robopolicy.train.checkpoint import LoadedCheckpoint

torch.set_num_threads(1)


def test_noise_net_stays_within_its_bounds_and_follows_max_std():
    net = NoiseNet(cond_dim=6, horizon=4, action_dim=2, min_std=0.08, max_std=0.14)
    torch.nn.init.normal_(net.net[-1].weight, std=10.0)  # saturate the tanh both ways
    x = torch.zeros(64, 4, 2)
    std = net(x, torch.rand(64), 5 * torch.randn(64, 6), 0).detach()
    assert std.shape == (64, 4, 2)
    assert float(std.min()) >= 0.08 - 1e-6 and float(std.max()) <= 0.14 + 1e-6
    assert float(std.min()) < 0.081 and float(std.max()) > 0.139  # both bounds reachable
    net.max_std.fill_(0.1)
    assert float(net(x, torch.rand(64), torch.randn(64, 6), 0).detach().max()) <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="min_std"):
        NoiseNet(6, 4, 2, min_std=0.2, max_std=0.1)


def test_max_std_schedule_holds_then_decays():
    cfg = ReinFlowConfig(min_std=0.1, max_std=0.2, hold_ratio=0.35, decay_ratio=0.7)
    assert max_std_at(0.0, cfg) == 0.2 and max_std_at(0.35, cfg) == 0.2
    assert max_std_at(1.0, cfg) == pytest.approx(0.1 + 0.7 * 0.1)
    mid = max_std_at(0.675, cfg)
    assert 0.17 < mid < 0.2 and max_std_at(2.0, cfg) == pytest.approx(0.17)


def test_reinflow_moves_the_mass_to_the_rewarded_mode_of_a_2d_toy():
    """Bimodal flow (about 50/50), reward only on mode A: ReinFlow puts >= 90 % of the deterministic
    sampler's mass on A within ~4k samples, and the chunks stay near the demonstrated modes."""
    policy = pretrained_bimodal_flow(steps=200)
    mass_before, _ = mode_stats(policy)
    assert 0.3 < mass_before < 0.7  # both modes present before fine-tuning
    cfg = ReinFlowConfig(ppo=PPOConfig(n_envs=16, n_steps=4, minibatch_size=32, update_epochs=5, actor_lr=3e-4,
                                       clip_eps=0.05, critic_warmup_iters=1, critic_hidden=(32, 32), critic_lr=1e-3),
                         min_std=0.05, max_std=0.15, noise_lr=1e-3)
    net = attach_noise_net(policy, cfg)
    vel = [q for n, q in policy.named_parameters() if not n.startswith("step_std.")]
    ppo = PPO(policy, ValueCritic(policy, cfg.ppo.critic_hidden), cfg.ppo,
              [{"params": vel, "lr": cfg.ppo.actor_lr}, {"params": list(net.parameters()), "lr": cfg.noise_lr}],
              evaluate_terms(policy))
    rows = []
    state = ppo.run(bandit_envs(16), IdentityBatcher(), seed=0, iterations=18, wall_budget_s=None,
                    hooks=PPOHooks(), log=lambda it, row: rows.append(row))
    mass_after, on_mode = mode_stats(policy)
    assert state.env_steps == 18 * 16 * 4 * 4
    assert all(r["ppo/first_ratio_max_dev"] < 1e-5 for r in rows if "ppo/first_ratio_max_dev" in r)
    assert mass_after >= 0.9, (mass_before, mass_after)
    assert on_mode >= 0.6, on_mode  # chunks near a demonstrated mode, not smeared in between
    assert rows[-1]["rollout/success_rate"] > rows[0]["rollout/success_rate"]


def _fake_start(policy, tmp_path) -> LoadedCheckpoint:
    normalizer = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    config = {"task": {"name": "toy", "action_key": "action", "env_kwargs": {}},
              "policy": {"name": "flow", "config": dataclasses.asdict(policy.cfg)}}
    return LoadedCheckpoint(policy, normalizer, config, {"spec": SPEC.to_json()}, tmp_path / "start")


def test_saved_checkpoint_loads_with_robopolicy_load_and_keeps_the_weights(tmp_path):
    policy = pretrained_bimodal_flow(steps=5)
    net = attach_noise_net(policy, ReinFlowConfig())
    start = _fake_start(policy, tmp_path)
    policy.set_step_std(None)  # what reinflow.finetune does around saving
    path = common.save_finetuned(tmp_path / "final", policy, start, {"finetune": {"algo": "reinflow"}},
                                 extra_files=lambda d: torch.save({"noise_net": net.state_dict()}, d / "reinflow_state.pt"))
    policy.set_step_std(net)
    agent = robopolicy.load(path)
    assert agent.meta["finetune"]["algo"] == "reinflow" and (path / "reinflow_state.pt").exists()
    obs = {"state": 0.1 * torch.randn(8, 1, 2)}
    noise = torch.randn(8, 4, 2)
    assert torch.allclose(agent.policy.predict_chunk(obs, noise), policy.predict_chunk(obs, noise), atol=1e-6)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        build_config_from({"num_inference_stepz": 4})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config_from({"ppo": {"n_env": 4}})
    with pytest.raises(ValueError, match="min_std"):
        build_config_from({"min_std": 0.3, "max_std": 0.1})
    cfg = build_config_from({"ppo": {"n_envs": 3}, "noise_hidden": [8, 8]})
    assert cfg.ppo.n_envs == 3 and cfg.noise_hidden == (8, 8)


def test_reinflow_refuses_a_non_flow_head():
    from robopolicy.nn import unet_preset
    from robopolicy.policies.diffusion import DiffusionPolicy

    p = DiffusionPolicy(SPEC, DiffusionPolicy.Config(unet=unet_preset("tiny", down_dims=[16])))
    with pytest.raises(ValueError, match="flow head"):
        attach_noise_net(p, ReinFlowConfig())  # type: ignore[arg-type]


def test_cli_dispatch_table_and_errors(tmp_path, capsys):
    assert finetune_cli.resolve_algorithm("reinflow").__name__ == "finetune"
    for name in finetune_cli.ALGORITHMS:  # every entry resolves (modules get split and moved)
        assert callable(finetune_cli.resolve_algorithm(name))
    with pytest.raises(ValueError, match="unknown algo"):
        finetune_cli.resolve_algorithm("nope")
    assert finetune_cli.main(["--help"]) == 0
    assert finetune_cli.main([f"checkpoint={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert finetune_cli.main([]) == 2
    assert "checkpoint=PATH is required" in capsys.readouterr().err
    assert finetune_cli.main(["algo=nope", f"checkpoint={tmp_path}"]) == 2


def test_load_start_refuses_a_language_conditioned_head(monkeypatch, tmp_path):
    """The chunk envs carry no instruction, so such a head would fail deep inside its first rollout."""
    from robopolicy.train import checkpoint as ckpt
    policy = pretrained_bimodal_flow(steps=1)
    normalizer = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    loaded = LoadedCheckpoint(policy, normalizer, {}, {}, tmp_path)
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda path, device="cpu": loaded)
    assert common.load_start(tmp_path) is loaded
    policy.spec = dataclasses.replace(SPEC, language=True)
    with pytest.raises(ValueError, match="language-conditioned head.*without task.language"):
        common.load_start(tmp_path)


def test_before_eval_json_accepts_eval_json_and_checks_the_episode_count(tmp_path):
    import json
    summary = {"n_episodes": 20, "n_success": 11, "success_rate": 0.55}
    (tmp_path / "eval.json").write_text(json.dumps({"summary": summary, "episodes": []}))
    (tmp_path / "eval_before.json").write_text(json.dumps(summary))
    assert load_before_eval(tmp_path / "eval.json", 20)["success_rate"] == 0.55
    assert load_before_eval(tmp_path / "eval_before.json", 20)["n_success"] == 11
    with pytest.raises(ValueError, match="final_eval_episodes"):
        load_before_eval(tmp_path / "eval.json", 50)
    (tmp_path / "other.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="no success_rate"):
        load_before_eval(tmp_path / "other.json", 20)


def test_w2_regularizer_is_zero_at_the_start_and_pulls_back_a_moved_policy():
    policy = pretrained_bimodal_flow(steps=5)
    attach_noise_net(policy, ReinFlowConfig())
    reg = w2_regularizer(policy, coef=2.0)
    obs = {"state": 0.1 * torch.randn(16, 1, 2)}
    assert float(reg(obs).detach()) == 0.0  # same weights, same x_0
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = reg(obs)
    assert float(loss) > 0
    loss.backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in policy.step_std.parameters())  # the noise net is not regularised


def test_w2_term_holds_reinflow_near_the_start_on_the_2d_toy():
    """The same toy run as above with a strong W2 term: the rewarded mode gains far less mass, and the
    per-minibatch regulariser is logged."""
    policy = pretrained_bimodal_flow(steps=200)
    mass_before, _ = mode_stats(policy)
    cfg = ReinFlowConfig(ppo=PPOConfig(n_envs=16, n_steps=4, minibatch_size=32, update_epochs=5, actor_lr=3e-4,
                                       clip_eps=0.05, critic_warmup_iters=1, critic_hidden=(32, 32), critic_lr=1e-3),
                         min_std=0.05, max_std=0.15, noise_lr=1e-3, bc_coef=200.0)
    net = attach_noise_net(policy, cfg)
    vel = [q for n, q in policy.named_parameters() if not n.startswith("step_std.")]
    ppo = PPO(policy, ValueCritic(policy, cfg.ppo.critic_hidden), cfg.ppo,
              [{"params": vel, "lr": cfg.ppo.actor_lr}, {"params": list(net.parameters()), "lr": cfg.noise_lr}],
              evaluate_terms(policy), actor_regularizer=w2_regularizer(policy, cfg.bc_coef))
    rows = []
    ppo.run(bandit_envs(16), IdentityBatcher(), seed=0, iterations=18, wall_budget_s=None,
            hooks=PPOHooks(), log=lambda it, row: rows.append(row))
    mass_after, _ = mode_stats(policy)
    assert any("loss/actor_reg" in r for r in rows)
    assert mass_after < mass_before + 0.25, (mass_before, mass_after)


def test_bc_coef_must_not_be_negative():
    with pytest.raises(ValueError, match="bc_coef"):
        build_config_from({"bc_coef": -1.0})

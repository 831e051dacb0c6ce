"""ReinFlow resume (`algo.resume_from`): a run stopped at its last/ checkpoint continues with the same velocity
weights, noise net, critic, optimiser moments and counters; its logs continue without the rows logged after
that checkpoint. Runs `reinflow.finetune` end to end on the 2-D bandit toy (rl_toy.py)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from rl_toy import SPEC, IdentityBatcher, bandit_envs, mode_stats, pretrained_bimodal_flow

from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
from robopolicy.rl import common, reinflow
from robopolicy.rl.ppo import PPO, PPOConfig, ValueCritic
from robopolicy.train.checkpoint import LoadedCheckpoint, load_checkpoint

torch.set_num_threads(1)

ALGO = {"num_inference_steps": 4, "min_std": 0.05, "max_std": 0.15, "noise_lr": 1e-3, "eval_every": 0,
        "final_eval_episodes": 8, "checkpoint_every": 2, "in_process": True,
        "ppo": dataclasses.asdict(PPOConfig(n_envs=8, n_steps=2, minibatch_size=16, actor_lr=3e-4, clip_eps=0.05,
                                            critic_warmup_iters=1, critic_hidden=(16,), critic_lr=1e-3))}
PER_ITERATION = 8 * 2 * SPEC.n_action_steps  # env steps: n_envs x n_steps chunks x T_a


@pytest.fixture
def toy_finetune(monkeypatch, tmp_path):
    """reinflow.finetune on the bandit toy; each call starts from its own copy of the same imitation flow."""
    base = pretrained_bimodal_flow(steps=100)
    normalizer = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    config = {"task": {"name": "toy", "action_key": "action", "env_kwargs": {}},
              "policy": {"name": "flow", "config": dataclasses.asdict(base.cfg)}}

    def load_start(path):
        return LoadedCheckpoint(copy.deepcopy(base), normalizer, config, {"spec": SPEC.to_json()}, tmp_path / "start")

    monkeypatch.setattr(common, "load_start", load_start)
    monkeypatch.setattr(common, "ObsBatcher", lambda *a, **k: IdentityBatcher())
    monkeypatch.setattr(common, "make_chunk_envs", lambda task, spec, n, *a: bandit_envs(n))
    monkeypatch.setattr(common, "evaluate_success", lambda p, *a, **k: {"success_rate": mode_stats(p)[0],
                                                                         "n_episodes": 8})

    def run(out_dir, **algo):
        return reinflow.finetune("start", {"name": "toy"}, {**ALGO, **algo}, out_dir, seed=0)
    return run


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_counters_and_logs_from_last(toy_finetune, tmp_path):
    out = tmp_path / "run"
    first = toy_finetune(out, iterations=3)  # last/ at iteration 2, final/ at 3
    assert first["iterations"] == 3 and first["env_steps"] == 3 * PER_ITERATION
    saved = torch.load(out / "last" / "reinflow_state.pt", weights_only=False)
    assert saved["iteration"] == 2 and saved["ppo"]["counters"]["env_steps"] == 2 * PER_ITERATION

    resumed = toy_finetune(out, iterations=5, resume_from=str(out / "last"))
    assert resumed["iterations"] == 5 and resumed["env_steps"] == 5 * PER_ITERATION
    rows = _rows(out)
    steps = [r["step"] for r in rows if not r.get("final")]
    assert steps == [0, 1, 2, 3, 4, 5]  # iteration 3 of the first run and its final row were dropped
    assert [r["env_steps"] for r in rows if not r.get("final")][1:] == [i * PER_ITERATION for i in range(1, 6)]
    assert sum(1 for r in rows if r.get("final")) == 1
    assert resumed["success_before"] == first["success_before"]  # the start's evaluation is read, not redone
    assert (out / "config_resume2.json").is_file()
    wall = [r["wall_s"] for r in rows if not r.get("final")]
    assert wall == sorted(wall)  # the wall clock continues from the checkpoint's


def test_a_longer_resumed_run_never_raises_the_noise_bound(toy_finetune, tmp_path):
    """Doubling the iteration budget halves the progress; max_std stays at the reached value until the new
    schedule comes below it, then follows it down to the same end point."""
    out = tmp_path / "run"
    toy_finetune(out, iterations=4, hold_ratio=0.0, decay_ratio=0.0, checkpoint_every=4)  # ends at min_std
    reached = [r["noise/max_std"] for r in _rows(out) if "noise/max_std" in r]
    assert reached[-1] == pytest.approx(0.05 + 0.1 * 0.25)  # progress 3/4 at the last iteration's start
    toy_finetune(out, iterations=8, hold_ratio=0.0, decay_ratio=0.0, resume_from=str(out / "last"))
    resumed = [r["noise/max_std"] for r in _rows(out) if "noise/max_std" in r][len(reached):]
    assert len(resumed) == 4 and max(resumed) <= reached[-1] + 1e-7  # uncapped, it would restart at 0.10
    assert resumed[0] == pytest.approx(reached[-1]) and resumed[-1] == pytest.approx(0.05 + 0.1 / 8)


def test_resume_restores_weights_noise_net_critic_and_optimisers_exactly(toy_finetune, tmp_path):
    out = tmp_path / "run"
    toy_finetune(out, iterations=2)
    saved = torch.load(out / "last" / "reinflow_state.pt", weights_only=False)

    cfg = reinflow.build_config_from({**ALGO, "iterations": 2})
    policy = pretrained_bimodal_flow(steps=1, seed=1)  # different weights to be overwritten
    net = reinflow.attach_noise_net(policy, cfg)
    critic = ValueCritic(policy, cfg.ppo.critic_hidden)
    vel = [q for n, q in policy.named_parameters() if not n.startswith("step_std.")]
    ppo = PPO(policy, critic, cfg.ppo, [{"params": vel, "lr": cfg.ppo.actor_lr},
                                        {"params": list(net.parameters()), "lr": cfg.noise_lr}],
              reinflow.evaluate_terms(policy))
    reinflow.resume_training(out / "last", policy, net, critic, ppo)

    policy.set_step_std(None)
    want = load_checkpoint(out / "last").policy.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in policy.state_dict().items())
    policy.set_step_std(net)
    assert all(torch.equal(v, saved["noise_net"][k]) for k, v in net.state_dict().items())
    assert all(torch.equal(v, saved["critic"][k]) for k, v in critic.state_dict().items())
    moments = ppo.actor_opt.state_dict()["state"]
    want_moments = saved["ppo"]["actor_opt"]["state"]
    assert moments and moments.keys() == want_moments.keys()
    assert all(torch.equal(moments[i]["exp_avg"], want_moments[i]["exp_avg"]) for i in moments)
    assert (ppo.state.iteration, ppo.state.env_steps) == (2, 2 * PER_ITERATION)
    assert ppo.state.actor_updates == saved["ppo"]["counters"]["actor_updates"] == 1  # 1 critic warm-up iteration


def test_resume_from_a_directory_without_reinflow_state_says_what_to_give(toy_finetune, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="no reinflow_state.pt"):
        toy_finetune(tmp_path / "run", iterations=2, resume_from=str(tmp_path / "elsewhere"))

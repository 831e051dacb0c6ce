"""RL-100 resume (`algo.resume_from`, rl/rl100_resume.py): a run stopped after an offline iteration or an online
evaluation continues with its policy, collected transitions, successful chunks, IQL critics, online critic, PPO
state and counters, and its logs continue. Runs `rl100_finetune.finetune` end to end on the toy bandit."""

from __future__ import annotations

import json

import pytest
import torch
from rl_toy import SPEC, IdentityBatcher, bandit_envs, mode_stats, pretrained_bimodal_flow

from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
from robopolicy.rl import common, rl100_finetune, rl100_resume
from robopolicy.rl.ppo import PPOConfig
from robopolicy.train import checkpoint as ckpt
from robopolicy.train.checkpoint import LoadedCheckpoint

torch.set_num_threads(1)

PPO = {**vars(PPOConfig(n_steps=2, minibatch_size=16, actor_lr=1e-3, critic_hidden=(16,), critic_warmup_iters=0))}
ALGO = {"num_inference_steps": 4, "flow_std": 0.1, "episodes_per_iteration": 32, "n_envs": 16, "in_process": True,
        "il_steps": 20, "il_demo_fraction": 0.0, "critic_steps": 50, "batch_size": 64, "offline_steps": 20,
        "gate_every": 10, "offline_lr": 1e-4, "iql": {"hidden": [32, 32]}, "distill_steps": 0, "ope_horizon": 2,
        "dynamics": {"members": 3, "elites": 2, "hidden": [32, 32], "steps": 50},
        "eval_episodes": 11, "online_eval_episodes": 7, "online_eval_every": 2, "ppo": PPO}


@pytest.fixture(scope="module")
def toy_start():
    return pretrained_bimodal_flow(steps=200)


@pytest.fixture
def rl100_run(monkeypatch, tmp_path, toy_start):
    """rl100_finetune.finetune on the toy bandit, writing real checkpoints; each call starts from the same head."""
    import copy

    normalizer = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    config = {"task": {"name": "toy", "action_key": "action"}, "policy": {"name": "flow"}}
    monkeypatch.setattr(common, "load_start", lambda path: LoadedCheckpoint(
        copy.deepcopy(toy_start), normalizer, config, {"spec": SPEC.to_json()}, tmp_path / "start"))
    monkeypatch.setattr(common, "ObsBatcher", lambda *a, **k: IdentityBatcher())
    monkeypatch.setattr(common, "make_chunk_envs", lambda task, spec, n, *a: bandit_envs(n))
    monkeypatch.setattr(common, "evaluate_success", lambda p, *a, n_episodes=20, **k: {
        "success_rate": mode_stats(p)[0], "n_episodes": n_episodes})

    def run(out_dir, **algo):
        return rl100_finetune.finetune("start", {"name": "toy"}, {**ALGO, **algo}, out_dir, seed=0)
    return run


def _state(out):
    return torch.load(out / "last" / rl100_resume.STATE_FILE, weights_only=False)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_offline_then_online_stage(rl100_run, tmp_path):
    out = tmp_path / "run"
    first = rl100_run(out, offline_iterations=1, online_iterations=0)
    state = _state(out)
    assert state["progress"]["offline_done"] == 1 and state["online"] is None
    n_steps_1 = len(state["data"]["actions"])  # vector steps the first collection took
    assert state["progress"]["env_steps"] == first["env_steps"] == 16 * SPEC.n_action_steps * n_steps_1

    # Second offline iteration and 4 online iterations (evaluations at 2 and 4 save last/ with PPO's state).
    second = rl100_run(out, offline_iterations=2, online_iterations=4, resume_from=str(out / "last"))
    assert set(second["stages"]) == {"before", "offline_1", "offline_2", "online"}
    assert second["stages"]["offline_1"] == first["stages"]["offline_1"]  # kept, not redone
    # every iteration's gate offers (20 PPO steps, gate every 10) reach summary.json, the resumed run's too
    assert second["gate_history"]["offline_1"] == first["gate_history"]["offline_1"]
    assert [len(second["gate_history"][k]) for k in ("offline_1", "offline_2")] == [2, 2]
    assert {"estimate", "rise", "z", "accepted"} <= set(second["gate_history"]["offline_2"][0])
    state = _state(out)
    assert state["progress"]["offline_done"] == 2 and state["online"]["ppo"]["counters"]["iteration"] == 4
    assert len(state["data"]["actions"]) > n_steps_1  # the first iteration's transitions were kept
    online_steps_4 = state["online"]["ppo"]["counters"]["env_steps"]
    assert online_steps_4 == state["progress"]["env_steps"] > first["env_steps"]

    third = rl100_run(out, offline_iterations=2, online_iterations=6, resume_from=str(out / "last"))
    assert _state(out)["online"]["ppo"]["counters"]["iteration"] == 6
    rows = [r for r in _rows(out) if not r.get("final")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # each iteration once, in order
    steps = [r["env_steps"] for r in rows]
    assert steps[6] == online_steps_4 and third["env_steps"] == steps[8] > steps[7] > steps[6]
    assert steps[8] - steps[7] == steps[6] - steps[5]  # a resumed online iteration collects as much as before
    wall = [r["wall_s"] for r in rows]
    assert wall == sorted(wall)  # the wall clock continues from the checkpoint's
    assert (out / f"config_resume{first['env_steps']}.json").is_file()


def test_offline_loop_without_ppo_runs_with_the_default_model_gate(rl100_run, tmp_path):
    """`offline_steps=0` (imitation re-training only, the setting the config recommends on Lift) offers the gate
    nothing, so it must neither fit the dynamics nor ask for an estimate, whatever `ope_horizon` is."""
    out = rl100_run(tmp_path / "run", offline_iterations=2, online_iterations=0, offline_steps=0, ope_horizon=5)
    assert out["gate_history"] == {"offline_1": [], "offline_2": []}
    rows = _rows(tmp_path / "run")
    assert [r["offline/accepted"] for r in rows[1:3]] == [0, 0]
    assert not any("offline/gate_best" in r or "dynamics/holdout_mse" in r for r in rows)


def test_resume_restores_critics_and_ppo_exactly(rl100_run, tmp_path, toy_start):
    from robopolicy.rl.iql import IQLConfig, IQLCritics
    from robopolicy.rl.ppo import PPO as PPOLoop
    from robopolicy.rl.ppo import ValueCritic

    out = tmp_path / "run"
    rl100_run(out, offline_iterations=1, online_iterations=2)
    state = _state(out)
    critics = IQLCritics(2, 8, IQLConfig(hidden=(32, 32)))
    rl100_resume.restore_critics(state, critics)
    assert all(torch.equal(a, b) for a, b in zip(critics.state_dict().values(), state["critics"]["nets"].values(),
                                                  strict=True))
    assert critics.opt.state_dict()["state"][0]["exp_avg"].equal(state["critics"]["opt"]["state"][0]["exp_avg"])
    policy = pretrained_bimodal_flow(steps=1)
    loaded = rl100_resume.load_state(out / "last", policy)
    saved = ckpt.load_checkpoint(out / "last").policy
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), saved.state_dict().values(),
                                                  strict=True))
    critic = ValueCritic(policy, (16,))
    ppo = PPOLoop(policy, critic, PPOConfig(**PPO), [{"params": list(policy.parameters())}], lambda o, c: (None, None))
    rl100_resume.restore_online(loaded, critic, ppo)
    assert ppo.state.iteration == 2 and ppo.state.env_steps == state["progress"]["env_steps"]
    assert ppo.actor_opt.state_dict()["state"][0]["exp_avg"].equal(state["online"]["ppo"]["actor_opt"]["state"][0]["exp_avg"])
    data_rows = sum(len(a) for a in state["data"]["actions"])
    assert data_rows == 16 * len(state["data"]["actions"]) and state["successes"]["episodes"] >= 1


def test_resume_errors_name_the_fix(rl100_run, tmp_path):
    out = tmp_path / "run"
    rl100_run(out, offline_iterations=2, online_iterations=2)
    with pytest.raises(ValueError, match="holds no rl100_state.pt: give the last/"):
        rl100_run(tmp_path / "b", offline_iterations=2, resume_from=str(out / "offline"))
    with pytest.raises(ValueError, match="set algo.offline_iterations=2"):
        rl100_run(tmp_path / "c", offline_iterations=3, online_iterations=4, resume_from=str(out / "last"))
    with pytest.raises(ValueError, match="set algo.online_iterations > 0"):
        rl100_run(tmp_path / "d", offline_iterations=2, online_iterations=0, resume_from=str(out / "last"))
    with pytest.raises(ValueError, match="does not fit algo.ppo"):
        rl100_run(tmp_path / "e", offline_iterations=2, online_iterations=4, resume_from=str(out / "last"),
                  ppo={**PPO, "critic_hidden": [8]})
    offline_only = tmp_path / "f"
    rl100_run(offline_only, offline_iterations=2, online_iterations=0)
    with pytest.raises(ValueError, match="would undo them"):
        rl100_run(tmp_path / "g", offline_iterations=1, resume_from=str(offline_only / "last"))

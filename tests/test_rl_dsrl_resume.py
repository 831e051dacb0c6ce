"""DSRL resume (`algo.resume_from`, rl/dsrl_resume.py): a run stopped at its last/ checkpoint continues with the
same noise actor, critics, optimisers, replay buffer and counters, and its logs continue. Runs
`dsrl_finetune.run_finetune` end to end on the two-mode toy bandit of test_rl_dsrl.py."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from test_policy_diffusion import toy_batch, toy_mode_stats
from test_rl_dsrl import TOY_FLOW, TOY_SPEC, IdentityBatcher, ToyBandit, toy_base  # noqa: F401 (fixture)

from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
from robopolicy.policies.steered import NoiseActorConfig, SteeredPolicy, parameter_hash
from robopolicy.rl import batched_eval, common, dsrl_finetune, dsrl_resume
from robopolicy.rl.dsrl import DSRLConfig, DSRLLearner
from robopolicy.rl.sac import ReplayBuffer
from robopolicy.train.checkpoint import LoadedCheckpoint

torch.set_num_threads(1)

ALGO = {"n_envs": 16, "init_rollout_steps": 64, "batch_size": 32, "utd": 0.25, "critic_hidden": [32, 32],
        "init_temperature": 0.01, "target_entropy": -8.0, "actor_lr": 1e-3, "critic_lr": 1e-3, "gamma": 0.0,
        "na_target_batch_size": 16, "noise_critic_grad_steps": 1, "prior_samples_per_state": 2,
        "eval_every_env_steps": 64, "eval_episodes": 8, "final_eval_episodes": 8, "target_clip": None,
        "actor": dataclasses.asdict(NoiseActorConfig(hidden_dims=(32,)))}


class ClosableBandit(ToyBandit):
    def close(self) -> None:
        pass


@pytest.fixture
def dsrl_run(monkeypatch, tmp_path, toy_base):  # noqa: F811
    """run_finetune on the toy bandit; every call starts from its own copy of the same base head."""
    normalizer = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    config = {"task": {"name": "toy", "action_key": "action"}, "policy": {"name": "flow", "config": TOY_FLOW}}
    obs = toy_batch(64, torch.Generator().manual_seed(5))["obs"]

    def success(policy, *args, **kwargs):
        with torch.no_grad():
            return {"success_rate": float(toy_mode_stats(policy.predict_chunk(obs))[0][0]), "n_episodes": 8}

    monkeypatch.setattr(common, "load_start", lambda path: LoadedCheckpoint(
        copy.deepcopy(toy_base), normalizer, config, {"spec": TOY_SPEC.to_json()}, tmp_path / "start"))
    monkeypatch.setattr(common, "ObsBatcher", lambda *a, **k: IdentityBatcher())
    monkeypatch.setattr(common, "make_chunk_envs", lambda task, spec, n, **k: ClosableBandit(n))
    monkeypatch.setattr(batched_eval, "success_in_process", success)

    def run(out_dir, variant="sac", **algo):
        return dsrl_finetune.run_finetune("start", {"name": "toy"}, {**ALGO, **algo}, out_dir, 0, variant)
    return run


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant", ["sac", "na"])
def test_resume_continues_counters_replay_and_logs(dsrl_run, tmp_path, variant):
    out = tmp_path / "run"
    first = dsrl_run(out, variant, total_env_steps=128)  # 16 one-step episodes a chunk
    saved = torch.load(out / "last" / dsrl_resume.STATE_FILE, weights_only=False)
    assert saved["progress"]["env_steps"] == 128 and saved["replay"]["size"] == 128
    assert saved["grad_steps"] == first["grad_steps"] == 5 * 4  # chunks at 64..128 env steps, utd 0.25 x 16

    resumed = dsrl_run(out, variant, total_env_steps=256, resume_from=str(out / "last"))
    assert resumed["env_steps"] == 256 and resumed["grad_steps"] == 13 * 4
    state = torch.load(out / "last" / dsrl_resume.STATE_FILE, weights_only=False)
    assert state["replay"]["size"] == 256  # the first run's transitions were kept
    if variant == "na":
        assert state["prior_pool"]["size"] == 2 * 256
    rows = [r for r in _rows(out) if r.get("env_steps", 0) > 0]
    assert [r["env_steps"] for r in rows] == [64, 128, 192, 256]  # each evaluation once, in order
    wall = [r["wall_s"] for r in rows]
    assert wall == sorted(wall)  # the wall clock continues from the checkpoint's
    assert (out / "config_resume128.json").is_file()
    assert parameter_hash(common.load_start("x").policy) == resumed["base_parameter_hash"]


def test_resume_restores_the_learner_exactly(dsrl_run, tmp_path, toy_base):  # noqa: F811
    out = tmp_path / "run"
    dsrl_run(out, "na", total_env_steps=128)
    state = torch.load(out / "last" / dsrl_resume.STATE_FILE, weights_only=False)
    steered = SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW, NoiseActorConfig(hidden_dims=(32,))),
                            base=copy.deepcopy(toy_base))
    cfg = DSRLConfig(**{**ALGO, "critic_hidden": (32, 32), "actor": NoiseActorConfig(hidden_dims=(32,))})
    learner = DSRLLearner(steered, cfg, "na", seed=7)
    dsrl_resume.resume_training(out / "last", learner, "dsrl_na", parameter_hash(toy_base))
    again = dsrl_resume.training_state(learner, state["best_rate"])
    for key in ("q_w", "q_a", "q_a_targ", "temperature"):
        assert all(torch.equal(a, b) for a, b in zip(again[key].values(), state[key].values(), strict=True))
    assert again["opt_qa"]["state"][0]["exp_avg"].equal(state["opt_qa"]["state"][0]["exp_avg"])
    assert again["replay"]["data"]["w"].equal(state["replay"]["data"]["w"])
    assert again["progress"] == state["progress"] and again["grad_steps"] == state["grad_steps"]
    assert torch.equal(again["generator"], state["generator"])


def test_resume_errors_name_the_fix(dsrl_run, tmp_path, toy_base):  # noqa: F811
    out = tmp_path / "run"
    dsrl_run(out, "sac", total_env_steps=128)
    with pytest.raises(ValueError, match="holds no dsrl_state.pt: give the last/"):
        dsrl_run(tmp_path / "b", "sac", total_env_steps=256, resume_from=str(out / "best"))
    with pytest.raises(ValueError, match="written by algo=dsrl, not dsrl_na"):
        dsrl_run(tmp_path / "c", "na", total_env_steps=256, resume_from=str(out / "last"))
    with pytest.raises(ValueError, match="another base head"):
        learner = DSRLLearner(SteeredPolicy(TOY_SPEC, SteeredPolicy.Config("flow", TOY_FLOW), base=toy_base),
                              DSRLConfig(), "sac")
        dsrl_resume.resume_training(out / "last", learner, "dsrl", "0" * 64)
    with pytest.raises(ValueError, match="does not fit this run"):
        dsrl_run(tmp_path / "d", "sac", total_env_steps=256, critic_hidden=[16], resume_from=str(out / "last"))


def test_replay_round_trip_keeps_rows_and_ring_position():
    buf = ReplayBuffer(5)
    for i in range(7):  # wraps: rows hold 5, 6, 2, 3, 4 and the next write goes to row 2
        buf.add({"x": torch.full((1, 2), float(i)), "obs": {"s": torch.full((1, 3), float(i))}})
    again = ReplayBuffer(5)
    again.load_state_dict(buf.state_dict())
    assert (again.size, again.pos) == (5, 2)
    assert again.data["x"][:, 0].tolist() == [5, 6, 2, 3, 4] and again.data["obs"]["s"].equal(buf.data["obs"]["s"])
    part = ReplayBuffer(5)
    part.add({"x": torch.ones(2, 2)})
    state = part.state_dict()
    assert state["data"]["x"].shape == (2, 2)  # only the filled rows are saved
    again = ReplayBuffer(5)
    again.load_state_dict(state)
    again.add({"x": torch.zeros(1, 2)})
    assert again.size == 3 and again.data["x"][2].equal(torch.zeros(2))
    with pytest.raises(ValueError, match="keep the replay size"):
        ReplayBuffer(6).load_state_dict(state)

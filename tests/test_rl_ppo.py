"""PPO on the denoising chain (robopolicy/rl/ppo.py) and the chunk-level rollouts (robopolicy/rl/rollout.py):
the ratio is exactly 1 before the first update (a time-grid mismatch breaks it), GAE, KL early stop, and
ChunkEnv's history, reward and autoreset bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rl_toy import SPEC, Bandit, IdentityBatcher, QuickSuccess, bandit_envs, pretrained_bimodal_flow

from robopolicy.policies.base import Chain
from robopolicy.rl.ppo import PPO, PPOConfig, ValueCritic, compute_gae
from robopolicy.rl.reinflow import ReinFlowConfig, attach_noise_net, evaluate_terms
from robopolicy.rl.rollout import ChunkEnv

torch.set_num_threads(1)


def _ppo(steps: int = 30, **ppo_kw) -> PPO:
    p = pretrained_bimodal_flow(steps=steps)
    cfg = ReinFlowConfig(ppo=PPOConfig(n_envs=4, n_steps=3, minibatch_size=6, critic_hidden=(16,), **ppo_kw))
    net = attach_noise_net(p, cfg)
    vel = [q for n, q in p.named_parameters() if not n.startswith("step_std.")]
    return PPO(p, ValueCritic(p, cfg.ppo.critic_hidden), cfg.ppo,
               [{"params": vel, "lr": 1e-3}, {"params": list(net.parameters()), "lr": 1e-3}], evaluate_terms(p))


def test_ratio_is_exactly_one_before_the_first_update():
    torch.manual_seed(0)
    ppo = _ppo()
    envs = bandit_envs(4)
    batch, _, _ = ppo.collect(envs, IdentityBatcher(), envs.reset(0))
    assert len(batch) == 12 and batch.chains.n_steps == 4
    with torch.no_grad():
        new_lp, entropy = ppo.evaluate_terms(batch.obs, batch.chains)
    ratio = (new_lp - batch.old_step_log_probs).exp()
    assert float((ratio - 1).abs().max()) < 1e-5
    assert entropy.shape == (12, 4)
    # the loop's own check, measured on the first minibatch before any optimizer step
    logs = ppo.update(batch)
    assert logs["ppo/first_ratio_max_dev"] < 1e-5

    # ReinFlow pitfall 1: recomputing on another grid (linspace(0, 1, K), as the official rollout does)
    # moves the ratio away from 1 — this is what the check above guards against.
    c = batch.chains
    wrong = Chain(c.xs, c.means, c.stds, torch.linspace(0, 1, c.n_steps))
    with torch.no_grad():
        bad = (ppo.evaluate_terms(batch.obs, wrong)[0] - batch.old_step_log_probs).exp()
    assert float((bad - 1).abs().max()) > 1e-3


def test_update_changes_the_policy_and_stops_early_on_kl():
    torch.manual_seed(0)
    ppo = _ppo(update_epochs=50, target_kl=1e-9, critic_warmup_iters=0)
    envs = bandit_envs(4)
    batch, _, _ = ppo.collect(envs, IdentityBatcher(), envs.reset(0))
    before = [q.detach().clone() for q in ppo.policy.parameters()]
    logs = ppo.update(batch)
    assert logs["ppo/early_stop"] == 1.0 and logs["ppo/epochs"] == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, ppo.policy.parameters(), strict=True))
    critic_only = ppo.update(batch, train_actor=False)
    assert "loss/policy" not in critic_only and "loss/value" in critic_only


def _adam_steps(opt: torch.optim.Optimizer) -> int:
    return max(int(st["step"]) for st in opt.state.values())


@pytest.mark.parametrize("critic_after_kl_stop", [False, True])
def test_kl_early_stop_stops_the_actor_and_optionally_not_the_critic(critic_after_kl_stop):
    torch.manual_seed(0)
    ppo = _ppo(update_epochs=5, target_kl=1e-9, critic_warmup_iters=0, critic_after_kl_stop=critic_after_kl_stop)
    envs = bandit_envs(4)
    batch, _, _ = ppo.collect(envs, IdentityBatcher(), envs.reset(0))  # 12 samples: 2 minibatches an epoch
    logs = ppo.update(batch)
    assert logs["ppo/early_stop"] == 1.0 and logs["ppo/epochs"] == 1.0
    assert _adam_steps(ppo.actor_opt) == 2  # the minibatch that passed the KL target still stepped
    assert _adam_steps(ppo.critic_opt) == (5 * 2 if critic_after_kl_stop else 2)


def test_gae_matches_a_hand_computation_and_stops_at_episode_ends():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    last = torch.tensor([0.7])
    adv, ret = compute_gae(rewards, values, dones, last, gamma, lam)
    d2 = 2.0 + gamma * 0.7 - 0.3
    d1 = 0.0 - 0.4  # episode ended at step 1: no bootstrap from step 2
    d0 = 1.0 + gamma * 0.4 - 0.5
    want = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    assert torch.allclose(adv, want) and torch.allclose(ret, want + values)


def test_chunk_env_keeps_history_sums_rewards_and_resets_itself():
    env = ChunkEnv(Bandit(), n_obs_steps=2, n_action_steps=3, max_episode_steps=4)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (2, 2) and np.array_equal(obs["state"][0], obs["state"][1])  # first-frame padding
    obs, r, term, trunc, info = env.step(np.array([[0.5, 0], [-0.5, 0], [0.5, 0]], np.float32))
    assert r == 0.5 and info["env_steps"] == 3 and not info["done"] and not (term or trunc)
    obs, r, _, _, info = env.step(np.array([[0.5, 0], [0.5, 0], [0.5, 0]], np.float32))
    # the episode ends after its 4th step (mid-chunk); ChunkEnv reports it and starts the next one
    assert info["done"] and info["env_steps"] == 1 and info["episode_done"] and info["episode_length"] == 4
    assert info["episode_return"] == 0.75 and info["episode_success"]
    assert np.array_equal(obs["state"][0], obs["state"][1])  # a fresh episode's padded history
    out_of_range = env.step(np.full((3, 2), 5.0, np.float32))  # clipped into the action space
    assert out_of_range[1] == 0.75


def test_reward_scale_and_offset_are_paid_per_env_step_and_leave_success_alone():
    from robopolicy.rl.common import chunk_env_fn

    env = ChunkEnv(Bandit(), n_obs_steps=2, n_action_steps=3, max_episode_steps=4, reward_offset=-1.0)
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.array([[0.5, 0], [-0.5, 0], [0.5, 0]], np.float32))
    assert r == 0.5 - 3.0 and info["env_steps"] == 3
    _, r, _, _, info = env.step(np.array([[0.5, 0], [0.5, 0], [0.5, 0]], np.float32))
    assert r == 0.25 - 1.0 and info["episode_done"] and info["episode_success"]  # one step ran before the end
    scaled = ChunkEnv(Bandit(), n_obs_steps=2, n_action_steps=3, max_episode_steps=4, reward_scale=4.0,
                      reward_offset=-1.0)
    scaled.reset(seed=0)
    assert scaled.step(np.array([[0.5, 0], [-0.5, 0], [0.5, 0]], np.float32))[1] == 4 * 0.5 - 3.0
    for bad in ({"reward_offset": float("nan")}, {"reward_scale": 0.0}):
        with pytest.raises(ValueError, match="reward_scale"):
            ChunkEnv(Bandit(), 2, 3, 4, **bad)
    fn = chunk_env_fn({"env": "pusht", "reward_offset": -1, "reward_scale": 0.1}, SPEC)
    assert (fn.reward_offset, fn.reward_scale) == (-1.0, 0.1)
    assert (chunk_env_fn({"env": "pusht"}, SPEC).reward_offset, chunk_env_fn({"env": "pusht"}, SPEC).reward_scale) == (0, 1)


def test_vector_env_collects_episode_stats():
    envs = bandit_envs(3)
    envs.reset(0)
    _, reward, done, n = envs.step(np.ones((3, 4, 2), np.float32))
    assert n == 12 and done.tolist() == [1.0, 1.0, 1.0] and np.allclose(reward, 1.0)
    stats = envs.pop_stats().summary()
    assert stats["episodes"] == 3 and stats["success_rate"] == 1.0 and envs.total_env_steps == 12
    assert envs.pop_stats().summary() == {}


class _NoReward(Bandit):
    def step(self, action):
        obs, _, term, trunc, _ = super().step(action)
        return obs, 0.0, term, trunc, {"success": False}


def test_recent_rollout_success_is_not_fooled_by_quick_successes_after_a_reset():
    from robopolicy.rl.rollout import ChunkVectorEnv

    envs = ChunkVectorEnv(lambda: ChunkEnv(QuickSuccess(), 1, 1, 6), 64, in_process=True, recent_episodes=400)
    envs.reset(0)
    per_step = []
    for step in range(60):
        envs.step(np.zeros((64, 1, 2), np.float32))
        per_step.append(envs.pop_stats().summary().get("success_rate"))
        if step < 5:  # some env is still in its first episode: no windowed rate yet
            assert envs.recent_success_rate is None
        if step == 5:  # every first episode is in; the quick envs' repeat successes are not
            assert abs(envs.recent_success_rate - 0.5) < 0.15
    # the per-iteration rate right after the reset counts only the quick successes
    assert per_step[0] == 1.0
    assert abs(envs.recent_success_rate - 0.5) < 0.1
    envs.reset(1)  # a reset starts a new window
    assert envs.recent_success_rate is None


def test_a_rollout_without_reward_does_not_move_the_actor():
    """Sparse-reward pitfall: a batch with no reward is critic noise; the actor must not train on it."""
    from robopolicy.rl.ppo import PPOHooks
    from robopolicy.rl.rollout import ChunkVectorEnv

    torch.manual_seed(0)
    ppo = _ppo(critic_warmup_iters=0)
    envs = ChunkVectorEnv(lambda: ChunkEnv(_NoReward(), 1, 4, 4), 4, in_process=True)
    before = [q.detach().clone() for q in ppo.policy.parameters()]
    rows = []
    ppo.run(envs, IdentityBatcher(), 0, 1, None, PPOHooks(), lambda i, row: rows.append(row))
    assert rows[0]["ppo/actor_skipped_rewardless"] == 1.0 and "loss/policy" not in rows[0]
    assert all(torch.equal(a, b) for a, b in zip(before, ppo.policy.parameters(), strict=True))
    # with rewards the same loop trains the actor
    ppo.run(bandit_envs(4), IdentityBatcher(), 0, 2, None, PPOHooks(), lambda i, row: rows.append(row))
    assert rows[-1]["ppo/actor_skipped_rewardless"] == 0.0 and "loss/policy" in rows[-1]


def test_actor_lr_warm_up_ramps_every_actor_group_over_its_first_updates():
    from robopolicy.rl.ppo import PPOHooks

    torch.manual_seed(0)
    ppo = _ppo(critic_warmup_iters=1, actor_lr_warmup_iters=3)
    base = list(ppo.actor_base_lrs)
    rows = []
    ppo.run(bandit_envs(4), IdentityBatcher(), 0, 5, None, PPOHooks(), lambda i, row: rows.append(row))
    # iteration 0 only fits the critic; the actor's updates 1, 2, 3, 4 run at 1/3, 2/3, 1, 1 of the base rates
    assert "ppo/actor_lr_scale" not in rows[0]
    assert [round(r["ppo/actor_lr_scale"], 4) for r in rows[1:]] == [0.3333, 0.6667, 1.0, 1.0]
    assert [g["lr"] for g in ppo.actor_opt.param_groups] == base and ppo.state.actor_updates == 4
    with pytest.raises(ValueError, match="actor_lr_warmup_iters"):
        PPOConfig(actor_lr_warmup_iters=-1).validate()


def test_task_from_config_reads_the_yaml_and_names_the_choices_for_a_bad_task(tmp_path):
    from robopolicy.rl.common import task_from_config, task_label

    (tmp_path / "metaworld.yaml").write_text("name: metaworld\nenv: metaworld_reach\nmax_episode_steps: 500\n")
    assert task_from_config("metaworld", root=tmp_path)["env"] == "metaworld_reach"
    assert task_from_config("metaworld", "metaworld_push", root=tmp_path)["env"] == "metaworld_push"
    assert task_label(task_from_config("metaworld", "metaworld_push", root=tmp_path)) == "metaworld_push"
    with pytest.raises(ValueError, match=r"no .*nope.yaml; choose one of \['metaworld'\]"):
        task_from_config("nope", root=tmp_path)

"""rl.batched_eval.success_in_process: paired, seeded evaluation of a whole block of episodes at once."""

from __future__ import annotations

from rl_toy import Bandit, pretrained_bimodal_flow

from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
from robopolicy.rl.batched_eval import success_in_process
from sim import registry

TASK = {"name": "toy", "env": "toy_bandit", "env_kwargs": {}, "max_episode_steps": 4}


def test_same_noise_seed_pairs_the_episodes_and_a_new_one_redraws(monkeypatch):
    # The bimodal head succeeds on the bandit only when its noise picks the +x mode, so the outcome of each
    # episode is decided by the noise stream alone.
    monkeypatch.setitem(registry._TASKS, "toy_bandit",
                        registry.TaskSpec("toy_bandit", lambda **_: Bandit(), None, 4, 10.0))
    policy = pretrained_bimodal_flow(steps=200)
    norm = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    a = success_in_process(policy, norm, TASK, seed=100, n_episodes=48, noise_seed=0)
    b = success_in_process(policy, norm, TASK, seed=100, n_episodes=48, noise_seed=0)
    c = success_in_process(policy, norm, TASK, seed=100, n_episodes=48, noise_seed=1)
    assert a["n_episodes"] == 48 and len(a["successes"]) == 48 and a["seed"] == 100
    assert a["successes"] == b["successes"]  # same seeds and noise: the same episodes
    assert a["successes"] != c["successes"]  # another noise stream: other modes picked
    assert 0.2 < a["success_rate"] < 0.8  # both modes are sampled
    assert a["length_mean"] == 4.0


def test_a_steered_policy_is_evaluated_with_its_actor_mean_as_deployed(monkeypatch):
    """DSRL's in-run evaluations pick its best/ checkpoint: they must run the policy that `robopolicy eval` and the
    daemon run (the actor's mean noise), not samples of the actor, so the noise stream changes nothing."""
    import dataclasses

    from robopolicy.policies.steered import SteeredPolicy

    monkeypatch.setitem(registry._TASKS, "toy_bandit",
                        registry.TaskSpec("toy_bandit", lambda **_: Bandit(), None, 4, 10.0))
    base = pretrained_bimodal_flow(steps=200)
    steered = SteeredPolicy(base.spec, SteeredPolicy.Config(base_name="flow", base_config=dataclasses.asdict(base.cfg)),
                            base=base)
    norm = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    a = success_in_process(steered, norm, TASK, seed=100, n_episodes=48, noise_seed=0)
    b = success_in_process(steered, norm, TASK, seed=100, n_episodes=48, noise_seed=1)
    assert a["successes"] == b["successes"]


def test_blocks_of_episodes_keep_the_seeds_and_the_first_blocks_noise(monkeypatch):
    """`max_batch` bounds how many envs live at once (robosuite's take ~130 MB each) without moving any episode's
    seed; the first block draws the same noise as the whole run at once (one chunk per bandit episode)."""
    import pytest

    monkeypatch.setitem(registry._TASKS, "toy_bandit",
                        registry.TaskSpec("toy_bandit", lambda **_: Bandit(), None, 4, 10.0))
    policy = pretrained_bimodal_flow(steps=200)
    norm = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    whole = success_in_process(policy, norm, TASK, seed=100, n_episodes=40, noise_seed=0)
    assert success_in_process(policy, norm, TASK, 100, 40, 0, max_batch=40)["successes"] == whole["successes"]
    blocks = success_in_process(policy, norm, TASK, seed=100, n_episodes=40, noise_seed=0, max_batch=16)
    assert len(blocks["successes"]) == 40 and blocks["length_mean"] == 4.0
    assert blocks["successes"][:16] == whole["successes"][:16]
    assert blocks["successes"][16:] != whole["successes"][16:]  # the later blocks draw from their own streams
    with pytest.raises(ValueError, match="max_batch"):
        success_in_process(policy, norm, TASK, 100, 4, 0, max_batch=0)

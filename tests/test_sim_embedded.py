"""The embedded MuJoCo tasks: registry, spaces, seeded determinism, success checks and the experts."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("mujoco")

from sim.embedded.env import FULL_STATE_DIM, PROPRIO_DIM  # noqa: E402
from sim.embedded.mjcf import BLOCK_HALF  # noqa: E402
from sim.registry import get_task, make_env, make_expert  # noqa: E402

TASKS = ["embedded_push", "embedded_pick_place", "embedded_stack", "embedded_multitask"]


@pytest.fixture(scope="module")
def pixel_env():
    env = make_env("embedded_multitask", image_size=(64, 80), depth=True)
    yield env
    env.close()


def test_tasks_registered_with_shared_spaces():
    assert all(get_task(t).name == t for t in TASKS)  # (list_tasks would import robosuite too)
    envs = [make_env(t, obs_mode="both") for t in TASKS]
    try:
        for env in envs[1:]:
            assert env.observation_space == envs[0].observation_space
            assert env.action_space == envs[0].action_space
        assert envs[0].action_space.shape == (5,) and envs[0].action_space.dtype == np.float32
        assert get_task("embedded_stack").max_episode_steps == envs[2].max_episode_steps
    finally:
        for env in envs:
            env.close()


def test_observation_shapes_dtypes_and_info(pixel_env):
    obs, info = pixel_env.reset(seed=3)
    space = pixel_env.observation_space
    assert (
        set(obs)
        == set(space.spaces)
        == {"state", "images/front", "images/wrist", "depth/front", "depth/wrist"}
    )
    assert obs["state"].shape == (FULL_STATE_DIM,) and obs["state"].dtype == np.float32
    assert obs["images/front"].shape == (64, 80, 3) and obs["images/front"].dtype == np.uint8
    assert obs["depth/wrist"].shape == (64, 80) and obs["depth/wrist"].dtype == np.uint16
    assert space.contains(obs)
    assert isinstance(info["success"], bool) and not info["success"]
    assert info["score"] == 0.0 and info["language"]
    obs, reward, term, trunc, info = pixel_env.step(np.zeros(5, np.float32))
    assert space.contains(obs) and isinstance(info["success"], bool) and info["language"]
    # Depth is metric: the front camera is ~1 m from the table.
    assert 500 < np.median(obs["depth/front"]) < 2000


def test_front_image_is_upright(pixel_env):
    obs, _ = pixel_env.reset(seed=0)
    img = obs["images/front"].astype(float)
    table = (img[..., 0] > 120) & (img[..., 0] > img[..., 2] + 30)  # the table is orange-brown
    h = img.shape[0]
    # The table fills the bottom of an upright image and not the top (where floor and arm are).
    assert table[-h // 4 :].mean() > 0.8
    assert table[: h // 8].mean() < 0.3


def test_state_and_pixels_modes():
    env = make_env("embedded_push", obs_mode="state")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state"} and obs["state"].shape == (FULL_STATE_DIM,)
    env = make_env("embedded_push", obs_mode="pixels")
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (PROPRIO_DIM,)  # an image policy only sees proprioception
    assert obs["images/front"].shape == (96, 96, 3)
    env.close()


def test_seeded_reset_is_reproducible():
    a = make_env("embedded_multitask", image_size=(48, 48))
    b = make_env("embedded_multitask", image_size=(48, 48))
    try:
        oa, ia = a.reset(seed=11)
        ob, ib = b.reset(seed=11)
        assert ia["language"] == ib["language"]
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
        rng = np.random.default_rng(0)
        for _ in range(4):
            act = rng.uniform(-1, 1, 5).astype(np.float32)
            oa, *_ = a.step(act)
            ob, *_ = b.step(act)
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
        oc, _ = a.reset(seed=12)
        assert not np.array_equal(oc["state"], ob["state"])
    finally:
        a.close()
        b.close()


def test_multitask_draws_goals_and_colours():
    env = make_env("embedded_multitask", obs_mode="state")
    langs = {env.reset(seed=s)[1]["language"] for s in range(30)}
    assert any(lang.startswith("push") for lang in langs)
    assert any(lang.startswith("put") for lang in langs)
    assert any(lang.startswith("stack") for lang in langs)
    assert len(langs) >= 8


def test_multitask_kinds_narrow_the_draw():
    env = make_env("embedded_multitask", obs_mode="state", kinds=["push"])
    langs = {env.reset(seed=s)[1]["language"] for s in range(20)}
    assert langs == {f"push the {c} block to the target" for c in ("red", "green", "blue")}
    # All three kinds (the default) draw exactly what the env drew before the option existed.
    full = make_env("embedded_multitask", obs_mode="state", kinds=["push", "pick_place", "stack"])
    default = make_env("embedded_multitask", obs_mode="state")
    for seed in range(5):
        np.testing.assert_array_equal(full.reset(seed=seed)[0]["state"], default.reset(seed=seed)[0]["state"])
    with pytest.raises(ValueError, match="subset"):
        make_env("embedded_multitask", obs_mode="state", kinds=["throw"])
    with pytest.raises(ValueError, match="multitask"):
        make_env("embedded_push", obs_mode="state", kinds=["push"])


def test_success_checks_from_object_poses():
    env = make_env("embedded_stack", obs_mode="state")
    env.reset(seed=0)
    scene = env.unwrapped.scene
    red, _ = scene.block_pose("red")
    scene.set_block_pose("blue", red + np.array([0.0, 0.0, 2 * BLOCK_HALF + 0.001]), 0.3)
    scene.step(100)
    assert env.unwrapped._info()["success"]
    env = make_env("embedded_pick_place", obs_mode="state")
    env.reset(seed=0)
    scene = env.unwrapped.scene
    assert not env.unwrapped._info()["success"]
    scene.set_block_pose("green", np.array([*scene.target_pos()[:2], BLOCK_HALF]), 0.0)
    scene.step(50)
    assert env.unwrapped._info()["success"]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="obs_mode"):
        make_env("embedded_push", obs_mode="rgb")
    with pytest.raises(ValueError, match="cameras"):
        make_env("embedded_push", cameras=("side",))
    env = make_env("embedded_push", obs_mode="state")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(5, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(5, np.nan, np.float32))


def test_arm_follows_end_effector_deltas():
    env = make_env("embedded_push", obs_mode="state")
    env.reset(seed=0)
    scene = env.unwrapped.scene
    start = scene.ee_pos()
    for _ in range(5):
        env.step(np.array([1.0, 0.0, -0.5, 0.0, -1.0], np.float32))
    moved = scene.ee_pos() - start
    assert moved[0] > 0.12 and moved[2] < -0.06 and abs(moved[1]) < 0.02
    # The gripper keeps pointing down: tool z axis along -world z.
    assert scene.data.site_xmat[scene.tcp_site].reshape(3, 3)[2, 2] < -0.99


@pytest.mark.parametrize("task", ["embedded_push", "embedded_pick_place", "embedded_stack"])
@pytest.mark.parametrize("seed", [0, 1])
def test_expert_succeeds(task, seed):
    env = make_env(task, obs_mode="state")
    expert = make_expert(task, env)
    obs, info = env.reset(seed=seed)
    expert.reset(seed)
    for _ in range(env.max_episode_steps):
        action = expert.act(obs, info)
        assert action.dtype == np.float32 and env.action_space.contains(action)
        obs, _, term, trunc, info = env.step(action)
        if term or trunc:
            break
    assert info["success"], f"expert failed '{info['language']}' on seed {seed}"


def _expert_actions(env, expert, env_seed: int, expert_seed: int, n: int = 12) -> np.ndarray:
    """The expert's first n actions on the layout of env_seed, with its style drawn from expert_seed."""
    obs, info = env.reset(seed=env_seed)
    expert.reset(expert_seed)
    acts = []
    for _ in range(n):
        acts.append(expert.act(obs, info))
        obs, _, _, _, info = env.step(acts[-1])
    return np.stack(acts)


def test_expert_is_seeded_and_varies():
    env = make_env("embedded_pick_place", obs_mode="state")
    expert = make_expert("embedded_pick_place", env)
    np.testing.assert_array_equal(_expert_actions(env, expert, 0, 5), _expert_actions(env, expert, 0, 5))
    assert not np.allclose(_expert_actions(env, expert, 0, 5), _expert_actions(env, expert, 0, 6))


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_expert_success_rate_over_20_seeds(task):
    env = make_env(task, obs_mode="state")
    expert = make_expert(task, env)
    wins = 0
    for seed in range(100, 120):
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(expert.act(obs, info))
            done = term or trunc
        wins += info["success"]
    assert wins >= 18, f"{task}: expert succeeded on {wins}/20 seeds"


def test_plain_expert_style_is_the_same_every_episode():
    env = make_env("embedded_pick_place", obs_mode="state")
    expert = make_expert("embedded_pick_place", env, style="plain")
    # Same layout: the same actions whatever the expert's seed.
    np.testing.assert_array_equal(_expert_actions(env, expert, 0, 5), _expert_actions(env, expert, 0, 6))
    with pytest.raises(ValueError, match="style"):
        make_expert("embedded_pick_place", env, style="fancy")
    with pytest.raises(ValueError, match="does not take"):
        make_expert("embedded_pick_place", env, speed=1.0)

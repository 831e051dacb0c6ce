"""Recording/training and evaluation/runtime build identical point clouds from the same depth frame.

Recording: `collect_demos` with env_kwargs {pointcloud: ...} stores the `pointcloud` key; training reads it
back through SequenceDataset. Evaluation: PolicyAgent turns the same env_kwargs into the runner's worker env
(TaskEnvFn + env_wrapper) and prepares the observation history as the eval runner hands it over. Runtime:
`pointcloud_from_frame` on a depth frame and the camera geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.data import EpisodeStore
from robopolicy.data.dataset import SequenceConfig, SequenceDataset
from robopolicy.eval.demos import collect_demos
from robopolicy.eval.envs import TaskEnvFn, WorkerEnvFn
from robopolicy.perception import pointcloud_from_frame
from robopolicy.perception.env import camera_geometries, make_env, split_pointcloud_kwargs
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.registry import make_policy
from robopolicy.policy_agent import PolicyAgent

torch.set_num_threads(1)
TASK = "embedded_push"
ENV_KWARGS = {"obs_mode": "pixels", "image_size": [64, 64], "cameras": ["front"],
              "pointcloud": {"num_points": 128, "color": True}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("pc") / "push.zarr"
    res = collect_demos(TASK, 1, path, seed=5, image_size=None, obs_mode=None, env_kwargs=ENV_KWARGS,
                        progress=False, max_attempts=3)
    assert res.n_written == 1
    return EpisodeStore.open(path, mode="r")


def test_recording_training_and_eval_paths_give_identical_tensors(store):
    assert store.schema.fields["pointcloud"].shape == (128, 6)
    seed = store.episode_attrs(0)["seed"]
    # training path: the first window (T_o = 2, padded with the first frame), normalised as in training
    ds = SequenceDataset(store, SequenceConfig(obs_keys=["pointcloud", "state"], horizon=8, n_action_steps=4,
                                               val_ratio=0.0), split="train")
    normalizer = ds.get_normalizer()
    assert normalizer["pointcloud"].kind == "identity"
    sample = ds[0]
    train_pc = normalizer.normalize({"pointcloud": sample["obs"]["pointcloud"][None].float()})["pointcloud"]
    # eval path: the agent's env (what the runner builds per worker) reset with the demo's seed
    spec = PolicySpec(obs_shapes={"pointcloud": (128, 6), "state": (14,)}, action_dim=5, n_obs_steps=2,
                      horizon=8, n_action_steps=4)
    policy = make_policy("flow", spec, {"unet": {"down_dims": [16, 32], "diffusion_step_embed_dim": 8,
                                                 "n_groups": 4}})
    agent = PolicyAgent(policy, normalizer, env_kwargs={k: v for k, v in ENV_KWARGS.items() if k != "image_size"}
                        | {"image_size": (64, 64)})
    assert "pointcloud" not in agent.env_kwargs and agent.env_wrapper is not None
    env = WorkerEnvFn(TaskEnvFn(TASK, agent.env_kwargs), agent.env_wrapper).build()
    try:
        obs, _ = env.reset(seed=seed)
        history = {k: np.stack([v, v])[None] for k, v in obs.items()}  # the runner's first-frame padding
        eval_pc = agent.prepare_obs(history)["pointcloud"]
        assert eval_pc.shape == (1, 2, 128, 6)
        assert torch.equal(eval_pc, train_pc)
        # runtime path: the one function on the stored depth frame and the camera's geometry
        frame = store.get_episode(0, ["depth/front", "images/front", "pointcloud"])
        again = pointcloud_from_frame({"front": frame["depth/front"][0]}, camera_geometries(env, ("front",)),
                                      env.cfg,
                                      {"front": frame["images/front"][0]})
        assert np.array_equal(again, frame["pointcloud"][0])
        assert agent.act(history).shape == (1, 4, 5)
    finally:
        env.close()


def test_pointcloud_kwargs_are_checked_early():
    with pytest.raises(ValueError, match="obs_mode=pixels"):
        split_pointcloud_kwargs({"obs_mode": "state", "pointcloud": {}})
    with pytest.raises(ValueError, match="unknown pointcloud option"):
        split_pointcloud_kwargs({"pointcloud": {"n_points": 3}})
    with pytest.raises(ValueError, match="among the env's cameras"):
        split_pointcloud_kwargs({"cameras": ["wrist"], "pointcloud": {"cameras": ["front"]}})
    kwargs, wrapper = split_pointcloud_kwargs({"obs_mode": "pixels"})
    assert wrapper is None and "depth" not in kwargs


def test_sim_points_land_on_the_table_and_the_blocks():
    env = make_env(TASK, obs_mode="pixels", image_size=(64, 64), cameras=("front", "wrist"),
                   pointcloud={"num_points": 256, "cameras": ["front", "wrist"], "color": True,
                               "keep_images": False})
    try:
        obs, _ = env.reset(seed=1)
        assert "images/front" not in obs and obs["pointcloud"].shape == (256, 6)
        pc = obs["pointcloud"]
        lo, hi = env.unwrapped.pointcloud_workspace
        assert np.all(pc[:, :3] >= np.float32(lo)) and np.all(pc[:, :3] <= np.float32(hi))
        table = pc[np.abs(pc[:, 2]) < 4e-3]
        assert len(table) > 100  # most of the box is table top, at z = 0 in the base frame
        state = env.unwrapped.full_state()
        red_xyz = state[14:17]
        red = pc[(pc[:, 3] > 0.5) & (pc[:, 4] < 0.3) & (pc[:, 5] < 0.3)]
        assert len(red) >= 1
        assert np.linalg.norm(red[:, :2].mean(0) - red_xyz[:2]) < 0.03  # red points sit on the red block
        assert np.all(red[:, 2] < 0.045)  # no higher than its top (4 cm block)
    finally:
        env.close()

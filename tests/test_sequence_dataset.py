"""SequenceDataset: Diffusion Policy windows and padding, splits, workers, crops, cached statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_episode

from robopolicy.data import EpisodeStore
from robopolicy.data.dataset import SequenceConfig, SequenceDataset
from robopolicy.data.sampler import split_episodes


def _store(tmp_path, lengths=(12, 9, 15), **kw):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    for i, n in enumerate(lengths):
        store.add_episode(make_episode(n, seed=i, **kw))
    return store


def _reference_windows(ep_len, horizon, t_o, t_a):
    """Brute force: window starting at step s (may be negative) clamps indices into the episode."""
    out = []
    for s in range(-(t_o - 1), ep_len - horizon + (t_a - 1) + 1):
        out.append(np.clip(np.arange(s, s + horizon), 0, ep_len - 1))
    return out


@pytest.mark.parametrize("t_o,t_p,t_a", [(2, 16, 8), (1, 4, 1), (3, 8, 4)])
def test_windows_match_diffusion_policy_padding(tmp_path, t_o, t_p, t_a):
    lengths = (12, 9, 20)
    store = _store(tmp_path, lengths, image_hw=(4, 4))
    cfg = SequenceConfig(obs_keys=["state", "images/front"], n_obs_steps=t_o, horizon=t_p, n_action_steps=t_a, val_ratio=0)
    ds = SequenceDataset(store, cfg)
    expected = []
    for i, n in enumerate(lengths):
        ep = store.get_episode(i)
        for idx in _reference_windows(n, t_p, t_o, t_a):
            expected.append((ep, idx))
    assert len(ds) == len(expected)
    present = [s + t_o - 1 for n in lengths for s in range(-(t_o - 1), n - t_p + (t_a - 1) + 1)]
    np.testing.assert_array_equal(ds.window_steps(), present)  # the episode step each window sees as now
    for j in range(len(ds)):
        sample = ds[j]
        ep, idx = expected[j]
        np.testing.assert_array_equal(sample["action"].numpy(), ep["action"][idx])
        np.testing.assert_array_equal(sample["obs"]["state"].numpy(), ep["state"][idx[:t_o]])
        np.testing.assert_array_equal(
            sample["obs"]["images/front"].numpy(), ep["images/front"][idx[:t_o]].transpose(0, 3, 1, 2)
        )
        assert sample["obs"]["images/front"].dtype == torch.uint8
        assert sample["action"].dtype == torch.float32


def test_split_by_episode_is_disjoint_and_seeded(tmp_path):
    store = _store(tmp_path, lengths=(10,) * 10)
    cfg = SequenceConfig(n_obs_steps=2, horizon=4, n_action_steps=2, val_ratio=0.2, split_seed=3)
    train, val = SequenceDataset(store, cfg, "train"), SequenceDataset(store, cfg, "val")
    assert val.episode_mask.sum() == 2 and not (train.episode_mask & val.episode_mask).any()
    assert (train.episode_mask | val.episode_mask).all()
    np.testing.assert_array_equal(split_episodes(10, 0.2, 3), val.episode_mask)
    assert len(train) + len(val) == 10 * (10 - 4 + 1 + 1 + 1)
    limited = SequenceDataset(store, SequenceConfig(n_obs_steps=2, horizon=4, n_action_steps=2, val_ratio=0.2,
                                                    split_seed=3, max_train_episodes=3))
    assert limited.episode_mask.sum() == 3


def test_dataloader_with_workers_and_disk_reads(tmp_path):
    store = _store(tmp_path, lengths=(30, 25), image_hw=(16, 16))
    cfg = SequenceConfig(obs_keys=["state", "images/front"], image_cache_bytes=0, val_ratio=0)
    ds = SequenceDataset(store.path, cfg)
    assert ds._images is None  # reads from zarr
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    images = torch.cat([b["obs"]["images/front"] for b in batches])
    assert images.shape == (len(ds), 2, 3, 16, 16)
    np.testing.assert_array_equal(images[5].numpy(), ds[5]["obs"]["images/front"].numpy())


def test_random_crop_same_for_all_obs_frames(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    ep = make_episode(10, image_hw=(12, 12))
    ep["images/front"][:] = np.arange(144, dtype=np.uint8).reshape(1, 12, 12, 1)
    store.add_episode(ep)
    ds = SequenceDataset(store, SequenceConfig(obs_keys=["images/front"], image_crop=(8, 8), n_obs_steps=2,
                                               horizon=4, n_action_steps=2, val_ratio=0))
    corners = set()
    for j in range(len(ds)):
        img = ds[j]["obs"]["images/front"]
        assert img.shape == (2, 3, 8, 8)
        assert torch.equal(img[0], img[1])
        corners.add(int(img[0, 0, 0, 0]))
    assert len(corners) > 1  # crops move
    with pytest.raises(ValueError, match="larger than the images"):
        SequenceDataset(store, SequenceConfig(obs_keys=["images/front"], image_crop=(20, 20), val_ratio=0))[0]


def test_normalizer_cached_and_maps_actions_to_unit_box(tmp_path):
    store = _store(tmp_path)
    ds = SequenceDataset(store, SequenceConfig(obs_keys=["state", "images/front"], val_ratio=0))
    norm = ds.get_normalizer()
    cache = list((tmp_path / "s.zarr/.robopolicy_cache").glob("normalizer-*.safetensors"))
    assert len(cache) == 1
    actions = torch.from_numpy(np.concatenate([store.get_episode(i)["action"] for i in range(3)]))
    scaled = norm["action"](actions)
    assert scaled.min() == pytest.approx(-1, abs=1e-5) and scaled.max() == pytest.approx(1, abs=1e-5)
    assert sorted(norm.keys()) == sorted(ds.get_normalizer().keys())
    assert norm["images/front"](torch.full((1,), 255, dtype=torch.uint8)).item() == 1.0
    # Reopened from cache: same statistics.
    torch.testing.assert_close(ds.get_normalizer()["action"].scale, norm["action"].scale)


def test_bad_config_messages(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(KeyError, match=r"\['pointcloud'\] are not in"):
        SequenceDataset(store, SequenceConfig(obs_keys=["pointcloud"]))
    with pytest.raises(ValueError, match="n_action_steps"):
        SequenceDataset(store, SequenceConfig(n_obs_steps=2, horizon=4, n_action_steps=4))
    empty = EpisodeStore.create(tmp_path / "e.zarr", fps=10)
    with pytest.raises(ValueError, match="no episodes"):
        SequenceDataset(empty, SequenceConfig())


def test_start_window_pool_repeats_the_first_steps_and_the_sampler_draws_it(tmp_path):
    from robopolicy.train.data import EpochSampler, start_window_pool

    store = _store(tmp_path, lengths=(12, 9, 15))
    ds = SequenceDataset(store, SequenceConfig(n_obs_steps=2, horizon=8, n_action_steps=4, val_ratio=0))
    np.testing.assert_array_equal(start_window_pool(ds, 0, 5), np.arange(len(ds)))  # off
    pool = start_window_pool(ds, start_steps=3, repeat=4)
    counts = np.bincount(pool, minlength=len(ds))
    early = ds.window_steps() < 3
    assert early.sum() == 3 * 3  # steps 0, 1, 2 of each of the 3 episodes
    assert (counts[early] == 4).all() and (counts[~early] == 1).all()
    sampler = EpochSampler(len(ds), seed=7, pool=pool)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == sorted(pool.tolist()) and len(sampler) == len(pool)
    again = EpochSampler(len(ds), seed=7, pool=pool)
    again.set_epoch(2)
    assert list(again) == order  # the order depends on (seed, epoch) alone
    sampler.skip = (2, 5)
    assert list(sampler) == order[5:]  # resuming mid-epoch drops the drawn prefix
    with pytest.raises(ValueError, match="start_window_repeat"):
        start_window_pool(ds, 3, 0)

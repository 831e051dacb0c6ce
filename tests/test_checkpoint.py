"""Checkpoints: exact resume, atomic writes, robopolicy.load -> Agent on raw observations."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import ACTION_HIGH, ACTION_LOW, make_store  # noqa: E402

import robopolicy  # noqa: E402
from robopolicy.agent import Agent  # noqa: E402
from robopolicy.data.dataset import SequenceDataset  # noqa: E402
from robopolicy.train import CheckpointError, TaskConfig, TrainerConfig, load_checkpoint, train  # noqa: E402
from robopolicy.train import checkpoint as ckpt  # noqa: E402
from robopolicy.train.data import sequence_config  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory, _few_threads) -> Path:
    return make_store(tmp_path_factory.mktemp("ckpt") / "s.zarr")


TASK = dict(obs_keys=["state"], n_obs_steps=2, horizon=8, n_action_steps=4)


def _cfg(out: Path, **kw) -> TrainerConfig:
    base = dict(steps=50, batch_size=16, lr=1e-3, warmup_steps=5, val_every=10, checkpoint_every=20, log_every=1,
                out_dir=str(out), progress=False)
    base.update(kw)
    return TrainerConfig(**base)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory, _few_threads) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(TaskConfig(store=str(store), **TASK), "test_mlp", {},
          _cfg(out, steps=150, lr=3e-3, val_every=50, checkpoint_every=0, log_every=10))
    return out


def test_resume_reproduces_the_uninterrupted_run_exactly(store, tmp_path):
    task = TaskConfig(store=str(store), **TASK)
    full = train(task, "test_mlp", {}, _cfg(tmp_path / "full"))
    # Interrupted mid-epoch (an epoch is ~19 batches here), then resumed in a fresh Trainer.
    part = train(task, "test_mlp", {}, _cfg(tmp_path / "split"), stop_at=27)
    assert part.step == 27
    rest = train(task, "test_mlp", {}, _cfg(tmp_path / "split", resume=True))
    assert [s for s, _ in rest.losses] == list(range(28, 51))
    expected = dict(full.losses)
    assert all(loss == expected[s] for s, loss in rest.losses)  # bit-exact loss curve
    for name in ("model.safetensors", "train_state/raw_model.safetensors"):
        a, b = load_file(str(tmp_path / "full/last" / name)), load_file(str(tmp_path / "split/last" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert full.metrics["val/loss"] == rest.metrics["val/loss"]


def test_resume_from_best_is_refused(store, trained, tmp_path):
    with pytest.raises(CheckpointError, match="train_state"):
        train(TaskConfig(store=str(store), **TASK), "test_mlp", {}, _cfg(tmp_path, resume=str(trained / "best")))


def test_load_returns_an_agent_with_raw_actions(store, trained):
    agent = robopolicy.load(trained / "best")
    assert isinstance(agent, Agent)
    assert (agent.n_obs_steps, agent.n_action_steps, agent.nfe) == (2, 4, 1)
    ds = SequenceDataset(store, sequence_config(TaskConfig(store=str(store), **TASK)), split="train")
    items = [ds[i] for i in range(0, len(ds), max(1, len(ds) // 16))]
    obs = {"state": np.stack([it["obs"]["state"].numpy() for it in items])}
    actions = agent.act(obs)
    assert actions.shape == (len(items), 4, 2) and actions.dtype == np.float32
    truth = np.stack([it["action"].numpy()[1:5] for it in items])  # index T_o - 1 = 1 is the current step
    span = ACTION_HIGH - ACTION_LOW
    assert np.abs(actions - truth).mean() < 0.1 * span  # raw units, close to the demonstrations
    assert actions.min() > ACTION_LOW - 0.1 * span and actions.max() < ACTION_HIGH + 0.1 * span
    assert len(agent.latencies_ms) == 1 and agent.latencies_ms[0] > 0

    # The same numbers by hand: normalize -> predict_chunk -> unnormalize -> [T_o-1, T_o-1+T_a).
    loaded = load_checkpoint(trained / "best")
    with torch.no_grad():
        chunk = loaded.policy.predict_chunk(loaded.normalizer.normalize({"state": torch.from_numpy(obs["state"])}))
    manual = loaded.normalizer.unnormalize("action", chunk)[:, 1:5].numpy()
    np.testing.assert_allclose(actions, manual, rtol=0, atol=1e-6)

    # Fewer executed actions per call, chosen at inference: the first n of the same chunk.
    agent.set_action_steps(2)
    assert agent.n_action_steps == 2
    np.testing.assert_allclose(agent.act(obs), manual[:, :2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"action steps must be in \[1, "):
        agent.set_action_steps(0)


def test_agent_rejects_wrong_observations(trained):
    agent = robopolicy.load(trained / "best")
    with pytest.raises(KeyError, match="state"):
        agent.act({"images/top": np.zeros((1, 2, 8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="T_o=2"):
        agent.act({"state": np.zeros((1, 3, 4), np.float32)})


def test_commit_is_atomic_and_recovers_the_previous_version(tmp_path):
    final = tmp_path / "last"
    for version in ("v1", "v2"):
        tmp = ckpt.begin(final)
        (tmp / ckpt.META_FILE).write_text(version)
        ckpt.commit(final)
    assert (final / ckpt.META_FILE).read_text() == "v2"
    # A crash between moving the old version aside and renaming the new one in:
    old = tmp_path / ".last.old"
    final.rename(old)
    assert ckpt.resolve_checkpoint(final) == old
    # A crash while writing leaves a staging dir that the next save replaces.
    stale = ckpt.begin(final)
    (stale / "junk").write_text("x")
    assert not (ckpt.begin(final) / "junk").exists()


def test_incomplete_checkpoint_is_reported(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained / "best", broken)
    (broken / "normalizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="normalizer.safetensors"):
        robopolicy.load(broken)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        robopolicy.load(tmp_path / "nothing")


def test_agent_takes_hwc_uint8_images(tmp_path):
    store = make_store(tmp_path / "img.zarr", n_episodes=4, length=12, image_hw=(12, 16))
    task = TaskConfig(store=str(store), obs_keys=["images/front", "state"], n_obs_steps=2, horizon=8,
                      n_action_steps=4, val_ratio=0.0)
    train(task, "test_mlp", {"hidden": 16}, _cfg(tmp_path / "run", steps=3, val_every=0, checkpoint_every=0))
    agent = robopolicy.load(tmp_path / "run" / "last")
    assert agent.spec.obs_shapes == {"images/front": (3, 12, 16), "state": (4,)}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 2, 12, 16, 3), dtype=np.uint8)  # (B, T_o, H, W, C) as envs give them
    state = rng.normal(size=(2, 2, 4)).astype(np.float32)
    actions = agent.act({"images/front": images, "state": state, "language": ["", ""]})
    loaded = load_checkpoint(tmp_path / "run" / "last")
    chw = torch.from_numpy(images).permute(0, 1, 4, 2, 3).float() / 255.0
    norm_state = loaded.normalizer["state"](torch.from_numpy(state))
    with torch.no_grad():
        chunk = loaded.policy.predict_chunk({"images/front": chw, "state": norm_state})
    np.testing.assert_allclose(actions, loaded.normalizer.unnormalize("action", chunk)[:, 1:5].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(3, 12, 16\)"):
        agent.act({"images/front": images[:, :, :8], "state": state})

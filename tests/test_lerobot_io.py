"""LeRobot interop: export through lerobot's API, read back with lerobot itself, import back, compare."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lerobot")

from robopolicy.data import EpisodeStore  # noqa: E402
from robopolicy.data.lerobot_io import (  # noqa: E402
    SIDECAR_PATH,
    LeRobotFormatError,
    export_lerobot,
    import_lerobot,
)

LENGTHS = (12, 16, 20)
HW = 64
FPS = 10
# Measured with lerobot 0.6.1's default codec (AV1 / libsvtav1, crf 30, yuv420p) on these 64x64 images:
# mean absolute error ~2.9 (of 255), PSNR ~36.5 dB. The bounds leave room for other encoder builds.
MAX_MAE, MIN_PSNR = 5.0, 32.0


def _smooth_images(length: int, seed: int, cam: int) -> np.ndarray:
    """Slowly moving colour gradients: content a video codec represents well, different per frame."""
    t = np.arange(length)[:, None, None]
    yy, xx = np.mgrid[0:HW, 0:HW] / HW
    r = 128 + 100 * np.sin(2 * np.pi * (xx + 0.02 * t + 0.1 * cam + 0.07 * seed))
    g = 128 + 100 * np.cos(2 * np.pi * (yy - 0.015 * t))
    b = 128 + 80 * np.sin(2 * np.pi * (xx + yy)) * np.ones_like(t)
    return np.stack([r, g, b], -1).astype(np.uint8)


def _episode(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        # measured, irregular timestamps: LeRobot only keeps nominal ones, the sidecar keeps these
        "timestamp": 5000.0 + seed * 60 + np.cumsum(rng.uniform(0.09, 0.11, length)),
        "state": rng.standard_normal((length, 6)).astype(np.float32),
        "action": rng.standard_normal((length, 3)).astype(np.float32),
        "gripper": rng.random(length) > 0.5,  # low-dim key with per-step shape ()
        "tool/pose": rng.standard_normal((length, 2, 3)),  # float64, 2-D per step, '/' in the name
        "images/front": _smooth_images(length, seed, 0),
        "images/wrist": _smooth_images(length, seed, 1),
        "depth/front": rng.integers(0, 65535, (length, HW, HW), dtype=np.uint16),
    }


ATTRS = [
    {"task": "push", "language": "push the red block", "success": True, "source": "expert", "robot": "sim_arm"},
    {"task": "push", "language": "", "success": False, "source": "teleop", "robot": "sim_arm"},  # task as text
    {"task": "stack", "language": "stack the cubes", "success": None, "source": "policy", "robot": "sim_arm"},
]


def _image_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.abs(d).mean()), float(10 * np.log10(255.0**2 / max((d**2).mean(), 1e-12)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    store = EpisodeStore.create(root / "demo.zarr", fps=FPS)
    episodes = [_episode(n, seed) for seed, n in enumerate(LENGTHS)]
    for ep, attrs in zip(episodes, ATTRS, strict=True):
        store.add_episode(ep, attrs)
    return root, store, episodes


@pytest.fixture(scope="module")
def exported(source):
    root, store, _ = source
    out = export_lerobot(store.path, root / "demo_lerobot", progress=False)
    return out


@pytest.fixture(scope="module")
def reimported(source, exported):
    root, _, _ = source
    return import_lerobot(exported, root / "back.zarr", progress=False)


def test_lerobot_reads_our_export(source, exported):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _, store, episodes = source
    assert exported.name == "demo_lerobot" and (exported / SIDECAR_PATH).exists()
    ds = LeRobotDataset("local/demo", root=exported, video_backend="pyav")
    assert ds.num_episodes == 3 and ds.num_frames == sum(LENGTHS) and ds.fps == FPS
    f = ds.features
    assert f["observation.state"]["dtype"] == "float32" and tuple(f["observation.state"]["shape"]) == (6,)
    assert tuple(f["action"]["shape"]) == (3,)
    assert f["observation.images.front"]["dtype"] == "video" and f["observation.images.wrist"]["dtype"] == "video"
    assert tuple(f["observation.images.front"]["shape"]) == (HW, HW, 3)
    assert f["observation.depth.front"]["dtype"] == "image" and f["observation.depth.front"]["info"]["is_depth_map"]
    assert f["observation.gripper"]["dtype"] == "bool"
    assert f["observation.tool.pose"]["dtype"] == "float64" and tuple(f["observation.tool.pose"]["shape"]) == (2, 3)
    assert ds.meta.robot_type == "sim_arm"
    starts = np.cumsum((0, *LENGTHS))
    for e in range(3):
        meta = ds.meta.episodes[e]
        assert (meta["dataset_from_index"], meta["dataset_to_index"]) == (starts[e], starts[e + 1])
    for e, t in ((0, 0), (1, 7), (2, 19)):
        item = ds[int(starts[e]) + t]
        ep = episodes[e]
        assert item["episode_index"].item() == e and item["frame_index"].item() == t
        np.testing.assert_array_equal(item["observation.state"].numpy(), ep["state"][t])
        np.testing.assert_array_equal(item["action"].numpy(), ep["action"][t])
        assert bool(item["observation.gripper"]) == bool(ep["gripper"][t])
        # stored as float64; lerobot's __getitem__ hands multi-dim values back as float32 (torch.tensor of lists)
        np.testing.assert_array_equal(item["observation.tool.pose"].numpy(), ep["tool/pose"][t].astype(np.float32))
        assert item["timestamp"].item() == pytest.approx(t / FPS)
        assert item["task"] == (ATTRS[e]["language"] or ATTRS[e]["task"])
        img = (item["observation.images.front"].numpy().transpose(1, 2, 0) * 255.0).round()
        mae, psnr = _image_error(img, ep["images/front"][t])
        assert mae < MAX_MAE and psnr > MIN_PSNR, (mae, psnr)
        np.testing.assert_array_equal(item["observation.depth.front"].numpy()[0], ep["depth/front"][t])


def test_round_trip_keeps_everything(source, reimported):
    _, store, episodes = source
    back = reimported
    assert back.n_episodes == 3 and list(back.episode_lengths) == list(LENGTHS)
    assert back.fps == FPS and back.keys == store.keys
    errors = []
    for e, ep in enumerate(episodes):
        got = back.get_episode(e)
        for key, value in ep.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            if key.startswith("images/"):
                errors.append(_image_error(got[key], value))
            else:  # low-dim, measured timestamps and depth: exact
                np.testing.assert_array_equal(got[key], value, err_msg=key)
        assert back.episode_attrs(e) == store.episode_attrs(e)
    mae, psnr = max(m for m, _ in errors), min(p for _, p in errors)
    assert mae < MAX_MAE and psnr > MIN_PSNR, (mae, psnr)


def test_round_trip_without_videos_is_lossless(source, tmp_path):
    _, store, episodes = source
    out = export_lerobot(store.path, tmp_path / "img_lerobot", use_videos=False, progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.front"]["dtype"] == "image"
    assert not (out / "videos").exists()
    back = import_lerobot(out, tmp_path / "back.zarr", progress=False)
    for e, ep in enumerate(episodes):
        got = back.get_episode(e)
        for key, value in ep.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_import_without_sidecar_uses_lerobot_metadata(source, exported, tmp_path):
    _, _, episodes = source
    plain = tmp_path / "plain"
    shutil.copytree(exported, plain)
    (plain / SIDECAR_PATH).unlink()
    back = import_lerobot(plain, tmp_path / "plain.zarr", progress=False)
    assert back.n_episodes == 3 and list(back.episode_lengths) == list(LENGTHS) and back.fps == FPS
    assert "gripper" in back.keys and "tool.pose" in back.keys  # observation.tool.pose -> tool.pose
    for e, ep in enumerate(episodes):
        got = back.get_episode(e)
        attrs = back.episode_attrs(e)
        text = ATTRS[e]["language"] or ATTRS[e]["task"]
        assert attrs["language"] == text and attrs["task"] == text
        assert attrs["source"] == "imported" and attrs["robot"] == "sim_arm"
        np.testing.assert_array_equal(got["timestamp"], np.arange(LENGTHS[e]) / FPS)  # nominal
        np.testing.assert_array_equal(got["state"], ep["state"])
        np.testing.assert_array_equal(got["gripper"][:, 0], ep["gripper"])  # lerobot's shape (1,)
        np.testing.assert_array_equal(got["tool.pose"], ep["tool/pose"])
        assert _image_error(got["images/wrist"], ep["images/wrist"])[1] > MIN_PSNR


def test_import_foreign_dataset(tmp_path):
    """A dataset written by lerobot with other conventions (pusht-like names, rewards, two tasks, depth video)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    hwc = ["height", "width", "channels"]
    features = {
        "observation.image": {"dtype": "video", "shape": (HW, HW, 3), "names": hwc},
        # lerobot's depth video: 12-bit log-quantised codes in lossless HEVC
        "observation.images.cam_depth": {"dtype": "video", "shape": (HW, HW, 1), "names": hwc,
                                         "info": {"is_depth_map": True}},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("test/foreign", 15, features, root=tmp_path / "foreign", robot_type="pusht",
                               use_videos=True, video_backend="pyav")
    rng = np.random.default_rng(3)
    states, images = [], _smooth_images(14, 9, 0)
    yy, xx = np.mgrid[0:HW, 0:HW]
    depth = np.stack([500 + 20 * xx + 10 * yy + 30 * t for t in range(14)]).astype(np.uint16)  # mm
    for ep_len in (9, 14):
        ep_states = rng.standard_normal((ep_len, 2)).astype(np.float32)
        states.append(ep_states)
        for t in range(ep_len):
            ds.add_frame({"observation.image": images[t], "observation.images.cam_depth": depth[t, ..., None],
                          "observation.state": ep_states[t],
                          "action": ep_states[t] * 2, "next.reward": np.array([t / 10], np.float32),
                          "next.done": np.array([t == ep_len - 1]),
                          "task": "reach the goal" if t < 5 else "then come back"})
        ds.save_episode(parallel_encoding=False)  # no process pool forked from this multi-threaded process
    ds.finalize()
    store = import_lerobot(tmp_path / "foreign", tmp_path / "foreign.zarr", progress=False)
    assert store.fps == 15 and list(store.episode_lengths) == [9, 14]
    assert store.keys == ["action", "depth/cam_depth", "images/image", "next.done", "next.reward", "state",
                          "timestamp"]
    lerobot_depth = LeRobotDataset("test/foreign", root=tmp_path / "foreign", video_backend="pyav")[9 + 4]
    np.testing.assert_array_equal(store.get_episode(1)["depth/cam_depth"][4],
                                  lerobot_depth["observation.images.cam_depth"][0].numpy().astype(np.uint16))
    for e, ep_states in enumerate(states):
        got = store.get_episode(e)
        np.testing.assert_array_equal(got["state"], ep_states)
        np.testing.assert_array_equal(got["action"], ep_states * 2)
        assert got["next.done"][-1, 0] and not got["next.done"][:-1].any()
        assert _image_error(got["images/image"], images[: len(ep_states)])[1] > MIN_PSNR
        rel = np.abs(got["depth/cam_depth"].astype(float) - depth[: len(ep_states)]) / depth[: len(ep_states)]
        assert rel.max() < 0.01  # 12-bit log quantisation over 0.01-10 m
        attrs = store.episode_attrs(e)
        assert attrs["language"] == "reach the goal" and attrs["robot"] == "pusht"
        assert attrs["lerobot"]["tasks"] == ["reach the goal", "then come back"]


def test_stale_sidecar_is_ignored(exported, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(exported, edited)
    side = json.loads((edited / SIDECAR_PATH).read_text())
    side["episodes"] = side["episodes"][:2]  # as if lerobot's tools had changed the episodes since
    (edited / SIDECAR_PATH).write_text(json.dumps(side))
    with pytest.warns(UserWarning, match="sidecar does not match"):
        back = import_lerobot(edited, tmp_path / "edited.zarr", progress=False)
    assert back.n_episodes == 3 and back.episode_attrs(0)["source"] == "imported"


def test_clear_errors(source, exported, tmp_path):
    root, store, _ = source
    not_lerobot = tmp_path / "random"
    not_lerobot.mkdir()
    (not_lerobot / "notes.txt").write_text("hello")
    with pytest.raises(LeRobotFormatError, match="not a LeRobot dataset.*info.json"):
        import_lerobot(not_lerobot, tmp_path / "x.zarr", progress=False)
    with pytest.raises(LeRobotFormatError, match="zarr store"):
        import_lerobot(store.path, tmp_path / "x.zarr", progress=False)
    with pytest.raises(FileNotFoundError, match="no LeRobot dataset"):
        import_lerobot(tmp_path / "missing", tmp_path / "x.zarr", progress=False)
    old = tmp_path / "old"
    (old / "meta").mkdir(parents=True)
    (old / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 10, "features": {}}))
    with pytest.raises(LeRobotFormatError, match="v2.1.*convert"):
        import_lerobot(old, tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()

    empty = EpisodeStore.create(tmp_path / "empty.zarr", fps=10)
    with pytest.raises(ValueError, match="no episodes"):
        export_lerobot(empty.path, tmp_path / "empty_lerobot", progress=False)
    assert not (tmp_path / "empty_lerobot").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        export_lerobot(store.path, exported, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        import_lerobot(exported, store.path, progress=False)


def test_importing_the_module_does_not_import_lerobot():
    code = "import sys, robopolicy.data.lerobot_io; assert 'lerobot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))

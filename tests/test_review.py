"""Episode review: a recorded teleop episode replayed on the simulated arm tracks the recording."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("mujoco")

from robopolicy.collect.devices import make_sim_devices  # noqa: E402
from robopolicy.collect.review import review_episode  # noqa: E402
from robopolicy.collect.scripted import ScriptedTeleop, ScriptStep, episode_script  # noqa: E402
from robopolicy.collect.session import CollectSession  # noqa: E402
from robopolicy.data.episode_store import EpisodeStore  # noqa: E402
from robopolicy.utils.video import read_mp4  # noqa: E402


def record(path: Path, *, realtime: bool, action_mode: str = "target", fps: float = 10.0, n_steps: int = 16):
    dev = make_sim_devices("embedded_pick_place", ("front", "wrist"), image_size=32, realtime=realtime, seed=3)
    # move a little while idle first, so the episode does not start at the home pose
    script = [ScriptStep(dpos=(0.0, 0.01, -0.01))] * 3 + episode_script(n_steps, "success", speed=0.012)
    script[5].drot = (0.0, 0.0, 0.1)  # and a yaw, so the orientation part of the action matters
    store = EpisodeStore.open_or_create(path, fps=fps)
    CollectSession(dev.arm, dev.cameras, ScriptedTeleop(script, after="quit"), store, fps=fps,
                   task="embedded_pick_place", robot_name="sim", scene=dev.scene, clock=dev.clock, seed=3,
                   action_mode=action_mode, log=lambda s: None).run()
    return EpisodeStore.open(path)


@pytest.mark.parametrize("action_mode", ["target", "delta"])
def test_review_replays_the_recording(tmp_path, action_mode):
    store = record(tmp_path / "s.zarr", realtime=False, action_mode=action_mode)
    n = int(store.episode_lengths[0])
    res = review_episode(tmp_path / "s.zarr", 0, tmp_path / "review.mp4", log=lambda s: None)
    video = read_mp4(res.video)
    assert video.shape[0] == n
    assert video.shape[1] == 2 * 192 + 64 and video.shape[2] == 2 * 192  # 2 camera rows | strip; rec | replay
    # the simulator is deterministic: replaying the actions from the stored seed reproduces the motion
    assert res.ee_err_mm.shape == (n,) and res.ee_err_mm.max() < 1.0
    summary = json.loads(res.summary_json.read_text())
    assert summary["steps"] == n and len(summary["per_step_ee_err_mm"]) == n
    ep = store.get_episode(0)
    assert np.ptp(ep["state"][:, 7:10], axis=0).max() > 0.03  # the episode actually moved


def test_review_of_a_real_time_recording_tracks_it(tmp_path):
    store = record(tmp_path / "rt.zarr", realtime=True, fps=20.0, n_steps=20)
    res = review_episode(tmp_path / "rt.zarr", 0, tmp_path / "rt.mp4", log=lambda s: None)
    assert len(res.ee_err_mm) == int(store.episode_lengths[0])
    # wall-clock jitter of the recording loop is the only difference; the replay follows within millimetres
    assert np.median(res.ee_err_mm) < 5.0 and res.ee_err_mm.max() < 15.0, res.summary()
    assert (tmp_path / "rt.json").exists()


def test_review_rejects_non_teleop_episodes(tmp_path, episode_factory):
    s = EpisodeStore.create(tmp_path / "x.zarr", fps=10)
    s.add_episode(episode_factory(5), {"task": "embedded_push"})
    with pytest.raises(ValueError, match="action_mode"):
        review_episode(tmp_path / "x.zarr", 0, tmp_path / "x.mp4")
    with pytest.raises(IndexError):
        review_episode(tmp_path / "x.zarr", 3, tmp_path / "x.mp4")

"""LeRobot side of scripts/bench_data.py: export one EpisodeStore three ways with `export_lerobot`
(video, images, state only) and open each with lerobot's LeRobotDataset and the delta_timestamps a
Diffusion Policy run uses (T_o observation frames, T_p actions starting one step in the past)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from robopolicy.data import EpisodeStore, export_lerobot


def _state_only_copy(store: EpisodeStore, path: Path) -> Path:
    out = EpisodeStore.create(path, fps=store.fps)
    for i in range(store.n_episodes):
        out.add_episode(store.get_episode(i, keys=["timestamp", "state", "action"]), store.episode_attrs(i))
    return path


def lerobot_datasets(store_path: Path, root: Path, t_o: int, t_p: int) -> tuple[dict, dict]:
    """Returns ({"video"|"images"|"state_only": LeRobotDataset}, export timings)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store = EpisodeStore.open(store_path)
    fps = store.fps
    frames = store.n_frames
    exports, info = {}, {}
    state_store = _state_only_copy(store, root / "state_only.zarr")
    for name, src, videos in (("video", store_path, True), ("images", store_path, False),
                              ("state_only", state_store, True)):
        t0 = time.perf_counter()
        exports[name] = export_lerobot(src, root / f"lerobot_{name}", repo_id=f"bench/{name}", use_videos=videos,
                                       progress=False)
        info[f"export_{name}_frames_per_s"] = frames / (time.perf_counter() - t0)
    obs_delta = [float(d) / fps for d in range(-(t_o - 1), 1)]
    act_delta = [float(d) / fps for d in range(-(t_o - 1), -(t_o - 1) + t_p)]
    datasets = {}
    for name, path in exports.items():
        meta_keys = [k for k in LeRobotDataset(f"bench/{name}", root=path, video_backend="pyav").meta.features
                     if k.startswith("observation.")]
        delta = {k: obs_delta for k in meta_keys}
        delta["action"] = act_delta
        datasets[name] = LeRobotDataset(f"bench/{name}", root=path, delta_timestamps=delta, video_backend="pyav")
        assert np.isclose(datasets[name].fps, fps)
    return datasets, info

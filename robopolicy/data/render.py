"""Render one episode for a person: an mp4 of its cameras side by side and a PNG of actions and state."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robopolicy.data.episode_store import EpisodeStore  # noqa: E402
from robopolicy.data.schema import key_kind  # noqa: E402
from robopolicy.utils.video import write_mp4  # noqa: E402


def tile_cameras(frames: list[np.ndarray]) -> np.ndarray:
    """Place camera frames [T, H_i, W_i, 3] side by side, padding heights to the tallest."""
    height = max(f.shape[1] for f in frames)
    padded = [np.pad(f, ((0, 0), (0, height - f.shape[1]), (0, 0), (0, 0))) for f in frames]
    return np.concatenate(padded, axis=2)


def render_episode(store: EpisodeStore, episode: int, out_dir: str | Path) -> dict[str, str]:
    """Write episode_<i>.mp4 (when the store has cameras) and episode_<i>.png; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ep = store.get_episode(episode)
    attrs = store.episode_attrs(episode)
    paths = {}
    cams = [k for k in store.keys if key_kind(k) == "image"]
    if cams:
        video = tile_cameras([ep[k] for k in cams])
        paths["video"] = str(write_mp4(out_dir / f"episode_{episode}.mp4", video, fps=store.fps))
    lowdim = [k for k in store.keys if key_kind(k) == "lowdim"]
    t = ep["timestamp"] - ep["timestamp"][0]
    fig, axes = plt.subplots(len(lowdim), 1, figsize=(10, 2.6 * max(1, len(lowdim))), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], lowdim, strict=True):
        values = ep[key].reshape(len(t), -1)
        for d in range(values.shape[1]):
            ax.plot(t, values[:, d], lw=1.2, label=f"{key}[{d}]")
        ax.set_ylabel(key)
        if values.shape[1] <= 10:
            ax.legend(loc="upper right", fontsize=7, ncol=min(5, values.shape[1]))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time since episode start (s, measured)")
    label = attrs.get("language") or attrs.get("task") or ""
    fig.suptitle(f"episode {episode}: {label} (success={attrs.get('success')}, {len(t)} steps)")
    fig.tight_layout()
    paths["plot"] = str(out_dir / f"episode_{episode}.png")
    fig.savefig(paths["plot"], dpi=100)
    plt.close(fig)
    return paths

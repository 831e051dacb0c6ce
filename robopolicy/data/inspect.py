"""Summaries and integrity checks of an EpisodeStore (behind `robopolicy data info|validate`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopolicy.data.episode_store import EpisodeStore
from robopolicy.data.schema import key_kind


def summarize(store: EpisodeStore) -> dict[str, Any]:
    """Episode and frame counts, keys with dtypes and shapes, durations, success and task counts."""
    attrs = store.all_episode_attrs()
    ts = store.array("timestamp")[: store.n_frames] if store.n_episodes else np.zeros(0)
    measured = 0.0
    for i in range(store.n_episodes):
        sl = store.episode_slice(i)
        measured += float(ts[sl.stop - 1] - ts[sl.start]) + 1.0 / store.fps
    lengths = store.episode_lengths
    return {
        "path": str(store.path),
        "episodes": store.n_episodes,
        "frames": store.n_frames,
        "fps": store.fps,
        "duration_s_nominal": store.n_frames / store.fps,
        "duration_s_measured": measured,
        "episode_length": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "keys": {k: {"dtype": s.dtype, "shape": list(s.shape), "kind": key_kind(k)}
                 for k, s in sorted(store.schema.fields.items())} if store.schema else {},
        "cameras": store.schema.cameras if store.schema else [],
        "success": {"true": sum(a.get("success") is True for a in attrs),
                    "false": sum(a.get("success") is False for a in attrs),
                    "unlabelled": sum(a.get("success") is None for a in attrs)},
        "tasks": dict(Counter(a.get("task", "") for a in attrs)),
        "sources": dict(Counter(a.get("source", "") for a in attrs)),
    }


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)
    checked_episodes: int = 0
    checked_frames: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_store(store: EpisodeStore, deep: bool = False) -> ValidationReport:
    """Check every committed episode: finite low-dim values, increasing timestamps, readable attributes;
    with `deep`, also decompress every image chunk (slow on big stores)."""
    report = ValidationReport()
    lowdim = [k for k in store.keys if key_kind(k) in ("lowdim", "timestamp")]
    arrays = {k: np.asarray(store.array(k)[: store.n_frames]) for k in lowdim}
    for i in range(store.n_episodes):
        sl = store.episode_slice(i)
        try:
            store.episode_attrs(i)
        except Exception as e:
            report.problems.append(f"episode {i}: attributes unreadable ({e})")
        for key, arr in arrays.items():
            ep = arr[sl]
            if np.issubdtype(ep.dtype, np.floating):
                bad = ~np.isfinite(ep.reshape(len(ep), -1)).all(axis=1)
                if bad.any():
                    report.problems.append(f"episode {i}: '{key}' has NaN/inf at step {int(np.flatnonzero(bad)[0])}")
            if key == "timestamp" and (np.diff(ep) <= 0).any():
                report.problems.append(f"episode {i}: timestamps not increasing at step "
                                       f"{int(np.flatnonzero(np.diff(ep) <= 0)[0]) + 1}")
        if deep:
            for key in store.keys:
                if key_kind(key) in ("image", "depth"):
                    try:
                        store.array(key)[sl]
                    except Exception as e:
                        report.problems.append(f"episode {i}: '{key}' chunks unreadable ({type(e).__name__}: {e})")
        report.checked_episodes += 1
        report.checked_frames += sl.stop - sl.start
    return report

"""Sequence windows over concatenated episodes, with Diffusion Policy's padding convention.

A window of length `horizon` starts `pad_before = n_obs_steps - 1` steps before an episode's first frame
at the earliest and may run `pad_after = n_action_steps - 1` steps past its last frame; rows outside the
episode repeat the first / last frame. Index `n_obs_steps - 1` of a window is the "current" step.
"""

from __future__ import annotations

import numpy as np


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of validation episodes: round(n * val_ratio) of them, at least one if val_ratio > 0
    and there are >= 2 episodes, chosen by a seeded permutation."""
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0 or n_episodes < 2:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    mask[np.random.default_rng(seed).permutation(n_episodes)[:n_val]] = True
    return mask


def sequence_indices(
    episode_ends: np.ndarray, horizon: int, pad_before: int, pad_after: int, episode_mask: np.ndarray | None = None
) -> np.ndarray:
    """One row per window: (buffer_start, buffer_end, sample_start, sample_end).

    Rows [buffer_start, buffer_end) of the store fill positions [sample_start, sample_end) of the window;
    positions before sample_start repeat the first row, positions from sample_end on repeat the last.
    """
    rows = []
    starts = np.concatenate([[0], episode_ends[:-1]])
    for i, (start, end) in enumerate(zip(starts, episode_ends, strict=True)):
        if episode_mask is not None and not episode_mask[i]:
            continue
        length = int(end - start)
        idx = np.arange(-pad_before, length - horizon + pad_after + 1)
        if len(idx) == 0:
            continue
        buf_start = np.maximum(idx, 0) + start
        buf_end = np.minimum(idx + horizon, length) + start
        sample_start = buf_start - (idx + start)
        sample_end = sample_start + (buf_end - buf_start)
        rows.append(np.stack([buf_start, buf_end, sample_start, sample_end], axis=1))
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


def pad_window(rows: np.ndarray, sample_start: int, sample_end: int, length: int) -> np.ndarray:
    """Place `rows` at [sample_start, sample_end) of a window of `length`, repeating the edge rows."""
    if sample_start == 0 and sample_end == length:
        return rows
    out = np.empty((length, *rows.shape[1:]), dtype=rows.dtype)
    out[sample_start:sample_end] = rows
    out[:sample_start] = rows[0]
    out[sample_end:] = rows[-1]
    return out

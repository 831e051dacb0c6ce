"""Fixed-count point sampling: farthest-point sampling (exact), its voxel-grid fast path, and random.

- "fps": exact farthest-point sampling (DP3's choice) from the first point; O(n * M), every point visited
  n times.
- "fps_voxel": keep one point per `voxel_size` cube first (the first in row-major order), then exact FPS
  on what is left: the same greedy rule on far fewer points. Measured in scripts/bench_pointcloud.py.
- "random": n distinct points drawn with a fixed seed (deterministic per frame, no spatial coverage).

Every sampler returns exactly n indices; when the cloud has fewer than n points the indices repeat
cyclically (the encoder max-pools, so duplicates change nothing but the count).
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("fps", "fps_voxel", "random")


def farthest_point_sample(xyz: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Indices (n,) of exact farthest-point sampling of `xyz` (M, 3) from point `start`."""
    m = len(xyz)
    if n >= m:
        return _pad_indices(np.arange(m), n)
    pts = np.ascontiguousarray(xyz[:, :3], dtype=np.float32)
    idx = np.empty(n, dtype=np.int64)
    dist = np.full(m, np.inf, dtype=np.float32)
    diff = np.empty_like(pts)
    d = np.empty(m, dtype=np.float32)
    cur = int(start)
    for i in range(n):
        idx[i] = cur
        np.subtract(pts, pts[cur], out=diff)
        np.einsum("ij,ij->i", diff, diff, out=d)
        np.minimum(dist, d, out=dist)
        cur = int(dist.argmax())
    return idx


def voxel_downsample(xyz: np.ndarray, voxel_size: float) -> np.ndarray:
    """Indices of one point per occupied voxel of side `voxel_size` (the first one, in input order)."""
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0 (metres), got {voxel_size}")
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    cells = np.floor(np.asarray(xyz[:, :3], dtype=np.float64) / voxel_size).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    flat = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    _, first = np.unique(flat, return_index=True)
    return np.sort(first)


def sample_points(points: np.ndarray, n: int, method: str = "fps", voxel_size: float = 0.01,
                  seed: int = 0) -> np.ndarray:
    """Exactly `n` rows of `points` (M, C) by `method` (see the module docstring)."""
    if n < 1:
        raise ValueError(f"the number of points must be >= 1, got {n}")
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    m = len(points)
    if m == 0:
        return np.zeros((n, points.shape[1]), dtype=np.float32)
    if method == "random":
        idx = np.random.default_rng(seed).choice(m, size=n, replace=False) if m > n else _pad_indices(np.arange(m), n)
    elif method == "fps_voxel":
        keep = voxel_downsample(points, voxel_size)
        idx = keep[farthest_point_sample(points[keep], n)] if len(keep) >= n else farthest_point_sample(points, n)
    else:
        idx = farthest_point_sample(points, n)
    return np.ascontiguousarray(points[idx], dtype=np.float32)


def _pad_indices(idx: np.ndarray, n: int) -> np.ndarray:
    return np.resize(idx, n).astype(np.int64)

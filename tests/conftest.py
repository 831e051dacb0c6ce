"""Shared test fixtures: small synthetic episodes and stores."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_episode(length: int = 20, seed: int = 0, image_hw=(24, 32), cameras=("front",), depth: bool = False):
    """A deterministic episode whose values encode (seed, step), so tests can check exact contents."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    steps = {
        "timestamp": 1000.0 + seed * 100 + t / 10.0,
        "state": (seed * 1000 + t[:, None] + np.arange(4)[None] / 10).astype(np.float32),
        "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
    }
    for cam in cameras:
        steps[f"images/{cam}"] = rng.integers(0, 255, (length, *image_hw, 3), dtype=np.uint8)
    if depth:
        steps["depth/front"] = rng.integers(0, 4000, (length, *image_hw), dtype=np.uint16)
    return steps


@pytest.fixture
def episode_factory():
    return make_episode

"""Shared test fixtures (small synthetic episodes and stores) and the suite's hang watchdog."""

from __future__ import annotations

import faulthandler
import os
import sys

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


# ------------------------------------------------------------------------------------- hang watchdog
# pytest-timeout's default (signal) method needs the main thread to get back to Python. A thread stuck in
# native code (a futex in a GL driver or a thread pool) never does, and CI then waits for its global limit.
# faulthandler's watchdog is a C thread: it prints every thread's stack to the real stderr and exits.
# scripts/test.sh reads ROBOPOLICY_TEST_PROGRESS to name the test that died and to run the rest once more.
# A default-suite test takes < 20 s on 2 cores; slow ones get pytest-timeout's limit + 60 s.
DEFAULT_HANG_S = float(os.environ.get("ROBOPOLICY_TEST_HANG_S", 300))
_stderr_fd = pytest.StashKey[int]()
_failed_ids: set[str] = set()


def _progress(line: str) -> None:
    path = os.environ.get("ROBOPOLICY_TEST_PROGRESS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def pytest_configure(config):
    config.stash[_stderr_fd] = os.dup(sys.stderr.fileno())  # pytest's fd capture would swallow the dump


def pytest_unconfigure(config):
    if _stderr_fd in config.stash:
        os.close(config.stash[_stderr_fd])


def pytest_collection_modifyitems(config, items):
    """With ROBOPOLICY_TEST_SKIP_PASSED=<progress file>, deselect the tests that file records as passed."""
    path = os.environ.get("ROBOPOLICY_TEST_SKIP_PASSED")
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        passed = {ln.split(" ", 1)[1].strip() for ln in f if ln.startswith("passed ")}
    keep = [it for it in items if it.nodeid not in passed]
    config.hook.pytest_deselected(items=[it for it in items if it.nodeid in passed])
    items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = DEFAULT_HANG_S
    if item.get_closest_marker("slow"):
        limit = max(limit, float(item.config.getini("timeout") or 0) + 60)
    _progress(f"start {item.nodeid}")
    faulthandler.dump_traceback_later(limit, exit=True, file=item.config.stash[_stderr_fd])
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
        _progress(f"{'failed' if item.nodeid in _failed_ids else 'passed'} {item.nodeid}")


def pytest_runtest_logreport(report):
    if report.failed:
        _failed_ids.add(report.nodeid)

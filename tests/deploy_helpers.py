"""A real, tiny checkpoint for the runtime / daemon tests: reach a fixed point with the embedded arm.

Demonstrations come from the embedded env (14-D proprio state, 5-D `ee_delta` actions, 10 Hz) driven by a
proportional controller towards GOAL; the test MLP head of train_helpers learns them in a few seconds.
Deployed through the daemon on the real-time simulated arm it reaches GOAL within a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers  # noqa: E402,F401  (registers the "test_mlp" head)

from robopolicy.data.episode_store import EpisodeStore  # noqa: E402

GOAL = np.array([0.45, 0.08, 0.17])
REACH_TOL = 0.03  # m


def reach_success(arm) -> bool:
    """Whether the arm's TCP is within REACH_TOL of GOAL."""
    return bool(np.linalg.norm(arm.read_state().ee_pos - GOAL) < REACH_TOL)


def make_reach_store(path: Path, n_episodes: int = 16, seed: int = 0) -> Path:
    from sim.embedded.env import EmbeddedEnv

    rng = np.random.default_rng(seed)
    env = EmbeddedEnv(task="push", obs_mode="state", state_mode="proprio", max_episode_steps=200)
    store = EpisodeStore.create(path, fps=10.0)
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        for _ in range(int(rng.integers(0, 6))):  # wander first so starts differ
            obs, *_ = env.step(np.r_[rng.uniform(-1, 1, 3), 0.0, -1.0].astype(np.float32))
        states, actions = [], []
        for _ in range(25):
            ee = obs["state"][7:10]
            a = np.r_[np.clip((GOAL - ee) / 0.04, -1, 1), 0.0, -1.0].astype(np.float32)
            states.append(obs["state"])
            actions.append(a)
            obs, *_ = env.step(a)
        store.add_episode({"timestamp": 100.0 * e + np.arange(len(states)) / 10.0, "state": np.stack(states),
                           "action": np.stack(actions)}, attrs={"source": "expert", "success": True, "task": "reach"})
    env.close()
    return path


def make_reach_checkpoint(root: Path, steps: int = 250) -> Path:
    """Train the test MLP on reach demos; returns the checkpoint directory (root/run/best)."""
    from robopolicy.train import TaskConfig, TrainerConfig, train

    store = make_reach_store(root / "reach.zarr")
    cfg = TrainerConfig(steps=steps, batch_size=64, lr=3e-3, warmup_steps=10, val_every=steps, checkpoint_every=0,
                        log_every=50, out_dir=str(root / "run"), progress=False)
    train(TaskConfig(store=str(store), obs_keys=["state"], n_obs_steps=2, horizon=8, n_action_steps=4),
          "test_mlp", {"hidden": 128, "target_noise": 0.0}, cfg)
    return root / "run" / "best"

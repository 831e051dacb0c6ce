"""RL-100 resume: what a stopped RL-100 run needs besides its policy weights, and loading it back.

The policy is in `<out_dir>/last` (written after every offline iteration and at every online evaluation);
beside it `rl100_state.pt` holds the run's progress (offline iterations done, env steps, wall time, the
per-stage evaluations, the online stage's best), the chunk-level transitions every offline iteration collected
(the IQL critics, the OPE gate and the CM distillation train on all of them), the successful chunks the
imitation re-training mixes in, the IQL critics with their optimiser, the online stage's value critic and PPO
state once it has started, and the global RNG states.

Not restored: the order in which the start's demos are drawn (their loader restarts its shuffle) and the envs'
episodes in progress (a resumed collection starts from fresh layouts, seeded as the iteration it runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopolicy.policies.base import GenerativePolicy
from robopolicy.rl import common
from robopolicy.rl.il_retrain import SuccessfulChunks
from robopolicy.rl.iql import IQLCritics
from robopolicy.rl.ppo import PPO, ValueCritic

STATE_FILE = "rl100_state.pt"


@dataclass
class RunProgress:
    """Where an RL-100 run stands; the online stage's own counters are in its PPO state."""

    offline_done: int = 0  # offline iterations finished
    env_steps: int = 0
    wall_s: float = 0.0
    stages: dict[str, Any] = field(default_factory=dict)  # evaluation per stage: before, offline_1, ...
    online_best: dict[str, Any] = field(default_factory=dict)  # rate, iteration, path of best/ in the online stage


def training_state(progress: RunProgress, data: Any, successes: SuccessfulChunks, critics: IQLCritics | None,
                   online: tuple[ValueCritic, PPO] | None) -> dict[str, Any]:
    """rl100_state.pt's contents."""
    state: dict[str, Any] = {
        "progress": asdict(progress),
        "data": {"obs": data.obs, "actions": data.actions, "rewards": data.rewards, "next_obs": data.next_obs,
                 "dones": data.dones},
        "successes": {"obs": successes.obs, "chunks": successes.chunks, "episodes": successes.episodes},
        "critics": None if critics is None else {"nets": critics.state_dict(), "opt": critics.opt.state_dict()},
        "online": None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    if online is not None:
        critic, ppo = online
        state["online"] = {"critic": critic.state_dict(), "ppo": ppo.training_state()}
    return state


def load_state(path: str | Path, policy: GenerativePolicy) -> dict[str, Any]:
    """Check that `path` is the last/ checkpoint of an RL-100 run, load its weights into `policy` and return
    rl100_state.pt's contents (the caller restores the pieces it has built: `restore_*`)."""
    saved, state = common.open_resume(path, STATE_FILE, "rl100", "offline/, best/ and final/ keep only the policy")
    try:
        with common.bare_head(policy):  # the checkpoint holds exactly the head's weights
            policy.load_state_dict(saved.policy.state_dict())
    except RuntimeError as e:
        raise ValueError(f"algo.resume_from={path} does not fit checkpoint= (another head or size?): "
                         f"{str(e).splitlines()[0]}") from None
    return state


def restore_progress(state: dict[str, Any], offline_iterations: int) -> RunProgress:
    """The saved RunProgress; refuses an `offline_iterations` below the finished ones, or different from them once
    the online stage has begun."""
    progress = RunProgress(**state["progress"])
    if state["online"] is not None and offline_iterations != progress.offline_done:
        raise ValueError(f"algo.resume_from: that run finished its {progress.offline_done} offline iterations and "
                         f"started its online stage; set algo.offline_iterations={progress.offline_done}")
    if offline_iterations < progress.offline_done:
        raise ValueError(f"algo.resume_from: that run has done {progress.offline_done} offline iterations; "
                         f"algo.offline_iterations={offline_iterations} would undo them. Set it to "
                         f">= {progress.offline_done}")
    return progress


def restore_data(state: dict[str, Any], data: Any, successes: SuccessfulChunks) -> None:
    """Refill the transitions and the successful chunks (both empty) from the saved state."""
    for key, rows in state["data"].items():
        getattr(data, key).extend(rows)
    successes.obs.extend(state["successes"]["obs"])
    successes.chunks.extend(state["successes"]["chunks"])
    successes.episodes = int(state["successes"]["episodes"])


def restore_critics(state: dict[str, Any], critics: IQLCritics) -> None:
    try:
        critics.load_state_dict(state["critics"]["nets"])
        critics.opt.load_state_dict(state["critics"]["opt"])
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"algo.resume_from: its IQL critics do not fit algo.iql (another hidden size?): "
                         f"{str(e).splitlines()[0]}") from None


def restore_online(state: dict[str, Any], critic: ValueCritic, ppo: PPO) -> None:
    try:
        critic.load_state_dict(state["online"]["critic"])
        ppo.load_training_state(state["online"]["ppo"])
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"algo.resume_from: its online value critic or optimiser does not fit algo.ppo (another "
                         f"critic_hidden?): {str(e).splitlines()[0]}") from None


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])


__all__ = ["STATE_FILE", "RunProgress", "load_state", "restore_critics", "restore_data", "restore_online",
           "restore_progress", "restore_rng", "training_state"]

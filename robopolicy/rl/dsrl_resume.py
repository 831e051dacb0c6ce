"""DSRL resume: what a stopped DSRL-SAC / DSRL-NA run needs besides its noise actor, and loading it back.

The noise actor is in the steered checkpoint (`<out_dir>/last`); beside it `dsrl_state.pt` holds the critics
and their targets, the temperature, every optimiser, the replay buffer (and DSRL-NA's prior pool), the
learner's sampling generator, the loop's counters (`TrainProgress`), the best evaluation so far and the global
RNG states. An off-policy learner without its replay would restart from an empty buffer, hence the buffer.

Size: the replay holds observations, features, noises and executed actions per chunk transition: 1.3 kB each
on robosuite Lift's state observations (26 MB per 20 k), beside ~7 MB of critics and optimiser moments; image
observations make each transition far larger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopolicy.rl import common
from robopolicy.rl.dsrl import DSRLLearner, TrainProgress

STATE_FILE = "dsrl_state.pt"


def _modules(learner: DSRLLearner) -> dict[str, Any]:
    """The learner's objects with a state_dict, by name (DSRL-NA adds its action critic and prior pool)."""
    mods = {"q_w": learner.q_w, "q_w_targ": learner.q_w_targ, "temperature": learner.temperature,
            "opt_actor": learner.opt_actor, "opt_qw": learner.opt_qw, "opt_temp": learner.opt_temp,
            "replay": learner.replay}
    if learner.variant == "na":
        mods.update(q_a=learner.q_a, q_a_targ=learner.q_a_targ, opt_qa=learner.opt_qa, prior_pool=learner.prior_pool)
    return mods


def training_state(learner: DSRLLearner, best_rate: float) -> dict[str, Any]:
    """dsrl_state.pt's contents."""
    p = learner.progress
    return {"variant": learner.variant, **{k: m.state_dict() for k, m in _modules(learner).items()},
            "generator": learner.gen.get_state(), "grad_steps": learner.grad_steps,
            "progress": {"env_steps": p.env_steps, "next_eval": p.next_eval, "credit": p.credit, "wall_s": p.wall_s},
            "best_rate": best_rate, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}


def resume_training(path: str | Path, learner: DSRLLearner, algo_name: str, base_hash: str) -> dict[str, Any]:
    """Load a DSRL checkpoint's noise actor and dsrl_state.pt into `learner` (whose base is the run's start).

    Returns the saved state (for its best_rate). Raises with the fix when `path` is not the last/ checkpoint
    of a run of the same variant from the same base head, or was written with other network sizes."""
    saved, state = common.open_resume(path, STATE_FILE, algo_name, "best/ keeps only the noise actor")
    meta = saved.meta.get("finetune") or {}
    if meta.get("base_parameter_hash") != base_hash:
        raise ValueError(f"algo.resume_from={path} steers another base head than checkpoint= gives (parameter "
                         "hashes differ): pass the checkpoint that run started from")
    try:
        learner.policy.actor.load_state_dict(saved.policy.actor.state_dict())
        for name, module in _modules(learner).items():
            module.load_state_dict(state[name])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"algo.resume_from={path} does not fit this run (other critic, actor or replay sizes?): "
                         f"{str(e).splitlines()[0]}") from None
    learner.gen.set_state(state["generator"])
    learner.grad_steps = int(state["grad_steps"])
    learner.progress = TrainProgress(**state["progress"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    return state


__all__ = ["STATE_FILE", "resume_training", "training_state"]

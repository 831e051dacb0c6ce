"""Which checkpoints a training run reads and writes: the one it resumes from, when best/ is replaced, and
the save every process takes part in. (The files themselves: checkpoint.py.)"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robopolicy.policies.registry import PolicyConfigError
from robopolicy.train import checkpoint as ckpt

log = logging.getLogger(__name__)


def resume_path(out_dir: Path, resume: Any) -> Path | None:
    """The checkpoint to resume from for trainer.resume = `resume` (false / true: `out_dir`/last / a path).

    resume=true on a fresh `out_dir` starts from scratch (so one command both starts and continues a run);
    an explicit path that holds no checkpoint is an error.
    """
    r = resume
    if r is False or r is None or r == "":
        if (out_dir / "last").exists():
            log.warning("%s/last exists and resume is off: training starts from scratch and will overwrite it",
                        out_dir)
        return None
    path = out_dir / "last" if r is True or str(r).lower() == "true" else Path(str(r))
    try:
        return ckpt.resolve_checkpoint(path)
    except ckpt.CheckpointError:
        if r is True or str(r).lower() == "true":
            return None  # resume=true on a fresh out_dir: start from scratch
        raise


def check_resume_source(path: Path, run_config: dict[str, Any], fingerprint: str) -> None:
    """Refuse a checkpoint trained with another policy configuration; warn when its dataset differs (the
    weights still fit, but the run is no longer a continuation of the same experiment)."""
    meta = ckpt.read_meta(path)
    previous = ckpt.read_config(path).get("policy")
    current = ckpt._plain(run_config.get("policy"))
    if previous != current:
        raise PolicyConfigError(f"cannot resume from {path}: it was trained with policy {previous}, this run "
                                f"asks for {current}")
    if meta.get("dataset", {}).get("fingerprint") != fingerprint:
        log.warning("resuming from %s, which was trained on a different dataset (fingerprint mismatch)", path)


def best_candidate(new: dict[str, float], best_value: tuple[float, ...] | None, best_metric: str, eval_every: int,
                   has_val: bool, acc: Any, is_main: bool) -> tuple[float, ...] | None:
    """The new best-metric value (bigger is better) if `new` improves on `best_value`, else None.

    Only the main process computes metrics; the decision is summed over processes so that every process
    returns non-None together (they must all enter the collective save of best/). Other processes get
    ``(nan,)`` as their value.
    """
    metric = best_metric
    if metric == "auto":
        metric = "success_rate" if eval_every else ("val_loss" if has_val else "")
    key = {"success_rate": "eval/success_rate", "score_mean": "eval/score_mean", "val_loss": "val/loss"}.get(metric)
    flag = torch.zeros(1, device=acc.device)
    value: tuple[float, ...] | None = None
    if is_main and key in new:
        if metric == "success_rate":
            value = (new[key], new.get("eval/score_mean", 0.0))  # ties on success broken by the score
        elif metric == "score_mean":
            value = (new[key],)
        else:
            value = (-new[key],)
        if best_value is None or value > best_value:
            flag += 1
    if acc.num_processes > 1:  # every process must enter the save together
        flag = acc.reduce(flag, reduction="sum")
    if float(flag) > 0:
        return value if value is not None else (math.nan,)
    return None


def save_collectively(acc: Any, final: Path, is_main: bool, write: Callable[[Path], None],
                      with_train_state: bool) -> None:
    """Write checkpoint `final` atomically with every process taking part (call it on all of them).

    The main process prepares the staging directory and calls `write(staging_dir)` for the model files (and
    the train state); each process adds its own RNG state when `with_train_state`; then the main process
    commits. The barriers keep a process from writing into a staging directory that is not there yet or
    already committed.
    """
    if is_main:
        ckpt.begin(final)
    acc.wait_for_everyone()
    tmp = ckpt.staging_dir(final)
    if is_main:
        write(tmp)
    if with_train_state:
        ckpt.write_rng_state(tmp, acc.process_index)
    acc.wait_for_everyone()
    if is_main:
        ckpt.commit(final)
    acc.wait_for_everyone()


def init_weights_from(policy: torch.nn.Module, path: str | Path) -> int:
    """Copy into `policy` every parameter / buffer of `path`'s model.safetensors with the same name and shape
    (trainer.init_weights: a fresh run starts from another checkpoint's weights, e.g. a consistency student
    from its diffusion teacher, whose UNet and observation encoder share names and sizes). Returns how many
    tensors were copied; ValueError when none match, naming the checkpoint."""
    from safetensors.torch import load_file

    src = ckpt.resolve_checkpoint(Path(path))
    weights = load_file(str(src / ckpt.MODEL_FILE))
    own = policy.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matched:
        raise ValueError(f"trainer.init_weights={path}: none of its {len(weights)} tensors matches this policy's "
                         "names and shapes; initialise from a checkpoint of a head with the same network sizes")
    policy.load_state_dict(matched, strict=False)
    skipped = sorted(set(own) - set(matched))
    log.info("initialised %d of %d tensors from %s%s", len(matched), len(own), src,
             f" (kept fresh: {', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''})" if skipped else "")
    return len(matched)

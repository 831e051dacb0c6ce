"""Checkpoint directories (DESIGN.md): model.safetensors, config.yaml, normalizer.safetensors, meta.json.

`model.safetensors` holds the weights to use (the EMA weights when EMA is on). A `last/` checkpoint also
carries `train_state/` for exact resume: the raw (non-EMA) weights, optimizer / scheduler / EMA counters,
the data position, and every process's RNG states.

Writes are atomic at the directory level: everything goes into a hidden staging directory beside the
target, which then replaces the target by rename (the previous version is moved aside first and removed
last, so a crash leaves either the old or the new checkpoint readable; `resolve_checkpoint` finds it).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from robopolicy.data.normalizer import NormalizerSet
from robopolicy.policies.base import Policy, PolicySpec

FORMAT_NAME = "robopolicy.checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
NORMALIZER_FILE = "normalizer.safetensors"
META_FILE = "meta.json"
TRAIN_STATE_DIR = "train_state"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, NORMALIZER_FILE, META_FILE)


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be read."""


# ---------------------------------------------------------------------------------------------- writing
def staging_dir(final: str | Path) -> Path:
    """The hidden directory a checkpoint is written into before `commit` (same name on every process)."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp"


def begin(final: str | Path) -> Path:
    """Create a fresh staging directory for `final` (main process only)."""
    tmp = staging_dir(final)
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from a crash while writing
    (tmp / TRAIN_STATE_DIR).mkdir(parents=True)
    return tmp


def commit(final: str | Path) -> Path:
    """Atomically replace `final` by its staging directory."""
    final = Path(final)
    tmp = staging_dir(final)
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def write_model_files(directory: Path, model: nn.Module, normalizer: NormalizerSet, config: dict[str, Any],
                      meta: dict[str, Any]) -> None:
    """The four files of a checkpoint (DESIGN.md)."""
    from omegaconf import OmegaConf

    save_model(_unwrap(model), str(directory / MODEL_FILE), metadata={"format": FORMAT_NAME})
    normalizer.save(directory / NORMALIZER_FILE)
    OmegaConf.save(OmegaConf.create(_plain(config)), directory / CONFIG_FILE)
    full_meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
    (directory / META_FILE).write_text(json.dumps(_plain(full_meta), indent=2, sort_keys=True))


def write_train_state(directory: Path, raw_model: nn.Module, state: dict[str, Any]) -> None:
    """Resume state shared by all processes (main process only)."""
    d = directory / TRAIN_STATE_DIR
    save_model(_unwrap(raw_model), str(d / "raw_model.safetensors"))
    torch.save(state, d / "trainer.pt")


def write_rng_state(directory: Path, rank: int) -> None:
    """This process's RNG states (every process writes its own)."""
    torch.save(capture_rng_state(), directory / TRAIN_STATE_DIR / f"rng_rank{rank}.pt")


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- reading
def resolve_checkpoint(path: str | Path) -> Path:
    """`path` itself, or the previous version left aside by a crash during `commit`."""
    path = Path(path)
    if path.is_dir() and (path / META_FILE).exists():
        return path
    old = path.parent / f".{path.name}.old"
    if not path.exists() and old.is_dir() and (old / META_FILE).exists():
        return old
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    raise CheckpointError(f"{path} is not a checkpoint directory: missing {missing}")


def read_config(path: str | Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(path) / CONFIG_FILE), resolve=True)  # type: ignore[return-value]


def read_meta(path: str | Path) -> dict[str, Any]:
    meta = json.loads((Path(path) / META_FILE).read_text())
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}/{META_FILE} is not a {FORMAT_NAME} file (format={meta.get('format')!r})")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta['version']}; this robopolicy reads "
                              f"up to {FORMAT_VERSION}: upgrade robopolicy")
    return meta


@dataclass
class LoadedCheckpoint:
    policy: Policy
    normalizer: NormalizerSet
    config: dict[str, Any]
    meta: dict[str, Any]
    path: Path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the policy from config.yaml + meta.json's spec, load its weights and the normalizer."""
    from robopolicy.policies.registry import make_policy

    path = resolve_checkpoint(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {missing}")
    config = read_config(path)
    meta = read_meta(path)
    policy_cfg = config.get("policy") or {}
    name = policy_cfg.get("name")
    if not name:
        raise CheckpointError(f"{path}/{CONFIG_FILE} names no policy (policy.name)")
    spec = PolicySpec.from_json(meta["spec"])
    policy = make_policy(name, spec, policy_cfg.get("config") or {})
    missing_keys, unexpected = load_model(policy, str(path / MODEL_FILE), strict=False)
    if missing_keys or unexpected:
        raise CheckpointError(f"{path}/{MODEL_FILE} does not fit policy '{name}': missing {sorted(missing_keys)[:8]}, "
                              f"unexpected {sorted(unexpected)[:8]}")
    normalizer = NormalizerSet.load(path / NORMALIZER_FILE)
    return LoadedCheckpoint(policy.to(device).eval(), normalizer, config, meta, path)


def load_train_state(path: Path, raw_model: nn.Module, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Raw weights into `raw_model`; returns (trainer state, this rank's RNG state or None if absent)."""
    d = path / TRAIN_STATE_DIR
    if not (d / "trainer.pt").exists():
        raise CheckpointError(f"{path} has no {TRAIN_STATE_DIR}/ (only last/ checkpoints can be resumed from)")
    load_model(_unwrap(raw_model), str(d / "raw_model.safetensors"))
    state = torch.load(d / "trainer.pt", map_location="cpu", weights_only=False)
    rng_file = d / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=False) if rng_file.exists() else None
    return state, rng


# ---------------------------------------------------------------------------------------------- helpers
def git_revision() -> str | None:
    """HEAD of the repository robopolicy runs from (+ '-dirty' with local changes), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _plain(value: Any) -> Any:
    """Tuples -> lists, paths -> str, numpy scalars -> Python (for YAML / JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value

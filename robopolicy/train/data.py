"""Training data: checks of the task against the store, the PolicySpec it implies, and resumable loaders.

Resumable sampling: the order of epoch e is a permutation drawn from (seed, e) alone, so a run resumed at
(epoch, batch) sees exactly the batches the uninterrupted run would have seen. accelerate shards these
global batches across processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from robopolicy.data.dataset import SequenceConfig, SequenceDataset
from robopolicy.data.episode_store import EpisodeStore
from robopolicy.data.schema import key_kind
from robopolicy.policies.base import PolicySpec
from robopolicy.train.config import TaskConfig


class DataConfigError(ValueError):
    """The task asks for something the episode store cannot give; raised before any training."""


def open_store(task: TaskConfig) -> EpisodeStore:
    try:
        return EpisodeStore.open(task.store, mode="r")
    except FileNotFoundError:
        raise DataConfigError(
            f"no episode store at '{task.store}'. Make one with `robopolicy sim collect task=... out={task.store}` "
            "or point task.store at an existing store."
        ) from None


def check_task_against_store(task: TaskConfig, store: EpisodeStore) -> None:
    """Obs and action keys exist with usable kinds; names what is missing and what the store has."""
    if store.n_episodes == 0 or store.schema is None:
        raise DataConfigError(f"{store.path} has no episodes to train on")
    shapes = {k: f.shape for k, f in store.schema.fields.items()}
    have = ", ".join(f"{k} {tuple(s)}" for k, s in sorted(shapes.items()))
    missing = [k for k in task.obs_keys if k not in shapes]
    if missing:
        raise DataConfigError(f"obs keys {missing} are not in the store {store.path}; it holds: {have}. "
                              "Fix task.obs_keys (or collect the store with the observations you need).")
    if task.action_key not in shapes:
        raise DataConfigError(f"action key '{task.action_key}' is not in the store {store.path}; it holds: {have}")
    if len(shapes[task.action_key]) != 1:
        raise DataConfigError(f"actions '{task.action_key}' must be vectors, the store has shape "
                              f"{shapes[task.action_key]}")
    bad = [k for k in task.obs_keys if key_kind(k) == "timestamp"]
    if bad:
        raise DataConfigError(f"'{bad[0]}' is a timestamp, not an observation; remove it from task.obs_keys")


def spec_from_store(task: TaskConfig, store: EpisodeStore) -> PolicySpec:
    """The PolicySpec a policy trained on this task needs (image shapes as (3, H, W) after any crop)."""
    check_task_against_store(task, store)
    obs_shapes: dict[str, tuple[int, ...]] = {}
    for key in task.obs_keys:
        shape = tuple(int(s) for s in store.schema.fields[key].shape)
        if key_kind(key) == "image":
            h, w, c = shape
            if task.image_crop is not None:
                h, w = (int(v) for v in task.image_crop)
            shape = (c, h, w)
        elif key_kind(key) == "depth":
            shape = (1, *shape) if task.image_crop is None else (1, *(int(v) for v in task.image_crop))
        obs_shapes[key] = shape
    return PolicySpec(
        obs_shapes=obs_shapes,
        action_dim=int(store.schema.fields[task.action_key].shape[0]),
        n_obs_steps=task.n_obs_steps,
        horizon=task.horizon,
        n_action_steps=task.n_action_steps,
        language=bool(task.language),
    )


def sequence_config(task: TaskConfig) -> SequenceConfig:
    return SequenceConfig(
        obs_keys=list(task.obs_keys), action_key=task.action_key, n_obs_steps=task.n_obs_steps,
        horizon=task.horizon, n_action_steps=task.n_action_steps, val_ratio=task.val_ratio,
        split_seed=task.split_seed, max_train_episodes=task.max_train_episodes,
        image_crop=tuple(task.image_crop) if task.image_crop is not None else None,
        language=bool(task.language),
    )


def make_datasets(task: TaskConfig, store: EpisodeStore) -> tuple[SequenceDataset, SequenceDataset | None]:
    """Train and val splits (val is None when the split holds no window)."""
    cfg = sequence_config(task)
    try:
        train = SequenceDataset(store, cfg, split="train")
        val = SequenceDataset(store, cfg, split="val") if task.val_ratio > 0 else None
    except (KeyError, ValueError) as e:
        raise DataConfigError(str(e.args[0] if e.args else e)) from e
    if len(train) == 0:
        raise DataConfigError(f"the train split of {store.path} has no windows (val_ratio={task.val_ratio}, "
                              f"{store.n_episodes} episodes)")
    return train, (val if val is not None and len(val) > 0 else None)


class EpochSampler(Sampler[int]):
    """Shuffled indices whose order depends only on (seed, epoch): resumable and identical on every rank.

    An epoch is a permutation of `pool` (default: every index once; an index listed twice is drawn twice).
    `skip = (epoch, n)` drops the first n indices of that epoch's order (resuming mid-epoch).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, pool: np.ndarray | None = None):
        self.pool = np.arange(n) if pool is None else np.asarray(pool, dtype=np.int64)
        self.n = len(self.pool)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip: tuple[int, int] = (0, 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _start(self) -> int:
        return min(self.skip[1], self.n) if self.skip[0] == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.pool) if self.shuffle \
            else self.pool
        return iter(order[self._start():].tolist())

    def __len__(self) -> int:
        return self.n - self._start()


def check_start_window(start_steps: int, repeat: int) -> None:
    """task.start_window_steps >= 0 and task.start_window_repeat >= 1, or a DataConfigError naming both."""
    if start_steps < 0 or repeat < 1:
        raise DataConfigError(f"task.start_window_steps must be >= 0 and task.start_window_repeat >= 1, got "
                              f"{start_steps} and {repeat}")


def start_window_pool(ds: SequenceDataset, start_steps: int, repeat: int) -> np.ndarray:
    """Every window index once, plus `repeat - 1` more copies of the windows whose present is one of the first
    `start_steps` steps of its episode. For scenes where the instruction decides only the first steps (which
    block to go to) and later windows follow from the motion so far. Measured on the push-only language scene:
    with the discrete head's `instruction_in_state` it makes that head read the instruction (neither does
    alone); it did not help an epsilon-prediction continuous head, x0 prediction did (docs/results.md, VLA)."""
    check_start_window(start_steps, repeat)
    every = np.arange(len(ds))
    if start_steps == 0 or repeat == 1:
        return every
    early = np.flatnonzero(ds.window_steps() < start_steps)
    return np.concatenate([every, np.tile(early, repeat - 1)])


def make_loader(ds: SequenceDataset, batch_size: int, seed: int, num_workers: int, shuffle: bool,
                drop_last: bool, pool: np.ndarray | None = None) -> DataLoader:
    """DataLoader over `ds` with an EpochSampler (workers are seeded from `seed`, not from the global RNG);
    `pool`: the indices an epoch draws (start_window_pool), default each window once."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds, batch_size=batch_size, sampler=EpochSampler(len(ds), seed, shuffle, pool), num_workers=num_workers,
        drop_last=drop_last, pin_memory=False, persistent_workers=False, generator=generator,
    )


def batches_per_epoch(n_samples: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps in one epoch of the train split (each process takes batch_size of a global batch)."""
    return max(1, n_samples // (batch_size * world_size))

"""SequenceDataset: training windows (T_o observation steps, T_p action steps) from an EpisodeStore.

Low-dim keys and point clouds (`pointcloud`, float32 [N, 3|6]) are read into memory once. Image keys are read per sample, only the
T_o frames the observation needs, either from an in-memory copy (when the images fit in
`image_cache_bytes`, as Diffusion Policy does) or straight from the zarr chunks. zarr arrays are opened
lazily in each process, so the dataset is safe with DataLoader workers (zarr's event-loop thread must
not be inherited through fork).

A sample is ``{"obs": {key: (T_o, ...)}, "action": (T_p, A)}``: low-dim as float32, images as uint8
(T_o, 3, H, W) -- four times less to move between worker processes than float; the policy's
ImageNormalizer turns them into [0, 1] floats. Everything is raw (not normalized); `get_normalizer()`
fits the statistics once and caches them beside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robopolicy.data.episode_store import EpisodeStore
from robopolicy.data.normalizer import NormalizerSet, fit_normalizers
from robopolicy.data.sampler import pad_window, sequence_indices, split_episodes
from robopolicy.data.schema import key_kind


@dataclass
class SequenceConfig:
    """What a training window holds. Defaults are Diffusion Policy's (T_o=2, T_p=16, T_a=8)."""

    obs_keys: list[str] = field(default_factory=lambda: ["state"])
    action_key: str = "action"
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    val_ratio: float = 0.1
    split_seed: int = 0
    max_train_episodes: int | None = None
    image_crop: tuple[int, int] | None = None  # random crop (H, W) on the fly, same crop for all T_o frames
    image_cache_bytes: int = 4 * 1024**3  # keep images in RAM when they fit; 0 disables
    normalizer_modes: dict[str, str] = field(default_factory=dict)  # key -> minmax|meanstd|identity|image
    language: bool = False  # add obs["language"]: the episode's instruction (its `language` attribute)


class SequenceDataset(Dataset):
    """Windows of one split ('train' or 'val') of an EpisodeStore."""

    def __init__(self, store: EpisodeStore | str | Path, cfg: SequenceConfig, split: str = "train"):
        store = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store, mode="r")
        self.path = store.path
        self.cfg = cfg
        self.split = split
        self._check_config(store)
        val_mask = split_episodes(store.n_episodes, cfg.val_ratio, cfg.split_seed)
        if split == "train":
            mask = ~val_mask
            if cfg.max_train_episodes is not None:
                chosen = np.flatnonzero(mask)[: cfg.max_train_episodes]
                mask = np.zeros_like(mask)
                mask[chosen] = True
        elif split == "val":
            mask = val_mask
        else:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.episode_mask = mask
        self.episode_ends = store.episode_ends
        self.fingerprint = _fingerprint(store)
        self.indices = sequence_indices(
            self.episode_ends, cfg.horizon, pad_before=cfg.n_obs_steps - 1, pad_after=cfg.n_action_steps - 1,
            episode_mask=mask,
        )
        keys = [*cfg.obs_keys, cfg.action_key]
        self.image_keys = [k for k in cfg.obs_keys if key_kind(k) in ("image", "depth")]
        self.lowdim_keys = [k for k in keys if k not in self.image_keys]
        n = store.n_frames
        self._lowdim = {k: np.asarray(store.array(k)[:n]).astype(np.float32, copy=False) for k in self.lowdim_keys}
        image_bytes = sum(int(np.prod(store.array(k).shape[1:])) * n for k in self.image_keys)
        self._images: dict[str, np.ndarray] | None = None
        if self.image_keys and image_bytes <= cfg.image_cache_bytes:
            self._images = {k: store.frame_reader(k).read(0, n) for k in self.image_keys}
        self._languages: list[str] | None = None
        if cfg.language:
            self._languages = [str(a.get("language") or "") for a in store.all_episode_attrs()]
            if mask.any() and not any(self._languages[i] for i in np.flatnonzero(mask)):
                raise ValueError(f"language=True but no {split} episode of {store.path} has a 'language' "
                                 "attribute; collect with a language-instructed task or set language=False")
        self._readers: dict[str, object] = {}
        self._readers_pid = -1
        self._rng = np.random.default_rng()
        self._rng_pid = -1

    def _check_config(self, store: EpisodeStore) -> None:
        cfg = self.cfg
        if store.n_episodes == 0:
            raise ValueError(f"{store.path} has no episodes to train on")
        missing = [k for k in [*cfg.obs_keys, cfg.action_key] if k not in store.keys]
        if missing:
            raise KeyError(f"keys {missing} are not in {store.path}; the store holds {store.keys}")
        if not 1 <= cfg.n_obs_steps <= cfg.horizon or not 1 <= cfg.n_action_steps <= cfg.horizon - cfg.n_obs_steps + 1:
            raise ValueError(
                f"need 1 <= n_obs_steps <= horizon and 1 <= n_action_steps <= horizon - n_obs_steps + 1; got "
                f"T_o={cfg.n_obs_steps}, T_p={cfg.horizon}, T_a={cfg.n_action_steps}"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def window_steps(self) -> np.ndarray:
        """For every window, the episode step of its current (last) observation: 0 for a window that sees
        the episode's first frame as its present."""
        buf_start, sample_start = self.indices[:, 0], self.indices[:, 2]
        episode = np.searchsorted(self.episode_ends, buf_start, side="right")
        episode_start = np.concatenate([[0], self.episode_ends[:-1]])[episode]
        return (buf_start - sample_start - episode_start + self.cfg.n_obs_steps - 1).astype(np.int64)

    # ---------------------------------------------------------------- reading
    def _read_images(self, key: str, start: int, stop: int) -> np.ndarray:
        if self._images is not None:
            return self._images[key][start:stop]
        if self._readers_pid != os.getpid():  # (re)open in this process
            store = EpisodeStore.open(self.path, mode="r")
            self._readers = {k: store.frame_reader(k) for k in self.image_keys}
            self._readers_pid = os.getpid()
        return self._readers[key].read(start, stop)

    def _crop_rng(self) -> np.random.Generator:
        if self._rng_pid != os.getpid():  # distinct crops in every worker
            info = torch.utils.data.get_worker_info()
            seed = torch.initial_seed() if info is None else info.seed
            self._rng = np.random.default_rng(seed % 2**32)
            self._rng_pid = os.getpid()
        return self._rng

    def __getitem__(self, idx: int) -> dict:
        buf_start, buf_end, s_start, s_end = (int(v) for v in self.indices[idx])
        cfg = self.cfg
        obs = {}
        # Observation rows: window positions [0, T_o), i.e. buffer rows up to T_o - s_start from buf_start.
        n_obs_rows = max(1, min(cfg.n_obs_steps - s_start, buf_end - buf_start))
        for key in cfg.obs_keys:
            if key in self._lowdim:
                rows = self._lowdim[key][buf_start:buf_start + n_obs_rows]
            else:
                rows = self._read_images(key, buf_start, buf_start + n_obs_rows)
            window = pad_window(rows, s_start, s_start + len(rows), cfg.n_obs_steps)
            if key_kind(key) == "image":
                window = self._crop(window).transpose(0, 3, 1, 2)
            obs[key] = torch.from_numpy(np.ascontiguousarray(window))
        if self._languages is not None:  # the instruction of the window's episode
            obs["language"] = self._languages[int(np.searchsorted(self.episode_ends, buf_start, side="right"))]
        action = pad_window(self._lowdim[cfg.action_key][buf_start:buf_end], s_start, s_end, cfg.horizon)
        return {"obs": obs, "action": torch.from_numpy(np.ascontiguousarray(action))}

    def _crop(self, frames: np.ndarray) -> np.ndarray:
        if self.cfg.image_crop is None:
            return frames
        ch, cw = self.cfg.image_crop
        h, w = frames.shape[1:3]
        if ch > h or cw > w:
            raise ValueError(f"image_crop {self.cfg.image_crop} is larger than the images ({h}, {w})")
        rng = self._crop_rng()
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return frames[:, y:y + ch, x:x + cw]

    def lowdim_frames(self, key: str) -> np.ndarray:
        """Every frame (both splits, raw) of a low-dim key or the actions: what data-fitted tokenizers see."""
        if key not in self._lowdim:
            raise KeyError(f"'{key}' is not a low-dim key of this dataset ({sorted(self._lowdim)})")
        return self._lowdim[key]

    # ---------------------------------------------------------------- statistics
    def default_normalizer_modes(self) -> dict[str, str]:
        # Point clouds stay in base-frame metres (+ rgb in [0, 1]): identity, as DP3 does. Min-max per
        # point index would be meaningless (points have no fixed order) and per-axis scaling would tie
        # the checkpoint to one crop box; a workspace of about a metre is already O(1).
        modes = {k: ("image" if key_kind(k) == "image" else "identity" if key_kind(k) in ("depth", "pointcloud")
                     else "minmax")
                 for k in [*self.cfg.obs_keys, self.cfg.action_key]}
        modes.update(self.cfg.normalizer_modes)
        return modes

    def get_normalizer(self) -> NormalizerSet:
        """Statistics over all frames of the store (both splits, as Diffusion Policy does), cached on disk."""
        modes = self.default_normalizer_modes()
        tag = hashlib.sha1(json.dumps([self.fingerprint, modes], sort_keys=True).encode()).hexdigest()[:16]
        cache = Path(self.path) / ".robopolicy_cache" / f"normalizer-{tag}.safetensors"
        if cache.exists():
            return NormalizerSet.load(cache)
        normalizer = fit_normalizers(self._lowdim, modes)
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            normalizer.save(tmp)
            tmp.replace(cache)
        except OSError:
            pass  # read-only store: recompute next time
        return normalizer


def _fingerprint(store: EpisodeStore) -> str:
    """Identifies the store's content for caches and checkpoints (schema + episode boundaries)."""
    h = hashlib.sha1(json.dumps(store.schema.to_json() if store.schema else {}, sort_keys=True).encode())
    h.update(store.episode_ends.tobytes())
    return h.hexdigest()

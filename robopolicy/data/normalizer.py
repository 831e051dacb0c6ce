"""Normalizers: small modules with their statistics as buffers, saved with safetensors.

Min-max maps each dimension to [-1, 1] (Diffusion Policy's "limits" mode: clip_sample in the diffusion
schedulers is only right for data in [-1, 1]); mean-std standardises; identity passes through.
Dimensions with (almost) no range are mapped to 0 instead of dividing by ~0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

_EPS = 1e-4


class MinMaxNormalizer(nn.Module):
    kind = "minmax"

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        span = high - low
        flat = span < _EPS
        scale = torch.where(flat, torch.ones_like(span), 2.0 / span.clamp_min(_EPS))
        # Flat dimensions: centre on the constant value so it maps to 0.
        offset = torch.where(flat, -low, -1.0 - low * scale)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.offset) / self.scale

    @classmethod
    def from_buffers(cls, bufs: dict[str, torch.Tensor]) -> MinMaxNormalizer:
        return cls(bufs["low"], bufs["high"])

    @staticmethod
    def fit(data: np.ndarray) -> MinMaxNormalizer:
        flat = np.asarray(data, dtype=np.float64).reshape(len(data), -1) if data.ndim > 1 else data[:, None]
        shape = data.shape[1:]
        return MinMaxNormalizer(
            torch.from_numpy(flat.min(0).reshape(shape)).float(), torch.from_numpy(flat.max(0).reshape(shape)).float()
        )


class MeanStdNormalizer(nn.Module):
    kind = "meanstd"

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clamp_min(_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean

    @classmethod
    def from_buffers(cls, bufs: dict[str, torch.Tensor]) -> MeanStdNormalizer:
        return cls(bufs["mean"], bufs["std"])

    @staticmethod
    def fit(data: np.ndarray) -> MeanStdNormalizer:
        data = np.asarray(data, dtype=np.float64)
        return MeanStdNormalizer(torch.from_numpy(data.mean(0)).float(), torch.from_numpy(data.std(0)).float())


class IdentityNormalizer(nn.Module):
    kind = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y

    @classmethod
    def from_buffers(cls, bufs: dict[str, torch.Tensor]) -> IdentityNormalizer:
        return cls()

    @staticmethod
    def fit(data: np.ndarray) -> IdentityNormalizer:
        return IdentityNormalizer()


class ImageNormalizer(nn.Module):
    """uint8 [0, 255] -> float [0, 1] (DESIGN.md's image convention)."""

    kind = "image"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y * 255.0).round().clamp(0, 255).to(torch.uint8)

    @classmethod
    def from_buffers(cls, bufs: dict[str, torch.Tensor]) -> ImageNormalizer:
        return cls()

    @staticmethod
    def fit(data: np.ndarray) -> ImageNormalizer:
        return ImageNormalizer()


NORMALIZERS: dict[str, type[nn.Module]] = {
    cls.kind: cls for cls in (MinMaxNormalizer, MeanStdNormalizer, IdentityNormalizer, ImageNormalizer)
}


class NormalizerSet(nn.Module):
    """One normalizer per data key; travels inside every checkpoint as normalizer.safetensors."""

    def __init__(self, normalizers: dict[str, nn.Module] | None = None):
        super().__init__()
        self.items = nn.ModuleDict({_mangle(k): v for k, v in (normalizers or {}).items()})

    def __contains__(self, key: str) -> bool:
        return _mangle(key) in self.items

    def __getitem__(self, key: str) -> nn.Module:
        if key not in self:
            raise KeyError(f"no normalizer for '{key}'; have {self.keys()}")
        return self.items[_mangle(key)]

    def keys(self) -> list[str]:
        return [_unmangle(k) for k in self.items]

    def normalize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self[k](v) if k in self else v for k, v in batch.items()}

    def unnormalize(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return self[key].unnormalize(value)

    def save(self, path: str | Path) -> None:
        tensors, kinds = {}, {}
        for key, mod in self.items.items():
            kinds[key] = mod.kind
            for name, buf in mod.named_buffers():
                tensors[f"{key}.{name}"] = buf.detach().cpu().contiguous()
        save_file(tensors, str(path), metadata={f"kind:{k}": v for k, v in kinds.items()})

    @staticmethod
    def load(path: str | Path) -> NormalizerSet:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        mods: dict[str, nn.Module] = {}
        for mkey, kind in meta.items():
            if not mkey.startswith("kind:"):
                continue
            key = mkey[len("kind:"):]
            bufs = {n.split(".", 1)[1]: t for n, t in tensors.items() if n.split(".", 1)[0] == key}
            if kind not in NORMALIZERS:
                raise ValueError(f"{path}: unknown normalizer kind '{kind}' for '{_unmangle(key)}'")
            mods[_unmangle(key)] = NORMALIZERS[kind].from_buffers(bufs)
        return NormalizerSet(mods)


def _mangle(key: str) -> str:  # ModuleDict keys cannot contain '.' or '/'
    return key.replace("/", "__")


def _unmangle(key: str) -> str:
    return key.replace("__", "/")


def fit_normalizers(data: dict[str, np.ndarray], modes: dict[str, str]) -> NormalizerSet:
    """Fit one normalizer per key (mode names: minmax, meanstd, identity, image)."""
    out = {}
    for key, mode in modes.items():
        if mode not in NORMALIZERS:
            raise ValueError(f"unknown normalizer mode '{mode}' for '{key}'; choose from {sorted(NORMALIZERS)}")
        out[key] = NORMALIZERS[mode].fit(data[key]) if key in data else NORMALIZERS[mode]()
    return NormalizerSet(out)

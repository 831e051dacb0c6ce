"""Sinusoidal embeddings of a scalar (diffusion step index or flow time) per batch row."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sin/cos features of a scalar per row: (B,) -> (B, dim).

    The frequencies span 1 .. 1/10000 over positions 0..~1000, which suits integer diffusion steps
    (0..99 for Diffusion Policy). Continuous flow times t in [0, 1] would use only the lowest
    frequencies and give nearly identical embeddings for all t, so callers with continuous time pass
    `scale=1000` (t -> 1000 t, the common convention in flow-matching policies); `scale` is applied here
    so every caller states it once, in its network config.
    """

    def __init__(self, dim: int, scale: float = 1.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim
        self.scale = float(scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) or scalar, integer or float -> (B, dim) float32."""
        t = torch.as_tensor(t, device=self.freqs.device)
        if t.ndim == 0:
            t = t[None]
        if t.ndim != 1:
            raise ValueError(f"expected a (B,) tensor of steps or times, got shape {tuple(t.shape)}")
        args = (t.to(self.freqs.dtype) * self.scale)[:, None] * self.freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)

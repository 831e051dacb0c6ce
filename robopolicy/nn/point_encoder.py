"""A DP3-style lightweight point-cloud encoder: a shared per-point MLP, max pooling, a projection.

Every point (xyz, or xyz + rgb) goes through the same MLP (Linear -> LayerNorm -> ReLU per layer, as
DP3's "mlp" PointNet), the features are max-pooled over the points -- so the output does not depend on
the points' order or on duplicated points -- and a Linear + LayerNorm projects the pooled vector to
`feature_dim` (DP3 and MP1 use 64). No T-Nets, no colour by default (DP3's finding: xyz alone is best).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class PointEncoderConfig:
    """Widths of the per-point MLP and the output size."""

    hidden: list[int] = field(default_factory=lambda: [64, 128, 256])
    feature_dim: int = 64
    layer_norm: bool = True  # DP3's use_layernorm; keeps training stable without batch statistics
    final_norm: bool = True  # LayerNorm after the projection (DP3's final_norm="layernorm")


class PointEncoder(nn.Module):
    """(..., N, C) points -> (..., feature_dim); invariant to permutations of the N points."""

    def __init__(self, in_channels: int, cfg: PointEncoderConfig | None = None):
        super().__init__()
        cfg = cfg or PointEncoderConfig()
        if in_channels not in (3, 6):
            raise ValueError(f"points must have 3 (xyz) or 6 (xyz + rgb) channels, got {in_channels}")
        if not cfg.hidden or cfg.feature_dim < 1:
            raise ValueError(f"point encoder needs hidden widths and feature_dim >= 1, got {cfg}")
        self.cfg = cfg
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        d = in_channels
        for h in cfg.hidden:
            layers.append(nn.Linear(d, h))
            if cfg.layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(nn.ReLU())
            d = h
        self.point_mlp = nn.Sequential(*layers)
        proj: list[nn.Module] = [nn.Linear(d, cfg.feature_dim)]
        if cfg.final_norm:
            proj.append(nn.LayerNorm(cfg.feature_dim))
        self.projection = nn.Sequential(*proj)
        self.feature_dim = cfg.feature_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim < 2 or points.shape[-1] != self.in_channels:
            raise ValueError(f"points must be (..., N, {self.in_channels}), got {tuple(points.shape)}")
        feats = self.point_mlp(points)  # (..., N, hidden[-1])
        pooled = feats.max(dim=-2).values  # order-invariant
        return self.projection(pooled)

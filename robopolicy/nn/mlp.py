"""A plain MLP, used as the low-dim state encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"mish": nn.Mish, "tanh": nn.Tanh, "relu": nn.ReLU}


class MLP(nn.Module):
    """Linear layers with an activation (Mish by default) between them, none after the last; `hidden=()` is a
    single linear map."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool = False,
                 activation: str = "mish"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                if layer_norm:
                    layers.append(nn.LayerNorm(dims[i + 1]))
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

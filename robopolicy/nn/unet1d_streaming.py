"""1-D conditional UNet whose FiLM condition sees one diffusion step *per position* of the chunk (SDP).

Streaming Diffusion Policy keeps an action buffer in which every position carries its own noise level, so
the network has to be told the whole noise profile, not one scalar step. As in SDP's
`conditional_unet1d_tedi.py`, each of the T_p steps gets a sinusoidal embedding; the T_p embeddings are
flattened (T_p * dsed) and mapped through Linear(T_p * dsed -> 4 dsed) -> Mish -> Linear(-> dsed). The
result replaces the scalar step embedding of Diffusion Policy's UNet; everything else (residual blocks,
FiLM, skips) is `ConditionalUnet1D` unchanged, so the horizon is fixed at construction.

A scalar step or one step per row, (B,), is broadcast to every position (the "constant level" case,
identical in meaning to the plain UNet's input).
"""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.nn.embeddings import SinusoidalEmbedding
from robopolicy.nn.unet1d import ConditionalUnet1D, UNetConfig, check_horizon


class PerPositionStepEncoder(nn.Module):
    """Steps (B, T_p) (or (B,) / scalar, broadcast) -> one step feature per row (B, dsed)."""

    def __init__(self, horizon: int, dim: int, time_scale: float = 1.0):
        super().__init__()
        self.horizon = int(horizon)
        self.embed = SinusoidalEmbedding(dim, scale=time_scale)
        self.mlp = nn.Sequential(nn.Linear(self.horizon * dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        steps = torch.as_tensor(steps, device=self.embed.freqs.device)
        if steps.ndim == 0:
            steps = steps[None]
        if steps.ndim == 1:  # one level per row: the same level at every position
            steps = steps[:, None].expand(-1, self.horizon)
        if steps.ndim != 2 or steps.shape[1] != self.horizon:
            raise ValueError(f"expected per-position steps of shape (B, {self.horizon}) or (B,), "
                             f"got {tuple(steps.shape)}")
        b = steps.shape[0]
        emb = self.embed(steps.reshape(-1))  # (B * T_p, dim)
        return self.mlp(emb.reshape(b, -1))


class StreamingUnet1D(ConditionalUnet1D):
    """eps network for SDP: (x (B, T_p, A), steps (B, T_p), global_cond (B, C)) -> (B, T_p, A)."""

    def __init__(self, action_dim: int, global_cond_dim: int, horizon: int, cfg: UNetConfig | None = None):
        cfg = cfg or UNetConfig()
        check_horizon(horizon, cfg.down_dims)
        super().__init__(action_dim, global_cond_dim, cfg)
        self.horizon = int(horizon)
        # Replaces the scalar step encoder: ConditionalUnet1D.forward calls self.step_encoder(step) as is.
        self.step_encoder = PerPositionStepEncoder(horizon, cfg.diffusion_step_embed_dim, cfg.time_scale)

    def forward(self, x: torch.Tensor, step: torch.Tensor, global_cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim == 3 and x.shape[1] != self.horizon:
            raise ValueError(f"this network was built for horizon {self.horizon} (the per-position step encoder "
                             f"has a fixed width); got a chunk of length {x.shape[1]}")
        return super().forward(x, step, global_cond)

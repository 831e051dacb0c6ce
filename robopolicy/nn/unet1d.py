"""1-D temporal UNet with FiLM conditioning (Diffusion Policy's `ConditionalUnet1D` design).

Input is an action chunk (B, T_p, A) plus a scalar step/time per row and a global condition vector (the
flattened observation features). The condition is concat(step embedding, obs features); every residual
block turns it into a per-channel scale and bias (FiLM, `cond_predict_scale=True`) applied between its two
convolutions. Convolutions run over time with kernel 5, GroupNorm(8) and Mish, as in the official code.

Layout with down_dims [d0, d1, d2]: each level has two residual blocks, then a stride-2 downsample except
on the last level; two middle blocks; the up path mirrors levels 1..n-1 with skip connections. The
horizon therefore has to be divisible by 2 ** (len(down_dims) - 1). As in the official network, the skip
features of the first level are not consumed by the up path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from robopolicy.nn.conv1d import MatmulConv1d, MatmulConvTranspose1d
from robopolicy.nn.embeddings import SinusoidalEmbedding


@dataclass
class UNetConfig:
    """Sizes of the conditional UNet. Defaults are the official low-dim ones; see `unet_preset`."""

    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 256
    cond_predict_scale: bool = True  # FiLM scale + bias; False: bias only
    time_scale: float = 1.0  # multiplies the step before the sinusoidal embedding (1000 for t in [0, 1])


UNET_PRESETS: dict[str, dict] = {
    # Official Diffusion Policy sizes (low-dim: train_diffusion_unet_lowdim_workspace.yaml; image/hybrid).
    "lowdim": {"down_dims": [256, 512, 1024], "diffusion_step_embed_dim": 256},
    "image": {"down_dims": [512, 1024, 2048], "diffusion_step_embed_dim": 128},
    # CPU presets: ~4 M and ~0.3 M parameters; fast enough for the quickstart and the tests.
    "cpu": {"down_dims": [64, 128, 256], "diffusion_step_embed_dim": 64},
    "tiny": {"down_dims": [32, 64], "diffusion_step_embed_dim": 32},
}


def unet_preset(name: str, **overrides) -> UNetConfig:
    """A UNetConfig from a named preset ('lowdim', 'image', 'cpu', 'tiny') with field overrides."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose from {sorted(UNET_PRESETS)}")
    return UNetConfig(**{**UNET_PRESETS[name], **overrides})


def check_horizon(horizon: int, down_dims: list[int]) -> None:
    """Raise a clear error when the UNet cannot down- and up-sample a chunk of this length exactly."""
    factor = 2 ** (len(down_dims) - 1)
    if horizon < 1 or horizon % factor:
        raise ValueError(
            f"horizon {horizon} is not divisible by 2**(len(down_dims)-1) = {factor} "
            f"(down_dims={list(down_dims)}): the UNet halves the chunk length {len(down_dims) - 1} times. "
            f"Use a horizon that is a multiple of {factor} or fewer down_dims."
        )


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__()
        if c_out % n_groups:
            raise ValueError(f"channels {c_out} are not divisible by n_groups {n_groups}")
        self.block = nn.Sequential(
            MatmulConv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CondResBlock1d(nn.Module):
    """Two conv blocks with FiLM from the condition in between, plus a residual (1x1 conv if widths differ)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int, predict_scale: bool):
        super().__init__()
        self.conv1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.predict_scale = predict_scale
        self.c_out = c_out
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out if predict_scale else c_out))
        self.residual = MatmulConv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        film = self.film(cond).unsqueeze(-1)
        if self.predict_scale:
            scale, bias = film[:, : self.c_out], film[:, self.c_out:]
            h = scale * h + bias
        else:
            h = h + film
        return self.conv2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """eps/velocity network: (x (B, T, A), step (B,), global_cond (B, C)) -> (B, T, A)."""

    def __init__(self, action_dim: int, global_cond_dim: int, cfg: UNetConfig | None = None):
        super().__init__()
        cfg = cfg or UNetConfig()
        if not cfg.down_dims:
            raise ValueError("down_dims must name at least one level")
        self.cfg = cfg
        dsed = cfg.diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalEmbedding(dsed, scale=cfg.time_scale),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        cond_dim = dsed + global_cond_dim
        k, g, ps = cfg.kernel_size, cfg.n_groups, cfg.cond_predict_scale
        dims = [action_dim, *cfg.down_dims]
        levels = list(zip(dims[:-1], dims[1:], strict=True))

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            last = i == len(levels) - 1
            self.down.append(nn.ModuleList([
                CondResBlock1d(c_in, c_out, cond_dim, k, g, ps),
                CondResBlock1d(c_out, c_out, cond_dim, k, g, ps),
                MatmulConv1d(c_out, c_out, 3, stride=2, padding=1) if not last else nn.Identity(),
            ]))
        mid = cfg.down_dims[-1]
        self.mid = nn.ModuleList([CondResBlock1d(mid, mid, cond_dim, k, g, ps) for _ in range(2)])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(levels[1:]):
            # input: current features (c_out) concatenated with the skip of the same level (c_out)
            self.up.append(nn.ModuleList([
                CondResBlock1d(c_out * 2, c_in, cond_dim, k, g, ps),
                CondResBlock1d(c_in, c_in, cond_dim, k, g, ps),
                MatmulConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),
            ]))
        start = cfg.down_dims[0]
        self.final = nn.Sequential(Conv1dBlock(start, start, k, g), MatmulConv1d(start, action_dim, 1))
        self.action_dim, self.global_cond_dim = action_dim, global_cond_dim

    def forward(self, x: torch.Tensor, step: torch.Tensor, global_cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.action_dim:
            raise ValueError(f"expected x of shape (B, T, {self.action_dim}), got {tuple(x.shape)}")
        check_horizon(x.shape[1], self.cfg.down_dims)
        b = x.shape[0]
        step = torch.as_tensor(step, device=x.device)
        if step.ndim == 0:
            step = step.expand(b)
        cond = self.step_encoder(step)
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (b, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"expected global_cond of shape ({b}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond], dim=-1)
        h = x.transpose(1, 2)  # (B, A, T): convolve over time
        skips = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, cond)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = res2(res1(h, cond), cond)
            h = upsample(h)
        return self.final(h).transpose(1, 2)

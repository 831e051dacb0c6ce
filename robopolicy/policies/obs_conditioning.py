"""Observations -> one global conditioning vector per batch row, shared by every chunk-generating head.

Per observed frame the features of every camera (one image encoder per camera, or one shared, by config)
and of the low-dim keys (raw, as Diffusion Policy's low-dim policy does, or through an MLP) are
concatenated; the T_o frames are then flattened: (B, T_o * F). Inputs are normalized: low-dim keys in
[-1, 1], images float in [0, 1] as (B, T_o, 3, H, W) (see policies/base.py). A `pointcloud` key
(B, T_o, N, 3 or 6), base-frame metres, goes through a DP3-style point encoder (nn/point_encoder.py);
which of images, point clouds and state condition the head is chosen by the keys alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robopolicy.data.schema import key_kind
from robopolicy.nn.mlp import MLP
from robopolicy.nn.point_encoder import PointEncoder, PointEncoderConfig
from robopolicy.nn.vision import ImageEncoder, ImageEncoderConfig
from robopolicy.policies.base import PolicySpec


@dataclass
class ObsEncoderConfig:
    """How observations become the condition. Defaults: one GroupNorm ResNet-18 per camera, raw state."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    share_image_encoder: bool = False  # one encoder for all cameras (DP's share_rgb_model) or one per camera
    state_encoder: str = "identity"  # "identity" (raw normalized state, DP low-dim) or "mlp"
    state_hidden: list[int] = field(default_factory=lambda: [256])
    state_feature_dim: int = 64  # output width of the MLP state encoder
    keys: list[str] | None = None  # observation keys to use; None: every key of the spec
    point: PointEncoderConfig = field(default_factory=PointEncoderConfig)  # for `pointcloud` keys


class ObsConditioner(nn.Module):
    """Encodes an observation history into the global condition (B, out_dim) of the UNet."""

    def __init__(self, spec: PolicySpec, cfg: ObsEncoderConfig | None = None):
        super().__init__()
        cfg = cfg or ObsEncoderConfig()
        self.cfg = cfg
        self.n_obs_steps = spec.n_obs_steps
        if spec.language:
            raise ValueError("this observation encoder has no language input; build the spec with language=False")
        keys = list(cfg.keys) if cfg.keys is not None else sorted(spec.obs_shapes)
        unknown = [k for k in keys if k not in spec.obs_shapes]
        if unknown:
            raise KeyError(f"obs keys {unknown} are not in the policy spec (has {sorted(spec.obs_shapes)})")
        if not keys:
            raise ValueError("the policy spec has no observation keys to condition on")
        self.image_keys = [k for k in keys if key_kind(k) == "image"]
        self.lowdim_keys = [k for k in keys if key_kind(k) == "lowdim"]
        self.point_keys = [k for k in keys if key_kind(k) == "pointcloud"]
        others = [k for k in keys if k not in (*self.image_keys, *self.lowdim_keys, *self.point_keys)]
        if others:
            raise ValueError(f"obs keys {others} are not supported (images/<cam>, pointcloud and flat low-dim "
                             "keys are)")
        for k in self.point_keys:
            shape = tuple(spec.obs_shapes[k])
            if len(shape) != 2 or shape[1] not in (3, 6):
                raise ValueError(f"point-cloud key '{k}' must have per-step shape (N, 3) or (N, 6), got {shape}")
        for k in self.image_keys:
            shape = tuple(spec.obs_shapes[k])
            if len(shape) != 3 or shape[0] != 3:
                raise ValueError(f"image key '{k}' must have per-step shape (3, H, W), got {shape}")
        for k in self.lowdim_keys:
            if len(spec.obs_shapes[k]) != 1:
                raise ValueError(f"low-dim key '{k}' must be flat (D,), got {tuple(spec.obs_shapes[k])}")

        self.image_encoders = nn.ModuleDict()
        if self.image_keys:
            if cfg.share_image_encoder:
                self.image_encoders["shared"] = ImageEncoder(cfg.image)
            else:
                for k in self.image_keys:
                    self.image_encoders[_mangle(k)] = ImageEncoder(cfg.image)
            for k in self.image_keys:
                self._image_encoder(k).check_image_size(*spec.obs_shapes[k][1:])
        self.state_dim = sum(int(spec.obs_shapes[k][0]) for k in self.lowdim_keys)
        self.state_encoder: nn.Module = nn.Identity()
        state_out = self.state_dim
        if self.lowdim_keys and cfg.state_encoder == "mlp":
            self.state_encoder = MLP(self.state_dim, cfg.state_hidden, cfg.state_feature_dim)
            state_out = cfg.state_feature_dim
        elif cfg.state_encoder not in ("identity", "mlp"):
            raise ValueError(f"state_encoder must be 'identity' or 'mlp', got {cfg.state_encoder!r}")
        self.point_encoders = nn.ModuleDict(
            {_mangle(k): PointEncoder(int(spec.obs_shapes[k][1]), cfg.point) for k in self.point_keys})
        self.frame_dim = (len(self.image_keys) * cfg.image.feature_dim + len(self.point_keys) * cfg.point.feature_dim
                          + (state_out if self.lowdim_keys else 0))
        self.out_dim = self.n_obs_steps * self.frame_dim

    def _image_encoder(self, key: str) -> ImageEncoder:
        return self.image_encoders["shared" if self.cfg.share_image_encoder else _mangle(key)]

    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        """obs: key -> (B, T >= T_o, ...); the first T_o frames are used. Returns (B, T_o * frame_dim)."""
        t_o = self.n_obs_steps
        missing = [k for k in [*self.image_keys, *self.point_keys, *self.lowdim_keys] if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing} (got {sorted(obs)})")
        feats = []
        batch = None
        for k in self.image_keys:
            x = obs[k]
            if x.ndim != 5 or x.shape[1] < t_o:
                raise ValueError(f"'{k}' must be (B, T>={t_o}, 3, H, W), got {tuple(x.shape)}")
            b = x.shape[0]
            x = x[:, :t_o]
            f = self._image_encoder(k)(x.reshape(b * t_o, *x.shape[2:]))
            feats.append(f.reshape(b, t_o, -1))
            batch = b
        for k in self.point_keys:
            x = obs[k]
            if x.ndim != 4 or x.shape[1] < t_o:
                raise ValueError(f"'{k}' must be (B, T>={t_o}, N, C), got {tuple(x.shape)}")
            feats.append(self.point_encoders[_mangle(k)](x[:, :t_o].float()))
            batch = x.shape[0]
        if self.lowdim_keys:
            parts = []
            for k in self.lowdim_keys:
                x = obs[k]
                if x.ndim != 3 or x.shape[1] < t_o:
                    raise ValueError(f"'{k}' must be (B, T>={t_o}, D), got {tuple(x.shape)}")
                parts.append(x[:, :t_o] if torch.is_floating_point(x) else x[:, :t_o].float())
            state = torch.cat(parts, dim=-1)
            feats.append(self.state_encoder(state))
            batch = state.shape[0]
        out = torch.cat(feats, dim=-1)
        return out.reshape(batch, -1)


def executed_slice(spec: PolicySpec) -> slice:
    """Positions of a predicted chunk that are executed: [T_o - 1, T_o - 1 + T_a) (index T_o-1 = now)."""
    return slice(spec.n_obs_steps - 1, spec.n_obs_steps - 1 + spec.n_action_steps)


def check_noise(noise: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The initial noise for a chain: validated if given, otherwise drawn from the global torch RNG."""
    if noise is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {tuple(shape)} (B, T_p, A), got {tuple(noise.shape)}")
    return noise.to(device=like.device, dtype=like.dtype)


def batch_size_of(obs: dict[str, Any]) -> int:
    """Batch size of an observation dict (first tensor value)."""
    for v in obs.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise ValueError("observation dict has no tensor values")


def derived_step_noise(noise: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Per-step noises (B, n_steps, *noise.shape[1:]) derived deterministically from each row of `noise`.

    Each row seeds its own torch.Generator from a hash of its bytes, so a row's chain depends only on its
    own initial noise (not on the batch it is in) and predict_chunk is a deterministic function of noise.
    """
    rows = []
    flat = noise.detach().to("cpu", torch.float32).contiguous()
    for row in flat:
        seed = int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest(), "little")
        g = torch.Generator().manual_seed(seed)
        rows.append(torch.randn((n_steps, *row.shape), generator=g))
    return torch.stack(rows).to(device=noise.device, dtype=noise.dtype)


def _mangle(key: str) -> str:  # ModuleDict keys cannot contain '.' or '/'
    return key.replace("/", "__").replace(".", "_")


def gaussian_step_log_probs(xs: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Per-step log N(xs[:, k+1]; means[:, k], stds[:, k]^2) summed over the chunk: (B, K).

    Steps whose std is zero everywhere are deterministic transitions (DDIM eta=0, Euler, the last DDPM
    step): they carry no density and contribute 0. Partly-zero stds are an error (no density either).
    """
    target = xs[:, 1:]
    stds = torch.broadcast_to(stds, target.shape)
    b, k = target.shape[:2]
    flat_std = stds.reshape(b, k, -1)
    stochastic = (flat_std > 0).all(dim=-1)
    deterministic = (flat_std == 0).all(dim=-1)
    if not bool((stochastic | deterministic).all()):
        raise ValueError("a denoising step has some zero and some positive stds: it has no Gaussian density")
    safe_std = torch.where(flat_std > 0, flat_std, torch.ones_like(flat_std))
    z = (target - means).reshape(b, k, -1) / safe_std
    lp = -0.5 * z.pow(2) - safe_std.log() - 0.5 * math.log(2 * math.pi)
    return torch.where(stochastic, lp.sum(-1), torch.zeros((), dtype=lp.dtype, device=lp.device))

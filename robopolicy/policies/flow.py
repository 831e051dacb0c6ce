"""Rectified-flow policy head in ReinFlow's convention, with K-step Euler sampling chosen at inference.

Convention (ALGORITHMS.md section 0): noise x_0 ~ N(0, I) at t = 0, data x_1 (the normalized chunk) at
t = 1, x_t = t x_1 + (1 - t) x_0, target velocity v = x_1 - x_0, integrate t: 0 -> 1. Training minimizes
||v_theta(x_t, t, obs) - (x_1 - x_0)||^2. The UNet embeds t * time_scale (1000 by default) because the
sinusoidal features need a range like the diffusion steps'.

Sampling uses ONE time grid t_i = i / K everywhere (rollout and log-prob; ReinFlow pitfall 1):
    mean_i = x_i + v_theta(x_i, t_i, obs) / K   (clipped to [-1, 1] when clip_intermediate, and always at
                                                 the last step, as ReinFlow does)
    x_{i+1} = mean_i + std_i * z_i
std_i comes from `step_std`, zeros by default (plain Euler, a deterministic chain with no density).
ReinFlow plugs its learned noise net in there: `set_step_std(module)` with a callable
(x_i, t_i, cond, i) -> std broadcastable to (B, T_p, A), or a tensor of per-step stds (K,) / (K, T_p, A).
Only the mean is clipped; the Gaussian draw is not (pitfall 2: a clipped draw has no Normal density).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from robopolicy.nn.unet1d import ConditionalUnet1D, UNetConfig, check_horizon
from robopolicy.policies.base import Chain, GenerativePolicy, PolicySpec
from robopolicy.policies.obs_conditioning import (
    ObsConditioner,
    ObsEncoderConfig,
    batch_size_of,
    check_noise,
    derived_step_noise,
    gaussian_step_log_probs,
)

StepStd = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
TIME_SAMPLING = ("uniform", "logit_normal")


class FlowPolicy(GenerativePolicy):
    """Rectified flow over action chunks with a conditional 1-D UNet velocity network."""

    @dataclass
    class Config:
        """Hyper-parameters. The network sizes follow Diffusion Policy's UNet (see DiffusionPolicy.Config
        for the image and CPU presets); K = 4 is ReinFlow's state-task setting, 1 its image setting."""

        unet: UNetConfig = field(default_factory=UNetConfig)
        obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
        time_scale: float = 1000.0  # t in [0, 1] -> t * 1000 before the sinusoidal embedding
        time_sampling: str = "uniform"  # training times: "uniform" or "logit_normal" (N(0, 1) through a sigmoid)
        clip_intermediate: bool = True  # clip every Euler mean to [-1, 1] (ReinFlow); the last is always clipped
        # Inference setting (change after training with set_inference):
        num_inference_steps: int = 10

    def __init__(self, spec: PolicySpec, cfg: FlowPolicy.Config | None = None):
        super().__init__()
        cfg = cfg or FlowPolicy.Config()
        check_horizon(spec.horizon, cfg.unet.down_dims)
        if cfg.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {cfg.time_sampling!r}")
        self.spec = spec
        self.cfg = cfg
        self.obs_encoder = ObsConditioner(spec, cfg.obs)
        self.model = ConditionalUnet1D(spec.action_dim, self.obs_encoder.out_dim,
                                       replace(cfg.unet, time_scale=cfg.time_scale))
        self.step_std: StepStd | torch.Tensor | None = None
        self.set_inference()

    # ------------------------------------------------------------------ settings
    def set_inference(self, num_inference_steps: int | None = None) -> None:
        """Choose the number of Euler steps K after training."""
        k = self.cfg.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        if k < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {k}")
        self.cfg = replace(self.cfg, num_inference_steps=k)

    def set_step_std(self, step_std: StepStd | torch.Tensor | None) -> None:
        """Noise of the Euler chain: None (deterministic), a callable (x_i, t_i, cond, i) -> std, or a
        tensor of per-step stds with leading dimension K. An nn.Module is registered as a submodule."""
        if isinstance(step_std, torch.Tensor) and (step_std < 0).any():
            raise ValueError("step stds must be >= 0")
        if "step_std" in self._modules:
            del self._modules["step_std"]
        self.step_std = step_std

    @property
    def nfe(self) -> int:
        return int(self.cfg.num_inference_steps)

    def times(self, k: int | None = None) -> torch.Tensor:
        """The single time grid t_i = i / K, i = 0..K-1."""
        k = self.nfe if k is None else k
        return torch.arange(k, dtype=torch.float32) / k

    # ------------------------------------------------------------------ training
    def encode_obs(self, obs: dict[str, Any]) -> torch.Tensor:
        """Global condition (B, C) from normalized observations."""
        return self.obs_encoder(obs)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v_theta(x_t, t, obs) for t (B,) in [0, 1]."""
        return self.model(x, t, cond)

    def _sample_times(self, b: int, like: torch.Tensor) -> torch.Tensor:
        if self.cfg.time_sampling == "uniform":
            return torch.rand(b, device=like.device, dtype=like.dtype)
        return torch.sigmoid(torch.randn(b, device=like.device, dtype=like.dtype))

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x1 = batch["action"]
        want = (self.spec.horizon, self.spec.action_dim)
        if x1.ndim != 3 or tuple(x1.shape[1:]) != want:
            raise ValueError(f"action must be (B, {want[0]}, {want[1]}) (B, T_p, A), got {tuple(x1.shape)}")
        cond = self.encode_obs(batch["obs"])
        x0 = torch.randn_like(x1)
        t = self._sample_times(x1.shape[0], x1)
        xt = t[:, None, None] * x1 + (1 - t[:, None, None]) * x0
        loss = F.mse_loss(self.velocity(xt, t, cond), x1 - x0)
        return {"loss": loss, "mse": loss.detach()}

    # ------------------------------------------------------------------ chain
    def _std(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, i: int, k: int) -> torch.Tensor:
        if self.step_std is None:
            return torch.zeros_like(x)
        if isinstance(self.step_std, torch.Tensor):
            if self.step_std.shape[0] != k:
                raise ValueError(f"step_std has {self.step_std.shape[0]} steps but sampling uses K = {k}")
            std = self.step_std[i].to(x)
        else:
            std = self.step_std(x, t, cond, i)
        return torch.broadcast_to(std, x.shape)

    def _mean(self, x: torch.Tensor, v: torch.Tensor, i: int, k: int) -> torch.Tensor:
        mean = x + v / k
        if self.cfg.clip_intermediate or i == k - 1:
            mean = mean.clamp(-1.0, 1.0)
        return mean

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A) by K deterministic Euler steps from `noise` (the mean path)."""
        return self.sample_chain(obs, noise, stochastic=False).actions

    def sample_chain(self, obs: dict[str, Any], noise: torch.Tensor | None = None, stochastic: bool = True,
                     step_noise: torch.Tensor | None = None) -> Chain:
        """K Euler steps recorded as Gaussian transitions N(mean_i, std_i^2) (std from `step_std`).

        Args:
            noise: x_0 (B, T_p, A); drawn from the global RNG when None.
            stochastic: add std_i * z_i; False follows the means (stds stored as 0).
            step_noise: standard normal draws (B, K, T_p, A); default derived deterministically from `noise`.
        """
        cond = self.encode_obs(obs)
        b = batch_size_of(obs)
        x = check_noise(noise, self.noise_shape(b), cond)
        k = self.nfe
        ts = self.times(k).to(x.device)
        stochastic = stochastic and self.step_std is not None
        if stochastic and step_noise is None:
            step_noise = derived_step_noise(x, k)
        if step_noise is not None and tuple(step_noise.shape) != (b, k, *x.shape[1:]):
            raise ValueError(f"step_noise must be {(b, k, *x.shape[1:])} (B, K, T_p, A), got {tuple(step_noise.shape)}")
        xs, means, stds = [x], [], []
        for i in range(k):
            t = ts[i].expand(b)
            mean = self._mean(x, self.velocity(x, t, cond), i, k)
            std = self._std(x, t, cond, i, k) if stochastic else torch.zeros_like(mean)
            x = mean + std * step_noise[:, i] if stochastic else mean
            xs.append(x)
            means.append(mean)
            stds.append(std)
        return Chain(xs=torch.stack(xs, 1), means=torch.stack(means, 1), stds=torch.stack(stds, 1), timesteps=ts)

    def step_log_probs(self, obs: dict[str, Any], chain: Chain) -> torch.Tensor:
        """Per-step log-probs (B, K) under the current velocity net and step_std (differentiable in both).

        Means are recomputed for the stored xs in one batched network call, on the chain's own time grid.
        """
        cond = self.encode_obs(obs)
        b, k = chain.xs.shape[0], chain.n_steps
        ts = chain.timesteps.to(chain.xs.device, chain.xs.dtype)
        if len(ts) != k:
            raise ValueError("chain.timesteps must have one entry per step")
        x_in = chain.xs[:, :-1]
        v = self.velocity(x_in.reshape(b * k, *x_in.shape[2:]), ts.repeat(b), cond.repeat_interleave(k, dim=0))
        v = v.reshape(b, k, *v.shape[1:])
        means = torch.stack([self._mean(x_in[:, i], v[:, i], i, k) for i in range(k)], 1)
        stds = torch.stack([self._std(x_in[:, i], ts[i].expand(b), cond, i, k) for i in range(k)], 1)
        return gaussian_step_log_probs(chain.xs, means, stds)

    def chain_log_prob(self, obs: dict[str, Any], chain: Chain, include_initial: bool = False) -> torch.Tensor:
        """Sum of the step log-probs (B,); `include_initial` adds log N(x_0; 0, I) (ReinFlow's full chain).

        Raises when no step_std is set: the plain Euler chain is deterministic and has no density.
        """
        if self.step_std is None:
            raise ValueError("the Euler chain is deterministic (no step_std set): it has no density; "
                             "call set_step_std(...) first (ReinFlow's noise net)")
        lp = self.step_log_probs(obs, chain).sum(1)
        if include_initial:
            x0 = chain.xs[:, 0].reshape(chain.xs.shape[0], -1)
            lp = lp + torch.distributions.Normal(0.0, 1.0).log_prob(x0).sum(-1)
        return lp

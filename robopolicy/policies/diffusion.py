"""Diffusion Policy head (Chi et al.): epsilon-prediction DDPM over action chunks with a FiLM 1-D UNet.

Training follows the official code: 100 diffusion steps, `squaredcos_cap_v2` betas, `clip_sample=True`
(x0 clamped to [-1, 1]; actions are min-max normalized to [-1, 1]), MSE on the noise over the whole
chunk. The schedulers are diffusers' DDPMScheduler / DDIMScheduler. Sampling is chosen at inference
(`set_inference(scheduler="ddim", num_inference_steps=8)`) without retraining.

Denoising chain (for PPO on the chain, ALGORITHMS.md section 10): every step x_k -> x_{k-1} is a Gaussian
N(mean, std^2):
- DDPM: the posterior mean from the clipped x0 and std = sqrt(beta_tilde) ("fixed_small"); the last step
  (t = 0) adds no noise in diffusers, so its std is 0.
- DDIM: mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps, std = eta * sqrt(variance); eta = 0
  is deterministic (all stds 0). The mean comes from DDIMScheduler.step with zero variance noise.
Stochastic sampling takes its per-step noises from `step_noise` (B, K, T_p, A) when given; otherwise
they are derived deterministically from each row of the initial noise (a torch.Generator seeded with a
hash of the row), so `predict_chunk(obs, noise)` is a deterministic function of `noise` for DDPM too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

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

SCHEDULERS = ("ddpm", "ddim")


class DiffusionPolicy(GenerativePolicy):
    """Diffusion Policy with a conditional 1-D UNet; DDPM or DDIM sampling chosen at inference."""

    @dataclass
    class Config:
        """Hyper-parameters; defaults are the official low-dim ones (train_diffusion_unet_lowdim_workspace).

        Image policies: `unet=unet_preset("image")` (down_dims [512, 1024, 2048], step embed 128) and
        `obs.image.crop_shape=[76, 76]` for 96x96 images. CPU presets: `unet_preset("cpu")` (down_dims
        [64, 128, 256]) and `obs.image` from IMAGE_ENCODER_PRESETS["cpu"].
        """

        unet: UNetConfig = field(default_factory=UNetConfig)
        obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
        num_train_timesteps: int = 100
        beta_schedule: str = "squaredcos_cap_v2"
        beta_start: float = 0.0001  # ignored by squaredcos_cap_v2
        beta_end: float = 0.02  # ignored by squaredcos_cap_v2
        clip_sample: bool = True
        prediction_type: str = "epsilon"  # or "sample"
        # Inference settings (change after training with set_inference):
        scheduler: str = "ddpm"  # "ddpm" or "ddim"
        num_inference_steps: int = 100  # DDPM: 100 (sim configs); DDIM: 8 (official DDIM config) to 16
        eta: float = 0.0  # DDIM only: 0 deterministic, 1 = DDPM-like variance

    def __init__(self, spec: PolicySpec, cfg: DiffusionPolicy.Config | None = None):
        super().__init__()
        cfg = cfg or DiffusionPolicy.Config()
        check_horizon(spec.horizon, cfg.unet.down_dims)
        if cfg.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {cfg.prediction_type!r}")
        self.spec = spec
        self.cfg = cfg
        self.obs_encoder = ObsConditioner(spec, cfg.obs)
        self.model = ConditionalUnet1D(spec.action_dim, self.obs_encoder.out_dim, cfg.unet)
        sched_kwargs = dict(
            num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
            beta_end=cfg.beta_end, clip_sample=cfg.clip_sample, prediction_type=cfg.prediction_type,
        )
        self.train_scheduler = DDPMScheduler(variance_type="fixed_small", **sched_kwargs)
        self._sched_kwargs = sched_kwargs
        self.set_inference()

    # ------------------------------------------------------------------ inference settings
    def set_inference(self, scheduler: str | None = None, num_inference_steps: int | None = None,
                      eta: float | None = None) -> None:
        """Choose the sampler after training: scheduler 'ddpm' | 'ddim', number of steps, DDIM eta."""
        cfg = replace(
            self.cfg,
            scheduler=self.cfg.scheduler if scheduler is None else scheduler,
            num_inference_steps=self.cfg.num_inference_steps if num_inference_steps is None else num_inference_steps,
            eta=self.cfg.eta if eta is None else eta,
        )
        if cfg.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
        if not 1 <= cfg.num_inference_steps <= cfg.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {cfg.num_train_timesteps}], got {cfg.num_inference_steps}"
            )
        if cfg.eta < 0:
            raise ValueError(f"eta must be >= 0, got {cfg.eta}")
        if cfg.scheduler == "ddpm":
            sched = DDPMScheduler(variance_type="fixed_small", **self._sched_kwargs)
        else:
            # Official DDIM config: set_alpha_to_one=True, steps_offset=0 (the last step lands on x0).
            sched = DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **self._sched_kwargs)
        sched.set_timesteps(cfg.num_inference_steps)
        self.cfg = cfg
        self.inference_scheduler = sched

    @property
    def nfe(self) -> int:
        return int(self.cfg.num_inference_steps)

    # ------------------------------------------------------------------ training
    def encode_obs(self, obs: dict[str, Any]) -> torch.Tensor:
        """Global condition (B, C) from normalized observations."""
        return self.obs_encoder(obs)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        action = batch["action"]
        self._check_action(action)
        cond = self.encode_obs(batch["obs"])
        noise = torch.randn_like(action)
        t = torch.randint(0, self.cfg.num_train_timesteps, (action.shape[0],), device=action.device)
        noisy = self.train_scheduler.add_noise(action, noise, t)
        pred = self.model(noisy, t, cond)
        target = noise if self.cfg.prediction_type == "epsilon" else action
        loss = F.mse_loss(pred, target)
        return {"loss": loss, "mse": loss.detach()}

    def _check_action(self, action: torch.Tensor) -> None:
        want = (self.spec.horizon, self.spec.action_dim)
        if action.ndim != 3 or tuple(action.shape[1:]) != want:
            raise ValueError(f"action must be (B, {want[0]}, {want[1]}) (B, T_p, A), got {tuple(action.shape)}")

    # ------------------------------------------------------------------ one denoising transition
    def _transition(self, model_out: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (scalar tensor) of x_{prev} given x_t and the network output at step t."""
        sched = self.inference_scheduler
        if self.cfg.scheduler == "ddim":
            prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
            std = self.cfg.eta * sched._get_variance(t, prev_t) ** 0.5
            out = sched.step(model_out, t, x, eta=self.cfg.eta, variance_noise=torch.zeros_like(x))
            return out.prev_sample, torch.as_tensor(std, dtype=x.dtype, device=x.device)
        # DDPM posterior q(x_prev | x_t, x0_hat), written with DDPMScheduler's own schedule tensors; the
        # tests check it against DDPMScheduler.step (which returns only a sample, not the mean and std).
        prev_t = int(sched.previous_timestep(t))
        ac = sched.alphas_cumprod.to(device=x.device, dtype=x.dtype)
        a_t = ac[t]
        a_prev = ac[prev_t] if prev_t >= 0 else torch.ones((), dtype=x.dtype, device=x.device)
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        if self.cfg.prediction_type == "epsilon":
            x0 = (x - (1 - a_t).sqrt() * model_out) / a_t.sqrt()
        else:
            x0 = model_out
        if self.cfg.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * x
        # fixed_small variance beta_tilde; diffusers adds no noise at t = 0.
        var = (1 - a_prev) / (1 - a_t) * beta_t if t > 0 else torch.zeros((), dtype=x.dtype, device=x.device)
        return mean, var.clamp_min(0).sqrt()

    def _timesteps(self) -> torch.Tensor:
        return self.inference_scheduler.timesteps.to(torch.long).clone()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A). DDPM noise per step is derived from `noise`, so this is deterministic."""
        return self.sample_chain(obs, noise, stochastic=True).actions

    def sample_chain(self, obs: dict[str, Any], noise: torch.Tensor | None = None, stochastic: bool = True,
                     step_noise: torch.Tensor | None = None, min_std: float = 0.0) -> Chain:
        """Run the configured sampler and record every x_k with its Gaussian step parameters.

        Args:
            noise: initial x_K (B, T_p, A); drawn from the global RNG when None.
            stochastic: draw x_{k-1} ~ N(mean, std^2); False follows the means (all stds stored as 0).
            step_noise: standard normal draws (B, K, T_p, A) for the K steps; default derived from `noise`.
            min_std: lower bound on every step's std (DPPO's min_sampling_denoising_std, e.g. 0.1); it
                makes deterministic steps stochastic. Pass the same value to chain_log_prob.
        """
        cond = self.encode_obs(obs)
        b = batch_size_of(obs)
        x = check_noise(noise, self.noise_shape(b), cond)
        timesteps = self._timesteps()
        k = len(timesteps)
        if stochastic and step_noise is None:
            step_noise = derived_step_noise(x, k)
        if step_noise is not None and tuple(step_noise.shape) != (b, k, *x.shape[1:]):
            raise ValueError(f"step_noise must be {(b, k, *x.shape[1:])} (B, K, T_p, A), got {tuple(step_noise.shape)}")
        xs, means, stds = [x], [], []
        for i, t in enumerate(timesteps.tolist()):
            out = self.model(x, torch.full((b,), t, device=x.device), cond)
            mean, std = self._transition(out, t, x)
            std = std.clamp_min(min_std).expand_as(mean)
            if stochastic:
                x = mean + std * step_noise[:, i]
            else:
                x, std = mean, torch.zeros_like(mean)
            xs.append(x)
            means.append(mean)
            stds.append(std)
        return Chain(xs=torch.stack(xs, 1), means=torch.stack(means, 1), stds=torch.stack(stds, 1), timesteps=timesteps)

    def step_log_probs(self, obs: dict[str, Any], chain: Chain, min_std: float = 0.0) -> torch.Tensor:
        """Per-step log-probs (B, K) of the chain's transitions under the current weights (differentiable).

        The means are recomputed for the stored xs in one batched network call; the stds come from the
        schedule (they do not depend on the weights), bounded below by `min_std`.
        """
        if len(chain.timesteps) != chain.n_steps:
            raise ValueError("chain.timesteps must have one entry per step")
        cond = self.encode_obs(obs)
        b, k = chain.xs.shape[0], chain.n_steps
        x_in = chain.xs[:, :-1]
        t_flat = chain.timesteps.to(x_in.device).repeat(b)
        out = self.model(x_in.reshape(b * k, *x_in.shape[2:]), t_flat, cond.repeat_interleave(k, dim=0))
        out = out.reshape(b, k, *out.shape[1:])
        means, stds = [], []
        for i, t in enumerate(chain.timesteps.tolist()):
            mean, std = self._transition(out[:, i], int(t), x_in[:, i])
            means.append(mean)
            stds.append(std.clamp_min(min_std).expand_as(mean))
        return gaussian_step_log_probs(chain.xs, torch.stack(means, 1), torch.stack(stds, 1))

    def chain_log_prob(self, obs: dict[str, Any], chain: Chain, min_std: float = 0.0) -> torch.Tensor:
        """Sum over steps of log N(x_{k-1}; mean_theta(x_k), std_k^2), (B,). Deterministic steps count 0;
        a chain with no stochastic step (DDIM eta=0 without min_std) has no density and raises."""
        lp = self.step_log_probs(obs, chain, min_std)
        if min_std <= 0 and not self._has_stochastic_step(chain):
            raise ValueError(
                "this chain is deterministic (all step stds are 0: DDIM with eta=0 or stochastic=False); "
                "it has no density. Use DDPM, DDIM with eta > 0, or pass min_std > 0."
            )
        return lp.sum(1)

    def _has_stochastic_step(self, chain: Chain) -> bool:
        if self.cfg.scheduler == "ddpm":
            return bool((chain.timesteps > 0).any())
        return self.cfg.eta > 0 and len(chain.timesteps) > 1

"""Streaming Diffusion Policy (SDP, Hoeg, Du, Egeland 2024): a denoising buffer with one noise level per position.

The action buffer (B, T_p, A) is a chunk in which position j carries its own noise level; levels increase
along the horizon chunk by chunk. With h = floor((T_p - (T_o - 1)) / T_a) complete chunks and N inference
levels, a control call starts from the profile

    chunk(j) = 0 for j < T_o, else min(floor((j - (T_o - 1)) / T_a), h - 1)
    level(j) = floor(N (chunk(j) + 1) / h) - 1

and denoises every position one level per network call until the first executable chunk (positions
[0, T_o - 1 + T_a)) is clean: N / h calls. The caller executes it; `advance` shifts the buffer by T_a, drops
the partly denoised tail that is not a complete chunk, appends fresh N(0, I) positions at level N - 1, and
re-noises the T_o - 1 past positions to the level of position T_o - 1 (SDP's official code computes this
re-noising and discards the result, ALGORITHMS.md section 2 pitfall 1; here it is applied).

Training (ALGORITHMS.md section 2): epsilon-MSE as Diffusion Policy with a (B, T_p) timestep. Each row draws
its regime: with probability `constant_level_weight` (0.2) one level for all positions (plain DP training),
otherwise the chunk-wise profile over the K train timesteps shifted down by one random offset
j ~ U{0 .. K/h - 1} (the first chunk never reaches clean). Rows choose independently (the official code draws
one regime per batch; per row gives the same mixture with less variance between batches).

Inference levels n in {-1, 0 .. N-1} map to train timesteps t(n) = (n + 1) K / N - 1 (n = -1: clean), so
N = K is the official DDPM path and N < K steps over a strided schedule whose top level is the pure-noise
step K - 1 (an explicit index -> timestep map: ALGORITHMS.md pitfall 2, whose official DDIM path mixes index
and timestep). The chunk-wise training profiles contain every profile met at inference for any N that
divides K and is a multiple of h. Per position, DDPM steps with the posterior q(x_prev | x_t, x0) and
fixed_small variance; DDIM (eta = 0) steps deterministically. x0 is clamped to [-1, 1] (`clip_sample`).

Policies are stateless: the buffer is a `StreamState` the caller keeps (robopolicy.streaming_agent).
`predict_chunk` is the stateless fallback: a full denoise of the whole horizon at a constant level
(N calls), which the constant-level training regime makes valid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from robopolicy.nn.unet1d import UNetConfig, check_horizon
from robopolicy.nn.unet1d_streaming import StreamingUnet1D
from robopolicy.policies.base import Policy, PolicySpec
from robopolicy.policies.obs_conditioning import (
    ObsConditioner,
    ObsEncoderConfig,
    batch_size_of,
    check_noise,
    derived_step_noise,
)

log = logging.getLogger(__name__)

SCHEDULERS = ("ddpm", "ddim")


@dataclass
class StreamState:
    """The caller-held action buffer: normalized actions (B, T_p, A) and level indices (B, T_p), -1 = clean."""

    buffer: torch.Tensor
    levels: torch.Tensor


def n_chunks(spec: PolicySpec) -> int:
    """h: complete T_a-chunks in the buffer after the T_o - 1 past positions."""
    return (spec.horizon - (spec.n_obs_steps - 1)) // spec.n_action_steps


def level_profile(spec: PolicySpec, n_levels: int) -> torch.Tensor:
    """(T_p,) level of every position at the start of a control call (N = n_levels)."""
    h, t_o, t_a = n_chunks(spec), spec.n_obs_steps, spec.n_action_steps
    j = torch.arange(spec.horizon)
    chunk = torch.div(j - (t_o - 1), t_a, rounding_mode="floor").clamp(0, h - 1)
    chunk = torch.where(j < t_o, torch.zeros_like(chunk), chunk)
    return torch.div(n_levels * (chunk + 1), h, rounding_mode="floor") - 1


class StreamingDiffusionPolicy(Policy):
    """SDP head: per-position noise levels, mixed training, streaming inference with N/h NFE per control call."""

    streaming = True  # robopolicy.load wraps it in a StreamingPolicyAgent that keeps the buffer

    @dataclass
    class Config:
        """Defaults are the official low-dim ones (train_tedi_unet_lowdim_workspace: horizon 20, DDPM 100 steps,
        constant 0.2 / chunk-wise 0.8, buffer_init zero). CPU preset: configs/policy/streaming_cpu.yaml."""

        unet: UNetConfig = field(default_factory=UNetConfig)
        obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
        num_train_timesteps: int = 100
        beta_schedule: str = "squaredcos_cap_v2"
        beta_start: float = 0.0001  # ignored by squaredcos_cap_v2
        beta_end: float = 0.02  # ignored by squaredcos_cap_v2
        clip_sample: bool = True
        prediction_type: str = "epsilon"  # or "sample"
        constant_level_weight: float = 0.2  # the rest of the rows train on shifted chunk-wise profiles
        # Inference (change after training with set_inference):
        scheduler: str = "ddpm"  # "ddpm" (official) or "ddim" (eta = 0)
        num_inference_steps: int = 100  # N: divides num_train_timesteps and is a multiple of h

    def __init__(self, spec: PolicySpec, cfg: StreamingDiffusionPolicy.Config | None = None):
        super().__init__()
        cfg = cfg or StreamingDiffusionPolicy.Config()
        self.validate_config(spec, cfg)
        self.spec = spec
        self.cfg = cfg
        self.h = n_chunks(spec)
        self.obs_encoder = ObsConditioner(spec, cfg.obs)
        self.model = StreamingUnet1D(spec.action_dim, self.obs_encoder.out_dim, spec.horizon, cfg.unet)
        sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=cfg.clip_sample,
                              prediction_type=cfg.prediction_type, variance_type="fixed_small")
        self.train_scheduler = sched
        # alpha_bar of every train timestep, with alpha_bar(-1) = 1 (clean) at index 0.
        ab = torch.cat([torch.ones(1), sched.alphas_cumprod.float()])
        self.register_buffer("alpha_bar_ext", ab, persistent=False)
        self.register_buffer("train_profile", level_profile(spec, cfg.num_train_timesteps), persistent=False)
        if self.h == 1:
            log.warning("SDP with horizon %d, T_o %d, T_a %d holds one chunk (h=1): every call denoises all N "
                        "levels, no faster than Diffusion Policy. Use horizon >= T_o - 1 + 2 T_a (e.g. 20 for "
                        "T_o=2, T_a=8).", spec.horizon, spec.n_obs_steps, spec.n_action_steps)
        self.set_inference()

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: StreamingDiffusionPolicy.Config) -> None:
        """Clear errors for settings SDP cannot run with (called by the registry before building)."""
        check_horizon(spec.horizon, cfg.unet.down_dims)
        if spec.horizon < spec.n_obs_steps - 1 + spec.n_action_steps:
            raise ValueError(f"horizon {spec.horizon} is shorter than T_o - 1 + T_a = "
                             f"{spec.n_obs_steps - 1 + spec.n_action_steps}: the buffer cannot hold one chunk")
        if cfg.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {cfg.prediction_type!r}")
        if not 0.0 <= cfg.constant_level_weight <= 1.0:
            raise ValueError(f"constant_level_weight must be in [0, 1], got {cfg.constant_level_weight}")
        h = n_chunks(spec)
        if cfg.num_train_timesteps % h:
            raise ValueError(f"num_train_timesteps {cfg.num_train_timesteps} is not a multiple of the {h} chunks "
                             "in the buffer: the chunk-wise profile would be uneven")
        cls._check_levels(spec, cfg.num_train_timesteps, cfg.num_inference_steps, cfg.scheduler)

    @staticmethod
    def _check_levels(spec: PolicySpec, k_train: int, n: int, scheduler: str) -> None:
        h = n_chunks(spec)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if not 1 <= n <= k_train or k_train % n or n % h:
            ok = [m for m in range(h, k_train + 1, h) if k_train % m == 0]
            raise ValueError(f"num_inference_steps {n} must divide num_train_timesteps {k_train} and be a "
                             f"multiple of the {h} chunks in the buffer (NFE per call = N/h); valid: {ok}")

    # ------------------------------------------------------------------ inference settings
    def set_inference(self, scheduler: str | None = None, num_inference_steps: int | None = None) -> None:
        """Choose the per-position sampler after training: 'ddpm' | 'ddim' and the number of levels N."""
        cfg = replace(self.cfg, scheduler=self.cfg.scheduler if scheduler is None else scheduler,
                      num_inference_steps=(self.cfg.num_inference_steps if num_inference_steps is None
                                           else int(num_inference_steps)))
        self._check_levels(self.spec, cfg.num_train_timesteps, cfg.num_inference_steps, cfg.scheduler)
        self.cfg = cfg
        self.register_buffer("profile", level_profile(self.spec, cfg.num_inference_steps).to(self.alpha_bar_ext.device),
                             persistent=False)
        self._level_tables: dict[tuple, torch.Tensor] = {}  # depends on N: rebuilt lazily (`_level_table`)

    @property
    def n_levels(self) -> int:
        return int(self.cfg.num_inference_steps)

    @property
    def nfe(self) -> int:
        """NFE of `predict_chunk` (a full denoise from pure noise)."""
        return self.n_levels

    @property
    def stream_nfe(self) -> int:
        """NFE per control call in streaming mode: N / h."""
        return self.n_levels // self.h

    @property
    def last_executed(self) -> int:
        """Index of the last executed position of a chunk: T_o - 1 + T_a - 1."""
        return self.spec.n_obs_steps + self.spec.n_action_steps - 2

    def noise_shape(self, batch_size: int) -> tuple[int, int, int]:
        return (batch_size, self.spec.horizon, self.spec.action_dim)

    # ------------------------------------------------------------------ training
    def encode_obs(self, obs: dict[str, Any]) -> torch.Tensor:
        return self.obs_encoder(obs)

    def training_levels(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """(B, T_p) train timesteps: constant rows with probability `constant_level_weight`, else the chunk-wise
        profile shifted down by one offset per row (the first chunk stays in [0, K/h - 1])."""
        k = self.cfg.num_train_timesteps
        constant = torch.randint(0, k, (batch_size, 1), device=device).expand(-1, self.spec.horizon)
        offset = torch.randint(0, k // self.h, (batch_size, 1), device=device)
        chunk_wise = self.train_profile.to(device)[None] - offset
        use_constant = torch.rand(batch_size, 1, device=device) < self.cfg.constant_level_weight
        return torch.where(use_constant, constant, chunk_wise)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        action = batch["action"]
        want = (self.spec.horizon, self.spec.action_dim)
        if action.ndim != 3 or tuple(action.shape[1:]) != want:
            raise ValueError(f"action must be (B, {want[0]}, {want[1]}) (B, T_p, A), got {tuple(action.shape)}")
        cond = self.encode_obs(batch["obs"])
        noise = torch.randn_like(action)
        t = self.training_levels(action.shape[0], action.device)
        noisy = self.add_noise_at(action, noise, t)
        pred = self.model(noisy, t, cond)
        target = noise if self.cfg.prediction_type == "epsilon" else action
        loss = F.mse_loss(pred, target)
        return {"loss": loss, "mse": loss.detach()}

    def add_noise_at(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x0) per position: t (B, T_p) train timesteps, -1 = clean."""
        ab = self.alpha_bar_ext.to(x0.dtype)[t + 1][..., None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    # ------------------------------------------------------------------ per-position denoising step
    def timestep_of(self, levels: torch.Tensor) -> torch.Tensor:
        """Level indices (-1 .. N-1) -> train timesteps (-1 .. K-1): t(n) = (n + 1) K / N - 1."""
        stride = self.cfg.num_train_timesteps // self.n_levels
        return (levels + 1) * stride - 1

    def _level_table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(N + 1, 8) step coefficients of every level n = -1 .. N-1 (row n + 1), in `dtype` on `device`.

        Why: `denoise_step` used to gather alpha_bar per position and derive the coefficients with ~20 small
        tensor ops per network call. Each coefficient depends on the position's level only, so it is computed
        here once per level with the same elementwise ops on the same values (hence bit-identical) and a step
        gathers all of them with one index. Columns: sqrt(a_t), sqrt(1 - a_t), sqrt(max(1 - a_t, 1e-12)),
        sqrt(a_prev), sqrt(1 - a_prev), the DDPM posterior-mean weights of x0 and x_t, the DDPM std. Row 0 (a
        clean position, a_t = 1) holds inf/nan where 1 - a_t divides, as the per-position formulas did; the
        final `torch.where` in `denoise_step` discards those positions' results.
        """
        key = (dtype, device)
        table = self._level_tables.get(key)
        if table is None:
            ab = self.alpha_bar_ext.to(device=device, dtype=dtype)
            levels = torch.arange(-1, self.n_levels, device=device)
            t = self.timestep_of(levels)
            prev = self.timestep_of((levels - 1).clamp_min(-1))
            a_t, a_prev = ab[t + 1], ab[prev + 1]
            alpha = a_t / a_prev
            beta = 1 - alpha
            var = ((1 - a_prev) / (1 - a_t) * beta).clamp_min(0)
            var = torch.where(prev >= 0, var, torch.zeros_like(var))  # no noise onto the clean sample
            table = torch.stack([
                a_t.sqrt(), (1 - a_t).sqrt(), (1 - a_t).clamp_min(1e-12).sqrt(), a_prev.sqrt(), (1 - a_prev).sqrt(),
                a_prev.sqrt() * beta / (1 - a_t), alpha.sqrt() * (1 - a_prev) / (1 - a_t), var.sqrt(),
            ], dim=-1)
            self._level_tables[key] = table
        return table

    def denoise_step(self, x: torch.Tensor, levels: torch.Tensor, model_out: torch.Tensor,
                     step_noise: torch.Tensor | None = None) -> torch.Tensor:
        """One level down at every position with level >= 0 (positions at -1 are left as they are).

        x, model_out, step_noise: (B, T_p, A); levels: (B, T_p). DDPM needs `step_noise` (standard normal);
        it is ignored by DDIM.
        """
        ddpm = self.cfg.scheduler != "ddim"
        if ddpm and step_noise is None:
            raise ValueError("a DDPM step needs step_noise (B, T_p, A) standard normal draws")
        c = self._level_table(x.dtype, x.device)[levels + 1]  # (B, T_p, 8): one gather for every coefficient
        sa_t, s1a_t, s1a_t_safe, sa_prev, s1a_prev, c_x0, c_x, std = c[..., None].unbind(-2)  # (B, T_p, 1) each
        if self.cfg.prediction_type == "epsilon":
            x0 = (x - s1a_t * model_out) / sa_t
            eps = model_out
        else:
            x0 = model_out
            eps = (x - sa_t * x0) / s1a_t_safe
        if self.cfg.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        if ddpm:
            out = c_x0 * x0 + c_x * x + std * step_noise
        else:
            out = sa_prev * x0 + s1a_prev * eps
        return torch.where(levels[..., None] >= 0, out, x)

    # ------------------------------------------------------------------ streaming
    def init_stream(self, batch_size: int, noise: torch.Tensor | None = None,
                    device: torch.device | str | None = None) -> StreamState:
        """A fresh buffer ("zero" init, as the official default): zeros noised to the call-start profile."""
        device = self.alpha_bar_ext.device if device is None else device
        shape = self.noise_shape(batch_size)
        like = torch.empty(0, device=device)
        noise = check_noise(noise, shape, like)
        levels = self.profile.to(device)[None].expand(batch_size, -1).clone()
        return StreamState(self.add_noise_at(torch.zeros_like(noise), noise, self.timestep_of(levels)), levels)

    @torch.no_grad()
    def stream_step(self, obs: dict[str, Any], state: StreamState,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, StreamState]:
        """Denoise until the first executable chunk is clean: returns (the buffer (B, T_p, A) with positions
        [0, T_o - 1 + T_a) clean, the state to pass to `advance`). N / h network calls."""
        cond = self.encode_obs(obs)
        x, levels = state.buffer, state.levels
        b = batch_size_of(obs)
        if x.shape != self.noise_shape(b) or levels.shape != (b, self.spec.horizon):
            raise ValueError(f"stream state has buffer {tuple(x.shape)} / levels {tuple(levels.shape)}; expected "
                             f"{self.noise_shape(b)} / {(b, self.spec.horizon)} for a batch of {b}")
        x = x.to(cond.dtype)
        # Every call lowers every level by one, so the first chunk is clean after max(level at its last
        # position) + 1 calls: one host read here instead of a check per call.
        n_calls = int(levels[:, self.last_executed].max()) + 1 if b else 0
        for _ in range(n_calls):
            out = self.model(x, self.timestep_of(levels).clamp_min(0), cond)
            z = None
            if self.cfg.scheduler == "ddpm":
                z = torch.randn(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
                z = z.to(device=x.device, dtype=x.dtype)
            x = self.denoise_step(x, levels, out, z)
            levels = (levels - 1).clamp_min(-1)
        return x, StreamState(x, levels)

    def advance(self, state: StreamState, generator: torch.Generator | None = None) -> StreamState:
        """After the first chunk was executed: shift by T_a, drop the incomplete tail, append fresh noise at level
        N - 1 and re-noise the T_o - 1 past positions to the level of position T_o - 1."""
        t_p, t_o, t_a = self.spec.horizon, self.spec.n_obs_steps, self.spec.n_action_steps
        rem = (t_p - (t_o - 1)) % t_a
        x, levels = state.buffer[:, t_a:t_p - rem], state.levels[:, t_a:t_p - rem]
        b, a = x.shape[0], x.shape[-1]
        n_new = t_a + rem

        def randn(*shape: int) -> torch.Tensor:
            z = torch.randn(shape, generator=generator, device="cpu" if generator is not None else x.device)
            return z.to(device=x.device, dtype=x.dtype)

        x = torch.cat([x, randn(b, n_new, a)], dim=1)
        levels = torch.cat([levels, levels.new_full((b, n_new), self.n_levels - 1)], dim=1)
        if t_o > 1:
            past = levels[:, t_o - 1:t_o].expand(-1, t_o - 1)
            noisy = self.add_noise_at(x[:, :t_o - 1], randn(b, t_o - 1, a), self.timestep_of(past))
            x = torch.cat([noisy, x[:, t_o - 1:]], dim=1)
            levels = torch.cat([past, levels[:, t_o - 1:]], dim=1)
        return StreamState(x, levels)

    # ------------------------------------------------------------------ stateless chunk
    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """A whole clean chunk (B, T_p, A) by denoising every position from level N - 1 together (N calls).

        DDPM step noises are derived from each row of `noise` (as DiffusionPolicy does), so the chunk is a
        deterministic function of `noise` and a row does not depend on the rest of the batch."""
        cond = self.encode_obs(obs)
        b = batch_size_of(obs)
        x = check_noise(noise, self.noise_shape(b), cond)
        step_noise = derived_step_noise(x, self.n_levels) if self.cfg.scheduler == "ddpm" else None
        levels = torch.full((b, self.spec.horizon), self.n_levels - 1, device=x.device, dtype=torch.long)
        for i in range(self.n_levels):
            out = self.model(x, self.timestep_of(levels), cond)
            x = self.denoise_step(x, levels, out, None if step_noise is None else step_noise[:, i])
            levels = levels - 1
        return x

"""Consistency-distilled one-step head (RL-100's CM head, ALGORITHMS.md section 8).

A student network maps the initial noise w (and the observation) straight to the action chunk that a
trained DDIM teacher (a DiffusionPolicy) produces from the same noise:

    a_teacher = DDIM_K(teacher, w, s)     (deterministic mean path, eta = 0, no grad; K = 10 in RL-100)
    a_student = f_theta(w, s)             (one network evaluation)
    L = || a_student - a_teacher ||^2     (RL-100's `action_same_noise` loss)

The student is the shared FiLM UNet evaluated at the fixed step T - 1 (the teacher's first DDIM step), with
its own observation encoder, so it can be deployed without the teacher. The teacher is given to the
constructor or with `set_teacher`; it is not a submodule (its weights are neither trained nor saved here).
RL-100 also keeps an EMA of the student (decay 0.95): use the trainer's EMA for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from robopolicy.nn.unet1d import ConditionalUnet1D, UNetConfig, check_horizon
from robopolicy.policies.base import Chain, GenerativePolicy, PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.obs_conditioning import (
    ObsConditioner,
    ObsEncoderConfig,
    batch_size_of,
    check_noise,
    derived_step_noise,
    gaussian_step_log_probs,
)


class ConsistencyPolicy(GenerativePolicy):
    """One-NFE student distilled from a DDIM teacher's noise -> action map."""

    @dataclass
    class Config:
        """RL-100 (`rl100_3d_epsilon.yaml`): teacher DDIM with K = 10 steps, deterministic (distill2mean),
        student EMA 0.95 and grad-clip 1.0 in the trainer. CPU preset: `unet=unet_preset("cpu")`."""

        unet: UNetConfig = field(default_factory=UNetConfig)
        obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
        teacher_steps: int = 10  # DDIM steps of the teacher's target
        student_step: int = 99  # the (fixed) step the student's UNet is evaluated at: the noise end, T - 1
        clip_output: bool = True  # the teacher's DDIM output lies in [-1, 1] (clip_sample); so does the student's
        # A trained DiffusionPolicy checkpoint (a directory with model.safetensors ...) to distil; loaded on the
        # first training step, so `robopolicy train policy=consistency_cpu policy.config.teacher_checkpoint=...`
        # works and loading the trained student for inference never needs it.
        teacher_checkpoint: str | None = None

    def __init__(self, spec: PolicySpec, cfg: ConsistencyPolicy.Config | None = None,
                 teacher: DiffusionPolicy | None = None):
        super().__init__()
        cfg = cfg or ConsistencyPolicy.Config()
        self.validate_config(spec, cfg)
        self.spec = spec
        self.cfg = cfg
        self.obs_encoder = ObsConditioner(spec, cfg.obs)
        self.model = ConditionalUnet1D(spec.action_dim, self.obs_encoder.out_dim, cfg.unet)
        self._teacher: list[DiffusionPolicy] = []  # a list keeps the teacher out of this module's parameters
        if teacher is not None:
            self.set_teacher(teacher)

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: ConsistencyPolicy.Config) -> None:
        """Clear errors for a config that cannot work, before anything is built or trained."""
        check_horizon(spec.horizon, cfg.unet.down_dims)
        if cfg.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {cfg.teacher_steps}")

    # ------------------------------------------------------------------ teacher
    def set_teacher(self, teacher: DiffusionPolicy | None) -> None:
        """The DDIM teacher whose noise -> action map the student learns (None removes it)."""
        if teacher is None:
            self._teacher = []
            return
        if not isinstance(teacher, DiffusionPolicy):
            raise TypeError(f"the teacher must be a DiffusionPolicy, got {type(teacher).__name__}")
        if (teacher.spec.horizon, teacher.spec.action_dim) != (self.spec.horizon, self.spec.action_dim):
            raise ValueError(
                f"teacher chunks are ({teacher.spec.horizon}, {teacher.spec.action_dim}) but the student's are "
                f"({self.spec.horizon}, {self.spec.action_dim}) (T_p, A)"
            )
        self._teacher = [teacher]

    @property
    def teacher(self) -> DiffusionPolicy:
        if not self._teacher and self.cfg.teacher_checkpoint:
            self._load_teacher(self.cfg.teacher_checkpoint)
        if not self._teacher:
            raise RuntimeError("ConsistencyPolicy has no teacher: set policy.config.teacher_checkpoint=PATH (a trained "
                               "diffusion checkpoint), pass teacher=... to the constructor or call "
                               "set_teacher(diffusion_policy) before compute_loss / teacher_actions")
        return self._teacher[0]

    def _load_teacher(self, path: str) -> None:
        from robopolicy.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, device=next(self.parameters()).device)
        t_spec, spec = loaded.policy.spec, self.spec
        if dict(t_spec.obs_shapes) != dict(spec.obs_shapes) or t_spec.n_obs_steps != spec.n_obs_steps:
            raise ValueError(f"teacher {path} observes {dict(t_spec.obs_shapes)} x {t_spec.n_obs_steps} steps but "
                             f"the student {dict(spec.obs_shapes)} x {spec.n_obs_steps}: train both on the same task")
        teacher = loaded.policy.requires_grad_(False)
        self.set_teacher(teacher)

    @torch.no_grad()
    def teacher_actions(self, obs: dict[str, Any], noise: torch.Tensor) -> torch.Tensor:
        """The teacher's deterministic DDIM-K chunk from `noise` (its own inference settings are restored)."""
        teacher = self.teacher
        saved = (teacher.cfg.scheduler, teacher.cfg.num_inference_steps, teacher.cfg.eta)
        was_training = teacher.training
        teacher.eval()
        try:
            teacher.set_inference(scheduler="ddim", num_inference_steps=self.cfg.teacher_steps, eta=0.0)
            return teacher.sample_chain(obs, noise, stochastic=False).actions
        finally:
            teacher.set_inference(scheduler=saved[0], num_inference_steps=saved[1], eta=saved[2])
            teacher.train(was_training)

    # ------------------------------------------------------------------ student
    @property
    def nfe(self) -> int:
        return 1

    def set_inference(self) -> None:
        """The student has no inference settings: it always takes one step (kept for the common interface)."""

    def encode_obs(self, obs: dict[str, Any]) -> torch.Tensor:
        """Global condition (B, C) from normalized observations."""
        return self.obs_encoder(obs)

    def student(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """f_theta(w | obs): the one-step chunk (B, T_p, A)."""
        out = self.model(noise, torch.full((noise.shape[0],), self.cfg.student_step, device=noise.device), cond)
        return out.clamp(-1.0, 1.0) if self.cfg.clip_output else out

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Distillation loss on a batch: only its observations are used (the teacher supplies the targets)."""
        obs = batch["obs"]
        self.teacher  # noqa: B018  (raises a clear error before any work when the teacher is missing)
        b = batch_size_of(obs)
        cond = self.encode_obs(obs)
        noise = torch.randn(self.noise_shape(b), device=cond.device, dtype=cond.dtype)
        target = self.teacher_actions(obs, noise)
        # trained on the unclipped output (clipping would zero the gradient outside [-1, 1])
        pred = self.model(noise, torch.full((b,), self.cfg.student_step, device=noise.device), cond)
        loss = F.mse_loss(pred, target)
        return {"loss": loss, "mse": loss.detach()}

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A) in one network evaluation; deterministic given `noise`."""
        return self.sample_chain(obs, noise, stochastic=False).actions

    def sample_chain(self, obs: dict[str, Any], noise: torch.Tensor | None = None, stochastic: bool = True,
                     step_noise: torch.Tensor | None = None, min_std: float = 0.0) -> Chain:
        """The one-step chain noise -> chunk; deterministic (std 0) unless `min_std` > 0 (then the chunk is
        mean + min_std * z with z from `step_noise` (B, 1, T_p, A), default derived from `noise`)."""
        cond = self.encode_obs(obs)
        b = batch_size_of(obs)
        x = check_noise(noise, self.noise_shape(b), cond)
        mean = self.student(x, cond)
        stochastic = stochastic and min_std > 0
        if stochastic:
            if step_noise is None:
                step_noise = derived_step_noise(x, 1)
            if tuple(step_noise.shape) != (b, 1, *x.shape[1:]):
                raise ValueError(f"step_noise must be {(b, 1, *x.shape[1:])} (B, 1, T_p, A), got {tuple(step_noise.shape)}")
            std = torch.full_like(mean, min_std)
            out = mean + std * step_noise[:, 0]
        else:
            std, out = torch.zeros_like(mean), mean
        steps = torch.tensor([self.cfg.student_step], device=x.device)
        return Chain(xs=torch.stack([x, out], 1), means=mean[:, None], stds=std[:, None], timesteps=steps)

    def chain_log_prob(self, obs: dict[str, Any], chain: Chain, min_std: float = 0.0) -> torch.Tensor:
        """log N(chunk; f_theta(noise), min_std^2) (B,); the one-step map is deterministic, so min_std > 0 is
        required."""
        if min_std <= 0:
            raise ValueError("the consistency chain is deterministic (std 0): it has no density; pass min_std > 0")
        if chain.n_steps != 1:
            raise ValueError(f"a consistency chain has one step, got {chain.n_steps}")
        mean = self.student(chain.xs[:, 0], self.encode_obs(obs))
        return gaussian_step_log_probs(chain.xs, mean[:, None], torch.full_like(mean, min_std)[:, None]).sum(1)


"""MP1 / MeanFlow one-step policy head (ALGORITHMS.md section 3).

Convention (MeanFlow / MP1): data x at t = 0, noise e at t = 1, z_t = (1 - t) x + t e, instantaneous
velocity v = e - x, integration from t = 1 to t = 0. The network predicts the *average* velocity
u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds, so z_r = z_t - (t - r) u and one evaluation at (r, t) = (0, 1)
maps noise to an action chunk: x = z_1 - u(z_1, 0, 1).

Training uses the MeanFlow identity u = v - (t - r) d/dt u, d/dt u = v . d_z u + d_t u, computed with one
forward-mode product `torch.func.jvp` over the primals (z, t, r) with tangents (v_hat, 1, 0) (pitfall 4: the
order must match the primals, r is held fixed). As in the official code:
- (t, r) from two logit-normal draws sigmoid(N(-0.4, 1)), t = max, r = min; `flow_ratio` of the batch gets r = t;
- the target velocity is MP1's self-guided "CFG" v_hat = w v + (1 - w) stopgrad(u(z, t, t)), w = 2 (pitfall 1:
  the conditional prediction, no condition dropout);
- the adaptive weight is 1 / (mean(Delta^2) + 1e-3)^0.5 per sample (pitfall 2: the per-sample *mean*, p = 0.5);
- plus 0.5 x the dispersive loss on the first len(down_dims) - 1 UNet levels (meanpolicy_dis.py).
The two times get separate sinusoidal encoders whose outputs are summed; t is embedded raw (no x1000).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from robopolicy.nn.embeddings import SinusoidalEmbedding
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


class TwoTimeEncoder(nn.Module):
    """(B, 2) rows (t, r) -> (B, dim): separate sinusoidal+MLP encoders for t and r, summed (MP1)."""

    def __init__(self, dim: int, scale: float):
        super().__init__()

        def enc() -> nn.Sequential:
            return nn.Sequential(SinusoidalEmbedding(dim, scale=scale), nn.Linear(dim, dim * 4), nn.Mish(),
                                 nn.Linear(dim * 4, dim))

        self.t_encoder, self.r_encoder = enc(), enc()

    def forward(self, tr: torch.Tensor) -> torch.Tensor:
        if tr.ndim != 2 or tr.shape[1] != 2:
            raise ValueError(f"expected (B, 2) rows of (t, r), got {tuple(tr.shape)}")
        return self.t_encoder(tr[:, 0]) + self.r_encoder(tr[:, 1])


class MeanFlowUnet1D(ConditionalUnet1D):
    """The shared FiLM UNet with its step encoder swapped for the two-time encoder: u(z, t, r | cond)."""

    def __init__(self, action_dim: int, global_cond_dim: int, cfg: UNetConfig):
        super().__init__(action_dim, global_cond_dim, cfg)
        self.step_encoder = TwoTimeEncoder(cfg.diffusion_step_embed_dim, cfg.time_scale)

    def average_velocity(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """u(z, r, t | cond) for per-row times t, r (B,)."""
        return super().forward(z, torch.stack([t, r], dim=-1), cond)


def dispersive_loss(features: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """log mean_ij exp(-D_ij / tau), D_ij = ||f_i - f_j||^2 / max(D) over the batch (features (B, ...)).

    Lower when the batch's features are spread out. max(D) is bounded below so a batch of one (or of equal
    features) gives 0 with zero gradient instead of 0/0.
    """
    f = features.reshape(features.shape[0], -1)
    d = torch.cdist(f, f).pow(2)
    d = d / d.max().clamp_min(1e-8)
    return torch.logsumexp(-d.flatten() / tau, dim=0) - torch.log(torch.tensor(float(d.numel()), device=d.device))


class MeanFlowPolicy(GenerativePolicy):
    """MP1: one-step (or K-step) action chunks from an average-velocity UNet trained with the MeanFlow identity."""

    @dataclass
    class Config:
        """Defaults from MP1 (`mp1.yaml`, `meanpolicy_dis.py`). MP1 itself uses horizon 4 and
        down_dims [512, 1024, 2048] with step embed 128 (`unet_preset("image")`); CPU: `unet_preset("cpu")`."""

        unet: UNetConfig = field(default_factory=UNetConfig)
        obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
        time_scale: float = 1.0  # MP1 embeds raw t in [0, 1]
        time_mu: float = -0.4  # logit-normal time sampling ("lognorm")
        time_sigma: float = 1.0
        flow_ratio: float = 0.5  # fraction of the batch with r = t (plain flow matching rows)
        cfg_scale: float = 2.0  # w of the self-guided target v_hat = w v + (1 - w) u(z, t, t); 1 disables it
        adaptive_p: float = 0.5  # adaptive weight power p = 1 - gamma
        adaptive_c: float = 1e-3
        dispersive_weight: float = 0.5  # 0 disables the dispersive term
        dispersive_tau: float = 1.0
        clip_output: bool = False  # MP1 does not clip; True clamps the chunk to [-1, 1]
        # Inference setting (change after training with set_inference):
        num_inference_steps: int = 1

    def __init__(self, spec: PolicySpec, cfg: MeanFlowPolicy.Config | None = None):
        super().__init__()
        cfg = cfg or MeanFlowPolicy.Config()
        self.validate_config(spec, cfg)
        self.spec = spec
        self.cfg = cfg
        self.obs_encoder = ObsConditioner(spec, cfg.obs)
        self.model = MeanFlowUnet1D(spec.action_dim, self.obs_encoder.out_dim, replace(cfg.unet, time_scale=cfg.time_scale))
        self.set_inference()

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: MeanFlowPolicy.Config) -> None:
        """Clear errors for a config that cannot work, before anything is built or trained."""
        check_horizon(spec.horizon, cfg.unet.down_dims)
        if not 0.0 <= cfg.flow_ratio <= 1.0:
            raise ValueError(f"flow_ratio must be in [0, 1], got {cfg.flow_ratio}")
        if cfg.time_sigma <= 0 or cfg.dispersive_tau <= 0 or cfg.adaptive_c <= 0:
            raise ValueError("time_sigma, dispersive_tau and adaptive_c must be > 0")
        if cfg.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {cfg.num_inference_steps}")

    # ------------------------------------------------------------------ settings
    def set_inference(self, num_inference_steps: int | None = None) -> None:
        """Number of average-velocity steps K at inference (1 = MP1's one-step sampler)."""
        k = self.cfg.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        if k < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {k}")
        self.cfg = replace(self.cfg, num_inference_steps=k)

    @property
    def nfe(self) -> int:
        return int(self.cfg.num_inference_steps)

    def times(self, k: int | None = None) -> torch.Tensor:
        """Time grid t_i = 1 - i / K, i = 0..K (from noise at 1 to data at 0)."""
        k = self.nfe if k is None else k
        return 1.0 - torch.arange(k + 1, dtype=torch.float32) / k

    # ------------------------------------------------------------------ training
    def encode_obs(self, obs: dict[str, Any]) -> torch.Tensor:
        """Global condition (B, C) from normalized observations."""
        return self.obs_encoder(obs)

    def average_velocity(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """u_theta(z, r, t | obs) with z (B, T_p, A) and times (B,)."""
        return self.model.average_velocity(z, t, r, cond)

    def sample_times(self, b: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, r) as in MP1: two logit-normal draws, t = max, r = min; `flow_ratio` of the rows get r = t."""
        s = torch.sigmoid(self.cfg.time_mu + self.cfg.time_sigma * torch.randn(2, b, device=like.device, dtype=like.dtype))
        t, r = s.max(0).values, s.min(0).values
        n_equal = int(self.cfg.flow_ratio * b)
        idx = torch.randperm(b, device=like.device)[:n_equal]
        r = r.clone()
        r[idx] = t[idx]
        return t, r

    def meanflow_target(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v_hat: torch.Tensor,
                        cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(u, u_tgt, features): the prediction u(z, r, t) (differentiable), the detached MeanFlow target
        v_hat - (t - r) d/dt u, and the down-path features of this forward pass (for the dispersive loss).

        d/dt u is the jvp over the primals (z, t, r) with tangents (v_hat, 1, 0), in that order.
        """
        n_feat = len(self.cfg.unet.down_dims) - 1

        def fn(z_: torch.Tensor, t_: torch.Tensor, r_: torch.Tensor):
            feats: list[torch.Tensor] = []
            hooks = [self.model.down[i][1].register_forward_hook(lambda _m, _i, out: feats.append(out))
                     for i in range(n_feat)]
            try:
                u_ = self.average_velocity(z_, t_, r_, cond)
            finally:
                for h in hooks:
                    h.remove()
            return u_, feats

        u, dudt, feats = torch.func.jvp(fn, (z, t, r), (v_hat, torch.ones_like(t), torch.zeros_like(r)), has_aux=True)
        u_tgt = v_hat - (t - r)[:, None, None] * dudt
        return u, u_tgt.detach(), feats

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["action"]
        want = (self.spec.horizon, self.spec.action_dim)
        if x.ndim != 3 or tuple(x.shape[1:]) != want:
            raise ValueError(f"action must be (B, {want[0]}, {want[1]}) (B, T_p, A), got {tuple(x.shape)}")
        cond = self.encode_obs(batch["obs"])
        b = x.shape[0]
        e = torch.randn_like(x)
        t, r = self.sample_times(b, x)
        tb = t[:, None, None]
        z = (1 - tb) * x + tb * e
        v = e - x
        if self.cfg.cfg_scale != 1.0:
            with torch.no_grad():
                u_tt = self.average_velocity(z, t, t, cond)
            v_hat = self.cfg.cfg_scale * v + (1 - self.cfg.cfg_scale) * u_tt
        else:
            v_hat = v
        u, u_tgt, feats = self.meanflow_target(z, t, r, v_hat.detach(), cond)
        delta_sq = (u - u_tgt).pow(2).flatten(1).mean(1)
        weight = (delta_sq.detach() + self.cfg.adaptive_c).pow(-self.cfg.adaptive_p)
        loss_mf = (weight * delta_sq).mean()
        out = {"mse": delta_sq.mean().detach(), "loss_meanflow": loss_mf.detach()}
        loss = loss_mf
        if self.cfg.dispersive_weight > 0 and feats:
            disp = sum(dispersive_loss(f, self.cfg.dispersive_tau) for f in feats)
            loss = loss + self.cfg.dispersive_weight * disp
            out["loss_dispersive"] = disp.detach()
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A): K deterministic average-velocity steps from `noise` (K = 1: one NFE)."""
        return self.sample_chain(obs, noise, stochastic=False).actions

    def sample_chain(self, obs: dict[str, Any], noise: torch.Tensor | None = None, stochastic: bool = True,
                     step_noise: torch.Tensor | None = None, min_std: float = 0.0) -> Chain:
        """The K-step chain z_{t_i} -> z_{t_{i+1}} = z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i).

        The sampler is deterministic: stds are 0 and `stochastic` has no effect unless `min_std` > 0, in which
        case every step draws mean + min_std * z_i (DPPO-style exploration noise; pass the same min_std to
        chain_log_prob). step_noise (B, K, T_p, A) defaults to draws derived from `noise`.
        """
        cond = self.encode_obs(obs)
        b = batch_size_of(obs)
        x = check_noise(noise, self.noise_shape(b), cond)
        k = self.nfe
        ts = self.times(k).to(x.device, x.dtype)
        stochastic = stochastic and min_std > 0
        if stochastic and step_noise is None:
            step_noise = derived_step_noise(x, k)
        if step_noise is not None and tuple(step_noise.shape) != (b, k, *x.shape[1:]):
            raise ValueError(f"step_noise must be {(b, k, *x.shape[1:])} (B, K, T_p, A), got {tuple(step_noise.shape)}")
        xs, means, stds = [x], [], []
        for i in range(k):
            mean = self._mean(x, ts[i].expand(b), ts[i + 1].expand(b), cond, last=i == k - 1)
            std = torch.full_like(mean, min_std) if stochastic else torch.zeros_like(mean)
            x = mean + std * step_noise[:, i] if stochastic else mean
            xs.append(x)
            means.append(mean)
            stds.append(std)
        return Chain(xs=torch.stack(xs, 1), means=torch.stack(means, 1), stds=torch.stack(stds, 1), timesteps=ts[:-1])

    def _mean(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor, last: bool) -> torch.Tensor:
        mean = z - (t - r)[:, None, None] * self.average_velocity(z, t, r, cond)
        return mean.clamp(-1.0, 1.0) if (last and self.cfg.clip_output) else mean

    def chain_log_prob(self, obs: dict[str, Any], chain: Chain, min_std: float = 0.0) -> torch.Tensor:
        """Sum over steps of log N(x_{i+1}; mean_theta(x_i), min_std^2), (B,); differentiable.

        The MeanFlow chain is deterministic: without min_std > 0 it has no density and this raises.
        """
        if min_std <= 0:
            raise ValueError("the MeanFlow chain is deterministic (all step stds are 0): it has no density; "
                             "pass min_std > 0 (and sample with the same min_std)")
        k = chain.n_steps
        ts = chain.timesteps.to(chain.xs.device, chain.xs.dtype)
        if len(ts) != k:
            raise ValueError("chain.timesteps must have one entry per step")
        grid = torch.cat([ts, torch.zeros(1, dtype=ts.dtype, device=ts.device)])
        cond = self.encode_obs(obs)
        b = chain.xs.shape[0]
        means = torch.stack([self._mean(chain.xs[:, i], grid[i].expand(b), grid[i + 1].expand(b), cond,
                                        last=i == k - 1) for i in range(k)], 1)
        stds = torch.full_like(means, min_std)
        return gaussian_step_log_probs(chain.xs, means, stds).sum(1)

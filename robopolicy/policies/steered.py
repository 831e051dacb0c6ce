"""DSRL-steered policy: a frozen diffusion / flow head driven by a learned latent-noise actor.

DSRL (ALGORITHMS.md section 7) never changes the base head: it learns a policy pi_W(w | s) over the base
head's initial noise w (B, T_p, A), and the deployed policy is `base.predict_chunk(obs, w)` with w from
that actor. This head is that pair, so a fine-tuned DSRL result is an ordinary checkpoint:

- config.yaml `policy: {name: steered, config: {base_name, base_config, actor}}`;
- model.safetensors holds `base.*` (the untouched base weights, bit-identical to the start checkpoint)
  and `actor.*` (the noise actor);
- normalizer.safetensors is the base checkpoint's.

`robopolicy.load(path)` and `robopolicy eval checkpoint=...` use it unchanged. The actor is a tanh-Gaussian
w = m * tanh(mu(s) + sigma(s) * z) with bound m = `action_magnitude` (DSRL's box in noise space). It reads
the base head's own frozen observation features (`base.encode_obs`, e.g. the normalized state history), so
it works for any observation the base head takes.

`predict_chunk(obs)` uses the actor's mean noise (deterministic, what deployment and evaluation run);
`predict_chunk(obs, noise)` uses `noise` as the standard-normal draw z of the actor (a sample of the
steered policy, deterministic given `noise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robopolicy.nn import MLP
from robopolicy.policies.base import Policy, PolicySpec

STEER_MODES = ("all", "executed")


@dataclass
class NoiseActorConfig:
    """The latent-noise actor pi_W(w | s). DSRL's official nets are 3x2048 (GPU); 3x256 suits a CPU."""

    hidden_dims: tuple[int, ...] = (256, 256, 256)
    layer_norm: bool = True
    action_magnitude: float = 1.5  # w in [-m, m]^(T_p x A); DSRL's `action_magnitude`
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    log_std_init: float = 0.0  # initial std 1 before the tanh: w starts close to the N(0, I) prior
    # Which rows of the (T_p, A) noise the actor sets: "all", or "executed" (the T_a rows that run,
    # n_obs_steps - 1 ...; the other rows stay at 0, the prior's mean). With T_p = 16 and T_a = 8 the unexecuted
    # rows are half the noise space and change nothing the env rewards; the critic can only overfit to them.
    steer: str = "all"


class NoiseActor(nn.Module):
    """Tanh-Gaussian policy over a flat noise vector, bounded by `action_magnitude`."""

    def __init__(self, feature_dim: int, noise_dim: int, cfg: NoiseActorConfig):
        super().__init__()
        if cfg.action_magnitude <= 0:
            raise ValueError(f"action_magnitude must be > 0, got {cfg.action_magnitude}")
        self.cfg = cfg
        self.noise_dim = noise_dim
        self.trunk = MLP(feature_dim, list(cfg.hidden_dims), 2 * noise_dim, layer_norm=cfg.layer_norm)
        last = self.trunk.net[-1]
        with torch.no_grad():  # start at mean 0, log-std `log_std_init`: close to the prior, as DSRL advises
            last.weight.mul_(0.01)
            last.bias.zero_()
            last.bias[noise_dim:] = cfg.log_std_init

    def distribution(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh mean and std (B, noise_dim)."""
        mu, log_std = self.trunk(feat).chunk(2, dim=-1)
        log_std = log_std.clamp(self.cfg.log_std_min, self.cfg.log_std_max)
        return mu, log_std.exp()

    def sample(self, feat: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized sample w (B, noise_dim) and its log-density log pi_W(w | s) (B,).

        z: the standard-normal draw (B, noise_dim); drawn from the global RNG when None.
        """
        mu, std = self.distribution(feat)
        z = torch.randn_like(mu) if z is None else z
        u = mu + std * z
        m = self.cfg.action_magnitude
        # log N(u; mu, std) - log |d(m tanh u)/du|, with the numerically stable log(1 - tanh^2 u).
        log_prob = (-0.5 * z**2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u)) + math.log(m)).sum(-1)
        return m * torch.tanh(u), log_prob

    def mean(self, feat: torch.Tensor) -> torch.Tensor:
        """The deterministic noise m * tanh(mu(s)) (B, noise_dim)."""
        mu, _ = self.distribution(feat)
        return self.cfg.action_magnitude * torch.tanh(mu)


def base_features(base: Policy, obs: dict[str, Any]) -> torch.Tensor:
    """Frozen observation features (B, F) of a base head: its own encoder when it has one, else the
    flattened low-dim history. Never differentiates into the base."""
    with torch.no_grad():
        encode = getattr(base, "encode_obs", None)
        if encode is not None:
            return encode(obs).detach()
        return torch.cat([obs[k].flatten(1).float() for k in sorted(base.spec.obs_shapes)], -1)


def base_feature_dim(base: Policy) -> int:
    """Size of `base_features` without running the base."""
    encoder = getattr(base, "obs_encoder", None)
    if encoder is not None and hasattr(encoder, "out_dim"):
        return int(encoder.out_dim)
    return base.spec.n_obs_steps * sum(math.prod(s) for s in base.spec.obs_shapes.values())


class SteeredPolicy(Policy):
    """Base head + latent-noise actor (DSRL's deployed policy); the base is frozen."""

    @dataclass
    class Config:
        base_name: str = "flow"  # the registry name of the base head
        base_config: dict[str, Any] = field(default_factory=dict)  # its Config as a plain dict
        actor: NoiseActorConfig = field(default_factory=NoiseActorConfig)

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: SteeredPolicy.Config) -> None:
        if cfg.base_name == "steered":
            raise ValueError("a steered policy cannot steer another steered policy; steer its base head")

    def __init__(self, spec: PolicySpec, cfg: SteeredPolicy.Config | None = None, base: Policy | None = None):
        super().__init__()
        from robopolicy.policies.registry import make_policy

        cfg = cfg or SteeredPolicy.Config()
        self.spec = spec
        self.cfg = cfg
        self.base = base if base is not None else make_policy(cfg.base_name, spec, cfg.base_config)
        if not hasattr(self.base, "noise_shape"):
            raise ValueError(f"base head '{cfg.base_name}' ({type(self.base).__name__}) takes no initial noise; "
                             "DSRL steers diffusion or flow heads (GenerativePolicy)")
        self.base.requires_grad_(False)
        if cfg.actor.steer not in STEER_MODES:
            raise ValueError(f"actor.steer must be one of {STEER_MODES}, got {cfg.actor.steer!r}")
        start = spec.n_obs_steps - 1
        stop = spec.horizon if cfg.actor.steer == "all" else min(start + spec.n_action_steps, spec.horizon)
        self.steered_rows = slice(0 if cfg.actor.steer == "all" else start, stop)
        self.noise_dim = (stop - self.steered_rows.start) * spec.action_dim
        self.actor = NoiseActor(base_feature_dim(self.base), self.noise_dim, cfg.actor)

    def train(self, mode: bool = True) -> SteeredPolicy:
        super().train(mode)
        self.base.eval()  # the base is frozen: never in training mode
        return self

    @property
    def nfe(self) -> int:
        return int(self.base.nfe)

    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        return base_features(self.base, obs)

    def to_noise(self, w_flat: torch.Tensor) -> torch.Tensor:
        """Flat actor output (B, noise_dim) -> the base head's noise (B, T_p, A); unsteered rows are 0."""
        rows = w_flat.reshape(w_flat.shape[0], -1, self.spec.action_dim)
        if rows.shape[1] == self.spec.horizon:
            return rows
        noise = rows.new_zeros(w_flat.shape[0], self.spec.horizon, self.spec.action_dim)
        noise[:, self.steered_rows] = rows
        return noise

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise ValueError("a steered (DSRL) policy is trained by RL on its noise actor, not by imitation: "
                         "use `robopolicy finetune algo=dsrl|dsrl_na checkpoint=<base checkpoint> task=...`")

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A) = base(obs, w) with w the actor's mean, or its sample with draw `noise`."""
        feat = self.features(obs)
        if noise is None:
            w = self.actor.mean(feat)
        else:
            if tuple(noise.shape) != (feat.shape[0], self.spec.horizon, self.spec.action_dim):
                raise ValueError(f"noise must have shape {(feat.shape[0], self.spec.horizon, self.spec.action_dim)}"
                                 f" (B, T_p, A), got {tuple(noise.shape)}")
            w, _ = self.actor.sample(feat, noise[:, self.steered_rows].reshape(feat.shape[0], -1).to(feat))
        return self.base.predict_chunk(obs, self.to_noise(w))

    def noise_shape(self, batch_size: int) -> tuple[int, int, int]:
        return (batch_size, self.spec.horizon, self.spec.action_dim)


def parameter_hash(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, shapes, bytes): proves a base head was not changed."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

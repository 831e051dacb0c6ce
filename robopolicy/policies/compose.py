"""GPC, General Policy Composition (ALGORITHMS.md section 9): sample with a convex combination of the scores
(diffusion) or velocities (flow) of two or more trained heads, inside one sampling loop with shared noise.

    eps(x_k, k) = sum_i w_i eps_i(x_k, k, o_i)      v(x_t, t) = sum_i w_i v_i(x_t, t, o_i),   w_i >= 0, sum = 1

The loop is the FIRST parent's own sampler (its DDPM / DDIM scheduler, or its Euler grid t_i = i / K), so
weights (1, 0, ...) reproduce the first parent bit-exactly (parents with weight 0 are not evaluated). Every
other parent is asked for its prediction at the same noise level, converted to the first parent's
parameterization (matched signal-to-noise ratio; ALGORITHMS.md section 9, "diffusion with flow"):
- flow frame x_t = t x_1 + (1 - t) eps, velocity v = x_1 - eps;
- diffusion frame x_k = sqrt(a) x_0 + sqrt(1 - a) eps with a = alphas_cumprod[k].
The frames agree when a = t^2 / (t^2 + (1 - t)^2) and x_k = x_t / sqrt(t^2 + (1 - t)^2); a diffusion
parent queried between its integer steps gets the fractional step whose alphas_cumprod matches (its
sinusoidal step embedding takes real steps). Since eps, x_0 and v are affine in one another at a fixed
x_t, the convex combination is the same in every parameterization.

Each parent sees its own observation keys and its own T_o frames (the last ones of the composed history),
so heads on different modalities compose. Refused, with the difference named: different horizons,
action dimensions or action normalisers, different statistics for a shared observation key, and heads
that are not diffusion or flow heads.

A composed head is a registry head (`steered`-style): its config names the parents and their specs, and
`compose_checkpoints(paths, weights)` / `save_composed(...)` make a checkpoint directory that
`robopolicy.load` and `robopolicy eval` take unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robopolicy.data.normalizer import NormalizerSet
from robopolicy.policies.base import Chain, GenerativePolicy, Policy, PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.flow import FlowPolicy
from robopolicy.policies.obs_conditioning import batch_size_of, check_noise, derived_step_noise

KINDS = (DiffusionPolicy, FlowPolicy)


class CompositionError(ValueError):
    """Heads that cannot be composed; the message names the difference."""


def check_composable(parents: list[Policy], normalizers: list[NormalizerSet] | None = None,
                     action_key: str = "action") -> None:
    """Raise CompositionError naming the first difference that makes the heads incompatible."""
    if len(parents) < 2:
        raise CompositionError(f"GPC composes two or more heads, got {len(parents)}")
    first = parents[0]
    for i, p in enumerate(parents):
        if not isinstance(p, KINDS):
            raise CompositionError(f"GPC composes diffusion and flow heads; parent {i} is a {type(p).__name__}")
        if p.spec.horizon != first.spec.horizon:
            raise CompositionError(f"horizon differs: parent 0 has T_p={first.spec.horizon}, parent {i} has "
                                   f"T_p={p.spec.horizon}; the composed chunk must be the same for every head")
        if p.spec.action_dim != first.spec.action_dim:
            raise CompositionError(f"action space differs: parent 0 has action_dim={first.spec.action_dim}, "
                                   f"parent {i} has action_dim={p.spec.action_dim}")
    if normalizers is None:
        return
    for i, n in enumerate(normalizers[1:], start=1):
        diff = _max_stat_difference(normalizers[0], n, action_key)
        if diff is None:
            raise CompositionError(f"action normaliser differs: parent {i} has no '{action_key}' normaliser")
        if diff > 1e-6:
            raise CompositionError(f"action normaliser differs between parent 0 and parent {i} (max statistic "
                                   f"difference {diff:.3g}): both must be trained with the same action statistics "
                                   "(the same store or the same normalizer file)")
        for key in set(normalizers[0].keys()) & set(n.keys()) - {action_key}:
            d = _max_stat_difference(normalizers[0], n, key)
            if d is None or d > 1e-6:
                raise CompositionError(f"observation normaliser for '{key}' differs between parent 0 and parent {i}"
                                       f"; one composed checkpoint normalizes each key once")


def _max_stat_difference(a: NormalizerSet, b: NormalizerSet, key: str) -> float | None:
    if key not in a or key not in b or type(a[key]) is not type(b[key]):
        return None
    bufs_a, bufs_b = dict(a[key].named_buffers()), dict(b[key].named_buffers())
    if bufs_a.keys() != bufs_b.keys() or any(bufs_a[k].shape != bufs_b[k].shape for k in bufs_a):
        return None
    return max((float((bufs_a[k] - bufs_b[k]).abs().max()) for k in bufs_a), default=0.0)


# ---------------------------------------------------------------------------------------------- frames
def _alphas_cumprod(p: DiffusionPolicy, like: torch.Tensor) -> torch.Tensor:
    return p.train_scheduler.alphas_cumprod.to(device=like.device, dtype=like.dtype)


def _step_for(p: DiffusionPolicy, a: torch.Tensor) -> torch.Tensor:
    """The (fractional) diffusion step whose alphas_cumprod is `a` (a scalar tensor), by interpolation."""
    ac = _alphas_cumprod(p, a)  # decreasing in the step
    a = a.clamp(float(ac[-1]), float(ac[0]))
    j = int(torch.searchsorted(-ac, -a).clamp(1, len(ac) - 1))
    frac = (ac[j - 1] - a) / (ac[j - 1] - ac[j]).clamp_min(1e-12)
    return (j - 1) + frac


def _diffusion_eps_x0(p: DiffusionPolicy, x_k: torch.Tensor, step: torch.Tensor, a: torch.Tensor,
                      cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_hat, x0_hat) of a diffusion head at x_k = sqrt(a) x0 + sqrt(1 - a) eps, x0 clipped as it samples."""
    out = p.model(x_k, step.expand(x_k.shape[0]), cond)
    if p.cfg.prediction_type == "epsilon":
        eps, x0 = out, (x_k - (1 - a).sqrt() * out) / a.sqrt()
    else:
        x0 = out
        eps = (x_k - a.sqrt() * out) / (1 - a).sqrt()
    return eps, (x0.clamp(-1, 1) if p.cfg.clip_sample else x0)


def velocity_at(p: Policy, x: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
    """Velocity v(x_t, t) of any parent in the flow frame."""
    if isinstance(p, FlowPolicy):
        return p.velocity(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype), cond)
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)
    norm = (tt**2 + (1 - tt) ** 2).sqrt()
    a = tt**2 / norm**2
    step = _step_for(p, a)
    a = _interp_alpha(p, step, x)  # the level actually queried (a is clamped to the trained range)
    eps, x0 = _diffusion_eps_x0(p, x / norm, step, a, cond)
    return x0 - eps


def _interp_alpha(p: DiffusionPolicy, step: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    ac = _alphas_cumprod(p, like)
    j = int(step.floor().clamp(0, len(ac) - 2))
    frac = step - j
    return ac[j] * (1 - frac) + ac[j + 1] * frac


def model_output_at(first: DiffusionPolicy, p: Policy, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
    """Parent p's prediction at the first (diffusion) parent's step t, in the first parent's prediction type."""
    if p is first:
        return p.model(x, torch.full((x.shape[0],), t, device=x.device), cond)
    a = _alphas_cumprod(first, x)[t]
    if isinstance(p, DiffusionPolicy):
        same = torch.equal(p.train_scheduler.alphas_cumprod, first.train_scheduler.alphas_cumprod)
        step = torch.tensor(float(t)) if same else _step_for(p, a)
        eps, x0 = _diffusion_eps_x0(p, x, step, a if same else _interp_alpha(p, step, x), cond)
        if same and p.cfg.prediction_type == first.cfg.prediction_type == "epsilon":
            eps = p.model(x, torch.full((x.shape[0],), t, device=x.device), cond)  # the raw output, as GPC's code
    else:  # flow parent: x_t = x_k / s at t_f = sqrt(a) / s, s = sqrt(a) + sqrt(1 - a)
        s = a.sqrt() + (1 - a).sqrt()
        t_f = float(a.sqrt() / s)
        x_f = x / s
        v = velocity_at(p, x_f, t_f, cond)
        eps, x0 = x_f - t_f * v, x_f + (1 - t_f) * v
    return eps if first.cfg.prediction_type == "epsilon" else x0


# ---------------------------------------------------------------------------------------------- the head
class ComposedPolicy(GenerativePolicy):
    """Convex composition of diffusion / flow heads; the first parent's sampler drives the loop."""

    @dataclass
    class Config:
        parents: list[dict[str, Any]] = field(default_factory=list)  # {name, config, spec} per parent
        weights: tuple[float, ...] = ()

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: ComposedPolicy.Config) -> None:
        if len(cfg.parents) < 2:
            raise ValueError(f"a composed policy needs >= 2 parents, got {len(cfg.parents)}")
        check_weights(cfg.weights, len(cfg.parents))

    def __init__(self, spec: PolicySpec, cfg: ComposedPolicy.Config, parents: list[Policy] | None = None):
        super().__init__()
        from robopolicy.policies.registry import make_policy

        self.spec, self.cfg = spec, cfg
        if parents is None:
            parents = [make_policy(p["name"], PolicySpec.from_json(p["spec"]), p.get("config") or {})
                       for p in cfg.parents]
        check_composable(parents)
        self.parents = torch.nn.ModuleList(parents)
        self.weights = check_weights(cfg.weights, len(parents))

    def set_weights(self, weights: tuple[float, ...] | list[float]) -> None:
        """Change the composition weights (the test-time search does this between evaluations)."""
        self.weights = check_weights(tuple(float(w) for w in weights), len(self.parents))
        self.cfg.weights = self.weights

    @property
    def nfe(self) -> int:
        first = self.parents[0]
        return first.nfe * sum(1 for w in self.weights if w > 0)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise ValueError("a composed (GPC) policy is not trained: train its parents, then compose them")

    def chain_log_prob(self, obs: dict[str, Any], chain: Chain) -> torch.Tensor:
        raise ValueError("GPC composes trained heads at test time; fine-tune a parent head instead")

    def _parent_obs(self, p: Policy, obs: dict[str, Any]) -> dict[str, Any]:
        t_o = p.spec.n_obs_steps
        missing = [k for k in p.spec.obs_shapes if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing} that a {type(p).__name__} parent needs")
        return {k: obs[k][:, -t_o:] for k in p.spec.obs_shapes}

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample_chain(obs, noise).actions

    @torch.no_grad()
    def sample_chain(self, obs: dict[str, Any], noise: torch.Tensor | None = None, stochastic: bool = True) -> Chain:
        """The first parent's sampler with the combined prediction; records every x_k (no density)."""
        active = [(p, w) for p, w in zip(self.parents, self.weights, strict=True) if w > 0]
        conds = [p.encode_obs(self._parent_obs(p, obs)) for p, _ in active]
        first = self.parents[0]
        b = batch_size_of(obs)
        x = check_noise(noise, self.noise_shape(b), conds[0])
        xs, means, stds = [x], [], []
        if isinstance(first, FlowPolicy):
            k = first.nfe
            ts = first.times(k)
            for i in range(k):
                v = _combine([(velocity_at(p, x, float(ts[i]), c), w) for (p, w), c in zip(active, conds, strict=True)])
                x = first._mean(x, v, i, k)
                xs.append(x)
                means.append(x)
                stds.append(torch.zeros_like(x))
        else:
            timesteps = first._timesteps()
            step_noise = derived_step_noise(x, len(timesteps)) if stochastic else None
            for i, t in enumerate(timesteps.tolist()):
                out = _combine([(model_output_at(first, p, x, t, c), w) for (p, w), c in zip(active, conds, strict=True)])
                mean, std = first._transition(out, t, x)
                std = std.expand_as(mean)
                x = mean + std * step_noise[:, i] if stochastic else mean
                xs.append(x)
                means.append(mean)
                stds.append(std if stochastic else torch.zeros_like(mean))
            ts = timesteps
        return Chain(xs=torch.stack(xs, 1), means=torch.stack(means, 1), stds=torch.stack(stds, 1), timesteps=ts)


def _combine(terms: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    out, w0 = terms[0]
    if len(terms) == 1 and w0 == 1.0:
        return out  # a single parent at weight 1: its own prediction, bit for bit
    total = w0 * out
    for pred, w in terms[1:]:
        total = total + w * pred
    return total


def check_weights(weights: tuple[float, ...] | list[float], n: int) -> tuple[float, ...]:
    """Convex weights: n of them, each >= 0, summing to 1 (to 1e-6)."""
    weights = tuple(float(w) for w in weights)
    if len(weights) != n:
        raise ValueError(f"need one weight per parent ({n}), got {len(weights)}: {weights}")
    if any(w < 0 or not math.isfinite(w) for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"GPC weights must be >= 0 and sum to 1 (a convex combination), got {weights}")
    return weights


# ---------------------------------------------------------------------------------------------- checkpoints
def compose_checkpoints(paths: list[str | Path], weights: tuple[float, ...] | list[float],
                        device: str = "cpu") -> tuple[ComposedPolicy, NormalizerSet, list[Any]]:
    """Load parent checkpoints and compose them (refusing incompatible ones); returns (policy, normalizer,
    the loaded parent checkpoints)."""
    from robopolicy.train.checkpoint import load_checkpoint

    loaded = [load_checkpoint(p, device=device) for p in paths]
    action_keys = {(c.config.get("task") or {}).get("action_key", "action") for c in loaded}
    if len(action_keys) != 1:
        raise CompositionError(f"action space differs: the parents' action keys are {sorted(action_keys)}")
    action_key = action_keys.pop()
    parents = [c.policy for c in loaded]
    check_composable(parents, [c.normalizer for c in loaded], action_key)
    obs_shapes: dict[str, tuple[int, ...]] = {}
    for p in parents:
        for k, s in p.spec.obs_shapes.items():
            if obs_shapes.setdefault(k, tuple(s)) != tuple(s):
                raise CompositionError(f"observation '{k}' has shape {obs_shapes[k]} in one parent and {tuple(s)} in "
                                       "another")
    first = parents[0].spec
    spec = PolicySpec(obs_shapes=obs_shapes, action_dim=first.action_dim,
                      n_obs_steps=max(p.spec.n_obs_steps for p in parents), horizon=first.horizon,
                      n_action_steps=first.n_action_steps)
    cfg = ComposedPolicy.Config(
        parents=[{"name": c.config["policy"]["name"], "config": c.config["policy"].get("config") or {},
                  "spec": c.policy.spec.to_json()} for c in loaded],
        weights=tuple(float(w) for w in weights))
    policy = ComposedPolicy(spec, cfg, parents=parents)
    merged = {k: c.normalizer[k] for c in reversed(loaded) for k in c.normalizer.keys()}
    return policy.to(device).eval(), NormalizerSet(merged), loaded


def save_composed(directory: str | Path, paths: list[str | Path], weights: tuple[float, ...] | list[float],
                  extra_meta: dict[str, Any] | None = None) -> Path:
    """A checkpoint directory of the composition (robopolicy.load / eval take it unchanged)."""
    from robopolicy.train import checkpoint as ckpt

    policy, normalizer, loaded = compose_checkpoints(paths, weights)
    config = dict(loaded[0].config)
    config["policy"] = {"name": "composed", "config": {"parents": policy.cfg.parents,
                                                       "weights": list(policy.weights)}}
    meta = {"spec": policy.spec.to_json(), "policy": "composed",
            "policy_class": "robopolicy.policies.compose:ComposedPolicy",
            "parents": [str(c.path) for c in loaded], "git_revision": ckpt.git_revision(), **(extra_meta or {})}
    tmp = ckpt.begin(directory)
    ckpt.write_model_files(tmp, policy, normalizer, config, meta)
    return ckpt.commit(directory)

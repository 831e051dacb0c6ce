"""GPC (robopolicy/policies/compose.py): weights (1, 0) reproduce the first parent exactly, mismatched heads are
refused with the difference named, and on analytic Gaussian heads the composed sampler lands on the convex
combination (which also checks the flow <-> diffusion conversion at matched noise level)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch import nn

from robopolicy.data.normalizer import MinMaxNormalizer, NormalizerSet
from robopolicy.nn import unet_preset
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.compose import ComposedPolicy, CompositionError, check_composable
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.flow import FlowPolicy
from robopolicy.policies.registry import make_policy

torch.set_num_threads(1)


def _spec(horizon: int = 8, action_dim: int = 2, key: str = "state") -> PolicySpec:
    return PolicySpec(obs_shapes={key: (3,)}, action_dim=action_dim, n_obs_steps=2, horizon=horizon, n_action_steps=4)


def _diffusion(spec=None, **cfg) -> DiffusionPolicy:
    torch.manual_seed(cfg.pop("seed", 0))
    return DiffusionPolicy(spec or _spec(), DiffusionPolicy.Config(unet=unet_preset("tiny"), **cfg)).eval()


def _flow(spec=None, **cfg) -> FlowPolicy:
    torch.manual_seed(cfg.pop("seed", 1))
    return FlowPolicy(spec or _spec(), FlowPolicy.Config(unet=unet_preset("tiny"), **cfg)).eval()


def _compose(parents, weights) -> ComposedPolicy:
    spec = parents[0].spec
    return ComposedPolicy(spec, ComposedPolicy.Config(parents=[{}] * len(parents), weights=tuple(weights)),
                          parents=parents)


OBS = {"state": torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))}
NOISE = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("first_kind", ["flow", "ddim", "ddpm"])
def test_weights_one_zero_reproduce_the_first_parent_exactly(first_kind):
    if first_kind == "flow":
        first, second = _flow(num_inference_steps=4), _diffusion(scheduler="ddim", num_inference_steps=5)
    else:
        first = _diffusion(scheduler=first_kind, num_inference_steps=5 if first_kind == "ddim" else 20)
        second = _flow(num_inference_steps=4)
    composed = _compose([first, second], (1.0, 0.0))
    assert torch.equal(composed.predict_chunk(OBS, NOISE), first.predict_chunk(OBS, NOISE))
    composed.set_weights((0.5, 0.5))
    assert not torch.allclose(composed.predict_chunk(OBS, NOISE), first.predict_chunk(OBS, NOISE))


def test_weights_zero_one_reproduce_a_second_parent_of_the_same_family():
    a = _diffusion(scheduler="ddim", num_inference_steps=5, seed=0)
    b = _diffusion(scheduler="ddim", num_inference_steps=5, seed=3)
    composed = _compose([a, b], (0.0, 1.0))
    assert torch.equal(composed.predict_chunk(OBS, NOISE), b.predict_chunk(OBS, NOISE))


def test_mismatched_heads_are_refused_with_the_difference_named():
    with pytest.raises(CompositionError, match="horizon differs.*T_p=8.*T_p=16"):
        check_composable([_flow(), _diffusion(_spec(horizon=16))])
    with pytest.raises(CompositionError, match="action space differs.*action_dim=2.*action_dim=3"):
        check_composable([_flow(), _diffusion(_spec(action_dim=3))])
    norm_a = NormalizerSet({"action": MinMaxNormalizer(-torch.ones(2), torch.ones(2))})
    norm_b = NormalizerSet({"action": MinMaxNormalizer(-2 * torch.ones(2), torch.ones(2))})
    with pytest.raises(CompositionError, match="action normaliser differs"):
        check_composable([_flow(), _diffusion()], [norm_a, norm_b])
    check_composable([_flow(), _diffusion()], [norm_a, norm_a])  # same statistics: fine
    with pytest.raises(CompositionError, match="diffusion and flow heads"):
        check_composable([_flow(), nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="sum to 1"):
        _compose([_flow(), _diffusion()], (0.7, 0.7))


class GaussianEps(nn.Module):
    """Exact eps-prediction for data ~ N(mu, s^2) (per entry) under alphas_cumprod `ac`."""

    def __init__(self, mu: float, s: float, ac: torch.Tensor):
        super().__init__()
        self.mu, self.s, self.ac = mu, s, ac

    def forward(self, x, t, cond):
        a = torch.as_tensor(self.ac)[t.long()].reshape(-1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)


class GaussianVelocity(nn.Module):
    """Exact rectified-flow velocity for data ~ N(mu, s^2) (FlowPolicy passes t in [0, 1])."""

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, t, cond):
        t = t.reshape(-1, 1, 1)
        var = t**2 * self.s**2 + (1 - t) ** 2
        return self.mu + (t * self.s**2 - (1 - t)) / var * (x - t * self.mu)


def test_composition_of_gaussian_heads_matches_the_analytic_mean():
    """Equal-variance Gaussians N(mu_i, s^2): the convex score combination is the score of N(sum w_i mu_i, s^2)
    at every noise level, so composed sampling must land there (diffusion + diffusion and flow + diffusion)."""
    s, n = 0.1, 512
    obs = {"state": torch.zeros(n, 2, 3)}
    noise = torch.randn(n, 8, 2, generator=torch.Generator().manual_seed(2))
    d1 = _diffusion(scheduler="ddim", num_inference_steps=50, clip_sample=False)
    d2 = _diffusion(scheduler="ddim", num_inference_steps=50, clip_sample=False)
    ac = d1.train_scheduler.alphas_cumprod
    d1.model, d2.model = GaussianEps(0.6, s, ac), GaussianEps(-0.2, s, ac)
    f1 = _flow(num_inference_steps=100, clip_intermediate=False)
    f1.model = GaussianVelocity(0.6, s)
    x = f1.predict_chunk(obs, noise)
    assert abs(float(x.mean()) - 0.6) < 0.01 and abs(float(x.std()) - s) < 0.01  # the analytic heads are right
    for parents in ([d1, d2], [f1, d2]):
        for w in (0.25, 0.5):
            chunk = _compose(parents, (w, 1 - w)).predict_chunk(obs, noise)
            want = w * 0.6 + (1 - w) * -0.2
            assert abs(float(chunk.mean()) - want) < 0.02, (type(parents[0]).__name__, w, float(chunk.mean()))
            assert abs(float(chunk.std()) - s) < 0.02


def test_composed_head_is_a_registry_head():
    a, b = _flow(num_inference_steps=3), _diffusion(scheduler="ddim", num_inference_steps=4)
    cfg = {"parents": [{"name": "flow", "config": asdict(a.cfg), "spec": a.spec.to_json()},
                       {"name": "diffusion", "config": asdict(b.cfg), "spec": b.spec.to_json()}],
           "weights": [0.3, 0.7]}
    composed = make_policy("composed", a.spec, cfg)
    composed.parents[0].load_state_dict(a.state_dict())
    composed.parents[1].load_state_dict(b.state_dict())
    direct = _compose([a, b], (0.3, 0.7))
    assert torch.equal(composed.predict_chunk(OBS, NOISE), direct.predict_chunk(OBS, NOISE))
    with pytest.raises(ValueError, match="not trained"):
        composed.compute_loss({})

"""SDP's per-call fast paths give exactly what the straightforward computation gives.

`denoise_step` gathers precomputed per-level coefficients and `stream_step` counts its calls up front. Each
is pinned here against a plain reference (the code they replaced), bit for bit."""

from __future__ import annotations

import pytest
import torch

from robopolicy.nn import unet_preset
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.streaming import StreamingDiffusionPolicy, StreamState

torch.set_num_threads(1)


def _policy(horizon: int = 16, t_o: int = 1, t_a: int = 8, seed: int = 0, **cfg) -> StreamingDiffusionPolicy:
    torch.manual_seed(seed)
    spec = PolicySpec(obs_shapes={"state": (3,)}, action_dim=2, n_obs_steps=t_o, horizon=horizon, n_action_steps=t_a)
    return StreamingDiffusionPolicy(spec, StreamingDiffusionPolicy.Config(unet=unet_preset("tiny"), **cfg)).eval()


# ---------------------------------------------------------------------------- references (the replaced code)
def ref_denoise_step(p: StreamingDiffusionPolicy, x, levels, model_out, step_noise=None):
    ab = p.alpha_bar_ext.to(x.dtype)
    t = p.timestep_of(levels)
    prev = p.timestep_of((levels - 1).clamp_min(-1))
    a_t = ab[t + 1][..., None]
    a_prev = ab[prev + 1][..., None]
    if p.cfg.prediction_type == "epsilon":
        x0 = (x - (1 - a_t).sqrt() * model_out) / a_t.sqrt()
        eps = model_out
    else:
        x0 = model_out
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).clamp_min(1e-12).sqrt()
    if p.cfg.clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
    if p.cfg.scheduler == "ddim":
        out = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    else:
        alpha = a_t / a_prev
        beta = 1 - alpha
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + (alpha.sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = ((1 - a_prev) / (1 - a_t) * beta).clamp_min(0)
        var = torch.where(prev[..., None] >= 0, var, torch.zeros_like(var))
        out = mean + var.sqrt() * step_noise
    return torch.where(levels[..., None] >= 0, out, x)


def ref_stream_step(p: StreamingDiffusionPolicy, obs, state: StreamState, generator=None):
    """The original loop: a check before every call."""
    cond = p.encode_obs(obs)
    x, levels = state.buffer.to(cond.dtype), state.levels
    while bool((levels[:, p.last_executed] >= 0).any()):
        out = p.model(x, p.timestep_of(levels).clamp_min(0), cond).detach()
        z = None
        if p.cfg.scheduler == "ddpm":
            z = torch.randn(x.shape, generator=generator)
        x = ref_denoise_step(p, x, levels, out, z)
        levels = (levels - 1).clamp_min(-1)
    return x, StreamState(x, levels)


class Counter:
    def __init__(self, module: torch.nn.Module):
        self.n = 0
        module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


# ---------------------------------------------------------------------------- denoise_step
@pytest.mark.parametrize("scheduler,n_levels", [("ddim", 10), ("ddpm", 10), ("ddpm", 100), ("ddim", 4)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_denoise_step_equals_reference(scheduler, n_levels, prediction_type, clip_sample, dtype):
    p = _policy(scheduler=scheduler, num_inference_steps=n_levels, prediction_type=prediction_type,
                clip_sample=clip_sample).to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 2, generator=g, dtype=dtype) * 1.5
    out = torch.randn(3, 16, 2, generator=g, dtype=dtype)
    z = torch.randn(3, 16, 2, generator=g, dtype=dtype)
    levels = torch.randint(-1, n_levels, (3, 16), generator=g)
    levels[0] = -1  # an all-clean row and every level, the clean and the top one included
    levels[1, :n_levels + 1] = torch.arange(-1, n_levels)[:16]
    levels[2, -1] = n_levels - 1
    got = p.denoise_step(x, levels, out, z)
    assert torch.equal(got, ref_denoise_step(p, x, levels, out, z))
    assert torch.equal(got[0], x[0])
    if scheduler == "ddpm":
        with pytest.raises(ValueError, match="step_noise"):
            p.denoise_step(x, levels, out)


def test_level_table_follows_set_inference():
    p = _policy(scheduler="ddim", num_inference_steps=10)
    x, out = torch.randn(1, 16, 2), torch.randn(1, 16, 2)
    levels = torch.arange(16)[None] % 10 - 1
    p.denoise_step(x, levels, out)
    p.set_inference(num_inference_steps=20)  # a finer level grid: the table must be rebuilt
    levels = torch.arange(16)[None] + 3
    assert torch.equal(p.denoise_step(x, levels, out), ref_denoise_step(p, x, levels, out))


def test_level_tables_stay_out_of_the_state_dict():
    p = _policy()
    keys = set(p.state_dict())
    st = p.init_stream(1, torch.randn(1, 16, 2))
    p.stream_step({"state": torch.randn(1, 1, 3)}, st)
    assert p._level_tables
    assert set(p.state_dict()) == keys
    assert not any("table" in k for k in keys)


# ---------------------------------------------------------------------------- the whole stream
@pytest.mark.parametrize("scheduler,n_levels", [("ddim", 10), ("ddpm", 10), ("ddpm", 20)])
@pytest.mark.parametrize("horizon,t_o,t_a", [(16, 1, 8), (20, 2, 8)])
def test_stream_equals_reference_across_calls_and_weight_updates(scheduler, n_levels, horizon, t_o, t_a):
    p = _policy(horizon, t_o, t_a, scheduler=scheduler, num_inference_steps=n_levels)
    model_calls = Counter(p.model)
    obs = {"state": torch.randn(2, t_o, 3)}
    noise = torch.randn(2, horizon, 2, generator=torch.Generator().manual_seed(3))
    state = ref_state = p.init_stream(2, noise)
    g, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for call in range(6):
        if call == 3:  # a weight update mid-stream
            with torch.no_grad():
                for q in p.model.step_encoder.parameters():
                    q.mul_(1.1)
        n = model_calls.n
        with torch.inference_mode():
            chunk, state = p.stream_step(obs, state, generator=g)
        assert model_calls.n - n == p.stream_nfe
        ref_chunk, ref_state = ref_stream_step(p, obs, ref_state, generator=g_ref)
        assert torch.equal(chunk, ref_chunk) and torch.equal(state.levels, ref_state.levels)
        with torch.inference_mode():
            state = p.advance(state, generator=g)
        ref_state = p.advance(ref_state, generator=g_ref)
        assert torch.equal(state.buffer, ref_state.buffer) and torch.equal(state.levels, ref_state.levels)


def test_stream_step_on_a_clean_chunk_makes_no_call():
    p = _policy(scheduler="ddim", num_inference_steps=10)
    model_calls = Counter(p.model)
    x = torch.randn(1, 16, 2)
    levels = torch.tensor([[-1] * 8 + [4] * 8])
    chunk, state = p.stream_step({"state": torch.randn(1, 1, 3)}, StreamState(x, levels))
    assert model_calls.n == 0 and torch.equal(chunk, x) and torch.equal(state.levels, levels)

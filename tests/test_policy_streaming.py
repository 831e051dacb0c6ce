"""Streaming Diffusion Policy: level profiles, the mixed training scheme, per-position steps against the reference
schedulers, NFE per control call = N/h (counted), buffer shift invariants, the streaming agent (reset, stream
ids, determinism), loading through robopolicy.load, and the 2-D two-mode toy (both modes, kept across calls)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
from robopolicy.nn import unet_preset
from robopolicy.nn.unet1d_streaming import StreamingUnet1D
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.registry import ConfigError, make_policy
from robopolicy.policies.streaming import StreamingDiffusionPolicy, level_profile, n_chunks
from robopolicy.streaming_agent import StreamingPolicyAgent, make_agent

torch.set_num_threads(1)


def _spec(horizon: int = 20, t_o: int = 2, t_a: int = 8, state_dim: int = 3, action_dim: int = 2) -> PolicySpec:
    return PolicySpec(obs_shapes={"state": (state_dim,)}, action_dim=action_dim, n_obs_steps=t_o, horizon=horizon,
                      n_action_steps=t_a)


def _policy(spec: PolicySpec | None = None, **cfg) -> StreamingDiffusionPolicy:
    unet = cfg.pop("unet", unet_preset("tiny"))
    return StreamingDiffusionPolicy(spec or _spec(), StreamingDiffusionPolicy.Config(unet=unet, **cfg))


class CallCounter:
    """Counts forward calls of a module (NFE)."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


# ---------------------------------------------------------------------------- profiles and training levels
def test_level_profile_official_layout():
    spec = _spec()  # T_p 20, T_o 2, T_a 8 (official low-dim): h = 2
    assert n_chunks(spec) == 2
    assert level_profile(spec, 100).tolist() == [49] * 9 + [99] * 11
    assert level_profile(spec, 10).tolist() == [4] * 9 + [9] * 11
    assert level_profile(_spec(horizon=28), 99).tolist() == [32] * 9 + [65] * 8 + [98] * 11  # h = 3


def test_training_levels_mix_constant_and_shifted_chunkwise():
    torch.manual_seed(0)
    p = _policy()
    t = p.training_levels(4000, "cpu")
    assert t.shape == (4000, 20) and int(t.min()) >= 0 and int(t.max()) <= 99
    constant = (t == t[:, :1]).all(1)
    assert abs(float(constant.float().mean()) - 0.2) < 0.03
    cw = t[~constant]
    # chunk-wise rows: the official profile shifted down by one offset in [0, K/h - 1] per row
    offset = 49 - cw[:, 0]
    assert int(offset.min()) == 0 and int(offset.max()) == 49
    assert torch.equal(cw, p.train_profile[None] - offset[:, None])
    p_all = _policy(constant_level_weight=1.0)
    assert (p_all.training_levels(64, "cpu").diff(dim=1) == 0).all()


def test_validation_errors():
    with pytest.raises(ValueError, match="multiple of the 2 chunks"):
        _policy(num_inference_steps=5)
    with pytest.raises(ValueError, match="divide num_train_timesteps"):
        _policy(num_inference_steps=30)
    with pytest.raises(ValueError, match="shorter than T_o - 1 \\+ T_a"):
        _policy(_spec(horizon=8, t_a=8))
    with pytest.raises(ConfigError, match="scheduler"):
        make_policy("streaming", _spec(), {"unet": {"down_dims": [32, 64], "diffusion_step_embed_dim": 32},
                                           "scheduler": "euler"})
    p = _policy()
    with pytest.raises(ValueError, match="valid: \\[2, 4, 10, 20, 50, 100\\]"):
        p.set_inference(num_inference_steps=3)
    net = StreamingUnet1D(2, 6, 20, unet_preset("tiny"))
    with pytest.raises(ValueError, match="per-position steps"):
        net(torch.zeros(1, 20, 2), torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 6))


# ---------------------------------------------------------------------------- per-position step vs reference
def test_constant_level_step_equals_reference_schedulers():
    """At a constant level, the per-position step is the DDPM / DDIM step of diffusers (ALGORITHMS.md 2, test 1)."""
    torch.manual_seed(0)
    p = _policy().double()
    x0 = torch.rand(3, 20, 2, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn_like(x0)
    kw = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    ddpm = DDPMScheduler(variance_type="fixed_small", **kw)
    ddpm.set_timesteps(100)
    for n in (99, 50, 1, 0):
        t = torch.full((3, 20), n)
        xt = p.add_noise_at(x0, eps, t)
        assert torch.allclose(xt, ddpm.add_noise(x0, eps, torch.full((3,), n)), atol=1e-6)
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        ours = p.denoise_step(xt, t, eps, z)
        ref = ddpm.step(eps, n, xt, generator=torch.Generator().manual_seed(n)).prev_sample
        assert torch.allclose(ours, ref, atol=1e-6), n
    p.set_inference(scheduler="ddim", num_inference_steps=10)
    ddim = DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **kw)
    ddim.set_timesteps(10)
    for n in (9, 4, 0):
        t_train = (n + 1) * 10 - 1  # explicit level -> train timestep map
        xt = p.add_noise_at(x0, eps, torch.full((3, 20), t_train))
        ours = p.denoise_step(xt, torch.full((3, 20), n), eps)
        assert torch.allclose(ours, ddim.step(eps, t_train, xt).prev_sample, atol=1e-6), n
    # mixed levels: every position steps at its own level; clean positions are untouched
    levels = torch.tensor([-1] * 5 + [3] * 7 + [9] * 8)[None].expand(3, -1)
    xt = torch.randn(3, 20, 2, dtype=torch.float64)
    ours = p.denoise_step(xt, levels, eps)
    assert torch.equal(ours[:, :5], xt[:, :5])
    for n, sl in ((3, slice(5, 12)), (9, slice(12, 20))):
        assert torch.allclose(ours[:, sl], ddim.step(eps, (n + 1) * 10 - 1, xt).prev_sample[:, sl], atol=1e-6)


# ---------------------------------------------------------------------------- NFE and the buffer
@pytest.mark.parametrize("spec_kw,cfg,expected", [
    (dict(), dict(scheduler="ddim", num_inference_steps=10), 5),
    (dict(), dict(scheduler="ddpm", num_inference_steps=100), 50),
    (dict(horizon=28), dict(num_train_timesteps=99, scheduler="ddim", num_inference_steps=9), 3),  # h = 3
    (dict(horizon=16), dict(scheduler="ddim", num_inference_steps=10), 10),  # h = 1: no speed-up
])
def test_nfe_per_control_call_is_n_over_h(spec_kw, cfg, expected):
    torch.manual_seed(0)
    p = _policy(_spec(**spec_kw), **cfg)
    assert p.stream_nfe == expected == p.n_levels // p.h
    counter = CallCounter(p.model)
    obs = {"state": torch.randn(2, 2, 3)}
    state = p.init_stream(2)
    for _ in range(4):
        before = counter.n
        _, state = p.stream_step(obs, state)
        assert counter.n - before == expected
        state = p.advance(state)
    before = counter.n
    p.predict_chunk(obs)
    assert counter.n - before == p.nfe == p.n_levels  # the stateless fallback denoises everything


@pytest.mark.parametrize("horizon,t_o,t_a", [(20, 2, 8), (16, 1, 4), (24, 3, 5)])
def test_buffer_shift_invariants(horizon, t_o, t_a):
    torch.manual_seed(0)
    p = _policy(_spec(horizon=horizon, t_o=t_o, t_a=t_a), scheduler="ddpm", num_inference_steps=20)
    n, profile = p.n_levels, p.profile
    obs = {"state": torch.randn(3, t_o, 3)}
    state = p.init_stream(3)
    assert (state.levels == profile).all()
    rem = (horizon - (t_o - 1)) % t_a
    first = slice(0, t_o - 1 + t_a)
    for _ in range(3):
        chunk, done = p.stream_step(obs, state)
        assert torch.equal(chunk, done.buffer)
        assert (done.levels[:, first] == -1).all()  # the executed chunk (and the past) is clean
        assert (done.levels[:, t_o - 1 + t_a:] >= 0).all()  # the rest is still noisy
        nxt = p.advance(done, generator=torch.Generator().manual_seed(1))
        assert nxt.buffer.shape == chunk.shape and (nxt.levels == profile).all()
        assert (nxt.levels.diff(dim=1) >= 0).all()  # levels never decrease along the horizon
        kept = horizon - t_a - rem
        # positions T_o-1 .. kept-1 are the previous buffer shifted by T_a, unchanged
        assert torch.equal(nxt.buffer[:, t_o - 1:kept], done.buffer[:, t_a + t_o - 1:horizon - rem])
        # exactly T_a (+ the dropped incomplete tail) fresh positions at level N - 1 at the end
        assert (nxt.levels[:, kept:] == n - 1).all() and (nxt.levels[:, :kept] < n - 1).all()
        z = torch.randn(3, t_a + rem, 2, generator=torch.Generator().manual_seed(1))
        assert torch.equal(nxt.buffer[:, kept:], z)
        # the T_o - 1 past positions are re-noised (not left clean) to the level of position T_o - 1
        if t_o > 1:
            assert (nxt.levels[:, :t_o - 1] == nxt.levels[:, t_o - 1:t_o]).all()
            assert not torch.allclose(nxt.buffer[:, :t_o - 1], done.buffer[:, t_a:t_a + t_o - 1])
        state = nxt


# ---------------------------------------------------------------------------- the agent
def _identity_normalizer() -> NormalizerSet:
    return NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})


def test_agent_keeps_buffer_and_reset_clears_it():
    torch.manual_seed(0)
    p = _policy(scheduler="ddim", num_inference_steps=10)
    agent = make_agent(p, _identity_normalizer(), seed=7)
    assert isinstance(agent, StreamingPolicyAgent) and agent.nfe == 5
    obs = {"state": np.random.default_rng(0).normal(size=(2, 2, 3)).astype(np.float32)}
    a1 = agent.act(obs)
    assert a1.shape == (2, 8, 2) and agent.n_streams == 2
    held = agent.stream_state(0)
    assert held is not None and (held.levels == p.profile).all()
    a2 = agent.act(obs)  # continues the held buffers
    assert not np.allclose(a1, a2)
    with pytest.raises(ValueError, match="without reset"):
        agent.act({"state": obs["state"][:1]})
    agent.reset()
    assert agent.n_streams == 0 and agent.stream_state(0) is None
    assert np.array_equal(agent.act(obs), a1)  # fresh buffers from the restarted noise stream
    with pytest.raises(ValueError, match="buffer shifts"):
        agent.set_action_steps(4)


def test_agent_stream_ids_are_independent_of_row_order():
    torch.manual_seed(0)
    p = _policy(scheduler="ddim", num_inference_steps=10)  # deterministic steps: only the init noise differs
    agent = StreamingPolicyAgent(p, _identity_normalizer(), seed=3)
    obs = {"state": np.random.default_rng(0).normal(size=(2, 2, 3)).astype(np.float32)}
    agent.act(obs, streams=["a", "b"])
    buf_b = agent.stream_state("b").buffer.clone()
    swapped = {"state": obs["state"][::-1].copy()}
    out = agent.act(swapped, streams=["b", "a"])  # row 0 is stream b now
    solo = StreamingPolicyAgent(p, _identity_normalizer())
    solo._streams["b"] = type(agent.stream_state("b"))(buf_b, p.profile[None].clone())
    assert np.allclose(solo.act({"state": obs["state"][1:2]}, streams=["b"]), out[:1], atol=1e-5)
    agent.end_stream("a")
    assert agent.n_streams == 1
    with pytest.raises(ValueError, match="name each of the 2 rows once"):
        agent.act(obs, streams=["a", "a"])
    with pytest.raises(TypeError, match="StreamingDiffusionPolicy"):
        StreamingPolicyAgent(torch.nn.Linear(1, 1), _identity_normalizer())  # type: ignore[arg-type]


def test_load_returns_streaming_agent(tmp_path):
    from robopolicy import load
    from robopolicy.train.checkpoint import write_model_files

    p = _policy(scheduler="ddim", num_inference_steps=10)
    config = {"policy": {"name": "streaming", "config": {"unet": {"down_dims": [32, 64], "diffusion_step_embed_dim": 32},
                                                         "scheduler": "ddim", "num_inference_steps": 10}},
              "task": {"action_key": "action", "env_kwargs": {"obs_mode": "state"}}}
    write_model_files(tmp_path, p, _identity_normalizer(), config, {"spec": p.spec.to_json()})
    agent = load(tmp_path, seed=0, num_inference_steps=20)
    assert isinstance(agent, StreamingPolicyAgent) and agent.nfe == 10
    assert agent.act({"state": np.zeros((1, 2, 3), np.float32)}).shape == (1, 8, 2)


def test_eval_runner_gives_each_episode_its_own_buffer():
    from test_eval_runner import PointMassFn

    from robopolicy.eval import evaluate

    torch.manual_seed(0)
    p = _policy(_spec(state_dim=7), scheduler="ddim", num_inference_steps=10)
    agent = StreamingPolicyAgent(p, _identity_normalizer(), seed=0)
    calls: list[list[int]] = []
    act = agent.act

    def recording_act(obs, streams=None):
        calls.append(list(streams))
        return act(obs, streams=streams)

    agent.act = recording_act  # type: ignore[method-assign]
    result = evaluate(agent, PointMassFn((("max_steps", 20),)), n_episodes=3, n_workers=1, stop_on_success=False,
                      videos_per_outcome=0, progress=False)
    assert [r.length for r in result.records] == [20, 20, 20]
    assert calls == [[0]] * 3 + [[1]] * 3 + [[2]] * 3  # ceil(20 / 8) calls per episode, one stream id each
    assert agent.n_streams == 3 and result.summary["nfe_per_chunk"] == 5


# ---------------------------------------------------------------------------- 2-D two-mode toy
# Each episode holds one of two constant 2-D actions, (0.6, 0.3) or (-0.6, -0.3), plus N(0, 0.05^2) noise, for an
# uninformative observation. A stream must pick a mode (50/50 over streams) and keep it from call to call: the
# only memory of the choice is the partly denoised second chunk carried in the buffer. That memory is noisy by
# design: the 4 carried positions sit at level N/h - 1 (train step 49, alpha_bar 0.51), where even the Bayes-
# optimal denoiser reads the wrong mode with probability Phi(-1.36) ~ 9 %, so about 0.9 of the streams keep
# their mode per call (measured, seed 0: 0.86 DDIM, 0.84 DDPM); a buffer-less sampler would keep 0.5.
TOY_MODES = torch.tensor([[0.6, 0.3], [-0.6, -0.3]])
TOY_SPEC = dict(horizon=8, t_o=2, t_a=3, state_dim=2)  # h = 2 chunks


def _toy_batch(b: int, gen: torch.Generator) -> dict:
    mode = torch.randint(0, 2, (b,), generator=gen)
    action = TOY_MODES[mode][:, None, :] + 0.05 * torch.randn(b, 8, 2, generator=gen)
    return {"obs": {"state": 0.1 * torch.randn(b, 2, 2, generator=gen)}, "action": action}


def _modes_of(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest mode of each row's executed actions (B, T_a, 2) and the RMS distance to it."""
    rms = ((actions[:, None] - TOY_MODES[None, :, None]) ** 2).mean((-1, -2)).sqrt()
    dist, mode = rms.min(1)
    return mode, dist


def test_streaming_learns_both_modes_and_keeps_them_across_calls():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    p = _policy(_spec(**TOY_SPEC), unet=unet_preset("tiny", down_dims=[32]), scheduler="ddim", num_inference_steps=10)
    opt = torch.optim.AdamW(p.parameters(), lr=3e-3, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=300, pct_start=0.1)
    p.train()
    for _ in range(300):
        loss = p.compute_loss(_toy_batch(128, gen))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    p.eval()
    obs = _toy_batch(400, torch.Generator().manual_seed(1))["obs"]
    # Seed 0 measured on-mode: DDIM-10 (5 NFE per call) 0.82-0.89, DDPM-100 0.96-0.98 (as DiffusionPolicy's
    # toy test: few deterministic steps blur a small, briefly trained net more).
    for kw, min_on_mode in ((dict(scheduler="ddim", num_inference_steps=10), 0.7),
                            (dict(scheduler="ddpm", num_inference_steps=100), 0.9)):
        p.set_inference(**kw)
        state = p.init_stream(400, torch.randn(400, 8, 2, generator=torch.Generator().manual_seed(2)))
        modes, on_mode = [], []
        gen_s = torch.Generator().manual_seed(3)
        for _ in range(4):
            chunk, state = p.stream_step(obs, state, generator=gen_s)
            state = p.advance(state, generator=gen_s)
            mode, dist = _modes_of(chunk[:, 1:4])
            modes.append(mode)
            on_mode.append(float((dist < 0.15).float().mean()))
        mass = torch.bincount(modes[0], minlength=2).float() / 400
        assert ((mass - 0.5).abs() < 0.1).all(), (kw, mass)  # both modes, each within 10 points of 50 %
        assert min(on_mode) > min_on_mode, (kw, on_mode)  # executed actions sit on a mode, not between
        kept = float((modes[1] == modes[0]).float().mean())
        assert kept > 0.75, (kw, kept)  # a stream keeps its mode through the buffer (chance: 0.5)

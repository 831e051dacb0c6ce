"""Discrete-diffusion VLA head: quantile binning, the unmasking schedule, secondary re-masking, the 2-D toy
(both modes, and the mode mixing of one-shot decoding), and language choosing the mode."""

from __future__ import annotations

import math

import pytest
import torch
from test_policy_diffusion import TOY_TEMPLATES, _train, toy_batch, toy_mode_stats

from robopolicy.policies.base import PolicySpec
from robopolicy.policies.discrete_diffusion import DiscreteDiffusionPolicy
from robopolicy.policies.masked_decoding import DecodeSettings, DecodeTrace, mask_schedule, masked_decode
from robopolicy.policies.quantile_bins import QuantileActionBins
from robopolicy.policies.registry import make_policy


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _policy(language: bool = False, **kw) -> DiscreteDiffusionPolicy:
    spec = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=2,
                      language=language)
    cfg = DiscreteDiffusionPolicy.Config(n_bins=32, d_model=48, n_layers=2, n_heads=4, ff_mult=2, **kw)
    return DiscreteDiffusionPolicy(spec, cfg)


# ---------------------------------------------------------------------------------------------- binning
def test_quantile_bins_round_trip_within_half_a_bin_and_atoms_exact():
    gen = torch.Generator().manual_seed(0)
    n = 5000
    cont = torch.randn(n, generator=gen).mul(0.4).tanh()  # continuous, dense near 0
    grip = torch.where(torch.rand(n, generator=gen) < 0.7, -1.0, 1.0)  # binary: two atoms
    grip[:50] = torch.rand(50, generator=gen) * 2 - 1  # a few values in between
    sat = cont.clamp(max=0.3)  # continuous with an atom at its top (saturated)
    x = torch.stack([cont, grip, sat], 1)
    bins = QuantileActionBins(3, n_bins=64).fit(x)
    counts = bins.bins_per_dim()
    assert counts[0] == 64 and all(c <= 64 for c in counts)
    assert counts[1] == 3 + 0 or counts[1] <= 64  # -1, +1 atoms and the intervals between the rare values
    tok = bins.tokenize(x)
    assert bool(bins.valid.gather(1, tok.T).all())
    err = (bins.detokenize(tok) - x).abs()
    half = 0.5 * bins.widths.gather(1, tok.T).T
    assert bool((err <= half + 1e-6).all()), float((err - half).max())
    # Atoms decode exactly: the binary gripper values and the saturation value.
    atom = (grip == -1) | (grip == 1)
    assert float(err[atom, 1].max()) == 0.0
    assert float(err[sat == 0.3, 2].max()) < 1e-6
    # Quantile bins hold about the same share of the continuous data each.
    share = torch.bincount(tok[:, 0], minlength=64).float() / n
    assert float(share.max()) < 3.0 / 64


def test_quantile_bins_reject_bad_input():
    bins = QuantileActionBins(2, n_bins=8)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        bins.fit(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="finite"):
        bins.fit(torch.full((4, 2), float("nan")))


# ---------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("rounds", [1, 4, 12])
def test_decoding_masks_the_scheduled_number_of_tokens_per_round(rounds):
    length, vocab = 40, 16
    gen = torch.Generator().manual_seed(0)

    def logits_fn(tokens, masked):
        return torch.randn(tokens.shape[0], length, vocab, generator=gen)

    trace = DecodeTrace()
    out = masked_decode(logits_fn, 3, length, DecodeSettings(rounds=rounds), generator=gen, trace=trace)
    want = mask_schedule(length, rounds)
    assert len(trace.masked_after) == rounds
    for i, counts in enumerate(trace.masked_after):
        expected = 0 if i == rounds - 1 else max(1, min(math.floor(length * math.cos(math.pi / 2 * (i + 1) / rounds)),
                                                        length - 1))
        assert want[i] == expected
        assert counts.tolist() == [expected] * 3
    assert all(a >= b for a, b in zip(want, want[1:], strict=False))  # monotone non-increasing
    assert out.shape == (3, length) and int(out.min()) >= 0 and int(out.max()) < vocab


def test_left_to_right_decodes_one_position_per_round_in_order():
    length = 6
    trace = DecodeTrace()
    masked_decode(lambda t, m: torch.zeros(t.shape[0], length, 3), 2, length,
                  DecodeSettings(order="left_to_right"), trace=trace)
    assert len(trace.masks) == length
    for i, m in enumerate(trace.masks):
        assert m[0].tolist() == [j > i for j in range(length)]


def _corrupting_logits(length: int, pos: int):
    """Round 0 makes `pos` confidently token 1 (accepted first); later rounds say token 0 is right there."""
    calls = {"n": 0}

    def fn(tokens, masked):
        logits = torch.full((tokens.shape[0], length, 4), -2.0)
        logits[..., 0] = 1.0  # p(token 0) ~ 0.87 elsewhere: less confident than pos in round 0
        if calls["n"] == 0:
            logits[:, pos, 1] = 12.0
        else:
            logits[:, pos, 0], logits[:, pos, 1] = 12.0, -12.0
        calls["n"] += 1
        return logits

    return fn


@pytest.mark.parametrize("remask", [True, False])
def test_secondary_remasking_revisits_a_corrupted_kept_token(remask):
    length, pos = 10, 3
    settings = DecodeSettings(rounds=5, remask=remask, sample_temperature=0.0, choice_temperature=0.0)
    trace = DecodeTrace()
    out = masked_decode(_corrupting_logits(length, pos), 1, length, settings, trace=trace)
    assert not bool(trace.masks[0][0, pos])  # accepted in round 0 (most confident)
    later = torch.stack([m[0, pos] for m in trace.masks[1:]])
    if remask:
        assert bool(later.any()) and int(trace.remasked_kept[1][0]) >= 1
        assert int(out[0, pos]) == 0  # re-decoded with the better context
    else:
        assert not bool(later.any()) and all(int(r[0]) == 0 for r in trace.remasked_kept)
        assert int(out[0, pos]) == 1


# ---------------------------------------------------------------------------------------------- the head
def test_head_api_errors_and_settings():
    p = _policy()
    batch = toy_batch(8, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="fit_action_statistics"):
        p.compute_loss(batch)
    p.fit_action_statistics(batch["action"].reshape(-1, 2))
    out = p.compute_loss(batch)
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert p.nfe == 12
    p.set_inference(num_rounds=4)
    assert p.nfe == 4
    p.set_inference(decode="left_to_right")
    assert p.nfe == 4 * 2
    with pytest.raises(ValueError, match="decode must be one of"):
        p.set_inference(decode="random")
    p.set_inference(decode="adaptive")
    noise = torch.randn(8, 4, 2)
    a, b = p.predict_chunk(batch["obs"], noise), p.predict_chunk(batch["obs"], noise)
    assert a.shape == (8, 4, 2) and torch.equal(a, b)
    lp = _policy(language=True)
    lp.fit_action_statistics(batch["action"].reshape(-1, 2))
    with pytest.raises(KeyError, match="language"):
        lp.compute_loss(batch)


def test_registered_and_config_validated():
    spec = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=2)
    p = make_policy("discrete_diffusion", spec, {"d_model": 32, "n_heads": 4, "n_layers": 1, "n_bins": 16})
    assert isinstance(p, DiscreteDiffusionPolicy)
    with pytest.raises(ValueError, match="divisible"):
        make_policy("discrete_diffusion", spec, {"d_model": 30, "n_heads": 4})


def test_learns_both_modes_of_the_2d_toy_and_one_shot_decoding_mixes_them():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    p = _policy()
    p.fit_action_statistics(toy_batch(4096, torch.Generator().manual_seed(5))["action"].reshape(-1, 2))
    _train(p, lambda: toy_batch(128, gen), steps=250, lr=3e-3)
    obs = toy_batch(400, torch.Generator().manual_seed(1))["obs"]
    noise = torch.randn(400, 4, 2, generator=torch.Generator().manual_seed(2))
    # Seed 0 measured: on-mode 0.93 (T=4), 1.0 (T=8), 0.83 (left-to-right), 0.16 (T=1); mass 0.54-0.57.
    for rounds, min_on_mode in ((4, 0.85), (8, 0.95)):
        p.set_inference(num_rounds=rounds)
        mass, on_mode = toy_mode_stats(p.predict_chunk(obs, noise))
        assert (mass - 0.5).abs().max() < 0.1, (rounds, mass)  # mass per mode within 10 points
        assert on_mode > min_on_mode, (rounds, on_mode)
    p.set_inference(decode="left_to_right")
    mass, on_mode = toy_mode_stats(p.predict_chunk(obs, noise))
    assert (mass - 0.5).abs().max() < 0.1 and on_mode > 0.7, (mass, on_mode)
    # One round samples every token independently: chunks mix the two modes (the point of iterative unmasking).
    p.set_inference(decode="adaptive", num_rounds=1)
    _, on_mode_1 = toy_mode_stats(p.predict_chunk(obs, noise))
    assert on_mode_1 < 0.5, on_mode_1
    assert TOY_TEMPLATES.shape == (2, 4, 2)


def test_the_instruction_selects_the_mode():
    pytest.importorskip("wordllama")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    words = ["move to the right", "move to the left"]  # mode 0 is +x (right), mode 1 is -x (left)

    def batch_fn(b=128, g=gen):
        batch = toy_batch(b, g)
        mode = (batch["action"][:, -1, 0] < 0).long()
        batch["obs"]["language"] = [words[int(m)] for m in mode]
        return batch

    p = _policy(language=True)
    p.fit_action_statistics(batch_fn(4096, torch.Generator().manual_seed(5))["action"].reshape(-1, 2))
    _train(p, batch_fn, steps=250, lr=3e-3)
    p.set_inference(num_rounds=4)
    obs = toy_batch(200, torch.Generator().manual_seed(1))["obs"]
    for i, text in enumerate(words):
        mass, on_mode = toy_mode_stats(p.predict_chunk({**obs, "language": [text] * 200}))
        assert float(mass[i]) > 0.95, (text, mass)
        assert on_mode > 0.9, (text, on_mode)


@pytest.mark.parametrize("fused", [True, False])
def test_the_instruction_reaches_the_state_token_only_when_fused(fused):
    pytest.importorskip("wordllama")
    torch.manual_seed(0)
    p = _policy(language=True, instruction_in_state=fused).eval()
    state = torch.randn(3, 2, 2)
    texts = [["go to the red block"] * 3, ["go to the blue block"] * 3]
    with torch.no_grad():
        prefixes = [p.encode_prefix({"state": state, "language": t})[0] for t in texts]
    n_words = prefixes[0].shape[1] - 2  # the prefix is [instruction tokens | 2 state tokens]
    state_tokens = [x[:, n_words:] for x in prefixes]
    assert not torch.equal(prefixes[0][:, :n_words], prefixes[1][:, :n_words])  # the colour word differs
    assert torch.equal(state_tokens[0], state_tokens[1]) is not fused
    with pytest.raises(ValueError, match="obs\\['language'\\] has 2 rows"):
        p.encode_prefix({"state": state, "language": texts[0][:2]})


# ---------------------------------------------------------------------------------------------- plumbing
def _language_store(path, n_episodes: int = 6, length: int = 12, language: bool = True):
    import numpy as np

    from robopolicy.data.episode_store import EpisodeStore

    store = EpisodeStore.create(path, fps=10.0)
    rng = np.random.default_rng(0)
    for e in range(n_episodes):
        sign = 1.0 if e % 2 == 0 else -1.0
        steps = {"timestamp": 100.0 * e + np.arange(length) / 10.0,
                 "state": rng.normal(0, 0.1, (length, 2)).astype(np.float32),
                 "action": np.tile([sign * 0.8, 0.0], (length, 1)).astype(np.float32)}
        attrs = {"source": "expert", "success": True, "task": "toy"}
        if language:
            attrs["language"] = "move to the right" if sign > 0 else "move to the left"
        store.add_episode(steps, attrs=attrs)
    return path


def test_dataset_carries_the_episode_instruction(tmp_path):
    from robopolicy.data.dataset import SequenceConfig, SequenceDataset

    path = _language_store(tmp_path / "s.zarr")
    cfg = SequenceConfig(obs_keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2, val_ratio=0.0, language=True)
    ds = SequenceDataset(path, cfg)
    for i in range(len(ds)):
        item = ds[i]
        want = "move to the right" if float(item["action"][0, 0]) > 0 else "move to the left"
        assert item["obs"]["language"] == want
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert isinstance(batch["obs"]["language"], list) and len(batch["obs"]["language"]) == 5
    plain = SequenceConfig(obs_keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2, val_ratio=0.0)
    assert "language" not in SequenceDataset(path, plain)[0]["obs"]
    with pytest.raises(ValueError, match="no train episode .* 'language'"):
        SequenceDataset(_language_store(tmp_path / "n.zarr", language=False), cfg)


def test_trainer_fits_bins_and_the_checkpoint_acts_on_instructions(tmp_path):
    pytest.importorskip("wordllama")
    import numpy as np

    import robopolicy
    from robopolicy.train import TaskConfig, TrainerConfig, train

    path = _language_store(tmp_path / "s.zarr")
    task = TaskConfig(store=str(path), obs_keys=["state"], n_obs_steps=2, horizon=4, n_action_steps=2,
                      val_ratio=0.34, language=True)
    cfg = TrainerConfig(steps=4, batch_size=8, warmup_steps=1, val_every=4, checkpoint_every=0, log_every=1,
                        out_dir=str(tmp_path / "run"), progress=False, num_threads=1)
    result = train(task, "discrete_diffusion", {"d_model": 32, "n_heads": 4, "n_layers": 1, "n_bins": 16}, cfg)
    assert np.isfinite(result.metrics["val/instruction_gap"])  # logged for language heads at validation
    agent = robopolicy.load(tmp_path / "run" / "last")
    bins = agent.policy.bins
    assert bool(bins.fitted) and bins.bins_per_dim() == [3, 1]  # atoms -1, +1 and [-1, 1]; a constant
    out = agent.act({"state": np.zeros((2, 2, 2), np.float32), "language": ["move to the left", "move to the right"]})
    assert out.shape == (2, 2, 2)
    # Decoded values are bin midpoints of the fitted bins, unnormalized: -0.8, 0.8 (atoms) or 0 ([-1, 1]).
    assert np.isclose(np.abs(out[:, :, 0])[..., None], [0.0, 0.8], atol=1e-5).any(-1).all(), out
    assert np.allclose(out[:, :, 1], 0.0, atol=1e-5)


def test_instruction_gap_is_zero_for_a_head_that_ignores_the_words_and_not_otherwise():
    from robopolicy.data.normalizer import IdentityNormalizer, NormalizerSet
    from robopolicy.train.evaluation import instruction_gap

    class Head(torch.nn.Module):
        def __init__(self, listens: bool):
            super().__init__()
            self.listens = listens

        def predict_chunk(self, obs, noise=None):
            sign = torch.tensor([1.0 if "right" in t else -1.0 for t in obs["language"]]) if self.listens else 1.0
            return torch.randn(len(obs["language"]), 4, 2) * 0.1 + 0.5 * torch.as_tensor(sign).reshape(-1, 1, 1)

    texts = ["move to the right", "move to the left", "move to the right", "move to the left"]
    loader = [{"obs": {"state": torch.zeros(4, 2, 2), "language": texts}, "action": torch.zeros(4, 4, 2)}]
    norm = NormalizerSet({"state": IdentityNormalizer(), "action": IdentityNormalizer()})
    args = (loader, norm, "action", torch.device("cpu"), 0, 0)
    assert instruction_gap(Head(False), *args) == 0.0  # same noise, words ignored: identical chunks
    assert abs(instruction_gap(Head(True), *args) - 1.0) < 1e-6  # +0.5 vs -0.5 everywhere
    one = [{"obs": {"state": torch.zeros(2, 2, 2), "language": texts[:1] * 2}, "action": torch.zeros(2, 4, 2)}]
    assert instruction_gap(Head(True), one, *args[1:]) is None  # nothing to swap with


def test_continuous_baseline_reads_the_same_instruction_features():
    pytest.importorskip("wordllama")
    from robopolicy.nn.unet1d import unet_preset

    spec = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=2,
                      language=True)
    cfg = {"unet": {"down_dims": [32], "diffusion_step_embed_dim": 16}, "language_dim": 16}
    p = make_policy("diffusion_language", spec, cfg)
    assert unet_preset is not None and p.obs_encoder.out_dim == 2 * 2 + 16
    obs = {"state": torch.zeros(2, 2, 2)}
    torch.nn.init.normal_(p.obs_encoder.instruction.query, std=1.0)  # as after training: not near-uniform attention
    a = p.encode_obs({**obs, "language": ["stack the blue block on the red block"] * 2})
    b = p.encode_obs({**obs, "language": ["stack the red block on the blue block"] * 2})
    assert (a - b).abs().max() > 1e-3  # word order reaches the features (mean pooling would make them equal)
    batch = {"obs": {**obs, "language": ["go", "stop"]}, "action": torch.zeros(2, 4, 2)}
    assert torch.isfinite(p.compute_loss(batch)["loss"])
    with pytest.raises(KeyError, match="language"):
        p.compute_loss({"obs": obs, "action": torch.zeros(2, 4, 2)})
    with pytest.raises(ValueError, match="task.language=true"):
        make_policy("diffusion_language", PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, horizon=4), cfg)

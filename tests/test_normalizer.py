"""Normalizers: ranges, inverses, flat dimensions, safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.data.normalizer import NormalizerSet, fit_normalizers


def test_minmax_meanstd_identity_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        "action": rng.uniform(-3, 7, (500, 3)).astype(np.float32),
        "state": rng.normal(2, 5, (500, 4)).astype(np.float32),
        "flat": np.full((500, 2), 4.0, np.float32),
        "ids": rng.normal(size=(500, 2)).astype(np.float32),
    }
    norm = fit_normalizers(data, {"action": "minmax", "state": "meanstd", "flat": "minmax", "ids": "identity"})
    a = norm["action"](torch.from_numpy(data["action"]))
    assert a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6 and a.min() < -0.99 and a.max() > 0.99
    s = norm["state"](torch.from_numpy(data["state"]))
    assert s.mean().abs() < 1e-4 and (s.std(0) - 1).abs().max() < 1e-2
    assert torch.all(norm["flat"](torch.from_numpy(data["flat"])) == 0)  # no division by ~0
    for key in data:
        x = torch.from_numpy(data[key])
        torch.testing.assert_close(norm[key].unnormalize(norm[key](x)), x, atol=1e-4, rtol=1e-5)
    norm.save(tmp_path / "n.safetensors")
    loaded = NormalizerSet.load(tmp_path / "n.safetensors")
    assert sorted(loaded.keys()) == sorted(norm.keys())
    for key in data:
        x = torch.from_numpy(data[key])
        torch.testing.assert_close(loaded[key](x), norm[key](x))


def test_normalize_batch_leaves_unknown_keys_and_errors():
    norm = fit_normalizers({"a": np.array([[0.0], [2.0]])}, {"a": "minmax", "images/x": "image"})
    out = norm.normalize({"a": torch.tensor([[1.0]]), "other": torch.tensor([5.0])})
    assert out["a"].item() == 0.0 and out["other"].item() == 5.0
    with pytest.raises(KeyError, match="no normalizer for 'b'"):
        norm["b"]
    with pytest.raises(ValueError, match="unknown normalizer mode"):
        fit_normalizers({"a": np.zeros((2, 1))}, {"a": "zscore"})

"""Per-dimension quantile binning of (normalized) actions into discrete tokens, fitted on the dataset.

OpenVLA-style tokenization with bins at the quantiles of the training actions instead of uniform ones,
so every bin holds about the same share of the data. Per action dimension d:
- edges = the quantiles of the data at levels 0, 1/n, ..., 1 (n = n_bins), duplicates removed; every
  interval [e_j, e_j+1] is a bin that decodes to its midpoint (round-trip error <= half its width).
- atoms: values that hold >= 2/n of the data (a binary gripper at -1 / +1, a saturated dimension) get a
  zero-width bin of their own, so they decode exactly (a plain quantile bin would straddle -1 and +1 and
  decode to 0). An atom of mass >= 2/n always removes at least one duplicate edge, so a dimension never
  needs more than n bins.
Dimensions may have fewer than n bins; `valid` marks the usable tokens of each dimension and the policy
puts -inf on the logits of the others. Before `fit`, bins are uniform over [-1, 1] (OpenVLA's scheme).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class QuantileActionBins(nn.Module):
    """Tokenizer for action chunks (..., A) <-> tokens (..., A) in [0, n_bins); its tables are buffers
    (saved in checkpoints with the weights)."""

    def __init__(self, action_dim: int, n_bins: int = 256, atom_mass: float | None = None):
        super().__init__()
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.action_dim = int(action_dim)
        self.n_bins = int(n_bins)
        self.atom_mass = 2.0 / n_bins if atom_mass is None else float(atom_mass)
        if self.atom_mass < 2.0 / n_bins:
            raise ValueError(f"atom_mass must be >= 2/n_bins = {2.0 / n_bins:.4g} (else a dimension may need "
                             "more than n_bins bins)")
        edges = torch.linspace(-1.0, 1.0, n_bins + 1)
        self.register_buffer("lo", edges[:-1].repeat(action_dim, 1))  # (A, n_bins)
        self.register_buffer("hi", edges[1:].repeat(action_dim, 1))
        self.register_buffer("valid", torch.ones(action_dim, n_bins, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, actions: torch.Tensor | np.ndarray) -> QuantileActionBins:
        """Fit the bins of every dimension to actions (N, A) (normalized, as the policy sees them)."""
        x = np.asarray(actions.detach().cpu() if isinstance(actions, torch.Tensor) else actions, np.float64)
        if x.ndim != 2 or x.shape[1] != self.action_dim:
            raise ValueError(f"fit takes actions (N, {self.action_dim}), got shape {x.shape}")
        if len(x) == 0 or not np.isfinite(x).all():
            raise ValueError("fit needs a non-empty set of finite actions")
        lo = np.zeros((self.action_dim, self.n_bins))
        hi = np.zeros_like(lo)
        valid = np.zeros(lo.shape, bool)
        for d in range(self.action_dim):
            bins = self._dimension_bins(x[:, d])
            lo[d, :len(bins)] = [b[0] for b in bins]
            hi[d, :len(bins)] = [b[1] for b in bins]
            valid[d, :len(bins)] = True
        self.lo.copy_(torch.as_tensor(lo, dtype=self.lo.dtype))
        self.hi.copy_(torch.as_tensor(hi, dtype=self.hi.dtype))
        self.valid.copy_(torch.as_tensor(valid))
        self.fitted.fill_(True)
        return self

    def _dimension_bins(self, v: np.ndarray) -> list[tuple[float, float]]:
        values, counts = np.unique(v, return_counts=True)
        atoms = values[counts / len(v) >= self.atom_mass]
        # inverted_cdf: edges are data values (no edge interpolated between two atoms)
        edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, self.n_bins + 1), method="inverted_cdf"))
        bins = [(float(a), float(a)) for a in atoms]
        bins += [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        if not bins:  # a constant dimension that is not an atom cannot happen (mass 1), but be explicit
            bins = [(float(v[0]), float(v[0]))]
        bins.sort(key=lambda b: (b[0], b[1]))  # atoms sort before the interval that starts at them
        return bins

    # ------------------------------------------------------------------ coding
    @property
    def centers(self) -> torch.Tensor:
        """Decoded value of every token (A, n_bins); invalid tokens decode to 0 (never produced)."""
        return torch.where(self.valid, 0.5 * (self.lo + self.hi), torch.zeros_like(self.lo))

    @property
    def widths(self) -> torch.Tensor:
        return torch.where(self.valid, self.hi - self.lo, torch.zeros_like(self.lo))

    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (..., A) -> tokens (..., A) int64: an atom when the value equals it, else the interval
        that contains it (values outside the fitted range go to the first / last bin)."""
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end in A={self.action_dim}, got shape {tuple(actions.shape)}")
        x = actions.unsqueeze(-1).to(self.lo.dtype)  # (..., A, 1)
        lo, hi, valid = self.lo, self.hi, self.valid
        is_atom = valid & (lo == hi)
        atom_hit = is_atom & (x - lo).abs().le(1e-6)
        inside = valid & ~is_atom & (x >= lo) & (x <= hi)
        # Score: exact atoms first, then the containing interval; otherwise the nearest valid bin.
        dist = torch.where(x < lo, lo - x, torch.where(x > hi, x - hi, torch.zeros_like(x)))
        score = dist + torch.where(inside, 0.0, 1.0) + torch.where(atom_hit, -2.0, 0.0)
        score = torch.where(valid, score, torch.full_like(score, float("inf")))
        return score.argmin(-1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (..., A) -> actions (..., A): the midpoint of each bin."""
        if tokens.shape[-1] != self.action_dim:
            raise ValueError(f"tokens must end in A={self.action_dim}, got shape {tuple(tokens.shape)}")
        centers = self.centers  # (A, n_bins)
        idx = tokens.clamp(0, self.n_bins - 1).long()
        flat = idx.reshape(-1, self.action_dim)
        out = centers[torch.arange(self.action_dim, device=flat.device), flat]  # (M, A)
        return out.reshape(tokens.shape)

    def bins_per_dim(self) -> list[int]:
        return [int(n) for n in self.valid.sum(1)]

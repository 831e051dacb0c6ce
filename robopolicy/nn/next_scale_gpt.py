"""CARP stage 2: a GPT that predicts the tokens of scale s+1 from the observation and scales <= s.

ALGORITHMS.md section 4. Token layout per chunk: scale 1, scale 2, ..., each scale holding pn_s x A tokens,
position-major with the action dimensions interleaved ((pos 0: d0..dA-1), (pos 1: ...)). Inputs:
- scale 1: the start-of-sequence embedding, which is the observation condition itself (one per token);
- scale s > 1: a linear embedding of the tokenizer's running f_hat (after scales < s) area-downsampled to
  pn_s positions (`MultiScaleActionTokenizer.next_scale_inputs`);
plus a learned embedding per token index and per scale level. Attention is block-causal: a token of scale s
sees every token of scales <= s (VAR's attn_bias). The observation also conditions every block through AdaLN
(shift, scale and gate from the condition; zero-initialised, as DiT's adaLN-Zero).

Inference (`start` / `step`) runs one forward per scale on that scale's tokens only, with a KV cache of the
earlier scales, so a chunk costs S transformer passes (4 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NextScaleGPTConfig:
    """Transformer sizes. CARP's state preset: depth 8, embed 64, 8 heads (image: depth 16, embed 160)."""

    depth: int = 8
    embed_dim: int = 64
    num_heads: int = 8
    mlp_ratio: float = 4.0
    cond_hidden: int = 256  # hidden width of the MLP that maps observation features to the condition
    dropout: float = 0.0  # residual and embedding dropout (VAR's drop_rate); the GPT over-fits 50 demos without it


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"gpt.embed_dim {dim} must be divisible by gpt.num_heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: dict[str, torch.Tensor] | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms and residual gates are modulated by the condition."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.drop = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None,
                cache: dict[str, torch.Tensor] | None) -> torch.Tensor:
        g1, b1, a1, g2, b2, a2 = self.ada(c)[:, None].chunk(6, dim=-1)
        x = x + a1 * self.drop(self.attn(self.norm1(x) * (1 + g1) + b1, mask, cache))
        return x + a2 * self.drop(self.mlp(self.norm2(x) * (1 + g2) + b2))


class NextScaleGPT(nn.Module):
    """Block-causal next-scale token predictor with AdaLN observation conditioning and a KV cache."""

    def __init__(self, cond_dim: int, action_dim: int, scales: tuple[int, ...], latent_channels: int,
                 vocab_size: int, cfg: NextScaleGPTConfig | None = None):
        super().__init__()
        cfg = cfg or NextScaleGPTConfig()
        if cfg.depth < 1 or cfg.embed_dim < 1:
            raise ValueError("gpt.depth and gpt.embed_dim must be >= 1")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"gpt.dropout must be in [0, 1), got {cfg.dropout}")
        self.cfg, self.action_dim, self.scales, self.vocab_size = cfg, action_dim, tuple(scales), vocab_size
        d = cfg.embed_dim
        self.tokens_per_scale = [pn * action_dim for pn in self.scales]
        self.n_tokens = sum(self.tokens_per_scale)
        self.cond_proj = nn.Sequential(nn.Linear(cond_dim, cfg.cond_hidden), nn.SiLU(), nn.Linear(cfg.cond_hidden, d))
        self.word_embed = nn.Linear(latent_channels, d)
        self.pos_embed = nn.Parameter(torch.randn(self.n_tokens, d) * 0.02)
        self.level_embed = nn.Embedding(len(self.scales), d)
        nn.init.normal_(self.level_embed.weight, std=0.02)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_AdaLNBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        nn.init.zeros_(self.head_ada[1].weight)
        nn.init.zeros_(self.head_ada[1].bias)
        self.head = nn.Linear(d, vocab_size)
        levels = torch.cat([torch.full((n,), s) for s, n in enumerate(self.tokens_per_scale)])
        self.register_buffer("levels", levels, persistent=False)
        starts = [0]
        for n in self.tokens_per_scale:
            starts.append(starts[-1] + n)
        self.starts = starts

    # ------------------------------------------------------------------ helpers
    def block_causal_mask(self) -> torch.Tensor:
        """(L, L) bool, True where query i may attend to key j: level(j) <= level(i)."""
        return self.levels[None, :] <= self.levels[:, None]

    def condition(self, obs_features: torch.Tensor) -> torch.Tensor:
        """Observation features (B, F) -> condition (B, D), used as SOS and by every AdaLN."""
        return self.cond_proj(obs_features)

    def _scale_tokens(self, c: torch.Tensor, s: int, features: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings (B, pn_s * A, D) of scale s, with position and level embeddings added."""
        if s == 0:
            x = c[:, None, :].expand(-1, self.tokens_per_scale[0], -1)
        else:
            if features is None:
                raise ValueError(f"scale {s} needs input features (B, A, C, {self.scales[s]})")
            b, a, ch, pn = features.shape
            if a != self.action_dim or pn != self.scales[s]:
                raise ValueError(f"scale {s} input must be (B, {self.action_dim}, C, {self.scales[s]}), "
                                 f"got {tuple(features.shape)}")
            x = self.word_embed(features.permute(0, 3, 1, 2).reshape(b, pn * a, ch))
        lo, hi = self.starts[s], self.starts[s + 1]
        return self.embed_drop(x + self.pos_embed[lo:hi] + self.level_embed.weight[s])

    def _head(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g, b = self.head_ada(c)[:, None].chunk(2, dim=-1)
        return self.head(self.head_norm(x) * (1 + g) + b)

    def tokens_to_targets(self, idxs: list[torch.Tensor]) -> torch.Tensor:
        """Token indices per scale (B, A, pn_s) -> targets (B, L) in the sequence layout."""
        return torch.cat([idx.permute(0, 2, 1).reshape(idx.shape[0], -1) for idx in idxs], dim=1)

    def logits_to_tokens(self, logits: torch.Tensor, s: int) -> torch.Tensor:
        """Chosen indices (B, pn_s * A) of scale s -> (B, A, pn_s)."""
        return logits.view(logits.shape[0], self.scales[s], self.action_dim).permute(0, 2, 1)

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, obs_features: torch.Tensor, scale_inputs: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) of every token, from the inputs of scales 2..S."""
        if len(scale_inputs) != len(self.scales) - 1:
            raise ValueError(f"expected inputs for {len(self.scales) - 1} scales, got {len(scale_inputs)}")
        c = self.condition(obs_features)
        x = torch.cat([self._scale_tokens(c, 0, None)]
                      + [self._scale_tokens(c, s + 1, f) for s, f in enumerate(scale_inputs)], dim=1)
        mask = self.block_causal_mask()
        for blk in self.blocks:
            x = blk(x, c, mask, None)
        return self._head(x, c)

    # ------------------------------------------------------------------ cached inference
    def start(self, obs_features: torch.Tensor) -> dict[str, Any]:
        """A fresh decoding state: the condition and one empty KV cache per block."""
        return {"c": self.condition(obs_features), "caches": [{} for _ in self.blocks], "scale": 0}

    def step(self, state: dict[str, Any], features: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, pn_s * A, V) of the next scale; `features` are its inputs (None for the first scale).

        The new tokens attend to the cached keys of earlier scales and to each other (same level), which is
        exactly the block-causal mask restricted to this scale's rows.
        """
        s = state["scale"]
        if s >= len(self.scales):
            raise RuntimeError("all scales are decoded; call start() for a new chunk")
        c = state["c"]
        x = self._scale_tokens(c, s, features)
        for blk, cache in zip(self.blocks, state["caches"], strict=True):
            x = blk(x, c, None, cache)
        state["scale"] = s + 1
        return self._head(x, c)

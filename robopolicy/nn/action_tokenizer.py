"""CARP stage 1: a multi-scale residual VQ tokenizer of action chunks, one tokenizer per action dimension.

ALGORITHMS.md section 4. Each action dimension d has its own 1-D conv encoder, codebook, residual
refiners and decoder; they run side by side as grouped convolutions (groups = action_dim), so no weight is
shared between dimensions. For one dimension:

    f = Enc_d(a[:, :, d])                    (C, L): T_p steps -> L latent steps (L = the last scale)
    f_rest = f, f_hat = 0
    for scale s with pn_s positions (1, 2, 3, 4 by default):
        r = area_downsample(f_rest, pn_s)
        idx_s = argmax_v cos(r, E_d[v])      cosine lookup (VAR's vqnorm)
        h = phi_s(upsample(E_d[idx_s], L))   phi = 0.5 conv3 + 0.5 identity (quant_resi 0.5)
        f_hat += h ; f_rest -= h
    a_hat_d = Dec_d(f + sg(f_hat - f))       straight-through estimator

Tokens of a chunk are the list idx_1..idx_S, each (B, A, pn_s). The teacher-forcing inputs of the
next-scale GPT are `next_scale_inputs`: the running f_hat after scales <= s, area-downsampled to pn_{s+1}.
Inference builds the same f_hat one scale at a time with `add_scale` (exactly the same arithmetic).

Codebook usage: an EMA of code hits per (scale, dim, code) is kept as a buffer; codes that go unused are
re-seeded from residuals of the current batch during training (dead-code restart), which keeps usage up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ActionTokenizerConfig:
    """Sizes. CARP's state preset: latent C = 8, V = 512, scales (1, 2, 3, 4), beta 0.25, 16 -> 4 latents."""

    scales: tuple[int, ...] = (1, 2, 3, 4)  # positions per scale; the last is the latent length L
    latent_channels: int = 8  # C per action dimension
    vocab_size: int = 512  # V codes per action dimension
    hidden_channels: int = 16  # conv width per action dimension
    beta: float = 0.25  # commitment weight
    vq_weight: float = 1.0  # weight of the VQ loss against the reconstruction MSE (CARP: 1)
    quant_resi: float = 0.5  # phi = (1 - r) identity + r conv3
    # Nearest code by "cosine" similarity (CARP's vqnorm, the default here) or "euclidean" distance. Measured
    # here on smooth 16-step chunks after 150 steps: cosine + quant_resi 0.5 held-out MSE 0.05, euclidean +
    # quant_resi 0 0.006 (the configs/policy/carp*.yaml presets use the latter).
    lookup: str = "cosine"
    hit_ema: float = 0.95  # decay of the per-code hit statistics (per training forward)
    dead_code_threshold: float = 0.03  # EMA hit rate (times V) below which a code counts as dead (restarted in training)
    restart_every: int = 50  # training forwards between dead-code restarts; 0 disables them


def check_tokenizer_shape(horizon: int, cfg: ActionTokenizerConfig) -> None:
    """Raise early if the horizon cannot be downsampled to the latent length by stride-2 convolutions."""
    scales = tuple(cfg.scales)
    if not scales or any(s < 1 for s in scales) or list(scales) != sorted(set(scales)):
        raise ValueError(f"tokenizer scales must be strictly increasing positive ints, got {scales}")
    latent = scales[-1]
    ratio = horizon / latent
    if horizon % latent or ratio < 1 or 2 ** round(math.log2(ratio)) != ratio:
        raise ValueError(f"horizon {horizon} must be the last tokenizer scale ({latent}) times a power of two; "
                         f"e.g. horizon 16 with scales ending in 4, or change tokenizer.scales")
    if cfg.lookup not in ("euclidean", "cosine"):
        raise ValueError(f"tokenizer lookup must be 'euclidean' or 'cosine', got {cfg.lookup!r}")
    if cfg.vocab_size < 2 or cfg.latent_channels < 1 or cfg.hidden_channels < 1:
        raise ValueError("tokenizer vocab_size >= 2, latent_channels >= 1 and hidden_channels >= 1 are required")


class MultiScaleActionTokenizer(nn.Module):
    """Per-dimension multi-scale residual VQ-VAE over action chunks (B, T_p, A) in [-1, 1]."""

    def __init__(self, action_dim: int, horizon: int, cfg: ActionTokenizerConfig | None = None):
        super().__init__()
        cfg = cfg or ActionTokenizerConfig()
        check_tokenizer_shape(horizon, cfg)
        self.cfg, self.action_dim, self.horizon = cfg, action_dim, horizon
        self.scales = tuple(int(s) for s in cfg.scales)
        self.latent_len = self.scales[-1]
        a, h, c = action_dim, cfg.hidden_channels, cfg.latent_channels
        n_down = int(round(math.log2(horizon // self.latent_len)))
        enc: list[nn.Module] = [nn.Conv1d(a, a * h, 3, padding=1, groups=a)]
        for _ in range(n_down):
            enc += [nn.SiLU(), nn.Conv1d(a * h, a * h, 4, stride=2, padding=1, groups=a)]
        enc += [nn.SiLU(), nn.Conv1d(a * h, a * h, 3, padding=1, groups=a), nn.SiLU(),
                nn.Conv1d(a * h, a * c, 1, groups=a)]  # quant_conv
        dec: list[nn.Module] = [nn.Conv1d(a * c, a * h, 3, padding=1, groups=a)]  # post_quant_conv + conv_in
        for _ in range(n_down):
            dec += [nn.SiLU(), nn.ConvTranspose1d(a * h, a * h, 4, stride=2, padding=1, groups=a)]
        dec += [nn.SiLU(), nn.Conv1d(a * h, a * h, 3, padding=1, groups=a), nn.SiLU(),
                nn.Conv1d(a * h, a, 3, padding=1, groups=a)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.codebook = nn.Parameter(torch.empty(a, cfg.vocab_size, c).uniform_(-1 / cfg.vocab_size,
                                                                                1 / cfg.vocab_size))
        self.phis = nn.ModuleList(nn.Conv1d(a * c, a * c, 3, padding=1, groups=a) for _ in self.scales)
        self.register_buffer("code_hits", torch.full((len(self.scales), a, cfg.vocab_size), 1.0 / cfg.vocab_size))
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ pieces
    @property
    def n_tokens(self) -> int:
        """Tokens per chunk: sum of the scales times the action dimension."""
        return sum(self.scales) * self.action_dim

    def encode_latent(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, T_p, A) -> f (B, A, C, L)."""
        if actions.ndim != 3 or tuple(actions.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(f"actions must be (B, {self.horizon}, {self.action_dim}), got {tuple(actions.shape)}")
        f = self.encoder(actions.transpose(1, 2))
        return f.view(actions.shape[0], self.action_dim, self.cfg.latent_channels, self.latent_len)

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, A, C, L) -> actions (B, T_p, A)."""
        b = f_hat.shape[0]
        return self.decoder(f_hat.reshape(b, -1, self.latent_len)).transpose(1, 2)

    def _lookup(self, r: torch.Tensor) -> torch.Tensor:
        """Nearest code per (row, dim, position): r (B, A, C, pn) -> idx (B, A, pn)."""
        if self.cfg.lookup == "cosine":
            sim = torch.einsum("bacp,avc->bapv", F.normalize(r, dim=2), F.normalize(self.codebook, dim=-1))
            return sim.argmax(-1)
        # ||r - e||^2 = ||r||^2 - 2 r.e + ||e||^2; ||r||^2 is the same for every code
        score = 2 * torch.einsum("bacp,avc->bapv", r, self.codebook) - self.codebook.pow(2).sum(-1)[None, :, None]
        return score.argmax(-1)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, A, pn) -> code vectors (B, A, C, pn) from each dimension's own codebook."""
        a = torch.arange(self.action_dim, device=idx.device)[None, :, None]
        return self.codebook[a, idx].permute(0, 1, 3, 2)

    def _refine(self, code: torch.Tensor, s: int) -> torch.Tensor:
        """phi_s(upsample(code to L)): (B, A, C, pn) -> (B, A, C, L)."""
        b, a, c, pn = code.shape
        x = code.reshape(b, a * c, pn)
        if pn != self.latent_len:
            x = F.interpolate(x, size=self.latent_len, mode="linear", align_corners=False)
        r = self.cfg.quant_resi
        x = (1 - r) * x + r * self.phis[s](x)
        return x.view(b, a, c, self.latent_len)

    @staticmethod
    def _area(x: torch.Tensor, size: int) -> torch.Tensor:
        """Area down-sampling of the last axis of (B, A, C, L) to `size`."""
        if x.shape[-1] == size:
            return x
        b, a, c, n = x.shape
        return F.adaptive_avg_pool1d(x.reshape(b, a * c, n), size).view(b, a, c, size)

    def add_scale(self, f_hat: torch.Tensor, idx: torch.Tensor, s: int) -> torch.Tensor:
        """f_hat after adding scale s's tokens idx (B, A, pn_s): the one update rule of training and inference."""
        return f_hat + self._refine(self._embed(idx), s)

    def scale_input(self, f_hat: torch.Tensor, s: int) -> torch.Tensor:
        """Input features of scale s (>= 1) for the GPT: f_hat area-downsampled to pn_s, (B, A, C, pn_s)."""
        return self._area(f_hat, self.scales[s])

    # ------------------------------------------------------------------ tokens
    @torch.no_grad()
    def tokenize(self, actions: torch.Tensor) -> list[torch.Tensor]:
        """Action chunk -> token indices per scale, each (B, A, pn_s)."""
        f = self.encode_latent(actions)
        return self._quantize(f)[0]

    def _quantize(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Residual quantization of f: (indices per scale, f_hat, VQ loss averaged over scales)."""
        f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        idxs, vq = [], f.new_zeros(())
        for s, pn in enumerate(self.scales):
            idx = self._lookup(self._area(f_rest, pn))
            h = self._refine(self._embed(idx), s)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            vq = vq + self.cfg.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
            idxs.append(idx)
        return idxs, f_hat, vq / len(self.scales)

    def tokens_to_latent(self, idxs: list[torch.Tensor]) -> torch.Tensor:
        """f_hat (B, A, C, L) from token indices of every scale."""
        self._check_tokens(idxs)
        b = idxs[0].shape[0]
        f_hat = self.codebook.new_zeros(b, self.action_dim, self.cfg.latent_channels, self.latent_len)
        for s, idx in enumerate(idxs):
            f_hat = self.add_scale(f_hat, idx, s)
        return f_hat

    def detokenize(self, idxs: list[torch.Tensor]) -> torch.Tensor:
        """Token indices of every scale -> action chunk (B, T_p, A)."""
        return self.decode_latent(self.tokens_to_latent(idxs))

    def next_scale_inputs(self, idxs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher-forcing inputs of scales 2..S: f_hat after scales <= s, downsampled to pn_{s+1}."""
        self._check_tokens(idxs)
        b = idxs[0].shape[0]
        f_hat = self.codebook.new_zeros(b, self.action_dim, self.cfg.latent_channels, self.latent_len)
        inputs = []
        for s in range(len(self.scales) - 1):
            f_hat = self.add_scale(f_hat, idxs[s], s)
            inputs.append(self.scale_input(f_hat, s + 1))
        return inputs

    def _check_tokens(self, idxs: list[torch.Tensor]) -> None:
        if len(idxs) != len(self.scales):
            raise ValueError(f"expected tokens for {len(self.scales)} scales, got {len(idxs)}")
        for s, idx in enumerate(idxs):
            if tuple(idx.shape[1:]) != (self.action_dim, self.scales[s]):
                raise ValueError(f"scale {s} tokens must be (B, {self.action_dim}, {self.scales[s]}), "
                                 f"got {tuple(idx.shape)}")

    # ------------------------------------------------------------------ training
    def forward(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage-1 loss: MSE(a_hat, a) + vq_weight * L_vq, with per-scale codebook usage diagnostics."""
        f = self.encode_latent(actions)
        if self.training and torch.is_grad_enabled():
            self._maybe_restart(f)
        idxs, f_hat, vq = self._quantize(f)
        recon = self.decode_latent(f + (f_hat - f).detach())  # straight-through estimator
        mse = F.mse_loss(recon, actions)
        out = {"loss": mse + self.cfg.vq_weight * vq, "recon_mse": mse.detach(), "vq_loss": vq.detach()}
        if self.training and torch.is_grad_enabled():
            self._record_hits(idxs)
        for s, use in enumerate(self.codebook_usage()):
            out[f"codebook_usage_s{s}"] = use
        return out

    @torch.no_grad()
    def _record_hits(self, idxs: list[torch.Tensor]) -> None:
        d = self.cfg.hit_ema
        for s, idx in enumerate(idxs):
            onehot = F.one_hot(idx, self.cfg.vocab_size).float()  # (B, A, pn, V)
            rate = onehot.mean(dim=(0, 2))  # (A, V): fraction of this scale's tokens that chose each code
            self.code_hits[s].mul_(d).add_(rate, alpha=1 - d)
        self.forwards += 1

    def codebook_usage(self) -> torch.Tensor:
        """Per scale: fraction of (dim, code) pairs whose EMA hit rate is above the dead-code threshold."""
        alive = self.code_hits > self.cfg.dead_code_threshold / self.cfg.vocab_size
        return alive.float().mean(dim=(1, 2)).detach()

    @torch.no_grad()
    def _maybe_restart(self, f: torch.Tensor) -> None:
        """Re-seed dead codes with residual vectors of this batch (every `restart_every` training forwards).

        A dimension's codebook is shared by its scales, so a code is dead only when no scale uses it.
        """
        every = self.cfg.restart_every
        if not every or int(self.forwards) == 0 or int(self.forwards) % every:
            return
        f_rest, cands = f.detach().clone(), []
        for s, pn in enumerate(self.scales):
            r = self._area(f_rest, pn)  # (B, A, C, pn)
            cands.append(r.permute(1, 0, 3, 2).reshape(self.action_dim, -1, r.shape[2]))  # (A, B * pn, C)
            f_rest = f_rest - self._refine(self._embed(self._lookup(r)), s)
        cand = torch.cat(cands, dim=1)
        dead = (self.code_hits <= self.cfg.dead_code_threshold / self.cfg.vocab_size).all(dim=0)  # (A, V)
        for a in torch.nonzero(dead.any(dim=1)).flatten().tolist():
            slots = torch.nonzero(dead[a]).flatten()
            pick = torch.randint(0, cand.shape[1], (len(slots),), device=cand.device)
            self.codebook.data[a, slots] = cand[a, pick] + 1e-3 * torch.randn_like(cand[a, pick])
            self.code_hits[:, a, slots] = 1.0 / self.cfg.vocab_size  # give them time to be chosen
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.codebook.data, 0)  # keep replicas identical under DDP
            torch.distributed.broadcast(self.code_hits, 0)

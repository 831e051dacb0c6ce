"""Iterative unmasking of a token sequence (MaskGIT lineage), as Discrete Diffusion VLA decodes action chunks.

`masked_decode` runs T rounds of a masked-token model `logits_fn(tokens, masked) -> logits (B, L, V)`:
every round samples a token at each masked position, then re-masks the least confident positions so that
exactly `mask_schedule(L, T)[i]` remain masked after round i (cosine keep-schedule, ALGORITHMS.md section 5:
floor(L cos(pi/2 (i+1)/T)) clipped to [1, L-1]; none after the last round, whose samples are the output).

Order: "adaptive" decides the most confident positions first (log p of the sampled token, plus Gumbel
noise scaled by choice_temperature * (1 - ratio) as the official decoder does); "left_to_right" decides one
position per round in index order (L rounds, autoregressive decoding with the same network).

Secondary re-masking (paper version): a kept token is flagged when its confidence under the *current*
context falls below `remask_threshold` or has dropped by more than `remask_drop` since it was accepted;
flagged tokens are re-masked first (least confident first), within the same per-round count. Without it a
kept token is never re-masked. (The released `parallel_decode.decode` instead multiplies every kept token's
confidence by (1 - ratio), which re-masks old tokens preferentially late in decoding; we do not copy that.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

ORDERS = ("adaptive", "left_to_right")


@dataclass
class DecodeSettings:
    """Inference-time decoding choices (no retraining needed)."""

    rounds: int = 12  # T refinement rounds (ignored by left_to_right, which takes L)
    order: str = "adaptive"  # adaptive | left_to_right
    remask: bool = True  # secondary re-masking of kept tokens
    remask_threshold: float = 0.02  # re-mask a kept token whose current probability is below this
    remask_drop: float = 0.5  # ... or dropped by more than this since it was accepted
    sample_temperature: float = 1.0  # token sampling temperature; 0 = argmax
    choice_temperature: float = 1.0  # Gumbel noise on the confidence ranking (x (1 - ratio))

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.sample_temperature < 0 or self.choice_temperature < 0:
            raise ValueError("temperatures must be >= 0")


@dataclass
class DecodeTrace:
    """What happened in each round (for tests and diagnostics): counts are per batch row."""

    masked_after: list[torch.Tensor] = field(default_factory=list)  # (B,) masked positions after round i
    remasked_kept: list[torch.Tensor] = field(default_factory=list)  # (B,) kept tokens re-masked in round i
    masks: list[torch.Tensor] = field(default_factory=list)  # (B, L) bool masked after round i


def mask_schedule(length: int, rounds: int) -> list[int]:
    """Masked positions left after each round: floor(L cos(pi/2 (i+1)/T)) clipped to [1, L-1], 0 at the end."""
    if length < 1 or rounds < 1:
        raise ValueError(f"need length >= 1 and rounds >= 1, got {length}, {rounds}")
    out = []
    for i in range(rounds - 1):
        n = math.floor(length * math.cos(math.pi / 2 * (i + 1) / rounds))
        out.append(max(0, min(max(n, 1), length - 1)))
    return [*out, 0]


def num_rounds(length: int, settings: DecodeSettings) -> int:
    """Network evaluations to decode `length` tokens: T, or L for left-to-right."""
    return length if settings.order == "left_to_right" else settings.rounds


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device="cpu").to(device)
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1]).to(logits.device)


@torch.no_grad()
def masked_decode(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int, length: int,
                  settings: DecodeSettings, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None, trace: DecodeTrace | None = None) -> torch.Tensor:
    """Decode (B, L) tokens by iterative unmasking.

    Args:
        logits_fn: (tokens (B, L) int64 with arbitrary values at masked positions, masked (B, L) bool)
            -> logits (B, L, V); invalid tokens should carry -inf.
        generator: CPU generator for the token draws and the Gumbel noise (None: the global RNG).
        trace: filled with per-round counts when given.
    """
    device = torch.device(device)
    tokens = torch.zeros(batch, length, dtype=torch.long, device=device)
    masked = torch.ones(batch, length, dtype=torch.bool, device=device)
    accept_conf = torch.zeros(batch, length, device=device)
    ltr = settings.order == "left_to_right"
    rounds = num_rounds(length, settings)
    schedule = [length - 1 - i for i in range(length)] if ltr else mask_schedule(length, rounds)
    position = torch.arange(length, device=device).expand(batch, length)
    for i in range(rounds):
        logits = logits_fn(tokens, masked).float()
        logp = torch.log_softmax(logits, -1)
        sampled = _sample(logits, settings.sample_temperature, generator)
        current = torch.where(masked, sampled, tokens)
        conf = logp.gather(-1, current[..., None])[..., 0].exp()  # p of every position's token, current context
        n_mask = schedule[i]
        if ltr:
            new_masked = position >= (length - n_mask)  # positions beyond i stay masked
            remasked_kept = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            ratio = (i + 1) / rounds
            score = conf.clamp_min(1e-30).log()
            if settings.choice_temperature > 0:
                score = score + settings.choice_temperature * (1 - ratio) * _gumbel(score.shape, generator, device)
            score = torch.where(masked, score, torch.full_like(score, float("inf")))
            flagged = torch.zeros_like(masked)
            if settings.remask:
                flagged = ~masked & ((conf < settings.remask_threshold)
                                     | (accept_conf - conf > settings.remask_drop))
                score = torch.where(flagged, conf.clamp_min(1e-30).log() - 1e9, score)
            new_masked = torch.zeros_like(masked)
            if n_mask > 0:
                lowest = score.topk(n_mask, dim=-1, largest=False).indices
                new_masked.scatter_(1, lowest, True)
            remasked_kept = (new_masked & ~masked).sum(1)
        accepted_now = masked & ~new_masked
        accept_conf = torch.where(accepted_now, conf, accept_conf)
        tokens = torch.where(new_masked, torch.zeros_like(current), current)
        masked = new_masked
        if trace is not None:
            trace.masked_after.append(masked.sum(1))
            trace.remasked_kept.append(remasked_kept)
            trace.masks.append(masked.clone())
    return tokens

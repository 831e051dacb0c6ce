"""CARP: Coarse-to-fine AutoRegressive Policy (ALGORITHMS.md section 4), trained in two stages.

Stage "tokenizer": the multi-scale residual VQ action tokenizer (robopolicy/nn/action_tokenizer.py) learns
to reconstruct normalized chunks: MSE + VQ loss, straight-through estimator, codebook usage reported.
Stage "gpt": with the tokenizer fixed, the next-scale GPT (robopolicy/nn/next_scale_gpt.py) learns the
tokens of every scale by teacher forcing: mean cross-entropy over all L = sum(scales) * A tokens.

`robopolicy train policy=carp` runs both stages in order (`training_stages`): the first
`tokenizer_fraction` of trainer.steps train the tokenizer, the rest the GPT and the observation encoder.

Sampling: S = len(scales) cached GPT passes (one per scale); tokens by argmax (top_k = 1, CARP's default) or
top-k sampling at `temperature` (CARP's PushT evaluation uses top-k 5 for multimodality); then the
per-dimension decoders turn f_hat into the chunk. With top-k, the random draws are derived from `noise`
(each row's generator is seeded from a hash of its noise), so predict_chunk is deterministic given noise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from robopolicy.nn.action_tokenizer import (
    ActionTokenizerConfig,
    MultiScaleActionTokenizer,
    check_tokenizer_shape,
)
from robopolicy.nn.next_scale_gpt import NextScaleGPT, NextScaleGPTConfig
from robopolicy.policies.base import Policy, PolicySpec
from robopolicy.policies.obs_conditioning import ObsConditioner, ObsEncoderConfig, batch_size_of, check_noise
from robopolicy.policies.stages import TrainingStage

STAGES = ("tokenizer", "gpt")


class CARPPolicy(Policy):
    """Multi-scale action tokenizer + block-causal next-scale GPT conditioned on the observation."""

    @dataclass
    class Config:
        """Hyper-parameters; defaults follow CARP's state-task settings (see configs/policy/carp*.yaml)."""

        tokenizer: ActionTokenizerConfig = field(default_factory=ActionTokenizerConfig)
        gpt: NextScaleGPTConfig = field(default_factory=NextScaleGPTConfig)
        obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
        tokenizer_fraction: float = 0.3  # share of trainer.steps spent on stage 1 (the tokenizer)
        tokenizer_lr: float | None = None  # stage-1 learning rate (CARP: 3e-4); None: trainer.lr
        gpt_lr: float | None = None  # stage-2 learning rate (CARP: 1e-4); None: trainer.lr
        label_smoothing: float = 0.0  # CARP: tls = 0
        # Inference settings (change after training with set_inference):
        top_k: int = 1  # 1: greedy (argmax) tokens; k > 1: sample among the k most likely
        temperature: float = 1.0

    def __init__(self, spec: PolicySpec, cfg: CARPPolicy.Config | None = None):
        super().__init__()
        cfg = cfg or CARPPolicy.Config()
        self.validate_config(spec, cfg)
        self.spec, self.cfg = spec, cfg
        self.obs_encoder = ObsConditioner(spec, cfg.obs)
        self.tokenizer = MultiScaleActionTokenizer(spec.action_dim, spec.horizon, cfg.tokenizer)
        self.gpt = NextScaleGPT(self.obs_encoder.out_dim, spec.action_dim, self.tokenizer.scales,
                                cfg.tokenizer.latent_channels, cfg.tokenizer.vocab_size, cfg.gpt)
        self.stage = STAGES[0]
        self.set_inference()

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: CARPPolicy.Config) -> None:
        """Shape and range checks that need no network."""
        check_tokenizer_shape(spec.horizon, cfg.tokenizer)
        if not 0.0 < cfg.tokenizer_fraction < 1.0:
            raise ValueError(f"tokenizer_fraction must be in (0, 1), got {cfg.tokenizer_fraction}")
        if cfg.gpt.embed_dim % cfg.gpt.num_heads:
            raise ValueError(f"gpt.embed_dim {cfg.gpt.embed_dim} must be divisible by gpt.num_heads "
                             f"{cfg.gpt.num_heads}")

    # ------------------------------------------------------------------ settings
    def set_inference(self, top_k: int | None = None, temperature: float | None = None) -> None:
        """Token choice: top_k = 1 is greedy; top_k > 1 samples among the k best at `temperature`."""
        k = self.cfg.top_k if top_k is None else int(top_k)
        t = self.cfg.temperature if temperature is None else float(temperature)
        if not 1 <= k <= self.cfg.tokenizer.vocab_size:
            raise ValueError(f"top_k must be in [1, vocab_size={self.cfg.tokenizer.vocab_size}], got {k}")
        if t <= 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        self.cfg = replace(self.cfg, top_k=k, temperature=t)

    @property
    def nfe(self) -> int:
        """Transformer passes per chunk: one per scale (the conv decoders are extra and cheap)."""
        return len(self.tokenizer.scales)

    def training_stages(self, total_steps: int) -> list[TrainingStage]:
        """Stage 1 trains the tokenizer, stage 2 the GPT and the observation encoder."""
        n1 = int(round(self.cfg.tokenizer_fraction * total_steps))
        return [TrainingStage("tokenizer", n1, ("tokenizer.",), self.cfg.tokenizer_lr),
                TrainingStage("gpt", total_steps - n1, ("gpt.", "obs_encoder."), self.cfg.gpt_lr)]

    def set_training_stage(self, name: str) -> None:
        """Which loss compute_loss returns: 'tokenizer' (stage 1) or 'gpt' (stage 2)."""
        if name not in STAGES:
            raise ValueError(f"CARP training stage must be one of {STAGES}, got {name!r}")
        self.stage = name

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        actions = batch["action"]
        want = (self.spec.horizon, self.spec.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != want:
            raise ValueError(f"action must be (B, {want[0]}, {want[1]}) (B, T_p, A), got {tuple(actions.shape)}")
        if self.stage == "tokenizer":
            return self.tokenizer(actions)
        return self.gpt_loss(batch["obs"], actions)

    def gpt_loss(self, obs: dict[str, Any], actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced cross-entropy of every token, with the tokenizer fixed."""
        with torch.no_grad():
            idxs = self.tokenizer.tokenize(actions)
            inputs = self.tokenizer.next_scale_inputs(idxs)
        logits = self.gpt(self.obs_encoder(obs), inputs)
        targets = self.gpt.tokens_to_targets(idxs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               label_smoothing=self.cfg.label_smoothing)
        out = {"loss": loss}
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).float()
            for s in range(len(self.tokenizer.scales)):
                lo, hi = self.gpt.starts[s], self.gpt.starts[s + 1]
                out[f"token_acc_s{s}"] = correct[:, lo:hi].mean()
        return out

    # ------------------------------------------------------------------ inference
    def _choose(self, logits: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
        """Token indices (B, n) from logits (B, n, V): argmax, or Gumbel-max over the top k."""
        if self.cfg.top_k == 1:
            return logits.argmax(-1)
        vals, cand = logits.topk(self.cfg.top_k, dim=-1)
        u = uniforms[..., : self.cfg.top_k].clamp(1e-12, 1 - 1e-7)
        pick = (vals / self.cfg.temperature - torch.log(-torch.log(u))).argmax(-1, keepdim=True)
        return cand.gather(-1, pick).squeeze(-1)

    def _uniforms(self, noise: torch.Tensor | None, b: int, like: torch.Tensor) -> torch.Tensor:
        """(B, L, top_k) uniforms for top-k sampling, derived from each row of `noise` (global RNG if None)."""
        shape = (self.gpt.n_tokens, self.cfg.top_k)
        if noise is None:
            return torch.rand((b, *shape), device=like.device, dtype=like.dtype)
        rows = []
        for row in noise.detach().to("cpu", torch.float32).contiguous():
            seed = int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest(), "little")
            rows.append(torch.rand(shape, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows).to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def predict_tokens(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Token indices per scale (B, A, pn_s) by S cached GPT passes."""
        return self._decode(obs, noise)[0]

    def _decode(self, obs: dict[str, Any], noise: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = self.obs_encoder(obs)
        b = batch_size_of(obs)
        if noise is not None:
            noise = check_noise(noise, (b, self.spec.horizon, self.spec.action_dim), feats)
        uniforms = self._uniforms(noise, b, feats) if self.cfg.top_k > 1 else None
        tok = self.tokenizer
        state = self.gpt.start(feats)
        f_hat = feats.new_zeros(b, self.spec.action_dim, tok.cfg.latent_channels, tok.latent_len)
        idxs, inp = [], None
        for s in range(len(tok.scales)):
            logits = self.gpt.step(state, inp)
            lo, hi = self.gpt.starts[s], self.gpt.starts[s + 1]
            idx = self.gpt.logits_to_tokens(self._choose(logits, None if uniforms is None else uniforms[:, lo:hi]), s)
            idxs.append(idx)
            f_hat = tok.add_scale(f_hat, idx, s)
            if s + 1 < len(tok.scales):
                inp = tok.scale_input(f_hat, s + 1)
        return idxs, f_hat

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A), clipped to [-1, 1]; deterministic given `noise` (used by top-k only)."""
        return self.tokenizer.decode_latent(self._decode(obs, noise)[1]).clamp(-1.0, 1.0)

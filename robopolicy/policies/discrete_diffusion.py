"""Discrete-diffusion VLA head (Discrete Diffusion VLA, ALGORITHMS.md section 5), sized for a CPU.

Tokens: every action chunk (T_p x A, normalized) is quantile-binned per dimension (bins fitted on the
dataset, policies/quantile_bins.py) into L = T_p * A tokens, time-major. One bidirectional transformer
reads [instruction tokens | observation tokens | action tokens]:
- instruction: frozen pretrained WordLlama token features (nn/text_encoder.py) -> projection + positions;
- observation: per frame, one token for the low-dim keys and one per camera (the ResNet + spatial-softmax
  ImageEncoder of nn/vision.py), with learned frame/type embeddings;
- actions: a per-dimension token embedding (dimension d's bin j is its own entry) + position, [MASK] shared.
Training is masked discrete diffusion: t ~ U(0, 1), each action token is masked with probability
cos(pi/2 t) (at least one per row), cross-entropy on the masked positions only. Decoding
(policies/masked_decoding.py) is parallel with adaptive order and secondary re-masking, T rounds set at
inference (`set_inference(num_rounds=...)`), or left-to-right (L rounds) with the same network.

The bins must be fitted before training: `fit_action_statistics(normalized actions (N, A))`; the trainer
calls it with every action of the store. They are buffers, so checkpoints carry them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.data.schema import key_kind
from robopolicy.nn.text_encoder import InstructionTokens, LanguageConfig, PooledInstruction
from robopolicy.nn.vision import ImageEncoder, ImageEncoderConfig
from robopolicy.policies.base import Policy, PolicySpec
from robopolicy.policies.masked_decoding import ORDERS, DecodeSettings, DecodeTrace, masked_decode, num_rounds
from robopolicy.policies.quantile_bins import QuantileActionBins


class DiscreteDiffusionPolicy(Policy):
    """Masked discrete diffusion over quantile-binned action tokens, conditioned on vision, language, state."""

    @dataclass
    class Config:
        """Hyper-parameters. The paper fine-tunes OpenVLA-7B (256 bins); these defaults fit a CPU."""

        n_bins: int = 256
        d_model: int = 128
        n_layers: int = 4
        n_heads: int = 4
        ff_mult: int = 4
        dropout: float = 0.0
        # Feed the instruction (pooled by a learned query) into the state token's MLP too, so state and words
        # mix before attention. The first moves depend on a product of the two (which block x where it is);
        # with the words only as prefix tokens the head did not learn it. It does with this option plus the
        # task's first-window draws (task.start_window_steps/_repeat), not with either alone (docs/results.md).
        # On in the configs/policy presets; False here so checkpoints saved before the option load unchanged.
        # It needs a low-dim state key: a head without one has no state token and ignores the option.
        instruction_in_state: bool = False
        image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # one encoder per camera
        language: LanguageConfig = field(default_factory=LanguageConfig)
        # Inference settings (change after training with set_inference):
        decode: str = "adaptive"  # adaptive (parallel) | left_to_right (autoregressive, L rounds)
        num_rounds: int = 12  # official num_iter default
        remask: bool = True
        remask_threshold: float = 0.02
        remask_drop: float = 0.5
        sample_temperature: float = 1.0  # 0: argmax tokens
        choice_temperature: float = 1.0

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: DiscreteDiffusionPolicy.Config) -> None:
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
        if cfg.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {cfg.n_bins}")
        cls._settings(cfg)
        for k, shape in spec.obs_shapes.items():
            if key_kind(k) not in ("image", "lowdim"):
                raise ValueError(f"obs key '{k}' ({key_kind(k)}) is not supported; use images/<cam> and low-dim keys")
            if key_kind(k) == "lowdim" and len(shape) != 1:
                raise ValueError(f"low-dim key '{k}' must be flat (D,), got {tuple(shape)}")

    def __init__(self, spec: PolicySpec, cfg: DiscreteDiffusionPolicy.Config | None = None):
        super().__init__()
        cfg = cfg or DiscreteDiffusionPolicy.Config()
        self.validate_config(spec, cfg)
        self.spec, self.cfg = spec, cfg
        d, a = cfg.d_model, spec.action_dim
        self.length = spec.horizon * a
        self.bins = QuantileActionBins(a, cfg.n_bins)
        self.image_keys = sorted(k for k in spec.obs_shapes if key_kind(k) == "image")
        self.lowdim_keys = sorted(k for k in spec.obs_shapes if key_kind(k) == "lowdim")
        if not self.image_keys and not self.lowdim_keys and not spec.language:
            raise ValueError("the policy spec has no observation keys and no language to condition on")
        self.image_encoders = nn.ModuleDict({_mangle(k): ImageEncoder(cfg.image) for k in self.image_keys})
        for k in self.image_keys:
            self.image_encoders[_mangle(k)].check_image_size(*spec.obs_shapes[k][1:])
        self.image_proj = nn.Linear(cfg.image.feature_dim, d) if self.image_keys else None
        state_dim = sum(int(spec.obs_shapes[k][0]) for k in self.lowdim_keys)
        fuse = bool(state_dim and spec.language and cfg.instruction_in_state)
        self.state_instruction = PooledInstruction(cfg.language, d) if fuse else None
        state_in = state_dim + (d if fuse else 0)
        self.state_proj = nn.Sequential(nn.Linear(state_in, d), nn.GELU(), nn.Linear(d, d)) if state_dim else None
        n_types = len(self.image_keys) + (1 if state_dim else 0)
        self.obs_pos = nn.Parameter(torch.zeros(spec.n_obs_steps * max(n_types, 1), d))
        self.language = InstructionTokens(cfg.language, d) if spec.language else None
        self.mask_id = a * cfg.n_bins  # dimension d's bin j is token d * n_bins + j
        self.token_emb = nn.Embedding(a * cfg.n_bins + 1, d)
        self.act_pos = nn.Parameter(torch.zeros(self.length, d))
        self.segment = nn.Parameter(torch.zeros(3, d))  # language / observation / action
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.ff_mult * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        self.head_w = nn.Parameter(torch.empty(a, d, cfg.n_bins))  # one output layer per action dimension
        self.head_b = nn.Parameter(torch.zeros(a, cfg.n_bins))
        for p in (self.obs_pos, self.act_pos, self.segment):
            nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.head_w, std=1.0 / math.sqrt(d))
        self.settings = self._settings(cfg)

    # ------------------------------------------------------------------ settings
    @staticmethod
    def _settings(cfg: DiscreteDiffusionPolicy.Config) -> DecodeSettings:
        if cfg.decode not in ORDERS:
            raise ValueError(f"decode must be one of {ORDERS}, got {cfg.decode!r}")
        return DecodeSettings(rounds=cfg.num_rounds, order=cfg.decode, remask=cfg.remask,
                              remask_threshold=cfg.remask_threshold, remask_drop=cfg.remask_drop,
                              sample_temperature=cfg.sample_temperature, choice_temperature=cfg.choice_temperature)

    def set_inference(self, num_rounds: int | None = None, decode: str | None = None, remask: bool | None = None,
                      sample_temperature: float | None = None, choice_temperature: float | None = None) -> None:
        """Choose decoding after training: rounds T, order (adaptive | left_to_right), re-masking, temperatures."""
        updates = dict(num_rounds=num_rounds, decode=decode, remask=remask, sample_temperature=sample_temperature,
                       choice_temperature=choice_temperature)
        cfg = replace(self.cfg, **{k: v for k, v in updates.items() if v is not None})
        self.settings = self._settings(cfg)
        self.cfg = cfg

    @property
    def nfe(self) -> int:
        return num_rounds(self.length, self.settings)

    def fit_action_statistics(self, actions: torch.Tensor) -> None:
        """Fit the per-dimension quantile bins to normalized actions (N, A) of the training data."""
        self.bins.fit(actions)

    # ------------------------------------------------------------------ network
    def encode_prefix(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Language + observation tokens (B, P, d) and their key-padding validity (B, P)."""
        t_o = self.spec.n_obs_steps
        keys = [*self.image_keys, *self.lowdim_keys]
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing} (got {sorted(obs)})")
        texts = self._instructions(obs)
        if texts is not None and keys and len(texts) != len(obs[keys[0]]):
            raise ValueError(f"obs['language'] has {len(texts)} rows, the observations {len(obs[keys[0]])}")
        per_type = []  # per observation type: (B, T_o, d)
        for k in self.image_keys:
            x = obs[k]
            if x.ndim != 5 or x.shape[1] < t_o:
                raise ValueError(f"'{k}' must be (B, T>={t_o}, 3, H, W), got {tuple(x.shape)}")
            b = x.shape[0]
            f = self.image_encoders[_mangle(k)](x[:, :t_o].reshape(b * t_o, *x.shape[2:]))
            per_type.append(self.image_proj(f).reshape(b, t_o, -1))
        if self.state_proj is not None:
            parts = []
            for k in self.lowdim_keys:
                x = obs[k]
                if x.ndim != 3 or x.shape[1] < t_o:
                    raise ValueError(f"'{k}' must be (B, T>={t_o}, D), got {tuple(x.shape)}")
                parts.append(x[:, :t_o].float())
            if self.state_instruction is not None:
                parts.append(self.state_instruction(texts, self.act_pos.device)[:, None].expand(-1, t_o, -1))
            per_type.append(self.state_proj(torch.cat(parts, -1)))
        tokens, valid = [], []
        if per_type:
            frames = torch.stack(per_type, 2).flatten(1, 2)  # (B, T_o * n_types, d), frame-major
            obs_tok = frames + self.obs_pos[: frames.shape[1]] + self.segment[1]
            tokens.append(obs_tok)
            valid.append(torch.ones(obs_tok.shape[:2], dtype=torch.bool, device=obs_tok.device))
        if texts is not None:
            lang, lmask = self.language(texts, self.act_pos.device)
            tokens.insert(0, lang + self.segment[0])
            valid.insert(0, lmask)
        return torch.cat(tokens, 1), torch.cat(valid, 1)

    def _instructions(self, obs: dict[str, Any]) -> list[str] | None:
        """obs['language'], checked (None for a head without language)."""
        if self.language is None:
            return None
        texts = obs.get("language")
        if texts is None:
            raise KeyError("this policy is language-conditioned: obs['language'] (list of str, one per row) "
                           "is missing; train/evaluate with task.language=true")
        if isinstance(texts, str):
            raise TypeError("obs['language'] must be a list of str (one per batch row), not a str")
        return list(texts)

    def token_logits(self, prefix: torch.Tensor, pvalid: torch.Tensor, tokens: torch.Tensor,
                     masked: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, n_bins) of every action position given the prefix and the partly masked tokens
        (bins per dimension, (B, L)); bins a dimension does not have are -inf."""
        a = self.spec.action_dim
        dim_of = torch.arange(self.length, device=tokens.device) % a
        ids = torch.where(masked, torch.full_like(tokens, self.mask_id), tokens + dim_of * self.cfg.n_bins)
        act = self.token_emb(ids) + self.act_pos + self.segment[2]
        x = torch.cat([prefix, act], 1)
        pad = torch.cat([~pvalid, torch.zeros_like(masked)], 1)
        h = self.out_norm(self.transformer(x, src_key_padding_mask=pad)[:, prefix.shape[1]:])
        h = h.reshape(h.shape[0], self.spec.horizon, a, -1)
        logits = torch.einsum("btad,adn->btan", h, self.head_w) + self.head_b
        logits = logits.masked_fill(~self.bins.valid, float("-inf"))
        return logits.reshape(h.shape[0], self.length, -1)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        action = batch["action"]
        want = (self.spec.horizon, self.spec.action_dim)
        if action.ndim != 3 or tuple(action.shape[1:]) != want:
            raise ValueError(f"action must be (B, {want[0]}, {want[1]}) (B, T_p, A), got {tuple(action.shape)}")
        if not bool(self.bins.fitted):
            raise RuntimeError("the action bins are not fitted: call policy.fit_action_statistics(normalized "
                               "actions (N, A)) before training (robopolicy's trainer does it from the store)")
        b = action.shape[0]
        target = self.bins.tokenize(action).reshape(b, self.length)
        t = torch.rand(b, 1, device=action.device)
        masked = torch.rand(b, self.length, device=action.device) < torch.cos(0.5 * math.pi * t)
        none = ~masked.any(1)  # every row trains on at least one position
        if none.any():
            pick = torch.randint(0, self.length, (int(none.sum()),), device=action.device)
            masked[none.nonzero()[:, 0], pick] = True
        prefix, pvalid = self.encode_prefix(batch["obs"])
        logits = self.token_logits(prefix, pvalid, target, masked)
        loss = F.cross_entropy(logits[masked], target[masked])
        acc = (logits[masked].argmax(-1) == target[masked]).float().mean()
        return {"loss": loss, "ce": loss.detach(), "masked_token_acc": acc.detach()}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_tokens(self, obs: dict[str, Any], generator: torch.Generator | None = None,
                       trace: DecodeTrace | None = None) -> torch.Tensor:
        """Decoded bins (B, T_p, A) with the current decoding settings."""
        prefix, pvalid = self.encode_prefix(obs)
        tokens = masked_decode(lambda tok, m: self.token_logits(prefix, pvalid, tok, m), prefix.shape[0],
                               self.length, self.settings, prefix.device, generator, trace)
        return tokens.reshape(prefix.shape[0], self.spec.horizon, self.spec.action_dim)

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized chunk (B, T_p, A): the bin midpoints of the decoded tokens. Token draws come from a
        generator seeded by a hash of `noise` when given (deterministic), else from the global RNG."""
        gen = None
        if noise is not None:
            seed = int.from_bytes(hashlib.blake2b(noise.detach().cpu().float().numpy().tobytes(),
                                                  digest_size=8).digest(), "little")
            gen = torch.Generator().manual_seed(seed)
        return self.bins.detokenize(self.predict_tokens(obs, gen))


def _mangle(key: str) -> str:  # ModuleDict keys cannot contain '.' or '/'
    return key.replace("/", "__").replace(".", "_")

"""Diffusion Policy conditioned on the instruction too: the continuous baseline of the discrete-diffusion VLA.

Same UNet, scheduler and observation encoder as policies/diffusion.py; the global condition gets one more
part, a vector pooled from the same frozen pretrained instruction tokens the discrete-diffusion head reads
(nn/text_encoder.py: WordLlama token features -> learned projection + positions -> one attention query).
Everything else (training loss, DDPM/DDIM sampling, the denoising chain for RL) is DiffusionPolicy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from robopolicy.nn.text_encoder import LanguageConfig, PooledInstruction
from robopolicy.nn.unet1d import ConditionalUnet1D
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.obs_conditioning import ObsConditioner, ObsEncoderConfig


class LanguageObsConditioner(nn.Module):
    """ObsConditioner features (B, T_o * F) concatenated with the pooled instruction (B, language_dim)."""

    def __init__(self, spec: PolicySpec, obs_cfg: ObsEncoderConfig, lang_cfg: LanguageConfig, language_dim: int):
        super().__init__()
        self.obs = ObsConditioner(replace(spec, language=False), obs_cfg)
        self.instruction = PooledInstruction(lang_cfg, language_dim)
        self.out_dim = self.obs.out_dim + language_dim

    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        texts = obs.get("language")
        if texts is None or isinstance(texts, str):
            raise KeyError("this policy is language-conditioned: obs['language'] must be a list of str (one per "
                           "row); train/evaluate with task.language=true")
        feats = self.obs(obs)
        if len(texts) != feats.shape[0]:
            raise ValueError(f"obs['language'] has {len(texts)} rows, the observations {feats.shape[0]}")
        return torch.cat([feats, self.instruction(texts, feats.device)], -1)


class LanguageDiffusionPolicy(DiffusionPolicy):
    """DiffusionPolicy whose global condition includes the instruction (spec.language must be True)."""

    @dataclass
    class Config(DiffusionPolicy.Config):
        language: LanguageConfig = field(default_factory=LanguageConfig)
        language_dim: int = 64  # width of the pooled instruction vector in the condition
        # x0 prediction: with epsilon the head ignored the instruction (it matters at high noise, where the
        # epsilon target hardly depends on the chunk); docs/results.md, discrete-diffusion VLA section.
        prediction_type: str = "sample"

    def __init__(self, spec: PolicySpec, cfg: LanguageDiffusionPolicy.Config | None = None):
        cfg = cfg or LanguageDiffusionPolicy.Config()
        if not spec.language:
            raise ValueError("diffusion_language needs a language task (task.language=true); use policy=diffusion "
                             "for tasks without instructions")
        super().__init__(replace(spec, language=False), cfg)
        self.spec = spec
        # Replace the language-free encoder and the UNet built by DiffusionPolicy with wider-conditioned ones.
        self.obs_encoder = LanguageObsConditioner(spec, cfg.obs, cfg.language, cfg.language_dim)
        self.model = ConditionalUnet1D(spec.action_dim, self.obs_encoder.out_dim, cfg.unet)

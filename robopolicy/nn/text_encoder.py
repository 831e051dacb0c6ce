"""Instruction text -> token features, from a small pretrained encoder whose weights ship in a PyPI wheel.

The encoder is WordLlama (`pip install wordllama`, MIT): static token embeddings (32k Llama-2 tokens x 256
dims, 16 MB, float16) distilled from Llama-2-70B's input embeddings and trained for sentence similarity with
average pooling. Its wheel bundles both the weights (`wordllama/weights/l2_supercat_256.safetensors`) and the
tokenizer (`wordllama/tokenizers/l2_supercat_tokenizer_config.json`), so nothing is fetched at run time. We
read those two files directly instead of calling `WordLlama.load()`: in wordllama 0.4.0 that function looks
for the tokenizer in a folder named `tokenizer/` while the wheel ships `tokenizers/`, and then tries to
download it from the Hugging Face hub.

The encoder is frozen and not part of any checkpoint (its weights come from the installed package); its name
is recorded in the policy config. Token features keep word order (mean pooling would make "stack the blue
block on the red block" and "stack the red block on the blue block" identical); the policy adds learned
position embeddings and attends over them. Encodings are cached per string: instructions repeat.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import nn

WORDLLAMA_WEIGHTS = "weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
TEXT_ENCODERS = ("wordllama-l2-256",)


class TextEncoderUnavailable(ImportError):
    """The pretrained text encoder's package is not installed."""


class FrozenTextEncoder:
    """Pretrained static token embeddings + their tokenizer; encodes strings to (N_tokens, dim) float32.

    Args:
        name: which encoder ("wordllama-l2-256", the only one so far).
        max_tokens: instructions longer than this (in tokens) are an error, not silently cut.
    """

    def __init__(self, name: str = "wordllama-l2-256", max_tokens: int = 32):
        if name not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {name!r}; available: {', '.join(TEXT_ENCODERS)}")
        self.name = name
        self.max_tokens = int(max_tokens)
        self.table, self.tokenizer = _load_wordllama()
        self.dim = int(self.table.shape[1])
        self._cache: dict[str, np.ndarray] = {}

    @property
    def fingerprint(self) -> str:
        """Hash of the embedding table: lets a checkpoint notice a different installed encoder."""
        return _table_hash(self.name)

    def encode_one(self, text: str) -> np.ndarray:
        """Token features (N, dim) float32 of one instruction; N = 0 for an empty string. Cached."""
        if not isinstance(text, str):
            raise TypeError(f"an instruction must be a str, got {type(text).__name__}")
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text.strip() else []
        if len(ids) > self.max_tokens:
            raise ValueError(f"instruction has {len(ids)} tokens, more than max_tokens={self.max_tokens}: "
                             f"{text[:80]!r}; raise the policy's language.max_tokens")
        feats = self.table[np.asarray(ids, dtype=np.int64)].astype(np.float32) if ids else \
            np.zeros((0, self.dim), np.float32)
        self._cache[text] = feats
        return feats

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token features (B, N_max, dim) and a validity mask (B, N_max) bool (N_max >= 1)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of instructions (one per batch row), not a single str")
        feats = [self.encode_one(t) for t in texts]
        n = max([1, *(len(f) for f in feats)])
        out = np.zeros((len(feats), n, self.dim), np.float32)
        mask = np.zeros((len(feats), n), bool)
        for i, f in enumerate(feats):
            out[i, :len(f)] = f
            mask[i, :len(f)] = True
        return torch.from_numpy(out), torch.from_numpy(mask)


@functools.lru_cache(maxsize=1)
def _load_wordllama():
    try:
        import wordllama  # noqa: F401  (only to find the package's files)
        from safetensors import safe_open
        from tokenizers import Tokenizer
    except ImportError as e:
        raise TextEncoderUnavailable(
            "language conditioning needs the 'wordllama' package (a robopolicy dependency; its pretrained weights "
            "ship in the wheel): pip install 'wordllama>=0.4,<0.5'"
        ) from e
    root = resources.files("wordllama")
    weights, tok = root / WORDLLAMA_WEIGHTS, root / WORDLLAMA_TOKENIZER
    if not weights.is_file() or not tok.is_file():
        raise TextEncoderUnavailable(f"the installed wordllama package lacks its bundled files {WORDLLAMA_WEIGHTS} "
                                     f"and {WORDLLAMA_TOKENIZER}; reinstall wordllama (0.4.x ships them)")
    with safe_open(str(weights), framework="np") as f:
        table = f.get_tensor("embedding.weight")
    return table, Tokenizer.from_file(str(tok))


@functools.cache
def _table_hash(name: str) -> str:
    table, _ = _load_wordllama()
    return hashlib.sha1(np.ascontiguousarray(table).tobytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def shared_text_encoder(name: str = "wordllama-l2-256", max_tokens: int = 32) -> FrozenTextEncoder:
    """One encoder (and one cache) per process and setting, shared by every policy that uses it."""
    return FrozenTextEncoder(name, max_tokens)


@dataclass
class LanguageConfig:
    """How instructions enter a policy: frozen pretrained token features -> learned projection + positions."""

    encoder: str = "wordllama-l2-256"
    max_tokens: int = 32


class InstructionTokens(nn.Module):
    """Instructions (list[str]) -> projected token features (B, N, d_model) + key-padding mask (B, N).

    The pretrained table stays frozen (outside the module's parameters); the projection, a LayerNorm and
    the position embeddings are learned with the policy.
    """

    def __init__(self, cfg: LanguageConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = shared_text_encoder(cfg.encoder, cfg.max_tokens)
        self.proj = nn.Sequential(nn.LayerNorm(self.encoder.dim), nn.Linear(self.encoder.dim, d_model))
        self.pos = nn.Parameter(torch.zeros(cfg.max_tokens, d_model))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        feats, mask = self.encoder.encode(list(texts))
        feats, mask = feats.to(device), mask.to(device)
        x = self.proj(feats) + self.pos[: feats.shape[1]]
        return x * mask[..., None], mask


class PooledInstruction(nn.Module):
    """Instructions -> one feature vector (B, out_dim) for heads with a global condition (the UNet heads).

    A learned query attends over the projected tokens (one attention layer), so word order survives through
    the position embeddings; an empty instruction gives the learned "no instruction" vector.
    """

    def __init__(self, cfg: LanguageConfig, out_dim: int = 64, n_heads: int = 4):
        super().__init__()
        self.tokens = InstructionTokens(cfg, out_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, out_dim))
        self.empty = nn.Parameter(torch.zeros(out_dim))
        self.attn = nn.MultiheadAttention(out_dim, n_heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(out_dim), nn.Linear(out_dim, out_dim))
        self.out_dim = out_dim
        # A zero query would attend uniformly, i.e. mean-pool the (linear) values: blind to word order.
        nn.init.normal_(self.query, std=0.02)

    def forward(self, texts: list[str], device: torch.device) -> torch.Tensor:
        x, mask = self.tokens(texts, device)
        has_text = mask.any(1)
        # Rows without tokens would attend to nothing (NaN): give them one dummy key, then replace the result.
        safe_mask = mask.clone()
        safe_mask[~has_text, 0] = True
        q = self.query.expand(x.shape[0], -1, -1)
        pooled, _ = self.attn(q, x, x, key_padding_mask=~safe_mask, need_weights=False)
        pooled = self.out(pooled[:, 0])
        return torch.where(has_text[:, None], pooled, self.empty.expand_as(pooled))

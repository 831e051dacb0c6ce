"""AdamW and the learning-rate schedule (Diffusion Policy: lr 1e-4, betas (0.95, 0.999), wd 1e-6, cosine
decay after a linear warm-up of 500 steps)."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler
from torch import nn

from robopolicy.train.config import TrainerConfig


def make_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (frozen ones, e.g. a distillation teacher, are left out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    # The fused kernel (one pass over all parameters instead of ~10 elementwise ops per tensor) made a
    # 4 M-parameter CPU-preset training step 7% faster here; it needs every parameter on one device type.
    fused = len({p.device.type for p in params}) == 1 and params[0].device.type in ("cpu", "cuda") \
        and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """diffusers' named schedule over the whole run, stepped once per optimizer step."""
    try:
        return get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.warmup_steps,
                             num_training_steps=cfg.steps)
    except ValueError as e:
        raise ValueError(f"trainer.lr_scheduler={cfg.lr_scheduler!r}: {e}") from e

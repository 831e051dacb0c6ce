"""Exponential moving average of a model's weights with Diffusion Policy's warm-up schedule.

decay(k) = 1 - (1 + k)^(-power), clamped to [min_decay, max_decay], with k = max(0, updates done - 1) as in
Diffusion Policy's EMAModel (update_after_step=0, inv_gamma=1): the first two updates copy the weights
(decay 0). Power 0.75 reaches 0.999 after ~10k
steps and 0.9999 after ~215k. Buffers (e.g. normalization statistics) are copied, not averaged.
The averaged model is what gets evaluated and saved as the checkpoint's model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Keeps `averaged`, a frozen copy of the model, updated after every optimizer step."""

    def __init__(self, model: nn.Module, power: float = 0.75, min_decay: float = 0.0, max_decay: float = 0.9999):
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.power = power
        self.min_decay = min_decay
        self.max_decay = max_decay
        self.step = 0  # updates done so far
        self.decay = 0.0

    def decay_at(self, updates_done: int) -> float:
        step = max(0, updates_done - 1)
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step) ** (-self.power)
        return max(self.min_decay, min(value, self.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.decay = self.decay_at(self.step)
        avg_params = dict(self.averaged.named_parameters())
        for name, p in model.named_parameters():
            target = avg_params[name]
            if p.requires_grad:
                target.lerp_(p.detach().to(target.dtype), 1.0 - self.decay)
            else:
                target.copy_(p.detach())
        avg_buffers = dict(self.averaged.named_buffers())
        for name, b in model.named_buffers():
            avg_buffers[name].copy_(b.detach())
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "decay": self.decay, "power": self.power,
                "min_decay": self.min_decay, "max_decay": self.max_decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Counters only; the averaged weights are restored from the checkpoint's model.safetensors."""
        self.step = int(state["step"])
        self.decay = float(state["decay"])

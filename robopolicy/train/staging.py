"""How the trainer runs a multi-stage head (robopolicy/policies/stages.py, e.g. CARP: tokenizer, then GPT).

The stages run in order, each with its own optimizer and LR schedule over its own parameters; entering a
stage copies the EMA weights of the parameters it does not train into the raw model (they are final from
then on) and restarts the EMA warm-up. Checkpoints record the stage and resume continues inside it. Sim
evaluation and best/ only run in the last stage (earlier stages do not yield a policy).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robopolicy.policies.registry import PolicyConfigError
from robopolicy.policies.stages import TrainingStage, check_stages, stage_index_at, stage_parameters
from robopolicy.train.config import TrainerConfig
from robopolicy.train.ema import EMA
from robopolicy.train.optim import make_lr_scheduler


class StagedTraining:
    """A head's checked stage plan and the stage the run is in (`index`)."""

    def __init__(self, stages: list[TrainingStage]) -> None:
        self.stages = stages
        self.index = 0

    @classmethod
    def of(cls, policy: nn.Module, total_steps: int) -> StagedTraining | None:
        """The plan of `policy` for `total_steps` (trainer.steps), checked; None for a single-stage head."""
        if not hasattr(policy, "training_stages"):
            return None
        return cls(check_stages(policy, policy.training_stages(total_steps), total_steps))

    @property
    def is_final(self) -> bool:
        """Whether the run is in the last stage (the only one whose weights make a usable policy)."""
        return self.index == len(self.stages) - 1

    def index_at(self, step: int) -> int:
        """The stage that the optimizer step after `step` completed steps belongs to."""
        return stage_index_at(self.stages, step)

    def plan(self) -> list[list[Any]]:
        """[[name, steps], ...]: what a checkpoint stores to tell whether a resume fits this run."""
        return [[s.name, s.steps] for s in self.stages]

    def record(self) -> dict[str, Any]:
        """The stage entries of a checkpoint's meta and train state."""
        return {"stage": self.stages[self.index].name, "stages": self.plan()}

    def make_optimizer(self, index: int, policy: nn.Module, ema: EMA | None,
                       cfg: TrainerConfig) -> tuple[torch.optim.Optimizer, Any]:
        """Point `policy` (and the EMA copy) at stage `index`, then build AdamW + LR schedule over that stage's
        parameters and steps (warm-up capped at a fifth of them, so a short stage still reaches its LR)."""
        stage = self.stages[index]
        for module in (policy, ema.averaged if ema is not None else None):
            if module is not None:
                module.set_training_stage(stage.name)
        cfg = dataclasses.replace(cfg, steps=stage.steps, lr=stage.lr or cfg.lr,
                                  warmup_steps=min(cfg.warmup_steps, stage.steps // 5))
        params = stage_parameters(policy, stage)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                      weight_decay=cfg.weight_decay)
        return optimizer, make_lr_scheduler(optimizer, cfg)

    def fix_untrained(self, index: int, policy: nn.Module, ema: EMA) -> None:
        """Entering stage `index` fresh: the parameters it does not train take their EMA values (the earlier
        stage's result is its averaged weights, and they no longer change), and the EMA warm-up restarts."""
        trainable = {id(p) for p in stage_parameters(policy, self.stages[index])}
        averaged = dict(ema.averaged.named_parameters())
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if id(p) not in trainable:
                    p.copy_(averaged[name])
        ema.step = 0

    def resume_index(self, state: dict[str, Any], path: Path) -> tuple[int, bool]:
        """The stage to resume in from a saved train `state`, and whether the checkpoint was saved inside it
        (False: saved at the end of the previous stage, so this one starts fresh)."""
        plan = self.plan()
        if state.get("stages") is not None and state["stages"] != plan:
            raise PolicyConfigError(f"cannot resume from {path}: its stage plan {state['stages']} differs from "
                                    f"this run's {plan} (trainer.steps changed?)")
        index = self.index_at(int(state["step"]))
        return index, state.get("stage") in (None, self.stages[index].name)

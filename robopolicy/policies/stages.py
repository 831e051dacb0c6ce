"""Multi-stage training: a head that trains in several stages (e.g. CARP: tokenizer, then the GPT) says so.

A head may define
    training_stages(total_steps: int) -> list[TrainingStage]   the stages in order, their steps summing to
                                                                  total_steps (trainer.steps)
    set_training_stage(name: str) -> None                        what compute_loss optimises from now on
The trainer runs the stages in order with one optimizer and LR schedule per stage over that stage's
parameters, records the stage in every checkpoint and resumes inside the right one (robopolicy/train/staging.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class TrainingStage:
    """One stage: its name, its optimizer steps and the parameters it trains (name prefixes)."""

    name: str
    steps: int
    trainable: tuple[str, ...]  # parameter-name prefixes optimised in this stage; the others stay fixed
    lr: float | None = None  # None: trainer.lr


def stage_parameters(model: nn.Module, stage: TrainingStage) -> list[nn.Parameter]:
    """The parameters a stage trains (those whose name starts with one of its prefixes)."""
    return [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(stage.trainable)]


def check_stages(model: nn.Module, stages: list[TrainingStage], total_steps: int) -> list[TrainingStage]:
    """Validate a head's stage plan against trainer.steps; raise with the fix when it does not fit."""
    if not stages:
        raise ValueError(f"{type(model).__name__}.training_stages returned no stages")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"training stage names must be unique, got {names}")
    bad = [s.name for s in stages if s.steps < 1]
    if bad:
        raise ValueError(f"training stages {bad} get no steps out of trainer.steps={total_steps}; raise "
                         "trainer.steps or change the head's stage split")
    if sum(s.steps for s in stages) != total_steps:
        raise ValueError(f"stage steps {[s.steps for s in stages]} do not add up to trainer.steps={total_steps}")
    for s in stages:
        if not stage_parameters(model, s):
            raise ValueError(f"training stage '{s.name}' matches no parameters (prefixes {s.trainable})")
    return stages


def stage_index_at(stages: list[TrainingStage], step: int) -> int:
    """The stage that the optimizer step after `step` completed steps belongs to (the last one at the end)."""
    end = 0
    for i, s in enumerate(stages):
        end += s.steps
        if step < end:
            return i
    return len(stages) - 1


def stage_start(stages: list[TrainingStage], index: int) -> int:
    """Completed steps before stage `index` begins."""
    return sum(s.steps for s in stages[:index])

"""Evaluation: the seeded parallel rollout runner, metrics with confidence intervals, videos, plots,
and expert demonstration collection."""

from robopolicy.eval.metrics import EpisodeRecord, wilson_interval
from robopolicy.eval.runner import DEFAULT_EVAL_SEED, EvalResult, evaluate

__all__ = ["DEFAULT_EVAL_SEED", "EpisodeRecord", "EvalResult", "evaluate", "wilson_interval"]

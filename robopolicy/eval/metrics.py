"""Evaluation metrics: per-episode records, the Wilson score interval, and the summary of a run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Better behaved than the normal approximation at small n and at rates near 0 or 1, which is where
    policy success rates live. With n == 0 the interval is the whole [0, 1].
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly the rate; rounding would otherwise put it a hair inside.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


@dataclass
class EpisodeRecord:
    """Outcome of one evaluation episode."""

    index: int
    seed: int
    success: bool
    score: float  # max of info["score"] over the episode
    length: int  # env steps taken
    reward: float  # sum of env rewards
    language: str = ""
    error: str | None = None  # traceback when the env (or an in-env expert) crashed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0-100) of a list, NaN when empty (JSON writes it as null via `_finite`)."""
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(
    records: list[EpisodeRecord],
    latencies_ms: list[float],
    n_obs_steps: int,
    n_action_steps: int,
    nfe: int,
) -> dict[str, Any]:
    """Aggregate episode records and agent-call latencies into the report's summary dict."""
    n = len(records)
    n_success = sum(r.success for r in records)
    lo, hi = wilson_interval(n_success, n)
    scores = [r.score for r in records]
    lengths = [r.length for r in records]
    return {
        "n_episodes": n,
        "n_success": n_success,
        "success_rate": n_success / n if n else float("nan"),
        "success_ci95": [lo, hi],
        "score_mean": float(np.mean(scores)) if scores else float("nan"),
        "score_std": float(np.std(scores)) if scores else float("nan"),
        "length_mean": float(np.mean(lengths)) if lengths else float("nan"),
        "length_max": int(max(lengths)) if lengths else 0,
        "n_errors": sum(r.error is not None for r in records),
        "latency_ms_median": percentile(latencies_ms, 50),
        "latency_ms_p95": percentile(latencies_ms, 95),
        "n_agent_calls": len(latencies_ms),
        "n_obs_steps": n_obs_steps,
        "n_action_steps": n_action_steps,
        "nfe_per_chunk": nfe,
        "nfe_per_action": nfe / n_action_steps,
    }


def finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None, recursively, so the report is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj

"""Summary plot of an evaluation: per-episode scores, success rate with its CI, latency histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on workers or CI
import matplotlib.pyplot as plt  # noqa: E402

from robopolicy.eval.metrics import EpisodeRecord  # noqa: E402


def plot_summary(path: Path, records: list[EpisodeRecord], summary: dict[str, Any],
                 latencies_ms: list[float], title: str) -> Path:
    """Write a three-panel PNG: score per episode (green success, red failure, black x crash),
    success rate with its Wilson 95% interval, and a histogram of agent-call latency."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [3, 1, 2]})
    ax = axes[0]
    idx = [r.index for r in records]
    colors = ["tab:green" if r.success else "tab:red" for r in records]
    ax.bar(idx, [r.score for r in records], color=colors, width=0.85)
    failed = [r for r in records if not r.success and r.error is None]
    crashed = [r for r in records if r.error is not None]
    # Markers at the bottom keep zero-score failures visible.
    if failed:
        ax.scatter([r.index for r in failed], [0.0] * len(failed), marker="^", color="tab:red", label="failure",
                   zorder=3, clip_on=False)
    if crashed:
        ax.scatter([r.index for r in crashed], [0.0] * len(crashed), marker="x", color="black", label="crash",
                   zorder=3, clip_on=False)
    if failed or crashed:
        ax.legend(loc="lower right")
    ax.set_xlabel("episode")
    ax.set_ylabel("max score")
    ax.set_ylim(0, max(1.0, max((r.score for r in records), default=1.0)) * 1.05)
    ax.set_title(f"score mean {summary['score_mean']:.3f}")

    ax = axes[1]
    rate = summary["success_rate"]
    lo, hi = summary["success_ci95"]
    ax.bar([0], [rate], color="tab:blue", width=0.5)
    ax.errorbar([0], [rate], yerr=[[rate - lo], [hi - rate]], color="black", capsize=8)
    ax.set_xlim(-0.6, 0.6)
    ax.set_xticks([])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"success {rate:.0%} [{lo:.0%}, {hi:.0%}]\n(n={summary['n_episodes']}, Wilson 95%)")

    ax = axes[2]
    if latencies_ms:
        ax.hist(latencies_ms, bins=min(40, max(5, len(latencies_ms) // 5)), color="tab:purple")
        ax.axvline(summary["latency_ms_median"], color="black", linestyle="--", label="median")
        ax.axvline(summary["latency_ms_p95"], color="gray", linestyle=":", label="p95")
        ax.legend()
    ax.set_xlabel("agent call latency (ms)")
    ax.set_title(f"NFE/action {summary['nfe_per_action']:.2f}")

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

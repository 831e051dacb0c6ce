"""Learning curves of an imitation run as a PNG, drawn from its metrics.jsonl.

Tensorboard has the same scalars, but a PNG next to the checkpoints is what a person looks at first (and what
docs/results.md links). Left: train loss (smoothed) and validation loss vs optimizer step, log scale. Right,
when the run evaluated in sim: success rate and mean score vs step.

    python -m robopolicy.train.curves runs/<run>        # writes runs/<run>/curves.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped, not fatal."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows
           if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    # a resumed run appends rows again from its resume step: keep the last value logged for each step
    latest = dict(pts)
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write `<run_dir>/curves.png` (or `out`) from `<run_dir>/metrics.jsonl`; returns its path.

    Raises FileNotFoundError when the run has no metrics.jsonl and ValueError when it logged no loss yet.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist: is {run_dir} a training run directory?")
    rows = read_metrics(metrics)
    train_x, train_y = _series(rows, "train/loss")
    if not train_x:
        raise ValueError(f"{metrics} has no train/loss rows yet")
    val_x, val_y = _series(rows, "val/loss")
    succ_x, succ_y = _series(rows, "eval/success_rate")
    score_x, score_y = _series(rows, "eval/score_mean")
    has_eval = bool(succ_x or score_x)

    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(12 if has_eval else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(train_x, train_y, color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(train_x, _smooth(train_y, max(1, len(train_y) // 50)), color="tab:blue", label="train loss (smoothed)")
    if val_x:
        ax.plot(val_x, val_y, "o-", color="tab:orange", label="val loss")
    if all(v > 0 for v in train_y + val_y):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_eval:
        ax = axes[0][1]
        if succ_x:
            ax.plot(succ_x, succ_y, "o-", color="tab:green", label="success rate")
        if score_x:
            ax.plot(score_x, score_y, "s--", color="tab:purple", label="mean score")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("optimizer step")
        ax.set_title("sim evaluation")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title or run_dir.name)
    fig.tight_layout()
    path = Path(out) if out is not None else run_dir / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a training run's learning curves (curves.png).")
    parser.add_argument("run_dir", help="a `robopolicy train` out_dir (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default <run_dir>/curves.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        print(plot_training_curves(args.run_dir, args.out, args.title))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

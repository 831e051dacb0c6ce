"""Learning curves of an RL fine-tuning run: tensorboard scalars, a metrics.jsonl, and a PNG.

Every logged row carries `env_steps` and `wall_s`; the PNG plots evaluation success (and the rollout
success rate) against both, which is how the results are reported (success vs env steps and wall time).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from robopolicy.train.curves import read_metrics

# What the progress bar shows of a logged row, under a short name.
# A PPO row carries both rollout rates; the windowed one (rollout.py: recent_success_rate) is listed last so it wins.
BAR_KEYS = {"eval/success_rate": "eval", "rollout/success_rate": "rollout", "rollout/success_recent": "rollout",
            "loss/target_mean": "Q target"}


class LearningCurves:
    """Log scalars to `<out_dir>/tb` (tensorboard) and `<out_dir>/metrics.jsonl`; draw `curves.png`; show a
    tqdm bar over environment steps (`total_env_steps` when known) with the latest eval and rollout success.

    After `start_wall_budget` the bar also shows the wall time left (`wall left=12:34`): a run stopped by its wall
    budget ends long before the bar's env-step total, so tqdm's own ETA would mislead.

    `resume_at=(iteration, env_steps)` continues a resumed run's logs: metrics.jsonl keeps its rows up to that
    iteration (those logged after the checkpoint, and a final row, are dropped: the run redoes them), and
    tensorboard purges its events past that env step."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, total_env_steps: int | None = None,
                 progress: bool = True, desc: str = "finetune", resume_at: tuple[int, int] | None = None):
        from tqdm.auto import tqdm

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        if resume_at is not None:
            kept = read_metrics(self.jsonl) if self.jsonl.is_file() else []
            self.rows = [r for r in kept if r["step"] <= resume_at[0] and not r.get("final")]
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"),
                                        purge_step=resume_at[1] + 1 if resume_at is not None else None)
        self.bar = tqdm(total=total_env_steps, desc=desc, unit="env step", unit_scale=True, disable=not progress,
                        dynamic_ncols=True, initial=resume_at[1] if resume_at is not None else 0)
        self._shown: dict[str, str] = {}
        self.wall_budget_s: float | None = None
        self._t0 = time.perf_counter()

    def start_wall_budget(self, wall_budget_s: float | None) -> None:
        """Count `wall_budget_s` from now (a stage with its own budget, e.g. RL-100's online stage)."""
        self.wall_budget_s, self._t0 = wall_budget_s, time.perf_counter()

    def advance(self, env_steps: int, **postfix: Any) -> None:
        """Move the bar to `env_steps` (a running total) and show `postfix` beside the logged values."""
        self._shown.update({k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in postfix.items()})
        if self.wall_budget_s is not None:
            left = max(0, int(self.wall_budget_s - (time.perf_counter() - self._t0)))
            self._shown["wall left"] = f"{left // 60}:{left % 60:02d}"
        if self._shown:
            self.bar.set_postfix(self._shown, refresh=False)
        if env_steps > self.bar.n:
            self.bar.update(env_steps - self.bar.n)

    def message(self, text: str) -> None:
        """A line for the console above the progress bar (a plain print would break the bar's line)."""
        self.bar.write(text) if not self.bar.disable else print(text, flush=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """One row at iteration `step`; values should include env_steps and wall_s."""
        row = {"step": int(step), **{k: _scalar(v) for k, v in values.items()}}
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            x = int(row.get("env_steps", step))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, x)
            self.writer.flush()
        shown = {name: row[k] for k, name in BAR_KEYS.items()
                 if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])}
        self.advance(int(row.get("env_steps", self.bar.n)), **shown)

    def plot(self, path: str | Path | None = None, title: str = "") -> Path:
        """`curves.png`: eval success and rollout success vs env steps and vs wall time."""
        return plot_curves(self.rows, Path(path or self.out_dir / "curves.png"), title)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "",
                keys: tuple[str, ...] | None = None) -> Path:
    """Two panels (x = env steps, x = wall minutes) with one line per key present in `rows`; by default eval
    success and the rollout success over recent episodes (the per-iteration rate where a run has no window)."""
    import matplotlib

    if keys is None:
        windowed = any("rollout/success_recent" in r for r in rows)
        keys = ("eval/success_rate", "rollout/success_recent" if windowed else "rollout/success_rate")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in keys:
        pts = [(r["env_steps"], r["wall_s"] / 60.0, r[key]) for r in rows
               if key in r and "env_steps" in r and "wall_s" in r]
        if not pts:
            continue
        steps, minutes, vals = zip(*pts, strict=True)
        style = "o-" if key.startswith("eval") else "-"
        axes[0].plot(steps, vals, style, label=key, alpha=0.9 if key.startswith("eval") else 0.5)
        axes[1].plot(minutes, vals, style, label=key, alpha=0.9 if key.startswith("eval") else 0.5)
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall time (min)")
    for ax in axes:
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing logged yet (a first plot before any eval): no legend
            ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def rate_text(row: dict[str, Any], key: str = "rollout/success_recent") -> str:
    """A rate from a log row for the console: two decimals, or "warm-up" while the window is not filled yet
    (`ChunkVectorEnv.recent_success_rate` is None until every env has finished an episode)."""
    value = row.get(key)
    return "warm-up" if value is None else f"{float(value):.2f}"

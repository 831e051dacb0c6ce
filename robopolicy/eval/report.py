"""Writes an evaluation's report: eval.json, rollouts.mp4 (selected episodes) and summary.png."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from robopolicy.eval.metrics import finite
from robopolicy.eval.plots import plot_summary
from robopolicy.eval.video import frames_summary, write_episodes_mp4

if TYPE_CHECKING:
    from robopolicy.eval.runner import EvalResult

log = logging.getLogger(__name__)


def write_report(result: EvalResult, out_dir: Path) -> dict[str, str]:
    """Write the report files into `out_dir`; returns (and stores in `result.paths`) their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    if result.videos:
        try:
            paths["video"] = str(write_episodes_mp4(out_dir / "rollouts.mp4", result.videos,
                                                    fps=float(result.config.get("fps", 10.0))))
        except Exception as e:  # a codec problem must not lose the numbers
            log.warning("could not write the rollout video: %s", e)
    title = f"{result.config.get('task')} | {result.config.get('agent')} | {result.summary['n_episodes']} episodes"
    paths["plot"] = str(plot_summary(out_dir / "summary.png", result.records, result.summary,
                                     result.latencies_ms, title))
    paths["json"] = str(out_dir / "eval.json")
    report = {
        "summary": result.summary,
        "config": result.config,
        "episodes": [r.to_json() for r in result.records],
        "video_episodes": frames_summary(result.videos),
        "files": paths,
    }
    Path(paths["json"]).write_text(json.dumps(finite(report), indent=2))
    result.paths = paths
    return paths

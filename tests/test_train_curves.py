"""The training-curves PNG (robopolicy/train/curves.py)."""

from __future__ import annotations

import json

import pytest

from robopolicy.train.curves import _series, main, plot_training_curves, read_metrics


def _write(path, rows, torn: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"step": 99, "train/lo' if torn else ""))


def test_curves_png_from_metrics_with_resume_and_torn_line(tmp_path) -> None:
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(10, 110, 10)]
    rows += [{"step": 50, "val/loss": 0.5}, {"step": 100, "eval/success_rate": 0.4, "eval/score_mean": 0.7}]
    rows += [{"step": 60, "train/loss": 0.123}]  # a resumed run re-logs step 60: the later value wins
    _write(tmp_path / "metrics.jsonl", rows, torn=True)
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == len(rows)  # the torn line is skipped
    steps, values = _series(read_metrics(tmp_path / "metrics.jsonl"), "train/loss")
    assert steps == sorted(set(steps)) and values[steps.index(60)] == 0.123
    png = plot_training_curves(tmp_path)
    assert png == tmp_path / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_clear_errors(tmp_path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="training run directory"):
        plot_training_curves(tmp_path)
    _write(tmp_path / "metrics.jsonl", [{"step": 10, "val/loss": 0.3}])
    with pytest.raises(ValueError, match="no train/loss"):
        plot_training_curves(tmp_path)
    assert main([str(tmp_path)]) == 2 and "error:" in capsys.readouterr().out

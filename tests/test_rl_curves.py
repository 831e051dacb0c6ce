"""rl.curves.LearningCurves: the run's metrics.jsonl, curves.png and progress bar."""

from __future__ import annotations

import json

from robopolicy.rl.curves import LearningCurves


def test_rows_reach_the_jsonl_the_png_and_the_progress_bar(tmp_path, capsys):
    curves = LearningCurves(tmp_path, tensorboard=False, total_env_steps=1000, desc="dsrl")
    curves.log(0, {"env_steps": 0, "wall_s": 0.0, "eval/success_rate": 0.25})
    curves.message("[dsrl] a line above the bar")
    curves.advance(160)  # per-chunk progress between logged rows
    assert curves.bar.n == 160 and curves.bar.total == 1000
    curves.log(1, {"env_steps": 480, "wall_s": 3.0, "rollout/success_rate": 0.5, "eval/success_rate": 0.75,
                   "loss/target_mean": float("nan")})
    curves.log(2, {"base/ratio": 1.5})  # a row without env_steps leaves the bar where it is
    assert curves.bar.n == 480
    assert curves.bar.postfix is not None and "eval=0.75" in curves.bar.postfix and "rollout=0.5" in curves.bar.postfix
    assert "Q target" not in curves.bar.postfix  # NaN values are not shown
    png = curves.plot(title="dsrl on toy")
    curves.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[1]["eval/success_rate"] == 0.75
    assert png.exists() and png.stat().st_size > 1000
    printed = capsys.readouterr()
    assert "[dsrl] a line above the bar" in printed.out + printed.err


def test_a_wall_budget_shows_the_time_left_on_the_bar(tmp_path):
    curves = LearningCurves(tmp_path, tensorboard=False, total_env_steps=10_000)
    curves.advance(10)
    assert "wall left" not in (curves.bar.postfix or "")  # no budget: tqdm's ETA is the only clock
    curves.start_wall_budget(125.0)
    curves.advance(20)
    assert "wall left=2:0" in curves.bar.postfix  # 2:05 or 2:04, counted from start_wall_budget
    curves.start_wall_budget(-5.0)  # overspent (a resumed run): never a negative time
    curves.advance(30)
    assert "wall left=0:00" in curves.bar.postfix
    curves.close()

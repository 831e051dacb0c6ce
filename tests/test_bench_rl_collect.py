"""scripts/bench_rl.py --collect: runs launched one by one, gathered into the side-by-side JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_module import load_script


def _bench_rl():
    return load_script("bench_rl")


def _eval_json(path: Path, k: int, n: int, length: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": {"n_success": k, "n_episodes": n, "success_rate": k / n,
                                            "success_ci95": [0.0, 1.0], "length_mean": length}}))
    return path


def test_collect_pools_evaluations_and_writes_json_and_plot(tmp_path):
    bench = _bench_rl()
    run = tmp_path / "run_a"
    run.mkdir()
    rows = [{"step": 0, "env_steps": 0, "wall_s": 0.0, "eval/success_rate": 0.5},
            {"step": 1, "env_steps": 100, "wall_s": 5.0, "loss": 1.0},
            {"step": 2, "env_steps": 150, "wall_s": 7.0, "eval/success_rate": 0.6, "offline/accepted": 1},
            {"step": 3, "env_steps": 200, "wall_s": 9.0, "eval/success_rate": 0.75}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (run / "summary.json").write_text(json.dumps({"env_steps": 200, "wall_s": 9.0}))
    start = _eval_json(tmp_path / "start" / "eval.json", 11, 20, 255.0)
    a1 = _eval_json(tmp_path / "a1" / "eval.json", 17, 20, 100.0)
    a2 = _eval_json(tmp_path / "a2" / "eval.json", 24, 30, 150.0)
    out = tmp_path / "out"
    code = bench.main(["--start", "ckpt", "--out", str(out), "--eval-task", "x",
                       "--start-eval", str(start), "--collect", f"a={run}:{a1},{a2}", f"b={run}"])
    assert code == 0
    result = json.loads((out / "bench_rl.json").read_text())
    fin = result["methods"]["a"]["final_eval"]
    assert (fin["n_success"], fin["n_episodes"]) == (41, 50)
    assert fin["length_mean"] == pytest.approx((20 * 100.0 + 30 * 150.0) / 50)
    lo, hi = fin["success_ci95"]
    assert lo < 41 / 50 < hi
    curve = result["methods"]["a"]["curve"]
    assert [p["env_steps"] for p in curve] == [0, 150, 200]
    assert [p.get("stage") for p in curve] == [None, "offline", None]  # RL-100's offline-stage point is marked
    assert result["methods"]["b"]["final_eval"] is None
    assert result["start_eval"]["n_success"] == 11
    assert (out / "bench_rl.png").stat().st_size > 0


def test_collect_names_what_is_missing(tmp_path):
    bench = _bench_rl()
    start = _eval_json(tmp_path / "start" / "eval.json", 1, 2, 10.0)
    with pytest.raises(SystemExit, match="RUN_DIR/metrics.jsonl"):
        bench.main(["--start", "c", "--out", str(tmp_path / "o"), "--eval-task", "x",
                    "--start-eval", str(start), "--collect", f"a={tmp_path / 'nowhere'}"])
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="robopolicy eval"):
        bench.main(["--start", "c", "--out", str(tmp_path / "o"), "--eval-task", "x",
                    "--start-eval", str(start), "--collect", f"a={run}:{tmp_path / 'missing.json'}"])

"""scripts/compare_evals.py: paired per-seed comparison of two evaluations on the same seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_module import load_script


def _compare():
    return load_script("compare_evals")


def _eval(path: Path, successes: list[bool], first_seed: int = 100) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    eps = [{"seed": first_seed + i, "success": s, "score": 1.0 if s else 0.5} for i, s in enumerate(successes)]
    (path / "eval.json").write_text(json.dumps({"summary": {}, "episodes": eps}))
    return path


def test_exact_mcnemar_matches_the_binomial_tails():
    m = _compare()
    assert m.mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)
    assert m.mcnemar_exact(5, 5) == 1.0 and m.mcnemar_exact(0, 0) == 1.0
    # 2 vs 8 discordant: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * 56 / 1024
    assert m.mcnemar_exact(8, 2) == pytest.approx(112 / 1024)


def test_paired_counts_and_json(tmp_path, capsys):
    m = _compare()
    base = _eval(tmp_path / "start", [True] * 5 + [False] * 15)
    # the same 5 successes plus 6 new ones, one seed lost: 10/20, +5 discordant net
    other = _eval(tmp_path / "rl", [True] * 4 + [False] + [True] * 6 + [False] * 9)
    out = tmp_path / "cmp.json"
    assert m.main([f"start={base}", f"rl={other / 'eval.json'}", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"]["rl"]
    assert (row["success_base"], row["success"], row["only_base"], row["only_this"]) == (5, 10, 1, 6)
    assert row["diff_points"] == pytest.approx(25.0)
    assert row["mcnemar_p"] == pytest.approx(2 * 8 / 128)
    assert row["score_diff_mean"] == pytest.approx(0.5 * 5 / 20)
    assert "rl" in capsys.readouterr().out


def test_bad_input_gets_a_clear_error(tmp_path, capsys):
    m = _compare()
    a = _eval(tmp_path / "a", [True, False], first_seed=0)
    b = _eval(tmp_path / "b", [True, False], first_seed=50)
    assert m.main([str(a), str(b)]) == 2
    assert "share no seed" in capsys.readouterr().err
    assert m.main([str(a), str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eval.json").write_text("{}")
    assert m.main([str(a), str(tmp_path / "bad")]) == 2
    assert "per-episode" in capsys.readouterr().err


def test_comma_separated_evaluations_are_pooled_and_overlaps_refused(tmp_path, capsys):
    m = _compare()
    base = f"{_eval(tmp_path / 'a1', [True, False])},{_eval(tmp_path / 'a2', [False, False], first_seed=102)}"
    other = f"{_eval(tmp_path / 'b1', [True, True])},{_eval(tmp_path / 'b2', [True, False], first_seed=102)}"
    out = tmp_path / "cmp.json"
    assert m.main([f"start={base}", f"rl={other}", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"]["rl"]
    assert (row["n"], row["success_base"], row["success"], row["only_this"]) == (4, 1, 3, 2)
    overlap = f"{tmp_path / 'b1'},{_eval(tmp_path / 'b3', [True], first_seed=101)}"
    assert m.main([f"start={base}", f"rl={overlap}"]) == 2
    assert "already in an earlier file" in capsys.readouterr().err

"""Paired comparison of evaluations run on the same seeds: is checkpoint B better than checkpoint A?

Two `robopolicy eval` runs with the same `seed=` see the same initial layouts, so per seed they form pairs.
Pairs where both succeed or both fail say nothing about the difference; the discordant ones do. This prints,
for each checkpoint against the first (the baseline), the success counts, the discordant pairs (only the baseline
succeeds / only the other does), the exact two-sided McNemar p-value (a binomial test on the discordant pairs)
and the mean paired difference of the score (e.g. PushT's max coverage). Unpaired 95% intervals of two rates
over 200 seeds overlap for differences below ~10 points; the paired test is the sharper question.

    .venv/bin/python scripts/compare_evals.py start=results/eval/start/eval.json \\
        reinflow=results/eval/rf_final/eval.json rl100=results/eval/rl100_final/eval.json --out compare.json

Arguments are NAME=PATH or PATH (the name is then the parent folder's); PATH is an eval.json or its folder, or
several joined by commas: evaluations of one checkpoint on other seed ranges, pooled (e.g. `seed=100050` and
`seed=100100`, 50 episodes each). Only seeds present in every evaluation are compared; a warning says how many
were dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def load_episodes(path: str | Path) -> dict[int, tuple[bool, float]]:
    """seed -> (success, score) from an eval.json (or the folder holding one); ValueError names what is wrong."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval.json"
    if not p.is_file():
        raise ValueError(f"{p}: no such file (give an eval.json written by `robopolicy eval`, or its folder)")
    try:
        episodes = json.loads(p.read_text())["episodes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{p}: not an eval.json with per-episode results ({type(e).__name__}: {e})") from e
    out: dict[int, tuple[bool, float]] = {}
    for ep in episodes:
        score = ep.get("score")
        out[int(ep["seed"])] = (bool(ep["success"]), float("nan") if score is None else float(score))
    return out


def load_pooled(paths: str) -> dict[int, tuple[bool, float]]:
    """load_episodes over comma-separated evaluations of one checkpoint; a seed may appear in only one of them."""
    pooled: dict[int, tuple[bool, float]] = {}
    for path in paths.split(","):
        episodes = load_episodes(path)
        twice = sorted(set(pooled) & set(episodes))
        if twice:
            raise ValueError(f"{path}: seeds {twice[0]}..{twice[-1]} ({len(twice)}) are already in an earlier file "
                             "of the same NAME=PATH,PATH list; pool evaluations of disjoint seed ranges")
        pooled.update(episodes)
    return pooled


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under no difference each discordant pair is a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compare(base: dict[int, tuple[bool, float]], other: dict[int, tuple[bool, float]],
            seeds: list[int]) -> dict[str, Any]:
    """The paired statistics of `other` against `base` over `seeds`."""
    a = [base[s][0] for s in seeds]
    b = [other[s][0] for s in seeds]
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    score_diff = [other[s][1] - base[s][1] for s in seeds]
    finite = [d for d in score_diff if not math.isnan(d)]
    return {"n": len(seeds), "success_base": sum(a), "success": sum(b), "only_base": only_a, "only_this": only_b,
            "diff_points": 100.0 * (only_b - only_a) / len(seeds), "mcnemar_p": mcnemar_exact(only_a, only_b),
            "score_diff_mean": sum(finite) / len(finite) if finite else float("nan")}


def parse_named(arg: str) -> tuple[str, str]:
    if "=" in arg:
        name, path = arg.split("=", 1)
        return name, path
    p = Path(arg.split(",")[0])
    return (p.parent.name if p.name == "eval.json" else p.name), arg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline", help="NAME=PATH of the reference evaluation (e.g. the start checkpoint)")
    ap.add_argument("others", nargs="+", help="NAME=PATH of each evaluation to compare against the baseline")
    ap.add_argument("--out", help="also write the comparison as JSON here")
    args = ap.parse_args(argv)
    named = [parse_named(a) for a in [args.baseline, *args.others]]
    try:
        evals = {name: load_pooled(path) for name, path in named}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shared = sorted(set.intersection(*(set(e) for e in evals.values())))
    if not shared:
        print("error: the evaluations share no seed; run them with the same `seed=` and `episodes=`",
              file=sys.stderr)
        return 2
    dropped = max(len(e) for e in evals.values()) - len(shared)
    if dropped:
        print(f"warning: comparing on the {len(shared)} seeds every evaluation has ({dropped} dropped)",
              file=sys.stderr)
    base_name = named[0][0]
    rows = {name: compare(evals[base_name], evals[name], shared) for name, _ in named[1:]}
    base_successes = sum(evals[base_name][s][0] for s in shared)
    print(f"paired against {base_name} on {len(shared)} seeds ({shared[0]}..{shared[-1]}): "
          f"{base_name} {base_successes}/{len(shared)}")
    print(f"{'name':<24} {'success':>9} {'diff':>7} {'only base':>9} {'only this':>9} {'McNemar p':>9} {'score diff':>10}")
    for name, r in rows.items():
        print(f"{name:<24} {r['success']:>5}/{r['n']:<3} {r['diff_points']:>+6.1f} {r['only_base']:>9} "
              f"{r['only_this']:>9} {r['mcnemar_p']:>9.3f} {r['score_diff_mean']:>+10.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"baseline": base_name, "seeds": [shared[0], shared[-1], len(shared)],
                                              "paths": dict(named), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPC weight search (ALGORITHMS.md section 9): compose two trained heads, pick the weight on validation seeds,
report the chosen composition against each parent on held-out seeds.

    .venv/bin/python scripts/gpc_search.py --parents data/rl_start/embedded_push_flow \
        data/rl_start/embedded_push_diffusion/best --task embedded_push \
        [--grid 0,0.25,0.5,0.75,1] [--val-seed 200000 --val-episodes 20] [--test-seed 100000 --test-episodes 50]

w is the weight of the first parent (the second gets 1 - w); the loop is the first parent's sampler, so
w = 1 is exactly parent 0, and w = 0 is parent 1's network run in parent 0's sampler (for a flow + diffusion
pair: the diffusion head on the flow's Euler grid, converted at matched noise level). Each parent is also
evaluated alone with its own sampler. Every policy sees the same episode seeds and the same initial noises
(paired comparison). Episodes run in one process, up to --max-batch at once (rl.batched_eval.success_in_process, the eval runner's
seeds). Writes results/gpc_<task>.json and results/gpc_<task>.png (success vs w on validation seeds, with
the held-out results), and with --save-composed a checkpoint of the chosen composition.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from robopolicy.policies.compose import compose_checkpoints, save_composed
from robopolicy.rl.batched_eval import success_in_process
from robopolicy.rl.common import task_from_config


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / d
    return (max(0.0, c - h), min(1.0, c + h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parents", nargs=2, required=True, help="two checkpoint directories")
    ap.add_argument("--task", default="embedded_push", help="configs/task/<task>.yaml")
    ap.add_argument("--env", default=None,
                    help="sim task overriding the config's env, e.g. --task metaworld --env metaworld_door-open")
    ap.add_argument("--grid", default="0,0.25,0.5,0.75,1", help="weights of the first parent to search")
    ap.add_argument("--val-seed", type=int, default=200_000)
    ap.add_argument("--val-episodes", type=int, default=20)
    ap.add_argument("--test-seed", type=int, default=100_000)
    ap.add_argument("--test-episodes", type=int, default=50)
    ap.add_argument("--noise-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=50,
                    help="episodes run at once; robosuite's envs take ~130 MB each (100 at once: 13 GB)")
    ap.add_argument("--out", default=None, help="JSON path (default results/gpc_<task>.json)")
    ap.add_argument("--save-composed", default=None, help="write the chosen composition as a checkpoint here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        task = task_from_config(args.task, args.env)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out or f"results/gpc_{args.env or args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = [float(w) for w in args.grid.split(",")]
    t0 = time.perf_counter()

    composed, normalizer, loaded = compose_checkpoints(args.parents, (1.0, 0.0))
    action_key = task.get("action_key", "action")

    def run(policy, norm, seed: int, n: int) -> dict:
        t = time.perf_counter()
        r = success_in_process(policy, norm, task, seed, n, args.noise_seed, action_key, max_batch=args.max_batch)
        k = sum(r["successes"])  # per episode under "outcomes", for paired tests (scripts/compare_evals.py's McNemar)
        r.update(outcomes=r["successes"], successes=k, ci95=wilson(k, n), wall_s=time.perf_counter() - t)
        return r

    val = []
    for w in grid:
        composed.set_weights((w, 1.0 - w))
        r = run(composed, normalizer, args.val_seed, args.val_episodes)
        val.append({"w": w, **r})
        print(f"val w={w:.2f}: {r['success_rate']:.2f} ({r['wall_s']:.0f} s)", flush=True)
    best = max(val, key=lambda r: (r["success_rate"], -abs(r["w"] - 0.5)))  # ties: the more even mixture
    composed.set_weights((best["w"], 1.0 - best["w"]))
    test = {"composed": {"w": best["w"], **run(composed, normalizer, args.test_seed, args.test_episodes)}}
    for i, c in enumerate(loaded):
        test[f"parent{i}"] = {"path": str(c.path), **run(c.policy, c.normalizer, args.test_seed, args.test_episodes)}
    for k, r in test.items():
        print(f"held-out {k}: {r['success_rate']:.2f} {r['ci95']}", flush=True)
    parents_meta = [{"path": str(c.path), "policy": c.config["policy"]["name"], "nfe": c.policy.nfe,
                     "train_step": c.meta.get("step")} for c in loaded]
    result = {"task": args.env or args.task, "parents": parents_meta, "grid": grid, "val_seed": args.val_seed,
              "val_episodes": args.val_episodes, "test_seed": args.test_seed, "test_episodes": args.test_episodes,
              "noise_seed": args.noise_seed, "max_batch": args.max_batch, "val": val, "best_w": best["w"], "test": test,
              "wall_s": time.perf_counter() - t0, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    if args.save_composed:
        save_composed(args.save_composed, args.parents, (best["w"], 1.0 - best["w"]),
                      {"gpc_search": {"best_w": best["w"], "val_seed": args.val_seed, "json": str(out)}})
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ws = [r["w"] for r in result["val"]]
    rates = [r["success_rate"] for r in result["val"]]
    ax.plot(ws, rates, "o-", label=f"composed, validation ({result['val_episodes']} seeds)")
    test = result["test"]
    names = [p["policy"] for p in result["parents"]]
    ax.errorbar([result["best_w"]], [test["composed"]["success_rate"]],
                yerr=[[test["composed"]["success_rate"] - test["composed"]["ci95"][0]],
                      [test["composed"]["ci95"][1] - test["composed"]["success_rate"]]],
                fmt="s", color="C3", capsize=3, label=f"chosen w, held-out ({result['test_episodes']} seeds)")
    for i, (x, marker) in enumerate(((1.0, "^"), (0.0, "v"))):
        r = test[f"parent{i}"]
        ax.plot([x], [r["success_rate"]], marker, color="C2" if i == 0 else "C1", markersize=9,
                label=f"parent {i} ({names[i]}, own sampler), held-out")
    ax.set_xlabel(f"weight of parent 0 ({names[0]}); parent 1 ({names[1]}) gets 1 - w")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"GPC weight curve on {result['task']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

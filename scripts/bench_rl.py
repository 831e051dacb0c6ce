"""ReinFlow, DSRL and RL-100 side by side from ONE start checkpoint: the [G] benchmark in one command.

Each method runs as its own `robopolicy finetune` process, all at once (give each a share of the cores with
--threads and the method's env count), under the same wall-clock budget and the same task overrides. When all
have ended, every final checkpoint (and the start, unless --start-eval gives its eval.json) is evaluated by the
eval runner on the same seeds (seeds 100000+, all evaluations at once), with the task's own episode limit (or
--eval-max-steps). Writes <out>/bench_rl.json (per method: env steps, wall time,
success before / after with 95% intervals, the learning curve) and <out>/bench_rl.png (eval success vs
environment steps and vs wall time, the three methods on one pair of axes).

    .venv/bin/python scripts/bench_rl.py --start runs/rl_start/reach_flow_5demo/last --out runs/bench_rl/reach \\
        --wall-s 1800 --task-args task=metaworld task.env=metaworld_reach task.store=data/metaworld/reach.zarr \\
        +task.env_kwargs.reward_mode=sparse task.max_episode_steps=120 --eval-task metaworld_reach --eval-max-steps 500

Method settings beyond the budget come from configs/algo/<method>.yaml; add overrides per method with
--reinflow-args / --dsrl-args / --rl100-args (hydra syntax, e.g. algo.ppo.n_envs=32). RL-100 has no wall budget
of its own for the offline stage: size it with algo.offline_iterations / algo.offline_steps; its online stage gets
a third of --wall-s. On a 2-core machine run one method at a time (--methods dsrl).

Runs launched one by one (or a control that is not one of the methods) go side by side with --collect, which
launches nothing and pools evaluations of one checkpoint on disjoint seeds:

    .venv/bin/python scripts/bench_rl.py --start <ckpt> --out runs/bench_rl/reach150 \\
        --eval-task metaworld_reach --start-eval <start eval.json>[,<more>] \\
        --collect reinflow=<out_dir>:<eval.json> rl100=<out_dir>:<eval.json>,<eval.json>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# The budget knob of each method and where it writes the checkpoint to evaluate.
BUDGET = {
    "reinflow": lambda s: [f"algo.wall_budget_s={s}", "algo.iterations=100000"],
    "dsrl": lambda s: [f"algo.max_wall_s={s}", "algo.total_env_steps=100000000"],
    "rl100": lambda s: [f"algo.online_wall_budget_s={max(1, s // 3)}", "algo.online_iterations=100000"],
}
FINAL = {"reinflow": "final", "dsrl": "last", "rl100": "final"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", required=True, help="the imitation checkpoint every method starts from")
    ap.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per method)")
    ap.add_argument("--task-args", nargs="+", default=None,
                    help="task overrides shared by every method (required unless --collect)")
    ap.add_argument("--methods", nargs="+", default=["reinflow", "dsrl", "rl100"], choices=sorted(BUDGET))
    ap.add_argument("--wall-s", type=int, default=1800, help="training wall-clock budget per method (seconds)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-task", required=True, help="sim task name for the final evaluation (e.g. metaworld_reach)")
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--eval-workers", type=int, default=1)
    ap.add_argument("--eval-max-steps", type=int, default=None, help="episode limit of the final evaluation")
    ap.add_argument("--start-eval", default=None,
                    help="eval.json of the start on the same protocol (skips evaluating the start again)")
    for m in BUDGET:
        ap.add_argument(f"--{m}-args", nargs="*", default=[], help=f"extra overrides for {m}")
    ap.add_argument("--collect", nargs="+", default=None, metavar="NAME=RUN_DIR[:EVAL_JSON,...]",
                    help="launch nothing: gather runs made separately (each its finetune out_dir and, optionally, "
                         "the eval.json files of its final checkpoint, whose episodes are pooled) into the "
                         "same JSON and plot; --start-eval may list several eval.json files too (comma-separated)")
    args = ap.parse_args(argv)
    if args.collect is not None and not args.start_eval:
        ap.error("--collect needs --start-eval (the start's eval.json on the final-eval protocol)")
    if args.collect is None and not args.task_args:
        ap.error("--task-args is required (the task overrides every method runs with)")
    return args


def robopolicy_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "robopolicy.cli.main", *args]


def launch(method: str, args: argparse.Namespace) -> subprocess.Popen:
    out = args.out / method
    out.mkdir(parents=True, exist_ok=True)
    cmd = robopolicy_cmd("finetune", f"algo={method}", f"checkpoint={args.start}", *args.task_args,
                         f"seed={args.seed}", f"algo.num_threads={args.threads}", *BUDGET[method](args.wall_s),
                         *getattr(args, f"{method}_args"), f"out_dir={out}")
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    print(f"[{method}] started: log {out / 'finetune.log'}", flush=True)
    with open(out / "finetune.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def launch_eval(name: str, checkpoint: Path | str, args: argparse.Namespace) -> subprocess.Popen:
    """Launch the final evaluation of one checkpoint (all of them run at once)."""
    cmd = robopolicy_cmd("eval", f"checkpoint={checkpoint}", f"task={args.eval_task}",
                         f"episodes={args.eval_episodes}", f"workers={args.eval_workers}", "seed=100000",
                         "videos=0", "progress=false", f"out={args.out / f'eval_{name}'}")
    if args.eval_max_steps:
        cmd.append(f"max_steps={args.eval_max_steps}")
    with open(args.out / f"eval_{name}.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def eval_summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    s = json.loads(path.read_text())["summary"]
    return {k: s[k] for k in ("n_success", "n_episodes", "success_rate", "success_ci95", "length_mean")}


def pooled_summary(paths: list[Path]) -> dict:
    """Several evaluations of one checkpoint on disjoint seeds, pooled (success and 95% Wilson interval)."""
    from robopolicy.eval.metrics import wilson_interval

    parts = [eval_summary(p) for p in paths]
    if not parts or any(p is None for p in parts):
        missing = [str(p) for p, s in zip(paths, parts, strict=True) if s is None]
        raise FileNotFoundError(f"no eval.json at {missing}: run `robopolicy eval` on the final checkpoint first")
    if len(parts) == 1:
        return parts[0]
    k, n = sum(p["n_success"] for p in parts), sum(p["n_episodes"] for p in parts)
    length = sum(p["length_mean"] * p["n_episodes"] for p in parts) / n
    return {"n_success": k, "n_episodes": n, "success_rate": k / n, "success_ci95": list(wilson_interval(k, n)),
            "length_mean": length, "pooled_from": [str(p) for p in paths]}


def curve(method_dir: Path) -> list[dict]:
    """The eval points of a run's metrics.jsonl: env steps, wall time, success, and the stage where the run
    has stages (RL-100's offline iterations log `offline/accepted`; they are marked "offline")."""
    rows = []
    f = method_dir / "metrics.jsonl"
    if not f.exists():
        return rows
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if "eval/success_rate" in r:
            rows.append({"env_steps": r.get("env_steps", 0), "wall_s": r.get("wall_s", 0.0),
                         "success": r["eval/success_rate"], **({"stage": "offline"} if "offline/accepted" in r else {})})
    return rows


def method_entry(run_dir: Path, final_eval: dict | None) -> dict:
    """One method's row of bench_rl.json: its run's summary.json figures, the final evaluation, the curve.

    A run stopped by hand has no summary.json: its env steps and wall time are then its curve's last point."""
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    points = curve(run_dir)
    last = points[-1] if points else {}
    return {"env_steps": summary.get("env_steps", last.get("env_steps")),
            "train_wall_s": summary.get("wall_s", last.get("wall_s")),
            "success_before_in_training": summary.get("success_before"),
            "success_after_in_training": summary.get("success_after"), "final_eval": final_eval,
            "curve": points}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for m, r in result["methods"].items():
        c = r["curve"]
        if not c:
            continue
        offline = [p for p in c if p.get("stage") == "offline"]
        for ax, key in zip(axes, ("env_steps", "wall_s"), strict=True):
            (line,) = ax.plot([p[key] for p in c], [p["success"] for p in c], marker="o", label=m)
            if offline:  # RL-100: its offline stage's points as hollow squares, so its share of a lift shows
                ax.plot([p[key] for p in offline], [p["success"] for p in offline], ls="none", marker="s", ms=10,
                        mfc="none", color=line.get_color(), label=f"{m}: offline stage" if key == "env_steps" else None)
    start = (result.get("start_eval") or {}).get("success_rate")
    for ax, xl in zip(axes, ("environment steps", "wall time (s)"), strict=True):
        if start is not None:
            ax.axhline(start, color="grey", ls="--", lw=1, label="start (final-eval protocol)")
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    axes[0].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    axes[0].set_ylabel("eval success (in-training protocol)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"RL fine-tuning from {result['start']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(args: argparse.Namespace) -> int:
    """--collect: the side-by-side JSON and plot from runs that were launched one by one."""
    result = {"start": str(args.start), "eval_task": args.eval_task, "collected": True,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "start_eval": pooled_summary([Path(p) for p in args.start_eval.split(",")]), "methods": {}}
    for item in args.collect:
        name, _, rest = item.partition("=")
        run_dir, _, evals = rest.partition(":")
        if not name or not run_dir or not (Path(run_dir) / "metrics.jsonl").exists():
            raise SystemExit(f"--collect {item!r}: expected NAME=RUN_DIR[:EVAL_JSON,...] with RUN_DIR/metrics.jsonl")
        final = pooled_summary([Path(p) for p in evals.split(",")]) if evals else None
        result["methods"][name] = {"run_dir": run_dir, **method_entry(Path(run_dir), final)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_rl.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "bench_rl.png")
    report(result, args.out)
    return 0


def report(result: dict, out: Path) -> None:
    s = result["start_eval"]
    print(f"start: {s['n_success']}/{s['n_episodes']}" if s else "start: evaluation failed")
    for m, r in result["methods"].items():
        e = r["final_eval"]
        got = f"{e['n_success']}/{e['n_episodes']}" if e else "no final evaluation"
        print(f"{m:9s} env steps {r['env_steps']}  wall {r['train_wall_s'] or 0:.0f} s  final {got}")
    print(f"wrote {out / 'bench_rl.json'} and {out / 'bench_rl.png'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collect is not None:
        return collect(args)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    procs = {m: launch(m, args) for m in args.methods}
    codes = {}
    for m, p in procs.items():
        codes[m] = p.wait()
        print(f"[{m}] finished with exit code {codes[m]} after {time.time() - t0:.0f} s", flush=True)
    todo = {m: args.out / m / FINAL[m] for m in args.methods if (args.out / m / FINAL[m]).exists()}
    if args.start_eval is None:
        todo["start"] = Path(args.start)
    evals = {name: launch_eval(name, ckpt, args) for name, ckpt in todo.items()}
    for name, p in evals.items():
        if p.wait() != 0:
            print(f"[{name}] evaluation failed: see {args.out / f'eval_{name}.log'}", flush=True)
    start_json = Path(args.start_eval) if args.start_eval else args.out / "eval_start" / "eval.json"
    result = {"start": str(args.start), "task_args": args.task_args, "wall_s_budget": args.wall_s,
              "threads": args.threads, "seed": args.seed, "eval_task": args.eval_task,
              "eval_episodes": args.eval_episodes, "eval_max_steps": args.eval_max_steps,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "start_eval": eval_summary(start_json), "methods": {}}
    for m in args.methods:
        result["methods"][m] = {"exit_code": codes[m],
                                **method_entry(args.out / m, eval_summary(args.out / f"eval_{m}" / "eval.json"))}
    (args.out / "bench_rl.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "bench_rl.png")
    report(result, args.out)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the sim tasks: env steps/s with and without rendering, and vectorised scaling over workers.

    python scripts/bench_sim.py [--tasks pusht robosuite_lift ...] [--steps 100] [--workers 1 2 4]

Single-env rates use random actions (seeded) in-process: "no_render" is obs_mode=state, "render" is the
task's camera observations (obs_mode=both). Vector scaling runs gymnasium's AsyncVectorEnv (spawn
context, as the eval runner does) with obs_mode=both and reports total env steps/s per worker count.
Tasks whose module cannot be imported are skipped with a line saying why.
Writes results/bench_sim.json (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")

from robopolicy.eval.envs import TaskEnvFn  # noqa: E402
from sim.registry import get_task  # noqa: E402

DEFAULT_TASKS = [
    "pusht", "robosuite_lift", "robosuite_can", "robosuite_square",
    "metaworld_reach", "metaworld_pick-place", "metaworld_door-open",
    "embedded_push", "embedded_pick_place", "embedded_stack",
]
DEFAULT_VECTOR_TASKS = ["pusht", "robosuite_lift", "metaworld_pick-place", "embedded_push"]


def single_env_rate(task: str, obs_mode: str, steps: int, seed: int = 0) -> dict:
    """Steps/s of one env in-process with random actions (reset time excluded, resets on episode end)."""
    t0 = time.perf_counter()
    env = TaskEnvFn(task, {"obs_mode": obs_mode})()
    make_s = time.perf_counter() - t0
    env.action_space.seed(seed)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    reset_s = time.perf_counter() - t0
    elapsed, done_steps, episode = 0.0, 0, 0
    while done_steps < steps:
        action = env.action_space.sample()
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        elapsed += time.perf_counter() - t0
        done_steps += 1
        if terminated or truncated:
            episode += 1
            env.reset(seed=seed + episode)
    env.close()
    return {"steps_per_s": done_steps / elapsed, "make_s": make_s, "reset_s": reset_s, "steps": done_steps}


def vector_rate(task: str, n_workers: int, steps: int, obs_mode: str = "both") -> dict:
    """Total env steps/s of an AsyncVectorEnv with n_workers (gymnasium's default next-step autoreset)."""
    t0 = time.perf_counter()
    fns = [TaskEnvFn(task, {"obs_mode": obs_mode})] * n_workers
    envs = gym.vector.AsyncVectorEnv(fns, context="spawn")
    envs.reset(seed=0)
    startup_s = time.perf_counter() - t0
    envs.action_space.seed(0)
    n_calls = max(1, steps // n_workers)
    t0 = time.perf_counter()
    for _ in range(n_calls):
        envs.step(envs.action_space.sample())
    elapsed = time.perf_counter() - t0
    envs.close()
    return {"steps_per_s": n_calls * n_workers / elapsed, "startup_s": startup_s, "steps": n_calls * n_workers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=DEFAULT_TASKS, help="tasks for the single-env rates")
    parser.add_argument("--vector-tasks", nargs="*", default=DEFAULT_VECTOR_TASKS,
                        help="tasks for the worker scaling (empty: skip)")
    parser.add_argument("--steps", type=int, default=100, help="env steps per measurement")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4], help="worker counts to scale over")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_sim.json")
    args = parser.parse_args(argv)

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": list(os.getloadavg())},
        "steps": args.steps, "tasks": {}, "vector": {}, "skipped": {},
    }

    def available(task: str) -> bool:
        try:
            get_task(task)
        except ImportError as e:
            reason = str(e)
        except KeyError:
            reason = "not registered (its task module is missing or does not register this name)"
        else:
            return True
        results["skipped"][task] = reason
        print(f"skip {task}: {reason}", flush=True)
        return False

    for task in args.tasks:
        if not available(task):
            continue
        entry = {}
        for label, obs_mode in (("no_render", "state"), ("render", "both")):
            try:
                entry[label] = single_env_rate(task, obs_mode, args.steps)
                print(f"{task:<28} {label:<10} {entry[label]['steps_per_s']:8.1f} steps/s", flush=True)
            except Exception as e:  # one broken task must not stop the benchmark
                entry[label] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{task:<28} {label:<10} error: {e}", flush=True)
        results["tasks"][task] = entry

    for task in args.vector_tasks:
        if task in results["skipped"] or not available(task):
            continue
        results["vector"][task] = {}
        for n in args.workers:
            try:
                r = vector_rate(task, n, args.steps)
                print(f"{task:<28} workers={n:<3} {r['steps_per_s']:8.1f} steps/s (startup {r['startup_s']:.1f} s)",
                      flush=True)
            except Exception as e:
                r = {"error": f"{type(e).__name__}: {e}"}
                print(f"{task:<28} workers={n:<3} error: {e}", flush=True)
            results["vector"][task][str(n)] = r

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o))
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

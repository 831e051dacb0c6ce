"""Measure the Meta-World experts: success over seeded episodes, and env steps/s with and without images.

For every registered `metaworld_*` task: the scripted expert (with its default action noise) runs
`--episodes` episodes on seeds 0..N-1 (seed s = MT1 training task s % 50, noise seeded by s), episodes
ending at success or at 500 steps. Steps/s is timed over `--speed-steps` expert steps in state-only mode
and with the default cameras (corner + gripper, 84x84). Writes results/metaworld_experts.json after every
task (so an interrupted run keeps what it measured) and prints it at the end.

    MUJOCO_GL=egl python scripts/metaworld_expert_check.py [--episodes 50] [--tasks reach,push]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from sim.metaworld_tasks import INSTRUCTIONS, MetaWorldEnv, MetaWorldExpert  # noqa: E402


def success_rate(task: str, episodes: int, noise_std: float) -> dict[str, Any]:
    """Run the expert on seeds 0..episodes-1 in a state-only env; success and episode lengths."""
    env = MetaWorldEnv(task, obs_mode="state")
    expert = MetaWorldExpert(env, noise_std=noise_std)
    successes, lengths, failed_seeds = [], [], []
    start = time.perf_counter()
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        steps, done = 0, False
        while not done:
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            steps += 1
            done = terminated or truncated
        successes.append(bool(info["success"]))
        lengths.append(steps)
        if not info["success"]:
            failed_seeds.append(seed)
    env.close()
    ok_lengths = [n for n, s in zip(lengths, successes, strict=True) if s]
    return {
        "episodes": episodes,
        "seeds": f"0-{episodes - 1}",
        "success_rate": float(np.mean(successes)),
        "n_success": int(sum(successes)),
        "failed_seeds": failed_seeds,
        "mean_steps_to_success": float(np.mean(ok_lengths)) if ok_lengths else None,
        "max_steps_to_success": int(max(ok_lengths)) if ok_lengths else None,
        "wall_s": round(time.perf_counter() - start, 2),
    }


def steps_per_second(task: str, n_steps: int, **env_kwargs: Any) -> float:
    """Expert-driven env steps per second (resets excluded; the expert's cost is included)."""
    env = MetaWorldEnv(task, **env_kwargs)
    expert = MetaWorldExpert(env)
    obs, info = env.reset(seed=0)
    expert.reset(0)
    elapsed, done_steps = 0.0, 0
    while done_steps < n_steps:
        start = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
        elapsed += time.perf_counter() - start
        done_steps += 1
        if terminated or truncated:
            obs, info = env.reset(seed=done_steps)
            expert.reset(done_steps)
    env.close()
    return round(done_steps / elapsed, 1)


def main() -> None:
    """Parse arguments, measure every task, write and print the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--tasks", default=",".join(INSTRUCTIONS), help="comma-separated Meta-World names")
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument("--out", default="results/metaworld_experts.json")
    args = parser.parse_args()

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in INSTRUCTIONS]
    if unknown:
        parser.error(f"not registered: {unknown}; choose from {', '.join(INSTRUCTIONS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "mujoco_gl": os.environ["MUJOCO_GL"],
        },
        "settings": {
            "episodes_per_task": args.episodes,
            "noise_std": args.noise_std,
            "max_episode_steps": 500,
            "terminate_on_success": True,
            "task_sampling": "mt1 (seed s -> MT1 train task s % 50)",
            "pixels": "cameras corner + gripper at 84x84, no shadows/reflections/MSAA",
        },
        "tasks": {},
    }
    for task in tasks:
        row = success_rate(task, args.episodes, args.noise_std)
        row["steps_per_s_state"] = steps_per_second(task, args.speed_steps, obs_mode="state")
        row["steps_per_s_pixels"] = steps_per_second(task, args.speed_steps, obs_mode="both")
        row["load_avg_1min"] = round(os.getloadavg()[0], 2)
        result["tasks"][task] = row
        rates = [r["success_rate"] for r in result["tasks"].values()]
        result["mean_success_rate"] = float(np.mean(rates))
        out.write_text(json.dumps(result, indent=2))
        print(
            f"{task:22s} success {row['n_success']}/{row['episodes']}  steps {row['mean_steps_to_success']}"
            f"  {row['steps_per_s_state']} steps/s state, {row['steps_per_s_pixels']} with images",
            flush=True,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Measure the PushT expert and env speed; writes results/pusht_expert.json and prints it.

    python scripts/pusht_expert_check.py [--episodes 50] [--seed0 0] [--obs-mode both]

Reports the expert's success rate (coverage >= 0.95) and mean max coverage over seeds seed0..seed0+N-1,
seconds per episode (expert + simulation + rendering of `obs_mode`), and env steps/s with and without
rendering the 96x96 image (random actions, no expert).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import sim


def env_steps_per_second(obs_mode: str, n_steps: int = 2000) -> float:
    """Env steps/s under uniformly random actions (resetting at episode ends)."""
    env = sim.make_env("pusht", obs_mode=obs_mode)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(0, 512, 2).astype(np.float32))
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - t0)


def run_expert(seeds: list[int], obs_mode: str) -> dict:
    """Roll the expert out on each seed; per-episode max coverage, success, length and wall time."""
    env = sim.make_env("pusht", obs_mode=obs_mode)
    expert = sim.make_expert("pusht", env)
    episodes = []
    for seed in seeds:
        t0, c0 = time.perf_counter(), time.process_time()
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        best = info["coverage"]
        success = info["success"]
        steps = 0
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            best = max(best, info["coverage"])
            success = success or info["success"]
            steps += 1
        episodes.append(
            {
                "seed": seed,
                "max_coverage": round(float(best), 4),
                "success": bool(success),
                "steps": steps,
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),
            }
        )
        print(f"seed {seed:4d}  max coverage {best:.3f}  steps {steps:3d}  {episodes[-1]['seconds']:.2f} s")
    cov = np.array([e["max_coverage"] for e in episodes])
    succ = np.array([e["success"] for e in episodes])
    secs = np.array([e["seconds"] for e in episodes])
    cpu = np.array([e["cpu_seconds"] for e in episodes])
    steps = np.array([e["steps"] for e in episodes])
    return {
        "episodes": len(episodes),
        "seeds": f"{seeds[0]}-{seeds[-1]}",
        "obs_mode": obs_mode,
        "success_rate": float(succ.mean()),
        "mean_max_coverage": float(cov.mean()),
        "min_max_coverage": float(cov.min()),
        "mean_episode_steps": float(steps.mean()),
        "seconds_per_episode": float(secs.mean()),
        "max_seconds_per_episode": float(secs.max()),
        "cpu_seconds_per_episode": float(cpu.mean()),
        "estimated_minutes_for_200_demos": float(secs.mean() * 200 / 60 / max(succ.mean(), 1e-9)),
        "per_episode": episodes,
    }


def main() -> None:
    """Parse arguments, measure, write and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed0", type=int, default=0)
    parser.add_argument("--obs-mode", default="both", choices=["state", "pixels", "both"])
    parser.add_argument("--out", default="results/pusht_expert.json")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")

    result = {
        "task": "pusht",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        # Other jobs share this machine's cores; the load average says how much the timings are inflated.
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
        "env_steps_per_s": {
            "state_only": round(env_steps_per_second("state"), 1),
            "with_96x96_image": round(env_steps_per_second("both"), 1),
        },
    }
    result["expert"] = run_expert(list(range(args.seed0, args.seed0 + args.episodes)), args.obs_mode)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    out.write_text(text + "\n")
    summary = {k: v for k, v in result["expert"].items() if k != "per_episode"}
    print(json.dumps({**result, "expert": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

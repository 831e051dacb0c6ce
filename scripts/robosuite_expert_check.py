"""Measure the robosuite tasks: scripted-expert success, env steps/s with and without images.

Writes results/robosuite_experts.json (and prints it):
- per task: expert success over `--episodes` episodes on seeds 0..N-1 (state observations; the expert
  reads privileged state only, so the observation mode does not change its behaviour), mean episode
  length, wall seconds per episode;
- env steps/s with obs_mode="state" and with obs_mode="both" (state + two 84x84 cameras), measured
  on `--bench-steps` steps of expert actions;
- optionally (`--frames DIR`) one 256x256 agentview frame per task, mid-episode, as PNG.

Usage: MUJOCO_GL=egl python scripts/robosuite_expert_check.py [--episodes 50] [--tasks robosuite_lift ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from sim.registry import make_env, make_expert  # noqa: E402

TASKS = ["robosuite_lift", "robosuite_can", "robosuite_square"]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return float(centre - half), float(centre + half)


def run_episodes(task: str, seeds: list[int]) -> dict:
    """Expert success, episode lengths and wall time over the given seeds."""
    env = make_env(task, obs_mode="state")
    expert = make_expert(task, env)
    successes, lengths, seconds = [], [], []
    for seed in seeds:
        start = time.perf_counter()
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        steps = 0
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            steps += 1
            if terminated or truncated:
                break
        successes.append(bool(info["success"]))
        lengths.append(steps)
        seconds.append(time.perf_counter() - start)
        print(f"  {task} seed {seed}: success={successes[-1]} steps={steps} {seconds[-1]:.1f}s", flush=True)
    env.close()
    n_ok = int(sum(successes))
    low, high = wilson(n_ok, len(seeds))
    return {
        "episodes": len(seeds),
        "seeds": f"{seeds[0]}-{seeds[-1]}",
        "successes": n_ok,
        "success_rate": n_ok / len(seeds),
        "success_wilson95": [round(low, 3), round(high, 3)],
        "failed_seeds": [s for s, ok in zip(seeds, successes, strict=True) if not ok],
        "mean_episode_steps": float(np.mean(lengths)),
        "mean_success_episode_steps": float(np.mean([n for n, ok in zip(lengths, successes, strict=True) if ok]))
        if n_ok else None,
        "seconds_per_episode_state_obs": float(np.mean(seconds)),
    }


def steps_per_second(task: str, obs_mode: str, n_steps: int) -> float:
    """Env steps/s (reset excluded) driving the env with the expert, re-running episodes as needed."""
    env = make_env(task, obs_mode=obs_mode)
    expert = make_expert(task, env)
    seed = 1000
    obs, info = env.reset(seed=seed)
    expert.reset(seed)
    env.step(expert.act(obs, info))  # first step builds the GL context
    elapsed, done = 0.0, 0
    while done < n_steps:
        action = expert.act(obs, info)
        start = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(action)
        elapsed += time.perf_counter() - start
        done += 1
        if terminated or truncated:
            seed += 1
            obs, info = env.reset(seed=seed)
            expert.reset(seed)
    env.close()
    return done / elapsed


def save_frame(task: str, out_dir: Path, seed: int = 0, at_step: int = 40) -> str:
    """Save a 256x256 agentview frame of an expert episode at `at_step` (or its last step)."""
    import imageio.v3 as iio

    env = make_env(task, obs_mode="state", render_mode="rgb_array", render_size=(256, 256))
    expert = make_expert(task, env)
    obs, info = env.reset(seed=seed)
    expert.reset(seed)
    for _ in range(at_step):
        obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
        if terminated or truncated:
            break
    path = out_dir / f"{task}.png"
    iio.imwrite(path, env.render())
    env.close()
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--bench-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("results/robosuite_experts.json"))
    parser.add_argument("--frames", type=Path, default=None, help="directory for one PNG frame per task")
    args = parser.parse_args()

    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "MUJOCO_GL": os.environ["MUJOCO_GL"]},
        "notes": "expert success on state observations; steps/s are env.step() only, expert actions, "
                 "one process; 'both' = state + agentview + wrist at 84x84",
        "tasks": {},
    }
    for task in args.tasks:
        print(f"{task}: {args.episodes} expert episodes", flush=True)
        entry = run_episodes(task, list(range(args.episodes)))
        entry["steps_per_s_state"] = round(steps_per_second(task, "state", args.bench_steps), 1)
        entry["steps_per_s_images"] = round(steps_per_second(task, "both", args.bench_steps), 1)
        entry["seconds_per_episode_images_est"] = round(entry["mean_episode_steps"] / entry["steps_per_s_images"], 2)
        if args.frames is not None:
            args.frames.mkdir(parents=True, exist_ok=True)
            entry["frame"] = save_frame(task, args.frames)
        result["tasks"][task] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

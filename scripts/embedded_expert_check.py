"""Expert success and speed of the embedded MuJoCo tasks; writes results/embedded_experts.json.

    MUJOCO_GL=egl python scripts/embedded_expert_check.py --episodes 50

Per task: the scripted expert's success rate over `--episodes` seeded episodes (seeds 0..N-1, state
observations, no rendering), its mean episode length, and one rendered frame (front | wrist camera) saved as
results/embedded_<task>.png. Env speed: steps/s with random actions, without rendering (obs_mode="state")
and with both 96x96 cameras rendered (obs_mode="both").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402

from sim.registry import make_env, make_expert  # noqa: E402

TASKS = ("embedded_push", "embedded_pick_place", "embedded_stack", "embedded_multitask")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a success rate k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def expert_success(task: str, episodes: int) -> dict:
    """Run the expert on seeds 0..episodes-1; success rate, lengths, failures by instruction."""
    env = make_env(task, obs_mode="state")
    expert = make_expert(task, env)
    successes, lengths, failed = [], [], []
    t0 = time.perf_counter()
    steps = 0
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        expert.reset(seed)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(expert.act(obs, info))
            steps += 1
            done = term or trunc
        successes.append(bool(info["success"]))
        lengths.append(env.unwrapped._elapsed)
        if not info["success"]:
            failed.append({"seed": seed, "language": info["language"]})
    dt = time.perf_counter() - t0
    env.close()
    k = int(sum(successes))
    lo, hi = wilson(k, episodes)
    return {
        "episodes": episodes,
        "seeds": f"0..{episodes - 1}",
        "successes": k,
        "success_rate": k / episodes,
        "wilson95": [round(lo, 3), round(hi, 3)],
        "mean_length": float(np.mean(lengths)),
        "max_length": int(np.max(lengths)),
        "failures": failed,
        "expert_env_steps_per_s": steps / dt,
    }


def steps_per_second(task: str, obs_mode: str, n_steps: int) -> float:
    """Env steps/s with random actions (resets included when an episode ends)."""
    env = make_env(task, obs_mode=obs_mode)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env.step(env.action_space.sample())  # first render creates the GL context; keep it out of the timing
    t0 = time.perf_counter()
    for _ in range(n_steps):
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, size=5).astype(np.float32))
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return n_steps / dt


def save_frame(task: str, out: Path, seed: int = 0) -> None:
    """Front (256x256) and wrist camera side by side, halfway through an expert episode."""
    env = make_env(task, obs_mode="both", image_size=(256, 256), render_mode="rgb_array")
    expert = make_expert(task, env)
    obs, info = env.reset(seed=seed)
    expert.reset(seed)
    frames = [np.concatenate([obs["images/front"], obs["images/wrist"]], axis=1)]
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(expert.act(obs, info))
        frames.append(np.concatenate([obs["images/front"], obs["images/wrist"]], axis=1))
        done = term or trunc
    env.close()
    iio.imwrite(out, frames[len(frames) // 2])


def main() -> None:
    """Parse arguments, run the checks, write the JSON and the frames."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--speed-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
        },
        "tasks": {},
    }
    for task in TASKS:
        r = expert_success(task, args.episodes)
        save_frame(task, args.out / f"{task}.png")
        print(
            f"{task}: success {r['successes']}/{r['episodes']}  mean length {r['mean_length']:.1f}  "
            f"expert {r['expert_env_steps_per_s']:.0f} steps/s",
            flush=True,
        )
        result["tasks"][task] = r
    result["steps_per_s"] = {
        "state_no_render": steps_per_second("embedded_multitask", "state", args.speed_steps),
        "both_cameras_96x96": steps_per_second("embedded_multitask", "both", args.speed_steps // 3),
    }
    print("steps/s:", {k: round(v, 1) for k, v in result["steps_per_s"].items()})
    (args.out / "embedded_experts.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

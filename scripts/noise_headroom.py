"""What DSRL could gain at best: does any initial noise make a frozen head succeed where it fails?

DSRL (ALGORITHMS.md section 7) only picks the initial noise of a frozen diffusion / flow head. So its ceiling
on a layout is whether *some* noise makes the base succeed there. This script runs the base on the same
layouts with K independent noise streams (all episodes of one stream at once, in one process, as the GPC search
does) and reports:

- mean success (what the base scores with random noise),
- best-of-K: the share of layouts where at least one of the K noise streams succeeds (an upper-bound estimate of
  what noise selection alone can reach, per layout, with K tries),
- layouts that always / never / sometimes succeed,
- the noise spread of the executed actions (robopolicy/rl/noise_spread.py) on the layouts' first observations.

    .venv/bin/python scripts/noise_headroom.py runs/rl_start/reach_flow_10demo/last --task metaworld \
        --env metaworld_reach --layouts 20 --noises 8 --max-episode-steps 120

Writes results/noise_headroom_<env>_<run>.json and a PNG (per-layout success over the K noises).
If best-of-K is close to the mean, the base's failures are per layout, not per noise: steering the noise
cannot fix them, and fine-tuning the weights (ReinFlow, RL-100) is the tool.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from robopolicy.rl import common
from robopolicy.rl.batched_eval import success_in_process
from robopolicy.rl.noise_spread import noise_spread


def first_observations(policy, normalizer, task: dict, seed: int, n: int, action_key: str) -> dict:
    """The normalized first observation of layouts seed .. seed + n - 1 (history = the first frame repeated)."""
    envs = common.make_chunk_envs(task, policy.spec, n, in_process=True)
    try:
        raw = envs.reset(seed)
        return common.ObsBatcher(policy, normalizer, action_key).obs(raw)
    finally:
        envs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a diffusion or flow checkpoint directory (e.g. runs/<run>/last)")
    ap.add_argument("--task", default="metaworld", help="configs/task/<task>.yaml")
    ap.add_argument("--env", default=None, help="sim task overriding the config's env, e.g. metaworld_reach")
    ap.add_argument("--layouts", type=int, default=20, help="episode seeds seed .. seed + layouts - 1")
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--noises", type=int, default=8, help="independent noise streams per layout (K)")
    ap.add_argument("--max-episode-steps", type=int, default=None, help="episode limit (default: the task's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args()
    if args.layouts < 2 or args.noises < 1:
        ap.error("need --layouts >= 2 and --noises >= 1")
    torch.set_num_threads(args.threads)
    try:
        task = common.task_from_config(args.task, args.env)
    except ValueError as e:
        ap.error(str(e))
    if args.max_episode_steps:
        task["max_episode_steps"] = args.max_episode_steps
    try:
        start = common.load_start(args.checkpoint)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    policy, normalizer = start.policy.eval(), start.normalizer
    task["env_kwargs"] = {**(task.get("env_kwargs") or {}), **((start.config.get("task") or {}).get("env_kwargs") or {})}
    action_key = task.get("action_key", "action")
    env_name = task.get("env") or args.task
    run_name = Path(args.checkpoint).resolve().parent.name
    out = Path(args.out or f"results/noise_headroom_{env_name}_{run_name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    obs = first_observations(policy, normalizer, task, args.seed, args.layouts, action_key)
    policy.eval()  # ObsBatcher leaves the policy in training mode (it is made for fine-tuning)
    start_row = policy.spec.n_obs_steps - 1
    gen = torch.Generator().manual_seed(0)
    shape = policy.noise_shape(1)[1:]
    spread = noise_spread(lambda o, w: policy.predict_chunk(o, w.reshape(-1, *shape)), obs,
                          lambda n: torch.randn(n, int(np.prod(shape)), generator=gen),
                          slice(start_row, start_row + policy.spec.n_action_steps))
    print(f"noise spread {spread['noise_spread']:.3f} vs layout spread {spread['layout_spread']:.3f} "
          f"(ratio {spread['ratio']:.2f})", flush=True)

    runs = []
    for k in range(args.noises):
        with torch.no_grad():
            r = success_in_process(policy, normalizer, task, args.seed, args.layouts, noise_seed=k, action_key=action_key)
        runs.append(r["successes"])
        print(f"noise stream {k}: {sum(r['successes'])}/{args.layouts}", flush=True)
    wins = np.asarray(runs, dtype=float)  # (K, layouts)
    per_layout = wins.mean(0)
    result = {
        "checkpoint": str(args.checkpoint), "env": env_name, "seed": args.seed, "layouts": args.layouts,
        "noises": args.noises, "max_episode_steps": task.get("max_episode_steps"),
        "mean_success": float(wins.mean()), "best_of_k": float((per_layout > 0).mean()),
        "always": int((per_layout == 1).sum()), "never": int((per_layout == 0).sum()),
        "sometimes": int(((per_layout > 0) & (per_layout < 1)).sum()),
        "per_layout_success": per_layout.tolist(), "per_stream_success": wins.mean(1).tolist(), **spread,
        "wall_s": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print(f"mean success {result['mean_success']:.2f}, best of {args.noises} noises {result['best_of_k']:.2f}; "
          f"layouts always {result['always']}, never {result['never']}, sometimes {result['sometimes']}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = np.asarray(result["per_layout_success"])
    order = np.argsort(-per, kind="stable")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(per)), per[order], color="C0")
    ax.axhline(result["mean_success"], color="C1", ls="--", label=f"mean {result['mean_success']:.2f}")
    ax.set_xlabel(f"layout (seeds {result['seed']}+, sorted)")
    ax.set_ylabel(f"success over {result['noises']} noise streams")
    ax.set_title(f"{result['env']}: best of {result['noises']} = {result['best_of_k']:.2f}, "
                 f"noise/layout spread {result['ratio']:.2f}")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

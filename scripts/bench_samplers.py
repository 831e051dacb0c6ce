"""Success and latency of several heads / samplers on one sim task, same seeds, one run.

Each entry is `label=CHECKPOINT[,key=value...]`: the key=values are the head's inference settings
(`robopolicy.load(path, **settings)`), so one diffusion checkpoint can appear as DDPM-100 and DDIM-10 next
to one-step heads trained from it (consistency) or beside it (MeanFlow). For every entry the script
evaluates the same seeds (the eval runner, in-process) and measures the batch-1 latency of one chunk (median
of `--latency-calls` calls on an observation from the task, one torch thread, after warm-up; all entries timed
round-robin so that load on a shared machine hits them alike), then writes a JSON file and prints a markdown
table. `--episodes 0` measures the latencies only.

    python scripts/bench_samplers.py --task pusht --episodes 50 \
        ddpm100=runs/pusht_kp_dp_s0/last,scheduler=ddpm,num_inference_steps=100 \
        ddim10=runs/pusht_kp_dp_s0/last,scheduler=ddim,num_inference_steps=10 \
        consistency=runs/pusht_kp_cm_s0/last --out results/bench_samplers_pusht.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def parse_entry(text: str) -> tuple[str, str, dict[str, Any]]:
    """'label=path,k=v,...' -> (label, path, {k: v}) with ints / floats parsed."""
    if "=" not in text:
        raise SystemExit(f"error: entry {text!r} must be label=CHECKPOINT[,key=value...]")
    label, rest = text.split("=", 1)
    path, *pairs = rest.split(",")
    settings: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: inference setting {pair!r} of entry {label!r} must be key=value")
        k, v = pair.split("=", 1)
        for cast in (int, float):
            try:
                settings[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            settings[k] = v
    if not Path(path).is_dir():
        raise SystemExit(f"error: checkpoint {path!r} of entry {label!r} is not a directory")
    return label, path, settings


def recorded_batch(agent: Any, task: str, seed: int) -> dict[str, np.ndarray]:
    """One observation history (batch 1) from the task, as the agent's env produces it."""
    import sim

    env = sim.make_env(task, **dict(getattr(agent, "env_kwargs", {}) or {}))
    wrapper = getattr(agent, "env_wrapper", None)
    if wrapper is not None:
        env = wrapper(env)
    obs, _ = env.reset(seed=seed)
    env.close()
    return {k: np.repeat(np.asarray(v)[None, None], agent.n_obs_steps, axis=1) for k, v in obs.items()
            if not isinstance(v, str)}  # an instruction string is no array input


def latency_duel(agents: dict[str, Any], task: str, calls: int, seed: int, block: int = 1) -> dict[str, float]:
    """Median wall time (ms) of one agent call at batch 1, all agents timed in turn on a real observation of
    the task, so that load on a shared machine hits every entry alike.

    Each turn is `block` consecutive calls of one agent. block=1 is strict round-robin; the first call after a
    switch pays for bringing the agent's weights back into the CPU caches, which weighs more on an agent that
    makes fewer network calls per step. A larger block amortises that switch, as on a robot, where one policy
    runs alone; the turns still alternate, so drifts in load still hit every entry alike."""
    batches = {label: recorded_batch(a, task, seed) for label, a in agents.items()}
    for label, a in agents.items():
        a.reset()  # a streaming agent starts from an empty buffer, then keeps streaming through the duel
        for _ in range(3):
            a.act(batches[label])  # warm-up
    times: dict[str, list[float]] = {label: [] for label in agents}
    block = max(1, int(block))
    for _ in range(max(1, calls // block)):
        for label, a in agents.items():
            for _ in range(block):
                t0 = time.perf_counter()
                a.act(batches[label])
                times[label].append((time.perf_counter() - t0) * 1e3)
    return {label: float(np.median(v)) for label, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entries", nargs="+", help="label=CHECKPOINT[,key=value...]")
    parser.add_argument("--task", required=True, help="sim task, e.g. pusht")
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per entry (0: latency only)")
    parser.add_argument("--seed", type=int, default=100000, help="first evaluation seed")
    parser.add_argument("--latency-calls", type=int, default=30)
    parser.add_argument("--latency-block", type=int, default=1,
                        help="consecutive calls per agent turn in the latency duel (1: round-robin)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_samplers.json")
    args = parser.parse_args()

    import torch

    import robopolicy
    from robopolicy.eval import evaluate

    torch.set_num_threads(args.threads)
    entries = [parse_entry(e) for e in args.entries]
    if len({label for label, _, _ in entries}) != len(entries):
        raise SystemExit("error: entry labels must be distinct")
    agents = {label: robopolicy.load(path, seed=0, **settings) for label, path, settings in entries}
    latency = latency_duel(agents, args.task, args.latency_calls, args.seed, args.latency_block)
    rows = []
    for label, path, settings in entries:
        agent = agents[label]
        agent.reset()
        row = {"label": label, "checkpoint": path, "settings": settings, "nfe": int(agent.nfe),
               "latency_ms_batch1": latency[label]}
        if args.episodes > 0:
            t0 = time.time()
            s = evaluate(agent, args.task, n_episodes=args.episodes, seed=args.seed, n_workers=1,
                         videos_per_outcome=0, progress=False).summary
            row.update({"success_rate": s["success_rate"], "n_success": s["n_success"], "n_episodes": s["n_episodes"],
                        "success_ci95": s["success_ci95"], "score_mean": s["score_mean"], "score_std": s["score_std"],
                        "eval_latency_ms_median": s["latency_ms_median"], "eval_wall_s": time.time() - t0})
            print(f"{label}: success {s['n_success']}/{s['n_episodes']}, score {s['score_mean']:.3f}, "
                  f"NFE {agent.nfe}, {latency[label]:.2f} ms/chunk", flush=True)
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": args.task, "episodes": args.episodes, "seed": args.seed,
                               "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows},
                              indent=2))
    ref = rows[0]["latency_ms_batch1"]
    print(f"\n| head / sampler | NFE | success | score (mean max coverage) | ms / chunk, batch 1 | vs {rows[0]['label']} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "success_ci95" in r:
            lo, hi = r["success_ci95"]
            success, score = f"{r['n_success']}/{r['n_episodes']} ([{lo:.0%}, {hi:.0%}])", f"{r['score_mean']:.3f}"
        else:
            success, score = "not evaluated", "-"
        print(f"| {r['label']} | {r['nfe']} | {success} | {score} | {r['latency_ms_batch1']:.2f} | "
              f"x{r['latency_ms_batch1'] / ref:.3f} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Streaming Diffusion Policy vs Diffusion Policy: success and latency per control call, side by side.

For each variant, a sim evaluation through the eval runner (same seeds, one worker, batch 1 per call) gives
success / score and the runner's latency per agent call; then a latency duel times every variant's `act` on
the same recorded observation, interleaved so that load on a shared CPU hits all variants alike (medians and
ratios to the DP reference): once round-robin, call by call, and once in alternating turns of `--block` calls.
The second is the deployment case (one policy per process); round-robin charges every switch's cache refill to
the agent with fewer network calls per step, i.e. to SDP.

Variants `KIND@STEPS`: `dp@K` the DP checkpoint sampled with DDIM-K (dp@5 asks whether plain DP gets the
speed for free at the SDP's NFE), `sdp@N` the SDP checkpoint streaming over N levels (StreamingPolicyAgent,
N/h NFE per call), `sdp_full@N` the same SDP weights without the buffer (a full N-level denoise per call, as
DP). Speed-ups in the duel are relative to the first variant.

    .venv/bin/python scripts/bench_streaming.py --sdp runs/sdp/pusht_sdp/last --dp runs/sdp/pusht_dp/last \
        --task pusht --episodes 20 --variants dp@10 sdp@10 --out results/bench_streaming_pusht.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from bench_samplers import latency_duel  # the interleaved latency duel (scripts/ is on sys.path when run)

import robopolicy
from robopolicy.eval import evaluate
from robopolicy.policy_agent import PolicyAgent
from robopolicy.streaming_agent import StreamingPolicyAgent

KINDS = ("dp", "sdp", "sdp_full")


def make_variant(variant: str, args: argparse.Namespace) -> Any:
    """The agent of one variant `kind@steps` (fresh, seeded): dp@K = DP with DDIM-K; sdp@N = SDP streaming over N
    levels (N/h NFE per call); sdp_full@N = the same SDP weights without the buffer (N NFE per call)."""
    kind, _, steps = variant.partition("@")
    if kind not in KINDS or not steps.isdigit():
        raise SystemExit(f"variant {variant!r} must be KIND@STEPS with KIND in {KINDS}, e.g. dp@10 sdp@10")
    n = int(steps)
    if kind == "dp":
        return robopolicy.load(args.dp, seed=args.seed, scheduler="ddim", num_inference_steps=n)
    agent = robopolicy.load(args.sdp, seed=args.seed, num_inference_steps=n)
    if not isinstance(agent, StreamingPolicyAgent):
        raise SystemExit(f"{args.sdp} is not a streaming checkpoint (got {type(agent).__name__})")
    if kind == "sdp":
        return agent
    # the plain PolicyAgent calls predict_chunk: a full N-level denoise per call
    return PolicyAgent(agent.policy, agent.normalizer, action_key=agent.action_key, env_kwargs=agent.env_kwargs,
                       seed=args.seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdp", required=True, help="SDP checkpoint directory")
    ap.add_argument("--dp", required=True, help="Diffusion Policy checkpoint directory")
    ap.add_argument("--task", default="pusht")
    ap.add_argument("--variants", nargs="+", default=["dp@10", "dp@5", "sdp@10", "sdp_full@10"],
                    help="KIND@STEPS, KIND in dp | sdp | sdp_full (see make_variant)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--eval-seed", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0, help="agents' noise seed")
    ap.add_argument("--repeats", type=int, default=50, help="latency duel rounds")
    ap.add_argument("--block", type=int, default=25,
                    help="also time the agents in alternating turns of this many consecutive calls, as one policy "
                         "runs on a robot (the round-robin duel charges each switch to the agent with fewer calls)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-eval", action="store_true", help="latency duel only")
    ap.add_argument("--out", type=Path, default=Path("results/bench_streaming.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    agents = {v: make_variant(v, args) for v in args.variants}
    rows: dict[str, dict[str, Any]] = {}
    for name, agent in agents.items():
        row: dict[str, Any] = {"agent": type(agent).__name__, "nfe_per_call": int(agent.nfe),
                               "horizon": agent.spec.horizon, "n_action_steps": agent.n_action_steps}
        if not args.skip_eval:
            t0 = time.perf_counter()
            res = evaluate(agent, args.task, n_episodes=args.episodes, seed=args.eval_seed, n_workers=1,
                           videos_per_outcome=0, progress=False)
            s = res.summary
            row.update({k: s[k] for k in ("success_rate", "success_ci95", "score_mean", "score_std", "length_mean",
                                          "latency_ms_median", "latency_ms_p95", "n_agent_calls")})
            row["eval_wall_s"] = round(time.perf_counter() - t0, 1)
        rows[name] = row
        print(name, json.dumps(row))

    duel = {k: round(v, 3) for k, v in latency_duel(agents, args.task, args.repeats, args.eval_seed).items()}
    blocked = {k: round(v, 3) for k, v in
               latency_duel(agents, args.task, args.repeats, args.eval_seed, block=args.block).items()}
    ref = args.variants[0]
    for name, ms in duel.items():
        rows[name]["duel_latency_ms_median"] = ms
        rows[name][f"speedup_vs_{ref}"] = round(duel[ref] / ms, 3)
        rows[name]["block_latency_ms_median"] = blocked[name]
        rows[name][f"block_speedup_vs_{ref}"] = round(blocked[ref] / blocked[name], 3)
    out = {
        "task": args.task, "episodes": args.episodes, "eval_seed": args.eval_seed, "agent_seed": args.seed,
        "checkpoints": {"sdp": args.sdp, "dp": args.dp}, "repeats": args.repeats, "block": args.block,
        "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark the runtime: loop timing under parallel diffusion inference, and obs-to-action latency.

1. timing: the control loop at 100 Hz and 500 Hz for --seconds each on the real-time simulated arm while a
   diffusion policy (DDIM-10, the CPU preset UNet) infers continuously in the worker process
   (replan_every=1): period error p50 / p99 / max and deadline misses.
2. latency: obs -> chunk and obs -> first command of that chunk, synchronous (inference inside the loop)
   vs asynchronous (worker process), DDIM-10 vs a one-step head (the flow checkpoint with K = 1).
   Also the loop's misses in each configuration (sync inference blocks the loop).

The diffusion checkpoint is built here with random weights (timing does not depend on the weights) and
the embedded_push flow checkpoint's normalizer; --flow names a trained flow checkpoint (38-D state).

    python scripts/bench_runtime.py --seconds 60 --out results/bench_runtime.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_diffusion_checkpoint(flow_ckpt: Path, out: Path) -> Path:
    """A DDIM-10 diffusion checkpoint (random weights) with the flow checkpoint's spec and normalizer."""
    import yaml

    from robopolicy.data.normalizer import NormalizerSet
    from robopolicy.policies.base import PolicySpec
    from robopolicy.policies.registry import make_policy
    from robopolicy.train.checkpoint import read_config, read_meta, write_model_files

    meta = read_meta(flow_ckpt)
    spec = PolicySpec.from_json(meta["spec"])
    pol_cfg = yaml.safe_load((ROOT / "configs/policy/diffusion_cpu.yaml").read_text())
    policy = make_policy("diffusion", spec, pol_cfg["config"])
    config = read_config(flow_ckpt)
    config["policy"] = {"name": "diffusion", "config": pol_cfg["config"]}
    out.mkdir(parents=True, exist_ok=True)
    write_model_files(out, policy, NormalizerSet.load(flow_ckpt / "normalizer.safetensors"), config,
                      {"spec": spec.to_json(), "policy": "diffusion", "note": "random weights, timing only"})
    return out


def run(ckpt: Path, seconds: float, rate_hz: float, inference: str, replan_every: int,
        infer_kwargs: dict, worker: str = "process") -> dict:
    from robopolicy.deploy.service import DeployConfig, DeploymentService
    from robopolicy.policies.registry import build_config

    cfg = build_config(DeployConfig, {
        "state": "sim_full", "store": None, "stop_on_success": False, "auto_restart_worker": False,
        "runtime": {"rate_hz": rate_hz, "inference": inference, "worker": worker, "replan_every": replan_every,
                    "max_episode_s": seconds + 60, "stats_window_s": seconds + 30},
        "safety": {"max_ee_speed": 0.45, "max_ee_accel": 3.0}}, "deploy")
    svc = DeploymentService(cfg)
    svc.start()
    try:
        svc.load(str(ckpt), inference=infer_kwargs)
        loop = svc.loop
        svc.start_episode(seed=0)
        loop.rate.stats.reset()  # time the episode only, not the start-up
        time.sleep(seconds)
        m = loop.metrics()
        svc.stop_episode(success=None, discard=True)
    finally:
        svc.close()
    return {"rate_hz": rate_hz, "inference": inference, "seconds": seconds, "loop": m["loop"],
            "inference_ms": m["inference_ms"], "obs_to_chunk_ms": m["obs_to_chunk_ms"],
            "obs_to_action_ms": m["obs_to_action_ms"], "chunks": m["chunks_received"],
            "dropped_actions": m["dropped_actions"], "interventions": m["interventions"]["counts"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="duration of each timing run")
    p.add_argument("--latency-seconds", type=float, default=15.0, help="duration of each latency run")
    p.add_argument("--flow", default="data/rl_start/embedded_push_flow", help="trained embedded_push flow checkpoint")
    p.add_argument("--rates", default="100,500")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", default="results/bench_runtime.json")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    flow = (ROOT / args.flow) if not Path(args.flow).is_absolute() else Path(args.flow)
    tmp = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    diffusion = make_diffusion_checkpoint(flow, tmp / "diffusion")
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                    "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "torch_threads": 1,
                    "command": " ".join(sys.argv), "timing": [], "latency": []}
    for rate in [float(r) for r in args.rates.split(",")]:
        r = run(diffusion, args.seconds, rate, "async", 1, {"num_inference_steps": 10})
        r["policy"] = "diffusion DDIM-10 (worker process, continuous inference)"
        r["loadavg_after"] = os.getloadavg()
        result["timing"].append(r)
        print(json.dumps({k: r[k] for k in ("rate_hz", "loop", "inference_ms")}), flush=True)
    if not args.skip_latency:
        for name, ckpt, kw in (("diffusion DDIM-10", diffusion, {"num_inference_steps": 10}),
                               ("flow K=1 (one-step)", flow, {"num_inference_steps": 1})):
            for inference in ("sync", "async"):
                r = run(ckpt, args.latency_seconds, 100.0, inference, 4, kw)
                r["policy"] = name
                r["loadavg_after"] = os.getloadavg()
                result["latency"].append(r)
                print(json.dumps({k: r[k] for k in ("policy", "inference", "obs_to_chunk_ms", "obs_to_action_ms")}
                                 | {"misses": r["loop"]["deadline_misses"]}), flush=True)
    result["loadavg_end"] = os.getloadavg()
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""CARP vs Diffusion Policy: latency per chunk at batch 1 on this CPU, side by side in one run.

Loads two trained checkpoints (any policy head, normally `policy=carp_cpu` and `policy=diffusion_cpu` trained
on the same store and budget), times `predict_chunk` on the same observations alternately (after warm-up,
one torch thread), and adds each checkpoint's success rate when an eval.json from `robopolicy eval` is given.
Without checkpoints it times freshly built heads for a given spec (latency does not depend on the weights).

    .venv/bin/python scripts/bench_carp.py --carp RUN/last --dp RUN/last \\
        [--carp-eval EVAL/eval.json --dp-eval EVAL/eval.json] [--repeats 200] [--out results/bench_carp.json]
    .venv/bin/python scripts/bench_carp.py --untrained --state-dim 38 --action-dim 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from robopolicy.policies.base import PolicySpec
from robopolicy.policies.registry import make_policy
from robopolicy.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _untrained(name: str, state_dim: int, action_dim: int) -> torch.nn.Module:
    preset = yaml.safe_load((REPO / "configs/policy" / f"{name}.yaml").read_text())
    spec = PolicySpec(obs_shapes={"state": (state_dim,)}, action_dim=action_dim, n_obs_steps=2, horizon=16,
                      n_action_steps=8)
    return make_policy(preset["name"], spec, preset["config"]).eval()


def _success(path: str | None) -> dict:
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    keep = ("success_rate", "success_ci95", "episodes", "score_mean")
    summary = data.get("summary", data)
    return {"eval_file": path, **{k: summary[k] for k in keep if k in summary}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--carp")
    ap.add_argument("--dp")
    ap.add_argument("--carp-eval")
    ap.add_argument("--dp-eval")
    ap.add_argument("--untrained", action="store_true", help="time freshly built carp_cpu / diffusion_cpu heads")
    ap.add_argument("--state-dim", type=int, default=38)
    ap.add_argument("--action-dim", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default=str(REPO / "results/bench_carp.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.untrained:
        heads = {"carp": _untrained("carp_cpu", args.state_dim, args.action_dim),
                 "diffusion": _untrained("diffusion_cpu", args.state_dim, args.action_dim)}
        sources = {"carp": "configs/policy/carp_cpu.yaml (untrained)",
                   "diffusion": "configs/policy/diffusion_cpu.yaml (untrained)"}
    else:
        if not (args.carp and args.dp):
            ap.error("give --carp and --dp checkpoints, or --untrained")
        heads = {"carp": load_checkpoint(args.carp).policy, "diffusion": load_checkpoint(args.dp).policy}
        sources = {"carp": args.carp, "diffusion": args.dp}
    spec = heads["carp"].spec
    gen = torch.Generator().manual_seed(0)
    obs = [{k: torch.rand(1, spec.n_obs_steps, *shape, generator=gen) * 2 - 1 for k, shape in spec.obs_shapes.items()}
           for _ in range(8)]
    times: dict[str, list[float]] = {k: [] for k in heads}
    with torch.inference_mode():
        for p in heads.values():
            for o in obs:
                p.predict_chunk(o)  # warm-up
        for i in range(args.repeats):  # alternate, so both see the same machine load
            for name, p in heads.items():
                start = time.perf_counter()
                p.predict_chunk(obs[i % len(obs)])
                times[name].append((time.perf_counter() - start) * 1000)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "torch_threads": 1, "batch": 1, "repeats": args.repeats, "heads": {}}
    for name, p in heads.items():
        result["heads"][name] = {
            "source": sources[name], "nfe": int(p.nfe), "params": sum(q.numel() for q in p.parameters()),
            "latency_ms_median": round(statistics.median(times[name]), 3),
            "latency_ms_p90": round(sorted(times[name])[int(0.9 * len(times[name]))], 3),
            **_success(getattr(args, f"{'carp' if name == 'carp' else 'dp'}_eval")),
        }
    result["latency_ratio_dp_over_carp"] = round(result["heads"]["diffusion"]["latency_ms_median"]
                                                 / result["heads"]["carp"]["latency_ms_median"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

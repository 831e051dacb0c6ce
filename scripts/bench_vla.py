"""Discrete-diffusion VLA on the embedded multi-task language scene: one model for every task, switched by
the instruction alone; vs a continuous diffusion head on the same language features and vs left-to-right
decoding of the same tokens; then what the policy does with instructions it was not trained on.

Part 0 (with --store): on held-out windows of the store, the mean absolute error of the executed actions
(per action dimension) vs the expert's, given the true instruction, another valid one, or none.
Part 1 (`evaluate`, the eval runner, identical seeds for every row): success overall (Wilson 95 % interval),
per task kind and per instruction; NFE and median latency per chunk (batch 1 at this CPU's current load).
Part 2 (own rollout loop, one env): the env draws task A and its instruction; the policy is given
- "true": A's own instruction (reference),
- "paraphrase": A in unseen words ("shove the red cube onto the goal"),
- "swapped": another valid instruction B (another kind where the scene has one, another block): success of B
  and of A are both checked,
- "unknown_colour": A with a colour the scene does not have ("purple"),
- "empty": "" and "nonsense": "open the top drawer".
For every episode: success of A (and B), which block moved most, whether a block ended in the target or on
another block. Writes results/bench_vla.json.

    .venv/bin/python scripts/bench_vla.py --dd runs/dd/last --diffusion runs/dl/last [--episodes 36]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TASK = "embedded_multitask"
PARAPHRASE = {"push": "shove the {obj} cube onto the goal", "pick_place": "place the {obj} cube inside the goal area",
              "stack": "put the {obj} cube on top of the {ref} cube"}
SWAP_KIND = {"push": "stack", "pick_place": "push", "stack": "pick_place"}


def _load(path: str, args: argparse.Namespace, **inference: Any):
    """The checkpoint's agent with the variant's inference settings and --action-steps."""
    import robopolicy

    agent = robopolicy.load(path, device="cpu")
    if inference:
        agent.set_inference(**inference)
    if args.action_steps is not None:
        agent.set_action_steps(args.action_steps)
    return agent


def _variants(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    rounds = args.rounds
    out = []
    if args.dd:
        out += [(f"discrete diffusion, parallel T={rounds} + re-mask", args.dd,
                 dict(decode="adaptive", num_rounds=rounds, remask=True)),
                (f"discrete diffusion, parallel T={rounds}, no re-mask", args.dd,
                 dict(decode="adaptive", num_rounds=rounds, remask=False)),
                ("discrete diffusion, left-to-right (T = L)", args.dd, dict(decode="left_to_right")),
                ("discrete diffusion, one round (T=1)", args.dd, dict(decode="adaptive", num_rounds=1))]
    if args.diffusion:
        out.append(("continuous diffusion (DDIM-10) + same language features", args.diffusion, {}))
    return [v for v in out if not args.only or any(s in v[0] for s in args.only)]


def _swap_kind(kind: str, kinds: list[str] | None) -> str:
    """The kind of the "swapped" instruction: another kind where the scene has one, else the same kind."""
    return SWAP_KIND[kind] if kinds is None or SWAP_KIND[kind] in kinds else kind


def _swap_instruction(text: str, kinds: list[str] | None = None) -> str:
    """Another valid instruction of the scene: a different kind of task (if the scene has one) on a different block."""
    from sim.embedded.task_defs import COLORS, TaskInstance

    words = text.split()
    kind = _swap_kind({"push": "push", "put": "pick_place", "stack": "stack"}[words[0]], kinds)
    obj = words[2]
    new_obj = COLORS[(COLORS.index(obj) + 1) % len(COLORS)]
    ref = COLORS[(COLORS.index(new_obj) + 1) % len(COLORS)] if kind == "stack" else None
    return TaskInstance(kind, new_obj, ref).language


def part0(args: argparse.Namespace) -> list[dict]:
    """Held-out windows of the store: error of the executed actions vs the expert's, given the true
    instruction, another valid instruction, or none (how much the instruction steers the action)."""
    from robopolicy.data.dataset import SequenceConfig, SequenceDataset

    ds = SequenceDataset(args.store, SequenceConfig(obs_keys=["state"], n_obs_steps=2, horizon=16, n_action_steps=8,
                                                    val_ratio=0.05, language=True), split="val")
    idx = np.random.default_rng(0).choice(len(ds), min(args.windows, len(ds)), replace=False)
    items = [ds[int(i)] for i in idx]
    state = torch.stack([it["obs"]["state"] for it in items]).numpy()
    truth = [it["obs"]["language"] for it in items]
    expert = torch.stack([it["action"] for it in items]).numpy()[:, 1:9]  # executed: [T_o - 1, T_o - 1 + T_a)
    rows = []
    for name, ckpt, inference in _variants(args):
        agent = _load(ckpt, args, **inference)
        row = {"variant": name}
        for label, texts in (("true", truth), ("swapped", [_swap_instruction(t, args.kinds) for t in truth]),
                             ("empty", [""] * len(truth))):
            torch.manual_seed(0)
            pred = agent.act({"state": state, "language": texts})
            row[f"mae_{label}"] = [round(float(v), 4) for v in np.abs(pred - expert).mean((0, 1))]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def part1(args: argparse.Namespace) -> list[dict]:
    from robopolicy.eval import evaluate
    from robopolicy.eval.metrics import wilson_interval

    rows = []
    for name, ckpt, inference in _variants(args):
        agent = _load(ckpt, args, **inference)
        torch.manual_seed(0)
        start = time.perf_counter()
        res = evaluate(agent, TASK, n_episodes=args.episodes, seed=args.seed, n_workers=args.workers,
                       env_kwargs=_env_kwargs(args), videos_per_outcome=0, progress=False)
        wall = time.perf_counter() - start
        lat_b1 = _latency_b1(agent, args, repeats=5 if agent.nfe > 20 else 15)
        recs = res.records if hasattr(res, "records") else res["records"]
        per_instr: dict[str, list[bool]] = collections.defaultdict(list)
        per_kind: dict[str, list[bool]] = collections.defaultdict(list)
        for r in recs:
            per_instr[r.language].append(bool(r.success))
            per_kind[r.language.split()[0]].append(bool(r.success))
        n_succ = sum(r.success for r in recs)
        lo, hi = wilson_interval(n_succ, len(recs))
        lat = agent.latencies_ms
        row = {"variant": name, "checkpoint": ckpt, "inference": inference, "nfe": agent.nfe,
               "episodes": len(recs), "success": n_succ / len(recs), "ci95": [round(lo, 3), round(hi, 3)],
               "per_kind": {k: [sum(v), len(v)] for k, v in sorted(per_kind.items())},
               "per_instruction": {k: [sum(v), len(v)] for k, v in sorted(per_instr.items())},
               "latency_ms_per_call_median": round(statistics.median(lat), 2) if lat else None,
               "latency_ms_batch1_median": lat_b1, "eval_wall_s": round(wall, 1),
               "episode_success": [bool(r.success) for r in sorted(recs, key=lambda r: r.seed)]}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "success", "ci95", "nfe", "latency_ms_batch1_median",
                                              "per_kind")}), flush=True)
    return rows


def _env_kwargs(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The eval scene: state observations, and the task kinds of --kinds (all three by default)."""
    return {"obs_mode": "state", **({"kinds": args.kinds} if args.kinds else {}), **extra}


def _latency_b1(agent, args: argparse.Namespace, repeats: int) -> float:
    """Median ms of one act() on one fixed observation (batch 1), after a warm-up call."""
    from sim import make_env

    env = make_env(TASK, **_env_kwargs(args))
    obs, info = env.reset(seed=0)
    env.close()
    batch = {"state": np.stack([obs["state"]] * agent.n_obs_steps)[None], "language": [info["language"]]}
    agent.act(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        agent.act(batch)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


# ------------------------------------------------------------------------------------------ part 2
def _given(kind: str, task, rng: np.random.Generator, kinds: list[str] | None = None):
    """(instruction given to the policy, TaskInstance it asks for or None)."""
    from sim.embedded.task_defs import COLORS, TaskInstance

    if kind == "true":
        return task.language, task
    if kind == "paraphrase":
        return PARAPHRASE[task.kind].format(obj=task.obj, ref=task.ref), task
    if kind == "swapped":
        other = [c for c in COLORS if c != task.obj]
        obj = str(other[int(rng.integers(len(other)))])
        new_kind = _swap_kind(task.kind, kinds)
        ref = str([c for c in COLORS if c != obj][int(rng.integers(2))]) if new_kind == "stack" else None
        b = TaskInstance(new_kind, obj, ref)
        return b.language, b
    if kind == "unknown_colour":
        return TaskInstance(task.kind, "purple", task.ref).language, None
    if kind == "empty":
        return "", None
    if kind == "nonsense":
        return "open the top drawer", None
    raise ValueError(kind)


def _scene_summary(scene, start: dict[str, np.ndarray]) -> dict:
    from sim.embedded.task_defs import COLORS, IN_TARGET_TOL, TaskInstance, is_success

    moved = {c: float(np.linalg.norm(scene.block_pose(c)[0][:2] - start[c][:2])) for c in COLORS}
    in_target = [c for c in COLORS if is_success(scene, TaskInstance("push", c))
                 or np.linalg.norm(scene.block_pose(c)[0][:2] - scene.target_pos()[:2]) < IN_TARGET_TOL]
    stacked = [f"{a} on {b}" for a in COLORS for b in COLORS if a != b and is_success(scene, TaskInstance("stack", a, b))]
    most = max(moved, key=moved.get)
    return {"moved_most": most if moved[most] > 0.02 else None, "moved_m": {k: round(v, 3) for k, v in moved.items()},
            "in_target": in_target, "stacked": stacked}


def probe_episode(agent, seed: int, kind: str, args: argparse.Namespace) -> dict:
    from sim import make_env
    from sim.embedded.task_defs import COLORS, is_success

    max_steps = args.max_steps
    env = make_env(TASK, **_env_kwargs(args, terminate_on_success=False))
    obs, info = env.reset(seed=seed)
    base = env.unwrapped
    task = base.task
    text, asked = _given(kind, task, np.random.default_rng(seed), args.kinds)
    start = {c: base.scene.block_pose(c)[0].copy() for c in COLORS}
    hist = collections.deque([obs["state"]] * agent.n_obs_steps, maxlen=agent.n_obs_steps)
    agent.reset()
    steps, ok_env, ok_asked = 0, False, False
    while steps < max_steps and not (ok_env if asked is None or asked == task else ok_asked):
        actions = agent.act({"state": np.stack(hist)[None], "language": [text]})[0]
        for a in actions:
            obs, _, _, trunc, info = env.step(a)
            hist.append(obs["state"])
            steps += 1
            ok_env = ok_env or bool(info["success"])
            ok_asked = ok_asked or (asked is not None and is_success(base.scene, asked))
            if trunc or steps >= max_steps or (ok_asked if asked is not None and asked != task else ok_env):
                break
    out = {"seed": seed, "probe": kind, "env_instruction": task.language, "given": text,
           "env_task_success": ok_env, "asked_task_success": ok_asked if asked is not None else None,
           "steps": steps, **_scene_summary(base.scene, start)}
    env.close()
    return out


def part2(args: argparse.Namespace) -> dict:
    out = {}
    models = [(f"discrete diffusion (parallel T={args.rounds} + re-mask)", args.dd,
               dict(decode="adaptive", num_rounds=args.rounds, remask=True))] if args.dd else []
    if args.diffusion:
        models.append(("continuous diffusion + language", args.diffusion, {}))
    for name, ckpt, inference in models:
        agent = _load(ckpt, args, **inference)
        res = {}
        for kind in args.probes:
            eps = [probe_episode(agent, args.seed + 50_000 + i, kind, args) for i in range(args.probe_episodes)]
            summary = {
                "episodes": len(eps),
                "env_task_success": sum(e["env_task_success"] for e in eps),
                "asked_task_success": (sum(bool(e["asked_task_success"]) for e in eps)
                                       if eps and eps[0]["asked_task_success"] is not None else None),
                "no_block_moved": sum(e["moved_most"] is None for e in eps),
                "some_block_in_target": sum(bool(e["in_target"]) for e in eps),
                "some_stack": sum(bool(e["stacked"]) for e in eps),
            }
            res[kind] = {"summary": summary, "episodes": eps}
            print(json.dumps({"model": name, "probe": kind, **summary}), flush=True)
        out[name] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dd", help="discrete-diffusion checkpoint")
    ap.add_argument("--diffusion", help="diffusion_language checkpoint")
    ap.add_argument("--episodes", type=int, default=36)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)  # batches the policy calls; results do not depend on it
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--only", nargs="*", help="substrings of the variants to run (default all)")
    ap.add_argument("--probes", nargs="*", default=["true", "paraphrase", "swapped", "unknown_colour", "empty",
                                                     "nonsense"])
    ap.add_argument("--probe-episodes", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--store", help="episode store for the held-out-window action errors (part 0)")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--kinds", nargs="+", default=None,
                    help="task kinds of the scene (env kwarg `kinds`), e.g. --kinds push for the push-only "
                         "store of configs/task/embedded_multitask_push.yaml; default all three")
    ap.add_argument("--action-steps", type=int, default=None,
                    help="actions executed per policy call (default: the trained T_a); 1-2 re-plan nearly every step")
    ap.add_argument("--out", default="results/bench_vla.json")
    args = ap.parse_args()
    if not args.dd and not args.diffusion:
        ap.error("give --dd and/or --diffusion checkpoints")
    torch.set_num_threads(1)
    report: dict[str, Any] = {"task": TASK, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor()
                              or platform.machine(), "torch": torch.__version__, "args": vars(args)}
    if args.store:
        report["part0"] = part0(args)
    if not args.skip_part1:
        report["part1"] = part1(args)
    if args.probes and args.probe_episodes > 0:
        report["part2"] = part2(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""`robopolicy finetune algo=dsrl|dsrl_na`: DSRL from an imitation checkpoint on a sim task (rl/dsrl.py holds
the learner and its loop; rl/dsrl_resume.py what a resumed run loads)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from robopolicy.policies.steered import SteeredPolicy
from robopolicy.rl.dsrl import DSRLConfig, DSRLLearner, train_dsrl
from robopolicy.rl.returns import task_return_bounds


def finetune(checkpoint: str, task: dict, algo: dict, out_dir: Path, seed: int) -> dict:
    """`robopolicy finetune algo=dsrl`: DSRL-SAC from an imitation checkpoint (see run_finetune)."""
    return run_finetune(checkpoint, task, algo, Path(out_dir), seed, variant="sac")


def finetune_na(checkpoint: str, task: dict, algo: dict, out_dir: Path, seed: int) -> dict:
    """`robopolicy finetune algo=dsrl_na`: DSRL-NA from an imitation checkpoint (see run_finetune)."""
    return run_finetune(checkpoint, task, algo, Path(out_dir), seed, variant="na")


def run_finetune(checkpoint: str, task: dict, algo: dict, out_dir: Path, seed: int, variant: str) -> dict:
    """Fine-tune the noise actor of a frozen base head on `task`.

    Writes `<out_dir>/last` (every evaluation) and `<out_dir>/best` (best eval success) as steered
    checkpoints that robopolicy.load / `robopolicy eval` take unchanged, curves.png, metrics.jsonl, tb/ and
    summary.json. The summary's success_before / success_after compare the base head (its usual random
    noise) with the final steered policy on `final_eval_episodes` held-out seeds (eval_seed + 10000 ...).
    """
    from robopolicy.policies.registry import build_config
    from robopolicy.policies.steered import parameter_hash
    from robopolicy.rl import batched_eval, common, dsrl_resume

    name = "dsrl" if variant == "sac" else "dsrl_na"
    cfg = build_config(DSRLConfig, algo, where=f"algo '{name}'")
    out_dir, start = common.begin_run(checkpoint, out_dir, seed, cfg.num_threads)
    base = start.policy
    if cfg.target_clip == "auto":
        cfg = dataclasses.replace(cfg, target_clip=task_return_bounds(task, base.spec.n_action_steps, cfg.gamma))
        if cfg.target_clip is None:
            print(f"[{name}] the env declares no reward range: critic targets are not clamped", flush=True)
        else:
            print(f"[{name}] critic targets clamped to {cfg.target_clip} (the return range of the env's rewards; "
                  "set algo.target_clip to override)", flush=True)
    base_hash = parameter_hash(base)
    policy_cfg = start.config.get("policy") or {}
    steered = SteeredPolicy(base.spec, SteeredPolicy.Config(base_name=policy_cfg["name"],
                                                            base_config=policy_cfg.get("config") or {},
                                                            actor=cfg.actor), base=base)
    action_key = task.get("action_key", "action")
    learner = DSRLLearner(steered, cfg, variant, seed)
    saved = dsrl_resume.resume_training(cfg.resume_from, learner, name, base_hash) if cfg.resume_from else None
    batcher = common.ObsBatcher(steered, start.normalizer, action_key)
    curves = common.LearningCurves(out_dir, desc=name, total_env_steps=cfg.total_env_steps,
                                   resume_at=(learner.grad_steps, learner.progress.env_steps) if saved else None)
    steered_config = {"policy": {"name": "steered", "config": {
        "base_name": policy_cfg["name"], "base_config": policy_cfg.get("config") or {},
        "actor": dataclasses.asdict(cfg.actor)}}, "finetune": {"algo": name, "seed": seed, **algo}}
    best = {"success_rate": float(saved["best_rate"]) if saved else -1.0}

    def evaluate(policy: Any, n: int, first_seed: int) -> dict[str, Any]:
        if cfg.eval_in_process:
            out = batched_eval.success_in_process(policy, start.normalizer, task, first_seed, n, seed, action_key)
        else:
            out = common.evaluate_success(policy, start.normalizer, task, n, first_seed, cfg.eval_workers, action_key)
        steered.actor.train()
        return out

    def save(which: str, env_steps: int, rate: float) -> Path:
        meta = {"policy": "steered", "policy_class": "robopolicy.policies.steered:SteeredPolicy",
                "finetune": {"algo": name, "env_steps": env_steps, "eval_success_rate": rate,
                             "base_parameter_hash": base_hash, "seed": seed}}

        def state(directory: Path) -> None:  # last/ only: what a resumed run needs besides the actor
            torch.save(dsrl_resume.training_state(learner, max(best["success_rate"], rate)),
                       directory / dsrl_resume.STATE_FILE)
        return common.save_finetuned(out_dir / which, steered, start, meta, steered_config,
                                     extra_files=state if which == "last" else None)

    def on_eval(env_steps: int, wall_s: float) -> dict[str, Any]:
        s = evaluate(steered, cfg.eval_episodes, cfg.eval_seed)
        save("last", env_steps, s["success_rate"])
        if s["success_rate"] > best["success_rate"]:
            best.update(s)
            save("best", env_steps, s["success_rate"])
        curves.plot(title=f"{name} on {common.task_label(task)}")
        return {"eval/success_rate": s["success_rate"]}

    t0 = time.perf_counter()
    if saved is None:
        base_eval = evaluate(base, cfg.eval_episodes, cfg.eval_seed)
        curves.log(0, {"env_steps": 0, "wall_s": 0.0, "eval/base_success_rate": base_eval["success_rate"],
                       **on_eval(0, 0.0)})
    else:
        (out_dir / f"config_resume{learner.progress.env_steps}.json").write_text(
            json.dumps({"algo": algo, "task": task, "seed": seed, "checkpoint": str(checkpoint)}, indent=2,
                       default=str))
        curves.message(f"[{name}] resumed from {cfg.resume_from} at {learner.progress.env_steps} env steps, "
                       f"{learner.grad_steps} gradient steps, {learner.progress.wall_s:.0f} s; replay "
                       f"{len(learner.replay)} transitions")
    envs = common.make_chunk_envs(task, base.spec, cfg.n_envs, in_process=cfg.in_process)
    curves.start_wall_budget(cfg.max_wall_s - learner.progress.wall_s)
    try:
        stats = train_dsrl(learner, envs, batcher, seed=50_000 + 1000 * seed, on_eval=on_eval, log=curves.log,
                           progress=curves.advance)
    finally:
        envs.close()
    if parameter_hash(base) != base_hash:  # DSRL's contract: the base weights never change
        raise RuntimeError("the base head's parameters changed during DSRL; this is a bug")
    held_out = cfg.eval_seed + 10_000
    before = evaluate(base, cfg.final_eval_episodes, held_out)
    after = evaluate(steered, cfg.final_eval_episodes, held_out)
    curves.plot(title=f"{name} on {common.task_label(task)}")
    curves.close()
    summary = common.finetune_summary(
        algo=name, start_path=checkpoint, before=before, after=after, env_steps=stats["env_steps"],
        wall_s=time.perf_counter() - t0, final_checkpoint=out_dir / "last", best_checkpoint=out_dir / "best",
        best_eval_success=best["success_rate"], eval_seeds=[cfg.eval_seed, cfg.eval_episodes],
        held_out_seeds=[held_out, cfg.final_eval_episodes], grad_steps=stats["grad_steps"], train_wall_s=stats["wall_s"],
        stopped_by=stats["stopped_by"], base_parameter_hash=base_hash, base_unchanged=True, seed=seed,
        target_clip=cfg.target_clip)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary

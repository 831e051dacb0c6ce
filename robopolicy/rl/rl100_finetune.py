"""`robopolicy finetune algo=rl100`: RL-100's run, from an imitation checkpoint to out_dir/{offline,last,best,final}.

The method's pieces are in rl/rl100.py (the gate, the collection, the critics, the offline PPO step, the CM head);
this module runs them in order, logs, saves, and resumes a stopped run (`algo.resume_from=<out_dir>/last`,
rl/rl100_resume.py). last/ is written after every offline iteration and at every online evaluation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from robopolicy.policies.base import GenerativePolicy
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.registry import build_config
from robopolicy.rl import common, rl100_resume
from robopolicy.rl.chain import step_log_probs
from robopolicy.rl.curves import rate_text
from robopolicy.rl.il_retrain import DemoBatches, SuccessfulChunks, retrain_imitation
from robopolicy.rl.iql import IQLCritics
from robopolicy.rl.ppo import PPO, PPOHooks, ValueCritic
from robopolicy.rl.rl100 import (
    RL100Config,
    Transitions,
    collect_episodes,
    critic_fit_report,
    distill_consistency,
    fit_critics,
    fit_dynamics,
    flat_obs,
    latency_ms,
    make_stochastic,
    offline_improve,
)


def finetune(checkpoint: str, task: dict[str, Any], algo: dict[str, Any], out_dir: Path, seed: int) -> dict:
    """RL-100 from an imitation checkpoint: offline iterations, online PPO, CM head (rl/rl100.py's docstring)."""
    cfg = build_config(RL100Config, {k: v for k, v in dict(algo).items() if k != "name"}, where="algo 'rl100'")
    cfg.validate()
    out_dir, start = common.begin_run(checkpoint, out_dir, seed, cfg.num_threads)
    policy = start.policy
    kwargs = make_stochastic(policy, cfg)
    action_key = (start.config.get("task") or {}).get("action_key", "action")
    batcher = common.ObsBatcher(policy, start.normalizer, action_key)

    data, successes = Transitions(), SuccessfulChunks(cfg.n_envs)
    progress, saved, critics = rl100_resume.RunProgress(), None, None
    if cfg.resume_from:
        saved = rl100_resume.load_state(cfg.resume_from, policy)
        progress = rl100_resume.restore_progress(saved, cfg.offline_iterations)
        rl100_resume.restore_data(saved, data, successes)
        if saved["critics"] is not None:
            critics = IQLCritics(flat_obs(data.obs[0]).shape[-1], data.actions[0].shape[-1], cfg.iql)
            rl100_resume.restore_critics(saved, critics)
    online_started = saved is not None and saved["online"] is not None
    curve_step = progress.offline_done
    critic = ppo = None
    if cfg.online_iterations > 0:
        critic = ValueCritic(policy, cfg.ppo.critic_hidden)
        ppo = PPO(policy, critic, cfg.ppo, [{"params": [p for p in policy.parameters() if p.requires_grad]}],
                  lambda o, c: (step_log_probs(policy, o, c, **kwargs), None), sample_kwargs=kwargs)
        if online_started:
            rl100_resume.restore_online(saved, critic, ppo)
            curve_step += ppo.state.iteration
    elif online_started:
        raise ValueError(f"algo.resume_from={cfg.resume_from} is in its online stage: set algo.online_iterations "
                         "> 0 (the whole online stage's count)")
    if saved is not None:
        rl100_resume.restore_rng(saved)
    curves = common.LearningCurves(out_dir, desc="rl100",
                                   resume_at=(curve_step, progress.env_steps) if saved is not None else None)
    config_name = f"config_resume{progress.env_steps}.json" if saved is not None else "config.json"
    (out_dir / config_name).write_text(json.dumps({"algo": asdict(cfg), "task": task, "seed": seed,
                                                   "checkpoint": str(checkpoint)}, indent=2, default=str))
    t0 = time.perf_counter() - progress.wall_s
    stages = progress.stages

    def evaluate(p: GenerativePolicy = policy) -> dict[str, Any]:
        return common.evaluate_success(p, start.normalizer, task, n_episodes=cfg.eval_episodes,
                                       n_workers=cfg.eval_workers, action_key=action_key)

    def save(name: str, stage: str, with_state: bool = False) -> Path:
        def state(directory: Path) -> None:
            progress.wall_s = time.perf_counter() - t0
            online = (critic, ppo) if ppo is not None and stage.startswith("online") else None
            torch.save(rl100_resume.training_state(progress, data, successes, critics, online),
                       directory / rl100_resume.STATE_FILE)

        with common.bare_head(policy):  # the checkpoint holds exactly the head's weights
            return common.save_finetuned(out_dir / name, policy, start, {"finetune": {"algo": "rl100", "stage": stage}},
                                         extra_files=state if with_state else None)

    if saved is None:
        stages["before"] = evaluate()
        curves.log(0, {"env_steps": 0, "wall_s": 0.0, "eval/success_rate": stages["before"]["success_rate"]})
    else:
        curves.message(f"[rl100] resumed from {cfg.resume_from}: {progress.offline_done} offline iterations done, "
                       f"{ppo.state.iteration if online_started else 0} online, {progress.env_steps} env steps, "
                       f"{progress.wall_s:.0f} s; {len(data.actions)} transition steps, {len(successes)} "
                       "successful chunks")
    n_demo = round(cfg.il_batch_size * cfg.il_demo_fraction)
    # Only the offline stage re-trains on demos; an online-only run must not need the start's task.store.
    uses_demos = cfg.offline_iterations > progress.offline_done and cfg.il_steps > 0 and n_demo > 0
    demos = DemoBatches(start, n_demo, seed + progress.offline_done) if uses_demos else None
    envs = common.make_chunk_envs(task, policy.spec, cfg.n_envs, cfg.context, cfg.in_process)
    steps_before = progress.env_steps  # this process's envs count from 0
    try:
        for it in range(progress.offline_done, cfg.offline_iterations):
            # The offline stage runs for minutes between bar moves: name the phase it is in.
            def phase(name: str, it: int = it) -> None:
                curves.advance(steps_before + envs.total_env_steps,
                               stage=f"offline {it + 1}/{cfg.offline_iterations}: {name}")

            phase(f"collecting {cfg.episodes_per_iteration} episodes")
            collected_from = len(data.rewards)
            roll = collect_episodes(policy, envs, batcher, cfg.episodes_per_iteration, seed + 1000 * it, kwargs, data,
                                    successes)
            progress.env_steps = steps_before + envs.total_env_steps
            phase(f"imitation re-training, {cfg.il_steps} steps")
            il_logs = retrain_imitation(policy, successes, demos, cfg.il_steps, cfg.il_lr, cfg.il_batch_size,
                                        cfg.il_demo_fraction, cfg.il_ema)
            if critics is None:
                critics = IQLCritics(flat_obs(data.obs[0]).shape[-1], data.actions[0].shape[-1], cfg.iql)
            phase(f"fitting critics, {cfg.critic_steps} steps")
            crit_logs = fit_critics(critics, data, cfg.critic_steps, cfg.batch_size)
            crit_logs.update(critic_fit_report(critics, data, collected_from))
            dynamics = None
            if cfg.ope_horizon > 0 and cfg.offline_steps > 0:
                phase(f"fitting the OPE dynamics, {cfg.dynamics.steps} steps")
                dynamics, dyn_logs = fit_dynamics(data, cfg, seed + it)
                crit_logs.update(dyn_logs)
            if cfg.offline_steps > 0:
                phase(f"gated PPO, {cfg.offline_steps} steps")
            gate = offline_improve(policy, critics, data, cfg, kwargs, dynamics)
            phase("evaluating")
            ev = evaluate()
            stages[f"offline_{it + 1}"] = {**ev, **gate, **crit_logs, **il_logs, "rollout": roll}
            progress.offline_done = it + 1
            curves.log(it + 1, {"env_steps": progress.env_steps, "wall_s": time.perf_counter() - t0,
                                "rollout/success_rate": roll.get("success_rate", float("nan")),
                                "rollout/success_recent": roll.get("success_recent", float("nan")),
                                "eval/success_rate": ev["success_rate"], "offline/accepted": gate["accepted"],
                                **({"offline/gate_best": gate["gate_best"]} if "gate_best" in gate else {}),
                                **crit_logs, **il_logs})
            offers = ", ".join(f"{h['z']:+.1f} {'yes' if h['accepted'] else 'no'}" for h in gate["gate_history"])
            curves.message(f"[rl100] offline it {it + 1} env_steps {progress.env_steps} rollout_recent "
                           f"{rate_text(roll, 'success_recent')} eval {ev['success_rate']:.2f} "
                           f"accepted {gate['accepted']}/{gate['offered']} (z and verdict of each offer: {offers or '-'})"
                           + (f"; critic Q {crit_logs['iql/q_mean']:.2f} vs return {crit_logs['iql/mc_return_mean']:.2f}"
                              f" (corr {crit_logs['iql/q_mc_corr']:.2f})" if "iql/q_mean" in crit_logs else ""))
            save("last", stage=f"offline_{it + 1}", with_state=True)
        curves.advance(progress.env_steps, stage="online" if cfg.online_iterations > 0 else "done")
        if not online_started:
            save("offline", stage="offline")
        if ppo is not None:
            run_online(cfg, ppo, policy, envs, batcher, seed, curves, progress, t0, save,
                       lambda n: common.evaluate_success(policy, start.normalizer, task, n_episodes=n,
                                                         n_workers=cfg.eval_workers, action_key=action_key),
                       common.task_label(task))
            stages["online"] = evaluate()
    finally:
        envs.close()
    train_wall = time.perf_counter() - t0
    final = save("final", stage="online" if cfg.online_iterations > 0 else "offline")
    after = stages.get("online") or stages.get(f"offline_{cfg.offline_iterations}") or evaluate()
    curves.log(cfg.offline_iterations + cfg.online_iterations + 1, {
        "env_steps": progress.env_steps, "wall_s": train_wall, "eval/success_rate": after["success_rate"], "final": 1})
    extra: dict[str, Any] = {}
    if isinstance(policy, DiffusionPolicy) and cfg.distill_steps > 0 and data.obs:
        student = distill_consistency(policy, data, cfg)
        student_eval = evaluate(student)
        cm_path = common.save_finetuned(out_dir / "cm", student, start, {"finetune": {"algo": "rl100", "stage": "cm"}},
                                        extra_config={"policy": {"name": "consistency", "config": asdict(student.cfg)}})
        obs = data.tensors()[0]
        extra = {"cm_checkpoint": str(cm_path), "cm_success": student_eval["success_rate"],
                 "cm_latency_ms": latency_ms(student, obs), "teacher_latency_ms": latency_ms(policy, obs)}
    extra["gate_history"] = {k: v["gate_history"] for k, v in stages.items() if "gate_history" in v}
    best = progress.online_best
    if "path" in best:
        extra.update(best_checkpoint=str(best["path"]), best_online_iteration=best["iteration"],
                     best_eval_success=best["rate"])
    curves.plot(title=f"RL-100 on {common.task_label(task)}")
    curves.close()
    summary = common.finetune_summary(algo="rl100", start_path=checkpoint, before=stages["before"], after=after,
                                      env_steps=progress.env_steps, wall_s=train_wall, final_checkpoint=final,
                                      seed=seed, stages={k: v.get("success_rate") for k, v in stages.items()},
                                      **extra)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_online(cfg: RL100Config, ppo: PPO, policy: GenerativePolicy, envs: Any, batcher: Any, seed: int,
               curves: common.LearningCurves, progress: rl100_resume.RunProgress, t0: float, save: Any,
               evaluate_n: Any, label: str) -> None:
    """RL-100's online stage: PPO on the same chain; every `online_eval_every` iterations an evaluation that
    saves last/ (with the resume state) and best/ when it beats every earlier evaluation of the run."""
    if ppo.state.iteration == 0:  # a resumed online stage has its own counters
        ppo.state.env_steps = progress.env_steps
    best = progress.online_best
    if "rate" not in best:
        best["rate"] = max(float(v["success_rate"]) for v in progress.stages.values())

    def online_eval(it: int) -> dict[str, float]:
        if cfg.online_eval_every <= 0 or it % cfg.online_eval_every:
            return {}
        return {"eval/success_rate": evaluate_n(cfg.online_eval_episodes)["success_rate"]}

    def online_save(it: int, row: dict[str, Any]) -> None:
        if (rate := row.get("eval/success_rate")) is None:
            return
        progress.env_steps = ppo.state.env_steps
        if rate > best["rate"]:
            best.update(rate=rate, path=str(save("best", stage=f"online_{it}")), iteration=it)
        save("last", stage=f"online_{it}", with_state=True)
        curves.plot(title=f"RL-100 on {label}")

    def online_log(it: int, row: dict[str, Any]) -> None:
        row = {**row, "wall_s": time.perf_counter() - t0}
        curves.log(cfg.offline_iterations + it, row)
        curves.message(f"[rl100] online it {it} env_steps {row['env_steps']} wall {row['wall_s']:.0f}s "
                       f"rollout_recent {rate_text(row)} "
                       f"eval {row.get('eval/success_rate', '-')} kl {row.get('ppo/approx_kl', float('nan')):.4f}")

    budget = cfg.online_wall_budget_s
    curves.start_wall_budget(None if budget is None else max(0.0, budget - ppo.state.wall_s))
    ppo.run(envs, batcher, seed + 10_000, cfg.online_iterations, budget,
            PPOHooks(evaluate=online_eval, save=online_save), online_log)
    progress.env_steps = ppo.state.env_steps


__all__ = ["finetune", "run_online"]

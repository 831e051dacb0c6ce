"""ReinFlow (ALGORITHMS.md section 6): PPO on a flow policy's Euler chain made stochastic by a learned noise net.

    x_0 ~ N(0, I);  x_{i+1} ~ N(mean_i, sigma_i^2),  mean_i = clip(x_i + v_theta(x_i, t_i, s) / K, -1, 1),
    sigma_i = NoiseNet(t_i, s) in [min_std, max_std(progress)],  t_i = i / K  (ONE grid, pitfall 1)

FlowPolicy samples and scores this chain itself once the noise net is plugged in with `set_step_std`; the
same `step_log_probs` path serves rollout-time sampling and PPO's recomputation. Only the Gaussian draw is
random (no +-3 sigma clipping of the draw, which would leave the Normal density wrong: pitfall 2), and the
log-probs are normalised per action dimension, not clamped (pitfall 3 concerns a clamp we do not port).

max_std follows ReinFlow's `learn_decay` schedule: held for `hold_ratio` of the run, then linearly annealed
to min_std + decay_ratio * (max_std - min_std). "Progress" is the larger of the iteration fraction and the
wall-budget fraction.

Saved checkpoints are ordinary FlowPolicy checkpoints (the velocity net after fine-tuning), loadable by
`robopolicy.load` and `robopolicy eval`; they sample the deterministic mean path, which is how ReinFlow
evaluates. Beside them, `reinflow_state.pt` holds what a resumed run needs: the noise net, the critic, both
optimisers, the counters (iteration, env steps, wall time) and the RNG states. `algo.resume_from=<out_dir>/last`
continues a run from there; `iterations` and `wall_budget_s` count the whole run, so raise them to go further.
The schedule then follows the longer run, except that max_std never rises above the value it had reached.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robopolicy.nn.embeddings import SinusoidalEmbedding
from robopolicy.policies.base import Chain
from robopolicy.policies.flow import FlowPolicy
from robopolicy.policies.obs_conditioning import batch_size_of
from robopolicy.policies.registry import build_config
from robopolicy.rl import common
from robopolicy.rl.chain import gaussian_entropy
from robopolicy.rl.curves import rate_text
from robopolicy.rl.ppo import PPO, PPOConfig, PPOHooks, ValueCritic


class NoiseNet(nn.Module):
    """sigma(t, s) for every (T_p, A) entry: MLP([time_emb(t), cond]) -> log-variance squashed by tanh into
    [log min_std^2, log max_std^2] (ReinFlow's ExploreNoiseNet). `max_std` is a buffer the schedule moves."""

    def __init__(self, cond_dim: int, horizon: int, action_dim: int, min_std: float, max_std: float,
                 hidden: tuple[int, ...] = (64, 64), time_dim: int = 16, time_scale: float = 1000.0):
        super().__init__()
        if not 0 < min_std <= max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {min_std}, {max_std}")
        self.shape = (horizon, action_dim)
        self.time_emb = SinusoidalEmbedding(time_dim, scale=time_scale)
        layers: list[nn.Module] = []
        d = time_dim + cond_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        layers.append(nn.Linear(d, horizon * action_dim))
        self.net = nn.Sequential(*layers)
        self.register_buffer("min_std", torch.tensor(float(min_std)))
        self.register_buffer("max_std", torch.tensor(float(max_std)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, i: int) -> torch.Tensor:
        emb = self.time_emb(t).detach()
        raw = self.net(torch.cat([emb, cond.detach()], -1))
        lo, hi = 2 * self.min_std.log(), 2 * self.max_std.clamp_min(self.min_std).log()
        logvar = lo + (hi - lo) * 0.5 * (torch.tanh(raw) + 1)
        return (0.5 * logvar).exp().reshape(x.shape[0], *self.shape)


@dataclass
class ReinFlowConfig:
    """configs/algo/reinflow.yaml. ppo: the PPO block (robopolicy/rl/ppo.py PPOConfig)."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    num_inference_steps: int = 4  # K Euler steps, 1-4 (ReinFlow: 4 on state tasks, 1 on images)
    min_std: float = 0.08
    max_std: float = 0.14
    hold_ratio: float = 0.35  # max_std held for this fraction of the run ...
    decay_ratio: float = 0.7  # ... then annealed to min_std + decay_ratio * (max_std - min_std)
    noise_hidden: tuple[int, ...] = (64, 64)
    noise_lr: float = 1e-4
    # ReinFlow's optional W2 behaviour-cloning term: bc_coef * mean ||a_theta(z) - a_start(z)||^2 over the
    # minibatch's observations, both chunks from the same x_0 by the deterministic mean path, a_start from a
    # frozen copy of the start checkpoint. It holds the fine-tuned policy near the imitation one. 0: off.
    bc_coef: float = 0.0
    iterations: int = 200
    wall_budget_s: float | None = None  # stop after this much wall time (evaluation included)
    eval_every: int = 5  # iterations; 0: only before and after
    eval_episodes: int = 20
    eval_workers: int = 2
    final_eval_episodes: int = 50
    # A JSON eval summary of the same start checkpoint on the same seeds and episode count (e.g. an earlier
    # run's eval_before.json): used instead of evaluating the start again (it is deterministic).
    before_eval_json: str | None = None
    checkpoint_every: int = 5
    # A ReinFlow checkpoint of an earlier run (its last/ or final/ directory) to continue from: the velocity
    # weights, noise net, critic, optimisers and counters. `checkpoint=` stays the imitation start (the W2
    # term's reference and the summary's "before"); iterations and wall_budget_s count the whole run.
    resume_from: str | None = None
    context: str = "spawn"
    in_process: bool = False  # run the envs in this process (tests, debugging)
    num_threads: int = 1

    def validate(self) -> None:
        self.ppo.validate()
        if not 1 <= self.num_inference_steps <= 10:
            raise ValueError(f"num_inference_steps must be in 1..10 (ReinFlow uses 1-4), got {self.num_inference_steps}")
        if not 0 < self.min_std <= self.max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")
        if not (0 <= self.hold_ratio <= 1 and 0 <= self.decay_ratio <= 1):
            raise ValueError("hold_ratio and decay_ratio must be in [0, 1]")
        if self.bc_coef < 0:
            raise ValueError(f"bc_coef must be >= 0 (0 turns the W2 term off), got {self.bc_coef}")


def max_std_at(progress: float, cfg: ReinFlowConfig) -> float:
    """ReinFlow's learn_decay upper bound on sigma at run progress in [0, 1]."""
    end = cfg.min_std + cfg.decay_ratio * (cfg.max_std - cfg.min_std)
    if progress <= cfg.hold_ratio:
        return cfg.max_std
    frac = min(1.0, (progress - cfg.hold_ratio) / max(1e-8, 1.0 - cfg.hold_ratio))
    return cfg.max_std + frac * (end - cfg.max_std)


def attach_noise_net(policy: FlowPolicy, cfg: ReinFlowConfig) -> NoiseNet:
    """Set K, build the noise net for `policy` and plug it into its Euler chain (set_step_std)."""
    if not isinstance(policy, FlowPolicy):
        raise ValueError(f"ReinFlow fine-tunes a flow head (policy=flow); the checkpoint holds {type(policy).__name__}. "
                         "Use algo=dsrl for diffusion heads")
    policy.set_inference(cfg.num_inference_steps)
    spec = policy.spec
    with torch.no_grad():
        dummy = {k: torch.zeros(1, spec.n_obs_steps, *s) for k, s in spec.obs_shapes.items()}
        cond_dim = int(policy.encode_obs(dummy).shape[-1])
    net = NoiseNet(cond_dim, spec.horizon, spec.action_dim, cfg.min_std, cfg.max_std, cfg.noise_hidden,
                   time_scale=policy.cfg.time_scale)
    policy.set_step_std(net)
    return net


def evaluate_terms(policy: FlowPolicy) -> Any:
    """PPO's callable: step log-probs and entropies (B, K) under the current velocity and noise nets."""
    def terms(obs: dict[str, torch.Tensor], chains: Chain) -> tuple[torch.Tensor, torch.Tensor]:
        lp = policy.step_log_probs(obs, chains)
        cond = policy.encode_obs(obs)
        b, k = chains.xs.shape[0], chains.n_steps
        stds = torch.stack([policy._std(chains.xs[:, i], chains.timesteps[i].expand(b), cond, i, k)
                            for i in range(k)], 1)
        return lp, gaussian_entropy(stds)
    return terms


def w2_regularizer(policy: FlowPolicy, coef: float) -> Any:
    """ReinFlow's W2 term as PPO's actor regulariser: coef * mean squared gap between `policy`'s mean-path chunk
    and a frozen copy's (taken now, i.e. the start weights), both from the same fresh x_0."""
    reference = copy.deepcopy(policy).requires_grad_(False)
    reference.set_step_std(None)  # the reference is the plain imitation flow

    def regularizer(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        noise = torch.randn(policy.noise_shape(batch_size_of(obs)))
        with torch.no_grad():
            target = reference.sample_chain(obs, noise, stochastic=False).actions
        return coef * (policy.sample_chain(obs, noise, stochastic=False).actions - target).pow(2).mean()
    return regularizer


def load_before_eval(path: Path, n_episodes: int) -> dict[str, Any]:
    """The start's evaluation from a JSON file: an earlier run's eval_before.json or `robopolicy eval`'s eval.json
    (whose figures sit under "summary"). It must cover `n_episodes`, the count the final evaluation uses."""
    before = json.loads(path.read_text())
    before = before.get("summary", before)
    if "success_rate" not in before:
        raise ValueError(f"before_eval_json={path} has no success_rate: give an eval_before.json or an eval.json")
    if int(before.get("n_episodes", -1)) != n_episodes:
        raise ValueError(f"before_eval_json={path} has n_episodes={before.get('n_episodes')}, this run evaluates "
                         f"final_eval_episodes={n_episodes}: set algo.final_eval_episodes to match")
    return before


def training_state(noise_net: NoiseNet, critic: ValueCritic, ppo: PPO, best_rate: float) -> dict[str, Any]:
    """reinflow_state.pt's contents: everything besides the velocity weights that a resumed run needs."""
    return {"noise_net": noise_net.state_dict(), "critic": critic.state_dict(), "ppo": ppo.training_state(),
            "best_rate": best_rate, "iteration": ppo.state.iteration, "env_steps": ppo.state.env_steps,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}


def resume_training(path: str | Path, policy: FlowPolicy, noise_net: NoiseNet, critic: ValueCritic,
                    ppo: PPO) -> dict[str, Any]:
    """Load a ReinFlow checkpoint's velocity weights and reinflow_state.pt into this run's objects.

    Returns the saved state (for its best_rate). Raises with the fix when `path` is not a ReinFlow checkpoint
    or was fine-tuned from a head of another shape."""
    saved, state = common.open_resume(path, "reinflow_state.pt", "reinflow", "its final/ and best/ hold one too")
    try:
        with common.bare_head(policy):
            policy.load_state_dict(saved.policy.state_dict())
        noise_net.load_state_dict(state["noise_net"])
        critic.load_state_dict(state["critic"])
    except RuntimeError as e:
        raise ValueError(f"algo.resume_from={path} does not fit this run (a different start, K or critic size?): "
                         f"{str(e).splitlines()[0]}") from None
    if "ppo" in state:
        ppo.load_training_state(state["ppo"])
    else:  # written before resume existed: counters only, Adam's moments start afresh
        ppo.state.iteration, ppo.state.env_steps = int(state["iteration"]), int(state["env_steps"])
    if "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
    return state


def build_config_from(algo: dict[str, Any]) -> ReinFlowConfig:
    algo = {k: v for k, v in dict(algo).items() if k != "name"}
    cfg = build_config(ReinFlowConfig, algo, where="algo 'reinflow'")
    cfg.validate()
    return cfg


def finetune(checkpoint: str, task: dict[str, Any], algo: dict[str, Any], out_dir: Path, seed: int) -> dict:
    """ReinFlow from an imitation flow checkpoint on `task`; writes out_dir/{last,final}, curves, summary.json."""
    cfg = build_config_from(algo)
    out_dir, start = common.begin_run(checkpoint, out_dir, seed, cfg.num_threads)
    policy = start.policy
    noise_net = attach_noise_net(policy, cfg)  # type: ignore[arg-type]
    critic = ValueCritic(policy, cfg.ppo.critic_hidden)
    action_key = (start.config.get("task") or {}).get("action_key", "action")
    batcher = common.ObsBatcher(policy, start.normalizer, action_key)
    velocity_params = [p for n, p in policy.named_parameters() if not n.startswith("step_std.")]
    ppo = PPO(policy, critic, cfg.ppo, [{"params": velocity_params, "lr": cfg.ppo.actor_lr},
                                        {"params": list(noise_net.parameters()), "lr": cfg.noise_lr}],
              evaluate_terms(policy), actor_regularizer=w2_regularizer(policy, cfg.bc_coef) if cfg.bc_coef > 0 else None)
    saved = resume_training(cfg.resume_from, policy, noise_net, critic, ppo) if cfg.resume_from else None
    # The bar's total is the iteration budget's env steps (a wall budget may stop the run earlier).
    curves = common.LearningCurves(out_dir, desc="reinflow", total_env_steps=cfg.iterations * cfg.ppo.n_envs
                                   * cfg.ppo.n_steps * policy.spec.n_action_steps,
                                   resume_at=(ppo.state.iteration, ppo.state.env_steps) if saved else None)
    config_name = f"config_resume{ppo.state.iteration}.json" if saved else "config.json"
    (out_dir / config_name).write_text(json.dumps({"algo": asdict(cfg), "task": task, "seed": seed,
                                                   "checkpoint": str(checkpoint)}, indent=2, default=str))

    def evaluate(n: int) -> dict[str, Any]:
        return common.evaluate_success(policy, start.normalizer, task, n_episodes=n, n_workers=cfg.eval_workers,
                                       action_key=action_key)

    def save(name: str) -> Path:
        def extra(directory: Path) -> None:
            torch.save(training_state(noise_net, critic, ppo, best["rate"]), directory / "reinflow_state.pt")
        with common.bare_head(policy):  # the checkpoint holds exactly a FlowPolicy's weights
            return common.save_finetuned(
                out_dir / name, policy, start,
                {"finetune": {"algo": "reinflow", "iteration": ppo.state.iteration, "env_steps": ppo.state.env_steps,
                              "sampler": "deterministic Euler mean path (ReinFlow's evaluation); the noise net "
                                         "is in reinflow_state.pt"}},
                extra_files=extra)

    before_file = out_dir / "eval_before.json"
    if saved is not None and before_file.is_file():  # resumed in the same out_dir: the start was evaluated
        before = load_before_eval(before_file, cfg.final_eval_episodes)
    else:
        if cfg.before_eval_json:
            before = load_before_eval(Path(cfg.before_eval_json), cfg.final_eval_episodes)
        else:
            before = evaluate(cfg.final_eval_episodes)
        before_file.write_text(json.dumps(before, indent=2, default=str))
    if saved is None:
        curves.log(0, {"env_steps": 0, "wall_s": 0.0, "eval/success_rate": before["success_rate"]})
    else:
        curves.message(f"[reinflow] resumed from {cfg.resume_from} at iteration {ppo.state.iteration}, "
                       f"{ppo.state.env_steps} env steps, {ppo.state.wall_s:.0f} s")
    envs = common.make_chunk_envs(task, policy.spec, cfg.ppo.n_envs, cfg.context, cfg.in_process)
    best = {"rate": float(saved.get("best_rate", before["success_rate"])) if saved else before["success_rate"]}

    # Raising the budgets on resume moves "progress" back; the bound still never rises above where it stood.
    std_cap = float(noise_net.max_std) if saved else cfg.max_std

    def before_iteration(it: int, progress: float) -> dict[str, float]:
        noise_net.max_std.fill_(min(std_cap, max_std_at(progress, cfg)))
        return {"noise/max_std": float(noise_net.max_std), "progress": progress}

    def periodic_eval(it: int) -> dict[str, float]:
        if cfg.eval_every <= 0 or it % cfg.eval_every:
            return {}
        s = evaluate(cfg.eval_episodes)
        return {"eval/success_rate": s["success_rate"], "eval/wall_s": s["wall_s"]}

    def periodic_save(it: int, row: dict[str, Any]) -> None:
        if cfg.checkpoint_every > 0 and it % cfg.checkpoint_every == 0:
            save("last")
            curves.plot(title=f"ReinFlow on {common.task_label(task)}")
        rate = row.get("eval/success_rate")
        if rate is not None and rate > best["rate"]:
            best["rate"] = rate
            save("best")

    def log(it: int, row: dict[str, Any]) -> None:
        curves.log(it, row)
        curves.message(f"[reinflow] it {it} env_steps {row['env_steps']} wall {row['wall_s']:.0f}s "
                       f"rollout_recent {rate_text(row)} "
                       f"eval {row.get('eval/success_rate', '-')} kl {row.get('ppo/approx_kl', float('nan')):.4f} "
                       f"clipfrac {row.get('ppo/clipfrac', float('nan')):.2f}")

    if cfg.wall_budget_s is not None:  # a resumed run has spent part of it already
        curves.start_wall_budget(cfg.wall_budget_s - ppo.state.wall_s)
    try:
        ppo.run(envs, batcher, seed=seed, iterations=cfg.iterations, wall_budget_s=cfg.wall_budget_s,
                hooks=PPOHooks(before_iteration=before_iteration, evaluate=periodic_eval, save=periodic_save),
                log=log)
    finally:
        envs.close()
    train_wall = ppo.state.wall_s  # the training loop (rollouts, updates, periodic evals), not the before/after evals
    final = save("final")
    after = evaluate(cfg.final_eval_episodes)
    curves.log(ppo.state.iteration, {"env_steps": ppo.state.env_steps, "wall_s": train_wall,
                                     "eval/success_rate": after["success_rate"], "final": 1})
    curves.plot(title=f"ReinFlow on {common.task_label(task)}")
    curves.close()
    summary = common.finetune_summary(algo="reinflow", start_path=checkpoint, before=before, after=after,
                                      env_steps=ppo.state.env_steps, wall_s=train_wall, final_checkpoint=final,
                                      iterations=ppo.state.iteration, seed=seed, curves=str(out_dir / "curves.png"))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["NoiseNet", "ReinFlowConfig", "attach_noise_net", "finetune", "max_std_at", "resume_training",
           "training_state", "w2_regularizer"]

"""RL-100 (ALGORITHMS.md section 8): iterative offline RL with an OPE gate, online PPO, one-step CM head.

Per offline iteration: collect episodes with the accepted policy (chunk-level transitions, appended to the
dataset), re-train the policy by imitation on its demos and the successful rollouts so far (rl/il_retrain.py;
RL-100's Algorithm 1 re-trains the IL policy on the merged data every iteration), fit IQL critics
(robopolicy/rl/iql.py), then PPO on the denoising chain against the frozen reference pi_old: chains are
sampled from pi_old at dataset states, every denoising step shares the IQL advantage A = Q(s, a) - V(s) of the
final action (normalised), ratios are per step on the step's log-prob per dimension (`offline_logprob_per_dim`
=false: summed over the chunk, as RL-100's code), and the clip range decays linearly.
Every `gate_every` steps the OPE estimate J(pi) (below) must beat the best so far to replace pi_old (with
`gate_min_z` > 0, by that many standard errors of the per-state differences: OPEGate); updates that do not are
kept optimising against the old reference, and the iteration ends with the last accepted policy. Then online PPO
on the same chain (robopolicy/rl/ppo.py), and for a diffusion head a one-step consistency student
(policies/consistency.py) distilled from the fine-tuned teacher. The run itself (logs, checkpoints, resume) is
rl/rl100_finetune.py.

The OPE estimate, per recorded start state with the candidate's mean-path chunks: with `ope_horizon` = H > 0
(the default, RL-100's gate) the H-chunk return in a learned dynamics ensemble refitted every iteration,
bootstrapped with Q (rl/dynamics.py); with 0, the critic's one-step AM-Q, Q(s, pi(s)). Simplification, stated:
one optimizer step covers all K denoising steps of a batch (the official code takes one per step). The chain is
stochastic DDIM (eta, stds clipped below at min_std) for diffusion heads, and Euler with a fixed per-step std for
flow heads.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robopolicy.data.schema import key_kind
from robopolicy.policies.base import GenerativePolicy
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.flow import FlowPolicy
from robopolicy.rl.chain import step_log_probs, stored_step_log_probs
from robopolicy.rl.dynamics import ChunkDynamics, DynamicsConfig, ObsLayout
from robopolicy.rl.il_retrain import SuccessfulChunks
from robopolicy.rl.iql import IQLConfig, IQLCritics, monte_carlo_returns
from robopolicy.rl.ppo import PPOConfig


@dataclass
class RL100Config:
    """configs/algo/rl100.yaml."""

    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(clip_eps=0.2, actor_lr=3e-6))  # online stage
    iql: IQLConfig = field(default_factory=IQLConfig)
    num_inference_steps: int = 10  # DDIM steps (diffusion) or Euler steps (flow)
    eta: float = 1.0  # stochastic DDIM
    min_std: float = 0.0067  # clip_std_min of the DDIM step stds
    flow_std: float = 0.1  # per-step std of a flow head's Euler chain
    offline_iterations: int = 2
    episodes_per_iteration: int = 32
    il_steps: int = 300  # imitation re-training per iteration on demos + successful rollouts; 0 disables
    il_lr: float = 1e-4
    il_batch_size: int = 128
    il_demo_fraction: float = 0.5  # share of each re-training batch drawn from the start checkpoint's demos
    il_ema: float = 0.99  # the re-trained policy is the EMA of its weights over the re-training steps; 0: raw
    critic_steps: int = 3000  # 1000 left the critic under-fitted on Lift (iql/q_mc_corr 0.33 vs 0.65)
    batch_size: int = 256
    offline_steps: int = 200  # PPO steps per offline iteration
    offline_lr: float = 1e-5
    offline_clip: float = 0.25  # decayed linearly to 0 over the offline steps
    offline_logprob_per_dim: bool = True  # True: the ratio of the step log-prob's mean per dimension; False: of
                                          # its sum over the chunk, as RL-100's code (worse on Lift: 46 vs 68/100)
    gate_every: int = 50
    ope_horizon: int = 5  # H > 0: the gate's estimate is the candidate's H-chunk return in the learned dynamics
                          # ensemble, bootstrapped with Q (RL-100's OPE); 0: Q(s, pi(s)) on dataset states only
    ope_states: int = 0  # dataset states the estimate starts from: a fixed random subset of this many; 0: all
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    gate_min_z: float = 0.0  # 0: RL-100's gate (any rise of the OPE estimate); > 0: the rise, state by state,
                             # must also be this many standard errors (OPEGate)
    online_iterations: int = 0
    online_wall_budget_s: float | None = None
    online_eval_every: int = 0  # online iterations between evaluations (each saves last/, and best/ when it beats
    online_eval_episodes: int = 20  # every earlier evaluation); 0: evaluate once, after the online stage
    distill_steps: int = 500  # one-step CM head (diffusion heads only); 0 disables
    distill_lr: float = 1e-4
    distill_ema: float = 0.95  # deploy an EMA of the student (RL-100 keeps one at decay 0.95); 0: the raw student
    eval_episodes: int = 50
    eval_workers: int = 2
    n_envs: int = 8
    context: str = "spawn"
    in_process: bool = False
    num_threads: int = 1
    resume_from: str | None = None  # <out_dir>/last of an earlier run: continue it (rl/rl100_resume.py)

    def validate(self) -> None:
        self.ppo.validate()
        if self.num_inference_steps < 1 or self.gate_every < 1 or self.batch_size < 1:
            raise ValueError("num_inference_steps, gate_every and batch_size must be >= 1")
        if self.min_std < 0 or self.flow_std <= 0 or not 0 < self.offline_clip < 1:
            raise ValueError("need min_std >= 0, flow_std > 0 and 0 < offline_clip < 1")
        if self.il_steps < 0 or self.il_batch_size < 2 or not 0 <= self.il_demo_fraction <= 1:
            raise ValueError("need il_steps >= 0, il_batch_size >= 2 and 0 <= il_demo_fraction <= 1")
        if not 0 <= self.il_ema < 1:
            raise ValueError(f"il_ema must be in [0, 1), got {self.il_ema}")
        if self.ope_horizon < 0 or self.ope_states < 0:
            raise ValueError(f"need ope_horizon >= 0 and ope_states >= 0, got {self.ope_horizon}, {self.ope_states}")
        if self.ope_horizon > 0:
            self.dynamics.validate()
        if self.gate_min_z < 0:
            raise ValueError(f"gate_min_z must be >= 0 (0 is RL-100's gate), got {self.gate_min_z}")
        if self.online_eval_every < 0 or self.online_eval_episodes < 1:
            raise ValueError("need online_eval_every >= 0 and online_eval_episodes >= 1")
        if not 0 <= self.distill_ema < 1:
            raise ValueError(f"distill_ema must be in [0, 1), got {self.distill_ema}")


class OPEGate:
    """Accept a candidate only when its OPE estimate beats the best accepted so far.

    Estimates are per-state values on one fixed set of dataset states, so a candidate is compared with the best
    state by state: its rise is the mean of the differences and z = mean / standard error. RL-100's rule is
    `min_z=0` (any rise); a positive `min_z` also asks the rise to be consistent across states. The
    history keeps every offer's estimate, z and verdict."""

    def __init__(self, best: torch.Tensor, min_z: float = 0.0):
        self.best_values = best.detach().flatten().double()
        self.min_z = float(min_z)
        self.history: list[dict[str, Any]] = []

    @property
    def best(self) -> float:
        return float(self.best_values.mean())

    def offer(self, values: torch.Tensor) -> bool:
        values = values.detach().flatten().double()
        if values.shape != self.best_values.shape:
            raise ValueError(f"the OPE values cover {values.numel()} states, the gate's {self.best_values.numel()}")
        diff = values - self.best_values
        rise = float(diff.mean())
        se = float(diff.std()) / math.sqrt(diff.numel()) if diff.numel() > 1 else 0.0
        z = rise / se if se > 0 else math.copysign(math.inf, rise) if rise else 0.0
        accepted = rise > 0 and z >= self.min_z
        if accepted:
            self.best_values = values
        self.history.append({"estimate": float(values.mean()), "rise": rise, "z": z, "accepted": accepted})
        return accepted


def make_stochastic(policy: GenerativePolicy, cfg: RL100Config) -> dict[str, Any]:
    """Put the head's sampler on a stochastic chain; returns the kwargs for sample_chain / step_log_probs."""
    if isinstance(policy, DiffusionPolicy):
        policy.set_inference(scheduler="ddim", num_inference_steps=cfg.num_inference_steps, eta=cfg.eta)
        return {"min_std": cfg.min_std}
    if isinstance(policy, FlowPolicy):
        policy.set_inference(cfg.num_inference_steps)
        policy.set_step_std(torch.full((cfg.num_inference_steps,), cfg.flow_std))
        return {}
    raise ValueError(f"RL-100 needs a diffusion or flow head, got {type(policy).__name__}")


def critic_keys(obs: dict[str, Any]) -> list[str]:
    """The observation keys the critics read, in flat_obs's order (the dynamics model unflattens in it too)."""
    return sorted(k for k in obs if k != "language")


def flat_obs(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Critic input: the normalized low-dim observation history, flattened."""
    images = [k for k in obs if key_kind(k) == "image"]
    if images:
        raise ValueError(f"RL-100's critics here take low-dim observations; {images} are images. Use a state task")
    return torch.cat([obs[k].flatten(1).float() for k in critic_keys(obs)], -1)


def executed(chunk: torch.Tensor, spec: Any) -> torch.Tensor:
    """The executed part of a normalized chunk, flattened (B, T_a * A)."""
    start = spec.n_obs_steps - 1
    return chunk[:, start:start + spec.n_action_steps].flatten(1)


@dataclass
class Transitions:
    """Chunk-level dataset: normalized obs dicts, executed normalized actions, rewards, next obs, dones."""

    obs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    rewards: list[torch.Tensor] = field(default_factory=list)
    next_obs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    dones: list[torch.Tensor] = field(default_factory=list)

    def tensors(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        return (cat_obs(self.obs), torch.cat(self.actions), torch.cat(self.rewards), cat_obs(self.next_obs),
                torch.cat(self.dones))


def cat_obs(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Observation dicts of recorded steps, concatenated along the batch per key."""
    return {k: torch.cat([d[k] for d in batches]) for k in batches[0]}


@torch.no_grad()
def collect_episodes(policy: GenerativePolicy, envs: Any, batcher: Any, n_episodes: int, seed: int,
                     kwargs: dict[str, Any], data: Transitions,
                     successes: SuccessfulChunks | None = None, max_chunks: int = 10_000) -> dict[str, float]:
    """Roll the stochastic chain until `n_episodes` episodes finished and every env finished its first one;
    append every transition to `data` (and the sampled chunks of the episodes that succeed to `successes`).
    Raises after `max_chunks` chunks per env if that has not happened (an env whose episodes never end).

    Waiting for every env's first episode keeps slow episodes in the set: stopping at the n-th finished one
    would, with n near n_envs, keep the quick (mostly successful) second episodes of the fast envs in place of
    the slow envs' failures. `success_recent` in the summary is `ChunkVectorEnv.recent_success_rate`: the rate
    over every env's first episode and those that finished after them (the last `recent_episodes` of these)."""
    raw = envs.reset(seed)
    if successes is not None:
        successes.drop_pending()  # the reset abandoned the episodes the last collection left unfinished
    n_chunks = 0
    while len(envs.stats.success) < n_episodes or not envs.first_episodes_done:
        if n_chunks >= max_chunks:
            raise RuntimeError(f"RL-100's collection ran {n_chunks} chunks per env and {len(envs.stats.success)} of "
                               f"{n_episodes} episodes finished (every env's first one: {envs.first_episodes_done}): "
                               "an env never ends its episodes. Set task.max_episode_steps")
        n_chunks += 1
        obs = batcher.obs(raw)
        chain = policy.sample_chain(obs, stochastic=True, **kwargs)
        raw, reward, done, _ = envs.step(batcher.executed_actions(chain.actions))
        if successes is not None:
            successes.add(obs, chain.actions, done, envs.last_success)
        data.obs.append(obs)
        data.actions.append(executed(chain.actions, policy.spec))
        data.rewards.append(torch.as_tensor(reward))
        data.next_obs.append(batcher.obs(raw))  # after an autoreset this is the next episode's; done masks it
        data.dones.append(torch.as_tensor(done))
    summary = envs.pop_stats().summary()
    if (recent := envs.recent_success_rate) is not None:
        summary["success_recent"] = recent
    return summary


def fit_critics(critics: IQLCritics, data: Transitions, steps: int, batch_size: int) -> dict[str, float]:
    obs, act, rew, nxt, done = data.tensors()
    s, s2 = flat_obs(obs), flat_obs(nxt)
    logs: dict[str, float] = {}
    for _ in range(steps):
        idx = torch.randint(0, len(act), (batch_size,))
        logs = critics.update(s[idx], act[idx], rew[idx], s2[idx], done[idx])
    return logs


@torch.no_grad()
def critic_fit_report(critics: IQLCritics, data: Transitions, start: int) -> dict[str, float]:
    """Q(s, a) of the chunks recorded from step `start` on (one collection) against their discounted Monte-Carlo
    returns: an under-fitted critic (too few `critic_steps`) shows as a low correlation or a biased mean."""
    rewards, dones = torch.stack(data.rewards[start:]), torch.stack(data.dones[start:])
    g, complete = monte_carlo_returns(rewards, dones, critics.cfg.gamma)
    g, complete = g.flatten(), complete.flatten()
    if int(complete.sum()) < 2:
        return {}
    s = flat_obs(cat_obs(data.obs[start:]))
    q = critics.q(s, torch.cat(data.actions[start:]))[complete]
    g = g[complete]
    corr = float(torch.corrcoef(torch.stack([q, g]))[0, 1]) if float(q.std()) > 0 and float(g.std()) > 0 else 0.0
    return {"iql/q_mean": float(q.mean()), "iql/mc_return_mean": float(g.mean()), "iql/q_mc_corr": corr}


@torch.no_grad()
def ope_values(policy: GenerativePolicy, critics: IQLCritics, obs: dict[str, torch.Tensor], seed: int = 0,
               dynamics: ChunkDynamics | None = None, horizon: int = 0) -> torch.Tensor:
    """The gate's estimate per start state, (B,); their mean is J(pi). Every action is the mean-path chunk from
    noise fixed by `seed`. horizon 0: AM-Q on the given states, Q(s, pi(s)). horizon H > 0: the H-chunk return in
    `dynamics` (mean of its elites) bootstrapped with Q at the last imagined state (rl/dynamics.py)."""
    if horizon > 0 and dynamics is None:
        raise ValueError("an OPE horizon > 0 needs a fitted dynamics model")
    g = torch.Generator().manual_seed(seed)
    s = flat_obs(obs)
    layout = ObsLayout(obs, critic_keys(obs))
    carried = {k: v for k, v in obs.items() if k not in layout.keys}
    value, alive, gamma = torch.zeros(s.shape[0]), torch.ones(s.shape[0]), critics.cfg.gamma
    for h in range(horizon + 1):
        noise = torch.randn(policy.noise_shape(s.shape[0]), generator=g)
        act = executed(policy.sample_chain(layout.unflatten(s, carried), noise, stochastic=False).actions, policy.spec)
        if h == horizon:
            return value + gamma ** h * alive * critics.q(s, act)
        s, reward, p_done = dynamics.predict(s, act)
        value += gamma ** h * alive * reward
        alive = alive * (1.0 - p_done)
    raise AssertionError("unreachable")


def ope_start_states(data: Transitions, cfg: RL100Config, seed: int) -> dict[str, torch.Tensor]:
    """A fixed random subset of `ope_states` dataset states (all when 0 or fewer are recorded)."""
    obs = data.tensors()[0]
    n = flat_obs(obs).shape[0]
    if cfg.ope_states == 0 or n <= cfg.ope_states:
        return obs
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cfg.ope_states]
    return {k: v[idx] for k, v in obs.items()}


def fit_dynamics(data: Transitions, cfg: RL100Config, seed: int) -> tuple[ChunkDynamics, dict[str, float]]:
    """A fresh dynamics ensemble on every transition so far (RL-100 refits its OPE model each iteration)."""
    obs, act, rew, nxt, done = data.tensors()
    s = flat_obs(obs)
    with torch.random.fork_rng():  # leave the run's RNG stream (PPO's minibatches) as it would be without the model
        torch.manual_seed(seed)
        model = ChunkDynamics(s.shape[-1], act.shape[-1], cfg.dynamics)
        logs = model.fit(s, act, rew.float(), flat_obs(nxt), done.float(), seed=seed)
    return model, logs


def offline_improve(policy: GenerativePolicy, critics: IQLCritics, data: Transitions, cfg: RL100Config,
                    kwargs: dict[str, Any], dynamics: ChunkDynamics | None = None, seed: int = 0) -> dict[str, Any]:
    """OPE-gated PPO on the denoising chain against the frozen reference; leaves `policy` = last accepted.
    With `cfg.ope_horizon` > 0 the gate's estimate rolls `dynamics` (fit_dynamics). With `cfg.offline_steps` = 0
    there is nothing to offer: no estimate is computed and `dynamics` is not needed."""
    if cfg.offline_steps == 0:
        return {"gate_history": [], "accepted": 0, "offered": 0}
    obs_all = data.tensors()[0]
    n = flat_obs(obs_all).shape[0]
    ref = copy.deepcopy(policy).requires_grad_(False)
    starts = ope_start_states(data, cfg, seed)

    def estimate(p: GenerativePolicy) -> torch.Tensor:
        return ope_values(p, critics, starts, seed, dynamics, cfg.ope_horizon)

    gate = OPEGate(estimate(ref), cfg.gate_min_z)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.offline_lr)
    # A clip of eps on the per-dimension ratio lets the summed log-prob move by eps x dims (a loose trust region);
    # on Lift the summed ratio's tighter one did worse (docs/results.md, stop 33)
    dims = float(np.prod(policy.noise_shape(1)[1:])) if cfg.offline_logprob_per_dim else 1.0
    for step in range(cfg.offline_steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),))
        obs = {k: v[idx] for k, v in obs_all.items()}
        with torch.no_grad():
            chain = ref.sample_chain(obs, stochastic=True, **kwargs)
            old = stored_step_log_probs(chain)
            adv = critics.advantage(flat_obs(obs), executed(chain.actions, policy.spec))
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        ratio = ((step_log_probs(policy, obs, chain, **kwargs) - old) / dims).exp()
        eps = cfg.offline_clip * (1.0 - step / cfg.offline_steps)
        loss = -torch.min(ratio * adv[:, None], ratio.clamp(1 - eps, 1 + eps) * adv[:, None]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        opt.step()
        if (step + 1) % cfg.gate_every == 0 and gate.offer(estimate(policy)):
            ref.load_state_dict(policy.state_dict())
    policy.load_state_dict(ref.state_dict())
    return {"gate_best": gate.best, "gate_history": gate.history,
            "accepted": sum(h["accepted"] for h in gate.history), "offered": len(gate.history)}


def distill_consistency(teacher: DiffusionPolicy, data: Transitions, cfg: RL100Config) -> Any:
    """One-step CM student matching the teacher's DDIM-K chunk from the same noise (RL-100's deploy head)."""
    from robopolicy.policies.consistency import ConsistencyPolicy

    student = ConsistencyPolicy(teacher.spec, ConsistencyPolicy.Config(
        unet=teacher.cfg.unet, obs=teacher.cfg.obs, teacher_steps=cfg.num_inference_steps,
        student_step=teacher.cfg.num_train_timesteps - 1), teacher=teacher)
    student.model.load_state_dict(teacher.model.state_dict())  # warm start: same UNet
    student.obs_encoder.load_state_dict(teacher.obs_encoder.state_dict())
    obs_all = data.tensors()[0]
    n = flat_obs(obs_all).shape[0]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.distill_lr)
    ema = [p.detach().clone() for p in params] if cfg.distill_ema > 0 else None
    for _ in range(cfg.distill_steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),))
        loss = student.compute_loss({"obs": {k: v[idx] for k, v in obs_all.items()}})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.distill_ema)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
    return student


def latency_ms(policy: GenerativePolicy, obs: dict[str, torch.Tensor], calls: int = 20) -> float:
    """Median wall time of predict_chunk at batch 1 (after one warm-up call)."""
    one = {k: v[:1] for k, v in obs.items()}
    policy.predict_chunk(one)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        policy.predict_chunk(one)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))

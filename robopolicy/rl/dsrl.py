"""DSRL: steer a frozen diffusion / flow head by RL over its latent noise (ALGORITHMS.md section 7).

The base head is a deterministic map a = pi_dp(s, w) from initial noise w (B, T_p, A) to an action chunk;
its weights never change (`requires_grad_(False)`, and the tests compare parameter hashes). RL learns the
noise actor pi_W(w | s) of `robopolicy.policies.steered.SteeredPolicy`, which is also what is deployed.
One MDP step is one executed chunk (T_a env steps, rewards summed; rl/rollout.py).

- DSRL-SAC (`variant="sac"`): plain SAC with w as the action; the replay stores w; critic Q^W(s, w).
- DSRL-NA (`variant="na"`, noise aliasing, the paper's recommended variant): the replay stores the executed
  chunk a; an action-space critic Q^A(s, a) is trained with the bootstrap a' = pi_dp(s', w'),
  w' ~ pi_W(s'); a noise critic Q^W(s, w) is distilled from Q^A(s, pi_dp(s, w)) on *prior* noise
  w ~ N(0, I) (clipped to the actor's box); the actor maximizes Q^W.

CPU adaptations, all in the config (the official run is 3x2048 nets, UTD 20, on a GPU):
- the base head is the expensive part of DSRL-NA: its critic target calls pi_dp on `na_target_batch_size`
  rows per gradient step, and the prior pairs (s, w, pi_dp(s, w)) for the Q^W distillation are computed
  once per visited state (`prior_samples_per_state` of them) into a pool that the distillation samples,
  instead of fresh pi_dp calls at every distillation step; the targets Q^A(s, a_prior) are recomputed
  with the current Q^A each time, so only the set of prior noises is reused.
- `actor.steer: executed` steers only the T_a noise rows whose actions run (the rest stay 0): half the noise
  space at T_p = 16, T_a = 8, and none of it invisible to the reward.
- the initial temperature is small (`init_temperature`): with T_p x A = 80 noise dimensions the entropy
  term alpha * log pi would otherwise swamp a 0/1 success reward for thousands of updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from robopolicy.nn.mlp import ACTIVATIONS
from robopolicy.policies.steered import NoiseActorConfig, SteeredPolicy
from robopolicy.rl.noise_spread import noise_spread, spread_warning
from robopolicy.rl.sac import (
    ReplayBuffer,
    Temperature,
    TwinCritic,
    critic_loss,
    frozen_copy,
    polyak,
    soft_target,
)

VARIANTS = ("sac", "na")


@dataclass
class DSRLConfig:
    """Hyper-parameters (configs/algo/dsrl.yaml, dsrl_na.yaml). Official values in ALGORITHMS.md section 7."""

    total_env_steps: int = 30_000  # low-level env steps (each chunk counts the steps it actually ran)
    max_wall_s: float = 2100.0  # stop, evaluate and save when training has run this long
    n_envs: int = 8
    in_process: bool = True  # envs in this process (one thread in all); False: worker processes
    init_rollout_steps: int = 1500  # env steps with prior noise w ~ N(0, I) before learning (official 1501)
    replay_size: int = 100_000  # chunk transitions
    batch_size: int = 256
    utd: float = 1.0  # gradient steps per collected chunk transition (official 20 per env step, GPU)
    gamma: float = 0.99  # per chunk decision
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    init_temperature: float = 1e-3
    target_entropy: float = 0.0  # official target_ent 0.0 (not -dim)
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    # DSRL's official critics use Tanh (Mish was used here before 2026-12-06; neither keeps the targets in range).
    critic_activation: str = "tanh"
    # Clamp the critics' bootstrap targets to the range returns can take, e.g. [0, 1] for a 0/1 success reward
    # that ends the episode. Without it the targets of every run here climbed past that range (2.8-3.4 on reach,
    # 46 on pick-place, with Mish or Tanh critics). Our reading: the actor's max over a 64-D noise space feeds on
    # the critics' errors, and gamma 0.99 per chunk can grow that bias up to 100x. "auto": the range implied by
    # the env's per-step reward range and the task's reward scale / offset (rl/returns.py; no clamp if the env
    # declares none); [low, high]: that range; None: no clamp.
    target_clip: tuple[float, float] | str | None = "auto"
    actor: NoiseActorConfig = field(default_factory=NoiseActorConfig)
    # DSRL-NA only
    noise_critic_grad_steps: int = 2  # Q^W distillation steps per gradient step (official 10)
    na_target_batch_size: int = 64  # rows of the Q^A update (each needs one pi_dp call for its target)
    prior_samples_per_state: int = 4
    prior_pool_size: int = 100_000
    # evaluation (fixed seeds; the actor samples with seeded noise, as the eval runner and the runtime do) and checkpoints
    eval_every_env_steps: int = 5000
    eval_episodes: int = 20
    eval_seed: int = 100_000
    eval_workers: int = 1
    eval_in_process: bool = True  # all eval episodes batched in this process (rl/batched_eval.py); False: runner
    final_eval_episodes: int = 50  # base vs steered on held-out seeds at the end (summary.json)
    num_threads: int = 1
    # <out_dir>/last of an earlier run of the same variant and start: continue it, replay buffer included
    # (rl/dsrl_resume.py). total_env_steps and max_wall_s count the whole run, so raise them to go further.
    resume_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("total_env_steps", "n_envs", "batch_size", "na_target_batch_size", "prior_samples_per_state",
                     "eval_every_env_steps", "eval_episodes", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"gamma must be in [0, 1] and tau in (0, 1], got {self.gamma}, {self.tau}")
        if self.utd <= 0:
            raise ValueError(f"utd must be > 0, got {self.utd}")
        if isinstance(self.target_clip, str):
            if self.target_clip != "auto":
                raise ValueError(f"target_clip must be 'auto', [low, high] or null, got {self.target_clip!r}")
        elif self.target_clip is not None:
            if len(self.target_clip) != 2 or not self.target_clip[0] < self.target_clip[1]:
                raise ValueError(f"target_clip must be [low, high] with low < high, got {self.target_clip}")
            self.target_clip = (float(self.target_clip[0]), float(self.target_clip[1]))
        if self.critic_activation not in ACTIVATIONS:
            raise ValueError(f"critic_activation must be one of {sorted(ACTIVATIONS)}, got {self.critic_activation!r}")


class ChunkEnvs(Protocol):
    """What the training loop steps: rl/rollout.ChunkVectorEnv, or a toy with the same methods."""

    n_envs: int

    def reset(self, seed: int) -> dict[str, np.ndarray]: ...
    def step(self, chunks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int]: ...


class Batcher(Protocol):
    """Raw observations -> normalized tensors; normalized chunks -> raw executed actions (rl/common.ObsBatcher)."""

    def obs(self, raw: dict[str, np.ndarray]) -> dict[str, torch.Tensor]: ...
    def executed_actions(self, chunk: torch.Tensor) -> np.ndarray: ...


@dataclass
class TrainProgress:
    """Where the training loop stands; saved with the learner so that a resumed run continues it."""

    env_steps: int = 0
    next_eval: int = 0  # env steps at which the next evaluation runs
    credit: float = 0.0  # gradient steps owed (utd x chunk transitions collected, minus steps taken)
    wall_s: float = 0.0  # training time spent before this process (a resumed run)


class DSRLLearner:
    """The critics, optimizers and replay of DSRL-SAC or DSRL-NA around a SteeredPolicy's noise actor."""

    def __init__(self, policy: SteeredPolicy, cfg: DSRLConfig, variant: str, seed: int = 0):
        if variant not in VARIANTS:
            raise ValueError(f"DSRL variant must be one of {VARIANTS}, got {variant!r}")
        self.policy, self.cfg, self.variant = policy, cfg, variant
        spec = policy.spec
        start = spec.n_obs_steps - 1
        self.exec_slice = slice(start, min(start + spec.n_action_steps, spec.horizon))
        feat_dim = policy.actor.trunk.in_dim
        self.q_w = TwinCritic(feat_dim, policy.noise_dim, cfg.critic_hidden, activation=cfg.critic_activation)
        self.q_w_targ = frozen_copy(self.q_w)
        self.temperature = Temperature(cfg.init_temperature, cfg.target_entropy)
        self.opt_actor = torch.optim.Adam(policy.actor.parameters(), lr=cfg.actor_lr)
        self.opt_qw = torch.optim.Adam(self.q_w.parameters(), lr=cfg.critic_lr)
        self.opt_temp = torch.optim.Adam(self.temperature.parameters(), lr=cfg.temperature_lr)
        self.replay = ReplayBuffer(cfg.replay_size)
        if variant == "na":
            exec_dim = (self.exec_slice.stop - self.exec_slice.start) * spec.action_dim
            self.q_a = TwinCritic(feat_dim, exec_dim, cfg.critic_hidden, activation=cfg.critic_activation)
            self.q_a_targ = frozen_copy(self.q_a)
            self.opt_qa = torch.optim.Adam(self.q_a.parameters(), lr=cfg.critic_lr)
            self.prior_pool = ReplayBuffer(cfg.prior_pool_size)
        self.gen = torch.Generator().manual_seed(seed)
        self.grad_steps = 0
        self.progress = TrainProgress(next_eval=cfg.eval_every_env_steps)

    # ------------------------------------------------------------------ acting
    def executed(self, chunk: torch.Tensor) -> torch.Tensor:
        """The executed part of a normalized chunk, flat (B, T_a * A): what Q^A scores."""
        return chunk[:, self.exec_slice].flatten(1)

    def prior_noise(self, n: int) -> torch.Tensor:
        m = self.cfg.actor.action_magnitude
        return torch.randn(n, self.policy.noise_dim, generator=self.gen).clamp(-m, m)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], mode: str = "explore") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, flat noise w, normalized chunk) for `mode` "explore" (actor sample), "mean" or "prior"."""
        feat = self.policy.features(obs)
        if mode == "prior":
            w = self.prior_noise(feat.shape[0])
        elif mode == "mean":
            w = self.policy.actor.mean(feat)
        else:
            w, _ = self.policy.actor.sample(feat, torch.randn(feat.shape[0], self.policy.noise_dim, generator=self.gen))
        return feat, w, self.policy.base.predict_chunk(obs, self.policy.to_noise(w))

    def record(self, obs: dict[str, torch.Tensor], feat: torch.Tensor, w: torch.Tensor, chunk: torch.Tensor,
               reward: np.ndarray, next_obs: dict[str, torch.Tensor], done: np.ndarray) -> None:
        """Store a batch of chunk transitions (and, for DSRL-NA, prior pairs for the noise critic)."""
        next_feat = self.policy.features(next_obs)
        self.replay.add({"obs": obs, "feat": feat, "w": w, "a": self.executed(chunk),
                         "reward": torch.as_tensor(reward, dtype=torch.float32), "next_obs": next_obs,
                         "next_feat": next_feat, "done": torch.as_tensor(done, dtype=torch.float32)})
        if self.variant == "na":
            k = self.cfg.prior_samples_per_state
            rep = {key: v.repeat_interleave(k, 0) for key, v in obs.items()}
            w_prior = self.prior_noise(feat.shape[0] * k)
            with torch.no_grad():
                a_prior = self.policy.base.predict_chunk(rep, self.policy.to_noise(w_prior))
            self.prior_pool.add({"feat": feat.repeat_interleave(k, 0), "w": w_prior, "a": self.executed(a_prior)})

    # ------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        """One gradient step of the variant's critic(s), the actor and the temperature."""
        info = self._update_critics_sac() if self.variant == "sac" else self._update_critics_na()
        b = self.replay.sample(self.cfg.batch_size, self.gen)
        w, log_prob = self.policy.actor.sample(b["feat"])
        q = self.q_w(b["feat"], w).min(0).values
        actor_loss = (self.temperature.alpha * log_prob - q).mean()
        self.opt_actor.zero_grad()
        actor_loss.backward()
        self.opt_actor.step()
        temp_loss = self.temperature.loss(log_prob)
        self.opt_temp.zero_grad()
        temp_loss.backward()
        self.opt_temp.step()
        self.grad_steps += 1
        info.update(actor_loss=float(actor_loss.detach()), alpha=float(self.temperature.alpha),
                    entropy=float(-log_prob.mean().detach()), q_actor=float(q.mean().detach()))
        return info

    def _clip(self, y: torch.Tensor) -> torch.Tensor:
        clip = self.cfg.target_clip
        return y.clamp(*clip) if isinstance(clip, tuple) else y  # "auto" is resolved by run_finetune

    def _update_critics_sac(self) -> dict[str, float]:
        b = self.replay.sample(self.cfg.batch_size, self.gen)
        with torch.no_grad():
            w2, lp2 = self.policy.actor.sample(b["next_feat"])
            y = self._clip(soft_target(self.q_w_targ(b["next_feat"], w2), lp2, b["reward"], b["done"],
                                       self.cfg.gamma, self.temperature.alpha))
        loss = critic_loss(self.q_w, b["feat"], b["w"], y)
        self.opt_qw.zero_grad()
        loss.backward()
        self.opt_qw.step()
        polyak(self.q_w_targ, self.q_w, self.cfg.tau)
        return {"critic_loss": float(loss.detach()), "target_mean": float(y.mean())}

    def _update_critics_na(self) -> dict[str, float]:
        b = self.replay.sample(self.cfg.na_target_batch_size, self.gen)
        with torch.no_grad():  # bootstrap through the base head: a' = pi_dp(s', w'), w' ~ pi_W(s')
            w2, lp2 = self.policy.actor.sample(b["next_feat"])
            a2 = self.executed(self.policy.base.predict_chunk(b["next_obs"], self.policy.to_noise(w2)))
            y = self._clip(soft_target(self.q_a_targ(b["next_feat"], a2), lp2, b["reward"], b["done"],
                                       self.cfg.gamma, self.temperature.alpha))
        loss_a = critic_loss(self.q_a, b["feat"], b["a"], y)
        self.opt_qa.zero_grad()
        loss_a.backward()
        self.opt_qa.step()
        polyak(self.q_a_targ, self.q_a, self.cfg.tau)
        loss_w = torch.zeros(())
        for _ in range(self.cfg.noise_critic_grad_steps):  # Q^W(s, w) <- Q^A(s, pi_dp(s, w)) on prior noise
            p = self.prior_pool.sample(self.cfg.batch_size, self.gen)
            with torch.no_grad():
                target = self.q_a(p["feat"], p["a"])  # (n, B): critic j distils critic j
            loss_w = critic_loss(self.q_w, p["feat"], p["w"], target)
            self.opt_qw.zero_grad()
            loss_w.backward()
            self.opt_qw.step()
        return {"critic_loss": float(loss_a.detach()), "noise_critic_loss": float(loss_w.detach()),
                "target_mean": float(y.mean())}


def train_dsrl(learner: DSRLLearner, envs: ChunkEnvs, batcher: Batcher, seed: int,
               on_eval: Callable[[int, float], dict[str, Any]] | None = None,
               log: Callable[[int, dict[str, Any]], None] | None = None,
               progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Collect chunks with the noise actor and learn until `total_env_steps` or `max_wall_s`.

    `on_eval(env_steps, wall_s)` runs every `eval_every_env_steps` and at the end (its dict is logged);
    `log(grad_steps, row)` receives rollout and loss statistics after every evaluation interval;
    `progress(env_steps)` is called after every chunk (a progress bar).
    The loop continues from `learner.progress` (a resumed run: both budgets count the whole run; its envs
    reset with `seed + env_steps`, so it does not replay its first layouts).
    Returns {env_steps, grad_steps, wall_s, stopped_by}.
    """
    cfg = learner.cfg
    p = learner.progress
    t0 = time.perf_counter() - p.wall_s
    raw = envs.reset(seed + p.env_steps)
    obs = batcher.obs(raw)
    if envs.n_envs >= 2 and p.env_steps == 0:  # how far the noise can move the base's actions (rl/noise_spread.py)
        base = learner.policy
        spread = noise_spread(lambda o, w: base.base.predict_chunk(o, base.to_noise(w)), obs, learner.prior_noise,
                              learner.exec_slice)
        if (msg := spread_warning(spread)) is not None:
            print(f"[dsrl] warning: {msg}", flush=True)
        if log is not None:
            log(0, {f"base/{k}": v for k, v in spread.items()})
    episodes: list[float] = []
    losses: dict[str, list[float]] = {}
    stopped_by = "total_env_steps"
    while p.env_steps < cfg.total_env_steps and stopped_by != "max_wall_s":
        mode = "prior" if p.env_steps < cfg.init_rollout_steps else "explore"
        feat, w, chunk = learner.act(obs, mode)
        raw, reward, done, n = envs.step(batcher.executed_actions(chunk))
        next_obs = batcher.obs(raw)
        # A finished env returns its reset observation: the stored next_obs is only used when done == 0.
        learner.record(obs, feat, w, chunk, reward, next_obs, done)
        pop = getattr(envs, "pop_stats", None)  # ChunkVectorEnv reports episode success; a toy: reward > 0
        episodes.extend(pop().success if pop else [float(r > 0) for r, d in zip(reward, done, strict=True) if d])
        obs = next_obs
        p.env_steps += n
        if progress is not None:
            progress(p.env_steps)
        if p.env_steps >= cfg.init_rollout_steps:
            p.credit += cfg.utd * envs.n_envs
            while p.credit >= 1:
                for k, v in learner.update().items():
                    losses.setdefault(k, []).append(v)
                p.credit -= 1
        p.wall_s = time.perf_counter() - t0
        stop_now = p.wall_s > cfg.max_wall_s
        if stop_now:
            stopped_by = "max_wall_s"
        if p.env_steps >= p.next_eval or p.env_steps >= cfg.total_env_steps or stop_now:  # always eval the final actor
            p.next_eval += cfg.eval_every_env_steps
            row = {"env_steps": p.env_steps, "wall_s": p.wall_s, "grad_steps": learner.grad_steps,
                   "rollout/episodes": len(episodes),
                   "rollout/success_rate": float(np.mean(episodes)) if episodes else float("nan"),
                   **{f"loss/{k}": float(np.mean(v)) for k, v in losses.items()}}
            episodes, losses = [], {}
            if on_eval is not None:
                row.update(on_eval(p.env_steps, row["wall_s"]))
            if log is not None:
                log(learner.grad_steps, row)
    return {"env_steps": p.env_steps, "grad_steps": learner.grad_steps, "wall_s": time.perf_counter() - t0,
            "stopped_by": stopped_by}

"""PPO on the denoising-chain MDP (DPPO / ReinFlow), in CleanRL's ppo_continuous_action style.

One iteration = roll out `n_steps` chunks in each of `n_envs` envs with the stochastic chain, compute GAE
over env steps with a value critic, then `update_epochs` passes of minibatch updates. A PPO sample is one
(env step, denoising step) pair: step i of the chain executed at env step t has ratio
    r_{t,i} = exp(l_new - l_old),  l = log N(x_{i+1}; mean_theta(x_i, t_i, s), std_i^2) [/ dims]
and advantage A_t * gamma_denoising^(K-1-i). Minibatches are drawn over env steps, each with its K pairs
(the heads recompute a whole chain in one batched call). The loss:
    L = mean max(-A r, -A clip(r, 1 - eps, 1 + eps)) + vf_coef * 0.5 (V - R)^2 - ent_coef * entropy
Entropy is that of the Gaussian steps (it only has a gradient when the stds are learned, as in ReinFlow).
Updates stop early in an epoch when the approximate KL (k3 estimator) passes `target_kl`.

`PPO.run` is the loop; a method plugs in through `PPOHooks` (the per-iteration noise schedule, periodic
evaluation, checkpointing) and the `evaluate_terms` callable (step log-probs + entropies under the
current parameters).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robopolicy.data.schema import key_kind
from robopolicy.policies.base import Chain, GenerativePolicy
from robopolicy.rl.chain import (
    ChainBatch,
    cat_chains,
    denoising_discounts,
    detach_chain,
    stored_step_log_probs,
)

# (normalized obs, chains) -> (step log-probs (B, K), step entropies (B, K) or None), differentiable
EvaluateTerms = Callable[[dict[str, torch.Tensor], Chain], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class PPOConfig:
    """PPO hyper-parameters (defaults: ReinFlow / DPPO's state-task values scaled to a CPU budget)."""

    n_envs: int = 8
    n_steps: int = 20  # chunks per env per iteration (one MDP step = T_a env steps)
    gamma: float = 0.99  # per chunk
    gae_lambda: float = 0.95
    gamma_denoising: float = 1.0  # DPPO's discount along the chain (1: every step gets the env advantage)
    clip_eps: float = 0.01
    update_epochs: int = 5
    minibatch_size: int = 40  # env steps per minibatch (each carries its K denoising steps)
    actor_lr: float = 3e-5
    critic_lr: float = 5e-4
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    target_kl: float | None = 1.0
    max_grad_norm: float = 1.0
    norm_adv: bool = True
    logprob_per_dim: bool = True  # divide step log-probs by T_p * A (ReinFlow's normalize_act_space_dim)
    reward_scale: float = 1.0
    critic_hidden: tuple[int, ...] = (256, 256)
    critic_warmup_iters: int = 2  # iterations that only fit the critic (DPPO's n_critic_warmup_itr)
    # Ramp the actor's learning rates linearly over its first N updates (0: off). Adam's first steps move every
    # weight by ~lr: with the log-prob summed over a 16 x 4 chunk, the first two updates moved the chain by
    # 1.5-1.8 and 0.6-0.9 nats per denoising step, and where they landed decided the run (docs/results.md).
    actor_lr_warmup_iters: int = 0
    # Skip the actor's update when the whole rollout earned no reward: with a sparse success reward such a
    # batch carries no signal, and normalised advantages of pure critic noise drift the policy away.
    skip_rewardless_updates: bool = True
    # Keep fitting the critic over the remaining minibatches and epochs after the actor's KL early stop. The stop
    # guards the policy; without this a small target_kl also starves the critic (2 minibatches an iteration on
    # robosuite Lift at target_kl 0.03, explained variance 0-0.3). Off by default: earlier results ran without it.
    critic_after_kl_stop: bool = False

    def validate(self) -> None:
        if self.n_envs < 1 or self.n_steps < 1 or self.update_epochs < 1 or self.minibatch_size < 1:
            raise ValueError("n_envs, n_steps, update_epochs and minibatch_size must be >= 1")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1 and 0 < self.gamma_denoising <= 1):
            raise ValueError("gamma, gae_lambda in [0, 1] and gamma_denoising in (0, 1] required")
        if self.actor_lr_warmup_iters < 0:
            raise ValueError(f"actor_lr_warmup_iters must be >= 0, got {self.actor_lr_warmup_iters}")


class ValueCritic(nn.Module):
    """V(s) from the normalized observation history: an MLP (Mish) on the flattened low-dim keys.

    Image observations go through the policy's (detached) encoder, so the critic never trains it.
    """

    def __init__(self, policy: GenerativePolicy, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        spec = policy.spec
        self.low_dim_keys = [k for k in spec.obs_shapes if key_kind(k) != "image"]
        self.use_encoder = len(self.low_dim_keys) != len(spec.obs_shapes)
        self._policy = [policy]  # not a submodule: the critic owns no policy weights
        if self.use_encoder:
            with torch.no_grad():
                dummy = {k: torch.zeros(1, spec.n_obs_steps, *s) for k, s in spec.obs_shapes.items()}
                in_dim = int(policy.encode_obs(dummy).shape[-1])  # type: ignore[attr-defined]
        else:
            in_dim = sum(spec.n_obs_steps * int(np.prod(spec.obs_shapes[k])) for k in self.low_dim_keys)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.Mish()]
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.use_encoder:
            with torch.no_grad():
                return self._policy[0].encode_obs(obs).detach()  # type: ignore[attr-defined]
        return torch.cat([obs[k].flatten(1).float() for k in self.low_dim_keys], -1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(self.features(obs)).squeeze(-1)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over env steps. rewards/values/dones (T, N); dones[t] = 1 when the episode ended at step t
    (no bootstrap through it); last_value (N,) = V(s_T). Returns (advantages, returns), (T, N)."""
    t_len = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_value)
    for t in reversed(range(t_len)):
        next_value = last_value if t == t_len - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


@dataclass
class PPOHooks:
    """What a method plugs into the loop (all optional)."""

    before_iteration: Callable[[int, float], dict[str, float]] | None = None  # (iteration, progress) -> logs
    evaluate: Callable[[int], dict[str, float]] | None = None  # iteration -> logs (e.g. eval/success_rate)
    save: Callable[[int, dict[str, Any]], None] | None = None  # (iteration, last logs)
    should_stop: Callable[[], bool] | None = None


@dataclass
class PPOState:
    iteration: int = 0
    actor_updates: int = 0  # iterations that trained the actor (the learning-rate warm-up counts these)
    env_steps: int = 0
    wall_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class PPO:
    """The PPO loop over a chunk-level vector env (robopolicy/rl/rollout.py)."""

    def __init__(self, policy: GenerativePolicy, critic: ValueCritic, cfg: PPOConfig,
                 actor_param_groups: list[dict[str, Any]], evaluate_terms: EvaluateTerms,
                 sample_kwargs: dict[str, Any] | None = None,
                 actor_regularizer: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None):
        cfg.validate()
        self.policy, self.critic, self.cfg = policy, critic, cfg
        self.actor_opt = torch.optim.Adam(actor_param_groups, lr=cfg.actor_lr, eps=1e-5)
        self.actor_base_lrs = [float(g["lr"]) for g in self.actor_opt.param_groups]
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, eps=1e-5)
        self.evaluate_terms = evaluate_terms
        self.sample_kwargs = dict(sample_kwargs or {})  # e.g. {"min_std": ...} for a diffusion head
        # An extra actor loss on a minibatch's observations (ReinFlow's W2 behaviour-cloning term), added
        # as is: the method owns its coefficient.
        self.actor_regularizer = actor_regularizer
        self.state = PPOState()

    # ------------------------------------------------------------------ resume
    def training_state(self) -> dict[str, Any]:
        """What a resumed run needs beyond the networks: both optimisers (Adam's moments) and the counters."""
        st = self.state
        return {"actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "counters": {"iteration": st.iteration, "actor_updates": st.actor_updates,
                             "env_steps": st.env_steps, "wall_s": st.wall_s}}

    def load_training_state(self, saved: dict[str, Any]) -> None:
        """Restore `training_state()`'s output (optimisers built over the same parameter groups)."""
        self.actor_opt.load_state_dict(saved["actor_opt"])
        self.critic_opt.load_state_dict(saved["critic_opt"])
        # The learning rates are this run's config (a resumed run may change them), not the saved ones.
        for group, base in zip(self.actor_opt.param_groups, self.actor_base_lrs, strict=True):
            group["lr"] = base
        for group in self.critic_opt.param_groups:
            group["lr"] = self.cfg.critic_lr
        c = saved["counters"]
        self.state = PPOState(iteration=int(c["iteration"]), actor_updates=int(c["actor_updates"]),
                              env_steps=int(c["env_steps"]), wall_s=float(c["wall_s"]))

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def collect(self, envs: Any, batcher: Any, raw_obs: dict[str, np.ndarray]
                ) -> tuple[ChainBatch, dict[str, np.ndarray], dict[str, float]]:
        """`n_steps` chunks in every env with the stochastic chain; returns the batch (with GAE) and the
        last raw observation to continue from."""
        cfg = self.cfg
        obs_list, chains, old_lps, values, rewards, dones = [], [], [], [], [], []
        t_policy = 0.0
        for _ in range(cfg.n_steps):
            t0 = time.perf_counter()
            obs = batcher.obs(raw_obs)
            chain = detach_chain(self.policy.sample_chain(obs, stochastic=True, **self.sample_kwargs))
            values.append(self.critic(obs))
            old_lps.append(stored_step_log_probs(chain))  # rollout-time density (ratio = 1 check)
            actions = batcher.executed_actions(chain.actions)
            t_policy += time.perf_counter() - t0
            raw_obs, reward, done, n = envs.step(actions)
            self.state.env_steps += n
            obs_list.append(obs)
            chains.append(chain)
            rewards.append(torch.as_tensor(reward) * cfg.reward_scale)
            dones.append(torch.as_tensor(done))
        last_value = self.critic(batcher.obs(raw_obs))
        values_t, rewards_t, dones_t = torch.stack(values), torch.stack(rewards), torch.stack(dones)
        adv, ret = compute_gae(rewards_t, values_t, dones_t, last_value, cfg.gamma, cfg.gae_lambda)
        batch = ChainBatch(obs={k: torch.cat([o[k] for o in obs_list]) for k in obs_list[0]},
                           chains=cat_chains(chains), old_step_log_probs=torch.cat(old_lps),
                           advantages=adv.reshape(-1), returns=ret.reshape(-1), old_values=values_t.reshape(-1))
        return batch, raw_obs, {"time/policy_s": t_policy, "rollout/reward_mean": float(rewards_t.mean()),
                                "rollout/any_reward": float(bool((rewards_t != 0).any()))}

    # ------------------------------------------------------------------ update
    def _norm(self, lp: torch.Tensor, chains: Chain) -> torch.Tensor:
        if not self.cfg.logprob_per_dim:
            return lp
        return lp / float(np.prod(chains.xs.shape[2:]))

    def update(self, batch: ChainBatch, train_actor: bool = True) -> dict[str, float]:
        """`update_epochs` passes over the batch; returns diagnostics (means over minibatches)."""
        cfg = self.cfg
        n = len(batch)
        k = batch.chains.n_steps
        discounts = denoising_discounts(k, cfg.gamma_denoising)
        adv_all = batch.advantages
        if cfg.norm_adv and n > 1:
            adv_all = (adv_all - adv_all.mean()) / (adv_all.std() + 1e-8)
        logs: dict[str, list[float]] = {}
        first_ratio_dev = None
        stopped_early, epochs_done = False, 0
        for _epoch in range(cfg.update_epochs):
            stopped_before_epoch = stopped_early
            perm = torch.randperm(n)
            for start in range(0, n, cfg.minibatch_size):
                idx = perm[start:start + cfg.minibatch_size]
                mb = batch.select(idx)
                v = self.critic(mb.obs)
                v_loss = 0.5 * (v - mb.returns).pow(2).mean()
                stats = {"loss/value": float(v_loss.detach())}
                if train_actor and not stopped_early:
                    new_lp, entropy = self.evaluate_terms(mb.obs, mb.chains)
                    log_ratio = self._norm(new_lp, mb.chains) - self._norm(mb.old_step_log_probs, mb.chains)
                    ratio = log_ratio.exp()
                    if first_ratio_dev is None:
                        first_ratio_dev = float((ratio.detach() - 1).abs().max())
                    adv = adv_all[idx][:, None] * discounts[None]
                    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)).mean()
                    ent = entropy.mean() if entropy is not None else torch.zeros(())
                    if entropy is not None and cfg.logprob_per_dim:
                        ent = ent / float(np.prod(mb.chains.xs.shape[2:]))
                    loss = pg - cfg.ent_coef * ent + cfg.vf_coef * v_loss
                    if self.actor_regularizer is not None:
                        reg = self.actor_regularizer(mb.obs)
                        loss = loss + reg
                        stats["loss/actor_reg"] = float(reg.detach())
                    with torch.no_grad():
                        approx_kl = float(((ratio - 1) - log_ratio).mean().detach())
                        clipfrac = float(((ratio - 1).abs() > cfg.clip_eps).float().mean().detach())
                    stats.update({"loss/policy": float(pg.detach()), "loss/entropy": float(ent.detach()), "ppo/approx_kl": approx_kl,
                                  "ppo/clipfrac": clipfrac, "ppo/ratio_mean": float(ratio.mean().detach())})
                    self.actor_opt.zero_grad(set_to_none=True)
                    self.critic_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    stats["grad/actor_norm"] = float(nn.utils.clip_grad_norm_(
                        [p for g in self.actor_opt.param_groups for p in g["params"]], cfg.max_grad_norm))
                    nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                    self.actor_opt.step()
                    self.critic_opt.step()
                else:
                    self.critic_opt.zero_grad(set_to_none=True)
                    (cfg.vf_coef * v_loss).backward()
                    nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                    self.critic_opt.step()
                for key, val in stats.items():
                    logs.setdefault(key, []).append(val)
                if (train_actor and not stopped_early and cfg.target_kl is not None
                        and stats["ppo/approx_kl"] > cfg.target_kl):
                    stopped_early = True
                    if not cfg.critic_after_kl_stop:
                        break
            if not stopped_before_epoch:  # the epochs the actor trained in (as without critic_after_kl_stop)
                epochs_done += 1
            if stopped_early and not cfg.critic_after_kl_stop:
                break
        out = {key: float(np.mean(vals)) for key, vals in logs.items()}
        with torch.no_grad():
            y, pred = batch.returns, batch.old_values
            var = float(y.var())
            out["value/explained_variance"] = float("nan") if var == 0 else 1.0 - float((y - pred).var()) / var
        out.update({"ppo/epochs": float(epochs_done), "ppo/early_stop": float(stopped_early),
                    "value/return_mean": float(batch.returns.mean())})
        if first_ratio_dev is not None:
            out["ppo/first_ratio_max_dev"] = first_ratio_dev
        return out

    # ------------------------------------------------------------------ loop
    def _warm_up_actor_lr(self) -> float:
        """Set the actor groups' learning rates for the next update; returns the factor on the base rates."""
        n = self.cfg.actor_lr_warmup_iters
        scale = 1.0 if n <= 0 else min(1.0, (self.state.actor_updates + 1) / n)
        for group, base in zip(self.actor_opt.param_groups, self.actor_base_lrs, strict=True):
            group["lr"] = base * scale
        return scale

    def run(self, envs: Any, batcher: Any, seed: int, iterations: int, wall_budget_s: float | None,
            hooks: PPOHooks, log: Callable[[int, dict[str, Any]], None]) -> PPOState:
        """Iterate rollout -> GAE -> update until `iterations` or the wall budget; log every iteration."""
        t_start = time.perf_counter() - self.state.wall_s
        it = self.state.iteration
        raw_obs = envs.reset(seed + it)  # a resumed run does not replay its first layouts
        while it < iterations:
            elapsed = time.perf_counter() - t_start
            progress = max(it / max(iterations, 1), elapsed / wall_budget_s if wall_budget_s else 0.0)
            if wall_budget_s is not None and elapsed >= wall_budget_s:
                break
            if hooks.should_stop is not None and hooks.should_stop():
                break
            row: dict[str, Any] = {}
            if hooks.before_iteration is not None:
                row.update(hooks.before_iteration(it, progress))
            t0 = time.perf_counter()
            batch, raw_obs, roll = self.collect(envs, batcher, raw_obs)
            t1 = time.perf_counter()
            row.update(roll)
            row.update({f"rollout/{k}": v for k, v in envs.pop_stats().summary().items()})
            if (recent := getattr(envs, "recent_success_rate", None)) is not None:
                row["rollout/success_recent"] = recent
            rewardless = self.cfg.skip_rewardless_updates and not roll["rollout/any_reward"]
            train_actor = it >= self.cfg.critic_warmup_iters and not rewardless
            if train_actor:
                row["ppo/actor_lr_scale"] = self._warm_up_actor_lr()
            row.update(self.update(batch, train_actor=train_actor))
            self.state.actor_updates += int(train_actor)
            row["ppo/actor_skipped_rewardless"] = float(rewardless)
            t2 = time.perf_counter()
            it += 1
            self.state.iteration = it
            self.state.wall_s = time.perf_counter() - t_start
            row.update({"env_steps": self.state.env_steps, "wall_s": self.state.wall_s,
                        "time/rollout_s": t1 - t0, "time/update_s": t2 - t1})
            if hooks.evaluate is not None:
                row.update(hooks.evaluate(it))
                self.state.wall_s = time.perf_counter() - t_start
            self.state.history.append(row)
            log(it, row)
            if hooks.save is not None:
                hooks.save(it, row)
        return self.state

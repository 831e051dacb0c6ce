"""PolicyAgent: a trained Policy + its NormalizerSet behind the Agent protocol (robopolicy/agent.py).

The eval runner and the runtime hand over *raw* observation histories (images uint8 HWC, state float);
the agent normalizes them as the training data was (images -> [0, 1] CHW floats, low-dim min-max), calls
`predict_chunk`, unnormalizes the chunk and returns the T_a actions starting at the current step,
index T_o - 1 of the chunk (DESIGN.md's convention).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from robopolicy.data.normalizer import NormalizerSet
from robopolicy.data.schema import key_kind
from robopolicy.policies.base import GenerativePolicy, Policy


class PolicyAgent:
    """Agent wrapping a policy for inference on raw observations.

    Args:
        policy: a trained head (put into eval mode here).
        normalizer: the NormalizerSet it was trained with (obs keys and `action_key`).
        device: where the policy runs.
        action_key: the normalizer entry of the actions.
        env_kwargs: what the env must produce for this policy (obs_mode, image_size, ...), honoured by
            the eval runner.
        seed: when given, the initial noise of every chunk comes from a generator seeded with it, so an
            evaluation is reproducible call by call; otherwise from torch's global RNG.
    """

    def __init__(self, policy: Policy, normalizer: NormalizerSet, device: str | torch.device = "cpu",
                 action_key: str = "action", env_kwargs: dict[str, Any] | None = None, seed: int | None = None):
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.normalizer = normalizer.to(self.device)
        self.spec = policy.spec
        self.action_key = action_key
        if action_key not in normalizer:
            raise KeyError(f"the normalizer has no entry for actions '{action_key}'; it has {normalizer.keys()}")
        self.env_kwargs: dict[str, Any] = dict(env_kwargs or {})
        # A `pointcloud` entry is not a simulator argument: it becomes the wrapper that adds the key, built by
        # the same code as at recording (robopolicy/perception/env.py); the eval runner applies it per worker.
        self.env_wrapper = None
        if "pointcloud" in self.env_kwargs:
            from robopolicy.perception.env import split_pointcloud_kwargs

            self.env_kwargs, self.env_wrapper = split_pointcloud_kwargs(self.env_kwargs)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.latencies_ms: list[float] = []  # wall time of every act() call
        self.checkpoint_path: str | None = None  # set by robopolicy.load
        self.meta: dict[str, Any] = {}  # the checkpoint's meta.json, set by robopolicy.load
        self.reset()

    # ------------------------------------------------------------------ Agent protocol
    @property
    def n_obs_steps(self) -> int:
        return int(self.spec.n_obs_steps)

    @property
    def n_action_steps(self) -> int:
        return int(self.spec.n_action_steps)

    @property
    def nfe(self) -> int:
        return int(self.policy.nfe)

    def reset(self) -> None:
        """Restart the noise stream (when seeded); the policy itself keeps no state."""
        if self.seed is not None:
            self._generator = torch.Generator(device="cpu").manual_seed(int(self.seed))

    @torch.inference_mode()
    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Raw actions (B, T_a, A) for raw observation histories {key: (B, T_o, ...)}."""
        t0 = time.perf_counter()
        batch = self.prepare_obs(obs)
        b = next(iter(v for k, v in batch.items() if k != "language")).shape[0]
        noise = None
        if isinstance(self.policy, GenerativePolicy) and self._generator is not None:
            noise = torch.randn(self.policy.noise_shape(b), generator=self._generator).to(self.device)
        chunk = self.policy.predict_chunk(batch, noise=noise)
        actions = self.normalizer.unnormalize(self.action_key, chunk.float())
        start = self.n_obs_steps - 1
        out = actions[:, start:start + self.n_action_steps].cpu().numpy().astype(np.float32)
        self.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    # ------------------------------------------------------------------ helpers
    def prepare_obs(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Raw histories -> the normalized tensors the policy takes (checks keys and shapes)."""
        missing = [k for k in self.spec.obs_shapes if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing} the policy needs; got keys {sorted(obs)}. "
                           f"Make the env produce them (env_kwargs {self.env_kwargs}).")
        t_o = self.n_obs_steps
        out: dict[str, Any] = {}
        for key, shape in self.spec.obs_shapes.items():
            x = torch.as_tensor(np.asarray(obs[key]), device=self.device)
            if x.ndim != len(shape) + 2 or x.shape[1] != t_o:
                raise ValueError(f"observation '{key}' has shape {tuple(x.shape)}; expected (B, T_o={t_o}, ...) "
                                 f"with per-step shape {tuple(shape)}")
            if key_kind(key) == "image" and x.shape[-1] in (1, 3) and tuple(x.shape[2:]) != tuple(shape):
                x = x.permute(0, 1, 4, 2, 3)  # HWC (env) -> CHW (policy)
            if tuple(x.shape[2:]) != tuple(shape):
                raise ValueError(f"observation '{key}' has per-step shape {tuple(x.shape[2:])}, the policy was "
                                 f"trained on {tuple(shape)}; set the env's image_size/obs_mode to match")
            if key in self.normalizer:
                x = self.normalizer[key](x if key_kind(key) == "image" else x.float())
            elif key_kind(key) == "image":
                x = x.float() / 255.0  # DESIGN.md's image convention even without a stored normalizer
            else:
                x = x.float()
            out[key] = x.contiguous()
        if self.spec.language:
            out["language"] = list(obs.get("language", [""] * out[next(iter(out))].shape[0]))
        return out

    def set_inference(self, **kwargs: Any) -> PolicyAgent:
        """Change the head's inference settings (steps, scheduler, ...) without retraining."""
        setter = getattr(self.policy, "set_inference", None)
        if setter is None:
            raise AttributeError(f"{type(self.policy).__name__} has no inference settings to change")
        setter(**kwargs)
        return self

    def set_action_steps(self, n: int) -> PolicyAgent:
        """Execute n actions per call instead of the trained T_a (Diffusion Policy's n_action_steps is an
        inference choice too): fewer re-plans more often, for fast scenes where T_a steps open loop is long."""
        longest = self.spec.horizon - self.spec.n_obs_steps + 1
        if not 1 <= int(n) <= longest:
            raise ValueError(f"action steps must be in [1, {longest}] (horizon {self.spec.horizon} - T_o "
                             f"{self.spec.n_obs_steps} + 1), got {n}")
        self.spec = dataclasses.replace(self.spec, n_action_steps=int(n))
        return self

    def __repr__(self) -> str:
        return (f"PolicyAgent({type(self.policy).__name__}, T_o={self.n_obs_steps}, T_a={self.n_action_steps}, "
                f"nfe={self.nfe}, device={self.device})")

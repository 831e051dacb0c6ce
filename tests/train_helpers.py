"""A small real Policy and synthetic stores for the trainer's tests (not collected by pytest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robopolicy.data.episode_store import EpisodeStore
from robopolicy.policies.base import Policy, PolicySpec
from robopolicy.policies.registry import register_policy

ACTION_LOW, ACTION_HIGH = -3.0, 5.0


class MLPPolicy(Policy):
    """Deterministic regression head on low-dim observations: MLP(obs history) -> action chunk.

    The loss perturbs the targets with a little noise so that the training RNG stream matters (the resume
    test then checks that RNG states are restored).
    """

    @dataclass
    class Config:
        hidden: int = 64
        depth: int = 2
        target_noise: float = 0.01
        horizon_multiple: int = 4  # stands in for a UNet's downsampling factor

    def __init__(self, spec: PolicySpec, cfg: MLPPolicy.Config):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        in_dim = sum(int(np.prod(s)) for s in spec.obs_shapes.values()) * spec.n_obs_steps
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(d, cfg.hidden), nn.Mish()]
            d = cfg.hidden
        layers.append(nn.Linear(d, spec.horizon * spec.action_dim))
        self.net = nn.Sequential(*layers)

    @classmethod
    def validate_config(cls, spec: PolicySpec, cfg: MLPPolicy.Config) -> None:
        if spec.horizon % cfg.horizon_multiple:
            raise ValueError(f"horizon {spec.horizon} is not divisible by {cfg.horizon_multiple}, the network's "
                             f"downsampling factor; use a multiple of {cfg.horizon_multiple}")

    def _features(self, obs: dict[str, Any]) -> torch.Tensor:
        return torch.cat([obs[k].flatten(1).float() for k in self.spec.obs_shapes], dim=1)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.net(self._features(batch["obs"])).view(-1, self.spec.horizon, self.spec.action_dim)
        target = batch["action"] + self.cfg.target_noise * torch.randn_like(batch["action"])
        loss = torch.nn.functional.mse_loss(pred, target)
        return {"loss": loss, "mse_first": torch.nn.functional.mse_loss(pred[:, 0], batch["action"][:, 0])}

    def predict_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self._features(obs)).view(-1, self.spec.horizon, self.spec.action_dim)

    @property
    def nfe(self) -> int:
        return 1


register_policy("test_mlp", MLPPolicy)


def make_store(path: Path, n_episodes: int = 12, length: int = 30, seed: int = 0, image_hw: tuple | None = None,
               ) -> Path:
    """Episodes whose action is a smooth function of the state, in [ACTION_LOW, ACTION_HIGH]."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, fps=10.0)
    for e in range(n_episodes):
        t = np.arange(length)
        phase = rng.uniform(0, 2 * np.pi, 4)
        state = np.sin(t[:, None] / 5.0 + phase[None]).astype(np.float32)
        mid, half = (ACTION_HIGH + ACTION_LOW) / 2, (ACTION_HIGH - ACTION_LOW) / 2
        action = np.stack([mid + half * np.tanh(state[:, 0] + state[:, 1]),
                           mid + half * np.tanh(state[:, 2] - state[:, 3])], axis=1).astype(np.float32)
        steps = {"timestamp": 100.0 * e + t / 10.0, "state": state, "action": action}
        if image_hw is not None:
            steps["images/front"] = rng.integers(0, 255, (length, *image_hw, 3), dtype=np.uint8)
        store.add_episode(steps, attrs={"source": "expert", "success": True, "task": "synthetic"})
    return path

"""How much a frozen head's executed actions depend on its initial noise: DSRL's room to steer.

DSRL can only move a policy as far as the base head lets the noise move its actions. A head trained to
convergence on a few demos often maps almost every noise to the same chunk; then no noise actor can change
what the robot does, and a flat DSRL curve says nothing about the reward. Measured on Meta-World reach
(10 demos): a converged flow head 0.038 against 0.24 between layouts; a DDIM-10 diffusion head from the
same demos 0.16 (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Below this ratio of noise spread to layout spread the run prints a warning (the reach flow head: 0.16).
LOW_SPREAD_RATIO = 0.25


@torch.no_grad()
def noise_spread(predict: Callable[[dict[str, Any], torch.Tensor], torch.Tensor], obs: dict[str, torch.Tensor],
                 prior_noise: Callable[[int], torch.Tensor], exec_slice: slice, n_noises: int = 16) -> dict[str, float]:
    """Spread of the executed normalized actions over noises, and between the observations of `obs`.

    Args:
        predict: (obs batch, flat noise (B, D)) -> normalized chunk (B, T_p, A), e.g. the base head behind
            SteeredPolicy.to_noise.
        obs: a normalized observation batch of B >= 2 different states (tensors with batch first).
        prior_noise: n -> (n, D) noise draws in the space the actor steers.
        exec_slice: the chunk rows that run.
        n_noises: draws per observation.

    Returns: noise_spread (std over noises, averaged over states, steps and action dims), layout_spread
    (std over states of the noise-averaged executed chunk) and their ratio.
    """
    b = next(iter(v for v in obs.values() if isinstance(v, torch.Tensor))).shape[0]
    if b < 2:
        raise ValueError(f"noise_spread needs at least 2 observations to compare, got {b}")
    rep = {k: v.repeat_interleave(n_noises, dim=0) if isinstance(v, torch.Tensor) else
           [x for x in v for _ in range(n_noises)] for k, v in obs.items()}
    chunk = predict(rep, prior_noise(b * n_noises))[:, exec_slice]
    chunk = chunk.reshape(b, n_noises, *chunk.shape[1:])
    within = chunk.std(dim=1).mean().item()
    between = chunk.mean(dim=1).std(dim=0).mean().item()
    return {"noise_spread": within, "layout_spread": between, "ratio": within / max(between, 1e-8)}


def spread_warning(spread: dict[str, float]) -> str | None:
    """A message for a base head that barely responds to its noise, else None."""
    if spread["ratio"] >= LOW_SPREAD_RATIO:
        return None
    return (f"the base head's executed actions barely depend on its noise (spread {spread['noise_spread']:.3f} "
            f"over noises vs {spread['layout_spread']:.3f} between states, ratio {spread['ratio']:.2f} < "
            f"{LOW_SPREAD_RATIO}): DSRL can steer it only that far. A less converged or diffusion (DDIM) base "
            "usually leaves more room; ReinFlow changes the weights instead. Small action changes can still flip "
            "outcomes on contact-rich tasks: scripts/noise_headroom.py measures the success over noises.")

"""robopolicy: visuomotor policy heads, imitation and RL fine-tuning, a real-time runtime (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robopolicy.policy_agent import PolicyAgent


def load(path: str | Path, device: str = "cpu", seed: int | None = None, quantize: str | None = None,
         **inference: Any) -> PolicyAgent:
    """Load a checkpoint directory as an Agent that takes raw observations and returns raw actions.

    Args:
        path: a checkpoint directory (model.safetensors, config.yaml, normalizer.safetensors, meta.json),
            e.g. runs/pusht/best.
        device: where the policy runs ("cpu", "cuda", "cuda:1").
        seed: seeds the agent's noise stream (reproducible sampling); None uses torch's global RNG.
        quantize: "int8" gives the UNet's convolutions int8 weights for CPU inference (robopolicy/nn/conv1d.py;
            3.5-4.7x faster than fp32 at paper sizes; docs/results.md has the success it keeps); None: fp32.
        **inference: the head's inference settings to change without retraining (e.g. num_inference_steps=10),
            passed to `policy.set_inference`.
    """
    # Imported here so that `import robopolicy` stays light (no torch import for the CLI's --help).
    from robopolicy.streaming_agent import make_agent
    from robopolicy.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(path, device=device)
    task = loaded.config.get("task") or {}
    # A streaming head (SDP) gets a StreamingPolicyAgent, which keeps its action buffer between calls.
    agent = make_agent(loaded.policy, loaded.normalizer, device=device, action_key=task.get("action_key", "action"),
                       env_kwargs=dict(task.get("env_kwargs") or {}), seed=seed)
    agent.checkpoint_path = str(loaded.path)
    agent.meta = loaded.meta
    if inference:
        agent.set_inference(**inference)
    if quantize is not None:
        if quantize != "int8":
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        if agent.device.type != "cpu":
            raise ValueError("quantize='int8' is a CPU inference mode; on a GPU use the fp32/AMP weights")
        from robopolicy.nn.conv1d import quantize_int8_

        if quantize_int8_(agent.policy) == 0:
            raise ValueError(f"quantize='int8' applies to UNet heads; {type(agent.policy).__name__} has no UNet "
                             "convolutions to quantize: load it without quantize")
    return agent


__all__ = ["load"]

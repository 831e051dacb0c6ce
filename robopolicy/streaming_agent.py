"""StreamingPolicyAgent: a PolicyAgent that keeps Streaming Diffusion Policy's action buffer between calls.

The policy is stateless (DESIGN.md); the buffer lives here, one per stream (an episode being run). Each
`act` denoises the buffer until the first chunk is clean (N/h network calls), returns its T_a actions from
index T_o - 1, then shifts the buffer and appends fresh noise for the next call.

Streams are identified in one of two ways:
- positionally (the runtime: one robot, batch 1): row i of every call is stream i; `reset()` at the start
  of each episode clears the buffers, and a change of batch size without a reset is an error;
- by id (the eval runner): `act(obs, streams=[id, ...])` with one id per row, unique per episode; an id not
  seen before starts a fresh buffer, so rows may come in any order and any subset.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from robopolicy.data.normalizer import NormalizerSet
from robopolicy.policies.streaming import StreamingDiffusionPolicy, StreamState
from robopolicy.policy_agent import PolicyAgent


class StreamingPolicyAgent(PolicyAgent):
    """Agent for a `StreamingDiffusionPolicy`: the buffer persists between `act` calls until `reset()`."""

    streaming = True  # the eval runner passes per-episode stream ids to agents that set this

    def __init__(self, policy: StreamingDiffusionPolicy, normalizer: NormalizerSet, **kwargs: Any):
        if not isinstance(policy, StreamingDiffusionPolicy):
            raise TypeError(f"StreamingPolicyAgent needs a StreamingDiffusionPolicy, got {type(policy).__name__}; "
                            "use PolicyAgent for other heads")
        self._streams: dict[Hashable, StreamState] = {}
        self._positional_batch: int | None = None
        super().__init__(policy, normalizer, **kwargs)

    @property
    def nfe(self) -> int:
        """Network calls per control call (N / h)."""
        return int(self.policy.stream_nfe)

    @property
    def n_streams(self) -> int:
        """Buffers currently held."""
        return len(self._streams)

    def set_action_steps(self, n: int) -> StreamingPolicyAgent:
        """Not for streaming: its buffer shifts by the trained T_a per call (the chunk-wise noise levels)."""
        raise ValueError("a streaming policy executes its trained T_a per call (the buffer shifts by it); "
                         "retrain with another task.n_action_steps to change it")

    def reset(self) -> None:
        """Forget every buffer (and restart the seeded noise stream)."""
        super().reset()
        self._streams = {}
        self._positional_batch = None

    def end_stream(self, stream: Hashable) -> None:
        """Drop one stream's buffer (an episode that finished)."""
        self._streams.pop(stream, None)

    def stream_state(self, stream: Hashable) -> StreamState | None:
        """The buffer held for `stream` (batch of 1), or None."""
        return self._streams.get(stream)

    @torch.inference_mode()
    def act(self, obs: dict[str, Any], streams: Sequence[Hashable] | None = None) -> np.ndarray:
        """Raw actions (B, T_a, A); `streams` names the buffer of each row (default: row index, see module doc)."""
        t0 = time.perf_counter()
        batch = self.prepare_obs(obs)
        b = next(iter(v for k, v in batch.items() if k != "language")).shape[0]
        if streams is None:
            if self._positional_batch is not None and self._positional_batch != b:
                raise ValueError(f"batch size changed from {self._positional_batch} to {b} without reset(): the "
                                 "buffers of the previous rows would be mixed up. Call reset() at the start of an "
                                 "episode, or pass streams=[one id per row].")
            self._positional_batch = b
            streams = list(range(b))
        elif len(streams) != b or len(set(streams)) != b:
            raise ValueError(f"streams must name each of the {b} rows once, got {list(streams)}")
        policy: StreamingDiffusionPolicy = self.policy  # type: ignore[assignment]
        new = [i for i, s in enumerate(streams) if s not in self._streams]
        if new:
            noise = None  # torch's global RNG unless the agent is seeded
            if self._generator is not None:
                noise = torch.randn(policy.noise_shape(len(new)), generator=self._generator)
            fresh = policy.init_stream(len(new), noise, device=self.device)
            for j, i in enumerate(new):
                self._streams[streams[i]] = StreamState(fresh.buffer[j:j + 1], fresh.levels[j:j + 1])
        states = [self._streams[s] for s in streams]
        state = StreamState(torch.cat([s.buffer for s in states]), torch.cat([s.levels for s in states]))
        chunk, state = policy.stream_step(batch, state, generator=self._generator)
        state = policy.advance(state, generator=self._generator)
        for j, s in enumerate(streams):
            self._streams[s] = StreamState(state.buffer[j:j + 1], state.levels[j:j + 1])
        actions = self.normalizer.unnormalize(self.action_key, chunk.float())
        start = self.n_obs_steps - 1
        out = actions[:, start:start + self.n_action_steps].cpu().numpy().astype(np.float32)
        self.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    def __repr__(self) -> str:
        return (f"StreamingPolicyAgent(T_o={self.n_obs_steps}, T_a={self.n_action_steps}, "
                f"nfe_per_call={self.nfe}, streams={self.n_streams}, device={self.device})")


def make_agent(policy: Any, normalizer: NormalizerSet, **kwargs: Any) -> PolicyAgent:
    """The agent that fits `policy`: StreamingPolicyAgent for streaming heads, PolicyAgent otherwise."""
    cls = StreamingPolicyAgent if getattr(policy, "streaming", False) else PolicyAgent
    return cls(policy, normalizer, **kwargs)

"""Chunk scheduling: stamp, drop what is late, blend consecutive chunks, interpolate to the command rate.

A chunk computed from the observation taken at `t_obs` holds T_a commands; command k is due at
`t_obs + k * dt` (dt = 1 / policy rate; index 0 is the current step, DESIGN.md). Between two due times
the command is interpolated linearly (quaternions re-normalised), so a 10 Hz policy drives a 100-500 Hz
command stream smoothly. When a chunk arrives its commands whose whole interval is already in the past
are dropped (latency compensation: the arm never replays what it should have done while the policy
thought). A chunk stops covering time one `dt` after its last command; with no covering chunk the
executor returns None and the loop holds.

How chunks that overlap in time are combined is a small pluggable `Blend`:

- `TemporalEnsemble(k)` (ACT): average the commands every live chunk gives for time t with weights
  exp(-k * i), i = 0 for the oldest chunk; k = 0 is a plain mean, larger k trusts the older plan more,
  negative k the newer one.
- `LatestChunk()`: the newest chunk covering t wins, no blending. This is the **streaming** mode used with
  agents that keep their own action buffer (Streaming Diffusion Policy): each returned chunk is executed
  as soon as it arrives.
"""

from __future__ import annotations

import abc
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class ScheduledChunk:
    """Commands (T, C) with their due times, and the raw actions they came from (for recording)."""

    seq: int
    obs_time: float  # the stamp: when the observation the chunk was computed from was taken
    dt: float
    commands: np.ndarray  # (T, C) absolute commands; command k is due at t0 + k * dt
    raw: np.ndarray  # (T, A) raw policy actions
    quat_slice: slice | None = None  # columns holding a (w, x, y, z) quaternion, if any
    t0: float | None = None  # due time of commands[0]; obs_time unless late commands were dropped
    used: bool = False  # whether a command of this chunk was sent yet (for latency accounting)

    @property
    def start(self) -> float:
        return self.obs_time if self.t0 is None else self.t0

    @property
    def end(self) -> float:
        """Time after which the chunk no longer covers anything (one dt after its last command)."""
        return self.start + len(self.commands) * self.dt

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end

    def command_at(self, t: float, interpolate: bool = True) -> np.ndarray:
        """The command for time t (linear between due times; held over the last interval)."""
        x = (t - self.start) / self.dt
        k = int(np.clip(np.floor(x), 0, len(self.commands) - 1))
        if not interpolate or k + 1 >= len(self.commands):
            return self.commands[k].copy()
        frac = float(np.clip(x - k, 0.0, 1.0))
        a, b = self.commands[k], self.commands[k + 1]
        if self.quat_slice is not None and np.dot(a[self.quat_slice], b[self.quat_slice]) < 0:
            b = b.copy()
            b[self.quat_slice] *= -1  # same rotation, shortest path
        out = (1.0 - frac) * a + frac * b
        return _normalize_quat(out, self.quat_slice)

    def raw_at(self, t: float) -> np.ndarray:
        k = int(np.clip(np.floor((t - self.start) / self.dt), 0, len(self.raw) - 1))
        return self.raw[k]


def _normalize_quat(x: np.ndarray, qs: slice | None) -> np.ndarray:
    if qs is not None:
        n = np.linalg.norm(x[qs])
        if np.isfinite(n) and n > 1e-9:
            x[qs] = x[qs] / n
    return x


class Blend(abc.ABC):
    """Combines the commands of every chunk covering a time (oldest first) into one."""

    name: str

    @abc.abstractmethod
    def combine(self, chunks: list[ScheduledChunk], t: float, interpolate: bool) -> tuple[np.ndarray, ScheduledChunk]:
        """The blended command and the chunk that counts as its source (for the recorded raw action)."""


class LatestChunk(Blend):
    """No blending: the newest chunk covering t (streaming mode)."""

    name = "latest"

    def combine(self, chunks, t, interpolate):
        c = chunks[-1]
        return c.command_at(t, interpolate), c


class TemporalEnsemble(Blend):
    """ACT's temporal ensembling with weights exp(-k * i), i = 0 for the oldest covering chunk."""

    name = "ensemble"

    def __init__(self, k: float = 0.01) -> None:
        self.k = float(k)

    def combine(self, chunks, t, interpolate):
        cmds = np.stack([c.command_at(t, interpolate) for c in chunks])
        w = np.exp(-self.k * np.arange(len(chunks)))
        qs = chunks[-1].quat_slice
        if qs is not None:  # align quaternion signs with the newest before averaging
            ref = cmds[-1, qs]
            flip = (cmds[:, qs] @ ref) < 0
            cmds[flip, qs] *= -1
        out = (w[:, None] * cmds).sum(0) / w.sum()
        return _normalize_quat(out, qs), chunks[-1]


def make_blend(name: str, ensemble_k: float = 0.01) -> Blend:
    """"ensemble" (temporal ensembling), "latest", or "streaming" (= latest, for streaming agents)."""
    if name == "ensemble":
        return TemporalEnsemble(ensemble_k)
    if name in ("latest", "streaming"):
        return LatestChunk()
    raise ValueError(f"unknown blend {name!r}; use ensemble, latest or streaming")


class ActionExecutor:
    """Holds the live chunks and answers "what to command at time t".

    Args:
        dt: seconds between a chunk's commands (1 / policy rate).
        blend: how overlapping chunks combine.
        interpolate: linear interpolation between due times (False: zero-order hold).
        max_chunks: live chunks kept for blending (older ones are dropped first).
    """

    def __init__(self, dt: float, blend: Blend | None = None, interpolate: bool = True, max_chunks: int = 8) -> None:
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt}")
        self.dt = float(dt)
        self.blend = blend or TemporalEnsemble()
        self.interpolate = interpolate
        self._chunks: deque[ScheduledChunk] = deque(maxlen=max_chunks)
        self.dropped_actions = 0  # commands dropped because their time had passed when they arrived
        self.dropped_chunks = 0  # chunks that arrived entirely too late
        self.last_chunk_time: float | None = None  # when the newest chunk arrived

    def clear(self) -> None:
        self._chunks.clear()
        self.last_chunk_time = None

    def add(self, chunk: ScheduledChunk, now: float) -> int:
        """Schedule a chunk; drops its commands whose interval ended before `now`. Returns how many."""
        late = int(np.clip(np.floor((now - chunk.start) / chunk.dt), 0, len(chunk.commands)))
        if late >= len(chunk.commands):
            self.dropped_chunks += 1
            self.dropped_actions += late
            return late
        self.last_chunk_time = now  # only a chunk that still covers the future counts as progress
        if late:
            # Keep command `late` and on: the interval of command k is [t_obs + k dt, t_obs + (k+1) dt).
            chunk = ScheduledChunk(chunk.seq, chunk.obs_time, chunk.dt, chunk.commands[late:], chunk.raw[late:],
                                   chunk.quat_slice, t0=chunk.start + late * chunk.dt)
            self.dropped_actions += late
        self._chunks.append(chunk)
        return late

    def command_at(self, t: float) -> tuple[np.ndarray, ScheduledChunk] | None:
        """(command, source chunk) for time t, or None when no chunk covers t."""
        while self._chunks and self._chunks[0].end <= t:
            self._chunks.popleft()
        live = [c for c in self._chunks if c.covers(t)]
        if not live:
            return None
        return self.blend.combine(live, t, self.interpolate)

    @property
    def n_live(self) -> int:
        return len(self._chunks)

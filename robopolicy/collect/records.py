"""What a collection session records and reports: clocks, scenes, per-episode bookkeeping and outcomes.

Recorded keys (one row per step, :func:`step_row`):

- ``timestamp`` float64: when the step's observation was assembled (session clock, monotonic);
- ``state`` float32 [n_joints + 8]: joint positions, gripper width (m), EE position (m), EE quaternion
  (w, x, y, z) -- for the embedded 6-DoF arm exactly the 14-D proprio state of the sim env;
- ``action`` float32: ``action_mode=target`` [8]: the commanded EE position, quaternion and gripper width;
  ``action_mode=delta`` [7]: the change of the commanded EE position and orientation (rotation vector)
  since the previous step, and the gripper width;
- ``images/<cam>`` uint8 [H, W, 3] (and ``depth/<cam>`` uint16 when the camera gives depth, unless
  ``pointcloud.keep_depth`` is false);
- ``pointcloud`` float32 [N, 3|6] when the session has a ``pointcloud:`` config (pointclouds.py): built from
  the same frames as that step's images;
- ``timestamps/<cam>`` float64: the capture time of that frame; ``timestamps/state``: when the state was
  measured.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hardware.arm import ArmState
from hardware.camera import Frame

ACTION_MODES = ("target", "delta")


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, dt: float) -> None: ...


class MonotonicClock:
    """Wall-clock time.monotonic (the default for real robots and the real-time simulator)."""

    realtime = True

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, dt: float) -> None:
        if dt > 0:
            time.sleep(dt)


class Scene(Protocol):
    """What the session needs from a resettable scene (sim): new layouts and a success check."""

    def reset(self, seed: int) -> dict[str, Any]: ...  # at least {"language": str}
    def success(self) -> bool | None: ...


@dataclass
class EpisodeOutcome:
    """What happened to one recorded episode."""

    outcome: str  # saved | discarded
    index: int | None  # index in the store when saved
    success: bool | None
    aborted: bool
    n_steps: int
    duration_s: float
    achieved_hz: float
    dropped_frames: dict[str, int]
    reason: str
    seed: int | None
    language: str


@dataclass
class SessionResult:
    """Summary of a session: the episodes, why it ended and the loop's timing."""

    episodes: list[EpisodeOutcome] = field(default_factory=list)
    ended_by: str = ""  # done | quit | interrupt | device_lost | error
    error: str | None = None
    target_hz: float = 0.0
    achieved_hz: float = 0.0  # steps per second on the session clock
    wall_hz: float = 0.0  # steps per wall-clock second (differs in as-fast-as-possible sim)
    period_p99_ms: float = 0.0  # 99th percentile of |period - 1/fps|, ms
    overruns: int = 0  # steps that started more than one period late
    step_ms_p50: float = 0.0  # wall time spent inside one step (poll, read, command, record, preview), ms
    step_ms_p99: float = 0.0
    pointcloud_ms_p50: float = 0.0  # wall time of the `pointcloud` build inside a recorded step (0: none), ms
    pointcloud_ms_p99: float = 0.0
    n_steps: int = 0

    @property
    def saved(self) -> list[EpisodeOutcome]:
        return [e for e in self.episodes if e.outcome == "saved"]

    @property
    def n_saved(self) -> int:
        return len(self.saved)

    def summary(self) -> str:
        n_disc = sum(e.outcome == "discarded" for e in self.episodes)
        n_abort = sum(e.aborted for e in self.episodes)
        drops: dict[str, int] = {}
        for e in self.episodes:
            for k, v in e.dropped_frames.items():
                drops[k] = drops.get(k, 0) + v
        drop_txt = ", ".join(f"{k} {v}" for k, v in drops.items()) or "none"
        points = ""
        if self.pointcloud_ms_p50 > 0:
            points = f"; pointcloud build p50 {self.pointcloud_ms_p50:.1f} / p99 {self.pointcloud_ms_p99:.1f} ms"
            if self.overruns and self.target_hz > 0:
                # the build runs inside the step: say what it costs when the loop could not keep its rate
                points += (f" of a {1000.0 / self.target_hz:.0f} ms period: lower fps, pointcloud.num_points, or "
                           "use pointcloud.sampler=random to keep the rate")
        return (f"session ended ({self.ended_by}{': ' + self.error if self.error else ''}): "
                f"{self.n_saved} saved, {n_disc} discarded, {n_abort} aborted; loop {self.achieved_hz:.2f} Hz "
                f"(target {self.target_hz:g}, wall {self.wall_hz:.1f} Hz, p99 jitter {self.period_p99_ms:.1f} ms, "
                f"{self.overruns} overruns; step cost p50 {self.step_ms_p50:.1f} / p99 {self.step_ms_p99:.1f} ms); "
                f"dropped frames in recorded steps: {drop_txt}{points}")


def state_vector(s: ArmState) -> np.ndarray:
    """joints, gripper width, EE position, EE quaternion (float32)."""
    return np.concatenate([np.asarray(s.joint_positions, np.float64).reshape(-1), [s.gripper_width],
                           np.asarray(s.ee_pos, np.float64), np.asarray(s.ee_quat, np.float64)]).astype(np.float32)


def step_row(t: float, state: ArmState, action: np.ndarray, frames: Mapping[str, Frame],
             points: np.ndarray | None = None, keep_depth: bool = True) -> dict[str, Any]:
    """One recorded step: the observation of this step and the action commanded at it (DESIGN.md: action_t
    is what was sent after observing obs_t). `points`: this step's `pointcloud` (built from `frames`), or None;
    `keep_depth=False` leaves depth/<cam> out (pointcloud.keep_depth, as the sim wrapper does)."""
    step: dict[str, Any] = {
        "timestamp": np.float64(t),
        "state": state_vector(state),
        "action": action,
        "timestamps/state": np.float64(state.timestamp),
    }
    for name, fr in frames.items():
        step[f"images/{name}"] = fr.color
        step[f"timestamps/{name}"] = np.float64(fr.timestamp)
        if fr.depth is not None and keep_depth:
            step[f"depth/{name}"] = fr.depth
    if points is not None:
        step["pointcloud"] = points
    return step


def episode_attrs(*, task: str, language: str, robot: str, teleop: str, cameras: Sequence[str], fps: float,
                  seed: int | None, action_mode: str, initial_target: list[float] | None,
                  pointcloud: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attributes a teleop episode starts with (success / aborted are filled in when it ends).

    `initial_target` (delta mode only) is the commanded pose before the first delta, so the absolute
    targets can be rebuilt from the recorded actions. `pointcloud`: the PointCloudConfig (as a dict) the
    `pointcloud` key was built with, stored only when the session records one.
    """
    attrs: dict[str, Any] = {
        "task": task,
        "language": language,
        "source": "teleop",
        "robot": robot,
        "teleop": teleop,
        "cameras": list(cameras),
        "fps": fps,
        "seed": seed,
        "action_mode": action_mode,
        "state_layout": "joint_positions[n], gripper_width, ee_pos[3], ee_quat_wxyz[4]",
        "action_layout": ("ee_pos[3], ee_quat_wxyz[4], gripper_width" if action_mode == "target"
                          else "ee_dpos[3], ee_drot_rotvec[3], gripper_width"),
        "success": None,
        "aborted": False,
    }
    if action_mode == "delta":
        attrs["initial_target"] = initial_target
    if pointcloud is not None:
        attrs["pointcloud"] = pointcloud
    return attrs


def fill_timing(result: SessionResult, times: Sequence[float], busy: Sequence[float], wall_s: float,
                fps: float, pointcloud_s: Sequence[float] = ()) -> None:
    """Write the loop's timing into `result`: `times` are the steps' session-clock times, `busy` the wall
    seconds spent inside each step, `wall_s` the session's wall-clock duration, `pointcloud_s` the wall
    seconds of each `pointcloud` build (a part of `busy`)."""
    result.n_steps = len(times)
    result.achieved_hz = _rate(times)
    result.wall_hz = (len(times) / wall_s) if wall_s > 0 else 0.0
    if busy:
        result.step_ms_p50 = float(np.percentile(busy, 50) * 1000.0)
        result.step_ms_p99 = float(np.percentile(busy, 99) * 1000.0)
    if len(pointcloud_s):
        result.pointcloud_ms_p50 = float(np.percentile(pointcloud_s, 50) * 1000.0)
        result.pointcloud_ms_p99 = float(np.percentile(pointcloud_s, 99) * 1000.0)
    if len(times) > 2:
        dev = np.abs(np.diff(times) - 1.0 / fps)
        result.period_p99_ms = float(np.percentile(dev, 99) * 1000.0)


def _rate(times: Sequence[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _check_store_keys(store, cameras: Sequence[str], action_mode: str,
                      pointcloud_shape: tuple[int, int] | None = None) -> None:
    """Fail before the first episode (not at its first step) when the store was recorded with other cameras,
    another action mode, or with / without a `pointcloud` of this shape."""
    schema = getattr(store, "schema", None)
    if schema is None:
        return
    have = {k for k in schema.fields if not k.startswith("depth/")}
    want = {"timestamp", "state", "action", "timestamps/state"}
    want |= {f"images/{c}" for c in cameras} | {f"timestamps/{c}" for c in cameras}
    if pointcloud_shape is not None:
        want.add("pointcloud")
    if have != want:
        raise ValueError(f"the store at {store.path} holds keys {sorted(have)} but this session records "
                         f"{sorted(want)} (other cameras, pointcloud on / off, or not a teleop store); record "
                         "into another out=")
    if pointcloud_shape is not None and tuple(schema.fields["pointcloud"].shape) != tuple(pointcloud_shape):
        raise ValueError(f"the store at {store.path} holds pointcloud of shape {schema.fields['pointcloud'].shape}"
                         f"; this session builds {tuple(pointcloud_shape)}: set pointcloud.num_points / "
                         "pointcloud.color to the store's, or record into another out=")
    dim = 8 if action_mode == "target" else 7
    if tuple(schema.fields["action"].shape) != (dim,):
        raise ValueError(f"the store at {store.path} holds {schema.fields['action'].shape[0]}-D actions; "
                         f"action_mode={action_mode} records {dim}-D ones: use the store's action_mode or "
                         "another out=")


class _Episode:
    def __init__(self, rec, t0: float, cameras: Sequence[str], seed: int | None, language: str) -> None:
        self.rec = rec
        self.t0 = t0
        self.times: list[float] = []
        self.dropped = {c: 0 for c in cameras}
        self.seed = seed
        self.language = language

    @property
    def n_steps(self) -> int:
        return self.rec.n_steps

    def stats(self) -> dict[str, Any]:
        dur = (self.times[-1] - self.times[0]) if len(self.times) > 1 else 0.0
        return {"dropped_frames": dict(self.dropped), "n_dropped_frames": int(sum(self.dropped.values())),
                "duration_s": round(float(dur), 4), "achieved_hz": round(float(_rate(self.times)), 3)}

"""Observation assembly: the latest robot state and camera frames, each with its age; history for T_o.

Every part of an observation carries the monotonic time it was measured (the arm's `ArmState.timestamp`,
each camera's `Frame.timestamp`). The assembler records `age = now - stamp` for each part, and an
observation with a part older than `max_age_s` raises `StaleObservationError` naming the part: a stale
observation is an error, never an input to the policy.

With a `pointcloud` builder (robopolicy.perception.cameras.CameraPointCloud, set when the loaded policy needs
the key) the observation also carries `pointcloud`, built from the same frames as `images/<cam>` at the
cameras' own resolution (before `image_size` resizing, so the intrinsics stay exact) by the function that
recording and the eval runner use. Its age is the age of those frames, which are checked at assembly.

The build (~25-75 ms) is deferred: `assemble()` only captures the frames and the cameras' geometry in a
`Deferred` (robopolicy/utils/deferred.py), and the point cloud is computed once, by the first thread that
needs it: the inference worker when the policy is called (the history is stacked with `defer=True` and
resolved in `_act`), the episode recorder's writer thread, or the control loop itself only for synchronous
inference. Observations the policy never sees and nobody records are never built.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from hardware.arm import Arm, ArmState
from hardware.camera import Camera, Frame
from robopolicy.utils.deferred import Deferred, DeferredStack

PROPRIO_DIM_EXTRA = 8  # gripper width (1) + EE position (3) + EE quaternion (4), after the joints


class StaleObservationError(RuntimeError):
    """A part of the observation is older than the configured bound."""

    def __init__(self, part: str, age: float, bound: float) -> None:
        super().__init__(f"stale observation: '{part}' is {age * 1e3:.0f} ms old, over the {bound * 1e3:.0f} ms "
                         f"bound (runtime.max_obs_age_s); holding position until fresh data arrives")
        self.part, self.age, self.bound = part, age, bound


@dataclass
class Observation:
    """One assembled observation."""

    time: float  # monotonic time of assembly: the time the policy's chunk is stamped with
    values: dict[str, Any]  # "state", "images/<cam>", ...: per-step arrays (env dtypes); "pointcloud": a Deferred
    stamps: dict[str, float]  # measurement time of each part
    arm_state: ArmState
    language: str = ""

    @property
    def ages(self) -> dict[str, float]:
        """Seconds between each part's measurement and the assembly."""
        return {k: self.time - t for k, t in self.stamps.items()}

    @property
    def max_age(self) -> float:
        return max(self.ages.values()) if self.stamps else 0.0


def proprio_state(s: ArmState) -> np.ndarray:
    """joints, gripper width, EE position, EE quaternion (wxyz): the teleop recordings' and the sim's proprio."""
    return np.concatenate([np.asarray(s.joint_positions, np.float64).reshape(-1), [s.gripper_width],
                           np.asarray(s.ee_pos, np.float64), np.asarray(s.ee_quat, np.float64)]).astype(np.float32)


def sim_full_state(robot: Any) -> Callable[[ArmState], np.ndarray]:
    """The embedded env's 38-D privileged state (proprio + block poses + target) read from a SimRobot.

    Only for the simulated arm: it lets policies trained on `obs_mode=state` embedded tasks be deployed.
    """
    from sim.embedded.task_defs import COLORS

    def state(s: ArmState) -> np.ndarray:
        parts = [proprio_state(s).astype(np.float64)]
        with robot.lock:
            for name in COLORS:
                pos, quat = robot.scene.block_pose(name)
                parts += [np.asarray(pos).reshape(-1), np.asarray(quat).reshape(-1)]
            parts.append(np.asarray(robot.scene.target_pos()).reshape(-1))
        return np.concatenate(parts).astype(np.float32)

    return state


@dataclass
class ObservationAssembler:
    """Reads the arm and cameras and builds an `Observation`, rejecting stale parts.

    Args:
        arm: the connected arm.
        cameras: running cameras; each gives `images/<name>` (and `depth/<name>` when it has depth).
        state_fn: ArmState -> the `state` vector (default: `proprio_state`).
        max_age_s: bound on every part's age.
        image_size: (H, W) the policy expects; frames of another size are resized (nearest neighbour on the
            pixel grid, cheap and deterministic). None keeps the camera's size.
        pointcloud: frames by camera name -> the `pointcloud` observation (CameraPointCloud, or any callable
            with a `shape` (N, C) attribute); None: no key. Only its `prepare(frames)` (frame checks, geometry
            read) runs in the control loop's thread at assembly; the build itself (~30 ms for a 424x240, ~75 ms
            for a 640x480 depth frame on one busy core, fps_voxel, 512 points) is a `Deferred` run later by
            whichever thread first needs the value (module docstring).
    """

    arm: Arm
    cameras: Sequence[Camera] = ()
    state_fn: Callable[[ArmState], np.ndarray] = proprio_state
    max_age_s: float = 0.2
    image_size: tuple[int, int] | None = None
    pointcloud: Callable[[dict[str, Frame]], np.ndarray] | None = None  # with .shape; .prepare(frames) optional
    _last_index: dict[str, int] = field(default_factory=dict)

    def assemble(self, now: float, arm_state: ArmState | None = None, language: str = "") -> Observation:
        """The observation at `now` (monotonic); raises StaleObservationError if any part is too old."""
        state = arm_state if arm_state is not None else self.arm.read_state()
        values: dict[str, np.ndarray] = {"state": self.state_fn(state)}
        stamps: dict[str, float] = {"state": float(state.timestamp)}
        frames: dict[str, Frame] = {}
        for cam in self.cameras:
            frame = frames[cam.name] = cam.latest()
            key = f"images/{cam.name}"
            values[key] = self._resize(frame.color)
            stamps[key] = float(frame.timestamp)
            if frame.depth is not None:
                values[f"depth/{cam.name}"] = self._resize(frame.depth)
            self._last_index[cam.name] = frame.index
        obs = Observation(time=now, values=values, stamps=stamps, arm_state=state, language=language)
        for part, age in obs.ages.items():
            if age > self.max_age_s:
                raise StaleObservationError(part, age, self.max_age_s)
        builder = self.pointcloud  # read once: the daemon swaps it when it loads another policy
        if builder is not None:  # after the age check: no work on frames that are rejected anyway
            # The raw frames (their intrinsics are the cameras' own), and the recipe binds this builder: a
            # policy swapped in before the build cannot change how this observation's cloud is made.
            prepare = getattr(builder, "prepare", None)
            build = prepare(frames) if prepare is not None else partial(builder, frames)
            values["pointcloud"] = Deferred(build, builder.shape, np.float32)  # type: ignore[attr-defined]
        return obs

    def _resize(self, img: np.ndarray) -> np.ndarray:
        if self.image_size is None or tuple(img.shape[:2]) == tuple(self.image_size):
            return img
        h, w = self.image_size
        rows = (np.arange(h) * img.shape[0] / h).astype(np.int64)
        cols = (np.arange(w) * img.shape[1] / w).astype(np.int64)
        return img[rows][:, cols]


class ObservationHistory:
    """The last T_o observations, stacked as the Agent protocol wants: {key: (1, T_o, ...)}.

    At the start of an episode the history is padded by repeating the first observation (DESIGN.md).
    """

    def __init__(self, n_obs_steps: int) -> None:
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        self.n_obs_steps = int(n_obs_steps)
        self._obs: deque[Observation] = deque(maxlen=self.n_obs_steps)

    def clear(self) -> None:
        self._obs.clear()

    def push(self, obs: Observation) -> None:
        self._obs.append(obs)

    def __len__(self) -> int:
        return len(self._obs)

    def stacked(self, keys: Sequence[str] | None = None, defer: bool = False) -> dict[str, Any]:
        """{key: (1, T_o, ...)} of the newest observations, plus "language" when set.

        With `defer`, a key holding Deferred values (`pointcloud`) is a DeferredStack instead of an array, for
        the thread that runs the policy to resolve (`resolve_stacked`, called by the workers' `_act`) into the
        very array the default gives; without it, deferred values are built now, in the caller's thread.
        """
        if not self._obs:
            raise RuntimeError("no observation yet: push one before asking for the history")
        frames = list(self._obs)
        frames = [frames[0]] * (self.n_obs_steps - len(frames)) + frames
        keys = list(keys) if keys is not None else list(frames[-1].values)
        out: dict[str, Any] = {}
        for k in keys:
            items = tuple(f.values[k] for f in frames)
            if defer and any(isinstance(v, Deferred) for v in items):
                out[k] = DeferredStack(items)
            else:  # np.stack builds any Deferred (its __array__): the same array, just in this thread
                out[k] = np.stack(items)[None]
        out["language"] = [frames[-1].language]
        return out

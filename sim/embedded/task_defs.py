"""Language-instructed tasks of the embedded scene: what to do, how a layout is sampled, when it is done.

A `TaskInstance` is one concrete goal ("push the red block to the target"); a task *family* ("push",
"pick_place", "stack", "multitask") turns a seeded random generator into an instance and a layout.
Success is checked from object poses only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sim.embedded.mjcf import BLOCK_COLORS, BLOCK_HALF, TARGET_RADIUS
from sim.embedded.scene import EmbeddedScene

Kind = Literal["push", "pick_place", "stack"]
FAMILIES: tuple[str, ...] = ("push", "pick_place", "stack", "multitask")
COLORS: tuple[str, ...] = tuple(BLOCK_COLORS)

# Where blocks and the target are sampled (m, on the table plane).
SPAWN_LOW = np.array([0.36, -0.22])
SPAWN_HIGH = np.array([0.62, 0.22])
MIN_SEPARATION = 0.09  # between block centres, and between a block and the target centre
# A block counts as "in the target" when its centre is this close to the target centre.
IN_TARGET_TOL = TARGET_RADIUS - 0.01
ON_TABLE_Z = BLOCK_HALF + 0.008


@dataclass(frozen=True)
class TaskInstance:
    """One concrete goal in the scene."""

    kind: Kind
    obj: str  # the block to move
    ref: str | None = None  # the block to stack on (stack only)

    @property
    def language(self) -> str:
        """The instruction, in plain English."""
        if self.kind == "push":
            return f"push the {self.obj} block to the target"
        if self.kind == "pick_place":
            return f"put the {self.obj} block in the target"
        return f"stack the {self.obj} block on the {self.ref} block"


# The fixed instance of each single-task family; `multitask` samples kinds and colours instead.
DEFAULT_INSTANCES: dict[str, TaskInstance] = {
    "push": TaskInstance("push", "red"),
    "pick_place": TaskInstance("pick_place", "green"),
    "stack": TaskInstance("stack", "blue", "red"),
}


KINDS: tuple[Kind, ...] = ("push", "pick_place", "stack")


def check_kinds(kinds: tuple[str, ...] | list[str] | None) -> tuple[Kind, ...]:
    """The task kinds `multitask` draws from (all three when None); a clear error for an unknown or empty set."""
    if kinds is None:
        return KINDS
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"multitask kinds must be a non-empty subset of {KINDS}, got {kinds}")
    return kinds  # type: ignore[return-value]


def sample_instance(family: str, rng: np.random.Generator, kinds: tuple[Kind, ...] = KINDS) -> TaskInstance:
    """The goal of an episode: fixed for a single-task family, drawn from `rng` for `multitask`.

    `kinds` narrows `multitask` to some task kinds (e.g. push only: 3 instructions, one per colour). With all
    three kinds the draw is the same as before the option existed, so stores and seeds stay comparable."""
    if family in DEFAULT_INSTANCES:
        return DEFAULT_INSTANCES[family]
    if family != "multitask":
        raise ValueError(f"unknown embedded task family '{family}'; choose one of {', '.join(FAMILIES)}")
    kind: Kind = kinds[int(rng.integers(len(kinds)))]
    obj, ref = (str(c) for c in rng.permutation(COLORS)[:2])
    return TaskInstance(kind, obj, ref if kind == "stack" else None)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def sample_layout(
    task: TaskInstance, rng: np.random.Generator, max_tries: int = 1000
) -> tuple[dict[str, np.ndarray], dict[str, float], np.ndarray]:
    """Block positions (xy), block yaws and the target xy for an episode, by rejection sampling.

    For push and pick-and-place the straight path from the block to the target (and the spot behind
    the block where a push starts) is kept clear of the other blocks, so every layout is solvable.
    """
    for _ in range(max_tries):
        pts = rng.uniform(SPAWN_LOW, SPAWN_HIGH, size=(len(COLORS) + 1, 2))
        blocks = {c: pts[i] for i, c in enumerate(COLORS)}
        target = pts[-1]
        all_pts = list(blocks.values()) + [target]
        if any(
            np.linalg.norm(all_pts[i] - all_pts[j]) < MIN_SEPARATION
            for i in range(len(all_pts))
            for j in range(i + 1, len(all_pts))
        ):
            continue
        if task.kind in ("push", "pick_place"):
            start = blocks[task.obj]
            dist = float(np.linalg.norm(target - start))
            if task.kind == "push" and not 0.10 <= dist <= 0.22:
                continue
            u = (target - start) / dist
            behind = start - 0.08 * u
            if not np.all((behind >= SPAWN_LOW - 0.08) & (behind <= SPAWN_HIGH + 0.08)):
                continue
            others = [p for c, p in blocks.items() if c != task.obj]
            if any(_segment_distance(p, behind, target) < 0.075 for p in others):
                continue
        yaws = {c: float(rng.uniform(-np.pi / 4, np.pi / 4)) for c in COLORS}
        return blocks, yaws, target
    raise RuntimeError(f"could not sample a layout for '{task.language}' in {max_tries} tries")


def is_success(scene: EmbeddedScene, task: TaskInstance) -> bool:
    """Whether the goal holds in the scene's current state (object poses; the gripper let go)."""
    pos, _ = scene.block_pose(task.obj)
    if task.kind == "push":
        return bool(np.linalg.norm(pos[:2] - scene.target_pos()[:2]) < IN_TARGET_TOL and pos[2] < ON_TABLE_Z)
    if task.kind == "pick_place":
        return bool(
            np.linalg.norm(pos[:2] - scene.target_pos()[:2]) < IN_TARGET_TOL
            and pos[2] < ON_TABLE_Z
            and not scene.fingers_touch(task.obj)
        )
    assert task.ref is not None
    ref_pos, _ = scene.block_pose(task.ref)
    dz = pos[2] - ref_pos[2]
    return bool(
        np.linalg.norm(pos[:2] - ref_pos[:2]) < 0.6 * BLOCK_HALF
        and 2 * BLOCK_HALF - 0.005 < dz < 2 * BLOCK_HALF + 0.006
        and ref_pos[2] < ON_TABLE_Z
        and not scene.fingers_touch(task.obj)
    )

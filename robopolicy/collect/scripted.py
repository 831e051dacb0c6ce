"""A scripted TeleopDevice: plays a fixed sequence of deltas and button presses, one step per poll.

Used by the tests and by `robopolicy collect teleop=scripted` (a smoke test of the whole tool with no
input device): each episode presses `record`, draws a small square with the gripper closing half-way,
then presses the episode's ending button.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hardware.teleop import TeleopCommand, TeleopDevice

ENDINGS = ("success", "failure", "discard", "record", "quit", "none")


@dataclass
class ScriptStep:
    """One poll's worth of input."""

    dpos: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m
    drot: tuple[float, float, float] = (0.0, 0.0, 0.0)  # rad, rotation vector
    gripper: float = 1.0  # 1 open, 0 closed
    press: tuple[str, ...] = ()  # buttons down during this poll
    error: BaseException | None = field(default=None)  # raised by poll() instead of a command


class ScriptedTeleop(TeleopDevice):
    """Returns `script[i]` at the i-th poll; after the end it returns `after` (idle, or a quit press)."""

    def __init__(self, script: Sequence[ScriptStep], name: str = "scripted", after: str = "idle") -> None:
        if after not in ("idle", "quit"):
            raise ValueError(f"after must be 'idle' or 'quit', got {after!r}")
        self.script = list(script)
        self.name = name
        self.after = after
        self.n_polls = 0
        self._connected = False

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def poll(self) -> TeleopCommand:
        self._require_connected()
        i = self.n_polls
        self.n_polls += 1
        if i < len(self.script):
            step = self.script[i]
        else:
            quit_now = self.after == "quit" and (i - len(self.script)) % 2 == 0
            step = ScriptStep(press=("quit",) if quit_now else ())
        if step.error is not None:
            raise step.error
        return TeleopCommand(
            timestamp=time.monotonic(), mode="delta", pos=np.asarray(step.dpos, float),
            rot=np.asarray(step.drot, float), gripper=float(step.gripper),
            buttons={b: True for b in step.press},
        )


def square_moves(n: int, speed: float = 0.01) -> list[ScriptStep]:
    """`n` steps tracing a square in the horizontal plane; the gripper closes for the second half."""
    dirs = [(1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, -1, 0)]
    side = max(1, n // 4)
    steps = []
    for j in range(n):
        d = dirs[(j // side) % 4]
        steps.append(ScriptStep(dpos=tuple(speed * c for c in d), gripper=1.0 if j < n // 2 else 0.0))
    return steps


def episode_script(n_steps: int, ending: str, speed: float = 0.01, gap: int = 2) -> list[ScriptStep]:
    """One episode: press record, `n_steps` moves, press `ending` (none: keep going), `gap` idle polls."""
    if ending not in ENDINGS:
        raise ValueError(f"unknown ending {ending!r}; choose from {', '.join(ENDINGS)}")
    steps = [ScriptStep(press=("record",))] + square_moves(n_steps, speed)
    if ending == "none":
        return steps
    steps.append(ScriptStep(press=(ending,)))
    steps += [ScriptStep() for _ in range(gap)]
    return steps


def demo_script(endings: Sequence[str] = ("success",), n_steps: int = 20, speed: float = 0.01) -> list[ScriptStep]:
    """Several episodes back to back, one per ending."""
    out: list[ScriptStep] = []
    for e in endings:
        out += episode_script(n_steps, e, speed)
    return out

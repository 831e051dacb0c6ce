"""Keyboard teleop: held keys move the end effector, other keys are buttons.

Backends:
- "pynput": a global key listener (needs an X / Wayland-X session on Linux, or accessibility rights on macOS);
- "manual": no listener; the caller feeds key events with `press(key)` / `release(key)` / `tap(key)`, e.g. the
  teleop tool's preview window (OpenCV `waitKey` gives presses only: `tap()` moves for one poll).

While a movement key is held each poll adds `translation_step` metres / `rotation_step` radians along its axis.
A button (record, discard, ...) reads True in the first poll after its key was pressed (latched, so a short
press between two polls is not lost); the gripper key toggles the gripper.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from hardware.errors import DeviceAlreadyConnectedError, DeviceNotFoundError
from hardware.teleop import TeleopCommand, TeleopDevice

AXES = {"x": 0, "y": 1, "z": 2, "rx": 3, "ry": 4, "rz": 5}
DEFAULT_MOVES = {
    "w": "+x", "s": "-x", "a": "+y", "d": "-y", "r": "+z", "f": "-z",
    "u": "+rx", "o": "-rx", "i": "+ry", "k": "-ry", "j": "+rz", "l": "-rz",
}  # fmt: skip
DEFAULT_BUTTONS = {"enter": "record", "backspace": "discard", "y": "success", "n": "failure", "esc": "quit"}


def key_name(key: Any) -> str:
    """A pynput key (or a string) -> lower-case name: 'w', 'space', 'enter', 'esc', ..."""
    if isinstance(key, str):
        return key.lower()
    char = getattr(key, "char", None)
    if char:
        return char.lower()
    name = getattr(key, "name", None)
    return str(name if name else key).lower()


class Keyboard(TeleopDevice):
    """Keyboard as a delta teleop device (see the module docstring).

    Args:
        backend: "pynput" or "manual".
        translation_step: metres per poll while a move key is held; rotation_step: radians per poll.
        moves: key -> "+x" / "-x" / ... / "+rz" / "-rz".
        buttons: key -> button name.
        gripper_key: key that toggles the gripper.
        listener_factory: (on_press, on_release) -> an object with start() / stop() (tests inject a fake).
    """

    def __init__(
        self,
        backend: str = "pynput",
        translation_step: float = 0.004,
        rotation_step: float = 0.03,
        moves: dict[str, str] | None = None,
        buttons: dict[str, str] | None = None,
        gripper_key: str = "space",
        name: str = "keyboard",
        listener_factory: Any = None,
    ) -> None:
        if backend not in ("pynput", "manual"):
            raise ValueError(f"keyboard backend must be 'pynput' or 'manual', got {backend!r}")
        self.backend = backend
        self.translation_step, self.rotation_step = float(translation_step), float(rotation_step)
        self.moves: dict[str, tuple[int, float]] = {}
        for k, spec in (moves or DEFAULT_MOVES).items():
            sign, axis = spec[0], spec[1:]
            if sign not in "+-" or axis not in AXES:
                raise ValueError(f"bad move '{spec}' for key '{k}': use +x, -x, ..., +rz, -rz")
            self.moves[k.lower()] = (AXES[axis], 1.0 if sign == "+" else -1.0)
        self.buttons = {
            k.lower(): v for k, v in (buttons if buttons is not None else DEFAULT_BUTTONS).items()
        }
        self.gripper_key = gripper_key.lower()
        self.name = name
        self._factory = listener_factory
        self._listener: Any = None
        self._connected = False
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._taps: set[str] = set()
        self._latched: set[str] = set()
        self._gripper_open = True

    def connect(self) -> None:
        if self._connected:
            raise DeviceAlreadyConnectedError(f"teleop device '{self.name}' is already connected")
        self._held.clear(), self._taps.clear(), self._latched.clear()
        self._gripper_open = True
        if self.backend == "pynput":
            try:
                factory = self._factory or self._pynput_factory
                self._listener = factory(
                    lambda k: self.press(key_name(k)), lambda k: self.release(key_name(k))
                )
                self._listener.start()
            except Exception as e:  # noqa: BLE001 - pynput raises backend-specific errors
                raise DeviceNotFoundError(
                    f"keyboard '{self.name}': the pynput listener could not start ({e!r}). It needs a desktop "
                    "session (DISPLAY on Linux, accessibility rights on macOS); on a headless machine use "
                    "backend: manual and feed keys from the preview window."
                ) from e
        self._connected = True

    @staticmethod
    def _pynput_factory(on_press: Any, on_release: Any) -> Any:
        from pynput import keyboard

        return keyboard.Listener(on_press=on_press, on_release=on_release)

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    @property
    def is_connected(self) -> bool:
        return self._connected

    # ---- key events (from the listener thread or the caller) ----------------------------------------
    def press(self, key: str) -> None:
        key = key.lower()
        with self._lock:
            if key == self.gripper_key and key not in self._held:
                self._gripper_open = not self._gripper_open
            if key in self.buttons:
                self._latched.add(self.buttons[key])
            self._held.add(key)

    def release(self, key: str) -> None:
        with self._lock:
            self._held.discard(key.lower())

    def tap(self, key: str) -> None:
        """A press without a release event: moves for one poll (and counts as one button press)."""
        self.press(key)
        with self._lock:
            self._held.discard(key.lower())
            self._taps.add(key.lower())

    def poll(self) -> TeleopCommand:
        self._require_connected()
        with self._lock:
            active = self._held | self._taps
            self._taps.clear()
            latched, self._latched = self._latched, set()
            grip = self._gripper_open
        v = np.zeros(6)
        for k in active:
            if k in self.moves:
                axis, sign = self.moves[k]
                v[axis] += sign
        v = np.clip(v, -1.0, 1.0)
        return TeleopCommand(
            timestamp=time.monotonic(),
            mode="delta",
            pos=v[:3] * self.translation_step,
            rot=v[3:] * self.rotation_step,
            gripper=1.0 if grip else 0.0,
            buttons={b: b in latched for b in self.buttons.values()},
        )

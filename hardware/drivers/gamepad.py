"""Gamepad (Xbox / PlayStation / generic) teleop through pygame's joystick API.

Sticks give end-effector velocities as deltas per poll (deadzone, then `translation_step` metres /
`rotation_step` radians per poll at full deflection); buttons are named by index; one button toggles the
gripper. The axis indices of the default mapping are those of an Xbox pad under Linux (xpad / SDL):
0 left X, 1 left Y, 2 left trigger, 3 right X, 4 right Y, 5 right trigger; configure `axes` for other pads
(`python -m pygame.examples.joystick` shows the numbers).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from hardware.drivers.keyboard import AXES
from hardware.drivers.spacemouse import apply_deadzone
from hardware.errors import DeviceAlreadyConnectedError, DeviceFaultError, DeviceNotFoundError
from hardware.teleop import TeleopCommand, TeleopDevice

# our axis <- (gamepad axis index, sign): left stick moves in the plane, right stick Y lifts, right X yaws
DEFAULT_AXES = {"x": [1, -1.0], "y": [0, -1.0], "z": [4, -1.0], "rz": [3, -1.0]}
DEFAULT_BUTTONS = {0: "gripper", 1: "discard", 2: "record", 3: "success", 7: "quit"}


class Gamepad(TeleopDevice):
    """A gamepad as a delta teleop device.

    Args:
        index: joystick index (0 = the first pad pygame finds).
        axes: our axis name ("x", "y", "z", "rx", "ry", "rz") -> [gamepad axis index, sign].
        buttons: gamepad button index -> name; the button named "gripper" toggles the gripper.
        deadzone: fraction of full deflection ignored around the centre.
        translation_step, rotation_step: metres / radians per poll at full deflection.
        pygame_module: the pygame module (tests inject a fake).
    """

    def __init__(
        self,
        index: int = 0,
        axes: dict[str, list[float]] | None = None,
        buttons: dict[int, str] | None = None,
        deadzone: float = 0.15,
        translation_step: float = 0.004,
        rotation_step: float = 0.03,
        name: str = "gamepad",
        pygame_module: Any = None,
    ) -> None:
        self.index = int(index)
        self.axes = {AXES[k]: (int(v[0]), float(v[1])) for k, v in (axes or DEFAULT_AXES).items()}
        self.button_map = {
            int(k): v for k, v in (buttons if buttons is not None else DEFAULT_BUTTONS).items()
        }
        self.deadzone = float(deadzone)
        self.translation_step, self.rotation_step = float(translation_step), float(rotation_step)
        self.name = name
        self._pg = pygame_module
        self._js: Any = None
        self._prev: dict[int, bool] = {}
        self._gripper_open = True

    @property
    def pygame(self) -> Any:
        if self._pg is None:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # joystick events need no window
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            import pygame

            self._pg = pygame
        return self._pg

    def connect(self) -> None:
        if self._js is not None:
            raise DeviceAlreadyConnectedError(f"teleop device '{self.name}' is already connected")
        pg = self.pygame
        pg.display.init()  # the event queue needs the video subsystem (the dummy driver: no window)
        pg.joystick.init()
        n = pg.joystick.get_count()
        if self.index >= n:
            raise DeviceNotFoundError(
                f"gamepad '{self.name}': joystick index {self.index} not found, {n} connected. Check the USB / "
                "Bluetooth pairing and that /dev/input/js* (or event*) is readable by your user."
            )
        js = pg.joystick.Joystick(self.index)
        js.init()
        need = max([a for a, _ in self.axes.values()] + [-1])
        if need >= js.get_numaxes():
            raise DeviceNotFoundError(
                f"gamepad '{self.name}' ({js.get_name()}) has {js.get_numaxes()} axes; the mapping uses axis {need}: "
                "set `axes` in configs/teleop/gamepad.yaml"
            )
        self._js = js
        self._prev = {}
        self._gripper_open = True

    def disconnect(self) -> None:
        if self._js is None:
            return
        js, self._js = self._js, None
        js.quit()

    @property
    def is_connected(self) -> bool:
        return self._js is not None

    def poll(self) -> TeleopCommand:
        self._require_connected()
        pg, js = self.pygame, self._js
        pg.event.pump()
        if hasattr(js, "get_init") and not js.get_init():
            raise DeviceFaultError(f"gamepad '{self.name}' was disconnected")
        raw = np.zeros(6)
        for our, (idx, sign) in self.axes.items():
            raw[our] = sign * float(js.get_axis(idx))
        v = apply_deadzone(np.clip(raw, -1.0, 1.0), self.deadzone)
        buttons = {}
        for idx, bname in self.button_map.items():
            down = bool(js.get_button(idx)) if idx < js.get_numbuttons() else False
            if bname == "gripper" and down and not self._prev.get(idx, False):
                self._gripper_open = not self._gripper_open
            self._prev[idx] = down
            buttons[bname] = down
        return TeleopCommand(
            timestamp=time.monotonic(),
            mode="delta",
            pos=v[:3] * self.translation_step,
            rot=v[3:] * self.rotation_step,
            gripper=1.0 if self._gripper_open else 0.0,
            buttons=buttons,
        )

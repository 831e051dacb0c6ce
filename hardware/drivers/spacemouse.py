"""3Dconnexion SpaceMouse through hidapi: 6-DoF deltas of the end-effector pose plus buttons.

The device sends HID reports only when something changes: report 1 = translation (x, y, z; older devices)
or translation + rotation (12 bytes; newer devices), report 2 = rotation (rx, ry, rz), report 3 = buttons
(bit mask); axis values are little-endian int16 in about [-350, 350]. `poll()` drains the pending reports
without blocking, keeps the latest axis values, applies the sign / axis mapping, the deadzone and the
scaling, and returns a delta command: `translation_scale` metres and `rotation_scale` radians per poll at
full deflection. Button `gripper` toggles the gripper on each press.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hardware.errors import DeviceAlreadyConnectedError, DeviceNotFoundError
from hardware.teleop import TeleopCommand, TeleopDevice

VENDOR_IDS = (0x046D, 0x256F)  # Logitech (older 3Dconnexion devices), 3Dconnexion
PRODUCTS = {
    0xC626: "SpaceNavigator",
    0xC627: "SpaceExplorer",
    0xC628: "SpaceNavigator for Notebooks",
    0xC62B: "SpaceMouse Pro",
    0xC62E: "SpaceMouse Wireless (cabled)",
    0xC62F: "SpaceMouse Wireless receiver",
    0xC631: "SpaceMouse Pro Wireless (cabled)",
    0xC632: "SpaceMouse Pro Wireless receiver",
    0xC635: "SpaceMouse Compact",
    0xC652: "3Dconnexion Universal Receiver",
}
FULL_SCALE = 350.0


def apply_deadzone(v: np.ndarray, deadzone: float) -> np.ndarray:
    """Zero |v| < deadzone and rescale the rest so the output is continuous and reaches 1 at 1."""
    a = np.abs(v)
    return np.where(a < deadzone, 0.0, np.sign(v) * (a - deadzone) / (1.0 - deadzone))


class SpaceMouse(TeleopDevice):
    """A SpaceMouse as a delta teleop device.

    Args:
        path: hidraw path of the device (from `hid.enumerate()`); None: the first SpaceMouse found.
        translation_scale: metres per poll at full deflection.
        rotation_scale: radians per poll at full deflection.
        deadzone: fraction of full scale ignored around the centre (0-1).
        axis_signs: signs applied to the device's (x, y, z, rx, ry, rz) so that +x is right, +y away from
            the user, +z up (the default corrects the device's y-towards-user, z-down convention).
        axis_order: which device axis feeds each of our (x, y, z, rx, ry, rz): rotate the mapping to match
            where the robot's base frame points relative to the operator.
        button_names: names for button 0, 1, ... (e.g. ["gripper", "record"]).
        hid_module: the hidapi module (tests inject a fake).
    """

    def __init__(
        self,
        path: str | bytes | None = None,
        translation_scale: float = 0.005,
        rotation_scale: float = 0.03,
        deadzone: float = 0.1,
        axis_signs: list[float] = (1, -1, -1, -1, -1, 1),
        axis_order: list[int] = (0, 1, 2, 3, 4, 5),
        button_names: list[str] = ("gripper", "record"),
        name: str = "spacemouse",
        hid_module: Any = None,
    ) -> None:
        if not 0.0 <= deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {deadzone}")
        self.path = path.encode() if isinstance(path, str) else path
        self.translation_scale, self.rotation_scale = float(translation_scale), float(rotation_scale)
        self.deadzone = float(deadzone)
        self.axis_signs = np.asarray(axis_signs, dtype=np.float64)
        self.axis_order = list(axis_order)
        if sorted(self.axis_order) != list(range(6)) or self.axis_signs.shape != (6,):
            raise ValueError("axis_order must be a permutation of 0..5 and axis_signs must have 6 values")
        self.button_names = list(button_names)
        self.name = name
        self._hid = hid_module
        self._dev: Any = None
        self._raw = np.zeros(6)  # latest device axes, raw units
        self._buttons = 0
        self._gripper_open = True
        self.product: str | None = None

    @property
    def hid(self) -> Any:
        if self._hid is None:
            import hid

            self._hid = hid
        return self._hid

    def find(self) -> list[dict]:
        """The SpaceMice connected now (hid.enumerate entries)."""
        return [
            d for d in self.hid.enumerate() if d["vendor_id"] in VENDOR_IDS and d["product_id"] in PRODUCTS
        ]

    def connect(self) -> None:
        if self._dev is not None:
            raise DeviceAlreadyConnectedError(f"teleop device '{self.name}' is already connected")
        found = self.find()
        if self.path is not None:
            found = [d for d in found if d["path"] == self.path]
        if not found:
            raise DeviceNotFoundError(
                f"SpaceMouse '{self.name}'{f' at {self.path!r}' if self.path else ''} not found among the HID "
                f"devices (vendor ids {', '.join(hex(v) for v in VENDOR_IDS)}). Check the USB cable or the "
                "wireless receiver, and that spacenavd is not holding it."
            )
        info = found[0]
        dev = self.hid.device()
        try:
            dev.open_path(info["path"])
        except OSError as e:
            raise DeviceNotFoundError(
                f"SpaceMouse '{self.name}' at {info['path']!r} found but cannot be opened ({e}): give your user "
                'access to it, e.g. a udev rule SUBSYSTEM=="hidraw", ATTRS{idVendor}=="256f", MODE="0666"'
            ) from e
        dev.set_nonblocking(1)
        self._dev = dev
        self.product = PRODUCTS[info["product_id"]]
        self._raw[:] = 0
        self._buttons = 0
        self._gripper_open = True

    def disconnect(self) -> None:
        if self._dev is None:
            return
        dev, self._dev = self._dev, None
        dev.close()

    @property
    def is_connected(self) -> bool:
        return self._dev is not None

    def _parse(self, data: list[int]) -> None:
        b = bytes(data)
        rid = b[0]
        if rid == 1 and len(b) >= 13:
            self._raw[:] = np.frombuffer(b[1:13], dtype="<i2")
        elif rid == 1 and len(b) >= 7:
            self._raw[:3] = np.frombuffer(b[1:7], dtype="<i2")
        elif rid == 2 and len(b) >= 7:
            self._raw[3:] = np.frombuffer(b[1:7], dtype="<i2")
        elif rid == 3 and len(b) >= 2:
            new = int.from_bytes(b[1:], "little")
            pressed = new & ~self._buttons
            if "gripper" in self.button_names:
                bit = 1 << self.button_names.index("gripper")
                if pressed & bit:
                    self._gripper_open = not self._gripper_open
            self._buttons = new

    def poll(self) -> TeleopCommand:
        self._require_connected()
        for _ in range(256):  # drain what arrived since the last poll
            data = self._dev.read(64)
            if not data:
                break
            self._parse(data)
        v = np.clip(self._raw / FULL_SCALE, -1.0, 1.0)[self.axis_order] * self.axis_signs
        v = apply_deadzone(v, self.deadzone)
        buttons = {n: bool(self._buttons >> i & 1) for i, n in enumerate(self.button_names)}
        return TeleopCommand(
            timestamp=time.monotonic(),
            mode="delta",
            pos=v[:3] * self.translation_scale,
            rot=v[3:] * self.rotation_scale,
            gripper=1.0 if self._gripper_open else 0.0,
            buttons=buttons,
        )

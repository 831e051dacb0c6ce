"""A leader arm (SO-100 / SO-101 leader, Koch leader) through LeRobot's teleoperator classes.

`poll()` reads the leader's joint positions (LeRobot's `get_action()` dict, `"<motor>.pos"`), converts them
to radians like `LeRobotArm` does (so a follower with the same kinematics can take them as-is) and returns a
`TeleopCommand(mode="joints")`; the gripper's 0-100 % becomes `gripper` in [0, 1].
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hardware.drivers._util import check_serial_port
from hardware.drivers.lerobot_arm import GRIPPER, LEADER_TYPES, build_lerobot_device, motor_value_to_rad
from hardware.errors import DeviceAlreadyConnectedError, DeviceFaultError, DeviceNotFoundError
from hardware.teleop import TeleopCommand, TeleopDevice


class LeaderArm(TeleopDevice):
    """A LeRobot leader arm as a joint-space teleop device.

    Args:
        teleop_type: "so100_leader", "so101_leader" or "koch_leader".
        port, id, calibration_dir: as for LeRobot (`lerobot-calibrate --teleop.type=... --teleop.id=...`).
        use_degrees: SO leaders only (Koch leaders always report [-100, 100], converted via calibration).
        buttons: names of buttons this device reports (a leader arm has none; kept for a uniform schema).
        teleop_factory: () -> LeRobot teleoperator (tests inject a fake).
    """

    def __init__(
        self,
        teleop_type: str = "so101_leader",
        port: str = "/dev/ttyACM1",
        id: str = "leader",
        calibration_dir: str | None = None,
        use_degrees: bool = True,
        name: str | None = None,
        teleop_factory: Any = None,
        check_port: bool = True,
    ) -> None:
        if teleop_type not in LEADER_TYPES:
            raise ValueError(
                f"unknown teleop_type '{teleop_type}'; LeaderArm supports {', '.join(LEADER_TYPES)}"
            )
        self.teleop_type, self.port, self.id = teleop_type, port, id
        self.calibration_dir, self.use_degrees = calibration_dir, use_degrees
        self.name = name or teleop_type
        self._factory = teleop_factory
        self.check_port = check_port
        self.device: Any = None
        self._connected = False
        self.joint_names: list[str] = []

    def connect(self) -> None:
        if self._connected:
            raise DeviceAlreadyConnectedError(f"teleop device '{self.name}' is already connected")
        if self.check_port:
            check_serial_port(self.port, f"{self.teleop_type} '{self.name}'")
        if self._factory is not None:
            dev = self._factory()
        else:
            extra = {"use_degrees": self.use_degrees} if self.teleop_type.startswith("so") else {}
            dev = build_lerobot_device(
                "teleop", self.teleop_type, self.port, self.id, self.calibration_dir, **extra
            )
        try:
            dev.connect(calibrate=False)
        except (OSError, ConnectionError) as e:
            raise DeviceNotFoundError(f"{self.teleop_type} '{self.name}' on {self.port}: {e}") from e
        if not dev.is_calibrated:
            dev.disconnect()
            raise DeviceFaultError(
                f"{self.teleop_type} '{self.name}' on {self.port} is not calibrated for id '{self.id}': run "
                f"`lerobot-calibrate --teleop.type={self.teleop_type} --teleop.port={self.port} --teleop.id={self.id}`"
            )
        self.device = dev
        self.joint_names = [m for m in dev.bus.motors if m != GRIPPER]
        self._connected = True

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        self.device.disconnect()

    @property
    def is_connected(self) -> bool:
        return self._connected

    def poll(self) -> TeleopCommand:
        self._require_connected()
        stamp = time.monotonic()
        action = self.device.get_action()
        bus = self.device.bus
        q = np.array([motor_value_to_rad(bus, m, float(action[f"{m}.pos"])) for m in self.joint_names])
        grip = float(action.get(f"{GRIPPER}.pos", 100.0)) / 100.0
        return TeleopCommand(
            timestamp=stamp,
            mode="joints",
            pos=np.zeros(3),
            joint_positions=q,
            gripper=min(max(grip, 0.0), 1.0),
        )

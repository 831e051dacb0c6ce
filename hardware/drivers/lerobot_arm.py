"""The hobby arms LeRobot supports (SO-100 / SO-101, Koch) through LeRobot's own robot classes.

`LeRobotArm` builds the LeRobot robot from its registered config (`so100_follower`, `so101_follower`,
`koch_follower`), so connection, motor configuration and calibration files are LeRobot's: calibrate once
with `lerobot-calibrate --robot.type=so101_follower --robot.port=/dev/ttyACM0 --robot.id=<id>` and pass the
same `id` (and `calibration_dir` if not the default). Joint positions cross the boundary as LeRobot's action /
observation dicts (`"<motor>.pos"`) in the bus's normalised units and are converted here:

- DEGREES (use_degrees=True, our default for every arm): rad = deg2rad(value);
- RANGE_M100_100: value -> raw ticks through the motor's calibration range -> degrees about the middle of
  the range, as LeRobot's DEGREES mode would give, -> rad;
- the gripper (RANGE_0_100) -> width in metres = value / 100 * gripper_max_width.

End-effector pose: the `Arm` interface reports and accepts TCP poses; a hobby arm needs a kinematic model for
that. Pass `kinematics=` (an object with `fk(q) -> (pos, quat)` and `ik(pos, quat, q_seed) -> q`); without one,
`ArmState.ee_pos` / `ee_quat` are NaN and pose / twist commands raise CommandRejectedError: drive these arms
in joint space (a leader arm, `hardware.drivers.leader_arm`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from hardware.arm import Arm, ArmLimits, ArmState
from hardware.drivers._util import check_serial_port
from hardware.errors import (
    CommandRejectedError,
    DeviceAlreadyConnectedError,
    DeviceFaultError,
    DeviceNotFoundError,
)

ROBOT_TYPES = {
    "so100_follower": "lerobot.robots.so_follower",
    "so101_follower": "lerobot.robots.so_follower",
    "koch_follower": "lerobot.robots.koch_follower",
}
GRIPPER = "gripper"


def motor_value_to_rad(bus: Any, motor: str, value: float) -> float:
    """A LeRobot bus reading (normalised units of the motor's norm mode) -> radians."""
    mode = str(getattr(bus.motors[motor].norm_mode, "value", bus.motors[motor].norm_mode))
    if mode == "degrees":
        return float(np.deg2rad(value))
    if mode == "range_m100_100":
        cal = bus.calibration[motor]
        mn, mx = cal.range_min, cal.range_max
        norm = -value if (getattr(bus, "apply_drive_mode", False) and cal.drive_mode) else value
        raw = (norm + 100.0) / 200.0 * (mx - mn) + mn
        res = bus.model_resolution_table[bus.motors[motor].model] - 1
        return float(np.deg2rad((raw - (mn + mx) / 2.0) * 360.0 / res))
    raise ValueError(f"motor '{motor}' uses norm mode '{mode}', which has no angle")


def rad_to_motor_value(bus: Any, motor: str, rad: float) -> float:
    """Inverse of `motor_value_to_rad`."""
    mode = str(getattr(bus.motors[motor].norm_mode, "value", bus.motors[motor].norm_mode))
    if mode == "degrees":
        return float(np.rad2deg(rad))
    if mode == "range_m100_100":
        cal = bus.calibration[motor]
        mn, mx = cal.range_min, cal.range_max
        res = bus.model_resolution_table[bus.motors[motor].model] - 1
        raw = np.rad2deg(rad) * res / 360.0 + (mn + mx) / 2.0
        norm = (raw - mn) / (mx - mn) * 200.0 - 100.0
        return float(-norm if (getattr(bus, "apply_drive_mode", False) and cal.drive_mode) else norm)
    raise ValueError(f"motor '{motor}' uses norm mode '{mode}', which has no angle")


def motor_range_rad(bus: Any, motor: str) -> tuple[float, float]:
    """The calibrated range of a joint motor in radians (about the middle of its range)."""
    cal = bus.calibration[motor]
    res = bus.model_resolution_table[bus.motors[motor].model] - 1
    half = (cal.range_max - cal.range_min) / 2.0 * 360.0 / res
    return float(np.deg2rad(-half)), float(np.deg2rad(half))


def build_lerobot_device(
    kind: str, device_type: str, port: str, id: str, calibration_dir: str | None, **extra: Any
) -> Any:
    """Build a LeRobot robot ("robot") or teleoperator ("teleop") from its registered config type."""
    import importlib

    if kind == "robot":
        from lerobot.robots import RobotConfig as Cfg
        from lerobot.robots import make_robot_from_config as make
    else:
        from lerobot.teleoperators import TeleoperatorConfig as Cfg
        from lerobot.teleoperators import make_teleoperator_from_config as make
    pkg = {**ROBOT_TYPES, **LEADER_TYPES}.get(device_type)
    if pkg is None:
        raise ValueError(f"unknown LeRobot {kind} type '{device_type}'")
    importlib.import_module(pkg)  # registers the config class
    cfg_cls = Cfg.get_choice_class(device_type)
    kwargs: dict[str, Any] = {"port": port, "id": id, **extra}
    if calibration_dir is not None:
        kwargs["calibration_dir"] = Path(calibration_dir).expanduser()
    return make(cfg_cls(**kwargs))


LEADER_TYPES = {
    "so100_leader": "lerobot.teleoperators.so_leader",
    "so101_leader": "lerobot.teleoperators.so_leader",
    "koch_leader": "lerobot.teleoperators.koch_leader",
}


class LeRobotArm(Arm):
    """An SO-100 / SO-101 / Koch follower arm through LeRobot.

    Args:
        robot_type: "so100_follower", "so101_follower" or "koch_follower".
        port: the arm's serial port (/dev/ttyACM0, /dev/ttyUSB0, /dev/tty.usbmodem...).
        id: the LeRobot calibration id (the calibration file is `<calibration_dir>/<id>.json`).
        calibration_dir: None: LeRobot's default (~/.cache/huggingface/lerobot/calibration/robots/<name>).
        use_degrees: read / command joints in degrees (converted to rad); False uses the [-100, 100] range,
            converted through the calibration.
        max_relative_target: LeRobot's per-command step limit (its units), None: off.
        gripper_max_width: jaw opening (m) that the gripper's 100 % corresponds to.
        max_joint_velocity: rad/s, for `limits()`; workspace_*: m, for `limits()`.
        kinematics: optional FK / IK model, see the module docstring.
        robot_factory: () -> LeRobot robot (tests inject a fake); default builds it from the registered config.
        check_port: check that `port` exists before connecting (lists the ports present if not).
    """

    def __init__(
        self,
        robot_type: str = "so101_follower",
        port: str = "/dev/ttyACM0",
        id: str = "follower",
        calibration_dir: str | None = None,
        use_degrees: bool = True,
        max_relative_target: float | None = None,
        gripper_max_width: float = 0.08,
        max_joint_velocity: float = 3.0,
        workspace_lower: list[float] = (-0.4, -0.4, 0.0),
        workspace_upper: list[float] = (0.4, 0.4, 0.4),
        kinematics: Any = None,
        name: str | None = None,
        robot_factory: Any = None,
        check_port: bool = True,
    ) -> None:
        if robot_type not in ROBOT_TYPES:
            raise ValueError(
                f"unknown robot_type '{robot_type}'; LeRobotArm supports {', '.join(ROBOT_TYPES)}"
            )
        self.robot_type, self.port, self.id = robot_type, port, id
        self.name = name or robot_type
        self.calibration_dir = calibration_dir
        self.use_degrees = use_degrees
        self.max_relative_target = max_relative_target
        self.gripper_max_width = float(gripper_max_width)
        self.max_joint_velocity = float(max_joint_velocity)
        self.workspace_lower = np.asarray(workspace_lower, dtype=np.float64)
        self.workspace_upper = np.asarray(workspace_upper, dtype=np.float64)
        self.kinematics = kinematics
        self.check_port = check_port
        self._factory = robot_factory
        self.robot: Any = None
        self._connected = False
        self.joint_names: list[str] = []
        self._last_q: np.ndarray | None = None

    def _build(self) -> Any:
        if self._factory is not None:
            return self._factory()
        extra = {"use_degrees": self.use_degrees, "max_relative_target": self.max_relative_target}
        return build_lerobot_device(
            "robot", self.robot_type, self.port, self.id, self.calibration_dir, **extra
        )

    def connect(self) -> None:
        if self._connected:
            raise DeviceAlreadyConnectedError(f"arm '{self.name}' is already connected")
        if self.check_port:
            check_serial_port(self.port, f"{self.robot_type} arm '{self.name}'")
        robot = self.robot if self.robot is not None else self._build()
        try:
            robot.connect(calibrate=False)  # LeRobot's calibration is interactive: done beforehand
        except (OSError, ConnectionError) as e:
            raise DeviceNotFoundError(
                f"{self.robot_type} arm '{self.name}' on {self.port}: {e}. Check the arm's power supply (the "
                "motors are not powered by USB), the motor cables, and that no other program has the port open."
            ) from e
        if not robot.is_calibrated:
            robot.disconnect()
            raise DeviceFaultError(
                f"{self.robot_type} arm '{self.name}' on {self.port} has no calibration for id '{self.id}' that "
                f"matches its motors: run `lerobot-calibrate --robot.type={self.robot_type} --robot.port={self.port} "
                f"--robot.id={self.id}` first"
            )
        self.robot = robot
        self.joint_names = [m for m in robot.bus.motors if m != GRIPPER]
        self._connected = True

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        self.robot.disconnect()

    @property
    def is_connected(self) -> bool:
        return self._connected

    # ---- conversions --------------------------------------------------------------------------------
    def obs_to_q(self, obs: dict[str, Any]) -> tuple[np.ndarray, float]:
        bus = self.robot.bus
        q = np.array([motor_value_to_rad(bus, m, float(obs[f"{m}.pos"])) for m in self.joint_names])
        width = float(obs.get(f"{GRIPPER}.pos", 0.0)) / 100.0 * self.gripper_max_width
        return q, width

    def q_to_action(self, q: np.ndarray) -> dict[str, float]:
        bus = self.robot.bus
        return {
            f"{m}.pos": rad_to_motor_value(bus, m, float(v)) for m, v in zip(self.joint_names, q, strict=True)
        }

    # ---- Arm ----------------------------------------------------------------------------------------
    def read_state(self) -> ArmState:
        self._require_connected()
        stamp = time.monotonic()
        obs = self.robot.get_observation()
        q, width = self.obs_to_q(obs)
        self._last_q = q
        if self.kinematics is not None:
            pos, quat = self.kinematics.fk(q)
        else:
            pos, quat = np.full(3, np.nan), np.full(4, np.nan)
        return ArmState(
            stamp, q, np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64), width
        )

    def command_joint_positions(self, q: np.ndarray) -> None:
        self._require_connected()
        q = self._as_vector(q, len(self.joint_names), "joint positions")
        lim = self.limits()
        if np.any(q < lim.joint_lower - 1e-9) or np.any(q > lim.joint_upper + 1e-9):
            raise CommandRejectedError(f"joint target {q} outside the calibrated range of arm '{self.name}'")
        self.robot.send_action(self.q_to_action(q))

    def command_ee_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        self._require_connected()
        if self.kinematics is None:
            raise CommandRejectedError(
                f"arm '{self.name}' has no kinematic model: pass kinematics= (fk / ik) to command poses, "
                "or command joint positions (e.g. from a leader arm)"
            )
        p = self._as_vector(pos, 3, "end-effector position")
        qt = self._as_vector(quat, 4, "end-effector quaternion")
        seed = self._last_q if self._last_q is not None else self.read_state().joint_positions
        self.command_joint_positions(
            self.kinematics.ik(np.clip(p, self.workspace_lower, self.workspace_upper), qt, seed)
        )

    def command_ee_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        self._require_connected()
        raise CommandRejectedError(
            f"arm '{self.name}' ({self.robot_type}) has no velocity interface: command joint positions"
        )

    def command_gripper(self, width: float) -> None:
        self._require_connected()
        w = float(self._as_vector(np.array([width]), 1, "gripper width")[0])
        pct = min(max(w / self.gripper_max_width, 0.0), 1.0) * 100.0
        self.robot.send_action({f"{GRIPPER}.pos": pct})

    def limits(self) -> ArmLimits:
        if self._connected and getattr(self.robot.bus, "calibration", None):
            rng = np.array([motor_range_rad(self.robot.bus, m) for m in self.joint_names])
            lower, upper = rng[:, 0], rng[:, 1]
        else:
            n = len(self.joint_names) or 5
            lower, upper = np.full(n, -np.pi), np.full(n, np.pi)
        return ArmLimits(
            joint_lower=lower,
            joint_upper=upper,
            max_joint_velocity=np.full(lower.shape[0], self.max_joint_velocity),
            workspace_lower=self.workspace_lower.copy(),
            workspace_upper=self.workspace_upper.copy(),
            gripper_max_width=self.gripper_max_width,
        )

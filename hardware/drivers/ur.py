"""Universal Robots (CB3 / e-Series) through ur-rtde.

Targets are streamed by a servo thread on ur-rtde's periodic schedule (`initPeriod()` / `waitPeriod()`)
at `frequency` Hz (125 on CB3, up to 500 on e-Series): every period it sends the latest target with
`servoL` (end-effector pose) or `servoJ` (joints), with `time` = one period, `lookahead_time` (0.03-0.2 s:
smooths the trajectory, adds lag) and `gain` (100-2000: proportional gain, higher = stiffer tracking), or
`speedL` for an end-effector twist (which expires after `velocity_timeout` s, like a dead-man switch).
Switching between servo and speed control stops the previous mode first (`servoStop` / `speedStop`).

UR poses are [x, y, z, rx, ry, rz] in metres and an axis-angle rotation vector in the base frame; the
`Arm` interface uses (w, x, y, z) quaternions, converted here. The robot must be in Remote Control mode
(e-Series) and reachable on its RTDE port (30004).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from hardware.arm import Arm, ArmLimits, ArmState
from hardware.drivers._transforms import quat_from_rotvec, rotvec_from_quat
from hardware.errors import (
    CommandRejectedError,
    DeviceAlreadyConnectedError,
    DeviceFaultError,
    DeviceNotFoundError,
)

log = logging.getLogger(__name__)

# UR5e: +-360 deg on every joint; the defaults keep the elbow to +-180 deg (it cannot pass through itself).
_UR_JOINT_LIMIT = np.array([2 * np.pi, 2 * np.pi, np.pi, 2 * np.pi, 2 * np.pi, 2 * np.pi])


def _default_control_factory(host: str, frequency: float) -> Any:
    import rtde_control

    return rtde_control.RTDEControlInterface(host, frequency)


def _default_receive_factory(host: str, frequency: float) -> Any:
    import rtde_receive

    return rtde_receive.RTDEReceiveInterface(host, frequency)


class URArm(Arm):
    """A UR arm streamed through RTDE.

    Args:
        host: the robot's IP address.
        frequency: servo / RTDE rate in Hz (125 on CB3, 125-500 on e-Series).
        lookahead_time: servoL / servoJ lookahead in s, in [0.03, 0.2].
        gain: servoL / servoJ proportional gain, in [100, 2000].
        servo_speed, servo_acceleration: passed to servoL / servoJ (the controller ignores them in the
            current firmware, ur-rtde still requires them).
        velocity_acceleration: acceleration (m/s^2) for speedL / speedStop.
        velocity_timeout: an end-effector twist is held this long (s), then the arm stops.
        joint_lower, joint_upper, max_joint_velocity, workspace_lower, workspace_upper, max_ee_speed:
            `ArmLimits` (rad, rad/s, m, m/s); defaults are the UR5e's with a 1 m workspace box.
        gripper: an object with `move(width_m)` and `width() -> m` (e.g. a Robotiq driver); None: no gripper.
        rtde_control_factory, rtde_receive_factory: (host, frequency) -> SDK object (tests inject fakes).
    """

    def __init__(
        self,
        host: str = "192.168.1.10",
        frequency: float = 500.0,
        lookahead_time: float = 0.1,
        gain: float = 300.0,
        servo_speed: float = 0.5,
        servo_acceleration: float = 0.5,
        velocity_acceleration: float = 0.5,
        velocity_timeout: float = 0.2,
        joint_lower: list[float] | None = None,
        joint_upper: list[float] | None = None,
        max_joint_velocity: list[float] | float = np.pi,
        workspace_lower: list[float] = (-1.0, -1.0, -0.1),
        workspace_upper: list[float] = (1.0, 1.0, 1.2),
        max_ee_speed: float = 0.5,
        gripper_max_width: float = 0.085,
        gripper: Any = None,
        name: str = "ur",
        rtde_control_factory: Any = None,
        rtde_receive_factory: Any = None,
    ) -> None:
        if not 0.03 <= lookahead_time <= 0.2:
            raise ValueError(f"lookahead_time must be in [0.03, 0.2] s, got {lookahead_time}")
        if not 100 <= gain <= 2000:
            raise ValueError(f"gain must be in [100, 2000], got {gain}")
        if not 1.0 <= frequency <= 500.0:
            raise ValueError(
                f"frequency must be in (0, 500] Hz (125 on CB3, up to 500 on e-Series), got {frequency}"
            )
        self.name = name
        self.host = host
        self.frequency = float(frequency)
        self.dt = 1.0 / self.frequency
        self.lookahead_time, self.gain = float(lookahead_time), float(gain)
        self.servo_speed, self.servo_acceleration = float(servo_speed), float(servo_acceleration)
        self.velocity_acceleration = float(velocity_acceleration)
        self.velocity_timeout = float(velocity_timeout)
        self._limits = ArmLimits(
            joint_lower=np.asarray(
                joint_lower if joint_lower is not None else -_UR_JOINT_LIMIT, dtype=np.float64
            ),
            joint_upper=np.asarray(
                joint_upper if joint_upper is not None else _UR_JOINT_LIMIT, dtype=np.float64
            ),
            max_joint_velocity=np.broadcast_to(np.asarray(max_joint_velocity, dtype=np.float64), (6,)).copy(),
            workspace_lower=np.asarray(workspace_lower, dtype=np.float64),
            workspace_upper=np.asarray(workspace_upper, dtype=np.float64),
            gripper_max_width=gripper_max_width,
            max_ee_speed=max_ee_speed,
        )
        self.gripper = gripper
        self._ctrl_factory = rtde_control_factory or _default_control_factory
        self._recv_factory = rtde_receive_factory or _default_receive_factory
        self._ctrl: Any = None
        self._recv: Any = None
        self._lock = threading.Lock()
        self._target: tuple[str, list[float], float] | None = (
            None  # (kind, values, expiry) kind: pose|joints|twist
        )
        self._active = "idle"  # what the servo thread last sent: idle | servo | speed
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self._fault: DeviceFaultError | None = None
        self._warned_gripper = False
        self.n_periods = 0

    # ---- connection ---------------------------------------------------------------------------------
    def connect(self) -> None:
        if self._ctrl is not None:
            raise DeviceAlreadyConnectedError(f"arm '{self.name}' is already connected")
        try:
            self._recv = self._recv_factory(self.host, self.frequency)
            self._ctrl = self._ctrl_factory(self.host, self.frequency)
        except RuntimeError as e:
            self._close_sdk()
            raise DeviceNotFoundError(
                f"UR arm '{self.name}' at {self.host} is unreachable or refused RTDE control: {e}. Check that "
                f"the robot is powered on with brakes released, that {self.host} answers ping from this machine, "
                "that the robot is in Remote Control mode (e-Series: Settings > System > Remote Control, then "
                "the teach pendant's Local/Remote switch), and that no other RTDE client is connected."
            ) from e
        self._fault = None
        self._target = None
        self._active = "idle"
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._servo_loop, name=f"ur-servo-{self.name}", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        if self._ctrl is None:
            return
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._thread = None
        try:
            if self._active == "servo":
                self._ctrl.servoStop(self.servo_acceleration * 4)
            elif self._active == "speed":
                self._ctrl.speedStop(self.velocity_acceleration * 4)
            self._ctrl.stopScript()
        except Exception as e:  # noqa: BLE001 - a faulted or lost arm: closing must still succeed
            log.warning("arm '%s': stopping the control script failed: %r", self.name, e)
        finally:
            self._close_sdk()

    def _close_sdk(self) -> None:
        for obj in (self._ctrl, self._recv):
            if obj is not None:
                try:
                    obj.disconnect()
                except Exception:  # noqa: BLE001 - closing: nothing more to do
                    pass
        self._ctrl = self._recv = None

    @property
    def is_connected(self) -> bool:
        return self._ctrl is not None

    def _check(self) -> None:
        self._require_connected()
        if self._fault is not None:
            raise self._fault

    # ---- state --------------------------------------------------------------------------------------
    def read_state(self) -> ArmState:
        self._check()
        r = self._recv
        stamp = time.monotonic()
        q = np.asarray(r.getActualQ(), dtype=np.float64)
        qd = np.asarray(r.getActualQd(), dtype=np.float64)
        tcp = np.asarray(r.getActualTCPPose(), dtype=np.float64)
        width = float(self.gripper.width()) if self.gripper is not None else 0.0
        return ArmState(
            timestamp=stamp,
            joint_positions=q,
            ee_pos=tcp[:3].copy(),
            ee_quat=quat_from_rotvec(tcp[3:6]),
            gripper_width=width,
            joint_velocities=qd,
        )

    # ---- commands (return at once; the servo thread streams them) ------------------------------------
    def _set_target(self, kind: str, values: np.ndarray, expiry: float = float("inf")) -> None:
        with self._lock:
            self._target = (kind, [float(v) for v in values], expiry)

    def command_joint_positions(self, q: np.ndarray) -> None:
        self._check()
        q = self._as_vector(q, 6, "joint positions")
        lim = self._limits
        if np.any(q < lim.joint_lower) or np.any(q > lim.joint_upper):
            raise CommandRejectedError(f"joint target {q} outside the limits of arm '{self.name}'")
        self._set_target("joints", q)

    def command_ee_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        self._check()
        p = self._as_vector(pos, 3, "end-effector position")
        q = self._as_vector(quat, 4, "end-effector quaternion")
        if np.linalg.norm(q) < 1e-6:
            raise CommandRejectedError(
                "end-effector quaternion has zero norm; pass a unit quaternion (w, x, y, z)"
            )
        p = self._limits.clip_ee_pos(p)
        self._set_target("pose", np.concatenate([p, rotvec_from_quat(q)]))

    def command_ee_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        self._check()
        v = self._as_vector(linear, 3, "linear velocity")
        w = self._as_vector(angular, 3, "angular velocity")
        speed = float(np.linalg.norm(v))
        if speed > self._limits.max_ee_speed:
            v = v * (self._limits.max_ee_speed / speed)
        self._set_target("twist", np.concatenate([v, w]), time.monotonic() + self.velocity_timeout)

    def command_gripper(self, width: float) -> None:
        self._check()
        w = float(self._as_vector(np.array([width]), 1, "gripper width")[0])
        w = min(max(w, 0.0), self._limits.gripper_max_width)
        if self.gripper is None:
            if not self._warned_gripper:
                log.warning("arm '%s' has no gripper configured; gripper commands are ignored", self.name)
                self._warned_gripper = True
            return
        self.gripper.move(w)

    def limits(self) -> ArmLimits:
        return self._limits

    # ---- servo thread -------------------------------------------------------------------------------
    def _servo_loop(self) -> None:
        ctrl = self._ctrl
        try:
            while not self._stop_evt.is_set():
                t_start = ctrl.initPeriod()
                with self._lock:
                    target = self._target
                if target is not None:
                    self._send(ctrl, target)
                self.n_periods += 1
                ctrl.waitPeriod(t_start)
        except DeviceFaultError as e:  # surfaced on the next read / command
            self._fault = e
        except Exception as e:  # noqa: BLE001
            self._fault = DeviceFaultError(f"UR arm '{self.name}' servo loop failed: {e!r}")

    def _send(self, ctrl: Any, target: tuple[str, list[float], float]) -> None:
        kind, values, expiry = target
        if kind == "twist":
            if time.monotonic() > expiry:  # the twist expired: stop and hold
                if self._active == "speed":
                    ctrl.speedStop(self.velocity_acceleration)
                    self._active = "idle"
                with self._lock:
                    if self._target is target:
                        self._target = None
                return
            if self._active == "servo":
                ctrl.servoStop(self.servo_acceleration * 4)
            self._active = "speed"
            ok = ctrl.speedL(values, self.velocity_acceleration, self.dt)
        else:
            if self._active == "speed":
                ctrl.speedStop(self.velocity_acceleration)
            self._active = "servo"
            fn = ctrl.servoL if kind == "pose" else ctrl.servoJ
            ok = fn(
                values, self.servo_speed, self.servo_acceleration, self.dt, self.lookahead_time, self.gain
            )
        if ok is False:
            self._raise_fault()

    def _raise_fault(self) -> None:
        r = self._recv
        why = []
        try:
            if r.isProtectiveStopped():
                why.append("protective stop (clear it on the teach pendant)")
            if r.isEmergencyStopped():
                why.append("emergency stop pressed")
            why.append(f"safety mode {r.getSafetyMode()}, robot mode {r.getRobotMode()}")
        except Exception:  # noqa: BLE001
            pass
        alive = True
        try:
            alive = bool(self._ctrl.isConnected())
        except Exception:  # noqa: BLE001
            pass
        if not alive:
            why.insert(0, "RTDE connection lost")
        raise DeviceFaultError(f"UR arm '{self.name}' at {self.host} rejected the command: {'; '.join(why)}")

"""UFACTORY xArm (5 / 6 / 7, Lite 6) through its Python SDK (`xarm.wrapper.XArmAPI`).

Pose and joint targets are streamed in servo mode (mode 1) by a thread at `rate` Hz with
`set_servo_cartesian` / `set_servo_angle_j`. Servo mode moves to each set-point at once, so the thread
steps the set-point towards the latest target at no more than `max_ee_speed` / `max_rot_speed` /
`max_joint_velocity` per period: a far target is reached smoothly, never by a jump. An end-effector twist
uses Cartesian velocity mode (mode 5, `vc_set_cartesian_velocity` with a `duration` dead-man timeout).

Units: the SDK speaks millimetres and degrees (or radians with is_radian=True); orientations are
roll / pitch / yaw, fixed axes X-Y-Z. This driver converts to metres and (w, x, y, z) quaternions. Every
SDK return code is checked; controller error / warning codes are turned into `DeviceFaultError` with the
SDK's own title and description (e.g. C22 self-collision, C31 collision, C35 safety boundary).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from hardware.arm import Arm, ArmLimits, ArmState
from hardware.drivers._transforms import quat_angle, quat_from_rpy, rpy_from_quat, slerp
from hardware.errors import (
    CommandRejectedError,
    DeviceAlreadyConnectedError,
    DeviceFaultError,
    DeviceNotFoundError,
)

# API return codes of the SDK (xarm.x3.code.APIState), for messages.
API_CODES = {
    -1: "not connected",
    -2: "not ready (motion not enabled or state not set)",
    -3: "API exception (bad argument)",
    -6: "Cartesian limit",
    -7: "joint limit",
    -8: "out of range",
    -9: "emergency stop",
    1: "the controller has an uncleared error",
    2: "the controller has an uncleared warning",
    3: "response timeout",
    51: "wrong mode for this command",
}

MODE_SERVO, MODE_CART_VELOCITY = 1, 5

# xArm 7 joint ranges (deg) from the UFACTORY user manual.
_XARM7_LIMITS_DEG = [(-360, 360), (-118, 120), (-360, 360), (-11, 225), (-360, 360), (-97, 180), (-360, 360)]
GRIPPER_MAX_POS = 850  # xArm gripper position units at fully open (~85 mm)


def _default_xarm_factory(ip: str, is_radian: bool) -> Any:
    from xarm.wrapper import XArmAPI

    return XArmAPI(ip, is_radian=is_radian, do_not_open=True)


def describe_controller_code(code: int, warn: bool = False) -> str:
    """The SDK's English title and description of a controller error (or warning) code."""
    try:
        from xarm.core.config.x_code import ControllerError, ControllerWarn

        c = (ControllerWarn if warn else ControllerError)(code)
        desc = c.description["en"]
        return f"{'W' if warn else 'C'}{code} {c.title['en']}" + (f": {desc}" if desc else "")
    except Exception:  # noqa: BLE001 - SDK not installed or code unknown
        return f"{'W' if warn else 'C'}{code}"


class XArmArm(Arm):
    """An xArm with its gripper.

    Args:
        ip: the control box's IP address.
        dof: number of joints (7 for xArm 7, 6 for xArm 6 / Lite 6, 5 for xArm 5).
        rate: servo streaming rate in Hz (<= 250).
        is_radian: the angle unit used for the SDK calls (True: rad, False: deg); the driver converts
            either way, the choice only changes what goes over the wire.
        max_ee_speed (m/s), max_rot_speed (rad/s), max_joint_velocity (rad/s): set-point step limits.
        joint_lower, joint_upper (rad), workspace_lower, workspace_upper (m): `ArmLimits`.
        gripper: whether the xArm gripper is fitted; gripper_speed in r/min (1000-5000).
        clear_errors_on_connect: clear errors / warnings left from a previous session at connect.
        velocity_timeout: a twist command stops after this long (s) unless renewed.
        xarm_factory: (ip, is_radian) -> SDK object (tests inject a fake).
    """

    def __init__(
        self,
        ip: str = "192.168.1.185",
        dof: int = 7,
        rate: float = 100.0,
        is_radian: bool = False,
        max_ee_speed: float = 0.25,
        max_rot_speed: float = 1.0,
        max_joint_velocity: list[float] | float = 1.5,
        joint_lower: list[float] | None = None,
        joint_upper: list[float] | None = None,
        workspace_lower: list[float] = (0.1, -0.6, 0.0),
        workspace_upper: list[float] = (0.8, 0.6, 0.7),
        gripper: bool = True,
        gripper_speed: float = 3000,
        clear_errors_on_connect: bool = True,
        velocity_timeout: float = 0.2,
        name: str = "xarm",
        xarm_factory: Any = None,
    ) -> None:
        if not 1 <= rate <= 250:
            raise ValueError(f"xArm servo rate must be in [1, 250] Hz, got {rate}")
        self.name, self.ip, self.dof = name, ip, int(dof)
        self.rate, self.dt = float(rate), 1.0 / float(rate)
        self.is_radian = bool(is_radian)
        self.max_rot_speed = float(max_rot_speed)
        if joint_lower is None or joint_upper is None:
            lim = np.deg2rad(np.array(_XARM7_LIMITS_DEG[: self.dof], dtype=np.float64))
            joint_lower = lim[:, 0] if joint_lower is None else joint_lower
            joint_upper = lim[:, 1] if joint_upper is None else joint_upper
        self._limits = ArmLimits(
            joint_lower=np.asarray(joint_lower, dtype=np.float64),
            joint_upper=np.asarray(joint_upper, dtype=np.float64),
            max_joint_velocity=np.broadcast_to(
                np.asarray(max_joint_velocity, dtype=np.float64), (self.dof,)
            ).copy(),
            workspace_lower=np.asarray(workspace_lower, dtype=np.float64),
            workspace_upper=np.asarray(workspace_upper, dtype=np.float64),
            gripper_max_width=0.085,
            max_ee_speed=float(max_ee_speed),
        )
        self.has_gripper = gripper
        self.gripper_speed = gripper_speed
        self.clear_errors_on_connect = clear_errors_on_connect
        self.velocity_timeout = float(velocity_timeout)
        self._factory = xarm_factory or _default_xarm_factory
        self.api: Any = None
        self._lock = threading.Lock()
        self._target: tuple[str, np.ndarray, np.ndarray | None] | None = None
        self._target_gen = 0
        self._sent_gen = -1
        self._setpoint: tuple[np.ndarray, np.ndarray] | None = None  # pose set-point (pos m, quat)
        self._q_setpoint: np.ndarray | None = None
        self._mode = None
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self._fault: DeviceFaultError | None = None
        self.n_periods = 0

    # ---- unit conversions ---------------------------------------------------------------------------
    def _ang_out(self, rad: np.ndarray) -> list[float]:
        a = np.asarray(rad, dtype=np.float64)
        return [float(v) for v in (a if self.is_radian else np.rad2deg(a))]

    def _ang_in(self, values: Any) -> np.ndarray:
        a = np.asarray(values, dtype=np.float64)
        return a if self.is_radian else np.deg2rad(a)

    def pose_to_sdk(self, pos: np.ndarray, quat: np.ndarray) -> list[float]:
        """[x, y, z] m + quaternion -> [x, y, z mm, roll, pitch, yaw (deg or rad)]."""
        return [float(v) for v in np.asarray(pos) * 1000.0] + self._ang_out(rpy_from_quat(quat))

    def pose_from_sdk(self, pose: Any) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(pose, dtype=np.float64)
        rpy = self._ang_in(p[3:6])
        return p[:3] / 1000.0, quat_from_rpy(*rpy)

    # ---- error handling -----------------------------------------------------------------------------
    def _ok(self, ret: Any, what: str) -> Any:
        """Check an SDK return (code or (code, value)); return the value or raise a clear error."""
        code, value = (
            (ret[0], ret[1] if len(ret) > 1 else None) if isinstance(ret, tuple | list) else (ret, None)
        )
        if code == 0:
            return value
        parts = [
            f"xArm '{self.name}' at {self.ip}: {what} failed with code {code} ({API_CODES.get(code, 'unknown')})"
        ]
        api = self.api
        err = int(getattr(api, "error_code", 0) or 0)
        warn = int(getattr(api, "warn_code", 0) or 0)
        if err:
            parts.append(describe_controller_code(err))
        if warn:
            parts.append(describe_controller_code(warn, warn=True))
        if err or code == -9:
            parts.append("clear the cause, then reconnect (connect() clears errors) or use xArm Studio")
        raise DeviceFaultError("; ".join(parts), code=err or code)

    # ---- connection ---------------------------------------------------------------------------------
    def connect(self) -> None:
        if self.api is not None:
            raise DeviceAlreadyConnectedError(f"arm '{self.name}' is already connected")
        api = self._factory(self.ip, self.is_radian)
        try:
            api.connect()
        except Exception as e:  # noqa: BLE001 - the SDK raises various types
            raise self._unreachable(e) from e
        if not getattr(api, "connected", False):
            raise self._unreachable(None)
        self.api = api
        try:
            if self.clear_errors_on_connect:
                if api.warn_code:
                    self._ok(api.clean_warn(), "clean_warn")
                if api.error_code:
                    self._ok(api.clean_error(), "clean_error")
            elif api.error_code:
                self._ok(1, "connect")
            self._ok(api.motion_enable(enable=True), "motion_enable")
            self._set_mode(MODE_SERVO)
            if self.has_gripper:
                self._ok(api.set_gripper_mode(0), "set_gripper_mode")
                self._ok(api.set_gripper_enable(True), "set_gripper_enable")
                self._ok(api.set_gripper_speed(self.gripper_speed), "set_gripper_speed")
        except BaseException:
            self._close_api()
            raise
        self._fault, self._target, self._setpoint, self._q_setpoint = None, None, None, None
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._stream_loop, name=f"xarm-servo-{self.name}", daemon=True)
        self._thread.start()

    def _unreachable(self, e: BaseException | None) -> DeviceNotFoundError:
        return DeviceNotFoundError(
            f"xArm '{self.name}' at {self.ip} is unreachable{f': {e}' if e else ''}. Check that the control box "
            f"is powered on and its emergency stop released, that {self.ip} answers ping (the box's default "
            "subnet is 192.168.1.x), and that no other client (xArm Studio in a motion mode) holds it."
        )

    def _set_mode(self, mode: int) -> None:
        self._ok(self.api.set_mode(mode), f"set_mode({mode})")
        self._ok(self.api.set_state(0), "set_state(0)")
        self._mode = mode

    def disconnect(self) -> None:
        if self.api is None:
            return
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._thread = None
        try:
            if self._mode == MODE_CART_VELOCITY:
                self.api.vc_set_cartesian_velocity([0.0] * 6, is_radian=self.is_radian)
        except Exception:  # noqa: BLE001 - a faulted or lost arm: closing must still succeed
            pass
        finally:
            self._close_api()

    def _close_api(self) -> None:
        api, self.api = self.api, None
        if api is not None:
            try:
                api.disconnect()
            except Exception:  # noqa: BLE001
                pass

    @property
    def is_connected(self) -> bool:
        return self.api is not None

    def _check(self) -> None:
        self._require_connected()
        if self._fault is not None:
            raise self._fault

    # ---- state --------------------------------------------------------------------------------------
    def read_state(self) -> ArmState:
        self._check()
        stamp = time.monotonic()
        states = self._ok(self.api.get_joint_states(is_radian=self.is_radian), "get_joint_states")
        q = self._ang_in(states[0][: self.dof])
        qd = self._ang_in(states[1][: self.dof])
        pos, quat = self.pose_from_sdk(
            self._ok(self.api.get_position(is_radian=self.is_radian), "get_position")
        )
        width = 0.0
        if self.has_gripper:
            g = self._ok(self.api.get_gripper_position(), "get_gripper_position")
            width = float(g) / GRIPPER_MAX_POS * self._limits.gripper_max_width
        return ArmState(stamp, q, pos, quat, width, qd)

    # ---- commands -----------------------------------------------------------------------------------
    def _set_target(self, kind: str, a: np.ndarray, b: np.ndarray | None = None) -> None:
        with self._lock:
            self._target = (kind, a, b)
            self._target_gen += 1

    def command_joint_positions(self, q: np.ndarray) -> None:
        self._check()
        q = self._as_vector(q, self.dof, "joint positions")
        if np.any(q < self._limits.joint_lower) or np.any(q > self._limits.joint_upper):
            raise CommandRejectedError(f"joint target {q} outside the limits of arm '{self.name}'")
        self._set_target("joints", q)

    def command_ee_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        self._check()
        p = self._limits.clip_ee_pos(self._as_vector(pos, 3, "end-effector position"))
        q = self._as_vector(quat, 4, "end-effector quaternion")
        if np.linalg.norm(q) < 1e-6:
            raise CommandRejectedError(
                "end-effector quaternion has zero norm; pass a unit quaternion (w, x, y, z)"
            )
        self._set_target("pose", p, q / np.linalg.norm(q))

    def command_ee_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        self._check()
        v = self._as_vector(linear, 3, "linear velocity")
        w = self._as_vector(angular, 3, "angular velocity")
        s = float(np.linalg.norm(v))
        if s > self._limits.max_ee_speed:
            v = v * (self._limits.max_ee_speed / s)
        self._set_target("twist", v, w)

    def command_gripper(self, width: float) -> None:
        self._check()
        w = float(self._as_vector(np.array([width]), 1, "gripper width")[0])
        if not self.has_gripper:
            raise CommandRejectedError(f"arm '{self.name}' is configured without a gripper (gripper: false)")
        w = min(max(w, 0.0), self._limits.gripper_max_width)
        pos = w / self._limits.gripper_max_width * GRIPPER_MAX_POS
        self._ok(
            self.api.set_gripper_position(pos, wait=False, speed=self.gripper_speed), "set_gripper_position"
        )

    def limits(self) -> ArmLimits:
        return self._limits

    # ---- streaming thread ---------------------------------------------------------------------------
    def _stream_loop(self) -> None:
        next_t = time.monotonic()
        try:
            while not self._stop_evt.is_set():
                with self._lock:
                    target, gen = self._target, self._target_gen
                if target is not None:
                    self._step(target, gen)
                self.n_periods += 1
                next_t += self.dt
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop_evt.wait(delay)
                else:
                    next_t = time.monotonic()  # fell behind: skip, do not burst
        except DeviceFaultError as e:
            self._fault = e
        except Exception as e:  # noqa: BLE001
            self._fault = DeviceFaultError(f"xArm '{self.name}' streaming failed: {e!r}")

    def _step(self, target: tuple[str, np.ndarray, np.ndarray | None], gen: int) -> None:
        api = self.api
        kind, a, b = target
        if kind == "twist":
            if gen == self._sent_gen:
                return  # sent once; the controller holds it for `duration`
            if self._mode != MODE_CART_VELOCITY:
                self._set_mode(MODE_CART_VELOCITY)
            speeds = [float(v) for v in a * 1000.0] + self._ang_out(b)
            self._ok(
                api.vc_set_cartesian_velocity(
                    speeds, is_radian=self.is_radian, duration=self.velocity_timeout
                ),
                "vc_set_cartesian_velocity",
            )
            self._sent_gen = gen
            self._setpoint = self._q_setpoint = None  # re-read after the velocity motion
            return
        if self._mode != MODE_SERVO:
            self._set_mode(MODE_SERVO)
        self._sent_gen = gen
        if kind == "pose":
            if self._setpoint is None:
                self._setpoint = self.pose_from_sdk(
                    self._ok(api.get_position(is_radian=self.is_radian), "get_position")
                )
            p0, q0 = self._setpoint
            d = a - p0
            dist = float(np.linalg.norm(d))
            step = self._limits.max_ee_speed * self.dt
            p1 = a if dist <= step else p0 + d * (step / dist)
            ang = quat_angle(q0, b)
            rstep = self.max_rot_speed * self.dt
            q1 = b if ang <= rstep else slerp(q0, b, rstep / ang)
            self._setpoint = (p1, q1)
            self._q_setpoint = None
            self._ok(
                api.set_servo_cartesian(self.pose_to_sdk(p1, q1), is_radian=self.is_radian),
                "set_servo_cartesian",
            )
        else:
            if self._q_setpoint is None:
                ret = self._ok(api.get_servo_angle(is_radian=self.is_radian), "get_servo_angle")
                self._q_setpoint = self._ang_in(ret[: self.dof])
            q0 = self._q_setpoint
            step = self._limits.max_joint_velocity * self.dt
            q1 = q0 + np.clip(a - q0, -step, step)
            self._q_setpoint = q1
            self._setpoint = None
            self._ok(api.set_servo_angle_j(self._ang_out(q1), is_radian=self.is_radian), "set_servo_angle_j")

"""UR (ur-rtde) and xArm (xarm-python-sdk) drivers against recording fakes of their SDK objects:
the calls, their arguments and rates, unit and frame conversions, and the errors for unreachable or
faulted arms."""

from __future__ import annotations

import datetime
import threading
import time

import numpy as np
import pytest

from hardware.drivers._transforms import (
    quat_from_rotvec,
    quat_from_rpy,
    rotvec_from_quat,
    rpy_from_quat,
)
from hardware.drivers.ur import URArm
from hardware.drivers.xarm import XArmArm
from hardware.errors import (
    CommandRejectedError,
    DeviceFaultError,
    DeviceNotConnectedError,
    DeviceNotFoundError,
)


def wait_until(cond, timeout: float = 3.0) -> bool:
    """Poll `cond()` until true (robust to a loaded CI machine); returns its last value."""
    t_end = time.monotonic() + timeout
    while not cond() and time.monotonic() < t_end:
        time.sleep(0.005)
    return cond()


class Recorder:
    """Records (time, method, args, kwargs) of every call, thread-safe."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, tuple, dict]] = []
        self._lock = threading.Lock()

    def rec(self, name: str, *args, **kwargs) -> None:
        with self._lock:
            self.calls.append((time.monotonic(), name, args, kwargs))

    def named(self, name: str) -> list[tuple[float, str, tuple, dict]]:
        with self._lock:
            return [c for c in self.calls if c[1] == name]

    def names(self) -> list[str]:
        with self._lock:
            return [c[1] for c in self.calls]


# ---------------------------------------------------------------- UR ----------------------------------
class FakeRTDEControl(Recorder):
    """Stands in for rtde_control.RTDEControlInterface: a periodic schedule on a steady clock."""

    def __init__(self, host: str, frequency: float) -> None:
        super().__init__()
        self.host, self.frequency = host, frequency
        self.dt = 1.0 / frequency
        self.accept = True

    def initPeriod(self):  # noqa: N802 - SDK names
        self.rec("initPeriod")
        return datetime.timedelta(seconds=time.monotonic())

    def waitPeriod(self, t_start):  # noqa: N802
        assert isinstance(t_start, datetime.timedelta)
        delay = t_start.total_seconds() + self.dt - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def servoL(self, pose, speed, acc, t, lookahead, gain):  # noqa: N802
        self.rec("servoL", list(pose), speed, acc, t, lookahead, gain)
        return self.accept

    def servoJ(self, q, speed, acc, t, lookahead, gain):  # noqa: N802
        self.rec("servoJ", list(q), speed, acc, t, lookahead, gain)
        return self.accept

    def speedL(self, xd, acceleration=0.25, time=0.0):  # noqa: N802
        self.rec("speedL", list(xd), acceleration, time)
        return self.accept

    def servoStop(self, a=10.0):  # noqa: N802
        self.rec("servoStop", a)
        return True

    def speedStop(self, a=10.0):  # noqa: N802
        self.rec("speedStop", a)
        return True

    def stopScript(self):  # noqa: N802
        self.rec("stopScript")

    def isConnected(self):  # noqa: N802
        return True

    def disconnect(self):
        self.rec("disconnect")


class FakeRTDEReceive(Recorder):
    def __init__(self, host: str, frequency: float) -> None:
        super().__init__()
        self.q = [0.1, -1.2, 1.5, -1.8, -1.57, 0.3]
        self.tcp = [0.4, -0.1, 0.3, 2.2, -2.2, 0.0]  # m + axis-angle
        self.protective = False

    def getActualQ(self):  # noqa: N802
        return list(self.q)

    def getActualQd(self):  # noqa: N802
        return [0.0] * 6

    def getActualTCPPose(self):  # noqa: N802
        return list(self.tcp)

    def isProtectiveStopped(self):  # noqa: N802
        return self.protective

    def isEmergencyStopped(self):  # noqa: N802
        return False

    def getSafetyMode(self):  # noqa: N802
        return 3 if self.protective else 1

    def getRobotMode(self):  # noqa: N802
        return 7

    def disconnect(self):
        self.rec("disconnect")


@pytest.fixture
def ur():
    made = {}

    def ctrl(host, freq):
        made["ctrl"] = FakeRTDEControl(host, freq)
        return made["ctrl"]

    def recv(host, freq):
        made["recv"] = FakeRTDEReceive(host, freq)
        return made["recv"]

    arm = URArm(host="10.0.0.7", frequency=125.0, lookahead_time=0.05, gain=500,
                rtde_control_factory=ctrl, rtde_receive_factory=recv)  # fmt: skip
    yield arm, made
    arm.disconnect()


def test_rotation_conversions_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rv = rng.uniform(-1, 1, 3)
        rv *= rng.uniform(0, np.pi - 1e-3) / np.linalg.norm(rv)
        assert np.allclose(rotvec_from_quat(quat_from_rotvec(rv)), rv, atol=1e-9)
        rpy = rng.uniform([-np.pi, -np.pi / 2 + 0.01, -np.pi], [np.pi, np.pi / 2 - 0.01, np.pi])
        assert np.allclose(rpy_from_quat(quat_from_rpy(*rpy)), rpy, atol=1e-9)
    # (w, x, y, z): 90 deg about z
    assert np.allclose(quat_from_rotvec([0, 0, np.pi / 2]), [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    assert np.allclose(quat_from_rpy(0, 0, np.pi / 2), quat_from_rotvec([0, 0, np.pi / 2]))
    # xArm rpy is fixed-axis X-Y-Z: R = Rz(yaw) Ry(pitch) Rx(roll)
    q = quat_from_rpy(np.pi / 2, 0, np.pi / 2)
    expect = quat_from_rotvec([0, 0, np.pi / 2])
    rx = quat_from_rotvec([np.pi / 2, 0, 0])
    w1, x1, y1, z1 = expect
    w2, x2, y2, z2 = rx
    prod = np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])  # fmt: skip
    assert np.allclose(q, prod * np.sign(prod[0]))


def test_ur_streams_servoL_at_the_configured_rate_with_its_parameters(ur):
    arm, made = ur
    with pytest.raises(DeviceNotConnectedError):
        arm.read_state()
    arm.connect()
    ctrl = made["ctrl"]
    assert ctrl.host == "10.0.0.7" and ctrl.frequency == 125.0
    st = arm.read_state()
    assert np.allclose(st.ee_pos, [0.4, -0.1, 0.3])
    assert np.allclose(rotvec_from_quat(st.ee_quat), [2.2, -2.2, 0.0])  # axis-angle -> (w, x, y, z)
    assert np.allclose(st.joint_positions, made["recv"].q)
    time.sleep(0.1)
    assert not ctrl.named("servoL")  # nothing is streamed before the first command
    quat = quat_from_rotvec([0.0, np.pi, 0.0])
    arm.command_ee_pose(np.array([0.5, 0.0, 0.2]), quat)
    time.sleep(0.5)
    calls = ctrl.named("servoL")
    assert len(calls) >= 0.4 * 0.5 * 125, len(calls)  # ~62 expected; loose for a loaded machine
    pose, speed, acc, t, lookahead, gain = calls[-1][2]
    assert np.allclose(pose[:3], [0.5, 0.0, 0.2])
    assert np.allclose(np.abs(pose[3:]), [0.0, np.pi, 0.0], atol=1e-9)  # metres + rotation vector
    assert t == pytest.approx(1 / 125) and lookahead == 0.05 and gain == 500
    assert speed == 0.5 and acc == 0.5
    dts = np.diff([c[0] for c in calls])
    assert np.median(dts) == pytest.approx(1 / 125, rel=0.25)
    # joints: servoJ with the same schedule; a workspace-violating pose is clipped
    arm.command_joint_positions(np.zeros(6))
    assert wait_until(lambda: ctrl.named("servoJ"))
    assert ctrl.named("servoJ")[-1][2][0] == [0.0] * 6
    with pytest.raises(CommandRejectedError, match="6 values"):
        arm.command_joint_positions(np.zeros(5))
    with pytest.raises(CommandRejectedError, match="NaN"):
        arm.command_ee_pose(np.array([np.nan, 0, 0]), quat)
    arm.command_ee_pose(np.array([5.0, 0.0, 0.2]), quat)
    assert wait_until(
        lambda: ctrl.named("servoL")[-1][2][0][0] == pytest.approx(1.0)
    )  # workspace_upper x  # workspace_upper x


def test_ur_velocity_switches_mode_expires_and_disconnect_stops(ur):
    arm, made = ur
    arm.connect()
    ctrl = made["ctrl"]
    arm.command_ee_pose(np.array([0.4, 0.0, 0.3]), np.array([0.0, 1.0, 0.0, 0.0]))
    assert wait_until(lambda: ctrl.named("servoL"))
    arm.command_ee_velocity(np.array([0.0, 0.0, 10.0]), np.zeros(3))  # over max_ee_speed: scaled down
    assert wait_until(lambda: ctrl.named("speedL"))
    names = ctrl.names()
    i_stop = names.index("servoStop")
    assert names.index("speedL") > i_stop > names.index("servoL")  # servo stopped before speed control
    xd, acc, t = ctrl.named("speedL")[-1][2]
    assert np.allclose(xd, [0, 0, 0.5, 0, 0, 0]) and acc == 0.5
    # past velocity_timeout (0.2 s): speedStop, nothing more streamed
    assert wait_until(lambda: ctrl.named("speedStop"))
    n = len(ctrl.named("speedL"))
    time.sleep(0.05)
    assert len(ctrl.named("speedL")) == n
    arm.disconnect()
    assert "stopScript" in ctrl.names() and ctrl.names()[-1] == "disconnect"
    assert not arm.is_connected


def test_ur_protective_stop_becomes_a_fault(ur):
    arm, made = ur
    arm.connect()
    made["ctrl"].accept = False
    made["recv"].protective = True
    arm.command_joint_positions(np.zeros(6))
    assert wait_until(lambda: arm._fault is not None)
    with pytest.raises(DeviceFaultError, match="protective stop"):
        arm.read_state()


def test_ur_unreachable_names_ip_and_remote_mode():
    def boom(host, freq):
        raise RuntimeError("One of the RTDE input registers are already in use!")

    arm = URArm(
        host="192.168.5.5", rtde_control_factory=boom, rtde_receive_factory=lambda h, f: FakeRTDEReceive(h, f)
    )
    with pytest.raises(DeviceNotFoundError, match=r"192\.168\.5\.5.*Remote Control"):
        arm.connect()
    assert not arm.is_connected
    with pytest.raises(ValueError, match="lookahead"):
        URArm(lookahead_time=0.5)
    with pytest.raises(ValueError, match="gain"):
        URArm(gain=50)


# ---------------------------------------------------------------- xArm --------------------------------
class FakeXArm(Recorder):
    """Stands in for xarm.wrapper.XArmAPI: SDK units (mm, deg or rad per is_radian), return codes."""

    def __init__(self, ip, is_radian, reachable=True):
        super().__init__()
        self.ip, self.default_radian = ip, is_radian
        self.reachable = reachable
        self.connected = False
        self.error_code, self.warn_code = 0, 0
        self.mode, self.state = 0, 4
        self.q_deg = np.array([0.0, -30.0, 0.0, 60.0, 0.0, 90.0, 0.0])
        self.pose = [300.0, 0.0, 200.0, 180.0, 0.0, 0.0]  # mm, deg
        self.gripper_pos = 850.0
        self.fail_next = None

    def _ang(self, deg, is_radian):
        return list(np.deg2rad(deg)) if is_radian else list(deg)

    def connect(self):
        self.rec("connect")
        self.connected = self.reachable

    def disconnect(self):
        self.rec("disconnect")
        self.connected = False

    def clean_error(self):
        self.rec("clean_error")
        self.error_code = 0
        return 0

    def clean_warn(self):
        self.rec("clean_warn")
        self.warn_code = 0
        return 0

    def motion_enable(self, enable=True):
        self.rec("motion_enable", enable=enable)
        return 0

    def set_mode(self, mode=0):
        self.rec("set_mode", mode)
        self.mode = mode
        return 0

    def set_state(self, state=0):
        self.rec("set_state", state)
        self.state = state
        return 0

    def set_gripper_mode(self, mode):
        self.rec("set_gripper_mode", mode)
        return 0

    def set_gripper_enable(self, enable):
        self.rec("set_gripper_enable", enable)
        return 0

    def set_gripper_speed(self, speed):
        self.rec("set_gripper_speed", speed)
        return 0

    def set_gripper_position(self, pos, wait=False, speed=None):
        self.rec("set_gripper_position", pos, wait=wait, speed=speed)
        self.gripper_pos = pos
        return 0

    def get_gripper_position(self):
        return 0, self.gripper_pos

    def get_joint_states(self, is_radian=None):
        return 0, [self._ang(self.q_deg, is_radian), [0.0] * 7, [0.0] * 7]

    def get_servo_angle(self, servo_id=None, is_radian=None):
        return 0, self._ang(self.q_deg, is_radian)

    def get_position(self, is_radian=None):
        return 0, self.pose[:3] + self._ang(np.array(self.pose[3:]), is_radian)

    def set_servo_cartesian(self, mvpose, speed=None, mvacc=None, mvtime=0, is_radian=None, **kw):
        self.rec("set_servo_cartesian", list(mvpose), is_radian=is_radian)
        if self.fail_next:
            self.error_code, self.fail_next = self.fail_next, None
            return 1
        if self.mode != 1:
            return 51
        return 0

    def set_servo_angle_j(self, angles, speed=None, mvacc=None, mvtime=None, is_radian=None, **kw):
        self.rec("set_servo_angle_j", list(angles), is_radian=is_radian)
        return 0 if self.mode == 1 else 51

    def vc_set_cartesian_velocity(self, speeds, is_radian=None, is_tool_coord=False, duration=-1, **kw):
        self.rec("vc_set_cartesian_velocity", list(speeds), is_radian=is_radian, duration=duration)
        return 0 if self.mode == 5 else 51


def _xarm(is_radian: bool, **kw):
    made = {}

    def factory(ip, rad):
        made["api"] = FakeXArm(ip, rad, **{k: v for k, v in kw.items() if k == "reachable"})
        return made["api"]

    arm = XArmArm(ip="192.168.1.200", is_radian=is_radian, rate=100.0, max_ee_speed=0.5, xarm_factory=factory)
    return arm, made


@pytest.mark.parametrize("is_radian", [False, True])
def test_xarm_units_and_servo_streaming(is_radian):
    arm, made = _xarm(is_radian)
    arm.connect()
    api = made["api"]
    try:
        names = api.names()
        assert names[:2] == ["connect", "motion_enable"]
        assert ("set_mode", (1,)) in [(c[1], c[2]) for c in api.calls] and api.state == 0
        st = arm.read_state()
        assert np.allclose(st.joint_positions, np.deg2rad(api.q_deg))  # deg (or rad) -> rad
        assert np.allclose(st.ee_pos, [0.3, 0.0, 0.2])  # mm -> m
        assert np.allclose(np.abs(st.ee_quat), [0, 1, 0, 0], atol=1e-9)  # roll 180 deg: TCP pointing down
        assert st.gripper_width == pytest.approx(0.085)
        # a target 5 cm away at 0.5 m/s and 100 Hz: reached in ~10 steps of 5 mm, never in one jump
        target = np.array([0.35, 0.0, 0.2])
        arm.command_ee_pose(target, st.ee_quat)
        assert wait_until(
            lambda: (
                api.named("set_servo_cartesian")
                and api.named("set_servo_cartesian")[-1][2][0][0] == pytest.approx(350.0)
            )
        )
        time.sleep(0.1)  # and it holds there
        sent = api.named("set_servo_cartesian")
        xs = np.array([c[2][0][0] for c in sent])
        assert xs[-1] == pytest.approx(350.0)  # m -> mm
        assert np.max(np.diff(np.concatenate([[300.0], xs]))) <= 5.0 + 1e-6
        assert all(c[3]["is_radian"] == is_radian for c in sent)
        roll = sent[-1][2][0][3]
        assert abs(roll) == pytest.approx(np.pi if is_radian else 180.0)
        dts = np.diff([c[0] for c in sent])
        assert np.median(dts) == pytest.approx(0.01, rel=0.3)
        # gripper: m -> 0..850
        arm.command_gripper(0.0425)
        assert api.named("set_gripper_position")[-1][2][0] == pytest.approx(425.0)
        # joints: servo_angle_j in the wire unit, rate limited (1.5 rad/s * 0.01 s per step)
        q = np.deg2rad(api.q_deg)
        q[0] += 0.05
        arm.command_joint_positions(q)

        def at_target():
            js = api.named("set_servo_angle_j")
            v = np.asarray(js[-1][2][0]) if js else np.zeros(7)
            return js and (v if is_radian else np.deg2rad(v))[0] == pytest.approx(0.05)

        assert wait_until(at_target)
        js = api.named("set_servo_angle_j")
        first = np.asarray(js[0][2][0])
        first = first if is_radian else np.deg2rad(first)
        assert first[0] == pytest.approx(0.015, abs=1e-9)
        last = np.asarray(js[-1][2][0])
        assert (last if is_radian else np.deg2rad(last))[0] == pytest.approx(0.05)
        # twist: velocity mode 5, mm/s, with a dead-man duration, sent once per command
        arm.command_ee_velocity(np.array([0.01, 0.0, 0.0]), np.array([0.0, 0.0, 0.1]))
        assert wait_until(lambda: api.named("vc_set_cartesian_velocity"))
        time.sleep(0.05)
        v = api.named("vc_set_cartesian_velocity")
        assert len(v) == 1 and api.mode == 5
        assert np.allclose(v[0][2][0][:3], [10.0, 0, 0])
        assert v[0][2][0][5] == pytest.approx(0.1 if is_radian else np.rad2deg(0.1))
        assert v[0][3]["duration"] == 0.2
    finally:
        arm.disconnect()
    assert api.names()[-1] == "disconnect"


def test_xarm_controller_error_is_named():
    arm, made = _xarm(False)
    arm.connect()
    try:
        made["api"].fail_next = 22
        arm.command_ee_pose(np.array([0.3, 0.0, 0.25]), np.array([0.0, 1.0, 0.0, 0.0]))
        t_end = time.monotonic() + 10.0  # the first fault imports the SDK's code tables
        while arm._fault is None and time.monotonic() < t_end:
            time.sleep(0.02)
        with pytest.raises(DeviceFaultError, match="C22 Self-Collision") as ei:
            arm.read_state()
        assert ei.value.code == 22
    finally:
        arm.disconnect()


def test_xarm_unreachable_and_clears_old_errors():
    arm, _ = _xarm(False, reachable=False)
    with pytest.raises(DeviceNotFoundError, match=r"192\.168\.1\.200.*emergency stop"):
        arm.connect()
    arm, made = _xarm(False)

    def factory(ip, rad):
        api = FakeXArm(ip, rad)
        api.error_code, api.warn_code = 31, 11
        made["api"] = api
        return api

    arm._factory = factory
    arm.connect()
    names = made["api"].names()
    assert names.index("clean_warn") < names.index("clean_error") < names.index("motion_enable")
    arm.disconnect()

"""Hobby arms and leader arms through LeRobot's own robot / teleoperator classes, with a recording fake of
the motor bus (the SDK boundary under LeRobot: FeetechMotorsBus / DynamixelMotorsBus), so LeRobot's
connect, configure, observation and action code runs for real."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("lerobot")

from lerobot.motors import MotorCalibration  # noqa: E402
from lerobot.motors.motors_bus import MotorNormMode  # noqa: E402

from hardware.drivers.leader_arm import LeaderArm  # noqa: E402
from hardware.drivers.lerobot_arm import LeRobotArm, motor_value_to_rad, rad_to_motor_value  # noqa: E402
from hardware.errors import CommandRejectedError, DeviceFaultError, DeviceNotFoundError  # noqa: E402

RES = {"sts3215": 4096, "xl430-w250": 4096, "xl330-m288": 4096, "xl330-m077": 4096}


class FakeBus:
    """Stands in for LeRobot's FeetechMotorsBus / DynamixelMotorsBus; values are in normalised units."""

    instances: list[FakeBus] = []

    def __init__(self, port, motors, calibration=None, **kw):
        self.port, self.motors = port, motors
        self.calibration = calibration or {
            m: MotorCalibration(id=mo.id, drive_mode=0, homing_offset=0, range_min=1024, range_max=3072)
            for m, mo in motors.items()
        }
        self.model_resolution_table = RES
        self.apply_drive_mode = False
        self.is_connected = False
        self.is_calibrated = True
        self.calls: list = []
        self.present = {m: 0.0 for m in motors}
        FakeBus.instances.append(self)

    def connect(self, handshake=True):
        self.calls.append(("connect",))
        self.is_connected = True

    def disconnect(self, disable_torque=True):
        self.calls.append(("disconnect", disable_torque))
        self.is_connected = False

    @contextlib.contextmanager
    def torque_disabled(self, motors=None):
        self.calls.append(("torque_disabled",))
        yield

    def configure_motors(self, *a, **k):
        self.calls.append(("configure_motors",))

    def write(self, name, motor, value, *a, **k):
        self.calls.append(("write", name, motor, value))

    def sync_read(self, name, motors=None, num_retry=0):
        self.calls.append(("sync_read", name))
        return dict(self.present)

    def sync_write(self, name, values, *a, **k):
        self.calls.append(("sync_write", name, dict(values)))
        if name == "Goal_Position":
            self.present.update(values)

    def enable_torque(self, *a, **k):
        pass

    def disable_torque(self, *a, **k):
        pass


@pytest.fixture
def fake_buses(monkeypatch):
    import lerobot.robots.koch_follower.koch_follower as koch
    import lerobot.robots.so_follower.so_follower as so
    import lerobot.teleoperators.koch_leader.koch_leader as kl
    import lerobot.teleoperators.so_leader.so_leader as sl

    monkeypatch.setattr(so, "FeetechMotorsBus", FakeBus)
    monkeypatch.setattr(sl, "FeetechMotorsBus", FakeBus)
    monkeypatch.setattr(koch, "DynamixelMotorsBus", FakeBus)
    monkeypatch.setattr(kl, "DynamixelMotorsBus", FakeBus)
    FakeBus.instances = []
    return FakeBus.instances


def test_so101_through_lerobot_degrees_to_radians_and_action_dicts(fake_buses, tmp_path):
    arm = LeRobotArm(
        "so101_follower", port="/dev/fake", id="f1", calibration_dir=str(tmp_path), check_port=False
    )
    arm.connect()
    bus = fake_buses[-1]
    assert type(arm.robot).__name__ == "SOFollower" and bus.port == "/dev/fake"
    assert ("connect",) in bus.calls and ("configure_motors",) in bus.calls  # LeRobot's own connect/configure
    assert arm.joint_names == ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"]
    bus.present.update({"shoulder_pan": 90.0, "elbow_flex": -45.0, "gripper": 50.0})
    st = arm.read_state()
    assert np.allclose(st.joint_positions, np.deg2rad([90, 0, -45, 0, 0]))
    assert st.gripper_width == pytest.approx(0.04) and np.all(np.isnan(st.ee_pos))
    arm.command_joint_positions(np.deg2rad([10, 20, 30, 40, 50]))
    name, values = bus.calls[-1][1], bus.calls[-1][2]
    assert name == "Goal_Position"
    assert values == pytest.approx({"shoulder_pan": 10, "shoulder_lift": 20, "elbow_flex": 30, "wrist_flex": 40,
                                    "wrist_roll": 50})  # fmt: skip
    arm.command_gripper(0.02)
    assert bus.calls[-1][2] == {"gripper": pytest.approx(25.0)}
    lim = arm.limits()  # calibrated range 1024..3072 of 4096 ticks: +-90 deg
    assert np.allclose(lim.joint_upper, np.deg2rad(2048 / 2 * 360 / 4095))
    with pytest.raises(CommandRejectedError, match="calibrated range"):
        arm.command_joint_positions(np.full(5, 2.0))
    with pytest.raises(CommandRejectedError, match="kinematic"):
        arm.command_ee_pose(np.zeros(3), np.array([1.0, 0, 0, 0]))
    arm.disconnect()
    assert bus.calls[-1] == ("disconnect", True)


def test_koch_and_range_mode_conversion_through_calibration(fake_buses, tmp_path):
    arm = LeRobotArm(
        "koch_follower", port="/dev/fake", id="k", calibration_dir=str(tmp_path), check_port=False
    )
    arm.connect()
    assert type(arm.robot).__name__ == "KochFollower"
    bus = fake_buses[-1]
    assert bus.motors["elbow_flex"].norm_mode is MotorNormMode.DEGREES  # our default use_degrees=True
    arm.disconnect()
    # [-100, 100] (Koch leader): raw = range mapped, then degrees about mid-range
    leader = LeaderArm(
        "koch_leader", port="/dev/fake", id="l", calibration_dir=str(tmp_path), check_port=False
    )
    leader.connect()
    lbus = fake_buses[-1]
    assert lbus.motors["shoulder_pan"].norm_mode is MotorNormMode.RANGE_M100_100
    lbus.present.update({"shoulder_pan": 100.0, "shoulder_lift": -50.0, "gripper": 30.0})
    cmd = leader.poll()
    assert cmd.mode == "joints" and cmd.gripper == pytest.approx(0.3)
    half = np.deg2rad(1024 * 360 / 4095)  # range half-width 1024 ticks
    assert cmd.joint_positions[0] == pytest.approx(half) and cmd.joint_positions[1] == pytest.approx(
        -half / 2
    )
    for v in (-100.0, -12.5, 0.0, 77.0):
        r = motor_value_to_rad(lbus, "elbow_flex", v)
        assert rad_to_motor_value(lbus, "elbow_flex", r) == pytest.approx(v)
    leader.disconnect()


def test_so101_leader_drives_follower_joint_targets(fake_buses, tmp_path):
    leader = LeaderArm("so101_leader", port="/dev/a", id="l", calibration_dir=str(tmp_path), check_port=False)
    arm = LeRobotArm("so101_follower", port="/dev/b", id="f", calibration_dir=str(tmp_path), check_port=False)
    leader.connect(), arm.connect()
    fake_buses[0].present.update({"shoulder_pan": 15.0, "wrist_roll": -30.0})
    cmd = leader.poll()
    arm.command_joint_positions(cmd.joint_positions)
    assert fake_buses[1].calls[-1][2]["shoulder_pan"] == pytest.approx(15.0)
    assert fake_buses[1].calls[-1][2]["wrist_roll"] == pytest.approx(-30.0)
    leader.disconnect(), arm.disconnect()


def test_missing_port_and_uncalibrated_arm(fake_buses, tmp_path, monkeypatch):
    with pytest.raises(DeviceNotFoundError, match=r"/dev/ttyACM9.*Ports present.*dialout"):
        LeRobotArm("so101_follower", port="/dev/ttyACM9", calibration_dir=str(tmp_path)).connect()
    with pytest.raises(DeviceNotFoundError, match="/dev/ttyUSB7"):
        LeaderArm("koch_leader", port="/dev/ttyUSB7", calibration_dir=str(tmp_path)).connect()
    monkeypatch.setattr(FakeBus, "__init__", _uncalibrated_init)
    arm = LeRobotArm(
        "so101_follower", port="/dev/fake", id="new", calibration_dir=str(tmp_path), check_port=False
    )
    with pytest.raises(DeviceFaultError, match="lerobot-calibrate --robot.type=so101_follower"):
        arm.connect()
    assert not arm.is_connected


_orig_init = FakeBus.__init__


def _uncalibrated_init(self, *a, **k):
    _orig_init(self, *a, **k)
    self.is_calibrated = False

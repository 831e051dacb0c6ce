"""The simulated robot behind the hardware interfaces, and the interfaces' misuse errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hardware.arm import Arm, ArmLimits, ArmState  # noqa: E402
from hardware.camera import Camera, Frame  # noqa: E402
from hardware.errors import (  # noqa: E402
    CommandRejectedError,
    DeviceAlreadyConnectedError,
    DeviceNotConnectedError,
)
from hardware.teleop import TeleopCommand, TeleopDevice  # noqa: E402

pytest.importorskip("mujoco")

from sim.embedded.robot import SimArm, SimCamera, SimRobot  # noqa: E402
from sim.embedded.scene import topdown_quat  # noqa: E402


@pytest.fixture
def fast_robot():
    return SimRobot(realtime=False, seed=0)


def test_hardware_does_not_import_sim_or_robopolicy():
    code = (
        "import sys, hardware.arm, hardware.camera, hardware.teleop, hardware.errors;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sim', 'robopolicy', 'mujoco')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_abcs_cannot_be_instantiated_half_done():
    class Half(Arm):
        def connect(self):
            pass

    with pytest.raises(TypeError):
        Half()
    with pytest.raises(TypeError):
        Camera()
    with pytest.raises(TypeError):
        TeleopDevice()


def test_teleop_command_validation():
    cmd = TeleopCommand(timestamp=time.monotonic(), mode="delta", pos=np.zeros(3), buttons={"record": True})
    assert cmd.gripper == 1.0 and cmd.buttons["record"]
    with pytest.raises(ValueError, match="quat"):
        TeleopCommand(timestamp=0.0, mode="absolute", pos=np.zeros(3))
    with pytest.raises(ValueError, match="mode"):
        TeleopCommand(timestamp=0.0, mode="twist", pos=np.zeros(3))  # type: ignore[arg-type]


def test_arm_misuse_raises_clear_errors(fast_robot):
    arm = SimArm(fast_robot)
    with pytest.raises(DeviceNotConnectedError, match="connect"):
        arm.read_state()
    with pytest.raises(DeviceNotConnectedError):
        arm.command_gripper(0.0)
    arm.connect()
    with pytest.raises(DeviceAlreadyConnectedError):
        arm.connect()
    with pytest.raises(CommandRejectedError, match="6 values"):
        arm.command_joint_positions(np.zeros(5))
    with pytest.raises(CommandRejectedError, match="NaN"):
        arm.command_ee_pose(np.array([0.4, 0.0, np.nan]), topdown_quat(0.0))
    arm.disconnect()
    arm.disconnect()  # safe twice
    with pytest.raises(DeviceNotConnectedError):
        arm.read_state()


def test_camera_misuse_raises_clear_errors(fast_robot):
    cam = SimCamera(fast_robot, "front")
    with pytest.raises(DeviceNotConnectedError, match="start"):
        cam.latest()
    with pytest.raises(ValueError, match="camera"):
        SimCamera(fast_robot, "side")
    cam.start()
    try:
        with pytest.raises(DeviceAlreadyConnectedError):
            cam.start()
    finally:
        cam.stop()
    cam.stop()  # safe twice


def test_sim_arm_pose_command_moves_towards_target(fast_robot):
    with SimArm(fast_robot) as arm:
        assert isinstance(arm.limits(), ArmLimits) and arm.limits().n_joints == 6
        s0 = arm.read_state()
        assert isinstance(s0, ArmState) and s0.joint_positions.shape == (6,)
        goal = np.array([0.5, 0.12, 0.10])
        arm.command_ee_pose(goal, topdown_quat(0.4))
        arm.command_gripper(0.0)
        fast_robot.clock.sleep(1.5)
        s1 = arm.read_state()
        assert s1.timestamp > s0.timestamp
        assert np.linalg.norm(s1.ee_pos - goal) < 0.01 < np.linalg.norm(s0.ee_pos - goal)
        assert s1.gripper_width < 0.005 < s0.gripper_width
        # Velocity command: +y at 0.1 m/s for 0.5 s, plus the 0.2 s that the last command lasts.
        for _ in range(10):
            arm.command_ee_velocity(np.array([0.0, 0.1, 0.0]), np.zeros(3))
            fast_robot.clock.sleep(0.05)
        fast_robot.clock.sleep(0.3)
        s2 = arm.read_state()
        assert 0.055 < s2.ee_pos[1] - s1.ee_pos[1] < 0.08
        # Joint command: set-point speed limited, then reached.
        q_goal = s2.joint_positions + np.array([0.3, -0.1, 0.1, 0.0, 0.1, 0.5])
        arm.command_joint_positions(q_goal)
        fast_robot.clock.sleep(0.02)
        assert np.abs(arm.read_state().joint_positions - q_goal).max() > 0.1
        fast_robot.clock.sleep(1.0)
        assert np.abs(arm.read_state().joint_positions - q_goal).max() < 0.01


def test_sim_camera_frames_fast_mode(fast_robot):
    cam = SimCamera(fast_robot, "wrist", height=48, width=64, depth=True)
    cam.start()
    try:
        frames: list[Frame] = []
        for _ in range(3):
            frames.append(cam.latest())
            fast_robot.advance(0.1)
        assert frames[0].color.shape == (48, 64, 3) and frames[0].color.dtype == np.uint8
        assert frames[0].depth is not None and frames[0].depth.dtype == np.uint16
        assert [f.index for f in frames] == [0, 1, 2]
        assert frames[0].timestamp < frames[1].timestamp < frames[2].timestamp
        assert cam.latest().index == 3 and cam.latest().index == 3  # no new physics, no new frame
        k = cam.intrinsics()
        assert k.shape == (3, 3) and k[0, 2] == 32 and k[1, 2] == 24
        # A new episode restarts simulated time, but timestamps stay monotonic and frames keep coming.
        task = fast_robot.reset(seed=4)
        assert task.language
        after = cam.latest()
        assert after.index == 4 and after.timestamp > frames[-1].timestamp
    finally:
        cam.stop()


def test_realtime_mode_runs_at_wall_clock_rate():
    robot = SimRobot(realtime=True, seed=0)
    arm, cam = SimArm(robot), SimCamera(robot, "front", height=32, width=32, fps=20)
    arm.connect()
    cam.start()
    try:
        f0 = cam.latest()  # waits for the first frame (the render worker's GL start-up)
        t0 = arm.read_state().timestamp
        sim0 = robot.sim_time
        time.sleep(0.5)
        t1, f1 = arm.read_state().timestamp, cam.latest()
        assert 0.3 < t1 - t0 < 1.0
        # Simulated time follows the wall clock (loosely: the test machine is shared).
        assert 0.15 < robot.sim_time - sim0 < 0.8
        assert f1.index > f0.index and f1.timestamp > f0.timestamp
        assert abs(f1.timestamp - time.monotonic()) < 0.5  # stamped on the monotonic clock
    finally:
        cam.stop()
        arm.disconnect()
    assert robot._thread is None  # the last user stopped the physics thread

"""The device registry and configs: every config builds its driver (lazily, without importing sim unless
asked), the sim entries drive the simulated arm and camera end to end, and the real vendor SDKs with
no device attached give errors that name the device and what to check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hardware import registry
from hardware.errors import DeviceNotFoundError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_registry_imports_nothing_heavy():
    code = (
        "import sys, hardware.registry, hardware.camera_process, hardware.shm_ring;"
        "heavy = ('sim', 'robopolicy', 'mujoco', 'lerobot', 'rtde_control', 'xarm', 'pyrealsense2', 'cv2', 'hid',"
        " 'pygame', 'pynput', 'torch');"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "kind,path,cls",
    [
        ("arm", "robot/ur5e.yaml", "URArm"),
        ("arm", "robot/xarm7.yaml", "XArmArm"),
        ("arm", "robot/so101.yaml", "LeRobotArm"),
        ("arm", "robot/koch.yaml", "LeRobotArm"),
        ("camera", "camera/realsense.yaml", "ProcessCamera"),
        ("camera", "camera/opencv.yaml", "ProcessCamera"),
        ("teleop", "teleop/spacemouse.yaml", "SpaceMouse"),
        ("teleop", "teleop/keyboard.yaml", "Keyboard"),
        ("teleop", "teleop/gamepad.yaml", "Gamepad"),
        ("teleop", "teleop/leader.yaml", "LeaderArm"),
    ],
)
def test_every_config_builds_its_driver(kind, path, cls):
    cfg = registry.load_config(CONFIGS / path)
    dev = registry.make_from_config(kind, cfg)
    assert type(dev).__name__ == cls
    if path.endswith("koch.yaml"):
        assert dev.robot_type == "koch_follower"


def test_registry_errors_and_extension():
    with pytest.raises(KeyError, match="registered: .*ur"):
        registry.make_arm("kuka")
    with pytest.raises(ValueError, match="_target_"):
        registry.make_from_config("arm", {"_target_": "x.Y", "name": "ur"})
    with pytest.raises(ValueError, match="unknown keys"):
        registry.make_from_config("arm", {"name": "ur", "kwarg": {}})
    registry.register_camera("syn2", "hardware.drivers.synthetic:SyntheticCamera", {"height": 8, "width": 8})
    try:
        cam = registry.make_camera("syn2", name="x")
        assert cam.name == "x" and cam.height == 8
    finally:
        registry.CAMERAS.pop("syn2")
    assert "realsense" in registry.names("camera") and "sim" in registry.names("arm")


def test_process_camera_from_registry_by_name():
    cam = registry.make_camera("synthetic", process=True, name="p", height=16, width=16, fps=100.0)
    cam.start()
    try:
        f = cam.latest()
        assert cam.name == "p" and f.color.shape == (16, 16, 3)
    finally:
        cam.stop()


def test_sim_entries_drive_the_simulated_arm_and_camera():
    pytest.importorskip("mujoco")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim.embedded.robot import SimRobot

    robot = SimRobot(realtime=False, seed=0)
    arm = registry.make_from_config("arm", registry.load_config(CONFIGS / "robot/sim.yaml"), robot=robot)
    cam = registry.make_from_config("camera", registry.load_config(CONFIGS / "camera/sim.yaml"), robot=robot)
    with arm, cam:
        st = arm.read_state()
        arm.command_ee_pose(st.ee_pos + np.array([0.0, 0.0, 0.02]), st.ee_quat)
        for _ in range(50):
            robot.clock.sleep(0.01)
        assert arm.read_state().ee_pos[2] > st.ee_pos[2] + 0.005
        f = cam.latest()
        assert f.color.shape == (96, 96, 3) and cam.name == "front"


# ---- the real SDKs, no device attached: the errors must name the device and what to check -------------
def test_real_sdks_without_devices_give_clear_errors():
    pytest.importorskip("pyrealsense2")
    from hardware.drivers.realsense import RealSenseCamera

    with pytest.raises(
        DeviceNotFoundError, match=r"serial 123456 not found.*Connected RealSense serials: none"
    ):
        RealSenseCamera(serial="123456").start()

    pytest.importorskip("hid")
    from hardware.drivers.spacemouse import SpaceMouse

    with pytest.raises(DeviceNotFoundError, match="SpaceMouse"):
        SpaceMouse().connect()


def test_real_xarm_sdk_unreachable_ip():
    pytest.importorskip("xarm")
    from hardware.drivers.xarm import XArmArm

    arm = XArmArm(ip="127.0.0.1")  # nothing listens on the xArm port here: refused at once
    with pytest.raises(DeviceNotFoundError, match=r"127\.0\.0\.1 is unreachable"):
        arm.connect()
    assert not arm.is_connected


def test_real_ur_opencv_gamepad_sdks_without_devices():
    pytest.importorskip("rtde_control")
    from hardware.drivers.ur import URArm

    with pytest.raises(DeviceNotFoundError, match=r"127\.0\.0\.1.*Remote Control mode"):
        URArm(host="127.0.0.1").connect()  # RTDE port refused at once

    from hardware.drivers.opencv_camera import OpenCVCamera

    with pytest.raises(DeviceNotFoundError, match=r"device 9.*Video devices present"):
        OpenCVCamera(device=9, backend="v4l2").start()

    pytest.importorskip("pygame")
    from hardware.drivers.gamepad import Gamepad

    if os.environ.get("SDL_JOYSTICK_DEVICE") is None and not Path("/dev/input/js0").exists():
        with pytest.raises(DeviceNotFoundError, match="joystick index 0 not found"):
            Gamepad().connect()

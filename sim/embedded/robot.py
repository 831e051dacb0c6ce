"""The simulated robot behind the `hardware` interfaces: `SimArm(Arm)` and `SimCamera(Camera)`.

Both wrap one `SimRobot` (the embedded scene and its physics loop), so the teleop tool and the
deployment daemon drive the simulation through exactly the code paths they use on a real robot:

    robot = SimRobot(realtime=True)              # or realtime=False: stepped by robot.clock.sleep(dt)
    arm = SimArm(robot); cam = SimCamera(robot, "front")
    arm.connect(); cam.start()
    arm.command_ee_pose(pos, quat); frame = cam.latest()

Rendering runs in one worker thread per camera, because an OpenGL context belongs to the thread that made
it current: in real time the worker renders at the camera's fps (like a camera streaming frames); when
stepped on demand it renders when `latest()` finds the physics has moved since the last frame.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from hardware.arm import Arm, ArmLimits, ArmState
from hardware.camera import Camera, Frame
from hardware.errors import DeviceAlreadyConnectedError, HardwareError
from sim.embedded.mjcf import FINGER_MAX
from sim.embedded.physics import MAX_EE_SPEED, MAX_JOINT_VELOCITY, SimClock, SimRobot
from sim.embedded.render import CAMERAS, SceneRenderer, camera_geometry, camera_intrinsics
from sim.embedded.scene import WORKSPACE_LOWER, WORKSPACE_UPPER

__all__ = ["SimArm", "SimCamera", "SimClock", "SimRobot"]


class SimArm(Arm):
    """The embedded scene's 6-DoF arm and parallel gripper as an `Arm`."""

    def __init__(self, robot: SimRobot | None = None, name: str = "sim_arm") -> None:
        self.robot = robot if robot is not None else SimRobot(realtime=True)
        self.name = name
        self._connected = False

    def connect(self) -> None:
        """Start using the simulated arm (starts the physics thread in real-time mode)."""
        if self._connected:
            raise DeviceAlreadyConnectedError(f"arm '{self.name}' is already connected")
        self.robot.acquire()
        self.robot.hold()
        self._connected = True

    def disconnect(self) -> None:
        """Hold the current pose and stop using the arm."""
        if not self._connected:
            return
        self.robot.hold()
        self._connected = False
        self.robot.release()

    @property
    def is_connected(self) -> bool:
        """Whether connect() was called (and disconnect() not since)."""
        return self._connected

    def read_state(self) -> ArmState:
        """Joint positions / velocities, TCP pose and gripper width, stamped with the time they were reached."""
        self._require_connected()
        r = self.robot
        with r.lock:
            s = r.scene
            return ArmState(
                timestamp=r.state_time,
                joint_positions=s.arm_q(),
                ee_pos=s.ee_pos(),
                ee_quat=s.ee_quat(),
                gripper_width=s.gripper_width(),
                joint_velocities=s.arm_qvel(),
            )

    def command_joint_positions(self, q: np.ndarray) -> None:
        """Servo towards joint positions (rad), set-point speed limited to `limits().max_joint_velocity`."""
        self._require_connected()
        self.robot.command_joints(self._as_vector(q, 6, "joint positions"))

    def command_ee_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Servo the TCP towards a pose; the position is clipped to the workspace box."""
        self._require_connected()
        p = self._as_vector(pos, 3, "end-effector position")
        q = self._as_vector(quat, 4, "end-effector quaternion")
        if np.linalg.norm(q) < 1e-6:
            raise HardwareError("end-effector quaternion has zero norm; pass a unit quaternion (w, x, y, z)")
        self.robot.command_pose(p, q)

    def command_ee_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        """Move the TCP at a twist for 0.2 s (speed clipped to `limits().max_ee_speed`)."""
        self._require_connected()
        self.robot.command_velocity(
            self._as_vector(linear, 3, "linear velocity"), self._as_vector(angular, 3, "angular velocity")
        )

    def command_gripper(self, width: float) -> None:
        """Open / close the gripper to `width` (m), clipped to [0, 0.08]."""
        self._require_connected()
        self.robot.command_gripper(float(self._as_vector(np.array([width]), 1, "gripper width")[0]))

    def limits(self) -> ArmLimits:
        """Joint ranges, set-point velocity limits and the TCP workspace box."""
        s = self.robot.scene
        return ArmLimits(
            joint_lower=s.joint_lower.copy(),
            joint_upper=s.joint_upper.copy(),
            max_joint_velocity=MAX_JOINT_VELOCITY.copy(),
            workspace_lower=WORKSPACE_LOWER.copy(),
            workspace_upper=WORKSPACE_UPPER.copy(),
            gripper_max_width=2 * FINGER_MAX,
            max_ee_speed=MAX_EE_SPEED,
        )


class SimCamera(Camera):
    """A camera of the embedded scene ("front" or "wrist") as a `Camera`.

    Args:
        robot: the simulated robot whose scene is rendered.
        camera: "front" or "wrist".
        height, width: image size.
        fps: frame rate in real-time mode (frames are rendered by a worker at this rate).
        depth: also render depth (uint16 millimetres) into `Frame.depth`.
    """

    def __init__(
        self,
        robot: SimRobot,
        camera: str = "front",
        height: int = 96,
        width: int = 96,
        fps: float = 30.0,
        depth: bool = False,
    ) -> None:
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera '{camera}'; the embedded scene has {', '.join(CAMERAS)}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.robot = robot
        self._name = camera
        self.height, self.width = int(height), int(width)
        self.fps = float(fps)
        self.depth = depth
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._requests: queue.Queue[int] = queue.Queue()  # render requests (fast mode), by number
        self._requested = 0
        self._served = 0
        self._frame_ready = threading.Condition()
        self._frame: Frame | None = None
        self._frame_sim_time = -1.0
        self._error: BaseException | None = None

    @property
    def name(self) -> str:
        """Camera name (observation key `images/<name>`)."""
        return self._name

    def start(self) -> None:
        """Start the render worker (and the physics thread in real-time mode)."""
        if self._running:
            raise DeviceAlreadyConnectedError(f"camera '{self.name}' is already running")
        self.robot.acquire()
        self._stop.clear()
        self._error = None
        self._frame = None
        self._frame_sim_time = -1.0
        self._requested = self._served = 0
        self._thread = threading.Thread(target=self._worker, name=f"sim-camera-{self.name}", daemon=True)
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        """Stop the render worker and release its GL context."""
        if not self._running:
            return
        self._running = False
        self._stop.set()
        self._requests.put(-1)  # wake the worker if it waits for a request
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._thread = None
        self.robot.release()

    @property
    def is_running(self) -> bool:
        """Whether start() was called (and stop() not since)."""
        return self._running

    def intrinsics(self) -> np.ndarray:
        """3x3 K of the rendered image."""
        return camera_intrinsics(self.robot.scene.model, self.name, self.height, self.width)

    def camera_geometry(self) -> dict[str, np.ndarray | float]:
        """K, base_from_camera (OpenCV axes) and depth_scale of this camera at the scene's current state,
        as `EmbeddedEnv.camera_geometry` gives them (the wrist camera's pose is read now, not at the frame)."""
        with self.robot.lock:
            return camera_geometry(self.robot.scene.model, self.robot.scene.data, self.name, self.height,
                                   self.width)

    def latest(self, timeout: float = 5.0) -> Frame:
        """The newest frame; blocks until the first frame exists (or, stepped on demand, until the
        frame of the current physics state is rendered)."""
        self._require_running()
        with self._frame_ready:
            if not self.robot.realtime and (
                self._frame is None or self.robot.sim_time != self._frame_sim_time
            ):
                self._requested += 1
                self._requests.put(self._requested)
            wanted = self._requested
            ok = self._frame_ready.wait_for(
                lambda: self._error is not None or (self._frame is not None and self._served >= wanted),
                timeout=timeout,
            )
        if self._error is not None:
            raise HardwareError(
                f"camera '{self.name}' render worker failed: {self._error!r}"
            ) from self._error
        if not ok or self._frame is None:
            raise HardwareError(f"camera '{self.name}' produced no frame within {timeout} s")
        return self._frame

    def _render_once(self, renderer: SceneRenderer, index: int, request: int = 0) -> None:
        r = self.robot
        with r.lock:  # copy the geometry under the lock; draw outside it so physics is not held up
            renderer.update(r.scene.data, self.name)
            stamp, sim_time = r.state_time, r.sim_time
        color = renderer.color()
        depth = None
        if self.depth:
            with r.lock:
                renderer.update(r.scene.data, self.name)
            depth = renderer.depth_mm()
        frame = Frame(color=color, timestamp=stamp, index=index, depth=depth)
        with self._frame_ready:
            self._frame, self._frame_sim_time = frame, sim_time
            self._served = max(self._served, request)
            self._frame_ready.notify_all()

    def _worker(self) -> None:
        renderer: SceneRenderer | None = None
        index = 0
        try:
            renderer = SceneRenderer(self.robot.scene.model, self.height, self.width)
            period = 1.0 / self.fps
            next_t = time.monotonic()
            while not self._stop.is_set():
                if self.robot.realtime:
                    self._render_once(renderer, index)
                    index += 1
                    # Keep the frame rate on a fixed schedule; if rendering fell behind, skip frames.
                    next_t = max(next_t + period, time.monotonic())
                    self._stop.wait(next_t - time.monotonic())
                else:
                    request = self._requests.get()
                    if self._stop.is_set():
                        break
                    if self._frame is None or self.robot.sim_time != self._frame_sim_time:
                        self._render_once(renderer, index, request)
                        index += 1
                    else:  # an earlier request already rendered this physics state
                        with self._frame_ready:
                            self._served = max(self._served, request)
                            self._frame_ready.notify_all()
        except BaseException as e:  # surfaced to the caller by latest()
            with self._frame_ready:
                self._error = e
                self._frame_ready.notify_all()
        finally:
            if renderer is not None:
                renderer.close()

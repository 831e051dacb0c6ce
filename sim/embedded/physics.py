"""The simulated robot's physics loop: one embedded scene, a clock, and a joint-space controller.

`SimRobot` owns an `EmbeddedScene` and steps it either

- in **real time** (`realtime=True`): a background thread advances the physics at the wall-clock rate,
  and every timestamp is `time.monotonic()`, exactly as a real arm driver's would be; or
- **as fast as possible** (`realtime=False`): the physics only advances when asked (`advance(dt)` or
  `clock.sleep(dt)`), and timestamps are `t0 + simulated time` on the monotonic time base, so a control
  loop that sleeps through `robot.clock` runs faster than real time with consistent timestamps.

Commands (joint targets, end-effector pose or velocity targets, gripper width) are turned into joint servo
set-points by a controller that runs every `ctrl_every` physics steps: damped-least-squares IK for pose
targets, and a per-joint velocity limit on the set-point so that a far target never makes the arm jump.
`sim.embedded.robot.SimArm` and `SimCamera` put the `hardware` interfaces over this object.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import mujoco
import numpy as np

from sim.embedded.mjcf import BLOCK_HALF
from sim.embedded.scene import PHYSICS_DT, WORKSPACE_LOWER, WORKSPACE_UPPER, EmbeddedScene
from sim.embedded.task_defs import COLORS, TaskInstance, sample_instance, sample_layout

MAX_JOINT_VELOCITY = np.array([2.0, 2.0, 2.5, 3.0, 3.0, 3.0])  # rad/s, limit on the servo set-point
MAX_EE_SPEED = 0.5  # m/s, velocity commands are clipped to this
MAX_EE_ANGULAR_SPEED = 2.0  # rad/s
VELOCITY_TIMEOUT = 0.2  # s, a velocity command without a follow-up decays to a hold (as speedL does)


class SimClock:
    """The time base of a `SimRobot`: wall-clock monotonic (real time) or simulated (as fast as possible)."""

    def __init__(self, robot: SimRobot, realtime: bool) -> None:
        self._robot = robot
        self.realtime = realtime
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Seconds on the monotonic time base (simulated time shifted onto it when not real time)."""
        if self.realtime:
            return time.monotonic()
        return self._t0 + self._robot.sim_time

    def rebase(self) -> None:
        """Call before the simulated time restarts at 0 (a reset), so that `now()` never goes back."""
        self._t0 += self._robot.sim_time

    def sleep(self, dt: float) -> None:
        """Wait `dt` seconds: a real sleep in real time, otherwise advance the physics by `dt`."""
        if dt <= 0:
            return
        if self.realtime:
            time.sleep(dt)
        else:
            self._robot.advance(dt)


@dataclass
class _Command:
    mode: str = "hold"  # hold | joint | pose | velocity
    q: np.ndarray = field(default_factory=lambda: np.zeros(6))
    pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    quat: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0]))
    lin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    ang: np.ndarray = field(default_factory=lambda: np.zeros(3))
    deadline: float = 0.0  # sim time at which a velocity command expires


class SimRobot:
    """The embedded scene stepped as a robot: thread-safe state access, commands and a clock.

    Args:
        realtime: step in a background thread at the wall-clock rate (True) or on demand (False).
        ctrl_every: physics steps per controller update (10 -> 50 Hz IK / set-point update).
        seed: layout of the blocks at construction (see `reset`).
        task: task family whose layout `reset` samples ("push", "pick_place", "stack", "multitask").
    """

    def __init__(
        self, realtime: bool = True, ctrl_every: int = 10, seed: int | None = 0, task: str = "multitask"
    ) -> None:
        if ctrl_every < 1:
            raise ValueError(f"ctrl_every must be >= 1 physics step, got {ctrl_every}")
        self.scene = EmbeddedScene()
        self.lock = threading.RLock()
        self.ctrl_every = ctrl_every
        self.ctrl_dt = ctrl_every * PHYSICS_DT
        self.clock = SimClock(self, realtime)
        self.task_family = task
        self.task: TaskInstance | None = None
        self.state_time = self.clock.now()  # clock time at which the current physics state was reached
        self.overruns = 0  # real-time loop iterations that fell > 0.1 s behind the wall clock
        self._cmd = _Command()
        self._q_set = self.scene.home_q.copy()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending = 0.0
        self.reset(seed)

    # ------------------------------------------------------------------ life cycle
    @property
    def realtime(self) -> bool:
        """Whether the physics runs in a background thread at the wall-clock rate."""
        return self.clock.realtime

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the last reset."""
        return float(self.scene.data.time)

    def acquire(self) -> None:
        """Register a user (arm or camera); the first one starts the real-time physics thread."""
        with self.lock:
            self._users += 1
            if self.realtime and self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="sim-physics", daemon=True)
                self._thread.start()

    def release(self) -> None:
        """Unregister a user; the last one stops the physics thread."""
        with self.lock:
            self._users = max(0, self._users - 1)
            thread = self._thread if self._users == 0 else None
            if thread is not None:
                self._stop.set()
                self._thread = None
        if thread is not None:
            thread.join(timeout=2.0)

    def reset(self, seed: int | None = None, task: str | None = None) -> TaskInstance:
        """New episode: arm home, blocks laid out for a goal drawn from `seed`; returns the goal."""
        rng = np.random.default_rng(seed)
        with self.lock:
            self.task_family = task or self.task_family
            self.task = sample_instance(self.task_family, rng)
            blocks, yaws, target = sample_layout(self.task, rng)
            self.clock.rebase()
            self.scene.reset()
            for name in COLORS:
                self.scene.set_block_pose(name, np.array([*blocks[name], BLOCK_HALF]), yaws[name])
            self.scene.set_target_pos(target)
            mujoco.mj_forward(self.scene.model, self.scene.data)
            self._q_set = self.scene.home_q.copy()
            self._cmd = _Command(mode="hold")
            self._pending = 0.0
            self.state_time = self.clock.now()
        return self.task

    # ------------------------------------------------------------------ commands (thread-safe)
    def command_joints(self, q: np.ndarray) -> None:
        """Servo towards joint positions `q` (clipped to the joint ranges)."""
        with self.lock:
            self._cmd = _Command(mode="joint", q=np.clip(q, self.scene.joint_lower, self.scene.joint_upper))

    def command_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Servo the TCP towards a pose (position clipped to the workspace box)."""
        quat = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
        with self.lock:
            self._cmd = _Command(mode="pose", pos=np.clip(pos, WORKSPACE_LOWER, WORKSPACE_UPPER), quat=quat)

    def command_velocity(self, lin: np.ndarray, ang: np.ndarray) -> None:
        """Move the TCP at a base-frame twist for VELOCITY_TIMEOUT s (renew it to keep moving)."""
        lin = np.asarray(lin, dtype=np.float64)
        speed = np.linalg.norm(lin)
        if speed > MAX_EE_SPEED:
            lin = lin * (MAX_EE_SPEED / speed)
        ang = np.clip(np.asarray(ang, dtype=np.float64), -MAX_EE_ANGULAR_SPEED, MAX_EE_ANGULAR_SPEED)
        with self.lock:
            prev = self._cmd
            if prev.mode == "velocity":
                pos, quat = prev.pos, prev.quat
            else:  # start integrating from where the tool is now
                pos, quat = self.scene.ee_pos(), self.scene.ee_quat()
            self._cmd = _Command(
                mode="velocity",
                pos=pos,
                quat=quat,
                lin=lin,
                ang=ang,
                deadline=self.sim_time + VELOCITY_TIMEOUT,
            )

    def command_gripper(self, width: float) -> None:
        """Servo the gripper opening towards `width` (m)."""
        with self.lock:
            self.scene.set_gripper_target(width)

    def hold(self) -> None:
        """Stop where the arm is now."""
        with self.lock:
            self._q_set = self.scene.arm_q()
            self._cmd = _Command(mode="hold")

    # ------------------------------------------------------------------ stepping
    def _control_tick(self) -> None:
        cmd = self._cmd
        s = self.scene
        if cmd.mode == "velocity":
            if self.sim_time >= cmd.deadline:
                cmd.lin[:] = 0.0
                cmd.ang[:] = 0.0
            cmd.pos = np.clip(cmd.pos + cmd.lin * self.ctrl_dt, WORKSPACE_LOWER, WORKSPACE_UPPER)
            quat = cmd.quat.copy()
            # Base-frame angular velocity: rotate on the left, q <- exp(w dt) * q.
            spin = np.array([1.0, 0.0, 0.0, 0.0])
            mujoco.mju_quatIntegrate(spin, cmd.ang, self.ctrl_dt)
            mujoco.mju_mulQuat(quat, spin, cmd.quat)
            cmd.quat = quat
        if cmd.mode == "joint":
            goal = cmd.q
        elif cmd.mode in ("pose", "velocity"):
            goal = s.solve_ik(cmd.pos, cmd.quat, self._q_set, iters=4)
        else:
            goal = self._q_set
        step = MAX_JOINT_VELOCITY * self.ctrl_dt
        self._q_set = self._q_set + np.clip(goal - self._q_set, -step, step)
        s.set_arm_target(self._q_set)

    def _step_chunk(self) -> None:
        """One controller update followed by `ctrl_every` physics steps (caller holds the lock)."""
        self._control_tick()
        self.scene.step(self.ctrl_every)

    def advance(self, dt: float) -> None:
        """Simulate `dt` more seconds now (as-fast-as-possible mode only)."""
        if self.realtime:
            raise RuntimeError(
                "advance() steps the physics on demand and is only for realtime=False; in real time the "
                "background thread steps it (use robot.clock.sleep to wait)"
            )
        with self.lock:
            self._pending += dt
            n = int(self._pending / self.ctrl_dt + 1e-9)
            self._pending -= n * self.ctrl_dt
            for _ in range(n):
                self._step_chunk()
            self.state_time = self.clock.now()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self.lock:
                self._step_chunk()
                self.state_time = time.monotonic()
            next_t += self.ctrl_dt
            lag = time.monotonic() - next_t
            if lag > 0.1:  # the machine cannot keep up: drop the debt instead of racing to catch up
                self.overruns += 1
                next_t = time.monotonic()
            elif lag < 0:
                self._stop.wait(-lag)

"""The teleop collection session: drive an arm from a TeleopDevice at a fixed rate and record episodes.

One loop iteration (one control step, on the session's clock):

1. poll the teleop device; device buttons and preview / terminal keys become actions (keys.py);
2. read the arm state and the latest frame of every camera (a frame whose timestamp did not advance
   since the previous step is counted as *dropped*; no new frame for `camera_timeout` s is a *stall*;
   frames.py);
3. apply the actions (start, stop-and-save, success / failure, discard, reset, quit; episodes.py);
4. turn the command into an end-effector target (a delta is added to the previous target, kept within
   `max_lead` of the measured pose) and command the arm and gripper (command.py);
5. while recording, append the step to the EpisodeStore: observation of this step + the action commanded
   at it (DESIGN.md: action_t is what was sent after observing obs_t; the recorded keys: records.py), and
   with a `pointcloud` config the point cloud of this step's frames (pointclouds.py);
6. draw the preview; sleep until the next tick (a fixed schedule; a late step skips ahead instead of racing).

Safety of the data: an episode is only part of the store once saved (EpisodeStore commits atomically).
Ctrl-C / SIGTERM (first one: finish cleanly; a second one: raise KeyboardInterrupt), an exception, a lost
device (DeviceNotConnectedError or another HardwareError from the teleop device, the arm or a camera) or a
camera stall end the current episode as ``on_abort`` says (``save``: saved with aborted=True,
success=False and the reason; ``discard``) and never touch the episodes saved before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hardware.arm import Arm, ArmState
from hardware.camera import Camera, Frame
from hardware.errors import DeviceNotConnectedError, HardwareError
from hardware.teleop import TeleopDevice
from robopolicy.collect.command import TargetTracker
from robopolicy.collect.episodes import EpisodeBook
from robopolicy.collect.frames import FrameWatch
from robopolicy.collect.keys import ButtonEdges, route_keys
from robopolicy.collect.lifecycle import close_devices, hold_arm, install_stop_signals, open_devices
from robopolicy.collect.pointclouds import check_store_pointcloud, make_session_pointcloud
from robopolicy.collect.preview import Preview, PreviewStatus
from robopolicy.collect.records import (
    ACTION_MODES,
    Clock,
    EpisodeOutcome,
    MonotonicClock,
    Scene,
    SessionResult,
    _check_store_keys,
    _rate,
    episode_attrs,
    fill_timing,
    step_row,
)

__all__ = ["ON_ABORT", "CollectSession", "EpisodeOutcome", "MonotonicClock", "SessionResult"]

ON_ABORT = ("save", "discard")


class CollectSession:
    """Teleoperate `arm` with `teleop`, record episodes into `store`. Call :meth:`run` once.

    Args:
        arm, cameras, teleop: the devices (connected here if they are not yet; closed at the end if so).
        store: an EpisodeStore open for writing.
        fps: control and recording rate.
        task, robot_name: stored in every episode's attributes.
        language: the instruction when there is no scene to give one.
        scene: a resettable scene (sim): reset between episodes with seed, seed + 1, ...; its success check
            decides `success` when an episode is stopped with `record`.
        clock: time base (default time.monotonic; the as-fast-as-possible simulator passes its own).
        episodes: end the session after this many saved episodes (None: until quit).
        on_abort: what happens to the episode being recorded when the session is cut short: save | discard.
        preview: a Preview (window / file / none).
        action_mode: target | delta (see the module docstring).
        max_steps: stop and save an episode after this many steps (None: no limit).
        auto_start: start recording right after each reset (no key needed).
        camera_timeout: seconds without a new frame before a camera counts as stalled.
        max_lead: how far (m) a delta target may run ahead of the measured EE position.
        key_source: an object with poll() -> list of key names (e.g. TerminalKeys), or None.
        pointcloud: PointCloudConfig fields (or a PointCloudConfig) to record a `pointcloud` key from the
            cameras' depth, None: off; its cameras are checked (depth, geometry) before the first episode.
        pointcloud_workspace: the crop box (lower xyz, upper xyz) when `pointcloud` sets none (sim's default).
        handle_signals: catch SIGINT / SIGTERM (main thread only) to end the session cleanly.
        log: where progress lines go.
    """

    def __init__(
        self,
        arm: Arm,
        cameras: Sequence[Camera],
        teleop: TeleopDevice,
        store,
        *,
        fps: float = 10.0,
        task: str = "",
        language: str = "",
        robot_name: str = "",
        scene: Scene | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        episodes: int | None = None,
        on_abort: str = "save",
        preview: Preview | None = None,
        action_mode: str = "target",
        max_steps: int | None = None,
        auto_start: bool = False,
        camera_timeout: float = 1.0,
        max_lead: float = 0.05,
        key_source: Any = None,
        pointcloud: Any = None,
        pointcloud_workspace: tuple | None = None,
        handle_signals: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if on_abort not in ON_ABORT:
            raise ValueError(f"on_abort must be one of {ON_ABORT}, got {on_abort!r}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        if episodes is not None and episodes < 1:
            raise ValueError(f"episodes must be >= 1 (or None: until quit), got {episodes}")
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        if abs(float(store.fps) - float(fps)) > 1e-9 and store.n_episodes:
            raise ValueError(f"the store at {store.path} was recorded at {store.fps:g} fps; record at that rate "
                             f"(fps={store.fps:g}) or write to a new store")
        self._points = make_session_pointcloud(pointcloud, cameras, pointcloud_workspace)
        _check_store_keys(store, names, action_mode, self._points.shape if self._points is not None else None)
        check_store_pointcloud(store, self._points)
        self.arm, self.cameras, self.teleop, self.store = arm, list(cameras), teleop, store
        self.fps = float(fps)
        self.task, self.language, self.robot_name = task, language, robot_name
        self.scene = scene
        self.clock: Clock = clock or MonotonicClock()
        self.seed0 = int(seed)
        self.episodes_target = episodes
        self.on_abort = on_abort
        self.preview = preview or Preview()
        self.action_mode = action_mode
        self.max_steps = max_steps
        self.auto_start = auto_start
        self.camera_timeout = float(camera_timeout)
        self.max_lead = float(max_lead)
        self.key_source = key_source
        self.handle_signals = handle_signals
        self.log = log

        self.result = SessionResult(target_hz=self.fps)
        self._book = EpisodeBook(store, self.result, on_abort, self._sim_success, log)
        self._target = TargetTracker(action_mode, max_lead)
        self._frames = FrameWatch(camera_timeout)
        self._end: str | None = None
        self._signal: str | None = None
        self._edges = ButtonEdges()
        self._pending_actions: list[str] = []
        self._attempt = 0
        self._seed: int | None = None
        self._last_t: float | None = None
        self._step_times: list[float] = []
        self._fresh_state: ArmState | None = None
        self._busy: list[float] = []  # wall seconds spent inside each step (the loop's own cost)
        self._ran = False
        self._message = ""

    # ------------------------------------------------------------------ public
    @property
    def recording(self) -> bool:
        """Whether an episode is being recorded."""
        return self._book.current is not None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to end at the next step (thread-safe; what a signal handler does)."""
        self._signal = reason

    def run(self) -> SessionResult:
        """Run until `episodes` are saved, quit, Ctrl-C, or a lost device; returns the summary.

        An unexpected exception ends the current episode as `on_abort` says and is re-raised.
        """
        if self._ran:
            raise RuntimeError("a CollectSession runs once; make a new one")
        self._ran = True
        opened: list[Any] = []
        restore = (install_stop_signals(lambda: self._signal is not None, self.request_stop)
                   if self.handle_signals else lambda: None)
        wall0 = time.monotonic()
        try:
            open_devices(self.arm, self.cameras, self.teleop, opened)
            self._target.limits = self.arm.limits()
            self._new_scene()
            self._warm_up()
            if self._points is not None and self._end is None:
                self._points.check()  # a camera without depth / geometry: refused before anything is recorded
            period = 1.0 / self.fps
            next_t = self.clock.now()
            while self._end is None:
                w0 = time.perf_counter()
                self._step()
                self._busy.append(time.perf_counter() - w0)
                if self._end is not None:
                    break
                if not getattr(self.clock, "realtime", True):  # simulated clock: time only moves in sleep
                    self.clock.sleep(period)
                    continue
                next_t += period
                now = self.clock.now()
                if now > next_t + period:  # more than a period late: skip ahead instead of racing
                    self.result.overruns += 1
                    next_t = now
                else:
                    self.clock.sleep(next_t - now)
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            reason = "interrupted (KeyboardInterrupt)" if interrupted else f"{type(e).__name__}: {e}"
            self.result.ended_by = "interrupt" if interrupted else "error"
            self.result.error = reason
            self._book.abort(reason)
            raise
        finally:
            hold_arm(self.arm, self.log)
            close_devices(opened, (self.preview.close, getattr(self.key_source, "close", None)), self.log)
            restore()
            if not self.result.ended_by:
                self.result.ended_by = self._end or "error"
            fill_timing(self.result, self._step_times, self._busy, time.monotonic() - wall0, self.fps,
                        self._points.build_s if self._points is not None else ())
            self.log(self.result.summary())
        return self.result

    # ------------------------------------------------------------------ life cycle
    def _warm_up(self) -> None:
        """Wait for every camera's first frame before the fixed-rate schedule starts (a driver's first
        frame can take a while: device start-up, a GL context), so start-up is not counted as overruns."""
        for cam in self.cameras:
            try:
                cam.latest()
            except HardwareError as e:
                return self._lost(f"camera '{cam.name}' delivered no first frame: {e}")

    def _new_scene(self) -> None:
        """Reset the scene (sim) with the next seed and re-anchor the EE target on the measured pose."""
        if self.scene is not None:
            self._seed = self.seed0 + self._attempt
            self._attempt += 1
            info = self.scene.reset(self._seed)
            self.language = str(info.get("language", self.language))
        s = self.arm.read_state()
        self._fresh_state = s  # the state read at the top of this step predates the reset
        self._target.anchor(s)
        self._message = f"ready: {self.language}" if self.language else "ready"
        if self.auto_start and self._end is None:
            self._pending_actions.append("record")

    # ------------------------------------------------------------------ one step
    def _step(self) -> None:
        if self._signal is not None:
            self._book.abort(self._signal)
            self._end, self.result.error = "interrupt", self._signal
            return
        try:
            cmd = self.teleop.poll()
        except HardwareError as e:
            return self._lost(f"teleop device '{getattr(self.teleop, 'name', 'teleop')}' lost: {e}")
        actions = self._pending_actions + self._edges(cmd.buttons)
        self._pending_actions = []
        if self.key_source is not None:
            self._keys(self.key_source.poll())
        try:
            state = self.arm.read_state()
        except HardwareError as e:
            return self._lost(f"arm '{getattr(self.arm, 'name', 'arm')}' lost: {e}")
        frames: dict[str, Frame] = {}
        for cam in self.cameras:
            try:
                frames[cam.name] = cam.latest()
            except HardwareError as e:
                return self._lost(f"camera '{cam.name}' lost: {e}")
        t = self.clock.now()
        if self._last_t is not None and t <= self._last_t:
            t = float(np.nextafter(self._last_t, np.inf))
        self._last_t = t
        self._step_times.append(t)

        dropped, stalled = self._frames.check(frames, t)
        if stalled is not None:
            return self._lost(f"camera '{stalled}' stalled: no new frame for more than "
                              f"{self._frames.camera_timeout:g} s (check its cable / process)")

        self._fresh_state = None
        for action in actions:
            self._handle(action, t)
            if self._end is not None:
                return

        if self._fresh_state is not None:  # the scene was reset by an action of this step
            state, self._fresh_state = self._fresh_state, None
        try:
            action_vec = self._target.command(self.arm, cmd, state)
        except DeviceNotConnectedError as e:
            return self._lost(f"arm '{getattr(self.arm, 'name', 'arm')}' lost: {e}")

        ep = self._book.current
        if ep is not None:
            points, keep_depth = None, True
            if self._points is not None:
                # Built here, in the step, after the arm was commanded (the operator's latency first): 30-75 ms
                # on real cameras, timed into result.pointcloud_ms_* / step_ms_* and counted in overruns.
                points, keep_depth = self._points(frames), self._points.keep_depth
            ep.rec.add_step(step_row(t, state, action_vec, frames, points, keep_depth))
            ep.times.append(t)
            for name in dropped:
                ep.dropped[name] += 1
            if self.max_steps is not None and ep.n_steps >= self.max_steps:
                self._save(success=self._sim_success(), reason=f"max_steps={self.max_steps} reached")

        ep = self._book.current
        status = PreviewStatus(
            recording=ep is not None,
            n_saved=self.result.n_saved,
            elapsed_s=(t - ep.t0) if ep is not None else 0.0,
            language=self.language,
            loop_hz=_rate(self._step_times[-20:]),
            dropped=ep.dropped if ep is not None else None,
            message=self._message,
        )
        self._keys(self.preview.show({n: f.color for n, f in frames.items()}, status))

    def _keys(self, names: Sequence[str]) -> None:
        """Keys from the preview window or the terminal (keys.route_keys); their actions run next step."""
        self._pending_actions.extend(route_keys(self.teleop, names))

    # ------------------------------------------------------------------ episode control
    def _handle(self, action: str, t: float) -> None:
        ep = self._book.current
        if action == "record":
            if ep is None:
                self._start(t)
            else:
                self._save(success=self._sim_success(), reason="stopped (record)")
        elif action in ("success", "failure"):
            if ep is None:
                self._message = f"'{action}' ignored: not recording"
            else:
                self._save(success=action == "success", reason=f"marked {action}")
        elif action == "discard":
            if ep is None:
                self._message = "'discard' ignored: not recording"
            elif self._book.discard("discarded by the operator"):
                self._after_episode()
        elif action == "reset":
            if ep is None:
                self._new_scene()
                self.log(f"scene reset (seed {self._seed}): {self.language}")
            else:
                self._message = "'reset' ignored while recording: save or discard first"
        elif action == "quit":
            if ep is not None:
                self._book.abort("quit while recording")
            self._end = "quit"

    def _start(self, t: float) -> None:
        names = [c.name for c in self.cameras]
        attrs = episode_attrs(
            task=self.task, language=self.language, robot=self.robot_name,
            teleop=getattr(self.teleop, "name", type(self.teleop).__name__), cameras=names, fps=self.fps,
            seed=self._seed, action_mode=self.action_mode, initial_target=self._target.initial_target(),
            pointcloud=self._points.attrs() if self._points is not None else None)
        self._book.start(attrs, t, names, self._seed, self.language)
        self._message = ""

    def _sim_success(self) -> bool | None:
        if self.scene is None:
            return None
        try:
            return self.scene.success()
        except Exception:
            return None

    def _save(self, success: bool | None, reason: str) -> None:
        if self._book.save(success, reason):
            self._after_episode()

    def _after_episode(self) -> None:
        if self.episodes_target is not None and self.result.n_saved >= self.episodes_target:
            self._end = "done"
            return
        self._new_scene()

    def _lost(self, reason: str) -> None:
        self.log(f"error: {reason}")
        self._book.abort(reason)
        hold_arm(self.arm, self.log)
        self._end, self.result.error = "device_lost", reason

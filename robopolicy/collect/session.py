"""The teleop collection session: drive an arm from a TeleopDevice at a fixed rate and record episodes.

One loop iteration (one control step, on the session's clock):

1. poll the teleop device; device buttons and preview / terminal keys become actions (keys.py);
2. read the arm state and the latest frame of every camera (a frame whose timestamp did not advance
   since the previous step is counted as *dropped*; no new frame for `camera_timeout` s is a *stall*);
3. apply the actions (start, stop-and-save, success / failure, discard, reset, quit);
4. turn the command into an end-effector target (a delta is added to the previous target, kept within
   `max_lead` of the measured pose) and command the arm and gripper;
5. while recording, append the step to the EpisodeStore: observation of this step + the action commanded
   at it (DESIGN.md: action_t is what was sent after observing obs_t);
6. draw the preview; sleep until the next tick (a fixed schedule; a late step skips ahead instead of racing).

Recorded keys (one row per step):

- ``timestamp`` float64: when the step's observation was assembled (session clock, monotonic);
- ``state`` float32 [n_joints + 8]: joint positions, gripper width (m), EE position (m), EE quaternion
  (w, x, y, z) -- for the embedded 6-DoF arm exactly the 14-D proprio state of the sim env;
- ``action`` float32: ``action_mode=target`` [8]: the commanded EE position, quaternion and gripper width;
  ``action_mode=delta`` [7]: the change of the commanded EE position and orientation (rotation vector)
  since the previous step, and the gripper width;
- ``images/<cam>`` uint8 [H, W, 3] (and ``depth/<cam>`` uint16 when the camera gives depth);
- ``timestamps/<cam>`` float64: the capture time of that frame; ``timestamps/state``: when the state was
  measured.

Safety of the data: an episode is only part of the store once saved (EpisodeStore commits atomically).
Ctrl-C / SIGTERM (first one: finish cleanly; a second one: raise KeyboardInterrupt), an exception, a lost
device (DeviceNotConnectedError or another HardwareError from the teleop device, the arm or a camera) or a
camera stall end the current episode as ``on_abort`` says (``save``: saved with aborted=True,
success=False and the reason; ``discard``) and never touch the episodes saved before.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hardware.arm import Arm, ArmState
from hardware.camera import Camera, Frame
from hardware.errors import DeviceNotConnectedError, HardwareError
from hardware.teleop import TeleopCommand, TeleopDevice
from robopolicy.collect.geometry import (
    quat_conj,
    quat_from_rotvec,
    quat_mul,
    quat_normalize,
    rotvec_from_quat,
)
from robopolicy.collect.keys import ButtonEdges, action_for_key
from robopolicy.collect.preview import Preview, PreviewStatus
from robopolicy.collect.records import (
    ACTION_MODES,
    Clock,
    EpisodeOutcome,
    MonotonicClock,
    Scene,
    SessionResult,
    _check_store_keys,
    _Episode,
    _rate,
    state_vector,
)

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
        _check_store_keys(store, names, action_mode)
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
        self._episode: _Episode | None = None
        self._end: str | None = None
        self._signal: str | None = None
        self._edges = ButtonEdges()
        self._pending_actions: list[str] = []
        self._attempt = 0
        self._seed: int | None = None
        self._last_t: float | None = None
        self._last_frame_ts: dict[str, float] = {}
        self._last_new_frame_t: dict[str, float] = {}
        self._step_times: list[float] = []
        self._fresh_state: ArmState | None = None
        self._busy: list[float] = []  # wall seconds spent inside each step (the loop's own cost)
        self._target_pos = np.zeros(3)
        self._target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self._limits = None
        self._ran = False
        self._message = ""

    # ------------------------------------------------------------------ public
    @property
    def recording(self) -> bool:
        return self._episode is not None

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
        restore = self._install_signals()
        wall0 = time.monotonic()
        try:
            self._open(opened)
            self._limits = self.arm.limits()
            self._new_scene()
            self._warm_up()
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
            self._abort_episode(reason)
            raise
        finally:
            self._close(opened)
            restore()
            self._finish_stats(time.monotonic() - wall0)
            self.log(self.result.summary())
        return self.result

    # ------------------------------------------------------------------ life cycle
    def _install_signals(self) -> Callable[[], None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum, frame):  # noqa: ARG001
            if self._signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._signal = f"interrupted ({signal.Signals(signum).name})"

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, h in previous.items():
                signal.signal(sig, h)

        return restore

    def _open(self, opened: list[Any]) -> None:
        if not self.arm.is_connected:
            self.arm.connect()
            opened.append(self.arm)
        for cam in self.cameras:
            if not cam.is_running:
                cam.start()
                opened.append(cam)
        if not self.teleop.is_connected:
            self.teleop.connect()
            opened.append(self.teleop)

    def _close(self, opened: list[Any]) -> None:
        self._hold_arm()
        for closer in (self.preview.close, getattr(self.key_source, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception as e:  # never mask the real error
                    self.log(f"warning: closing {closer} failed: {e}")
        for dev in reversed(opened):
            try:
                if isinstance(dev, Camera):
                    dev.stop()
                else:
                    dev.disconnect()
            except Exception as e:
                self.log(f"warning: closing {type(dev).__name__} failed: {e}")

    def _warm_up(self) -> None:
        """Wait for every camera's first frame before the fixed-rate schedule starts (a driver's first
        frame can take a while: device start-up, a GL context), so start-up is not counted as overruns."""
        for cam in self.cameras:
            try:
                cam.latest()
            except HardwareError as e:
                return self._lost(f"camera '{cam.name}' delivered no first frame: {e}")

    def _hold_arm(self) -> None:
        """Command the arm to stay where it is (after a lost device, at the end)."""
        try:
            if self.arm.is_connected:
                s = self.arm.read_state()
                self.arm.command_ee_pose(s.ee_pos, s.ee_quat)
        except Exception as e:
            self.log(f"warning: could not command a hold: {e}")

    def _new_scene(self) -> None:
        """Reset the scene (sim) with the next seed and re-anchor the EE target on the measured pose."""
        if self.scene is not None:
            self._seed = self.seed0 + self._attempt
            self._attempt += 1
            info = self.scene.reset(self._seed)
            self.language = str(info.get("language", self.language))
        s = self.arm.read_state()
        self._fresh_state = s  # the state read at the top of this step predates the reset
        self._target_pos = np.asarray(s.ee_pos, np.float64).copy()
        self._target_quat = quat_normalize(s.ee_quat)
        self._message = f"ready: {self.language}" if self.language else "ready"
        if self.auto_start and self._end is None:
            self._pending_actions.append("record")

    # ------------------------------------------------------------------ one step
    def _step(self) -> None:
        if self._signal is not None:
            self._abort_episode(self._signal)
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

        dropped = []
        for name, fr in frames.items():
            prev = self._last_frame_ts.get(name)
            if prev is not None and fr.timestamp <= prev:
                dropped.append(name)
                if t - self._last_new_frame_t.get(name, t) > self.camera_timeout:
                    return self._lost(f"camera '{name}' stalled: no new frame for more than "
                                      f"{self.camera_timeout:g} s (check its cable / process)")
            else:
                self._last_new_frame_t[name] = t
                self._last_frame_ts[name] = fr.timestamp

        self._fresh_state = None
        for action in actions:
            self._handle(action, t)
            if self._end is not None:
                return

        if self._fresh_state is not None:  # the scene was reset by an action of this step
            state, self._fresh_state = self._fresh_state, None
        try:
            action_vec = self._command(cmd, state)
        except DeviceNotConnectedError as e:
            return self._lost(f"arm '{getattr(self.arm, 'name', 'arm')}' lost: {e}")

        ep = self._episode
        if ep is not None:
            step: dict[str, Any] = {
                "timestamp": np.float64(t),
                "state": state_vector(state),
                "action": action_vec,
                "timestamps/state": np.float64(state.timestamp),
            }
            for name, fr in frames.items():
                step[f"images/{name}"] = fr.color
                step[f"timestamps/{name}"] = np.float64(fr.timestamp)
                if fr.depth is not None:
                    step[f"depth/{name}"] = fr.depth
            ep.rec.add_step(step)
            ep.times.append(t)
            for name in dropped:
                ep.dropped[name] += 1
            if self.max_steps is not None and ep.n_steps >= self.max_steps:
                self._save(success=self._sim_success(), reason=f"max_steps={self.max_steps} reached")

        status = PreviewStatus(
            recording=self._episode is not None,
            n_saved=self.result.n_saved,
            elapsed_s=(t - self._episode.t0) if self._episode is not None else 0.0,
            language=self.language,
            loop_hz=_rate(self._step_times[-20:]),
            dropped=self._episode.dropped if self._episode is not None else None,
            message=self._message,
        )
        self._keys(self.preview.show({n: f.color for n, f in frames.items()}, status))

    def _keys(self, names: Sequence[str]) -> None:
        """Keys from the preview window or the terminal. A keyboard teleop device (one with `buttons`,
        `moves` and a manual backend, like hardware.drivers.keyboard) gets them as taps and reports its own
        buttons at the next poll; the keys it does not claim (reset, quit) are handled here."""
        dev = self.teleop
        keyboard = isinstance(getattr(dev, "buttons", None), dict) and isinstance(getattr(dev, "moves", None), dict)
        for name in names:
            if keyboard and getattr(dev, "backend", None) == "manual" and hasattr(dev, "tap"):
                dev.tap(name)
            claimed = keyboard and (name in dev.buttons or name in dev.moves
                                    or name == getattr(dev, "gripper_key", None))
            action = None if claimed else action_for_key(name)
            if action is not None:
                self._pending_actions.append(action)

    def _command(self, cmd: TeleopCommand, state: ArmState) -> np.ndarray:
        lim = self._limits
        if cmd.mode == "absolute":
            pos = lim.clip_ee_pos(np.asarray(cmd.pos, np.float64))
            quat = quat_normalize(cmd.quat)
        else:
            ee = np.asarray(state.ee_pos, np.float64)
            pos = lim.clip_ee_pos(self._target_pos + np.asarray(cmd.pos, np.float64))
            lead = pos - ee
            n = float(np.linalg.norm(lead))
            if n > self.max_lead:
                pos = ee + lead * (self.max_lead / n)
            quat = quat_normalize(quat_mul(quat_from_rotvec(cmd.rot), self._target_quat))
        if float(np.dot(quat, self._target_quat)) < 0:  # keep the sign continuous (q and -q are one pose)
            quat = -quat
        width = float(np.clip(cmd.gripper, 0.0, 1.0)) * lim.gripper_max_width
        self.arm.command_ee_pose(pos, quat)
        self.arm.command_gripper(width)
        if self.action_mode == "target":
            vec = np.concatenate([pos, quat, [width]])
        else:
            drot = rotvec_from_quat(quat_mul(quat, quat_conj(self._target_quat)))
            vec = np.concatenate([pos - self._target_pos, drot, [width]])
        self._target_pos, self._target_quat = pos, quat
        return vec.astype(np.float32)

    # ------------------------------------------------------------------ episode control
    def _handle(self, action: str, t: float) -> None:
        ep = self._episode
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
            else:
                self._discard("discarded by the operator")
        elif action == "reset":
            if ep is None:
                self._new_scene()
                self.log(f"scene reset (seed {self._seed}): {self.language}")
            else:
                self._message = "'reset' ignored while recording: save or discard first"
        elif action == "quit":
            if ep is not None:
                self._abort_episode("quit while recording")
            self._end = "quit"

    def _start(self, t: float) -> None:
        attrs: dict[str, Any] = {
            "task": self.task,
            "language": self.language,
            "source": "teleop",
            "robot": self.robot_name,
            "teleop": getattr(self.teleop, "name", type(self.teleop).__name__),
            "cameras": [c.name for c in self.cameras],
            "fps": self.fps,
            "seed": self._seed,
            "action_mode": self.action_mode,
            "state_layout": "joint_positions[n], gripper_width, ee_pos[3], ee_quat_wxyz[4]",
            "action_layout": ("ee_pos[3], ee_quat_wxyz[4], gripper_width" if self.action_mode == "target"
                              else "ee_dpos[3], ee_drot_rotvec[3], gripper_width"),
            "success": None,
            "aborted": False,
        }
        if self.action_mode == "delta":
            attrs["initial_target"] = [*map(float, self._target_pos), *map(float, self._target_quat)]
        rec = self.store.recorder(attrs, on_exit="discard")
        self._episode = _Episode(rec, t, [c.name for c in self.cameras], self._seed, self.language)
        self._message = ""
        self.log(f"recording episode {self.store.n_episodes} (seed {self._seed}): {self.language}")

    def _sim_success(self) -> bool | None:
        if self.scene is None:
            return None
        try:
            return self.scene.success()
        except Exception:
            return None

    def _outcome(self, ep: _Episode, outcome: str, index: int | None, success, aborted: bool,
                 reason: str) -> EpisodeOutcome:
        st = ep.stats()
        o = EpisodeOutcome(outcome=outcome, index=index, success=success, aborted=aborted, n_steps=ep.n_steps,
                           duration_s=st["duration_s"], achieved_hz=st["achieved_hz"],
                           dropped_frames=st["dropped_frames"], reason=reason, seed=ep.seed, language=ep.language)
        self.result.episodes.append(o)
        drops = ", ".join(f"{k} {v}" for k, v in o.dropped_frames.items()) or "no cameras"
        where = f"saved as episode {index}" if outcome == "saved" else "discarded"
        self.log(f"episode {where}: {reason}; success={success} aborted={aborted} {o.n_steps} steps "
                 f"{o.duration_s:.1f} s at {o.achieved_hz:.2f} Hz; dropped frames: {drops}")
        return o

    def _save(self, success: bool | None, reason: str) -> None:
        ep, self._episode = self._episode, None
        if ep is None:
            return
        if ep.n_steps == 0:
            ep.rec.discard()
            self._outcome(ep, "discarded", None, success, False, reason + " (no steps recorded)")
        else:
            extra = {"success": success, "aborted": False, "end_reason": reason,
                     "sim_success": self._sim_success(), **ep.stats()}
            index = ep.rec.save(**extra)
            self._outcome(ep, "saved", index, success, False, reason)
        self._after_episode()

    def _discard(self, reason: str) -> None:
        ep, self._episode = self._episode, None
        if ep is None:
            return
        ep.rec.discard()
        self._outcome(ep, "discarded", None, None, False, reason)
        self._after_episode()

    def _after_episode(self) -> None:
        if self.episodes_target is not None and self.result.n_saved >= self.episodes_target:
            self._end = "done"
            return
        self._new_scene()

    def _abort_episode(self, reason: str) -> None:
        """End the current episode because the session is being cut short (on_abort decides)."""
        ep, self._episode = self._episode, None
        if ep is None:
            return
        if self.on_abort == "save" and ep.n_steps > 0:
            try:
                index = ep.rec.save(success=False, aborted=True, end_reason=reason,
                                    sim_success=self._sim_success(), **ep.stats())
                self._outcome(ep, "saved", index, False, True, reason)
                return
            except Exception as e:
                self.log(f"warning: saving the aborted episode failed ({e}); discarding it")
        try:
            ep.rec.discard()
        except Exception as e:
            self.log(f"warning: discarding the aborted episode failed ({e}); the store keeps its saved episodes")
        self._outcome(ep, "discarded", None, None, True, reason)

    def _lost(self, reason: str) -> None:
        self.log(f"error: {reason}")
        self._abort_episode(reason)
        self._hold_arm()
        self._end, self.result.error = "device_lost", reason

    def _finish_stats(self, wall_s: float) -> None:
        r = self.result
        if not r.ended_by:
            r.ended_by = self._end or "error"
        times = self._step_times
        r.n_steps = len(times)
        r.achieved_hz = _rate(times)
        r.wall_hz = (len(times) / wall_s) if wall_s > 0 else 0.0
        if self._busy:
            r.step_ms_p50 = float(np.percentile(self._busy, 50) * 1000.0)
            r.step_ms_p99 = float(np.percentile(self._busy, 99) * 1000.0)
        if len(times) > 2:
            dev = np.abs(np.diff(times) - 1.0 / self.fps)
            r.period_p99_ms = float(np.percentile(dev, 99) * 1000.0)

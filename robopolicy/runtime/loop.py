"""The control loop: observation -> inference worker -> executor -> safety -> arm, at a fixed rate.

One tick (at `rate_hz`, the arm's command rate):

1. read the arm state; collect finished chunks from the worker and schedule them (commands due at
   `obs_time + k / policy_hz`, late ones dropped);
2. every `rate_hz / policy_hz` ticks (a *policy step*): assemble an observation (stale -> hold and report),
   push it into the T_o history, and every `replan_every` policy steps ask the worker for a chunk (a
   `pointcloud` is not built here: it travels as a Deferred and the worker builds it, observation.py);
3. the executor gives the (blended, interpolated) command for now; a dead worker, a stalled one (no chunk
   covering now for `stall_timeout_s`) or a stale observation make it a hold;
4. the safety layer filters the command and it goes to the arm;
5. on policy steps the step is handed to the episode's recorder (observation, the raw action executed,
   the command sent, whether the safety layer held); a deferred `pointcloud` is built by the recorder's
   writer thread, so recordings keep the key, bit for bit what the policy saw.

With `inference="sync"` step 2 calls the agent inside the tick (the loop stalls for the inference time,
and for building the point clouds it passes that are not built yet; kept for the latency benchmark). The
loop runs in its own thread; `start_episode` / `stop_episode` / `set_worker` are called from other threads
(the daemon's API) and take the loop's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.arm import Arm
from hardware.errors import HardwareError
from robopolicy.runtime.actions import ActionAdapter
from robopolicy.runtime.clock import RateLoop
from robopolicy.runtime.executor import ActionExecutor, ScheduledChunk, make_blend
from robopolicy.runtime.inference_worker import ActionChunk, InferenceWorker, _act
from robopolicy.runtime.observation import ObservationAssembler, ObservationHistory, StaleObservationError
from robopolicy.runtime.safety import SafetyLayer

log = logging.getLogger("robopolicy.runtime.loop")


@dataclass
class RuntimeConfig:
    """Timing and scheduling of the control loop."""

    rate_hz: float = 100.0  # command rate (10-500 Hz)
    policy_hz: float = 10.0  # observation / action rate the policy was trained at
    replan_every: int = 4  # policy steps between inference requests
    inference: str = "async"  # async (worker) | sync (in the loop, blocks it)
    worker: str = "process"  # process | thread
    worker_threads: int = 1
    worker_nice: int = 5
    blend: str = "ensemble"  # ensemble | latest | streaming
    ensemble_k: float = 0.01
    interpolate: bool = True
    max_obs_age_s: float = 0.2
    spin_s: float = 0.0008
    max_episode_s: float = 60.0  # an episode ends (unlabelled) after this long
    stats_window_s: float = 10.0  # loop timing percentiles cover the latest window (miss counts are all-time)

    def validate(self) -> None:
        if not 10.0 <= self.rate_hz <= 500.0:
            raise ValueError(f"runtime.rate_hz must be in [10, 500], got {self.rate_hz}")
        ratio = self.rate_hz / self.policy_hz
        if self.policy_hz <= 0 or abs(ratio - round(ratio)) > 1e-6 or ratio < 1:
            raise ValueError(f"runtime.rate_hz ({self.rate_hz}) must be a whole multiple of runtime.policy_hz "
                             f"({self.policy_hz})")
        if self.inference not in ("async", "sync"):
            raise ValueError(f"runtime.inference must be async or sync, got {self.inference!r}")
        if self.replan_every < 1:
            raise ValueError(f"runtime.replan_every must be >= 1, got {self.replan_every}")


class _Series:
    """The latest N values of a metric, for percentiles."""

    def __init__(self, n: int = 512) -> None:
        self.v: deque[float] = deque(maxlen=n)

    def add(self, x: float) -> None:
        self.v.append(float(x))

    def summary(self, scale: float = 1e3) -> dict[str, float | None]:
        if not self.v:
            return {"p50": None, "p99": None, "max": None, "last": None}
        a = np.asarray(self.v) * scale
        return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
                "last": float(a[-1])}


@dataclass
class EpisodeEnd:
    reason: str  # success | timeout | stopped | estop | fault
    success: bool | None
    steps: int


class ControlLoop:
    """Runs the tick described in the module docstring in a thread.

    Args:
        arm: connected arm.
        assembler: builds observations from the arm and cameras.
        adapter: raw actions -> arm commands.
        safety: the safety layer (owns the e-stop).
        cfg: timing configuration.
        now, sleep: the clock.
        success_fn: polled every policy step while an episode runs; True ends it with success.
        on_episode_end: called (in the loop thread, keep it short) when the loop ends an episode itself.
    """

    def __init__(self, arm: Arm, assembler: ObservationAssembler, adapter: ActionAdapter, safety: SafetyLayer,
                 cfg: RuntimeConfig | None = None, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, success_fn: Callable[[], bool | None] | None = None,
                 on_episode_end: Callable[[EpisodeEnd], None] | None = None) -> None:
        self.cfg = cfg = cfg or RuntimeConfig()
        cfg.validate()
        self.arm, self.assembler, self.adapter, self.safety = arm, assembler, adapter, safety
        self.now = now
        self.rate = RateLoop(cfg.rate_hz, spin_s=cfg.spin_s, now=now, sleep=sleep,
                             stats_capacity=int(cfg.rate_hz * cfg.stats_window_s))
        self.dt = 1.0 / cfg.rate_hz
        self.policy_dt = 1.0 / cfg.policy_hz
        self.ticks_per_step = int(round(cfg.rate_hz / cfg.policy_hz))
        self.executor = ActionExecutor(self.policy_dt, make_blend(cfg.blend, cfg.ensemble_k), cfg.interpolate)
        self.success_fn = success_fn
        self.on_episode_end = on_episode_end
        self.worker: InferenceWorker | None = None
        self.sync_agent: Any = None
        self.history = ObservationHistory(1)
        self.obs_keys: Sequence[str] | None = None
        self.lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._states: dict[int, Any] = {}  # seq -> arm state of the observation (for delta actions)
        self.running = False
        self.language = ""
        self.recorder: Any = None
        self.steps = 0
        self._tick_i = 0
        self._episode_start = 0.0
        self._stale: str | None = None
        self.fault: str | None = None
        self.last_end: EpisodeEnd | None = None
        # metrics
        self.inference_s = _Series()
        self.obs_to_chunk_s = _Series()
        self.obs_to_action_s = _Series()
        self.obs_age_s = _Series()
        self.tick_work_s = _Series(4096)
        self.chunks_received = 0
        self.stale_observations = 0
        self.last_command: np.ndarray | None = None

    # ------------------------------------------------------------------ wiring
    def set_policy(self, worker: InferenceWorker | None, sync_agent: Any, n_obs_steps: int,
                   obs_keys: Sequence[str]) -> None:
        """Swap the policy (async worker or in-loop agent); the old worker is returned to the caller to stop."""
        with self.lock:
            self.worker, self.sync_agent = worker, sync_agent
            self.history = ObservationHistory(n_obs_steps)
            self.obs_keys = list(obs_keys)
            self.executor.clear()

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        """Start ticking in a thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="robopolicy-control-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._thread = None

    def _run(self) -> None:
        self.rate.start()
        while not self._stop.is_set():
            self.rate.wait()
            t0 = time.perf_counter()
            with self.lock:
                try:
                    self.tick(self.now())
                except HardwareError as e:  # the arm or a camera failed: stop everything, keep the loop alive
                    self.fault = f"hardware fault: {e}"
                    self.safety.estop(self.fault)
                    if self.running:
                        self._end("fault", None)
                except Exception as e:  # a bug must not kill the loop silently: e-stop and report
                    log.exception("control loop tick failed")
                    self.fault = f"control loop error: {e!r}"
                    self.safety.estop(self.fault)
                    if self.running:
                        self._end("fault", None)
            self.tick_work_s.add(time.perf_counter() - t0)

    # ------------------------------------------------------------------ episodes
    def start_episode(self, language: str = "", recorder: Any = None) -> None:
        with self.lock:
            if self.running:
                raise RuntimeError("an episode is already running; stop it first")
            if self.worker is None and self.sync_agent is None:
                raise RuntimeError("no policy loaded: load a checkpoint first")
            if self.safety.estopped:
                raise RuntimeError(f"e-stop is active ({self.safety.estop_reason}); reset before starting")
            if self.worker is not None:
                self.worker.reset_agent()
            if self.sync_agent is not None:
                self.sync_agent.reset()
            self.history.clear()
            self.executor.clear()
            self.safety.reset_motion()
            self._states.clear()
            self.language, self.recorder, self.steps = language, recorder, 0
            self.last_command = None
            self._tick_i = 0
            self._stale = None
            self.fault = None
            self._episode_start = self.now()
            self.running = True

    def stop_episode(self, reason: str = "stopped", success: bool | None = None) -> EpisodeEnd | None:
        """End the running episode (hold the arm); returns what ended or None if none was running."""
        with self.lock:
            if not self.running:
                return None
            return self._end(reason, success, notify=False)

    def _end(self, reason: str, success: bool | None, notify: bool = True) -> EpisodeEnd:
        self.running = False
        end = EpisodeEnd(reason, success, self.steps)
        self.last_end = end
        try:
            state = self.arm.read_state()
            self.adapter.send(self.arm, self.adapter.hold_command(state))
        except HardwareError as e:  # the arm is already failing: the fault path holds it; say so
            log.warning("episode end (%s): could not send the hold command: %s", reason, e)
        if notify and self.on_episode_end is not None:
            self.on_episode_end(end)
        return end

    # ------------------------------------------------------------------ the tick
    def tick(self, now: float) -> None:
        """One control step at time `now` (see the module docstring)."""
        state = self.arm.read_state()
        measured = self.adapter.hold_command(state)
        self.safety.check_heartbeat(now)
        if self.worker is not None:
            for chunk in self.worker.poll():
                self._schedule(chunk, now)
        if not self.running:
            if self.safety.estopped:  # keep the latched hold commanded
                self.adapter.send(self.arm, self.safety.filter(measured, measured, self.dt, now))
            return
        if self.safety.estopped:
            self._end("estop", False)
            return
        policy_step = self._tick_i % self.ticks_per_step == 0
        self._tick_i += 1
        obs = None
        if policy_step:
            obs = self._observe(now, state)
        cmd, raw, held = self._command(now, state, measured)
        if obs is not None and self.recorder is not None:
            self._record(obs, raw, cmd, held)
        if policy_step:
            self.steps += 1
            if self.success_fn is not None and self.success_fn():
                self._end("success", True)
            elif now - self._episode_start > self.cfg.max_episode_s:
                self._end("timeout", None)

    def _observe(self, now: float, state: Any) -> Any:
        try:
            obs = self.assembler.assemble(now, state, self.language)
        except StaleObservationError as e:
            self.stale_observations += 1
            self._stale = str(e)
            return None
        self._stale = None
        self.obs_age_s.add(obs.max_age)
        self.history.push(obs)
        if self.steps % self.cfg.replan_every == 0:
            stacked = self.history.stacked(self.obs_keys, defer=True)  # point clouds: built where _act runs
            if self.sync_agent is not None:
                seq = -(self.steps + 1)
                self._states[seq] = state
                actions, compute_s = _act(self.sync_agent, stacked)
                self._schedule(ActionChunk(seq, obs.time, actions, compute_s, self.now()), self.now())
            elif self.worker is not None and self.worker.alive:
                seq = self.worker.submit(stacked, obs.time)
                self._states[seq] = state
        return obs

    def _schedule(self, chunk: ActionChunk, now: float) -> None:
        state = self._states.pop(chunk.seq, None)
        for old in [s for s in self._states if abs(s) < abs(chunk.seq)]:
            self._states.pop(old, None)  # requests replaced before they ran
        if state is None or not self.running:
            return
        self.chunks_received += 1
        self.inference_s.add(chunk.compute_s)
        self.obs_to_chunk_s.add(chunk.received - chunk.obs_time)
        commands = self.adapter.to_commands(chunk.actions, state)
        qs = slice(3, 7) if self.adapter.is_ee else None
        t0 = chunk.obs_time + self.adapter.due_offset * self.policy_dt
        self.executor.add(ScheduledChunk(chunk.seq, chunk.obs_time, self.policy_dt, commands, chunk.actions, qs, t0=t0),
                          now)

    def _command(self, now: float, state: Any, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(command sent, raw action recorded, held?)"""
        hold_raw = self.adapter.hold_action(state)
        reason = None
        if self.worker is not None and not self.worker.alive:
            reason = ("worker_dead", f"{self.worker.dead_reason}; holding position (restart the worker)")
        elif self._stale is not None:
            reason = ("stale_obs", self._stale)
        res = self.executor.command_at(now) if reason is None else None
        if reason is None and res is None:
            since = now - (self.executor.last_chunk_time or self._episode_start)
            bound = self.safety.cfg.stall_timeout_s
            if since > bound:
                reason = ("stalled", f"no action chunk covering now for {since:.2f} s (bound {bound:.2f} s): the "
                          f"inference worker is stalled or too slow; holding")
            else:  # between the episode start and its first chunk: keep still, not an intervention
                cmd = self.last_command if self.last_command is not None else measured
                self.adapter.send(self.arm, cmd)
                return cmd, hold_raw, True
        if reason is not None:
            cmd = self.safety.hold(measured, reason[0], reason[1], now)
            self.adapter.send(self.arm, cmd)
            self.last_command = cmd
            return cmd, hold_raw, True
        assert res is not None
        target, src = res
        if not src.used:
            src.used = True
            self.obs_to_action_s.add(now - src.obs_time)
        cmd = self.safety.filter(target, measured, self.dt, now)
        self.adapter.send(self.arm, cmd)
        self.last_command = cmd
        return cmd, src.raw_at(now), self.safety.holding

    def _record(self, obs: Any, raw: np.ndarray, cmd: np.ndarray, held: bool) -> None:
        step: dict[str, Any] = {"timestamp": obs.time}
        step.update(obs.values)
        for key, t in obs.stamps.items():
            step["timestamps/" + key.split("/", 1)[-1]] = t
        raw = np.asarray(raw, np.float32)
        step["action"] = np.where(np.isfinite(raw), raw, 0.0).astype(np.float32)
        step["command"] = np.where(np.isfinite(cmd), cmd, 0.0).astype(np.float32)
        step["safety_hold"] = np.uint8(held)
        try:
            self.recorder.add_step(step)
        except Exception as e:  # recording must never stop the robot; report and stop recording
            log.error("recording failed, the episode is no longer recorded: %s", e)
            self.fault = f"recording failed: {e}"
            self.recorder = None

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> dict[str, Any]:
        timing = self.rate.summary().to_json()
        return {
            "loop": {**timing, "target_hz": self.cfg.rate_hz, "tick_work_ms": self.tick_work_s.summary()},
            "inference_ms": self.inference_s.summary(),
            "obs_to_chunk_ms": self.obs_to_chunk_s.summary(),
            "obs_to_action_ms": self.obs_to_action_s.summary(),
            "obs_age_ms": self.obs_age_s.summary(),
            "chunks_received": self.chunks_received,
            "dropped_actions": self.executor.dropped_actions,
            "dropped_chunks": self.executor.dropped_chunks,
            "replaced_requests": getattr(self.worker, "replaced", 0),
            "stale_observations": self.stale_observations,
            "interventions": self.safety.log.to_json(),
        }

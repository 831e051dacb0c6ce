"""The safety layer between the policy and the arm.

Every command goes through `SafetyLayer.filter` before it reaches the arm:

1. an e-stop (API, keyboard, lost heartbeat) latches a hold until `clear_estop()`;
2. a NaN / inf anywhere in the command -> hold;
3. end-effector position clipped into the workspace box; joint targets clipped into the joint limits;
4. the step from the previous command limited by the speed limit (m/s, or rad/s per joint) and the change
   of that step by the acceleration limit;
5. gripper width clipped to [0, max width].

Holding means commanding the pose measured when the hold began (latched, so a hold never drifts).
Every intervention is counted by kind and logged with its reason (at most once per second per kind, so a
policy pushing against the workspace wall does not flood the log); the latest ones are kept for status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from hardware.arm import ArmLimits

log = logging.getLogger("robopolicy.runtime.safety")


@dataclass
class SafetyConfig:
    """Limits on top of (never looser than) the arm's own `ArmLimits`. None: take the arm's value."""

    workspace_lower: list[float] | None = None  # m, [3]
    workspace_upper: list[float] | None = None  # m, [3]
    max_ee_speed: float | None = 0.25  # m/s of the commanded TCP position
    max_ee_accel: float | None = 2.0  # m/s^2 of the commanded TCP position
    max_joint_speed_scale: float = 1.0  # fraction of the arm's joint velocity limits
    max_joint_accel: float | None = 20.0  # rad/s^2
    gripper_max_width: float | None = None  # m
    stall_timeout_s: float = 0.5  # no usable chunk for this long while running -> hold and report
    heartbeat_timeout_s: float | None = None  # operator heartbeat; None disables the check
    log_every_s: float = 1.0  # per-kind rate limit of intervention log lines


@dataclass
class Intervention:
    time: float
    kind: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"time": self.time, "kind": self.kind, "reason": self.reason}


class InterventionLog:
    """Counts by kind, the latest interventions, and rate-limited log lines."""

    def __init__(self, keep: int = 50, log_every_s: float = 1.0) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[Intervention] = deque(maxlen=keep)
        self.log_every_s = log_every_s
        self._last_logged: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, reason: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.counts[kind] += 1
            last = self.recent[-1] if self.recent else None
            if last is None or last.kind != kind or now - last.time >= self.log_every_s:
                self.recent.append(Intervention(now, kind, reason))
            if now - self._last_logged.get(kind, -np.inf) >= self.log_every_s:
                self._last_logged[kind] = now
                log.warning("safety: %s: %s (%d so far)", kind, reason, self.counts[kind])

    def to_json(self, n: int = 10) -> dict[str, object]:
        with self._lock:
            return {"counts": dict(self.counts), "recent": [i.to_json() for i in list(self.recent)[-n:]]}


class SafetyLayer:
    """Filters commands ([x, y, z, qw, qx, qy, qz, width] or [q_1..q_n, width]) against the limits."""

    def __init__(self, limits: ArmLimits, cfg: SafetyConfig | None = None, is_ee: bool = True,
                 log_: InterventionLog | None = None) -> None:
        self.cfg = cfg = cfg or SafetyConfig()
        self.limits = limits
        self.is_ee = is_ee
        self.log = log_ or InterventionLog(log_every_s=cfg.log_every_s)
        lo = np.asarray(limits.workspace_lower, np.float64)
        hi = np.asarray(limits.workspace_upper, np.float64)
        if cfg.workspace_lower is not None:
            lo = np.maximum(lo, np.asarray(cfg.workspace_lower, np.float64))
        if cfg.workspace_upper is not None:
            hi = np.minimum(hi, np.asarray(cfg.workspace_upper, np.float64))
        if np.any(lo >= hi):
            raise ValueError(f"empty workspace box: lower {lo} is not below upper {hi}; fix safety.workspace_*")
        self.ws_lower, self.ws_upper = lo, hi
        speed = limits.max_ee_speed if cfg.max_ee_speed is None else min(cfg.max_ee_speed, limits.max_ee_speed)
        self.max_ee_speed = float(speed)
        self.max_joint_speed = np.asarray(limits.max_joint_velocity, np.float64) * cfg.max_joint_speed_scale
        width = limits.gripper_max_width if cfg.gripper_max_width is None else min(cfg.gripper_max_width,
                                                                                   limits.gripper_max_width)
        self.gripper_max_width = float(width)
        self._estop_reason: str | None = None
        self._hold: np.ndarray | None = None
        self._hold_reason: str | None = None
        self._prev: np.ndarray | None = None  # last command sent
        self._prev_step: np.ndarray | None = None  # last per-tick position step
        self._last_heartbeat: float | None = None

    # ------------------------------------------------------------------ e-stop / heartbeat
    def estop(self, reason: str, now: float | None = None) -> None:
        """Latch an emergency stop: every command becomes a hold until `clear_estop()`."""
        if self._estop_reason is None:
            self._estop_reason = reason
            self.log.record("estop", reason, now)

    def clear_estop(self) -> None:
        self._estop_reason = None
        self._last_heartbeat = None

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    def heartbeat(self, now: float | None = None) -> None:
        """The operator (client) is alive; with `heartbeat_timeout_s` set, its absence e-stops."""
        self._last_heartbeat = time.monotonic() if now is None else now

    def check_heartbeat(self, now: float) -> None:
        t = self.cfg.heartbeat_timeout_s
        if t is not None and self._last_heartbeat is not None and now - self._last_heartbeat > t:
            self.estop(f"lost heartbeat: none for {now - self._last_heartbeat:.2f} s (bound {t:.2f} s)", now)

    # ------------------------------------------------------------------ holding
    @property
    def holding(self) -> bool:
        return self._hold is not None

    @property
    def hold_reason(self) -> str | None:
        return self._hold_reason

    def hold(self, measured: np.ndarray, kind: str, reason: str, now: float) -> np.ndarray:
        """The hold command (latched at the first hold); records the intervention."""
        if self._hold is None:
            self._hold = np.asarray(measured, np.float64).copy()
        self._hold_reason = reason
        self.log.record(kind, reason, now)
        self._prev, self._prev_step = self._hold.copy(), None
        return self._hold.copy()

    def release_hold(self) -> None:
        self._hold, self._hold_reason = None, None

    def reset_motion(self) -> None:
        """Forget the previous command (a new episode starts from the measured pose)."""
        self._prev, self._prev_step = None, None
        self.release_hold()

    # ------------------------------------------------------------------ filter
    def filter(self, cmd: np.ndarray, measured: np.ndarray, dt: float, now: float) -> np.ndarray:
        """The command made safe for one tick of length `dt`; `measured` is the hold command of the arm now."""
        if self._estop_reason is not None:
            return self.hold(measured, "estop", f"e-stop active: {self._estop_reason}", now)
        cmd = np.asarray(cmd, np.float64).copy()
        if not np.all(np.isfinite(cmd)):
            bad = np.flatnonzero(~np.isfinite(cmd)).tolist()
            return self.hold(measured, "nonfinite", f"policy produced NaN/inf in command entries {bad}; holding", now)
        self.release_hold()
        prev = self._prev if self._prev is not None else np.asarray(measured, np.float64)
        if self.is_ee:
            pos = cmd[:3]
            clipped = np.clip(pos, self.ws_lower, self.ws_upper)
            if np.any(clipped != pos):
                self.log.record("workspace", f"target {np.round(pos, 3).tolist()} outside the workspace box "
                                f"{self.ws_lower.tolist()}..{self.ws_upper.tolist()}; clipped to "
                                f"{np.round(clipped, 3).tolist()}", now)
            cmd[:3] = self._limit_motion(clipped, prev[:3], dt, self.max_ee_speed, self.cfg.max_ee_accel, "m", now)
            n = np.linalg.norm(cmd[3:7])
            cmd[3:7] = cmd[3:7] / n if n > 1e-9 else prev[3:7]
        else:
            q = cmd[:-1]
            lo, hi = self.limits.joint_lower, self.limits.joint_upper
            clipped = np.clip(q, lo, hi)
            if np.any(clipped != q):
                idx = np.flatnonzero(clipped != q).tolist()
                self.log.record("joint_limit", f"joint target(s) {idx} outside the joint limits; clipped", now)
            cmd[:-1] = self._limit_motion(clipped, prev[:-1], dt, self.max_joint_speed, self.cfg.max_joint_accel,
                                          "rad", now)
        width = float(np.clip(cmd[-1], 0.0, self.gripper_max_width))
        if width != cmd[-1]:
            self.log.record("gripper", f"gripper width {cmd[-1]:.4f} m outside [0, {self.gripper_max_width:.3f}]; "
                            f"clipped", now)
            cmd[-1] = width
        self._prev = cmd.copy()
        return cmd

    def _limit_motion(self, target: np.ndarray, prev: np.ndarray, dt: float, vmax, amax: float | None, unit: str,
                      now: float) -> np.ndarray:
        """Cap the step by speed (norm for positions, per joint for joints) and its change by acceleration."""
        step = target - prev
        remaining = np.linalg.norm(step) if self.is_ee else np.abs(step)
        if self.is_ee:
            dist = float(np.linalg.norm(step))
            cap = float(vmax) * dt
            if dist > cap:
                self.log.record("velocity", f"commanded speed {dist / dt:.3f} {unit}/s over the {float(vmax):.3f} "
                                f"{unit}/s limit; slowed", now)
                step = step * (cap / dist)
        else:
            cap = np.asarray(vmax) * dt
            if np.any(np.abs(step) > cap):
                self.log.record("velocity", f"joint speed over the limit on joints "
                                f"{np.flatnonzero(np.abs(step) > cap).tolist()}; slowed", now)
                step = np.clip(step, -cap, cap)
        if amax is not None:
            # Brake in time: never faster than what the acceleration limit can stop before the target
            # (shaping the approach, not an intervention; without it the limits would overshoot and ring).
            size = np.linalg.norm(step) if self.is_ee else np.abs(step)
            brake = np.sqrt(2.0 * float(amax) * remaining) * dt
            step = step * np.minimum(1.0, brake / np.maximum(size, 1e-12))
        if amax is not None and self._prev_step is not None and self._prev_step.shape == step.shape:
            dstep = step - self._prev_step
            cap_a = float(amax) * dt * dt
            mag = float(np.linalg.norm(dstep)) if self.is_ee else float(np.max(np.abs(dstep)))
            if mag > cap_a:
                self.log.record("acceleration", f"commanded acceleration {mag / dt / dt:.2f} {unit}/s^2 over the "
                                f"{float(amax):.2f} {unit}/s^2 limit; smoothed", now)
                step = self._prev_step + dstep * (cap_a / mag)
        self._prev_step = step
        return prev + step

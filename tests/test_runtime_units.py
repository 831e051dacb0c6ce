"""Runtime pieces with a fake clock / fake arm: rate loop, executor, safety layer, observation ages."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.arm import ArmLimits, ArmState
from hardware.camera import Frame
from robopolicy.runtime.actions import EeDeltaAdapter, topdown_quat, topdown_yaw
from robopolicy.runtime.clock import RateLoop
from robopolicy.runtime.executor import ActionExecutor, LatestChunk, ScheduledChunk, TemporalEnsemble
from robopolicy.runtime.observation import ObservationAssembler, StaleObservationError
from robopolicy.runtime.safety import SafetyConfig, SafetyLayer


class FakeClock:
    def __init__(self, overshoot=0.0):
        self.t = 100.0
        self.overshoot = overshoot
        self.extra: list[float] = []

    def now(self):
        return self.t

    def sleep(self, dt):
        self.t += dt + self.overshoot + (self.extra.pop(0) if self.extra else 0.0)


def test_rate_loop_deadlines_do_not_drift_and_misses_are_counted():
    clock = FakeClock(overshoot=0.0003)  # every sleep wakes 0.3 ms late
    loop = RateLoop(100.0, spin_s=0.0, now=clock.now, sleep=clock.sleep)
    t0 = loop.start()
    for _ in range(999):
        loop.wait()
    last = loop.wait()
    assert last == pytest.approx(t0 + 1000 * 0.01)  # absolute schedule: no accumulated error
    s = loop.summary()
    assert s.misses == 0 and s.p99_s == pytest.approx(0.0003, abs=1e-6)
    clock.extra = [0.035]  # one tick 35 ms late: a miss, and the 3 passed deadlines are skipped
    loop.wait()
    loop.wait()
    s = loop.summary()
    assert s.misses == 1 and s.skipped == 3
    assert loop.next_deadline > clock.t  # back on schedule, in the future


def test_rate_loop_rejects_out_of_range_rates():
    with pytest.raises(ValueError, match="rate_hz"):
        RateLoop(5000.0)


def _chunk(seq, t_obs, values, dt=0.1):
    cmds = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return ScheduledChunk(seq, t_obs, dt, cmds, cmds.astype(np.float32))


def test_executor_drops_actions_whose_time_has_passed_and_interpolates():
    ex = ActionExecutor(0.1, LatestChunk())
    dropped = ex.add(_chunk(1, 10.0, [0.0, 1.0, 2.0, 3.0]), now=10.25)
    assert dropped == 2 and ex.dropped_actions == 2
    cmd, src = ex.command_at(10.25)
    assert cmd[0] == pytest.approx(2.5)  # halfway between due times 10.2 and 10.3
    assert ex.command_at(10.45) is None  # one dt after the last command: not covered any more
    assert ex.add(_chunk(2, 9.0, [0.0, 1.0]), now=10.5) == 2 and ex.dropped_chunks == 1


def test_temporal_ensemble_weights_and_streaming_latest():
    old, new = _chunk(1, 0.0, [0.0] * 8), _chunk(2, 0.1, [1.0] * 8)
    for blend, want in ((TemporalEnsemble(0.0), 0.5), (TemporalEnsemble(1.0), 1 / (1 + np.e)), (LatestChunk(), 1.0)):
        ex = ActionExecutor(0.1, blend, interpolate=False)
        ex.add(old, 0.0)
        ex.add(new, 0.1)
        assert ex.command_at(0.15)[0][0] == pytest.approx(want)


def _limits():
    return ArmLimits(joint_lower=-np.ones(6), joint_upper=np.ones(6), max_joint_velocity=np.ones(6),
                     workspace_lower=np.array([0.2, -0.4, 0.02]), workspace_upper=np.array([0.75, 0.4, 0.45]),
                     gripper_max_width=0.08, max_ee_speed=0.5)


HOME = np.array([0.4, 0.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.08])


def test_safety_nan_holds_and_out_of_bounds_target_is_clipped():
    s = SafetyLayer(_limits(), SafetyConfig(max_ee_speed=None, max_ee_accel=None))
    held = s.filter(np.r_[np.nan, 0, 0, 0, 0, 1, 0, 0.0], HOME, 0.01, now=1.0)
    assert np.allclose(held, HOME) and s.holding and s.log.counts["nonfinite"] == 1
    assert "NaN/inf" in s.hold_reason
    out = s.filter(np.r_[0.4, 0.0, 0.9, 0, 0, 1, 0, 0.2], HOME, 1.0, now=1.01)  # dt 1 s: speed limit not hit
    assert out[2] == pytest.approx(0.45) and out[-1] == pytest.approx(0.08)  # z and gripper clipped
    assert not s.holding and s.log.counts["workspace"] == 1 and s.log.counts["gripper"] == 1
    assert "outside the workspace box" in s.log.recent[-2].reason


def test_safety_speed_and_acceleration_limits():
    s = SafetyLayer(_limits(), SafetyConfig(max_ee_speed=0.2, max_ee_accel=2.0))
    far = HOME.copy()
    far[0] += 0.3
    prev = HOME[:3].copy()
    steps = []
    for i in range(200):
        out = s.filter(far, HOME, 0.01, now=i * 0.01)
        steps.append(np.linalg.norm(out[:3] - prev))
        prev = out[:3]
    steps = np.array(steps)
    assert steps.max() <= 0.2 * 0.01 + 1e-9  # never faster than 0.2 m/s
    assert np.abs(np.diff(steps)).max() <= 2.0 * 0.01 ** 2 + 1e-9  # never accelerates harder than 2 m/s^2
    assert prev[0] == pytest.approx(far[0], abs=2e-3)  # and still arrives
    assert s.log.counts["velocity"] > 0


def test_estop_and_lost_heartbeat_latch_a_hold():
    s = SafetyLayer(_limits(), SafetyConfig(heartbeat_timeout_s=0.5))
    s.heartbeat(now=0.0)
    s.check_heartbeat(now=0.4)
    assert not s.estopped
    s.check_heartbeat(now=0.7)
    assert s.estopped and "lost heartbeat" in s.estop_reason
    moved = HOME.copy()
    moved[0] += 0.01
    assert np.allclose(s.filter(moved, HOME, 0.01, now=0.8), HOME)
    s.clear_estop()
    assert not s.estopped


class _Arm:
    def __init__(self, stamp):
        self.stamp = stamp

    def read_state(self):
        return ArmState(self.stamp, np.zeros(6), np.array([0.4, 0, 0.2]), topdown_quat(0.0), 0.08)


class _Cam:
    name = "front"

    def __init__(self, stamp):
        self.stamp = stamp

    def latest(self):
        return Frame(np.zeros((8, 8, 3), np.uint8), self.stamp, 0)


def test_stale_observations_are_rejected_with_the_part_and_its_age():
    asm = ObservationAssembler(_Arm(9.95), [_Cam(9.5)], max_age_s=0.2)
    with pytest.raises(StaleObservationError, match=r"'images/front' is 500 ms old, over the 200 ms bound"):
        asm.assemble(10.0)
    obs = ObservationAssembler(_Arm(9.95), [_Cam(9.9)], max_age_s=0.2).assemble(10.0)
    assert obs.ages["state"] == pytest.approx(0.05) and obs.ages["images/front"] == pytest.approx(0.1)


def test_ee_delta_adapter_integrates_from_the_observed_pose():
    state = _Arm(0.0).read_state()
    cmds = EeDeltaAdapter().to_commands(np.array([[1, 0, 0, 1, -1], [1, 0, -1, 0, 1.0]]), state)
    assert cmds[:, 0] == pytest.approx([0.44, 0.48]) and cmds[1, 2] == pytest.approx(0.16)
    assert topdown_yaw(cmds[1, 3:7]) == pytest.approx(0.15)
    assert cmds[:, 7] == pytest.approx([0.08, 0.0])
    assert np.isnan(EeDeltaAdapter().to_commands(np.full((1, 5), np.nan), state)).any()  # NaN reaches safety

"""The control loop on the real-time simulated arm with in-process agents: NaN -> hold, clipping, stale obs."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from robopolicy.runtime.actions import EeDeltaAdapter
from robopolicy.runtime.inference_worker import ThreadInferenceWorker
from robopolicy.runtime.loop import ControlLoop, RuntimeConfig
from robopolicy.runtime.observation import ObservationAssembler
from robopolicy.runtime.safety import SafetyConfig, SafetyLayer


class ConstAgent:
    n_obs_steps, n_action_steps, nfe = 2, 4, 0

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)

    def act(self, obs):
        return np.tile(self.action, (1, 4, 1))

    def reset(self):
        pass


@pytest.fixture
def sim_arm():
    from sim.embedded.robot import SimArm, SimRobot

    arm = SimArm(SimRobot(realtime=True, seed=0, task="push"))
    arm.connect()
    yield arm
    arm.disconnect()


def _loop(arm, action, safety_cfg=None, max_age=0.2, cameras=()):
    worker = ThreadInferenceWorker(lambda: ConstAgent(action))
    worker.start()
    safety = SafetyLayer(arm.limits(), safety_cfg or SafetyConfig(max_ee_speed=0.45, max_ee_accel=3.0))
    loop = ControlLoop(arm, ObservationAssembler(arm, list(cameras), max_age_s=max_age), EeDeltaAdapter(), safety,
                       RuntimeConfig(rate_hz=100, replan_every=1, worker="thread"))
    loop.set_policy(worker, None, 2, ["state"])
    loop.start()
    return loop, worker


def _run(loop, seconds):
    loop.start_episode("test")
    time.sleep(seconds)
    loop.stop_episode()
    loop.stop()


def test_nan_action_holds_the_arm_and_is_reported(sim_arm):
    start = sim_arm.read_state().ee_pos.copy()
    loop, worker = _loop(sim_arm, [np.nan, 1.0, 0.0, 0.0, -1.0])
    _run(loop, 1.0)
    worker.stop()
    counts = loop.safety.log.counts
    assert counts["nonfinite"] > 10 and loop.chunks_received > 0
    assert np.linalg.norm(sim_arm.read_state().ee_pos - start) < 0.01  # held where it was
    assert "NaN/inf" in loop.safety.log.recent[-1].reason


def test_out_of_bounds_target_is_clipped_to_the_workspace(sim_arm):
    cfg = SafetyConfig(workspace_upper=[0.75, 0.4, 0.27], max_ee_speed=0.45, max_ee_accel=3.0)
    loop, worker = _loop(sim_arm, [0.0, 0.0, 1.0, 0.0, -1.0], cfg)  # straight up, forever
    _run(loop, 1.5)
    worker.stop()
    assert loop.safety.log.counts["workspace"] > 0
    z = sim_arm.read_state().ee_pos[2]
    assert 0.25 < z < 0.27 + 0.01  # climbed, then stopped at the box's top
    assert any("outside the workspace box" in i.reason for i in loop.safety.log.recent)


class OldCamera:
    """A camera whose newest frame is 1 s old (a stalled driver)."""

    name = "front"

    def latest(self):
        from hardware.camera import Frame

        return Frame(np.zeros((8, 8, 3), np.uint8), time.monotonic() - 1.0, 0)


def test_stale_observations_are_rejected_and_hold(sim_arm):
    loop, worker = _loop(sim_arm, [1.0, 0.0, 0.0, 0.0, -1.0], cameras=[OldCamera()])
    _run(loop, 0.8)
    worker.stop()
    assert loop.stale_observations >= 5 and loop.chunks_received == 0  # never an input to the policy
    assert loop.safety.log.counts["stale_obs"] > 0
    # the loop reads its clock just before the camera stamps the frame, so the age is 1 s minus that gap
    assert re.search(r"'images/front' is (99\d|100\d) ms old", loop.safety.log.recent[-1].reason)

"""Eval runner: chunk execution and history padding, Wilson interval, worker-count independence,
crash handling, the expert adapter and the report files.

The tests run against a point-mass reaching env defined here (spawned workers import this module
to build it), so they do not depend on any simulator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from robopolicy.agent import Agent, ExpertAgent
from robopolicy.eval import evaluate, wilson_interval
from sim.registry import TaskSpec, register_task

TASK = "test_pointmass"


class PointMassEnv(gym.Env):
    """A point in [-1, 1]^2 moved by velocity actions towards a goal.

    state = [x, y, goal_x, goal_y, last_action_0, last_action_1, step]; the raw last action is part of the
    state so tests can read back what the runner executed. Success within 0.05 of the goal.
    Fault injection: `crash_seed` raises in step `crash_step` (or in reset when crash_step == 0);
    `die_seed` kills the worker process at step `crash_step`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, obs_mode: str = "state", image_size: int | tuple = 16, max_steps: int = 40,
                 crash_seed: int | None = None, die_seed: int | None = None, crash_step: int = 3,
                 render_mode: str | None = None):
        image_size = image_size if isinstance(image_size, int) else int(image_size[0])
        self.obs_mode, self.image_size, self.max_steps = obs_mode, image_size, max_steps
        self.crash_seed, self.die_seed, self.crash_step = crash_seed, die_seed, crash_step
        self.render_mode = render_mode
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-1e6, 1e6, (7,), np.float32)}
        if obs_mode == "both":
            spaces["images/top"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)  # wide: tests encode ids in actions
        self.seed_ = None

    def _obs(self) -> dict[str, np.ndarray]:
        state = np.concatenate([self.pos, self.goal, self.last_action, [self.t]]).astype(np.float32)
        obs = {"state": state}
        if self.obs_mode == "both":
            obs["images/top"] = self.render()
        return obs

    def _info(self) -> dict[str, Any]:
        dist = float(np.linalg.norm(self.pos - self.goal))
        return {"success": dist < 0.05, "score": max(0.0, 1.0 - dist), "language": "reach the goal"}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.seed_ = seed
        if seed == self.crash_seed and self.crash_step == 0:
            raise RuntimeError(f"injected reset crash at seed {seed}")
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.last_action = np.zeros(2)
        self.t = 0
        return self._obs(), self._info()

    def step(self, action):
        self.t += 1
        if self.seed_ == self.crash_seed and self.t == self.crash_step:
            raise RuntimeError(f"injected step crash at seed {self.seed_}")
        if self.seed_ == self.die_seed and self.t == self.crash_step:
            os._exit(3)
        self.last_action = np.asarray(action, dtype=np.float64)
        self.pos = np.clip(self.pos + 0.1 * np.clip(self.last_action, -1, 1), -1, 1)
        info = self._info()
        return self._obs(), 0.0, False, self.t >= self.max_steps, info

    def render(self) -> np.ndarray:
        img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        for p, c in ((self.goal, 1), (self.pos, 0)):
            r, col = ((np.asarray(p) + 1) / 2 * (self.image_size - 1)).round().astype(int)
            img[r, col, c] = 255
        return img


@dataclass(frozen=True)
class PointMassFn:
    """Picklable env factory (spawned workers import this module to rebuild it)."""

    kwargs: tuple = ()

    def __call__(self) -> gym.Env:
        return PointMassEnv(**dict(self.kwargs))


class PointMassExpert:
    """P-controller towards the goal with seeded noise; gives up (no motion) on seeds divisible by 4."""

    def __init__(self, env: gym.Env):
        self.env = env

    def reset(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)
        self.lazy = seed is not None and seed % 4 == 0

    def act(self, obs: dict, info: dict) -> np.ndarray:
        if self.lazy:
            return np.zeros(2, np.float32)
        u = self.env.unwrapped
        return (np.clip(5 * (u.goal - u.pos), -1, 1) + self.rng.normal(0, 0.05, 2)).astype(np.float32)


register_task(TaskSpec(name=TASK, make_env=lambda **kw: PointMassEnv(**kw), make_expert=PointMassExpert,
                       max_episode_steps=40, fps=10.0, description="test-only point mass reaching"))


class ChunkProbeAgent:
    """Returns chunks whose actions encode (call index, position in chunk); logs every history it sees."""

    def __init__(self, n_obs_steps: int, n_action_steps: int):
        self.n_obs_steps, self.n_action_steps, self.nfe = n_obs_steps, n_action_steps, 3
        self.calls = 0
        self.seen: list[np.ndarray] = []

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        self.seen.append(obs["state"].copy())
        b = obs["state"].shape[0]
        assert len(obs["language"]) == b
        chunk = np.zeros((b, self.n_action_steps, 2), np.float32)
        chunk[:, :, 0] = self.calls
        chunk[:, :, 1] = np.arange(self.n_action_steps)
        self.calls += 1
        return chunk

    def reset(self) -> None:
        self.calls = 0


class GreedyAgent:
    """Deterministic per row: moves towards the goal at a seed-independent but state-dependent speed."""

    n_obs_steps, n_action_steps, nfe = 2, 3, 1

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        s = obs["state"][:, -1]
        step = np.clip(4 * (s[:, 2:4] - s[:, 0:2]), -1, 1) * (0.3 + 0.7 * np.abs(np.sin(7 * s[:, 2:3])))
        return np.repeat(step[:, None], self.n_action_steps, axis=1).astype(np.float32)

    def reset(self) -> None:
        pass


def _outcomes(result) -> list[tuple]:
    return [(r.index, r.seed, r.success, round(r.score, 6), r.length, r.error is None) for r in result.records]


def test_agents_satisfy_protocol():
    assert isinstance(GreedyAgent(), Agent)
    assert isinstance(ExpertAgent(TASK), Agent)


def test_wilson_interval_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for n in (1, 7, 50, 333):  # the interval always contains the observed rate, exactly at the ends
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_summary_plot_with_no_successes(tmp_path):
    from robopolicy.eval.metrics import EpisodeRecord, summarize
    from robopolicy.eval.plots import plot_summary

    records = [EpisodeRecord(index=i, seed=i, success=False, score=0.1, length=5, reward=0.0) for i in range(50)]
    summary = summarize(records, [1.0] * 10, n_obs_steps=1, n_action_steps=1, nfe=0)
    path = plot_summary(tmp_path / "s.png", records, summary, [1.0] * 10, "all failures")
    assert path.stat().st_size > 5_000


def test_chunk_execution_and_history_padding():
    agent = ChunkProbeAgent(n_obs_steps=3, n_action_steps=4)
    env_fn = PointMassFn((("max_steps", 10),))
    result = evaluate(agent, env_fn, n_episodes=2, seed=5, n_workers=1, stop_on_success=False,
                      videos_per_outcome=0, progress=False)
    assert [r.length for r in result.records] == [10, 10]
    # 10 steps with T_a=4 -> calls at steps 0, 4, 8 per episode; leftovers of a chunk are dropped at the end.
    assert agent.calls == 6 and len(result.latencies_ms) == 6
    first = agent.seen[0][0]  # (T_o, D) at the first call of episode 0
    assert first.shape == (3, 7)
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[1], first[2])  # first-frame padding
    assert first[-1, 6] == 0  # step counter of the reset observation
    # Second call (step 4): frames of steps 2, 3, 4, whose last actions are chunk 0's positions 1, 2, 3.
    second = agent.seen[1][0]
    assert second[:, 6].tolist() == [2, 3, 4]
    assert second[:, 4].tolist() == [0, 0, 0] and second[:, 5].tolist() == [1, 2, 3]
    third = agent.seen[2][0]
    assert third[:, 4].tolist() == [1, 1, 1] and third[:, 5].tolist() == [1, 2, 3]
    # Episode 1 starts with a fresh queue and padded history: its first call is call 3.
    fourth = agent.seen[3][0]
    assert fourth[:, 6].tolist() == [0, 0, 0]
    fifth = agent.seen[4][0]
    assert fifth[:, 4].tolist() == [3, 3, 3] and fifth[:, 5].tolist() == [1, 2, 3]
    assert result.summary["nfe_per_action"] == pytest.approx(3 / 4)


def test_wrong_chunk_shape_is_a_clear_error():
    class BadAgent(GreedyAgent):
        def act(self, obs):
            return np.zeros((obs["state"].shape[0], 1, 2), np.float32)  # T_a is 3

    with pytest.raises(ValueError, match="expected \\(B, T_a, A\\)"):
        evaluate(BadAgent(), PointMassFn(), n_episodes=1, n_workers=1, videos_per_outcome=0, progress=False)


def test_same_results_with_one_and_two_workers():
    kwargs = dict(n_episodes=6, seed=11, videos_per_outcome=0, progress=False)
    one = evaluate(GreedyAgent(), PointMassFn(), n_workers=1, **kwargs)
    two = evaluate(GreedyAgent(), PointMassFn(), n_workers=2, **kwargs)
    assert _outcomes(one) == _outcomes(two)
    assert len({r.length for r in one.records}) > 1  # episodes end at different times: resets interleave
    assert one.summary["n_success"] >= 1


CRASH_RUN = dict(n_episodes=5, seed=20, videos_per_outcome=0, progress=False)


@pytest.fixture(scope="module")
def clean_run():
    """Reference outcomes without faults (in-process; worker-count independence is tested above)."""
    return _outcomes(evaluate(GreedyAgent(), PointMassFn(), n_workers=1, **CRASH_RUN))


def _check_only_failed(result, bad: int, clean: list[tuple], message: str | None = None) -> None:
    errors = {r.index: r.error for r in result.records if r.error}
    assert list(errors) == [bad]
    assert message is None or message in errors[bad]
    assert not result.records[bad].success and result.summary["n_errors"] == 1
    assert [o for o in _outcomes(result) if o[0] != bad] == [o for o in clean if o[0] != bad]


def test_crash_in_env_step_fails_only_that_episode(clean_run):
    result = evaluate(GreedyAgent(), PointMassFn((("crash_seed", 22),)), n_workers=2, **CRASH_RUN)
    _check_only_failed(result, 2, clean_run, "injected step crash")


def test_crash_in_env_reset_fails_only_that_episode(clean_run):
    result = evaluate(GreedyAgent(), PointMassFn((("crash_seed", 23), ("crash_step", 0))), n_workers=1,
                      **CRASH_RUN)
    _check_only_failed(result, 3, clean_run, "injected reset crash")


def test_worker_process_death_is_recovered(clean_run):
    result = evaluate(GreedyAgent(), PointMassFn((("die_seed", 21),)), n_workers=2, **CRASH_RUN)
    _check_only_failed(result, 1, clean_run, "vector env failure")


def test_expert_agent_and_report_files(tmp_path):
    result = evaluate(ExpertAgent(TASK), TASK, n_episodes=6, seed=0, n_workers=1,
                      env_kwargs={"obs_mode": "both"}, videos_per_outcome=1, out_dir=tmp_path, progress=False)
    # The test expert gives up on seeds divisible by 4 (0 and 4 here) and reaches the goal otherwise.
    assert [r.success for r in result.records] == [False, True, True, True, False, True]
    assert result.summary["success_rate"] == pytest.approx(4 / 6)
    assert result.summary["nfe_per_action"] == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["summary"]["n_success"] == 4 and len(report["episodes"]) == 6
    assert [v["index"] for v in report["video_episodes"]] == [1, 0]  # lowest-index success, then failure
    assert (tmp_path / "rollouts.mp4").stat().st_size > 1000
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_expert_agent_in_spawned_workers():
    # The factory lives in this module, so the spawned workers import it and see the registered task.
    result = evaluate(ExpertAgent(TASK), PointMassFn(), n_episodes=4, seed=1, n_workers=2,
                      videos_per_outcome=0, progress=False)
    assert [r.success for r in result.records] == [True, True, True, False]


def test_eval_cli(tmp_path, capsys):
    from robopolicy.cli.eval import main

    assert main(["--help"]) == 0 and "checkpoint=PATH" in capsys.readouterr().out
    out = tmp_path / "report"
    code = main([f"task={TASK}", "episodes=3", "workers=1", "seed=1", "progress=false", f"out={out}"])
    assert code == 0
    assert json.loads((out / "eval.json").read_text())["summary"]["n_success"] == 3
    assert "success        100.0%" in capsys.readouterr().out
    assert main([f"task={TASK}", "nonsense_key=1"]) == 2
    assert "nonsense_key" in capsys.readouterr().err
    # A directory that is no checkpoint: a clear error naming it, exit code 2.
    assert main([f"task={TASK}", f"checkpoint={tmp_path / 'missing'}", "progress=false"]) == 2
    assert "missing" in capsys.readouterr().err
    # A training task config name instead of a sim task: the error says which sim task to use.
    assert main(["task=pusht_keypoints", "episodes=1", "progress=false"]) == 2
    assert "use task=pusht" in capsys.readouterr().err
    # num_threads sets torch's pool for the run; a bad value is refused before anything runs.
    import torch

    threads = torch.get_num_threads()
    try:
        assert main([f"task={TASK}", "episodes=1", "workers=1", "num_threads=1", "progress=false",
                     f"out={tmp_path / 'one_thread'}"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    for bad in ("0", "two"):
        assert main([f"task={TASK}", f"num_threads={bad}", "progress=false"]) == 2
        assert "num_threads must be an integer >= 1" in capsys.readouterr().err


def test_video_from_render_when_obs_has_no_camera(tmp_path):
    env_fn = PointMassFn((("render_mode", "rgb_array"), ("max_steps", 8)))
    result = evaluate(GreedyAgent(), env_fn, n_episodes=2, seed=3, n_workers=1, out_dir=tmp_path,
                      progress=False)
    frames = [len(f) for _, f in result.videos]
    assert frames and all(n == r.length + 1 for n, (r, _) in zip(frames, result.videos, strict=True))
    assert (tmp_path / "rollouts.mp4").stat().st_size > 1000

"""PushT as a robopolicy task: a gymnasium adapter over gym-pusht's `PushTEnv`.

gym-pusht gives the physics (pymunk, 10 Hz control, 10 physics sub-steps of 10 ms, PD control of the agent
towards the commanded position) and the 96x96 renders used by Diffusion Policy and LeRobot's pusht dataset.
This adapter puts them behind the project's conventions:

- observation: a `gymnasium.spaces.Dict` with `state` float32 and `images/top` uint8 [H, W, 3];
- action: float32 [2], the target position of the agent in pixels of the 512x512 board (clipped to [0, 512]);
- `info["coverage"]` is the coverage of the goal region by the block at this step (intersection area over
  the T's area, in [0, 1]); `info["success"]` is `coverage >= success_threshold` (0.95, Diffusion Policy's
  value; gym-pusht's own test is the strict `coverage > 0.95`).
- `info["score"]` is Diffusion Policy's normalised coverage `clip(coverage / 0.95, 0, 1)` (also gym-pusht's
  reward), so the task score of an episode -- the max of `info["score"]` over it, averaged over episodes --
  is DP's `test_mean_score`. The episode terminates on success (as in gym-pusht and Diffusion Policy) and
  truncates after `max_episode_steps` (300) steps.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.pusht.geometry import T_OUTLINE, to_world
from sim.sizes import parse_image_size

with warnings.catch_warnings():
    # pygame (imported by gym-pusht) warns about pkg_resources on import; nothing we can act on.
    warnings.simplefilter("ignore")
    from gym_pusht.envs.pusht import PushTEnv

LANGUAGE = "push the T-shaped block onto the target"
SUCCESS_THRESHOLD = 0.95
MAX_EPISODE_STEPS = 300
FPS = 10.0
BOARD_SIZE = 512.0
CAMERA = "top"
OBS_MODES = ("state", "pixels", "both")
STATE_MODES = ("full", "agent", "keypoints")
# Points on the T (block frame) whose world positions form the "keypoints" state: the 8 outline corners and a
# point on the stem's axis, as Diffusion Policy's pusht low-dim task (9 keypoints + agent = 20-D). Unlike the
# angle in the "full" state they have no wrap-around at 0 / 2 pi, which a regressor on raw angles trips on.
KEYPOINTS_LOCAL = np.concatenate([T_OUTLINE, np.array([[0.0, 60.0]])])


class PushTTask(gym.Env):
    """The PushT task with dict observations (`state`, `images/top`) and an explicit coverage score.

    Args:
        obs_mode: "state" (only `state`), "pixels" (`images/top` and `state`) or "both".
        image_size: (H, W) of `images/top`, or one int for a square image. Default 96x96 as in Diffusion Policy.
        render_mode: None or "rgb_array" (`render()` returns a `render_size` frame with the action marked).
        state_mode: "full" = [agent_x, agent_y, block_x, block_y, block_angle] (5-D, gym-pusht's state obs);
            "agent" = [agent_x, agent_y] (2-D proprioception, what Diffusion Policy's image task and LeRobot's
            pusht dataset use, so that an image policy cannot read the block pose from the state);
            "keypoints" = [agent_x, agent_y, 9 block keypoints (x, y)] (20-D, Diffusion Policy's pusht
            low-dim observation).
            Default: "agent" for obs_mode="pixels", "full" otherwise.
        success_threshold: coverage at or above which the episode is a success.
        max_episode_steps: truncation horizon.
        render_size: (H, W) of `render()` frames (a multiple of 16 so videos encode without resizing).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(
        self,
        obs_mode: str = "both",
        image_size: int | tuple[int, int] = (96, 96),
        render_mode: str | None = None,
        state_mode: str | None = None,
        success_threshold: float = SUCCESS_THRESHOLD,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        render_size: int | tuple[int, int] = (384, 384),
    ) -> None:
        super().__init__()
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if state_mode is None:
            state_mode = "agent" if obs_mode == "pixels" else "full"
        if state_mode not in STATE_MODES:
            raise ValueError(f"state_mode must be one of {STATE_MODES}, got {state_mode!r}")
        if not 0.0 < success_threshold <= 1.0:
            raise ValueError(f"success_threshold must be in (0, 1], got {success_threshold}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.obs_mode = obs_mode
        self.state_mode = state_mode
        self.render_mode = render_mode
        self.image_size = parse_image_size(image_size, "image_size")
        self.render_size = parse_image_size(render_size, "render_size")
        self.success_threshold = float(success_threshold)
        self.max_episode_steps = int(max_episode_steps)
        h, w = self.image_size
        rh, rw = self.render_size
        # gym-pusht always renders through its "rgb_array" path; our render_mode only gates render().
        self.sim = PushTEnv(
            obs_type="state",
            render_mode="rgb_array",
            observation_width=w,
            observation_height=h,
            visualization_width=rw,
            visualization_height=rh,
        )
        self.sim.success_threshold = self.success_threshold

        obs_spaces: dict[str, spaces.Space] = {}
        if state_mode == "full":
            high = np.array([BOARD_SIZE, BOARD_SIZE, BOARD_SIZE, BOARD_SIZE, 2 * math.pi], dtype=np.float32)
        elif state_mode == "keypoints":
            high = np.full(2 + 2 * len(KEYPOINTS_LOCAL), BOARD_SIZE, dtype=np.float32)
        else:
            high = np.array([BOARD_SIZE, BOARD_SIZE], dtype=np.float32)
        obs_spaces["state"] = spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32)
        if obs_mode in ("pixels", "both"):
            obs_spaces[f"images/{CAMERA}"] = spaces.Box(low=0, high=255, shape=(h, w, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(low=0.0, high=BOARD_SIZE, shape=(2,), dtype=np.float32)
        self._elapsed = 0
        self._has_reset = False

    # ------------------------------------------------------------------ privileged state (for experts)
    @property
    def agent_position(self) -> np.ndarray:
        """Agent centre (x, y), float64."""
        return np.array(self.sim.agent.position, dtype=np.float64)

    @property
    def agent_velocity(self) -> np.ndarray:
        """Agent velocity (px/s), float64."""
        return np.array(self.sim.agent.velocity, dtype=np.float64)

    @property
    def block_pose(self) -> np.ndarray:
        """Block pose (x, y, angle): world point = R(angle) @ local + (x, y), local frame as in gym-pusht."""
        b = self.sim.block
        return np.array([b.position.x, b.position.y, b.angle], dtype=np.float64)

    @property
    def goal_pose(self) -> np.ndarray:
        """Target pose (x, y, angle) of the block."""
        return np.asarray(self.sim.goal_pose, dtype=np.float64).copy()

    @property
    def elapsed_steps(self) -> int:
        """Control steps taken since the last reset."""
        return self._elapsed

    def coverage(self) -> float:
        """Fraction of the goal T covered by the block now."""
        return float(self.sim._get_coverage())

    # ------------------------------------------------------------------ gymnasium API
    def _obs(self) -> dict[str, np.ndarray]:
        agent = self.sim.agent.position
        if self.state_mode == "full":
            block = self.sim.block
            state = np.array(
                [agent.x, agent.y, block.position.x, block.position.y, block.angle % (2 * math.pi)],
                dtype=np.float32,
            )
        elif self.state_mode == "keypoints":
            keypoints = to_world(KEYPOINTS_LOCAL, self.block_pose)
            state = np.concatenate([[agent.x, agent.y], keypoints.reshape(-1)]).astype(np.float32)
        else:
            state = np.array([agent.x, agent.y], dtype=np.float32)
        obs = {"state": state}
        if self.obs_mode in ("pixels", "both"):
            obs[f"images/{CAMERA}"] = np.ascontiguousarray(self.sim._render(visualize=False), dtype=np.uint8)
        return obs

    def _info(self, coverage: float) -> dict[str, Any]:
        return {
            "success": bool(coverage >= self.success_threshold),
            "score": float(min(max(coverage / self.success_threshold, 0.0), 1.0)),
            "coverage": float(coverage),
            "language": LANGUAGE,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; the same seed gives the same agent and block poses (gym-pusht's own RNG).

        `options={"reset_to_state": [agent_x, agent_y, block_x, block_y, block_angle]}` is passed through.
        """
        super().reset(seed=seed)
        self.sim.reset(seed=seed, options=options)
        self._elapsed = 0
        self._has_reset = True
        return self._obs(), self._info(self.coverage())

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move the agent towards `action` for 0.1 s (10 physics steps); actions outside [0, 512] are clipped."""
        if not self._has_reset:
            raise RuntimeError("PushTTask.step() called before reset(); call env.reset(seed=...) first")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"PushT action must have 2 values (target x, y), got shape {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"PushT action must be finite, got {a}")
        a = np.clip(a, 0.0, BOARD_SIZE)
        _, reward, _, _, sim_info = self.sim.step(a)
        self._elapsed += 1
        coverage = float(sim_info["coverage"])
        info = self._info(coverage)
        terminated = info["success"]
        truncated = (not terminated) and self._elapsed >= self.max_episode_steps
        return self._obs(), float(reward), terminated, truncated, info

    @property
    def reward_bounds(self) -> tuple[float, float]:
        """Per-step reward range (goal coverage over the success threshold, clipped to [0, 1])."""
        return (0.0, 1.0)

    def render(self) -> np.ndarray:
        """An RGB frame of `render_size` with the last action drawn as a cross (needs render_mode='rgb_array')."""
        if self.render_mode != "rgb_array":
            raise ValueError("render() needs the env made with render_mode='rgb_array'")
        return np.ascontiguousarray(self.sim.render(), dtype=np.uint8)

    def close(self) -> None:
        """Release gym-pusht's resources."""
        self.sim.close()

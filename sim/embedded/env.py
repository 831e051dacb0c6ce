"""The embedded MuJoCo tabletop as a gymnasium env: one scene, several language-instructed tasks.

- action: float32 [5] in [-1, 1]: (dx, dy, dz, dyaw, gripper). The first four are end-effector deltas
  scaled by `POS_STEP` (m) and `YAW_STEP` (rad) per control step, added to the pose commanded at the
  previous step (like a mocap target: the servo lag then does not bend the path), which is kept within
  `MAX_LEAD` of the measured pose so that a blocked arm does not wind up. The gripper points down at all
  times. gripper -1 = open (8 cm), +1 = closed, in between = in between. Each step solves a
  damped-least-squares IK for the new pose and servos the joints there for 1 / control_hz seconds
  (500 Hz physics).
- observation (`gymnasium.spaces.Dict`): `state` float32 and, unless obs_mode="state", `images/front`,
  `images/wrist` uint8 [H, W, 3] (upright); with `depth=True` also `depth/<camera>` uint16 [H, W] (mm).
  `camera_geometry(camera)` gives the intrinsics and base-frame extrinsics that turn that depth into a
  point cloud (robopolicy.perception's env wrapper adds a `pointcloud` key from them).
  `state` ("full", 38-D) = arm joints (6), gripper width (1), EE position (3), EE quaternion wxyz (4),
  red, green, blue block poses (3 x 7: position, quaternion) and target position (3). With
  state_mode="proprio" it is the first 14 values only (what an image policy should see).
- info: `success` (bool), `score` (float(success)), `language` (the instruction), `task` (the kind).
- The episode terminates on success when `terminate_on_success` (default, as in PushT), and truncates
  after `max_episode_steps`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.embedded.mjcf import BLOCK_HALF, FINGER_MAX
from sim.embedded.render import CAMERAS, SceneRenderer, camera_geometry
from sim.embedded.scene import (
    PHYSICS_DT,
    WORKSPACE_LOWER,
    WORKSPACE_UPPER,
    EmbeddedScene,
    topdown_quat,
    wrap_angle,
)
from sim.embedded.task_defs import (
    COLORS,
    FAMILIES,
    TaskInstance,
    check_kinds,
    is_success,
    sample_instance,
    sample_layout,
)
from sim.sizes import parse_image_size

POS_STEP = 0.04  # m per control step at |action| = 1
YAW_STEP = 0.15  # rad per control step at |action| = 1
YAW_LIMIT = 0.5 * np.pi  # the commanded yaw stays in [-YAW_LIMIT, YAW_LIMIT] (the tool joint's range)
MAX_LEAD = 0.06  # m, how far the commanded position may run ahead of the measured one
MAX_YAW_LEAD = 0.3  # rad, same for the yaw
OBS_MODES = ("state", "pixels", "both")
STATE_MODES = ("full", "proprio")
PROPRIO_DIM = 14
FULL_STATE_DIM = PROPRIO_DIM + 7 * len(COLORS) + 3
ACTION_DIM = 5


class EmbeddedEnv(gym.Env):
    """Tabletop arm + blocks; the goal (and its instruction) comes from the task family.

    Args:
        task: "push", "pick_place", "stack" or "multitask" (a goal and colours drawn per reset seed).
        obs_mode: "state" (only `state`), "pixels" (images and proprio `state`) or "both".
        image_size: (H, W) of the camera images (or one int). Default 96x96.
        render_mode: None or "rgb_array" (`render()` returns the front camera at `render_size`).
        state_mode: "full" or "proprio"; default "proprio" for obs_mode="pixels", "full" otherwise.
        cameras: which cameras to observe (subset of ("front", "wrist")).
        depth: also observe `depth/<camera>` (uint16, mm).
        control_hz: control rate; the physics runs at 500 Hz.
        max_episode_steps: truncation horizon.
        terminate_on_success: end the episode at the first successful step.
        kinds: "multitask" only: the task kinds to draw from, e.g. ["push"] (3 instructions); default all three.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str = "push",
        obs_mode: str = "both",
        image_size: int | tuple[int, int] = (96, 96),
        render_mode: str | None = None,
        state_mode: str | None = None,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
        depth: bool = False,
        control_hz: float = 10.0,
        max_episode_steps: int = 200,
        terminate_on_success: bool = True,
        render_size: int | tuple[int, int] = (256, 256),
        kinds: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        super().__init__()
        if task not in FAMILIES:
            raise ValueError(f"task must be one of {FAMILIES}, got {task!r}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        state_mode = state_mode or ("proprio" if obs_mode == "pixels" else "full")
        if state_mode not in STATE_MODES:
            raise ValueError(f"state_mode must be one of {STATE_MODES}, got {state_mode!r}")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            raise ValueError(f"cameras must be a non-empty subset of {CAMERAS}, got {tuple(cameras)}")
        substeps = round(1.0 / (control_hz * PHYSICS_DT))
        if substeps < 1:
            raise ValueError(f"control_hz must be at most {1 / PHYSICS_DT:.0f}, got {control_hz}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.family = task
        if kinds is not None and task != "multitask":
            raise ValueError(f"kinds only applies to task='multitask', not {task!r}")
        self.kinds = check_kinds(kinds)
        self.obs_mode = obs_mode
        self.state_mode = state_mode
        self.render_mode = render_mode
        self.cameras = tuple(cameras)
        self.depth = bool(depth)
        self.image_size = parse_image_size(image_size, "image_size")
        self.render_size = parse_image_size(render_size, "render_size")
        self.substeps = substeps
        self.control_hz = 1.0 / (substeps * PHYSICS_DT)
        self.metadata = {**self.metadata, "render_fps": self.control_hz}
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.scene = EmbeddedScene()
        self._renderer: SceneRenderer | None = None
        self._video_renderer: SceneRenderer | None = None

        h, w = self.image_size
        dim = FULL_STATE_DIM if state_mode == "full" else PROPRIO_DIM
        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        }
        if obs_mode != "state":
            for cam in self.cameras:
                obs_spaces[f"images/{cam}"] = spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
                if self.depth:
                    obs_spaces[f"depth/{cam}"] = spaces.Box(0, 65535, shape=(h, w), dtype=np.uint16)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self.task: TaskInstance = sample_instance(task, np.random.default_rng(0))
        self._target_pos = self.scene.ee_pos()
        self._target_yaw = 0.0
        self._elapsed = 0
        self._has_reset = False

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Sample a goal (multitask) and a layout from `seed`; the arm starts at home, gripper open."""
        super().reset(seed=seed)
        rng = self.np_random
        self.task = sample_instance(self.family, rng, self.kinds)
        blocks, yaws, target = sample_layout(self.task, rng)
        self.scene.reset()
        for name in COLORS:
            self.scene.set_block_pose(name, np.array([*blocks[name], BLOCK_HALF]), yaws[name])
        self.scene.set_target_pos(target)
        # Start a little away from home so that demos do not all begin from one pose.
        start = self.scene.home_q + rng.normal(0.0, 0.03, size=self.scene.home_q.shape)
        self.scene.reset_arm(start)
        # Let the blocks settle on the table so the first observation is at rest.
        self.scene.step(20)
        self._target_pos = self.scene.ee_pos()
        self._target_yaw = self.scene.ee_yaw()
        self._elapsed = 0
        self._has_reset = True
        return self._obs(), self._info()

    def step(self, action: np.ndarray):
        """Apply one end-effector delta + gripper command and simulate 1 / control_hz seconds."""
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a}")
        a = np.clip(a, -1.0, 1.0)
        scene = self.scene
        ee, ee_yaw = scene.ee_pos(), scene.ee_yaw()
        lead = self._target_pos + POS_STEP * a[:3] - ee
        lead *= min(1.0, MAX_LEAD / max(float(np.linalg.norm(lead)), 1e-9))
        self._target_pos = np.clip(ee + lead, WORKSPACE_LOWER, WORKSPACE_UPPER)
        yaw_lead = float(
            np.clip(wrap_angle(self._target_yaw + YAW_STEP * a[3] - ee_yaw), -MAX_YAW_LEAD, MAX_YAW_LEAD)
        )
        self._target_yaw = float(np.clip(wrap_angle(ee_yaw + yaw_lead), -YAW_LIMIT, YAW_LIMIT))
        # IK from the previous set-point (not the lagging measurement) keeps successive solutions smooth.
        q = scene.solve_ik(self._target_pos, topdown_quat(self._target_yaw), scene.data.ctrl[scene.arm_act])
        scene.set_arm_target(q)
        scene.set_gripper_target(FINGER_MAX * (1.0 - a[4]))
        scene.step(self.substeps)
        self._elapsed += 1
        info = self._info()
        terminated = bool(info["success"] and self.terminate_on_success)
        truncated = self._elapsed >= self.max_episode_steps
        return self._obs(), float(info["success"]), terminated, truncated, info

    @property
    def reward_bounds(self) -> tuple[float, float]:
        """Per-step reward range (1 on a successful step, else 0); RL uses it to bound returns."""
        return (0.0, 1.0)

    def render(self) -> np.ndarray | None:
        """Front camera frame at `render_size` (for videos), or None when render_mode is None."""
        if self.render_mode != "rgb_array":
            return None
        if self._video_renderer is None:
            self._video_renderer = SceneRenderer(self.scene.model, *self.render_size)
        return self._video_renderer.render(self.scene.data, "front")

    def close(self) -> None:
        """Free the renderers' GL contexts."""
        for r in (self._renderer, self._video_renderer):
            if r is not None:
                r.close()
        self._renderer = self._video_renderer = None

    # ------------------------------------------------------------------ observations
    # Crop box of point-cloud observations (base frame, m): the table top around the reachable area, up to
    # above the raised gripper. Its floor is just under the table top so the flat target disc stays in.
    pointcloud_workspace = ((0.15, -0.45, -0.005), (0.85, 0.45, 0.40))

    def camera_geometry(self, camera: str) -> dict[str, np.ndarray | float]:
        """K, base_from_camera (OpenCV axes) and depth_scale of `camera` at the current state (render.py)."""
        if camera not in self.cameras:
            raise KeyError(f"camera '{camera}' is not observed by this env (cameras={self.cameras})")
        return camera_geometry(self.scene.model, self.scene.data, camera, *self.image_size)

    def full_state(self) -> np.ndarray:
        """The 38-D privileged state (float32), whatever the env's state_mode."""
        s = self.scene
        parts = [s.arm_q(), [s.gripper_width()], s.ee_pos(), s.ee_quat()]
        for name in COLORS:
            parts.extend(s.block_pose(name))
        parts.append(s.target_pos())
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts]).astype(np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        state = self.full_state()
        obs: dict[str, np.ndarray] = {"state": state if self.state_mode == "full" else state[:PROPRIO_DIM]}
        if self.obs_mode != "state":
            if self._renderer is None:
                self._renderer = SceneRenderer(self.scene.model, *self.image_size)
            for cam in self.cameras:
                self._renderer.update(self.scene.data, cam)
                obs[f"images/{cam}"] = self._renderer.color()
                if self.depth:
                    obs[f"depth/{cam}"] = self._renderer.depth_mm()
        return obs

    def _info(self) -> dict[str, Any]:
        success = is_success(self.scene, self.task)
        return {
            "success": success,
            "score": float(success),
            "language": self.task.language,
            "task": self.task.kind,
        }

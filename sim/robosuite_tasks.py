"""robosuite tasks (Lift, PickPlaceCan, NutAssemblySquare) behind the project's gymnasium API.

Panda arm, OSC_POSE control (robosuite 1.5's composite BASIC controller with OSC_POSE on the arm),
20 Hz control. Observations: `state` (eef pos, eef quat, gripper qpos, then object state unless
`state_mode="proprio"`, the robot-only state that image policies take, as in DP's image setting; float32) and
84x84 `images/agentview`, `images/wrist` (robot0_eye_in_hand), uint8, upright; with `depth=True` also
`depth/<camera>` uint16 [H, W] (mm), and `camera_geometry(camera)` gives K and the camera's pose in the
robot's base frame (OpenCV axes) for point clouds (robopolicy/perception).

Rendering is our own `mujoco.Renderer` on robosuite's model rather than robosuite's camera
observables: it renders upright (no OpenGL-convention flip), and lets us switch off multisampling,
shadows, reflections, the skybox and the collision geoms, which is what makes it fast on a software
(llvmpipe) or GPU EGL context.

Seeding: robosuite samples object placements and the arm's initial joint noise from numpy's *global*
RNG. `reset(seed=s)` seeds a private generator, draws one integer from it and runs robosuite's reset
with the global RNG temporarily seeded by that integer (restoring the caller's global RNG afterwards),
so the same seed always gives the same initial state. The model itself is built once per env (hard_reset=False),
and robosuite draws parts of it from the same global RNG at build time (Lift's cube size, 20-22 mm): that draw is
seeded too (`model_seed`), else two envs reset with the same seed differ by up to a millimetre of cube size and
closed-loop evaluations of one checkpoint on the same seeds drift apart.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first mujoco import to take effect

import atexit  # noqa: E402
import logging  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import robosuite  # noqa: E402
from robosuite.controllers import load_composite_controller_config  # noqa: E402

from sim.registry import TaskSpec, register_task  # noqa: E402
from sim.sizes import parse_image_size

logging.getLogger("robosuite_logs").setLevel(logging.ERROR)

# Our camera key -> robosuite camera name.
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
CONTROL_FREQ = 20
# "full": robot + object state (state policies); "proprio": eef pos, eef quat, gripper qpos only (9-D).
STATE_MODES = ("full", "proprio")


@dataclass(frozen=True)
class RobosuiteTaskInfo:
    """Static description of one robosuite task."""

    name: str
    env_name: str
    max_episode_steps: int
    language: str
    description: str


# Horizons follow Diffusion Policy's robomimic evaluation: max_steps=400 (its value for the ph datasets)
# for Lift and Can, 500 (its value for the mh datasets) for Square, the hardest of the three, which gives
# a learned policy room for a regrasp. The scripted experts need about 42 / 170 / 150 steps.
TASKS: dict[str, RobosuiteTaskInfo] = {
    "robosuite_lift": RobosuiteTaskInfo(
        "robosuite_lift", "Lift", 400, "pick up the red cube", "robosuite Lift: grasp the cube and lift it"
    ),
    "robosuite_can": RobosuiteTaskInfo(
        "robosuite_can",
        "PickPlaceCan",
        400,
        "pick up the can and place it in its bin",
        "robosuite PickPlaceCan: move the coke can into its compartment of the right bin",
    ),
    "robosuite_square": RobosuiteTaskInfo(
        "robosuite_square",
        "NutAssemblySquare",
        500,
        "put the square nut on the square peg",
        "robosuite NutAssemblySquare: fit the square nut over the square peg",
    ),
}


_LIVE_RENDERERS: weakref.WeakSet[FastRenderer] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_renderers() -> None:
    # Free GL contexts at exit before mujoco terminates the EGL display; freeing them after that (from
    # garbage collection) prints EGL_NOT_INITIALIZED errors.
    for renderer in list(_LIVE_RENDERERS):
        renderer.close()


class FastRenderer:
    """Renders robosuite cameras with `mujoco.Renderer`: upright, no MSAA, shadows or reflections."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int) -> None:
        # Multisampling is fixed when the GL context is made, so switch it off before creating it.
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except mujoco.FatalError as e:
            raise RuntimeError(
                f"could not create an OpenGL context for offscreen rendering ({e}). Set MUJOCO_GL=egl in the "
                "environment before Python first imports mujoco, or use obs_mode='state'."
            ) from e
        flags = self._renderer.scene.flags
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            flags[flag] = 0
        # Geom group 0 holds robosuite's collision meshes: hidden, as robosuite's own renderer does.
        self._option = mujoco.MjvOption()
        self._option.geomgroup[0] = 0
        self._closed = False
        _LIVE_RENDERERS.add(self)
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:
            # Registered after mujoco's own EGL atexit hook (set up by the first Renderer), so it runs first.
            atexit.register(_close_renderers)
            _ATEXIT_REGISTERED = True

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Return an upright uint8 RGB frame [H, W, 3] from a named camera."""
        self._renderer.update_scene(data, camera=camera, scene_option=self._option)
        return self._renderer.render()

    def render_depth_mm(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Planar depth of a named camera as uint16 millimetres [H, W] (same scene as `render`)."""
        self._renderer.update_scene(data, camera=camera, scene_option=self._option)
        self._renderer.enable_depth_rendering()
        try:
            depth_m = self._renderer.render()
        finally:
            self._renderer.disable_depth_rendering()
        return np.clip(np.round(depth_m * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def close(self) -> None:
        """Free the GL context (idempotent)."""
        if not self._closed:
            self._closed = True
            self._renderer.close()


class RobosuiteEnv(gym.Env):
    """A robosuite manipulation task with dict observations, 7-D OSC actions and seeded resets.

    The reward is robosuite's sparse one (1 on success) unless `reward_shaping`, which gives its staged dense reward
    (reaching, grasping, lifting; still at most 1) for RL fine-tuning: `+task.env_kwargs.reward_shaping=true`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        task: str,
        obs_mode: str = "both",
        image_size: int | tuple[int, int] = (84, 84),
        render_mode: str | None = None,
        render_size: int | tuple[int, int] = (256, 256),
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
        depth: bool = False,
        cameras: tuple[str, ...] | list[str] | None = None,
        state_mode: str = "full",
        model_seed: int = 0,
        reward_shaping: bool = False,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown robosuite task '{task}'; choose one of {sorted(TASKS)}")
        if obs_mode not in ("state", "pixels", "both"):
            raise ValueError(f"obs_mode must be 'state', 'pixels' or 'both', got {obs_mode!r}")
        if state_mode not in STATE_MODES:
            raise ValueError(f"state_mode must be one of {STATE_MODES}, got {state_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task = TASKS[task]
        self.obs_mode = obs_mode
        self.state_mode = state_mode
        self.depth = bool(depth)
        self.cameras = tuple(CAMERAS) if cameras is None else tuple(cameras)
        if not self.cameras or any(c not in CAMERAS for c in self.cameras):
            raise ValueError(f"cameras must be a non-empty subset of {tuple(CAMERAS)}, got {self.cameras}")
        self.image_size = parse_image_size(image_size, "image_size")
        self.render_size = parse_image_size(render_size, "render_size")
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps or self.task.max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.reward_shaping = bool(reward_shaping)

        controller = load_composite_controller_config(robot="Panda")  # BASIC composite, OSC_POSE arm
        # hard_reset=False keeps one MjModel for the env's lifetime (faster resets, and our renderer's
        # GL context stays valid); ignore_done: truncation is ours. The build draws from numpy's global RNG.
        with _global_numpy_seed(model_seed):
            self.rs = robosuite.make(
                self.task.env_name,
                robots="Panda",
                controller_configs=controller,
                has_renderer=False,
                has_offscreen_renderer=False,
                use_camera_obs=False,
                use_object_obs=True,
                reward_shaping=self.reward_shaping,
                control_freq=CONTROL_FREQ,
                horizon=10**9,
                ignore_done=True,
                hard_reset=False,
            )
        self._renderer: FastRenderer | None = None
        self._video_renderer: FastRenderer | None = None
        self._elapsed = 0

        low, high = self.rs.action_spec
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        state_dim = len(self._state(self.rs._get_observations(force_update=True)))
        spaces: dict[str, gym.Space] = {}
        if obs_mode in ("state", "both"):
            spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), dtype=np.float32)
        if obs_mode in ("pixels", "both"):
            for key in self.cameras:
                spaces[f"images/{key}"] = gym.spaces.Box(0, 255, (*self.image_size, 3), dtype=np.uint8)
                if self.depth:
                    spaces[f"depth/{key}"] = gym.spaces.Box(0, 65535, self.image_size, dtype=np.uint16)
        self.observation_space = gym.spaces.Dict(spaces)

    # -- observation helpers ---------------------------------------------------------------------------

    def _state(self, rs_obs: dict[str, Any]) -> np.ndarray:
        parts = [rs_obs["robot0_eef_pos"], rs_obs["robot0_eef_quat"], rs_obs["robot0_gripper_qpos"]]
        if self.state_mode == "full":
            parts.append(rs_obs["object-state"])
        return np.concatenate(parts).astype(np.float32)

    def _mj(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        return self.rs.sim.model._model, self.rs.sim.data._data

    def _obs(self, rs_obs: dict[str, Any]) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if "state" in self.observation_space.spaces:
            obs["state"] = self._state(rs_obs)
        if self.obs_mode in ("pixels", "both"):
            model, data = self._mj()
            if self._renderer is None:
                self._renderer = FastRenderer(model, *self.image_size)
            for key in self.cameras:
                obs[f"images/{key}"] = self._renderer.render(data, CAMERAS[key])
                if self.depth:
                    obs[f"depth/{key}"] = self._renderer.render_depth_mm(data, CAMERAS[key])
        return obs

    def _base_from_world(self) -> np.ndarray:
        model, data = self._mj()
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "robot0_base")
        world_from_base = np.eye(4)
        world_from_base[:3, :3] = data.xmat[body].reshape(3, 3)
        world_from_base[:3, 3] = data.xpos[body]
        return np.linalg.inv(world_from_base)

    def camera_geometry(self, camera: str) -> dict[str, Any]:
        """K (OpenCV, pixel centres at integers), base_from_camera (OpenCV axes, Panda base frame) and
        depth_scale (m per unit of depth/<camera>) of `camera` at the current state."""
        if camera not in self.cameras:
            raise KeyError(f"camera '{camera}' is not observed by this env (cameras={self.cameras})")
        model, data = self._mj()
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERAS[camera])
        h, w = self.image_size
        f = 0.5 * h / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2.0)
        k = np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
        world_from_cam = np.eye(4)
        world_from_cam[:3, :3] = data.cam_xmat[cam_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])  # GL -> CV
        world_from_cam[:3, 3] = data.cam_xpos[cam_id]
        return {"intrinsics": k, "base_from_camera": self._base_from_world() @ world_from_cam, "depth_scale": 0.001}

    @property
    def pointcloud_workspace(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Crop box (base frame, m) of point clouds: the table top around its centre, 40 cm high."""
        if not hasattr(self.rs, "table_offset"):
            raise ValueError(f"{self.task.name} has no single table to crop to; set pointcloud.workspace_lower "
                             "and workspace_upper (Panda base frame, m)")
        top = np.asarray(self.rs.table_offset, dtype=float)
        lo_w = top + np.array([-0.3, -0.3, -0.005])
        hi_w = top + np.array([0.3, 0.3, 0.4])
        corners = np.array([[x, y, z, 1.0] for x in (lo_w[0], hi_w[0]) for y in (lo_w[1], hi_w[1])
                            for z in (lo_w[2], hi_w[2])])
        in_base = (self._base_from_world() @ corners.T).T[:, :3]
        return tuple(in_base.min(0).tolist()), tuple(in_base.max(0).tolist())

    def _info(self) -> dict[str, Any]:
        success = bool(self.rs._check_success())
        return {"success": success, "score": float(success), "language": self.task.language}

    # -- gymnasium API ---------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset to a random initial state; the same `seed` reproduces the same state exactly."""
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(2**31 - 1))
        with _global_numpy_seed(episode_seed):
            self.rs.reset()
        # robosuite's object-to-eef observables read a pose that is cached during the observation pass,
        # so they are zeros in the observation reset() returns; a second pass fills them in.
        rs_obs = self.rs._get_observations(force_update=True)
        self._elapsed = 0
        return self._obs(rs_obs), self._info()

    def step(self, action: np.ndarray):
        """Apply one OSC-pose delta + gripper command (clipped to [-1, 1])."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        rs_obs, reward, _, _ = self.rs.step(action)
        self._elapsed += 1
        info = self._info()
        terminated = bool(info["success"] and self.terminate_on_success)
        truncated = self._elapsed >= self.max_episode_steps
        return self._obs(rs_obs), float(reward), terminated, truncated, info

    @property
    def reward_bounds(self) -> tuple[float, float]:
        """Per-step reward range. robosuite scales both its sparse reward (1 on success) and its shaped one
        (reach + grasp + lift stages, `reward_shaping=True`) so that the maximum is 1."""
        return (0.0, 1.0)

    def render(self) -> np.ndarray | None:
        """Agentview frame at `render_size` (for videos), when render_mode == 'rgb_array'."""
        if self.render_mode != "rgb_array":
            return None
        model, data = self._mj()
        if self._video_renderer is None:
            self._video_renderer = FastRenderer(model, *self.render_size)
        return self._video_renderer.render(data, CAMERAS["agentview"])

    def close(self) -> None:
        """Free the renderers and the robosuite env."""
        for r in (self._renderer, self._video_renderer):
            if r is not None:
                r.close()
        self._renderer = self._video_renderer = None
        self.rs.close()


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Run a block with numpy's global RNG seeded by `seed`, restoring the caller's RNG state afterwards."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _make_factory(task: str):
    def make(**kwargs: Any) -> gym.Env:
        return RobosuiteEnv(task, **kwargs)

    make.__doc__ = f"Create the '{task}' env (kwargs: obs_mode, image_size, render_mode, ...)."
    return make


def _make_expert(env: gym.Env) -> Any:
    from sim.robosuite_expert import RobosuiteExpert

    return RobosuiteExpert(env)


for _name, _info in TASKS.items():
    register_task(
        TaskSpec(
            name=_name,
            make_env=_make_factory(_name),
            make_expert=_make_expert,
            max_episode_steps=_info.max_episode_steps,
            fps=float(CONTROL_FREQ),
            description=_info.description,
        )
    )

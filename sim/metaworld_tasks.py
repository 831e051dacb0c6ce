"""Meta-World v3 tasks behind the project's gymnasium conventions, with Meta-World's scripted experts.

Each registered task `metaworld_<name>` wraps one Meta-World v3 environment (e.g. `drawer-open-v3`):

- Task sampling is Meta-World's own. By default (`task_sampling="mt1"`) the 50 training tasks of the MT1
  benchmark (built with a fixed benchmark seed, so every process sees the same 50) are indexed by the reset
  seed: `reset(seed=s)` uses task `s % 50`. `task_sampling="seeded"` instead draws a fresh object/goal
  configuration from the env's own random reset space with a generator seeded by `s` (Meta-World's
  `seeded_rand_vec` mechanism), for evaluations that need more than 50 distinct configurations.
- Observations: `state` (the 39-D Meta-World observation with the goal visible, as in MT1) and
  `images/<camera>` rendered offscreen with MuJoCo's own renderer, without shadows, reflections or
  multisampling (software EGL renders ~10x faster that way), rotated upright.
- `info["success"]` is Meta-World's success flag; by default the episode terminates on success, which is
  the benchmark's "success at any step" criterion and keeps demonstrations free of idle tails.
"""

from __future__ import annotations

import os

# Offscreen rendering needs a GL backend chosen before mujoco is imported; EGL is the headless default.
os.environ.setdefault("MUJOCO_GL", "egl")

import atexit
import functools
import warnings
import weakref
from typing import Any, Literal

import gymnasium as gym
import metaworld
import mujoco
import numpy as np
from gymnasium import spaces
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP

from sim.registry import TaskSpec, register_task
from sim.sizes import parse_image_size

# Meta-World's scripted policies warn on every step that their gains saturate the [-1, 1] action range;
# the saturation is intended, the warning is noise.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module="metaworld")

MAX_EPISODE_STEPS = 500  # Meta-World's max_path_length
FPS = 80.0  # frame_skip 5 x timestep 2.5 ms
MT1_BENCHMARK_SEED = 0  # fixes the 50 MT1 training tasks across processes
DEFAULT_IMAGE_SIZE = (84, 84)
DEFAULT_CAMERAS = ("corner", "gripper")

# Our camera key -> (MuJoCo camera name in Meta-World's scene, whether the frame needs a 180 degree turn).
# The "corner*" cameras are mounted rolled upside down in Meta-World's XML (their image-up axis points at
# the floor); turning the frame by 180 degrees (not mirroring it) gives the view a real upright camera has.
CAMERAS: dict[str, tuple[str, bool]] = {
    "corner": ("corner", True),
    "corner2": ("corner2", True),
    "corner3": ("corner3", True),
    "corner4": ("corner4", True),
    "topview": ("topview", False),
    "gripper": ("gripperPOV", False),
    "behind_gripper": ("behindGripper", False),
}

# Registered tasks (Meta-World names without "-v3") and their language instructions. Chosen among the 50
# v3 tasks for scripted policies that succeed reliably with action noise (see scripts/metaworld_expert_check.py).
INSTRUCTIONS: dict[str, str] = {
    "reach": "reach the goal position with the gripper",
    "push": "push the puck to the goal",
    "pick-place": "pick up the puck and place it at the goal",
    "door-open": "open the door",
    "door-close": "close the door",
    "drawer-open": "open the drawer",
    "drawer-close": "close the drawer",
    "button-press": "press the button",
    "button-press-topdown": "press the button from the top",
    "window-open": "slide the window open",
    "window-close": "slide the window closed",
    "peg-insert-side": "insert the peg into the hole from the side",
    "basketball": "put the basketball into the hoop",
    "coffee-push": "push the mug under the coffee machine",
    "assembly": "pick up the nut and put it onto the peg",
    "hammer": "hammer the nail into the wall",
    "faucet-open": "turn the faucet open",
    "plate-slide": "slide the plate into the goal",
    "lever-pull": "pull the lever up",
    "dial-turn": "turn the dial",
    "box-close": "put the lid on the box",
    "shelf-place": "place the puck on the shelf",
    "bin-picking": "move the puck from one bin to the other",
    "handle-press": "press the handle down",
}

ObsMode = Literal["state", "pixels", "both"]
TaskSampling = Literal["mt1", "seeded"]


@functools.cache
def mt1_train_tasks(env_name: str) -> tuple[metaworld.Task, ...]:
    """The 50 MT1 training tasks of a Meta-World v3 env (built once per process; takes ~2 s)."""
    return tuple(metaworld.MT1(env_name, seed=MT1_BENCHMARK_SEED).train_tasks)


def _close_renderers(renderers: list[mujoco.Renderer]) -> None:
    for renderer in renderers:
        renderer.close()
    renderers.clear()


# Envs with open GL contexts. MuJoCo's EGL module terminates the display in an atexit hook; contexts
# released after that raise EGL_NOT_INITIALIZED, so ours are closed by a hook registered after MuJoCo's
# (atexit runs hooks last-in, first-out).
_LIVE_ENVS: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()
_exit_hook_registered = False


def _close_all_at_exit() -> None:
    for env in list(_LIVE_ENVS):
        _close_renderers(env._renderers)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with dict observations, seeded task selection and upright camera images."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(
        self,
        task: str,
        obs_mode: ObsMode = "both",
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
        render_mode: str | None = None,
        render_size: tuple[int, int] = (256, 256),
        max_episode_steps: int = MAX_EPISODE_STEPS,
        task_sampling: TaskSampling = "mt1",
        terminate_on_success: bool = True,
        reward_mode: str = "dense",
    ) -> None:
        """Create the env; `task` is a Meta-World name without the version suffix, e.g. "drawer-open".

        reward_mode "dense" is Meta-World's shaped reward (0-10 per step); "sparse" is 1 on the step that
        succeeds, else 0. Use "sparse" for RL with terminate_on_success: a positive dense reward per step
        would pay a policy for *not* ending the episode by succeeding."""
        self.env_name = f"{task}-v3"
        if self.env_name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"unknown Meta-World task '{task}'. Known v3 tasks: "
                f"{', '.join(sorted(n.removesuffix('-v3') for n in ALL_V3_ENVIRONMENTS))}"
            )
        if obs_mode not in ("state", "pixels", "both"):
            raise ValueError(f"obs_mode must be 'state', 'pixels' or 'both', got {obs_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if task_sampling not in ("mt1", "seeded"):
            raise ValueError(f"task_sampling must be 'mt1' or 'seeded', got {task_sampling!r}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if reward_mode not in ("dense", "sparse"):
            raise ValueError(f"reward_mode must be 'dense' or 'sparse', got {reward_mode!r}")
        self.image_size = parse_image_size(image_size, "image_size")
        self.render_size = parse_image_size(render_size, "render_size")
        self.cameras = tuple(cameras) if obs_mode != "state" else ()
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; choose from {sorted(CAMERAS)}")
        if obs_mode != "state" and not self.cameras:
            raise ValueError(f"obs_mode={obs_mode!r} needs at least one camera; pass cameras=('corner',)")

        self.task = task
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.language = INSTRUCTIONS.get(task, task.replace("-", " "))
        self.max_episode_steps = max_episode_steps
        self.task_sampling = task_sampling
        self.terminate_on_success = terminate_on_success
        self.reward_mode = reward_mode

        self._mw = ALL_V3_ENVIRONMENTS[self.env_name]()
        # Our own step limit replaces Meta-World's; its env refuses to step past max_path_length.
        self._mw.max_path_length = max_episode_steps
        self._configured = False  # MT1 tasks are built at the first reset: ~2 s, too slow for construction
        self._task_rng: np.random.Generator | None = None
        self._task_index = -1
        self._steps = 0
        self._raw_obs = np.zeros(39, dtype=np.float64)

        self._renderers: list[mujoco.Renderer] = []
        weakref.finalize(self, _close_renderers, self._renderers)
        self._cam_renderer: mujoco.Renderer | None = None
        self._video_renderer: mujoco.Renderer | None = None
        if self.cameras:
            self._cam_renderer = self._new_renderer(self.image_size)

        obs_spaces: dict[str, spaces.Space] = {}
        if obs_mode in ("state", "both"):
            obs_spaces["state"] = spaces.Box(-np.inf, np.inf, shape=(39,), dtype=np.float32)
        for cam in self.cameras:
            obs_spaces[f"images/{cam}"] = spaces.Box(0, 255, shape=(*self.image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)

    # ----------------------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Select the task from the seed (see the module docstring) and reset to its initial state."""
        super().reset(seed=seed)
        if seed is not None:
            self._task_rng = np.random.default_rng(seed)
            task_seed = int(seed)
        else:
            # Unseeded resets continue a sequence fixed by the last seed (or by OS entropy if never seeded).
            if self._task_rng is None:
                self._task_rng = np.random.default_rng()
            task_seed = int(self._task_rng.integers(2**31 - 1))
        self._select_task(task_seed)
        raw, _ = self._mw.reset()
        if self.task_sampling == "seeded":
            self._mw._freeze_rand_vec = True  # keep what this reset drew (Meta-World re-draws otherwise)
        self._raw_obs = raw
        self._steps = 0
        return self._observation(), self._info(False, {})

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply a 4-D action (xyz hand displacement, gripper effort), each in [-1, 1]."""
        if not self._configured:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"Meta-World actions have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        raw, reward, _, _, mw_info = self._mw.step(np.clip(action, -1.0, 1.0))
        self._raw_obs = raw
        self._steps += 1
        success = bool(mw_info.get("success", False))
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps and not terminated
        if self.reward_mode == "sparse":
            reward = float(success)
        return self._observation(), float(reward), terminated, truncated, self._info(success, mw_info)

    @property
    def reward_bounds(self) -> tuple[float, float]:
        """Per-step reward range: 0-10 for Meta-World's shaped reward, 0/1 for "sparse"."""
        return (0.0, 1.0) if self.reward_mode == "sparse" else (0.0, 10.0)

    def render(self) -> np.ndarray | None:
        """The first camera (or "corner") at `render_size`, for videos; None unless render_mode='rgb_array'."""
        if self.render_mode != "rgb_array":
            return None
        if self._video_renderer is None:
            self._video_renderer = self._new_renderer(self.render_size)
        return self._render_camera(self._video_renderer, self.cameras[0] if self.cameras else "corner")

    def close(self) -> None:
        """Release the GL contexts and the simulator."""
        _close_renderers(self._renderers)
        self._cam_renderer = self._video_renderer = None
        self._mw.close()

    # ---------------------------------------------------------------------------------- for experts
    @property
    def last_state(self) -> np.ndarray:
        """The latest raw Meta-World observation (float64, 39-D), whatever the obs_mode."""
        return self._raw_obs

    @property
    def task_index(self) -> int:
        """Index of the current MT1 training task (-1 with task_sampling='seeded')."""
        return self._task_index

    # ------------------------------------------------------------------------------------- internals
    def _select_task(self, task_seed: int) -> None:
        tasks = mt1_train_tasks(self.env_name)
        if not self._configured:
            # set_task also switches the env to the MT1 observation (goal visible), which experts need.
            self._mw.set_task(tasks[0])
            self._configured = True
        if self.task_sampling == "mt1":
            self._task_index = task_seed % len(tasks)
            self._mw.set_task(tasks[self._task_index])
        else:
            # Meta-World's own seeded sampling: the env draws (and re-draws until valid) its object and
            # goal positions from np_random during the coming reset, which then freezes what it drew.
            self._task_index = -1
            self._mw._freeze_rand_vec = False
            self._mw.seeded_rand_vec = True
            self._mw.seed(task_seed)

    def _observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.obs_mode in ("state", "both"):
            obs["state"] = self._raw_obs.astype(np.float32)
        if self._cam_renderer is not None:
            for cam in self.cameras:
                obs[f"images/{cam}"] = self._render_camera(self._cam_renderer, cam)
        return obs

    def _info(self, success: bool, mw_info: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {k: float(v) for k, v in mw_info.items() if k != "success"}
        info.update(
            success=success, score=float(success), language=self.language, task_index=self._task_index
        )
        return info

    def _new_renderer(self, size: tuple[int, int]) -> mujoco.Renderer:
        model = self._mw.model
        # Multisampling dominates software-rendering cost; it is read when the GL context is created.
        model.vis.quality.offsamples = 0
        model.vis.global_.offheight = max(model.vis.global_.offheight, size[0])
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size[1])
        try:
            renderer = mujoco.Renderer(model, height=size[0], width=size[1])
        except mujoco.FatalError as e:
            raise RuntimeError(
                f"offscreen rendering failed ({e}). MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}; set "
                "MUJOCO_GL=egl (or osmesa) before anything imports mujoco, or use obs_mode='state'"
            ) from e
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._renderers.append(renderer)
        global _exit_hook_registered
        if not _exit_hook_registered:
            atexit.register(_close_all_at_exit)
            _exit_hook_registered = True
        _LIVE_ENVS.add(self)
        return renderer

    def _render_camera(self, renderer: mujoco.Renderer, cam: str) -> np.ndarray:
        mj_name, turn = CAMERAS[cam]
        renderer.update_scene(self._mw.data, camera=mj_name)
        img = renderer.render()
        return np.ascontiguousarray(img[::-1, ::-1]) if turn else img


class MetaWorldExpert:
    """Meta-World's scripted policy for the env's task, plus seeded Gaussian action noise.

    The policy reads the raw state through `env.unwrapped.last_state`, so it works in every obs_mode.
    The noise (std `noise_std` on all four action dims, clipped to the action bounds) makes demos vary
    between episodes while leaving the scripted policies' success rates intact at the default level.
    """

    def __init__(self, env: gym.Env, noise_std: float = 0.1) -> None:
        base = env.unwrapped
        if not isinstance(base, MetaWorldEnv):
            raise TypeError(f"MetaWorldExpert needs a MetaWorldEnv, got {type(base).__name__}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.env = base
        self.noise_std = noise_std
        self.policy = ENV_POLICY_MAP[base.env_name]()
        self._rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        """Reseed the action noise (None draws fresh entropy)."""
        self._rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        """Action for the current step; `obs` and `info` are unused, the policy reads the raw state."""
        action = np.asarray(self.policy.get_action(self.env.last_state), dtype=np.float64)
        if self.noise_std > 0:
            action = action + self._rng.normal(0.0, self.noise_std, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_metaworld_env(task: str, **kwargs: Any) -> MetaWorldEnv:
    """Factory used by the registry: `make_env("metaworld_drawer-open", image_size=(96, 96))`."""
    return MetaWorldEnv(task, **kwargs)


def _register_all() -> None:
    for task, instruction in INSTRUCTIONS.items():
        register_task(
            TaskSpec(
                name=f"metaworld_{task}",
                make_env=functools.partial(make_metaworld_env, task),
                make_expert=MetaWorldExpert,
                max_episode_steps=MAX_EPISODE_STEPS,
                fps=FPS,
                description=f"Meta-World v3 {task}: {instruction} (Sawyer, MT1 task per seed).",
            )
        )


_register_all()

"""Offscreen rendering of the embedded scene's cameras (colour and metric depth), kept cheap.

Set MUJOCO_GL=egl (or osmesa) before importing mujoco on a headless machine. Frames come back upright
(mujoco.Renderer flips the OpenGL buffer).
"""

from __future__ import annotations

import mujoco
import numpy as np

CAMERAS: tuple[str, ...] = ("front", "wrist")


def camera_intrinsics(model: mujoco.MjModel, camera: str, height: int, width: int) -> np.ndarray:
    """3x3 pinhole matrix K (pixels) of a MuJoCo camera rendered at (height, width)."""
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        raise KeyError(f"no camera '{camera}' in the scene; cameras: {', '.join(CAMERAS)}")
    # MuJoCo's fovy is the vertical field of view; pixels are square.
    f = 0.5 * height / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def camera_geometry(model: mujoco.MjModel, data: mujoco.MjData, camera: str, height: int,
                    width: int) -> dict[str, np.ndarray | float]:
    """Intrinsics and extrinsics of a camera for back-projecting its depth into the world (= robot base) frame.

    OpenCV conventions (what a calibrated RealSense gives): K with pixel centres at integer coordinates
    (cx = (W - 1) / 2), and `base_from_camera` 4x4 with camera axes x right, y down, z forward. The arm's
    base sits at the world origin, so world and base frames coincide. Read at the current state of `data`
    (the wrist camera moves with the arm). depth_scale: metres per unit of `SceneRenderer.depth_mm`.
    """
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        raise KeyError(f"no camera '{camera}' in the scene; cameras: {', '.join(CAMERAS)}")
    f = 0.5 * height / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2.0)
    k = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    # MuJoCo cameras look along -z with y up: flip y and z to get OpenCV axes.
    rot = data.cam_xmat[cam_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = data.cam_xpos[cam_id]
    return {"intrinsics": k, "base_from_camera": t, "depth_scale": 0.001}


class SceneRenderer:
    """Renders named cameras of a model at one resolution; no shadows, reflections or skybox."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int) -> None:
        if height > model.vis.global_.offheight or width > model.vis.global_.offwidth:
            raise ValueError(
                f"image size {height}x{width} exceeds the offscreen buffer "
                f"{model.vis.global_.offheight}x{model.vis.global_.offwidth} of the scene"
            )
        self.height, self.width = height, width
        self._renderer = mujoco.Renderer(model, height, width)
        flags = self._renderer.scene.flags
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
            mujoco.mjtRndFlag.mjRND_FOG,
        ):
            flags[flag] = False
        self._depth_on = False

    def update(self, data: mujoco.MjData, camera: str) -> None:
        """Copy the geometry of `data` seen from `camera` into the renderer (cheap; needs the lock)."""
        self._renderer.update_scene(data, camera=camera)

    def color(self) -> np.ndarray:
        """Render the last updated scene as uint8 RGB [H, W, 3]."""
        if self._depth_on:
            self._renderer.disable_depth_rendering()
            self._depth_on = False
        return self._renderer.render().copy()

    def depth_mm(self) -> np.ndarray:
        """Render the last updated scene as uint16 depth in millimetres [H, W] (0 beyond 65 m)."""
        if not self._depth_on:
            self._renderer.enable_depth_rendering()
            self._depth_on = True
        depth_m = self._renderer.render()
        return np.clip(np.round(depth_m * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Colour image of `camera` for the state in `data`."""
        self.update(data, camera)
        return self.color()

    def close(self) -> None:
        """Free the GL context now (not at interpreter exit, when EGL may already be gone)."""
        self._renderer.close()

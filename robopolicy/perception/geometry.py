"""Pinhole camera geometry and depth back-projection into the robot's base frame.

Conventions are OpenCV's (and RealSense's): camera axes x right, y down, z forward along the optical axis;
pixel (u, v) has its centre at integer coordinates, so x = (u - cx) * z / fx; depth is the planar
distance along z (what MuJoCo's depth renderer and RealSense's depth stream both give).
Extrinsics are `base_from_camera`, a 4x4 rigid transform taking camera-frame points to the base frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# OpenGL / MuJoCo cameras look along -z with y up; OpenCV cameras look along +z with y down.
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraGeometry:
    """One camera's intrinsics K (3x3, pixels) and extrinsics base_from_camera (4x4, OpenCV axes)."""

    intrinsics: np.ndarray
    base_from_camera: np.ndarray
    depth_scale: float = 0.001  # metres per depth unit (uint16 millimetres by DESIGN.md's convention)

    def __post_init__(self) -> None:
        k = np.asarray(self.intrinsics, dtype=np.float64)
        t = np.asarray(self.base_from_camera, dtype=np.float64)
        if k.shape != (3, 3) or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"intrinsics must be a 3x3 pinhole matrix with positive focal lengths, got {k.tolist()}")
        if t.shape != (4, 4) or not np.allclose(t[3], [0, 0, 0, 1]):
            raise ValueError(f"base_from_camera must be a 4x4 homogeneous transform, got shape {t.shape}")
        r = t[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
            raise ValueError("base_from_camera's rotation is not orthonormal and right-handed; "
                             "check the extrinsic calibration (OpenCV axes: x right, y down, z forward)")
        if not self.depth_scale > 0:
            raise ValueError(f"depth_scale must be > 0 (metres per depth unit), got {self.depth_scale}")
        object.__setattr__(self, "intrinsics", k)
        object.__setattr__(self, "base_from_camera", t)

    @staticmethod
    def from_pose(intrinsics: np.ndarray, position: np.ndarray, rotation: np.ndarray,
                  depth_scale: float = 0.001) -> CameraGeometry:
        """From a camera position and a base_from_camera rotation matrix (OpenCV axes)."""
        t = np.eye(4)
        t[:3, :3] = np.asarray(rotation, dtype=np.float64)
        t[:3, 3] = np.asarray(position, dtype=np.float64)
        return CameraGeometry(np.asarray(intrinsics), t, depth_scale)


def opencv_from_opengl(rotation_gl: np.ndarray) -> np.ndarray:
    """base_from_camera rotation of an OpenGL/MuJoCo camera (-z forward, y up) in OpenCV axes."""
    return np.asarray(rotation_gl, dtype=np.float64) @ _GL_TO_CV


def depth_to_points(depth: np.ndarray, camera: CameraGeometry, rgb: np.ndarray | None = None,
                    min_depth_m: float = 1e-3, max_depth_m: float = np.inf) -> np.ndarray:
    """Back-project a depth image [H, W] into base-frame points (M, 3), or (M, 6) with colour in [0, 1].

    Pixels with depth outside [min_depth_m, max_depth_m] (0 = no return) are dropped. Points keep the
    image's row-major pixel order, so the result is a deterministic function of the frame.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if np.issubdtype(depth.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(depth)))
        if bad:  # NaN would silently fall out of the depth range test below: say what the driver must do
            raise ValueError(f"depth has {bad} non-finite values (NaN / inf); mark pixels without a measurement "
                             "with 0 (the uint16 millimetre convention of Frame.depth)")
    h, w = depth.shape
    if rgb is not None and np.shape(rgb) != (h, w, 3):
        raise ValueError(f"rgb must be [H, W, 3] aligned with the depth image {depth.shape}, got {np.shape(rgb)}")
    z = depth.astype(np.float32) * np.float32(camera.depth_scale)
    valid = (z >= min_depth_m) & (z <= max_depth_m)
    v, u = np.nonzero(valid)
    z = z[v, u]
    k = camera.intrinsics
    x = (u.astype(np.float32) - np.float32(k[0, 2])) * z / np.float32(k[0, 0])
    y = (v.astype(np.float32) - np.float32(k[1, 2])) * z / np.float32(k[1, 1])
    cam = np.stack([x, y, z], axis=1)
    r = camera.base_from_camera[:3, :3].astype(np.float32)
    p = camera.base_from_camera[:3, 3].astype(np.float32)
    points = cam @ r.T + p
    if rgb is None:
        return points.astype(np.float32, copy=False)
    colour = np.asarray(rgb)[v, u].astype(np.float32) / np.float32(255.0)
    return np.concatenate([points, colour], axis=1).astype(np.float32, copy=False)

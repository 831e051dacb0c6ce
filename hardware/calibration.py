"""Extrinsic camera calibration from config: `base_from_camera`, camera frame -> robot base frame.

A hand-eye calibration (e.g. easy_handeye, MoveIt's calibration, OpenCV's `calibrateHandEye`) gives the pose
of the camera in the robot's base frame. Configs may write it in either of two forms:

    base_from_camera: [[r00, r01, r02, x], [r10, r11, r12, y], [r20, r21, r22, z], [0, 0, 0, 1]]
    base_from_camera: {position: [x, y, z], quaternion: [w, x, y, z]}        # this project's order (as ArmState)
    base_from_camera: {position: [x, y, z], quaternion_xyzw: [x, y, z, w]}   # ROS / tf / scipy order

Positions are metres. The camera axes are OpenCV's (and RealSense's): x right, y down, z forward along the
optical axis; a calibration done against an OpenGL-style camera frame (-z forward, y up) must be converted
first. The quaternion order has to be named because the two orders are both common and silently confusing
them gives a plausible but wrong rotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_QUAT_KEYS = ("quaternion", "quaternion_xyzw")


def quaternion_matrix(wxyz: Any) -> np.ndarray:
    """The 3x3 rotation of a unit quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def parse_base_from_camera(value: Any, where: str = "base_from_camera") -> np.ndarray | None:
    """A validated 4x4 float64 base_from_camera from one of the config forms above (None stays None).

    Raises ValueError naming `where`, the accepted forms and what is wrong (shape, non-unit quaternion,
    rotation that is not orthonormal and right-handed, non-finite values).
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        t = _from_pose(dict(value), where)
    else:
        t = np.asarray(value, dtype=np.float64)
        if t.shape != (4, 4):
            raise ValueError(f"{where} must be a 4x4 matrix or {{position: [x, y, z], quaternion: [w, x, y, z]}}"
                             f" (or quaternion_xyzw), got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{where} has non-finite values: {t.tolist()}")
    if not np.allclose(t[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{where}: the last row of a homogeneous transform is [0, 0, 0, 1], got {t[3].tolist()}")
    r = t[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise ValueError(f"{where}: the rotation is not orthonormal and right-handed (det {np.linalg.det(r):.4f});"
                         " check the calibration output (a transposed matrix, or millimetres, is a usual cause)")
    return t


def _from_pose(pose: dict[str, Any], where: str) -> np.ndarray:
    given = [k for k in _QUAT_KEYS if k in pose]
    unknown = sorted(set(pose) - {"position", *_QUAT_KEYS})
    if unknown or "position" not in pose or len(given) != 1:
        raise ValueError(f"{where} as a pose needs `position` [x, y, z] (m) and exactly one of `quaternion` "
                         f"[w, x, y, z] or `quaternion_xyzw` [x, y, z, w]; got keys {sorted(pose)}")
    pos = np.asarray(pose["position"], dtype=np.float64)
    q = np.asarray(pose[given[0]], dtype=np.float64)
    if pos.shape != (3,) or q.shape != (4,):
        raise ValueError(f"{where}: position must have 3 values and {given[0]} 4, got {pos.shape} and {q.shape}")
    if given[0] == "quaternion_xyzw":
        q = q[[3, 0, 1, 2]]
    norm = float(np.linalg.norm(q))
    # A calibration prints unit quaternions to a few decimals; far from 1 means a wrong field was pasted.
    if not np.isfinite(norm) or abs(norm - 1.0) > 1e-2:
        raise ValueError(f"{where}: {given[0]} {q.tolist()} is not a unit quaternion (norm {norm:.4f})")
    t = np.eye(4)
    t[:3, :3] = quaternion_matrix(q / norm)
    t[:3, 3] = pos
    return t

"""Rotation conversions shared by the drivers. Quaternions are (w, x, y, z), unit norm, w >= 0 on output.

- rotation vector (axis * angle, rad): Universal Robots' TCP pose orientation;
- roll / pitch / yaw: UFACTORY xArm's, fixed-axis X-Y-Z (R = Rz(yaw) @ Ry(pitch) @ Rx(roll)).
"""

from __future__ import annotations

import numpy as np


def _canon(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if n < 1e-12:
        raise ValueError("quaternion has zero norm")
    q = q / n
    return -q if q[0] < 0 else q


def quat_from_rotvec(rv: np.ndarray) -> np.ndarray:
    rv = np.asarray(rv, dtype=np.float64)
    angle = float(np.linalg.norm(rv))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    axis = rv / angle
    return _canon(np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis]))


def rotvec_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = _canon(q)
    s = np.sqrt(x * x + y * y + z * z)
    if s < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, w)  # in [0, pi] because w >= 0
    return np.array([x, y, z]) / s * angle


def quat_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return _canon(
        np.array(
            [
                cr * cp * cy + sr * sp * sy,
                sr * cp * cy - cr * sp * sy,
                cr * sp * cy + sr * cp * sy,
                cr * cp * sy - sr * sp * cy,
            ]
        )
    )


def rpy_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = _canon(q)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = _canon(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def quat_angle(q1: np.ndarray, q2: np.ndarray) -> float:
    """Angle (rad) of the rotation between two orientations."""
    d = abs(float(np.dot(_canon(q1), _canon(q2))))
    return 2.0 * float(np.arccos(min(1.0, d)))


def slerp(q1: np.ndarray, q2: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from q1 (t=0) to q2 (t=1), along the shorter arc."""
    a, b = _canon(q1), _canon(q2)
    d = float(np.dot(a, b))
    if d < 0:
        b, d = -b, -d
    if d > 0.9995:
        return _canon(a + t * (b - a))
    th = np.arccos(d)
    return _canon((np.sin((1 - t) * th) * a + np.sin(t * th) * b) / np.sin(th))

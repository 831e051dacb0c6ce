"""Quaternion helpers (w, x, y, z), numpy only, so the collection core does not import a simulator."""

from __future__ import annotations

import numpy as np


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q)


def quat_from_rotvec(v: np.ndarray) -> np.ndarray:
    """Unit quaternion of the rotation vector `v` (axis * angle, rad)."""
    v = np.asarray(v, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([1.0, *(0.5 * v)]) / np.sqrt(1.0 + 0.25 * float(v @ v))
    axis = v / angle
    return np.array([np.cos(angle / 2), *(np.sin(angle / 2) * axis)])


def rotvec_from_quat(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle in [0, pi]) of a unit quaternion."""
    q = quat_normalize(q)
    if q[0] < 0:
        q = -q
    s = float(np.linalg.norm(q[1:]))
    if s < 1e-12:
        return 2.0 * q[1:]
    angle = 2.0 * np.arctan2(s, q[0])
    return q[1:] / s * angle


def quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) between two orientations."""
    d = abs(float(np.dot(quat_normalize(a), quat_normalize(b))))
    return 2.0 * float(np.arccos(min(1.0, d)))

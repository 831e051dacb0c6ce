"""Geometry of the PushT block for the expert: its outline, push contacts, pose error, approach paths.

Everything here is in gym-pusht's frames. The block's local frame has its origin on the top edge of the
T's bar: bar = [-60, 60] x [0, 30], stem = [-15, 15] x [30, 120]; a local point p is at
R(angle) @ p + (x, y) in the world (pymunk's `Body.local_to_world`). The agent is a disc of radius 15.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.ops
from shapely.geometry import LineString, Polygon

AGENT_RADIUS = 15.0
# Corners of the T's outline (local frame), counter-clockwise in a y-down image.
T_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], dtype=np.float64
)
T_CONVEX_CORNERS = (0, 1, 2, 4, 5, 7)  # indices into T_OUTLINE; 3 and 6 are the concave corners
# Points whose distance to their goal positions measures the pose error: the outline corners and points
# along the bar and the stem, so that translation and rotation are weighted as the area overlap weights them.
POSE_POINTS = np.concatenate(
    [T_OUTLINE, np.array([[0, 15], [-40, 15], [40, 15], [0, 60], [0, 100]], dtype=np.float64)]
)
WORKSPACE = (12.0, 500.0)  # where the agent's centre may be sent (the board is 512 px, walls at 5 and 506)


def rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def to_world(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Local block points [N, 2] -> world points for a block pose (x, y, angle)."""
    return points @ rotation(pose[2]).T + pose[:2]


def pose_error(poses: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """RMS distance (px) between POSE_POINTS at `poses` [..., 3] and at `goal` (3,)."""
    poses = np.asarray(poses, dtype=np.float64)
    goal_pts = to_world(POSE_POINTS, goal)  # [P, 2]
    c, s = np.cos(poses[..., 2]), np.sin(poses[..., 2])
    px, py = POSE_POINTS[:, 0], POSE_POINTS[:, 1]
    wx = c[..., None] * px - s[..., None] * py + poses[..., 0:1]
    wy = s[..., None] * px + c[..., None] * py + poses[..., 1:2]
    d2 = (wx - goal_pts[:, 0]) ** 2 + (wy - goal_pts[:, 1]) ** 2
    return np.sqrt(d2.mean(axis=-1))


@dataclass(frozen=True)
class Contact:
    """A push: the agent starts at `local_start` (block frame) and moves along `local_dir`."""

    local_start: np.ndarray
    local_dir: np.ndarray
    name: str


def make_contacts(gap: float = 4.0, oblique_deg: float = 0.0) -> list[Contact]:
    """Push contacts around the T: points along every outline edge (pushing along the inward normal, and
    optionally tilted by +-oblique_deg so the agent slides along the edge) and at every convex corner.

    The agent starts `gap` px away from the block. Points whose start would be nearer the other edge of a
    concave corner than the gap are left out, because the disc would touch that edge first.
    """
    r = AGENT_RADIUS + gap
    contacts: list[Contact] = []
    n = len(T_OUTLINE)
    for i in range(n):
        a, b = T_OUTLINE[i], T_OUTLINE[(i + 1) % n]
        edge = b - a
        length = float(np.linalg.norm(edge))
        tangent = edge / length
        normal = np.array([tangent[1], -tangent[0]])  # outward for this vertex order (checked by tests)
        lo, hi = 0.0, length
        if (i + 1) % n in (3, 6):
            hi -= r
        if i in (3, 6):
            lo += r
        usable = hi - lo
        k = max(2, int(round(usable / 20.0)) + 1)
        for j, t in enumerate(np.linspace(lo + 0.1 * usable, hi - 0.1 * usable, k)):
            point = a + tangent * t
            dirs = [-normal]
            if oblique_deg > 0:
                for sign in (-1.0, 1.0):
                    dirs.append(rotation(sign * math.radians(oblique_deg)) @ -normal)
            for m, d in enumerate(dirs):
                contacts.append(Contact(point + normal * r, d, f"e{i}p{j}d{m}"))
    for i in T_CONVEX_CORNERS:
        prev_e = T_OUTLINE[i] - T_OUTLINE[i - 1]
        next_e = T_OUTLINE[(i + 1) % n] - T_OUTLINE[i]
        n1 = np.array([prev_e[1], -prev_e[0]]) / np.linalg.norm(prev_e)
        n2 = np.array([next_e[1], -next_e[0]]) / np.linalg.norm(next_e)
        bis = (n1 + n2) / np.linalg.norm(n1 + n2)
        contacts.append(Contact(T_OUTLINE[i] + bis * r, -bis, f"c{i}"))
    return contacts


def block_polygon(pose: np.ndarray) -> Polygon:
    """The T's outline as a shapely polygon at a world pose."""
    return Polygon(to_world(T_OUTLINE, pose))


def _segment_clear(a: np.ndarray, b: np.ndarray, poly: Polygon, clearance: float) -> bool:
    if np.allclose(a, b):
        return poly.distance(shapely.Point(a)) >= clearance
    return LineString([a, b]).distance(poly) >= clearance


def escape_point(p: np.ndarray, poly: Polygon, clearance: float) -> np.ndarray:
    """`p` itself if it is `clearance` away from the block, else the point straight away from the block's
    nearest point at that distance (where the agent goes first after a push, before travelling around)."""
    dist = poly.distance(shapely.Point(p))
    if dist >= clearance:
        return p
    nearest = np.array(shapely.ops.nearest_points(poly.exterior, shapely.Point(p))[0].coords[0])
    away = p - nearest
    norm = float(np.linalg.norm(away))
    if norm < 1e-6 or poly.contains(shapely.Point(p)):
        away = p - np.array(poly.centroid.coords[0])
        norm = float(np.linalg.norm(away)) + 1e-9
    return nearest + away / norm * (clearance + 1.0)


def plan_path(
    start: np.ndarray,
    goal: np.ndarray,
    pose: np.ndarray,
    clearance: float,
    node_noise: np.ndarray | None = None,
) -> list[np.ndarray] | None:
    """Shortest collision-free way for the agent from `start` to `goal` around the block at `pose`.

    A visibility graph over points off the T's convex corners (pushed out along the corner bisector) and the
    two end points; a segment is free when it stays `clearance` from the block. `node_noise` (one factor per
    corner, near 1) lengthens or shortens the ways past each corner, which is how the expert picks a side
    to go around at random. Returns the waypoints after `start` (ending with `goal`), or None if blocked.
    """
    poly = block_polygon(pose)
    raw_start = np.asarray(start, dtype=np.float64)
    start = escape_point(raw_start, poly, clearance)
    lo, hi = WORKSPACE
    nodes = [start]
    offset = clearance * 1.45
    n = len(T_OUTLINE)
    for i in T_CONVEX_CORNERS:
        prev_e = T_OUTLINE[i] - T_OUTLINE[i - 1]
        next_e = T_OUTLINE[(i + 1) % n] - T_OUTLINE[i]
        n1 = np.array([prev_e[1], -prev_e[0]]) / np.linalg.norm(prev_e)
        n2 = np.array([next_e[1], -next_e[0]]) / np.linalg.norm(next_e)
        bis = (n1 + n2) / np.linalg.norm(n1 + n2)
        p = to_world((T_OUTLINE[i] + bis * offset)[None], pose)[0]
        if lo <= p[0] <= hi and lo <= p[1] <= hi:
            nodes.append(p)
        else:
            nodes.append(None)
    nodes.append(np.asarray(goal, dtype=np.float64))
    weights = [1.0] * len(nodes)
    if node_noise is not None:
        for k in range(len(T_CONVEX_CORNERS)):
            weights[k + 1] = float(node_noise[k])
    goal_idx = len(nodes) - 1
    # Dijkstra; edges are checked lazily because most searches end after a few expansions.
    best = {0: 0.0}
    parent: dict[int, int] = {}
    heap = [(0.0, 0)]
    done: set[int] = set()
    while heap:
        cost, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u == goal_idx:
            break
        for v in range(len(nodes)):
            if v in done or nodes[v] is None:
                continue
            length = float(np.linalg.norm(nodes[v] - nodes[u])) * 0.5 * (weights[u] + weights[v])
            new = cost + length
            if new >= best.get(v, math.inf):
                continue
            if not _segment_clear(nodes[u], nodes[v], poly, clearance):
                continue
            best[v] = new
            parent[v] = u
            heapq.heappush(heap, (new, v))
    if goal_idx not in done:
        return None
    path = []
    v = goal_idx
    while v != 0:
        path.append(nodes[v])
        v = parent[v]
    path.reverse()
    if not np.allclose(start, raw_start):
        path.insert(0, start)
    return path

"""Depth -> base-frame points on synthetic frames of a known plane and box; workspace crop; fixed-count sampling."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.perception import (
    CameraGeometry,
    PointCloudConfig,
    crop_to_workspace,
    depth_to_points,
    farthest_point_sample,
    pointcloud_from_frame,
    sample_points,
    voxel_downsample,
)

H, W = 60, 80
K = np.array([[70.0, 0.0, (W - 1) / 2], [0.0, 70.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
BOX_LO, BOX_HI = np.array([0.45, -0.08, 0.0]), np.array([0.60, 0.07, 0.12])


def _look_at(pos, target) -> CameraGeometry:
    """A camera at `pos` looking at `target` (OpenCV axes: z forward, y down, image-up ~ +z)."""
    z = np.asarray(target, float) - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:  # looking straight down: image-up along +x
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return CameraGeometry.from_pose(K, pos, np.stack([x, y, z], axis=1))


def _render_depth(cam: CameraGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Exact depth (mm, uint16) of the plane z=0 and the box, by ray casting; also the true hit points."""
    v, u = np.mgrid[0:H, 0:W]
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    r, p = cam.base_from_camera[:3, :3], cam.base_from_camera[:3, 3]
    d = d_cam @ r.T  # world direction per pixel, scaled so that camera-z = 1: ray parameter = depth
    t_plane = -p[2] / d[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):  # slab method for the box
        t1, t2 = (BOX_LO - p) / d, (BOX_HI - p) / d
    t_near = np.minimum(t1, t2).max(-1)
    t_far = np.maximum(t1, t2).min(-1)
    hit_box = (t_near <= t_far) & (t_near > 0)
    t = np.where(hit_box, t_near, t_plane)
    depth_mm = np.round(t * 1000).astype(np.uint16)
    return depth_mm, p + d * (depth_mm[..., None] / 1000.0)


@pytest.mark.parametrize("pos", [(0.5, 0.0, 1.2), (1.1, 0.3, 0.8)])  # straight down, and oblique
def test_plane_and_box_back_project_to_base_frame(pos):
    cam = _look_at(np.array(pos), np.array([0.5, 0.0, 0.0]))
    depth, expected = _render_depth(cam)
    pts = depth_to_points(depth, cam)
    assert pts.shape == (H * W, 3) and pts.dtype == np.float32
    assert np.abs(pts - expected.reshape(-1, 3)).max() < 1e-4  # the exact inverse of the projection
    on_box = np.all((pts >= BOX_LO - 3e-3) & (pts <= BOX_HI + 3e-3), axis=1)
    assert 50 < on_box.sum() < H * W - 100  # the frame sees both
    assert np.abs(pts[~on_box, 2]).max() < 3e-3  # plane points are on z = 0 (1 mm depth steps)
    top = on_box & (pts[:, 2] > BOX_HI[2] - 3e-3)
    assert top.sum() > 20 and np.abs(pts[top, 2] - BOX_HI[2]).max() < 3e-3


def test_invalid_depth_dropped_and_colour_kept():
    cam = _look_at(np.array([0.5, 0.0, 1.2]), np.array([0.5, 0.0, 0.0]))
    depth, _ = _render_depth(cam)
    depth[:10] = 0  # no return
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 255
    pts = depth_to_points(depth, cam, rgb)
    assert pts.shape == ((H - 10) * W, 6)
    assert np.allclose(pts[:, 3:], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="aligned"):
        depth_to_points(depth, cam, rgb[:, :10])


def test_bad_geometry_is_an_error():
    with pytest.raises(ValueError, match="orthonormal"):
        CameraGeometry(K, np.diag([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="focal"):
        CameraGeometry(np.zeros((3, 3)), np.eye(4))


@pytest.mark.parametrize("sampler", ["fps", "fps_voxel", "random"])
def test_crop_and_sampling_keep_count_and_stay_in_box(sampler):
    cam = _look_at(np.array([1.1, 0.3, 0.8]), np.array([0.5, 0.0, 0.0]))
    depth, _ = _render_depth(cam)
    lo, hi = (0.40, -0.15, -0.005), (0.70, 0.15, 0.3)
    cfg = PointCloudConfig(cameras=("cam",), num_points=256, workspace_lower=lo, workspace_upper=hi,
                           sampler=sampler, voxel_size=0.01)
    pc = pointcloud_from_frame({"cam": depth}, {"cam": cam}, cfg)
    assert pc.shape == (256, 3) and pc.dtype == np.float32
    assert np.all(pc >= np.float32(lo)) and np.all(pc <= np.float32(hi))
    again = pointcloud_from_frame({"cam": depth}, {"cam": cam}, cfg)
    assert np.array_equal(pc, again)  # deterministic: same frame -> same points
    # a tiny box with fewer points than asked still gives the count (points repeat)
    small = PointCloudConfig(cameras=("cam",), num_points=256, workspace_lower=(0.5, -0.02, 0.1),
                             workspace_upper=(0.55, 0.02, 0.2), sampler=sampler)
    pc_small = pointcloud_from_frame({"cam": depth}, {"cam": cam}, small)
    assert pc_small.shape == (256, 3) and np.all(pc_small[:, 2] >= 0.1 - 1e-6)
    # an empty crop gives zeros of the right shape rather than stopping a robot
    empty = PointCloudConfig(cameras=("cam",), num_points=8, workspace_lower=(5, 5, 5), workspace_upper=(6, 6, 6))
    assert np.array_equal(pointcloud_from_frame({"cam": depth}, {"cam": cam}, empty), np.zeros((8, 3), np.float32))


def test_fps_spreads_points_better_than_random():
    rng = np.random.default_rng(0)
    # dense cluster + sparse outliers: FPS must reach the outliers, random mostly does not
    pts = np.concatenate([rng.normal(0, 0.01, (2000, 3)), rng.uniform(-1, 1, (20, 3))]).astype(np.float32)
    idx = farthest_point_sample(pts, 32)
    assert len(set(idx.tolist())) == 32
    assert (idx >= 2000).sum() >= 15
    cover = {m: np.linalg.norm(pts[:, None] - sample_points(pts, 32, m)[None], axis=-1).min(1).max()
             for m in ("fps", "fps_voxel", "random")}
    assert cover["fps"] < 0.6 * cover["random"] and cover["fps_voxel"] < 0.6 * cover["random"]


def test_voxel_downsample_one_point_per_cell():
    pts = np.array([[0.001, 0, 0], [0.002, 0, 0], [0.011, 0, 0], [0.0, 0.015, 0]], np.float32)
    assert voxel_downsample(pts, 0.01).tolist() == [0, 2, 3]
    assert crop_to_workspace(pts, (0, 0, 0), (0.005, 0.005, 0)).shape == (2, 3)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="sampler"):
        PointCloudConfig(sampler="poisson")
    with pytest.raises(ValueError, match="lower < upper"):
        PointCloudConfig(workspace_lower=(0, 0, 1), workspace_upper=(1, 1, 0))
    with pytest.raises(ValueError, match="workspace box"):
        pointcloud_from_frame({"front": np.zeros((4, 4), np.uint16)}, {}, PointCloudConfig())

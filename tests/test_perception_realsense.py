"""RealSense depth -> base-frame point cloud through the driver's camera_geometry (recording SDK fake)."""

from __future__ import annotations

import numpy as np
import pytest
from test_hw_cameras import H, W, make_fake_rs

from hardware.drivers.realsense import RealSenseCamera
from robopolicy.perception import CameraGeometry, PointCloudConfig, depth_to_points, pointcloud_from_frame


def test_realsense_frame_becomes_base_frame_points():
    # camera 0.8 m above the base origin looking straight down (OpenCV z forward = base -z)
    base_from_camera = np.array([[0, -1, 0, 0.4], [-1, 0, 0, 0.0], [0, 0, -1, 0.8], [0, 0, 0, 1]], float)
    cam = RealSenseCamera(serial="222", width=W, height=H, fps=30, rs_module=make_fake_rs(depth_scale=0.001),
                          base_from_camera=base_from_camera)
    cam.start()
    try:
        frame = cam.latest()
        geom = CameraGeometry(**cam.camera_geometry())
    finally:
        cam.stop()
    assert np.allclose(geom.intrinsics, [[600, 0, 31.5], [0, 601, 23.5], [0, 0, 1]])
    z = frame.depth.astype(float) / 1000.0  # the fake's depth is constant per frame
    pts = depth_to_points(frame.depth, geom)
    assert pts.shape == (H * W, 3)
    assert np.allclose(pts[:, 2], 0.8 - z.reshape(-1), atol=1e-5)  # a plane z_cam below the camera
    centre = pts[int(round(23.5)) * W + int(round(31.5))]
    assert np.allclose(centre[:2], [0.4, 0.0], atol=2e-3)  # the optical axis hits below the camera
    cfg = PointCloudConfig(cameras=("rs",), num_points=64, workspace_lower=(0.0, -1.0, -1.0),
                           workspace_upper=(0.4, 1.0, 1.0))
    pc = pointcloud_from_frame({"rs": frame.depth}, {"rs": geom}, cfg)
    assert pc.shape == (64, 3) and pc[:, 0].max() <= 0.4


def test_realsense_without_extrinsics_says_how_to_fix():
    cam = RealSenseCamera(serial="222", width=W, height=H, rs_module=make_fake_rs())
    cam.start()
    try:
        with pytest.raises(ValueError, match="base_from_camera"):
            cam.camera_geometry()
    finally:
        cam.stop()
    with pytest.raises(ValueError, match="4x4"):
        RealSenseCamera(base_from_camera=np.eye(3), rs_module=make_fake_rs())

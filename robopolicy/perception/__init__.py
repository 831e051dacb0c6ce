"""Perception: depth frames -> point clouds in the robot's base frame (DP3 / MP1-style observations).

- geometry.py: pinhole camera geometry (intrinsics, base-from-camera extrinsics) and back-projection.
- sampling.py: fixed-count downsampling (farthest-point sampling, its voxel fast path, random).
- pointcloud.py: `PointCloudConfig` and `pointcloud_from_frame`, the one function that recording,
  training and deployment call, so that every path builds identical point clouds from the same frame.
- env.py: a gymnasium wrapper adding the `pointcloud` key to an env's observations, and `make_env`.
- cameras.py: the same key from running cameras' frames (`CameraPointCloud`: the runtime's path; RealSense
  geometry from its intrinsics and the configured hand-eye calibration).
"""

from robopolicy.perception.geometry import CameraGeometry, depth_to_points, opencv_from_opengl
from robopolicy.perception.pointcloud import PointCloudConfig, crop_to_workspace, pointcloud_from_frame
from robopolicy.perception.sampling import SAMPLERS, farthest_point_sample, sample_points, voxel_downsample

__all__ = [
    "SAMPLERS",
    "CameraGeometry",
    "PointCloudConfig",
    "crop_to_workspace",
    "depth_to_points",
    "farthest_point_sample",
    "opencv_from_opengl",
    "pointcloud_from_frame",
    "sample_points",
    "voxel_downsample",
]

"""robosuite depth -> point cloud in the Panda's base frame: the Lift cube's points sit on the cube."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("robosuite")

from robopolicy.perception.env import camera_geometries, make_env  # noqa: E402
from robopolicy.perception.geometry import depth_to_points  # noqa: E402


@pytest.mark.slow  # robosuite's import and env build take ~1 min on the shared 2-core machine
def test_lift_pointcloud_lands_on_table_and_cube():
    env = make_env("robosuite_lift", obs_mode="both", image_size=(64, 64), cameras=["agentview"],
                   pointcloud={"cameras": ["agentview"], "num_points": 256})
    try:
        obs, _ = env.reset(seed=0)
        pc = obs["pointcloud"]
        assert pc.shape == (256, 3) and "depth/agentview" in obs
        rs = env.unwrapped.rs
        model, data = env.unwrapped._mj()
        base_from_world = env.unwrapped._base_from_world()
        cube_world = np.append(data.body("cube_main").xpos, 1.0)
        cube = (base_from_world @ cube_world)[:3]
        table = (base_from_world @ np.append(rs.table_offset, 1.0))[:3]
        assert np.sum(np.abs(pc[:, 2] - table[2]) < 5e-3) > 50  # the table top
        lo, hi = env.unwrapped.pointcloud_workspace
        assert np.all(pc >= np.float32(lo)) and np.all(pc <= np.float32(hi))
        full = depth_to_points(obs["depth/agentview"], camera_geometries(env, ("agentview",))["agentview"])
        near_cube = full[np.linalg.norm(full - cube, axis=1) < 0.035]
        assert len(near_cube) >= 3 and np.all(near_cube[:, 2] > table[2] + 5e-3)  # above the table: the cube
    finally:
        env.close()

"""The runtime's `pointcloud`: same tensors as the eval runner's, RealSense geometry, deploy wiring, bad input.

- Eval-runner path: the task's env_kwargs -> split_pointcloud_kwargs -> WorkerEnvFn(TaskEnvFn, wrapper), as
  PolicyAgent and the runner build it. Runtime path: the checkpoint config's env_kwargs -> the daemon's
  pointcloud_for_policy -> CameraPointCloud on the ObservationAssembler, fed the same frame by a camera,
  deferred through the T_o history to where the worker resolves it (pickled, as the process worker gets it).
- RealSense: the driver's intrinsics (recording SDK fake) + a hand-eye pose from config back-project a
  synthetic tilted table plane onto z = 0 in the base frame.
"""

from __future__ import annotations

import dataclasses
import pickle
import time

import numpy as np
import pytest
from camera_fakes import StaticCamera as FrameCamera
from test_hw_cameras import H, W, make_fake_rs

from hardware.arm import ArmState
from hardware.calibration import parse_base_from_camera
from hardware.camera import Frame
from hardware.camera_process import ProcessCamera
from hardware.drivers.realsense import RealSenseCamera
from hardware.drivers.synthetic import SyntheticCamera
from robopolicy.deploy.pointcloud import pointcloud_for_policy
from robopolicy.deploy.robot import RobotBundle, SpecMismatchError
from robopolicy.eval.envs import TaskEnvFn, WorkerEnvFn
from robopolicy.perception import CameraGeometry, depth_to_points
from robopolicy.perception.cameras import CameraPointCloud, geometry_of, runtime_pointcloud_config
from robopolicy.perception.env import split_pointcloud_kwargs
from robopolicy.runtime.observation import ObservationAssembler, ObservationHistory
from robopolicy.utils.deferred import Deferred, resolve_stacked

TASK = "embedded_push"


def _arm_state() -> ArmState:
    return ArmState(time.monotonic(), np.zeros(6), np.zeros(3), np.array([1.0, 0, 0, 0]), 0.0)


def _bundle(cameras, workspace=None) -> RobotBundle:
    return RobotBundle(None, list(cameras), None, None, "proprio", pointcloud_workspace=workspace)  # type: ignore


@pytest.mark.parametrize("pc", [{"num_points": 128, "color": True},
                                {"num_points": 96, "sampler": "random", "seed": 3}])
def test_eval_runner_and_runtime_give_identical_tensors(pc):
    env_kwargs = {"obs_mode": "pixels", "image_size": [64, 64], "cameras": ["front"], "pointcloud": pc}
    # eval runner: what PolicyAgent + the runner build in each worker from the task's env_kwargs
    sim_kwargs, wrapper = split_pointcloud_kwargs(env_kwargs)
    env = WorkerEnvFn(TaskEnvFn(TASK, sim_kwargs), wrapper).build()
    try:
        obs, _ = env.reset(seed=2)
        geometry = env.unwrapped.camera_geometry("front")
        workspace = env.unwrapped.pointcloud_workspace
    finally:
        env.close()
    frame = Frame(color=obs["images/front"], timestamp=0.0, index=0, depth=obs["depth/front"])
    cam = FrameCamera("front", frame, geometry)
    # runtime: the daemon reads the same env_kwargs from the checkpoint's config.yaml
    n, c = obs["pointcloud"].shape
    spec = {"obs_shapes": {"pointcloud": [n, c], "state": [14]}}
    builder = pointcloud_for_policy(spec, {"task": {"env_kwargs": env_kwargs}}, None, _bundle([cam], workspace), "ck")
    assert builder.cfg == env.cfg  # the wrapper's config, crop box included
    assembler = ObservationAssembler(None, [cam], pointcloud=builder, image_size=(32, 32))  # type: ignore[arg-type]
    got = assembler.assemble(time.monotonic(), _arm_state()).values
    assert isinstance(got["pointcloud"], Deferred) and not got["pointcloud"].built  # not built in the loop
    assert got["images/front"].shape == (32, 32, 3)
    # what the policy receives: the T_o history stacked by the loop (deferred), pickled to the process worker
    # and resolved there by _act; the thread worker and sync inference resolve the same object unpickled
    history = ObservationHistory(2)
    history.push(assembler.assemble(time.monotonic(), _arm_state()))
    stacked = history.stacked(["pointcloud"], defer=True)
    for policy_obs in (resolve_stacked(pickle.loads(pickle.dumps(stacked))), resolve_stacked(stacked)):
        pc = policy_obs["pointcloud"]
        assert pc.shape == (1, 2, n, c) and pc.dtype == obs["pointcloud"].dtype == np.float32
        assert np.array_equal(pc[0, 0], obs["pointcloud"]) and np.array_equal(pc[0, 1], obs["pointcloud"])
    assert np.array_equal(np.asarray(got["pointcloud"]), obs["pointcloud"])  # bit for bit, despite the resize
    lo, hi = np.float32(workspace[0]), np.float32(workspace[1])
    assert np.all(pc[..., :3] >= lo) and np.all(pc[..., :3] <= hi)


def _look_at(pos, target) -> np.ndarray:
    """base_from_camera rotation of a camera at `pos` looking at `target` (OpenCV axes)."""
    z = np.asarray(target, float) - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def _quat_wxyz(r: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(0.0, 1.0 + np.trace(r))) / 2.0
    return np.array([w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w)])


def test_realsense_intrinsics_and_calibrated_pose_put_a_plane_at_z0():
    pos, rot = np.array([0.2, -0.3, 0.7]), _look_at(np.array([0.2, -0.3, 0.7]), [0.5, 0.0, 0.0])
    q = _quat_wxyz(rot)
    pose = {"position": pos.tolist(), "quaternion": q.tolist()}
    ros = {"position": pos.tolist(), "quaternion_xyzw": [*q[1:].tolist(), float(q[0])]}
    assert np.allclose(parse_base_from_camera(pose), parse_base_from_camera(ros))
    cam = RealSenseCamera(serial="111", name="rs", width=W, height=H, rs_module=make_fake_rs(), base_from_camera=pose)
    cam.start()
    try:
        frame = cam.latest()
        geom = geometry_of(cam)
    finally:
        cam.stop()
    k = geom.intrinsics
    assert np.allclose(k, [[600, 0, 31.5], [0, 601, 23.5], [0, 0, 1]])  # the SDK's fx, fy, ppx, ppy
    assert cam.distortion == ("inverse_brown_conrady", [0.0] * 5)
    assert np.allclose(geom.base_from_camera[:3, :3], rot, atol=1e-9) and np.allclose(geom.base_from_camera[:3, 3], pos)
    # the table plane z = 0 as the camera sees it: exact ray hits, depth quantised to mm like the driver's
    v, u = np.mgrid[0:H, 0:W]
    ray = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones((H, W))], -1) @ rot.T
    depth = np.round(-pos[2] / ray[..., 2] * 1000.0).astype(np.uint16)
    expected = pos + ray * (depth[..., None] / 1000.0)
    pts = depth_to_points(depth, geom)
    assert np.abs(pts - expected.reshape(-1, 3)).max() < 1e-4
    assert np.abs(pts[:, 2]).max() < 2e-3  # on the table, up to the mm quantisation along an oblique ray
    centre = pts[int(round(k[1, 2])) * W + int(round(k[0, 2]))]
    assert np.linalg.norm(centre - [0.5, 0.0, 0.0]) < 5e-3  # the optical axis hits the point it looks at
    # the same through the runtime builder on the driver's frame with that depth
    cfg = runtime_pointcloud_config({"cameras": ["rs"], "num_points": 64, "color": True},
                                    ((0.0, -1.0, -0.01), (1.0, 1.0, 0.3)))
    builder = CameraPointCloud(cfg, [cam])
    pc = builder({"rs": dataclasses.replace(frame, depth=depth)})
    assert pc.shape == (64, 6) and np.abs(pc[:, 2]).max() < 2e-3


def test_process_camera_passes_the_driver_geometry_or_its_reason():
    cam = ProcessCamera(SyntheticCamera(name="syn", height=8, width=8, fps=50.0, depth=True))
    cam.start()
    try:
        with pytest.raises(ValueError, match="syn.*no camera geometry"):
            geometry_of(cam)
    finally:
        cam.stop()


def test_bad_frames_and_configs_say_what_to_fix():
    k = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    geom = {"intrinsics": k, "base_from_camera": np.eye(4), "depth_scale": 0.001}
    color = np.zeros((24, 32, 3), np.uint8)
    cfg = runtime_pointcloud_config({"cameras": ["wrist"], "num_points": 16}, ((-1, -1, 0), (1, 1, 2)))

    def build(frame, geometry=geom):
        cam = FrameCamera("wrist", frame, geometry)
        return CameraPointCloud(cfg, [cam]), cam

    with pytest.raises(ValueError, match="'wrist' gives no depth.*depth: true"):
        build(Frame(color, 0.0, 0))[0].check()
    with pytest.raises(ValueError, match="'wrist'.*not aligned"):
        build(Frame(color, 0.0, 0, np.ones((12, 16), np.uint16)))[0].check()
    bad = np.full((24, 32), 0.5, np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="uint16 millimetres.*1 NaN"):
        build(Frame(color, 0.0, 0, bad))[0].check()
    with pytest.raises(ValueError, match="non-finite"):
        depth_to_points(bad, CameraGeometry(k, np.eye(4)))
    with pytest.raises(ValueError, match="wrist.*no extrinsic calibration"):
        build(Frame(color, 0.0, 0, np.ones((24, 32), np.uint16)), None)[0].check()
    with pytest.raises(ValueError, match=r"not among the robot's cameras \['front'\]"):
        CameraPointCloud(cfg, [FrameCamera("front", Frame(color, 0.0, 0), geom)])
    with pytest.raises(ValueError, match="workspace_lower"):
        runtime_pointcloud_config({"cameras": ["wrist"]})
    with pytest.raises(ValueError, match="not a unit quaternion"):
        parse_base_from_camera({"position": [0, 0, 1], "quaternion": [1, 1, 0, 0]})
    with pytest.raises(ValueError, match="exactly one of"):
        parse_base_from_camera({"position": [0, 0, 1], "quaternion": [1, 0, 0, 0], "quaternion_xyzw": [0, 0, 0, 1]})
    with pytest.raises(ValueError, match="4x4"):
        parse_base_from_camera(np.eye(3))
    with pytest.raises(ValueError, match="orthonormal"):
        parse_base_from_camera(np.diag([1.0, 1.0, -1.0, 1.0]))
    # a RealSense without depth says so when asked for its geometry
    cam = RealSenseCamera(serial="111", width=W, height=H, depth=False, rs_module=make_fake_rs(),
                          base_from_camera=np.eye(4))
    cam.start()
    try:
        with pytest.raises(ValueError, match="streams no depth.*depth: true"):
            cam.camera_geometry()
    finally:
        cam.stop()


def test_deploy_refuses_a_pointcloud_policy_it_cannot_feed():
    k = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    geom = {"intrinsics": k, "base_from_camera": np.eye(4), "depth_scale": 0.001}
    frame = Frame(np.zeros((24, 32, 3), np.uint8), 0.0, 0, np.full((24, 32), 800, np.uint16))
    robot = _bundle([FrameCamera("front", frame, geom)], workspace=((-1, -1, 0), (1, 1, 2)))
    spec = {"obs_shapes": {"pointcloud": [64, 3], "state": [14]}}
    trained = {"task": {"env_kwargs": {"pointcloud": {"num_points": 64}}}}
    assert pointcloud_for_policy({"obs_shapes": {"state": [14]}}, trained, None, robot, "ck") is None
    assert pointcloud_for_policy(spec, trained, None, robot, "ck").shape == (64, 3)
    with pytest.raises(SpecMismatchError, match="records no point-cloud config"):
        pointcloud_for_policy(spec, {"task": {}}, None, robot, "ck")
    with pytest.raises(SpecMismatchError, match=r"shape \(64, 3\).*\(64, 6\)"):
        pointcloud_for_policy(spec, trained, {"color": True}, robot, "ck")
    no_depth = _bundle([FrameCamera("front", dataclasses.replace(frame, depth=None), geom)], robot.pointcloud_workspace)
    with pytest.raises(SpecMismatchError, match="'front' gives no depth"):
        pointcloud_for_policy(spec, trained, None, no_depth, "ck")
    with pytest.raises(SpecMismatchError, match="workspace_lower"):
        pointcloud_for_policy(spec, trained, None, _bundle(robot.cameras), "ck")


def test_simulated_robot_gives_pointclouds_through_the_daemon_config():
    from robopolicy.deploy.robot import build_robot

    robot = build_robot({"name": "sim", "kwargs": {"name": "sim_arm"}},
                        [{"name": "sim", "kwargs": {"camera": "front", "height": 48, "width": 48, "depth": True}}],
                        "proprio", "ee_delta")
    robot.connect()
    try:
        spec = {"obs_shapes": {"pointcloud": [64, 6], "state": [14]}}
        trained = {"task": {"env_kwargs": {"pointcloud": {"num_points": 64, "color": True}}}}
        builder = pointcloud_for_policy(spec, trained, None, robot, "ck")  # crop box: the scene's default
        assembler = ObservationAssembler(robot.arm, robot.cameras, robot.state_fn, pointcloud=builder)
        pc = np.asarray(assembler.assemble(time.monotonic()).values["pointcloud"])  # built here, frames of then
    finally:
        robot.disconnect()
    lo, hi = (np.float32(b) for b in robot.pointcloud_workspace)
    assert pc.shape == (64, 6) and np.all(pc[:, :3] >= lo) and np.all(pc[:, :3] <= hi)
    assert np.count_nonzero(np.abs(pc[:, 2]) < 4e-3) > 10  # the table top, at z = 0 in the base frame


def _pointcloud_checkpoint(path, pc: dict) -> None:
    """An untrained tiny flow head on (pointcloud, state) with the task config training would write."""
    import torch

    from robopolicy.data.normalizer import fit_normalizers
    from robopolicy.policies.base import PolicySpec
    from robopolicy.policies.registry import make_policy
    from robopolicy.train.checkpoint import write_model_files

    torch.manual_seed(0)
    n, c = pc["num_points"], 6 if pc.get("color") else 3
    spec = PolicySpec(obs_shapes={"pointcloud": (n, c), "state": (14,)}, action_dim=5, n_obs_steps=2, horizon=8,
                      n_action_steps=4)
    policy_cfg = {"unet": {"down_dims": [16, 32], "diffusion_step_embed_dim": 8, "n_groups": 4}}
    policy = make_policy("flow", spec, policy_cfg)
    rng = np.random.default_rng(0)
    normalizer = fit_normalizers({"state": rng.normal(size=(32, 14)).astype(np.float32),
                                  "action": rng.uniform(-1, 1, (32, 5)).astype(np.float32)},
                                 {"state": "minmax", "action": "minmax", "pointcloud": "identity"})
    config = {"policy": {"name": "flow", "config": policy_cfg},
              "task": {"action_key": "action", "env_kwargs": {"obs_mode": "pixels", "cameras": ["front"],
                                                              "pointcloud": pc}}}
    path.mkdir(parents=True)
    write_model_files(path, policy, normalizer, config, {"spec": spec.to_json(), "policy": "flow"})


@pytest.fixture
def one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # sync inference runs in the control loop's thread
    yield
    torch.set_num_threads(n)


def test_daemon_loads_a_pointcloud_checkpoint_and_feeds_it(tmp_path, one_torch_thread):
    from robopolicy.deploy.service import DeployConfig, DeploymentService
    from robopolicy.policies.registry import build_config

    ckpt = tmp_path / "ckpt"
    _pointcloud_checkpoint(ckpt, {"num_points": 64, "color": True})
    cams = [{"name": "sim", "kwargs": {"camera": "front", "height": 48, "width": 48, "depth": True}}]
    cfg = build_config(DeployConfig, {"store": None, "cameras": cams, "stop_on_success": False,
                                      "runtime": {"rate_hz": 50, "inference": "sync", "max_episode_s": 30}},
                       "deploy")
    svc = DeploymentService(cfg)
    svc.start()
    try:
        svc.load(str(ckpt))
        loop = svc.loop
        assert loop.assembler.pointcloud is not None and loop.assembler.pointcloud.shape == (64, 6)
        svc.start_episode("push", seed=0)
        t0 = time.monotonic()
        while loop.chunks_received < 2 and time.monotonic() - t0 < 20 and loop.fault is None:
            time.sleep(0.05)
        assert loop.fault is None and loop.chunks_received >= 2, (loop.fault, loop._stale)
        with loop.lock:
            pc = loop.history.stacked(["pointcloud"])["pointcloud"]
        assert pc.shape == (1, 2, 64, 6) and pc.dtype == np.float32
        svc.stop_episode(success=None, discard=True)
    finally:
        svc.close()

"""Teleop collection with `pointcloud`: the recorded points are the runtime builder's for the same frames,
and a camera that cannot give them is refused before anything is recorded."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("mujoco")

from camera_fakes import StaticCamera, WrappedCamera  # noqa: E402

from hardware.camera import Camera, Frame  # noqa: E402
from robopolicy.collect import collect_teleop  # noqa: E402
from robopolicy.collect.devices import make_sim_devices  # noqa: E402
from robopolicy.collect.scripted import ScriptedTeleop, ScriptStep, square_moves  # noqa: E402
from robopolicy.collect.session import CollectSession  # noqa: E402
from robopolicy.data.episode_store import EpisodeStore  # noqa: E402
from robopolicy.perception.cameras import CameraPointCloud  # noqa: E402
from robopolicy.perception.env import pointcloud_config  # noqa: E402
from robopolicy.perception.pointcloud import PointCloudConfig  # noqa: E402
from sim.embedded.env import EmbeddedEnv  # noqa: E402

WORKSPACE = EmbeddedEnv.pointcloud_workspace
TASK = "embedded_pick_place"


class GeometryLog(WrappedCamera):
    """Remembers every frame it hands out with the camera's geometry at that moment (the sim wrist camera
    moves with the arm), keyed by the frame's timestamp."""

    def __init__(self, inner: Camera) -> None:
        super().__init__(inner)
        self.seen: dict[float, tuple[Frame, dict]] = {}

    def latest(self) -> Frame:
        frame = self.inner.latest()
        self.seen[float(frame.timestamp)] = (frame, self.inner.camera_geometry())
        return frame




def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_session_records_the_runtime_pointcloud_of_each_step(tmp_path):
    pc = {"cameras": ["front", "wrist"], "num_points": 64, "color": True}
    dev = make_sim_devices(TASK, ("front", "wrist"), image_size=32, realtime=False, depth=("front", "wrist"))
    cams = [GeometryLog(c) for c in dev.cameras]
    script = [ScriptStep(press=("record",))] + square_moves(6) + [ScriptStep(press=("success",)), ScriptStep()]
    store = EpisodeStore.open_or_create(tmp_path / "pc.zarr", fps=10)
    result = CollectSession(dev.arm, cams, ScriptedTeleop(script, after="quit"), store, fps=10, task=TASK,
                            scene=dev.scene, clock=dev.clock, pointcloud=pc, pointcloud_workspace=WORKSPACE,
                            log=lambda s: None).run()
    assert result.ended_by == "quit" and result.n_saved == 1
    assert result.pointcloud_ms_p99 >= result.pointcloud_ms_p50 > 0  # the build's cost is reported
    assert "pointcloud build p50" in result.summary()

    store = EpisodeStore.open(tmp_path / "pc.zarr")
    ep = store.get_episode(0)
    n = len(ep["timestamp"])
    points = ep["pointcloud"]
    assert n == 7 and points.shape == (n, 64, 6) and points.dtype == np.float32
    assert store.array("pointcloud").chunks == (64, 64, 6)  # the sim recorder's chunking (data/codecs.py)
    lo, hi = np.float32(WORKSPACE[0]), np.float32(WORKSPACE[1])
    assert np.all(points[..., :3] >= lo) and np.all(points[..., :3] <= hi)
    assert np.all(np.abs(points[..., :3]).sum(-1) > 0)  # the table is in the box: no empty-crop zeros
    assert np.all((points[..., 3:] >= 0) & (points[..., 3:] <= 1))

    # the stored config is the one the sim wrapper builds from the same env_kwargs entry (crop box filled in)
    cfg = PointCloudConfig(**store.episode_attrs(0)["pointcloud"])
    assert cfg == pointcloud_config(pc).with_workspace(*WORKSPACE)

    # every step: the daemon's builder on that step's frames and geometry gives the recorded points, bit for bit
    for i in range(n):
        frames, fixed = {}, []
        for cam in cams:
            frame, geometry = cam.seen[float(ep[f"timestamps/{cam.name}"][i])]
            assert np.array_equal(ep[f"depth/{cam.name}"][i], frame.depth)
            assert np.array_equal(ep[f"images/{cam.name}"][i], frame.color)
            frames[cam.name] = frame
            fixed.append(StaticCamera(cam.name, None, geometry))
        assert np.array_equal(points[i], CameraPointCloud(cfg, fixed)(frames)), f"step {i}"


def test_camera_without_depth_is_refused_before_recording(tmp_path):
    dev = make_sim_devices(TASK, ("front", "wrist"), image_size=32, realtime=False, depth=("front",))
    out = tmp_path / "nodepth.zarr"
    store = EpisodeStore.open_or_create(out, fps=10)
    before = _files(out)
    logs: list[str] = []
    session = CollectSession(dev.arm, dev.cameras, ScriptedTeleop([ScriptStep()] * 5, after="quit"), store,
                             fps=10, task=TASK, scene=dev.scene, clock=dev.clock, auto_start=True,
                             pointcloud={"cameras": ["front", "wrist"], "num_points": 32},
                             pointcloud_workspace=WORKSPACE, log=logs.append)
    with pytest.raises(ValueError, match=r"camera 'wrist' gives no depth.*`depth: true`.*nothing was recorded"):
        session.run()
    assert session.result.episodes == [] and session.result.n_steps == 0
    assert not any(c.is_running for c in dev.cameras)  # the devices were closed
    assert _files(out) == before  # the store is untouched
    assert EpisodeStore.open(out).n_episodes == 0


def test_pointcloud_camera_not_in_the_session_is_refused_up_front(tmp_path):
    dev = make_sim_devices(TASK, ("front",), image_size=32, realtime=False, depth=("front",))
    store = EpisodeStore.open_or_create(tmp_path / "x.zarr", fps=10)
    with pytest.raises(ValueError, match=r"pointcloud.cameras \['wrist'\].*cameras=\[\.\.\.\]"):
        CollectSession(dev.arm, dev.cameras, ScriptedTeleop([]), store, fps=10,
                       pointcloud={"cameras": ["wrist"]}, pointcloud_workspace=WORKSPACE)


def test_collect_teleop_sim_pointcloud_and_store_compatibility(tmp_path):
    out = tmp_path / "teleop.zarr"
    common = dict(robot="sim", teleop="scripted", task=TASK, fps=10, preview="none", cameras=["front"],
                  image_size=32, realtime=False, terminal_keys="off", log=lambda s: None,
                  script={"endings": ["success"], "steps": 3})
    # robot=sim: depth is turned on for the named cameras and the scene's crop box is the default
    result = collect_teleop(out, pointcloud={"num_points": 48, "sampler": "random"}, **common)
    assert result.n_saved == 1
    store = EpisodeStore.open(out)
    assert store.get_episode(0)["pointcloud"].shape[1:] == (48, 3) and "depth/front" in store.keys
    assert store.episode_attrs(0)["pointcloud"]["workspace_lower"] == list(WORKSPACE[0])
    # one store holds one kind of point cloud: another shape, or another crop / sampler, is refused up front
    with pytest.raises(ValueError, match="num_points"):
        collect_teleop(out, pointcloud={"num_points": 32, "sampler": "random"}, **common)
    with pytest.raises(ValueError, match=r"another pointcloud config \(differs in \['sampler'\]"):
        collect_teleop(out, pointcloud={"num_points": 48}, **common)
    with pytest.raises(ValueError, match="pointcloud on / off"):
        collect_teleop(out, **common)
    assert EpisodeStore.open(out).n_episodes == 1
    # hardware: the crop box must be given; refused before the store is created
    with pytest.raises(ValueError, match="workspace_lower"):
        collect_teleop(tmp_path / "hw.zarr", **{**common, "robot": "ur"}, pointcloud={"cameras": ["front"]})
    assert not (tmp_path / "hw.zarr").exists()


def test_cli_config_takes_a_pointcloud_mapping():
    from robopolicy.cli import collect as cli

    assert cli.compose([]).pointcloud is None
    cfg = cli.compose(["pointcloud={cameras: [front], num_points: 64, color: true}"])
    assert cli._plain(cfg.pointcloud) == {"cameras": ["front"], "num_points": 64, "color": True}
    assert "pointcloud=null" in cli.help_text()

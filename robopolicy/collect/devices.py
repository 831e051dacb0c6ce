"""Building the devices of a collection session by name: the simulated robot by default; for everything else
a device config (configs/robot|camera|teleop/<name>.yaml: registry name + kwargs) or a registry name of
`hardware.registry` (make_arm / make_camera / make_teleop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hardware.arm import Arm
from hardware.camera import Camera
from hardware.teleop import TeleopDevice


def sim_family(task: str) -> str:
    """'embedded_pick_place' -> 'pick_place' (the embedded scene's task family)."""
    from sim.embedded.task_defs import FAMILIES

    family = task[len("embedded_"):] if task.startswith("embedded_") else task
    if family not in FAMILIES:
        raise ValueError(f"robot=sim drives the embedded scene; task must be one of "
                         f"{', '.join('embedded_' + f for f in FAMILIES)}, got {task!r}")
    return family


class SimScene:
    """The embedded scene behind a SimRobot as the session's resettable scene."""

    def __init__(self, robot, family: str) -> None:
        self.robot = robot
        self.family = family

    def reset(self, seed: int) -> dict[str, Any]:
        inst = self.robot.reset(seed, task=self.family)
        return {"language": inst.language, "kind": inst.kind}

    def success(self) -> bool | None:
        from sim.embedded.task_defs import is_success

        with self.robot.lock:
            return bool(is_success(self.robot.scene, self.robot.task)) if self.robot.task else None


@dataclass
class Devices:
    arm: Arm
    cameras: list[Camera]
    teleop: TeleopDevice | None
    scene: SimScene | None = None
    clock: Any = None  # the sim's clock when it does not run in real time
    robot: Any = None  # the SimRobot, when robot=sim
    extra: dict[str, Any] = field(default_factory=dict)


def _registry():
    try:
        import hardware.registry as registry
    except ImportError as e:
        raise RuntimeError(
            "hardware drivers are not available (hardware/registry.py failed to import: "
            f"{e}); use robot=sim and teleop=scripted, or install the driver extras") from None
    return registry


def make_sim_devices(task: str, cameras: Sequence[str] = ("front", "wrist"), image_size=(96, 96),
                     camera_fps: float = 30.0, realtime: bool = True, seed: int = 0,
                     depth: Sequence[str] = ()) -> Devices:
    """SimArm + SimCameras over one SimRobot on the embedded scene of `task`; the cameras named in `depth`
    also render depth (uint16 mm), e.g. those a `pointcloud` is built from."""
    from sim.embedded.robot import SimArm, SimCamera, SimRobot

    family = sim_family(task)
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    robot = SimRobot(realtime=realtime, seed=seed, task=family)
    arm = SimArm(robot)
    cams = [SimCamera(robot, c, height=h, width=w, fps=camera_fps, depth=c in depth) for c in cameras]
    return Devices(arm=arm, cameras=cams, teleop=None, scene=SimScene(robot, family),
                   clock=None if realtime else robot.clock, robot=robot)


def _config_path(kind_dir: str, name: str):
    from robopolicy.cli.eval import config_dir

    path = config_dir() / kind_dir / f"{name}.yaml"
    return path if path.exists() else None


def _make(kind: str, kind_dir: str, name: str, overrides: dict[str, Any]) -> Any:
    """A device from configs/<kind_dir>/<name>.yaml (registry name + kwargs) when that file exists, else the
    registry entry `name`; `overrides` go into its keyword arguments."""
    reg = _registry()
    path = _config_path(kind_dir, name)
    if path is not None:
        return reg.make_from_config(kind, reg.load_config(path), **overrides)
    maker = {"arm": reg.make_arm, "camera": reg.make_camera, "teleop": reg.make_teleop}[kind]
    return maker(name, **overrides)


def make_teleop(name: str, script: dict[str, Any] | None = None, **kwargs: Any) -> TeleopDevice:
    """`scripted` (robopolicy.collect.scripted, for smoke tests) or a teleop device from
    configs/teleop/<name>.yaml / hardware.registry."""
    if name == "scripted":
        from robopolicy.collect.scripted import ScriptedTeleop, demo_script

        script = dict(script or {})
        endings = list(script.get("endings", ["success"]))
        # an episode that ends with "none" runs until the session is interrupted
        after = "idle" if endings and endings[-1] == "none" else str(script.get("after", "quit"))
        return ScriptedTeleop(
            demo_script(endings, n_steps=int(script.get("steps", 20)), speed=float(script.get("speed", 0.01))),
            after=after)
    return _make("teleop", "teleop", name, kwargs)


def make_devices(robot: str, teleop: str, task: str, cameras: Sequence[str] = ("front", "wrist"),
                 image_size=(96, 96), camera_fps: float = 30.0, realtime: bool = True, seed: int = 0,
                 robot_args: dict | None = None, camera_args: dict | None = None,
                 teleop_args: dict | None = None, script: dict | None = None,
                 sim_depth: Sequence[str] = ()) -> Devices:
    """All devices of a session.

    robot=sim: the embedded scene; `cameras` are its camera names (front, wrist), those in `sim_depth` with
    depth. Otherwise `robot` and every camera name is a device config (configs/robot/<name>.yaml,
    configs/camera/<name>.yaml) or a registry name of hardware.registry, with `robot_args` /
    `camera_args[name]` as keyword overrides (depth comes from the camera's config: `depth: true`).
    """
    if robot == "sim":
        dev = make_sim_devices(task, cameras, image_size, camera_fps, realtime, seed, depth=sim_depth)
    else:
        dev = Devices(arm=_make("arm", "robot", robot, dict(robot_args or {})),
                      cameras=[_make("camera", "camera", c, dict((camera_args or {}).get(c, {}))) for c in cameras],
                      teleop=None)
    dev.teleop = make_teleop(teleop, script=script, **(teleop_args or {}))
    return dev

"""Name -> driver class registries for arms, cameras and teleop devices, imported lazily.

Every entry is an import path string ("module:Class") plus default keyword arguments, so listing or
resolving a name imports only that driver (and its SDK), and `hardware` never imports `sim` unless the
simulated arm or camera is asked for.

    arm = make_arm("ur", host="192.168.1.10")
    cam = make_camera("realsense", serial="123", process=True)     # in its own process, shared memory
    dev = make_teleop("spacemouse")
    arm = make_from_config("arm", {"name": "so101", "kwargs": {"port": "/dev/ttyACM0"}})
    arm = make_from_config("arm", load_config("configs/robot/ur5e.yaml"))

A config (configs/robot/*.yaml, configs/camera/*.yaml, configs/teleop/*.yaml) is a mapping with `name` (a
registry name) and `kwargs` (constructor arguments); camera configs may add `process: true`.
`register_arm` / `register_camera` / `register_teleop` add entries (e.g. from a plug-in).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_Entry = tuple[str, dict[str, Any]]

ARMS: dict[str, _Entry] = {
    "ur": ("hardware.drivers.ur:URArm", {}),
    "xarm": ("hardware.drivers.xarm:XArmArm", {}),
    "so100": ("hardware.drivers.lerobot_arm:LeRobotArm", {"robot_type": "so100_follower"}),
    "so101": ("hardware.drivers.lerobot_arm:LeRobotArm", {"robot_type": "so101_follower"}),
    "koch": ("hardware.drivers.lerobot_arm:LeRobotArm", {"robot_type": "koch_follower"}),
    "sim": ("sim.embedded.robot:SimArm", {}),
}
CAMERAS: dict[str, _Entry] = {
    "realsense": ("hardware.drivers.realsense:RealSenseCamera", {}),
    "opencv": ("hardware.drivers.opencv_camera:OpenCVCamera", {}),
    "synthetic": ("hardware.drivers.synthetic:SyntheticCamera", {}),
    "sim": ("sim.embedded.robot:SimCamera", {}),
}
TELEOPS: dict[str, _Entry] = {
    "spacemouse": ("hardware.drivers.spacemouse:SpaceMouse", {}),
    "keyboard": ("hardware.drivers.keyboard:Keyboard", {}),
    "gamepad": ("hardware.drivers.gamepad:Gamepad", {}),
    "leader": ("hardware.drivers.leader_arm:LeaderArm", {}),
    "so101_leader": ("hardware.drivers.leader_arm:LeaderArm", {"teleop_type": "so101_leader"}),
    "koch_leader": ("hardware.drivers.leader_arm:LeaderArm", {"teleop_type": "koch_leader"}),
}
_KINDS = {"arm": ARMS, "robot": ARMS, "camera": CAMERAS, "teleop": TELEOPS}


def resolve(path: str) -> Any:
    """Import "package.module:Attr" and return the attribute."""
    mod, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"import path must look like 'package.module:Class', got {path!r}")
    return getattr(importlib.import_module(mod), attr)


def _make(registry: dict[str, _Entry], kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    if name not in registry:
        raise KeyError(f"unknown {kind} '{name}'; registered: {', '.join(sorted(registry))}")
    path, defaults = registry[name]
    return resolve(path)(**{**defaults, **kwargs})


def make_arm(name: str, /, **kwargs: Any) -> Any:
    """An `Arm` by registry name ("ur", "xarm", "so100", "so101", "koch", "sim")."""
    return _make(ARMS, "arm", name, kwargs)


def make_camera(name: str, /, process: bool = False, **kwargs: Any) -> Any:
    """A `Camera` by registry name ("realsense", "opencv", "sim").

    process=True runs it in its own process behind a shared-memory ring (`ProcessCamera`); ProcessCamera's
    own options go in `process_options` (n_slots, stall_timeout, start_timeout).
    """
    process_options = kwargs.pop("process_options", None) or {}
    if not process:
        return _make(CAMERAS, "camera", name, kwargs)
    from hardware.camera_process import ProcessCamera

    if name not in CAMERAS:
        raise KeyError(f"unknown camera '{name}'; registered: {', '.join(sorted(CAMERAS))}")
    cam_name = kwargs.get("name") or name
    return ProcessCamera(functools.partial(make_camera, name, **kwargs), name=cam_name, **process_options)


def make_teleop(name: str, /, **kwargs: Any) -> Any:
    """A `TeleopDevice` by registry name ("spacemouse", "keyboard", "gamepad", "leader", ...)."""
    return _make(TELEOPS, "teleop", name, kwargs)


def _register(registry: dict[str, _Entry], name: str, path: str, defaults: dict[str, Any] | None) -> None:
    registry[name] = (path, dict(defaults or {}))


def register_arm(name: str, path: str, defaults: dict[str, Any] | None = None) -> None:
    _register(ARMS, name, path, defaults)


def register_camera(name: str, path: str, defaults: dict[str, Any] | None = None) -> None:
    _register(CAMERAS, name, path, defaults)


def register_teleop(name: str, path: str, defaults: dict[str, Any] | None = None) -> None:
    _register(TELEOPS, name, path, defaults)


def names(kind: str) -> list[str]:
    """Registered names of "arm", "camera" or "teleop"."""
    return sorted(_KINDS[kind])


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a device config YAML (name + kwargs) into a plain dict."""
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    _validate(cfg, str(path))
    return cfg


def _validate(cfg: Mapping[str, Any], where: str) -> None:
    if "_target_" in cfg:
        raise ValueError(f"{where}: device configs use `name` + `kwargs`, not `_target_`")
    if "name" not in cfg:
        raise ValueError(f"{where}: a device config needs `name` (a registry name)")
    extra = set(cfg) - {"name", "kwargs", "process", "process_options", "description"}
    if extra:
        raise ValueError(
            f"{where}: unknown keys {sorted(extra)}; allowed: name, kwargs, process, process_options"
        )


def make_from_config(kind: str, cfg: Mapping[str, Any], **overrides: Any) -> Any:
    """Build a device of `kind` ("arm" / "robot", "camera", "teleop") from a config mapping.

    `overrides` are merged into the config's kwargs (e.g. the simulated camera's `robot=`).
    """
    cfg = _plain(cfg)
    _validate(cfg, f"{kind} config")
    kwargs = {**(cfg.get("kwargs") or {}), **overrides}
    if kind in ("arm", "robot"):
        return make_arm(cfg["name"], **kwargs)
    if kind == "camera":
        return make_camera(
            cfg["name"],
            process=bool(cfg.get("process", False)),
            process_options=cfg.get("process_options"),
            **kwargs,
        )
    if kind == "teleop":
        return make_teleop(cfg["name"], **kwargs)
    raise ValueError(f"unknown device kind '{kind}'; use arm, camera or teleop")


def _plain(cfg: Any) -> dict[str, Any]:
    """An OmegaConf DictConfig (hydra) or a mapping -> a plain dict."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)

"""Teleop data collection (`robopolicy collect`) and episode review (`robopolicy collect review`).

- session.py: CollectSession, the fixed-rate teleop + recording loop (library API, plain arguments);
  command.py: teleop command -> EE target and recorded action; frames.py: dropped / stalled camera frames;
  episodes.py: start / save / discard / abort an episode; records.py: recorded rows, attributes, results;
  lifecycle.py: opening and closing the devices, Ctrl-C / SIGTERM; pointclouds.py: the optional `pointcloud`
  key, built from each step's frames by the deployment daemon's builder;
- keys.py: the key / device-button table; preview.py: live preview (window, headless files, none);
- devices.py: devices by name (the simulated arm by default); scripted.py: a scripted TeleopDevice;
- review.py: replay a recorded episode on the simulated arm, side-by-side video + tracking error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robopolicy.collect.keys import BINDINGS, help_table
from robopolicy.collect.session import CollectSession, EpisodeOutcome, MonotonicClock, SessionResult

__all__ = ["BINDINGS", "CollectSession", "EpisodeOutcome", "MonotonicClock", "SessionResult", "collect_teleop",
           "help_table", "review_episode"]


def collect_teleop(
    out: str | Path,
    *,
    robot: str = "sim",
    teleop: str = "keyboard",
    task: str = "embedded_pick_place",
    fps: float = 10.0,
    episodes: int | None = None,
    on_abort: str = "save",
    preview: str = "auto",
    preview_dir: str | Path | None = None,
    preview_every: float = 1.0,
    preview_video: bool = True,
    cameras: tuple[str, ...] | list[str] = ("front", "wrist"),
    image_size: int | tuple[int, int] = 96,
    camera_fps: float = 30.0,
    realtime: bool = True,
    seed: int = 0,
    language: str = "",
    action_mode: str = "target",
    max_steps: int | None = None,
    auto_start: bool = False,
    camera_timeout: float = 1.0,
    terminal_keys: str = "auto",
    script: dict[str, Any] | None = None,
    robot_args: dict | None = None,
    camera_args: dict | None = None,
    teleop_args: dict | None = None,
    pointcloud: dict[str, Any] | bool | None = None,
    log=print,
) -> SessionResult:
    """Build the devices, the store and the preview, run one CollectSession, return its result.

    `pointcloud` (PointCloudConfig fields; None: off) records a `pointcloud` key built from the named cameras'
    depth (collect/pointclouds.py). robot=sim turns depth on for those cameras and crops to the embedded
    scene's box by default; real cameras need `depth: true` in their config and workspace_lower/upper set.
    """
    import sys

    from robopolicy.collect.devices import make_devices
    from robopolicy.collect.keys import TerminalKeys
    from robopolicy.collect.preview import make_preview
    from robopolicy.data.episode_store import EpisodeStore

    pc_cameras, workspace = (), None
    if pointcloud:
        from robopolicy.perception.cameras import runtime_pointcloud_config

        if robot == "sim":
            from sim.embedded.env import EmbeddedEnv

            workspace = EmbeddedEnv.pointcloud_workspace  # the crop box of the sim recorder's point clouds
        # validated before the store or a device is touched (unknown option, no crop box on hardware)
        pc_cameras = runtime_pointcloud_config({} if pointcloud is True else pointcloud, workspace).cameras
    store = EpisodeStore.open_or_create(out, fps=fps)
    teleop_args = dict(teleop_args or {})
    if teleop == "keyboard" and "backend" not in teleop_args and not _has_display():
        # no desktop session for a global key listener: keys come from the terminal / preview instead
        teleop_args["backend"] = "manual"
    dev = make_devices(robot, teleop, task, cameras, image_size, camera_fps, realtime, seed,
                       robot_args=robot_args, camera_args=camera_args, teleop_args=teleop_args, script=script,
                       sim_depth=pc_cameras)
    if preview_dir is None:
        preview_dir = Path(str(out).rstrip("/") + ".preview")
    pv = make_preview(preview, preview_dir, every_s=preview_every, video=preview_video, fps=fps)
    keys = None
    if terminal_keys == "on" or (terminal_keys == "auto" and sys.stdin.isatty() and pv.mode != "window"):
        keys = TerminalKeys()
    if teleop == "keyboard" and teleop_args.get("backend") == "manual" and keys is None and pv.mode != "window":
        log("warning: the keyboard teleop has no key source (no display, stdin is not a terminal): "
            "run in a terminal, or with preview=window on a desktop")
    session = CollectSession(
        dev.arm, dev.cameras, dev.teleop, store, fps=fps, task=task, language=language, robot_name=robot,
        scene=dev.scene, clock=dev.clock, seed=seed, episodes=episodes, on_abort=on_abort, preview=pv,
        action_mode=action_mode, max_steps=max_steps, auto_start=auto_start, camera_timeout=camera_timeout,
        key_source=keys, pointcloud=pointcloud, pointcloud_workspace=workspace, log=log,
    )
    if pv.mode == "file":
        log(f"preview: {Path(preview_dir) / 'latest.png'} (refreshed every {preview_every:g} s)"
            + (f" and {Path(preview_dir) / 'preview.mp4'}" if preview_video else ""))
    return session.run()


def _has_display() -> bool:
    import os
    import sys

    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def review_episode(*args, **kwargs):
    """See robopolicy.collect.review.review_episode."""
    from robopolicy.collect.review import review_episode as _review

    return _review(*args, **kwargs)

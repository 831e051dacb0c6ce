"""`robopolicy collect`: teleop data collection into an EpisodeStore, and `collect review`.

Thin layer: compose configs/collect_teleop.yaml with hydra and call robopolicy.collect.
"""

from __future__ import annotations

import sys
from typing import Any

HELP_HEAD = """\
usage: robopolicy collect [key=value ...]
       robopolicy collect review store=PATH episode=N [video=OUT.mp4]

Teleoperate an arm (the simulated one unless robot= names a driver) at the control rate, preview every
camera, and record episodes into an EpisodeStore. Between episodes the sim scene is reset with a new seed;
the task's instruction is stored with each episode. A saved episode is never lost: Ctrl-C (first press:
finish cleanly, second: stop now), a crash or a lost device end the current episode as on_abort says and
keep every earlier one. Dropped frames per camera are reported after each episode and stored with it.

keys (preview window, or the terminal) and device buttons (by name):
"""

HELP_TAIL = """
options (defaults in configs/collect_teleop.yaml):
  robot=sim                 sim = the embedded MuJoCo arm; otherwise a driver of hardware.registry
  teleop=keyboard           teleop device (hardware.registry); scripted = a built-in smoke-test script
  task=embedded_pick_place  embedded_push | embedded_pick_place | embedded_stack | embedded_multitask
  out=data/teleop.zarr      episode store (appended to when it exists)
  fps=10                    control and recording rate
  episodes=N                stop after N saved episodes (default: until quit)
  on_abort=save             save (aborted=true, success=false) | discard the episode cut short
  preview=auto              window | file (latest.png + preview.mp4 in preview_dir) | none | auto
  preview_dir=DIR           default <out>.preview/;  preview_every=1.0 s;  preview_video=true
  cameras=[front,wrist]     image_size=96  camera_fps=30  (sim)
  realtime=true             sim physics on the wall clock (false: as fast as possible; scripted teleop only)
  seed=0                    first scene seed; every reset takes the next one
  action_mode=target        target: action = EE position, quaternion (wxyz), gripper width  [8]
                            delta:  action = EE position delta, rotation vector, gripper width [7]
  max_steps=N               stop and save an episode after N steps;  auto_start=false
  camera_timeout=1.0        seconds without a new frame before a camera counts as stalled (episode aborted)
  terminal_keys=auto        read keys from the terminal (auto: when stdin is a TTY and teleop!=keyboard)
  script.endings=[success]  teleop=scripted: one scripted episode per ending; script.steps=20
  pointcloud=null           record `pointcloud` (float32 [N, 3|6], base frame) from depth cameras, built like the
                            sim recorder and the daemon build it: pointcloud='{cameras: [front], num_points: 512}'
                            (PointCloudConfig fields; real cameras: depth: true and workspace_lower/upper)

recorded per step: timestamp, state (joints, gripper width, EE position, EE quaternion), action,
images/<cam>, timestamps/<cam> (frame capture time), timestamps/state; depth/<cam> and pointcloud when on.
episode attributes: task, language, success, aborted, end_reason, seed, dropped_frames, achieved_hz, ...

review: replays the episode's actions on the simulated arm from its seed and writes an mp4 with the
recorded | replayed frames side by side and the end-effector tracking error plotted (and a .json).

Examples:
  robopolicy collect teleop=keyboard task=embedded_pick_place out=data/teleop.zarr fps=10
  robopolicy collect teleop=scripted preview=file episodes=2 script.endings=[success,failure]
  robopolicy collect review store=data/teleop.zarr episode=0
"""

# Passed as plain values even if a hydra config group of that name exists (configs/robot/, teleop/, task/).
PLAIN_KEYS = ("task", "robot", "teleop")


def help_text() -> str:
    from robopolicy.collect.keys import help_table

    return HELP_HEAD + help_table() + "\n" + HELP_TAIL


def compose(argv: list[str]) -> Any:
    """configs/collect_teleop.yaml composed with key=value overrides (hydra compose API)."""
    from robopolicy.cli.config import compose_config

    return compose_config("collect_teleop", argv, PLAIN_KEYS)


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _collect(cfg: Any) -> int:
    from robopolicy.collect import collect_teleop

    try:
        result = collect_teleop(
            cfg.out, robot=cfg.robot, teleop=cfg.teleop, task=cfg.task, fps=float(cfg.fps),
            episodes=None if cfg.episodes is None else int(cfg.episodes), on_abort=cfg.on_abort,
            preview=cfg.preview, preview_dir=cfg.preview_dir, preview_every=float(cfg.preview_every),
            preview_video=bool(cfg.preview_video), cameras=list(_plain(cfg.cameras)),
            image_size=_plain(cfg.image_size), camera_fps=float(cfg.camera_fps), realtime=bool(cfg.realtime),
            seed=int(cfg.seed), language=str(cfg.language), action_mode=cfg.action_mode,
            max_steps=None if cfg.max_steps is None else int(cfg.max_steps), auto_start=bool(cfg.auto_start),
            camera_timeout=float(cfg.camera_timeout), terminal_keys=str(cfg.terminal_keys),
            script=_plain(cfg.script), robot_args=_plain(cfg.robot_args), camera_args=_plain(cfg.camera_args),
            teleop_args=_plain(cfg.teleop_args), pointcloud=_plain(cfg.get("pointcloud")),
            log=lambda s: print(s, flush=True),
        )
    except (ValueError, FileExistsError) as e:  # bad options, or a store recorded with other keys / fps
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a device that cannot be opened, a failed write
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every saved episode is intact", file=sys.stderr)
        return 130
    if result.ended_by == "interrupt":
        return 130
    return 1 if result.ended_by in ("device_lost", "error") else 0


def _review(cfg: Any) -> int:
    from robopolicy.collect import review_episode

    store = cfg.store or cfg.out
    try:
        review_episode(store, int(cfg.episode), cfg.video, log=lambda s: print(s, flush=True))
    except (ValueError, IndexError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `robopolicy collect`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text())
        return 0
    review = bool(argv) and argv[0] == "review"
    if review:
        argv = argv[1:]
    try:
        cfg = compose(argv)
    except Exception as e:  # hydra's messages name the bad key
        print(f"error: {e}\nSee `robopolicy collect --help` for the options.", file=sys.stderr)
        return 2
    return _review(cfg) if review else _collect(cfg)


if __name__ == "__main__":
    raise SystemExit(main())

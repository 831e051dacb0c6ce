"""`robopolicy sim`: list the simulated tasks and collect scripted-expert demonstrations.

Thin layer: `collect` composes configs/collect.yaml with hydra and calls robopolicy.eval.demos.collect_demos.
"""

from __future__ import annotations

import importlib
import sys

from robopolicy.cli.config import compose_config, to_plain

HELP = """\
usage: robopolicy sim list
       robopolicy sim collect [key=value ...]

list      print the registered sim tasks (name, episode limit, fps, description)
collect   run a task's scripted expert over seeds and write the successful episodes into an EpisodeStore,
          with a progress bar showing the expert's running success rate

collect options (defaults in configs/collect.yaml):
  task=pusht            sim task
  n=200                 successful episodes to write
  out=PATH              store path (default data/<task>.zarr)
  seed=0                attempt k is reset with seed + k
  keep_failures=false   also write failed attempts (marked success=false; they do not count towards n)
  image_size=96         camera size, int or [H,W] (null: the task's default)
  obs_mode=both         state | pixels | both
  max_attempts=N        give up after N attempts (default 2n + 10)
  stop_on_success=true  end an episode at the expert's first success
  overwrite=false       replace an existing store;  append=false  add to an existing store
  progress=true         progress bar
  env_kwargs={...}      extra env arguments; point clouds: env_kwargs='{cameras: [front], pointcloud: {color: true}}'
  expert_kwargs={...}   arguments of the task's expert; embedded tasks: expert_kwargs='{style: plain}' (one fixed
                        behaviour instead of a random speed, height, noise and grasp per episode)

Example:
  robopolicy sim collect task=pusht n=200 out=data/pusht.zarr
"""


def _list() -> int:
    from sim.registry import TASK_MODULES, get_task, list_tasks

    for prefix, module in TASK_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"# tasks '{prefix}*' unavailable: {module} failed to import ({e})")
    for name in list_tasks(load_all=False):
        spec = get_task(name)
        expert = "expert" if spec.make_expert is not None else "no expert"
        print(f"{name:<36} {spec.max_episode_steps:>5} steps  {spec.fps:>5g} fps  {expert:<9}  {spec.description}")
    return 0


def _collect(argv: list[str]) -> int:
    try:
        cfg = compose_config("collect", argv, ("task",))
    except Exception as e:  # hydra's messages name the bad key
        print(f"error: {e}\nSee `robopolicy sim --help` for the options.", file=sys.stderr)
        return 2
    from robopolicy.eval.demos import collect_demos
    from sim.registry import get_task

    try:
        get_task(cfg.task)
    except (KeyError, ImportError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    out = cfg.out or f"data/{cfg.task}.zarr"
    try:
        result = collect_demos(
            cfg.task, int(cfg.n), out, seed=int(cfg.seed), keep_failures=bool(cfg.keep_failures),
            image_size=to_plain(cfg.image_size), obs_mode=cfg.obs_mode,
            max_attempts=None if cfg.max_attempts is None else int(cfg.max_attempts),
            stop_on_success=bool(cfg.stop_on_success), overwrite=bool(cfg.overwrite), append=bool(cfg.append),
            progress=bool(cfg.progress), env_kwargs=to_plain(cfg.get("env_kwargs")) or None,
            expert_kwargs=to_plain(cfg.get("expert_kwargs")) or None,
        )
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.n_written} episodes ({result.n_success} successful) to {result.path}; "
          f"expert success {result.n_success}/{result.n_attempts} ({result.expert_success_rate:.0%})")
    return 0 if result.n_success >= int(cfg.n) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `robopolicy sim`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "list":
        return _list()
    if command == "collect":
        return _collect(rest)
    print(f"error: unknown sim command {command!r}; use `robopolicy sim list` or `robopolicy sim collect`",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

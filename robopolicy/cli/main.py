"""`robopolicy`: the one console entry point; each command lives in its own module under cli/."""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module with `main(argv) -> int`, one-line help). Imported lazily so `--help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("robopolicy.cli.data", "inspect, validate, render and convert episode stores (LeRobot v3 import/export)"),
    "sim": ("robopolicy.cli.sim", "list simulated tasks; collect scripted-expert demonstrations"),
    "eval": ("robopolicy.cli.eval", "evaluate an agent (expert or checkpoint) on a simulated task"),
    "train": ("robopolicy.cli.train", "train an imitation policy on an episode store (hydra: task=... policy=...)"),
    "finetune": ("robopolicy.cli.finetune",
                 "RL fine-tuning of a checkpoint in sim (hydra: algo=reinflow|rl100|dsrl|dsrl_na checkpoint=... task=...)"),
    "collect": ("robopolicy.cli.collect",
                "teleoperate an arm (sim by default) and record episodes; `collect review` replays one"),
    "deploy": ("robopolicy.cli.deploy", "deployment daemon (`deploy serve`) and its client: status, load, start, stop, estop"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: robopolicy COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `robopolicy COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"robopolicy: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

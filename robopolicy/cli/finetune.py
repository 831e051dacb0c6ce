"""`robopolicy finetune`: RL fine-tuning of an imitation checkpoint in simulation.

Thin layer: compose configs/finetune.yaml (groups task/ and algo/) with hydra, then call the method's
`finetune(checkpoint, task, algo, out_dir, seed) -> dict` found through `ALGORITHMS` (imported lazily).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from robopolicy.cli.config import config_dir

# algo name -> "module:function" with the signature
#   finetune(checkpoint: str, task: dict, algo: dict, out_dir: pathlib.Path, seed: int) -> dict
ALGORITHMS: dict[str, str] = {
    "reinflow": "robopolicy.rl.reinflow:finetune",
    "rl100": "robopolicy.rl.rl100_finetune:finetune",
    "dsrl": "robopolicy.rl.dsrl_finetune:finetune",
    "dsrl_na": "robopolicy.rl.dsrl_finetune:finetune_na",
}

HELP = """\
usage: robopolicy finetune algo=NAME checkpoint=PATH task=NAME [key=value ...]

Fine-tune an imitation checkpoint with RL in simulation. Writes into `out_dir`: final/ (and last/, best/)
checkpoints in the imitation format (`robopolicy eval checkpoint=<out_dir>/final` takes them), curves.png
(success vs env steps and wall time), tensorboard logs in tb/, metrics.jsonl and summary.json.

  algo=NAME          reinflow | rl100 | dsrl | dsrl_na   (configs/algo/NAME.yaml); keys as algo.KEY=VALUE,
                     e.g. algo.wall_budget_s=1800 algo.ppo.n_envs=8
  checkpoint=PATH    the imitation checkpoint to start from (a flow head for reinflow)
  task=NAME          configs/task/NAME.yaml (its sim env, env_kwargs and episode limit), default embedded_push
  seed=0             training seed
  out_dir=DIR        default runs/finetune/<task>_<algo>_<time>

Example:
  robopolicy finetune algo=reinflow checkpoint=data/rl_start/embedded_push_flow task=embedded_push \\
      algo.wall_budget_s=1800 out_dir=runs/finetune/push_reinflow
  # continue that run for another 30 minutes (every algo; budgets count the whole run):
  robopolicy finetune algo=reinflow checkpoint=data/rl_start/embedded_push_flow task=embedded_push \\
      algo.wall_budget_s=3600 algo.resume_from=runs/finetune/push_reinflow/last out_dir=runs/finetune/push_reinflow
"""


def resolve_algorithm(name: str) -> Any:
    """The `finetune` function registered as `name`; a clear error when unknown or not installed."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algo '{name}'; available: {', '.join(sorted(ALGORITHMS))}")
    module_name, _, fn_name = ALGORITHMS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"algo '{name}' is implemented by module '{module_name}', which does not exist in this "
                             f"installation; available: {', '.join(sorted(ALGORITHMS))}") from None
        raise
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ValueError(f"algo '{name}': module '{module_name}' has no function '{fn_name}'")
    return fn


def compose(argv: list[str]) -> tuple[dict[str, Any], str]:
    """configs/finetune.yaml with overrides -> (plain dict, chosen algo name)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = hydra_compose(config_name="finetune", overrides=argv, return_hydra_config=True)
    algo_name = str(cfg.hydra.runtime.choices.get("algo"))
    with open_dict(cfg):
        del cfg["hydra"]  # its sweep paths do not resolve outside a hydra app
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return plain, algo_name


def main(argv: list[str] | None = None) -> int:
    """Entry point of `robopolicy finetune`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(HELP)
        return 0
    try:
        plain, algo_name = compose(argv)
    except Exception as e:  # hydra names the bad key or group option
        print(f"error: {e}\nSee `robopolicy finetune --help` for the options.", file=sys.stderr)
        return 2
    extra = sorted(set(plain) - {"task", "algo", "checkpoint", "seed", "out_dir"})
    if extra:
        print(f"error: unknown top-level key(s) {extra}; expected task, algo, checkpoint, seed, out_dir",
              file=sys.stderr)
        return 2
    if not plain.get("checkpoint"):
        print("error: checkpoint=PATH is required (an imitation checkpoint directory, e.g. "
              "data/rl_start/embedded_push_flow)", file=sys.stderr)
        return 2
    if not Path(plain["checkpoint"]).exists():
        print(f"error: checkpoint={plain['checkpoint']} does not exist", file=sys.stderr)
        return 2
    try:
        fn = resolve_algorithm(algo_name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    task = dict(plain.get("task") or {})
    out_dir = Path(plain.get("out_dir") or
                   f"runs/finetune/{task.get('name', 'task')}_{algo_name}_{time.strftime('%Y%m%d-%H%M%S')}")
    summary = fn(str(plain["checkpoint"]), task, dict(plain.get("algo") or {}), out_dir, int(plain.get("seed") or 0))
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

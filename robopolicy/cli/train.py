"""`robopolicy train`: imitation-train a policy head on an episode store.

Thin layer: compose configs/train.yaml (groups task/ and policy/) with hydra in struct mode, turn it into
TaskConfig / TrainerConfig / the head's Config, and call robopolicy.train. Multi-GPU or multi-process:
run the same command under `accelerate launch` (see HELP).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from robopolicy.cli.config import config_dir

HELP = """\
usage: robopolicy train [key=value ...]

Train a policy on an episode store with AdamW + cosine warm-up, EMA, periodic validation loss and sim
evaluation; writes <out_dir>/last/ (every trainer.checkpoint_every steps, resumable) and <out_dir>/best/
(by eval success rate, or val loss when eval is off), tensorboard logs in <out_dir>/tb and metrics.jsonl.

  task=NAME                 configs/task/NAME.yaml: store, obs keys, T_o/T_p/T_a, sim task (default pusht)
  policy=NAME               configs/policy/NAME.yaml: head + hyper-parameters (default diffusion_cpu;
                            diffusion, flow and their *_cpu presets)
  task.store=PATH           the episode store (`robopolicy sim collect` makes one)
  policy.config.KEY=VALUE   a head hyper-parameter, e.g. policy.config.unet.down_dims=[64,128,256]
  trainer.steps=N           optimizer steps;   trainer.batch_size=N (per process)
  trainer.lr=1e-4 trainer.warmup_steps=500 trainer.ema=true trainer.grad_clip=10 trainer.amp=false
  trainer.val_every=N trainer.eval_every=N trainer.eval_episodes=N trainer.checkpoint_every=N
  trainer.seed=0 trainer.num_workers=0 trainer.out_dir=DIR (default runs/<task>_<policy>_<time>)
  trainer.resume=true       continue <out_dir>/last exactly where it stopped (or resume=PATH/last)

Defaults and comments live in configs/train.yaml. Examples:
  robopolicy train task=pusht policy=diffusion_cpu trainer.steps=3000
  robopolicy eval checkpoint=runs/pusht_diffusion_cpu_<time>/best task=pusht
Several GPUs (only the main process logs and checkpoints; batch_size is per GPU):
  accelerate launch --multi_gpu --num_processes 4 -m robopolicy.cli.train task=pusht policy=diffusion
Several CPU processes (gloo; `accelerate launch --cpu` would start only one):
  accelerate launch --multi_gpu --num_processes 2 -m robopolicy.cli.train ... trainer.cpu=true
"""



def compose(argv: list[str]) -> Any:
    """configs/train.yaml with overrides; struct mode makes unknown keys an error."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name="train", overrides=argv)


def build(cfg: Any) -> tuple[Any, str, dict[str, Any], Any, dict[str, Any]]:
    """Composed config -> (TaskConfig, policy name, policy config dict, TrainerConfig, resolved plain dict)."""
    from omegaconf import OmegaConf

    from robopolicy.policies.registry import ConfigError, build_config
    from robopolicy.train.config import TaskConfig, TrainerConfig

    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    extra = sorted(set(plain) - {"task", "policy", "trainer"})
    if extra:
        raise ConfigError(f"unknown top-level key(s) {extra} in the train config; expected task, policy, trainer")
    policy = plain.get("policy") or {}
    unknown = sorted(set(policy) - {"name", "config"})
    if unknown or "name" not in policy:
        raise ConfigError(f"a policy config has `name` and `config`; got keys {sorted(policy)}")
    trainer_dict = dict(plain.get("trainer") or {})
    if not trainer_dict.get("out_dir"):
        task_name = (plain.get("task") or {}).get("name") or "task"
        trainer_dict["out_dir"] = f"runs/{task_name}_{policy['name']}_{time.strftime('%Y%m%d-%H%M%S')}"
    plain["trainer"] = trainer_dict
    task = build_config(TaskConfig, plain.get("task"), where="task")
    trainer = build_config(TrainerConfig, trainer_dict, where="trainer")
    return task, str(policy["name"]), dict(policy.get("config") or {}), trainer, plain


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `robopolicy train`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(HELP)
        return 0
    try:
        cfg = compose(argv)
    except Exception as e:  # hydra names the bad key or group option
        print(f"error: {e}\nSee `robopolicy train --help`; config groups are in {config_dir()}.", file=sys.stderr)
        return 2
    from robopolicy.policies.registry import ConfigError
    from robopolicy.train import DataConfigError, Trainer
    from robopolicy.train.checkpoint import CheckpointError

    try:
        task, policy_name, policy_cfg, trainer_cfg, plain = build(cfg)
        trainer = Trainer(task, policy_name, policy_cfg, trainer_cfg, run_config=plain)
    except (ConfigError, DataConfigError, CheckpointError, KeyError, ValueError, ImportError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    result = trainer.fit()
    if _is_main_process():
        shown = {k: v for k, v in result.metrics.items() if k in ("train/loss", "val/loss", "eval/success_rate",
                                                                  "eval/score_mean")}
        print(f"trained {result.step} steps -> {result.out_dir}")
        print("  " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        print(f"  last checkpoint  {result.last}")
        if result.best is not None:
            print(f"  best checkpoint  {result.best}")
        print(f"  tensorboard      tensorboard --logdir {result.out_dir / 'tb'}")
        try:
            from robopolicy.train.curves import plot_training_curves

            print(f"  curves           {plot_training_curves(result.out_dir)}")
        except (OSError, ValueError) as e:  # a plot is a convenience: never fail a finished run over it
            print(f"  curves           not drawn ({e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

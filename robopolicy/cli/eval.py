"""`robopolicy eval`: evaluate the scripted expert or a trained checkpoint on a sim task.

Thin layer: compose configs/eval.yaml with hydra, build the agent, call robopolicy.eval.evaluate.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from robopolicy.cli.config import compose_config, to_plain

HELP = """\
usage: robopolicy eval [key=value ...]

Evaluate an agent on a simulated task over seeded episodes in parallel worker processes, and write
eval.json, rollouts.mp4 (a few successes and failures) and summary.png into `out`.

  task=NAME           sim task (list them with `robopolicy sim list`), default pusht
  agent=expert        the task's scripted expert (default)
  checkpoint=PATH     evaluate a trained checkpoint (robopolicy.load) instead of the expert
  +inference.KEY=V    the head's inference settings, without retraining, e.g. for a diffusion checkpoint
                      +inference.scheduler=ddim +inference.num_inference_steps=10, for a flow checkpoint
                      +inference.num_inference_steps=1
  quantize=int8       int8 UNet weights for CPU inference (default: fp32)
  episodes=50         number of episodes; episode i uses seed + i
  seed=100000         first episode seed
  workers=2           env worker processes (1 = in-process)
  obs_mode=MODE       state | pixels | both (default: what the agent asks for / the task's default)
  image_size=96       camera size, int or [H,W]
  max_steps=N         cap on episode length (default: the task's limit)
  stop_on_success=true  end an episode at its first success
  videos=2            episodes per outcome in the video (0: no video)
  out=DIR             report directory (default results/eval/<task>_<agent>_<time>)
  context=spawn       worker start method (spawn | forkserver)
  num_threads=N       torch threads for the policy (default: torch's, one per core); 1 when other jobs
                      share the cores, where spinning thread pools slow every job down several times
  progress=true       progress bar

Defaults live in configs/eval.yaml. Example:
  robopolicy eval task=pusht episodes=50 workers=2 agent=expert out=results/eval/pusht_expert
"""

# Keys the CLI takes as plain values even if a hydra config group of the same name exists
# (configs/task/ describes training tasks; here `task` is a sim registry name).
PLAIN_KEYS = ("task",)




def _build_agent(cfg: Any) -> Any:
    if cfg.checkpoint:
        import robopolicy

        inference = to_plain(cfg.inference) or {}
        try:
            return robopolicy.load(cfg.checkpoint, quantize=cfg.quantize, **inference)
        except Exception as e:  # missing files, bad config, CheckpointError: name the checkpoint
            raise SystemExit(f"error: cannot load checkpoint {cfg.checkpoint}: {e}") from e
    if cfg.agent == "expert":
        from robopolicy.agent import ExpertAgent

        return ExpertAgent(cfg.task)
    raise SystemExit(f"error: unknown agent={cfg.agent!r}; use agent=expert or checkpoint=PATH")


def _print_summary(result: Any) -> None:
    s = result.summary
    lo, hi = s["success_ci95"]
    print(f"task {result.config['task']} | agent {result.config['agent']} | {s['n_episodes']} episodes "
          f"| {result.config['n_workers']} workers | {s['wall_s']:.1f} s")
    print(f"  success        {s['success_rate']:.1%}  (Wilson 95% CI {lo:.1%} - {hi:.1%}, "
          f"{s['n_success']}/{s['n_episodes']})")
    print(f"  score          {s['score_mean']:.3f} +- {s['score_std']:.3f}")
    print(f"  episode length {s['length_mean']:.1f}")
    print(f"  latency/call   median {s['latency_ms_median']:.2f} ms, p95 {s['latency_ms_p95']:.2f} ms "
          f"({s['n_agent_calls']} calls)")
    print(f"  NFE/action     {s['nfe_per_action']:.2f}")
    if s["n_errors"]:
        print(f"  env errors     {s['n_errors']} episodes (tracebacks in eval.json)")
    for name, path in result.paths.items():
        print(f"  {name:<14} {path}")


def _task_config_hint(name: str) -> str:
    """When `name` is a training task config (configs/task/NAME.yaml, what `train` / `finetune` take), say
    which sim task it runs on: eval takes the sim name, and a checkpoint brings its own env_kwargs."""
    from omegaconf import OmegaConf

    from robopolicy.cli.config import config_dir

    path = config_dir() / "task" / f"{name}.yaml"
    if not path.is_file():
        return ""
    env = OmegaConf.load(path).get("env")
    return (f"\n'{name}' is a training task config (configs/task/{name}.yaml); its sim task is '{env}': use "
            f"task={env} (the checkpoint brings the env_kwargs it was trained with)") if env else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of `robopolicy eval`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(HELP)
        return 0
    try:
        cfg = compose_config("eval", argv, PLAIN_KEYS)
    except Exception as e:  # hydra's messages name the bad key; add how to see the valid ones
        print(f"error: {e}\nSee `robopolicy eval --help` for the options.", file=sys.stderr)
        return 2
    from robopolicy.eval import evaluate
    from sim.registry import get_task

    try:
        get_task(cfg.task)
    except (KeyError, ImportError) as e:
        print(f"error: {e.args[0] if e.args else e}{_task_config_hint(cfg.task)}", file=sys.stderr)
        return 2
    if cfg.num_threads is not None:
        if not str(cfg.num_threads).isdigit() or int(cfg.num_threads) < 1:
            print(f"error: num_threads must be an integer >= 1, got {cfg.num_threads!r}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(int(cfg.num_threads))
    try:
        agent = _build_agent(cfg)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    env_kwargs: dict[str, Any] = {}
    if cfg.obs_mode is not None:
        env_kwargs["obs_mode"] = cfg.obs_mode
    if cfg.image_size is not None:
        size = to_plain(cfg.image_size)
        env_kwargs["image_size"] = (size, size) if isinstance(size, int) else tuple(size)
    agent_name = "checkpoint" if cfg.checkpoint else str(cfg.agent)
    out = cfg.out or f"results/eval/{cfg.task}_{agent_name}_{time.strftime('%Y%m%d-%H%M%S')}"
    result = evaluate(agent, cfg.task, n_episodes=int(cfg.episodes), seed=int(cfg.seed),
                      n_workers=int(cfg.workers), env_kwargs=env_kwargs, max_episode_steps=cfg.max_steps,
                      stop_on_success=bool(cfg.stop_on_success), videos_per_outcome=int(cfg.videos),
                      out_dir=out, context=str(cfg.context), progress=bool(cfg.progress))
    _print_summary(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

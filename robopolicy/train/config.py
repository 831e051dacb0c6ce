"""Typed settings of an imitation-training run. The library takes these objects; only cli/train.py reads hydra.

Defaults follow Diffusion Policy's training workspaces (AdamW 1e-4, betas (0.95, 0.999), wd 1e-6, cosine
schedule with 500 warm-up steps, EMA power 0.75 up to 0.9999); configs/train.yaml documents each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskConfig:
    """What to learn from and where to evaluate: the episode store, the windows, the sim task."""

    store: str
    name: str = ""
    obs_keys: list[str] = field(default_factory=lambda: ["state"])
    action_key: str = "action"
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    val_ratio: float = 0.1
    split_seed: int = 0
    max_train_episodes: int | None = None
    image_crop: list[int] | None = None  # dataset-side random crop (H, W); most image encoders crop themselves
    env: str | None = None  # sim registry task for periodic evaluation (None: no sim evaluation)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # what the env must produce (obs_mode, image_size)
    max_episode_steps: int | None = None  # cap during evaluation; None: the task's limit
    language: bool = False  # condition on the episode's instruction (obs["language"]; language-capable heads)
    # Draw the windows whose present is one of an episode's first `start_window_steps` steps
    # `start_window_repeat` times per epoch (1: off). For instructions that decide only the start of an episode.
    start_window_steps: int = 0
    start_window_repeat: int = 1


@dataclass
class TrainerConfig:
    """Optimisation, EMA, logging, validation/evaluation and checkpoint cadence."""

    steps: int = 10_000
    batch_size: int = 64  # per process; the global batch is batch_size * number of processes
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-6
    lr_scheduler: str = "cosine"  # any diffusers.optimization scheduler name (cosine, linear, constant, ...)
    warmup_steps: int = 500
    ema: bool = True
    ema_power: float = 0.75
    ema_min_decay: float = 0.0
    ema_max_decay: float = 0.9999
    grad_clip: float | None = 10.0  # max global grad norm; None disables
    amp: bool = False  # bf16 autocast on CPU, fp16 with loss scaling on CUDA
    # torch.compile the loss (forward + backward): fuses the UNet's Mish / GroupNorm / elementwise ops. Costs
    # 1-4 minutes of compilation at the start, pays off on runs of more than a few thousand steps (docs/results.md).
    compile: bool = False
    cpu: bool = False  # force the CPU even when a GPU is visible
    val_every: int = 500  # steps between validation losses; 0 disables
    val_batches: int = 8  # batches of the val split per validation (0: the whole split)
    eval_every: int = 0  # steps between sim evaluations; 0 disables
    eval_episodes: int = 20
    eval_seed: int = 100_000
    eval_workers: int = 1
    eval_videos: int = 0  # episodes per outcome kept as video at each evaluation
    checkpoint_every: int = 1000  # steps between last/ checkpoints (one is always written at the end)
    best_metric: str = "auto"  # success_rate | score_mean | val_loss | auto (success_rate if eval is on)
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/train"
    num_workers: int = 0  # DataLoader worker processes
    num_threads: int | None = None  # torch intra-op threads per process; None: torch's default
    resume: bool | str = False  # true: continue from out_dir/last; a path: continue from that checkpoint
    init_weights: str | None = None  # a checkpoint whose same-named, same-shaped tensors start a fresh run
    progress: bool = True
    max_wall_s: float | None = None  # stop (and write last/) once this much wall time has passed; None: no limit
    ddp_find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        checks = {
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0, "val_every": self.val_every >= 0,
            "eval_every": self.eval_every >= 0, "checkpoint_every": self.checkpoint_every >= 0,
            "log_every": self.log_every >= 1, "num_workers": self.num_workers >= 0,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
            "eval_episodes": self.eval_episodes >= 1,
            "max_wall_s": self.max_wall_s is None or self.max_wall_s > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"trainer settings out of range: {', '.join(f'{k}={getattr(self, k)}' for k in bad)}")
        if self.best_metric not in ("auto", "success_rate", "score_mean", "val_loss"):
            raise ValueError(f"best_metric must be auto|success_rate|score_mean|val_loss, got {self.best_metric!r}")

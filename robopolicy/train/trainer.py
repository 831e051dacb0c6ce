"""The imitation trainer: data -> normalizer -> policy -> AdamW + cosine warm-up + EMA, under accelerate.

`Trainer(...)` checks everything it can before touching data (policy name and config keys, obs keys
against the store, the head's own `validate_config`, the eval task); `fit()` then trains. One process or
several (`accelerate launch`): accelerate wraps the model, optimizer and dataloader; only the main
process writes logs and checkpoints.

Exact resume: `last/train_state/` holds the raw weights, optimizer, scheduler, EMA counters, the data
position (epoch, batch) and every process's RNG states, saved at step boundaries. Validation and sim
evaluation run with isolated RNGs, so they do not shift the training noise.

Multi-stage heads (`training_stages`, e.g. CARP): staging.py. Resume source, best/ choice and the collective
save: run_checkpoints.py.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robopolicy.policies.registry import (
    PolicyConfigError,
    build_config,
    get_policy_class,
    validate_policy_config,
)
from robopolicy.train import checkpoint as ckpt
from robopolicy.train.config import TaskConfig, TrainerConfig
from robopolicy.train.data import (
    check_start_window,
    make_datasets,
    make_loader,
    open_store,
    spec_from_store,
    start_window_pool,
)
from robopolicy.train.ema import EMA
from robopolicy.train.evaluation import instruction_gap, normalize_batch, sim_evaluation, validation_loss
from robopolicy.train.monitor import TrainMonitor
from robopolicy.train.optim import make_lr_scheduler, make_optimizer
from robopolicy.train.run_checkpoints import (
    best_candidate,
    check_resume_source,
    init_weights_from,
    resume_path,
    save_collectively,
)
from robopolicy.train.staging import StagedTraining

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    last: Path | None
    best: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of every step of this run


class _LossModule(nn.Module):
    """Routes `forward` to `compute_loss`, so DDP's forward hooks (gradient sync) see the loss call."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.policy.compute_loss(batch)


class Trainer:
    """One training run. Construction validates the configuration; `fit()` trains."""

    def __init__(self, task: TaskConfig, policy_name: str, policy_cfg: dict[str, Any] | None, cfg: TrainerConfig,
                 run_config: dict[str, Any] | None = None):
        self.task, self.policy_name, self.cfg = task, policy_name, cfg
        self.policy_cfg_dict = dict(policy_cfg or {})
        # ---- cheap checks first: nothing below reads the data or builds a network
        self.policy_cls = get_policy_class(policy_name)
        self.policy_config = build_config(self.policy_cls.Config, self.policy_cfg_dict, where=f"policy '{policy_name}'")
        self.store = open_store(task)
        self.spec = spec_from_store(task, self.store)
        validate_policy_config(self.policy_cls, self.spec, self.policy_config)
        self._check_constructible()
        check_start_window(task.start_window_steps, task.start_window_repeat)  # before any data is read
        if cfg.eval_every and not task.env:
            raise ValueError("trainer.eval_every > 0 needs task.env (the sim task to evaluate on); set eval_every=0 "
                             "to train without sim evaluation")
        if task.env:
            from sim.registry import get_task

            get_task(task.env)  # unknown task names fail here, not after hours of training
        self.out_dir = Path(cfg.out_dir)
        self.resume_from = resume_path(self.out_dir, cfg.resume)
        self._git_revision = ckpt.git_revision()
        self.run_config = run_config or {
            "task": dataclasses.asdict(task), "policy": {"name": policy_name, "config": self.policy_cfg_dict},
            "trainer": dataclasses.asdict(cfg)}

    def _check_constructible(self) -> None:
        """Build the head on the meta device (no memory, no compute) so config errors surface now."""
        try:
            with torch.device("meta"):
                self.policy_cls(self.spec, self.policy_config)
        except (ValueError, KeyError) as e:
            msg = e.args[0] if e.args else str(e)
            raise PolicyConfigError(f"policy '{self.policy_name}' cannot be built for this task: {msg}") from e
        except Exception as e:  # some constructors need real tensors; the real build in _setup will tell
            log.debug("meta-device construction of %s skipped: %s", self.policy_cls.__name__, e)

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed

        cfg = self.cfg
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        _reset_accelerate_singletons()
        use_cuda = torch.cuda.is_available() and not cfg.cpu
        mixed = ("fp16" if use_cuda else "bf16") if cfg.amp else "no"
        self.acc = Accelerator(cpu=cfg.cpu, mixed_precision=mixed, kwargs_handlers=[
            # A staged head leaves some parameters out of each stage's graph: DDP must allow that.
            DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters
                                          or hasattr(self.policy_cls, "training_stages")),
            # The other processes wait at a barrier while the main one runs a sim evaluation: allow long ones.
            InitProcessGroupKwargs(timeout=timedelta(hours=2))])
        acc = self.acc
        self.is_main = acc.is_main_process
        set_seed(cfg.seed)  # same initial weights on every process
        self.train_ds, self.val_ds = make_datasets(self.task, self.store)
        self.normalizer = self.train_ds.get_normalizer().to(acc.device)
        self.policy = self.policy_cls(self.spec, self.policy_config)
        fit_actions = getattr(self.policy, "fit_action_statistics", None)
        if fit_actions is not None:  # heads with data-fitted action tokens (discrete diffusion's quantile bins)
            actions = torch.from_numpy(self.train_ds.lowdim_frames(self.task.action_key)).to(acc.device)
            fit_actions(self.normalizer[self.task.action_key](actions))
        if cfg.init_weights and self.resume_from is None:  # a resumed run has its own weights
            init_weights_from(self.policy, cfg.init_weights)
        self.ema = EMA(self.policy, cfg.ema_power, cfg.ema_min_decay, cfg.ema_max_decay) if cfg.ema else None
        self.staging = StagedTraining.of(self.policy, cfg.steps)
        if self.staging is not None:
            self.optimizer, self.scheduler = self.staging.make_optimizer(0, self.policy, self.ema, cfg)
        else:
            self.optimizer = make_optimizer(self.policy, cfg)
            self.scheduler = make_lr_scheduler(self.optimizer, cfg)
        world = acc.num_processes
        pool = start_window_pool(self.train_ds, self.task.start_window_steps, self.task.start_window_repeat)
        drop_last = len(pool) >= cfg.batch_size * world
        self.train_loader = make_loader(self.train_ds, cfg.batch_size, cfg.seed, cfg.num_workers, True, drop_last, pool)
        self._loader_generator = self.train_loader.generator
        self._sampler = self.train_loader.sampler
        self.loss_module, self.optimizer, self.train_loader = acc.prepare(
            _LossModule(self.policy), self.optimizer, self.train_loader)
        self._loss_call = self.loss_module
        if cfg.compile:
            import torch._dynamo as dynamo

            # A head whose loss dynamo cannot trace (e.g. torch.func.jvp) runs that part eagerly instead of failing.
            dynamo.config.suppress_errors = True
            self._loss_call = torch.compile(self.loss_module)  # wraps the call only: state dicts keep their keys
        self.val_loader = (make_loader(self.val_ds, cfg.batch_size, cfg.seed, 0, False, False)
                           if self.val_ds is not None else None)
        if self.ema is not None:
            self.ema.averaged.to(acc.device)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_value: tuple[float, ...] | None = None
        self.metrics: dict[str, float] = {}
        set_seed(cfg.seed + 1 + acc.process_index)  # distinct training noise on every process
        if self.resume_from is not None:
            self._load_resume_state(self.resume_from)

    def _load_resume_state(self, path: Path) -> None:
        from safetensors.torch import load_model

        check_resume_source(path, self.run_config, self.train_ds.fingerprint)
        state, rng = ckpt.load_train_state(path, self.policy, self.acc.process_index)
        if self.ema is not None:
            load_model(self.ema.averaged, str(path / ckpt.MODEL_FILE))
            self.ema.load_state_dict(state["ema"])
        same_stage = True
        if self.staging is not None:
            index, same_stage = self.staging.resume_index(state, path)  # not same: saved at a stage's end
            self._enter_stage(index, fresh=not same_stage)
        if same_stage:
            self._raw_optimizer().load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        if self.acc.scaler is not None and state.get("scaler") is not None:
            self.acc.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        if int(state.get("world_size", 1)) != self.acc.num_processes:
            log.warning("resuming a %s-process run with %d processes: the data order within the current epoch "
                        "shifts, so the run is not an exact continuation", state.get("world_size"),
                        self.acc.num_processes)
        self.best_value = tuple(state["best_value"]) if state.get("best_value") is not None else None
        self.metrics = dict(state.get("metrics", {}))
        if rng is not None:
            ckpt.restore_rng_state(rng)
        elif self.acc.num_processes > 1:
            log.warning("no RNG state for process %d in %s: its noise stream restarts", self.acc.process_index, path)

    # ------------------------------------------------------------------------------------------ stages
    def _enter_stage(self, index: int, fresh: bool) -> None:
        """Switch to stage `index`; `fresh` (a stage starting now, not a resume inside it) also fixes the
        parameters it does not train at their EMA values, restarts the EMA warm-up and the best/ record."""
        if fresh and self.ema is not None:
            self.staging.fix_untrained(index, self.policy, self.ema)
        if fresh:
            self.best_value = None  # an earlier stage's best is not a policy of this one
        optimizer, self.scheduler = self.staging.make_optimizer(index, self.policy, self.ema, self.cfg)
        self.optimizer = self.acc.prepare(optimizer)
        self.staging.index = index

    def _advance_stage(self, monitor: TrainMonitor) -> None:
        index = self.staging.index_at(self.step)
        if index != self.staging.index:
            self._enter_stage(index, fresh=True)
            stage = self.staging.stages[index]
            monitor.message(f"step {self.step}: training stage '{stage.name}' ({stage.steps} steps)")

    @property
    def _in_final_stage(self) -> bool:
        return self.staging is None or self.staging.is_final

    def _raw_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's AcceleratedOptimizer wraps it

    # ------------------------------------------------------------------------------------------ loop
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until `trainer.steps` (or `stop_at`, which also writes last/: for budgeted jobs and tests)."""
        self._setup()
        acc, cfg = self.acc, self.cfg
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        monitor = TrainMonitor(self.out_dir, cfg.steps, self.step, enabled=self.is_main, progress=cfg.progress)
        if self.is_main:
            self._write_run_files()
            if self.resume_from is not None:
                monitor.message(f"resumed from {self.resume_from} at step {self.step}")
        losses: list[tuple[int, float]] = []
        window: list[float] = []
        n_batches = len(self.train_loader)
        deadline = None if cfg.max_wall_s is None else time.monotonic() + cfg.max_wall_s
        try:
            while self.step < end:
                self._start_epoch()
                for batch in self.train_loader:
                    if self.staging is not None:
                        self._advance_stage(monitor)
                    out = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    loss = float(out["loss"])
                    losses.append((self.step, loss))
                    window.append(loss)
                    if self.batch_in_epoch >= n_batches:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if deadline is not None and self._out_of_time(deadline):
                        monitor.message(f"step {self.step}: trainer.max_wall_s={cfg.max_wall_s:g} reached; stopping")
                        end = self.step
                    if self.step % cfg.log_every == 0 or self.step == end:
                        self._log_train(monitor, window, out)
                        window = []
                    monitor.advance(1, loss=loss, lr=self.scheduler.get_last_lr()[0])
                    self._periodic(monitor, final=self.step >= end)
                    if self.step >= end or self.batch_in_epoch == 0:
                        break
        finally:
            monitor.close()
        acc.wait_for_everyone()
        best = self.out_dir / "best"
        return TrainResult(self.out_dir, self.step, self.out_dir / "last", best if best.exists() else None,
                           dict(self.metrics), losses)

    def _out_of_time(self, deadline: float) -> bool:
        late = time.monotonic() >= deadline
        if self.acc.num_processes == 1:
            return late
        # Every process must stop at the same step: agree (max over processes) at log steps only, so the
        # check costs no collective on other steps.
        if self.step % self.cfg.log_every != 0:
            return False
        flag = self.acc.reduce(torch.tensor(float(late), device=self.acc.device), reduction="max")
        return bool(flag.item())

    def _start_epoch(self) -> None:
        self._sampler.set_epoch(self.epoch)
        self._sampler_skip(self.batch_in_epoch * self.cfg.batch_size * self.acc.num_processes)
        self.train_loader.set_epoch(self.epoch)
        self._loader_generator.manual_seed(self.cfg.seed * 100_003 + self.epoch)  # worker seeds per epoch

    def _sampler_skip(self, n: int) -> None:
        self._sampler.skip = (self.epoch, n)

    def _train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        acc, cfg = self.acc, self.cfg
        self.loss_module.train()
        batch = normalize_batch(batch, self.normalizer, self.task.action_key)
        with acc.autocast():
            out = self._loss_call(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step + 1}; lower trainer.lr or turn "
                                     "on trainer.grad_clip")
        acc.backward(loss)
        grad_norm = None
        if cfg.grad_clip is not None and acc.sync_gradients:
            grad_norm = acc.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.policy)
        out = {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm.detach() if isinstance(grad_norm, torch.Tensor) else torch.tensor(grad_norm)
        return out

    def _log_train(self, monitor: TrainMonitor, window: list[float], out: dict[str, torch.Tensor]) -> None:
        mean = torch.tensor(sum(window) / max(len(window), 1), device=self.acc.device)
        mean = float(self.acc.reduce(mean, reduction="mean")) if self.acc.num_processes > 1 else float(mean)
        metrics = {"train/loss": mean, "train/lr": self.scheduler.get_last_lr()[0], "train/epoch": float(self.epoch)}
        metrics.update({f"train/{k}": float(v) for k, v in out.items() if k != "loss"})
        if self.ema is not None:
            metrics["train/ema_decay"] = self.ema.decay
        self.metrics.update(metrics)
        monitor.log(self.step, metrics)

    # ------------------------------------------------------------------------------------------ periodic work
    @property
    def eval_policy(self) -> nn.Module:
        return self.ema.averaged if self.ema is not None else self.policy

    def _periodic(self, monitor: TrainMonitor, final: bool) -> None:
        cfg, step = self.cfg, self.step
        new: dict[str, float] = {}
        if self.val_loader is not None and cfg.val_every and (step % cfg.val_every == 0 or final):
            if self.is_main:
                new["val/loss"] = validation_loss(self.eval_policy, self.val_loader, self.normalizer,
                                                  self.task.action_key, self.acc.device, cfg.val_batches, cfg.seed)
                if self.task.language:  # does the head read the instruction at all? (docs/results.md, VLA)
                    gap = instruction_gap(self.eval_policy, self.val_loader, self.normalizer, self.task.action_key,
                                          self.acc.device, cfg.val_batches, cfg.seed)
                    if gap is not None:
                        new["val/instruction_gap"] = gap
        if cfg.eval_every and (step % cfg.eval_every == 0 or final) and self._in_final_stage:
            if self.is_main:
                new.update(sim_evaluation(self.eval_policy, self.normalizer, self.task, cfg, self.acc.device,
                                          self.out_dir / "eval" / f"step_{step:07d}"))
            self.acc.wait_for_everyone()
        if new:
            self.metrics.update(new)
            monitor.log(step, new)
            monitor.message(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in new.items()))
        improved = (best_candidate(new, self.best_value, cfg.best_metric, cfg.eval_every, self.val_loader is not None,
                                   self.acc, self.is_main) if self._in_final_stage else None)
        if improved is not None:
            self.best_value = improved
            self._save(self.out_dir / "best", with_train_state=False)
        if final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            self._save(self.out_dir / "last", with_train_state=True)

    def _save(self, final: Path, with_train_state: bool) -> None:
        """Write best/ (weights only) or last/ (with the train state); every process must call it."""
        acc = self.acc

        def write(tmp: Path) -> None:  # main process only
            ckpt.write_model_files(tmp, self.eval_policy, self.normalizer.cpu(), self.run_config, self._meta())
            self.normalizer.to(acc.device)
            if with_train_state:
                ckpt.write_train_state(tmp, self.policy, {
                    "step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch,
                    "optimizer": self._raw_optimizer().state_dict(), "scheduler": self.scheduler.state_dict(),
                    "ema": self.ema.state_dict() if self.ema is not None else None,
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                    "best_value": list(self.best_value) if self.best_value is not None else None,
                    "metrics": self.metrics, "world_size": acc.num_processes, **self._stage_state(),
                })
            else:
                shutil.rmtree(tmp / ckpt.TRAIN_STATE_DIR)

        save_collectively(acc, final, self.is_main, write, with_train_state)

    def _meta(self) -> dict[str, Any]:
        return {
            "policy": self.policy_name,
            "policy_class": f"{self.policy_cls.__module__}:{self.policy_cls.__qualname__}",
            "spec": self.spec.to_json(),
            "dataset": {"path": str(self.store.path), "fingerprint": self.train_ds.fingerprint,
                        "n_episodes": int(self.store.n_episodes), "n_train_windows": len(self.train_ds),
                        "n_val_windows": len(self.val_ds) if self.val_ds is not None else 0},
            "git_revision": self._git_revision, "step": self.step, "epoch": self.epoch,
            "metrics": dict(self.metrics), "ema": self.ema is not None, "world_size": self.acc.num_processes,
            "torch": torch.__version__, **self._stage_state(),
        }

    def _stage_state(self) -> dict[str, Any]:
        return self.staging.record() if self.staging is not None else {}

    def _write_run_files(self) -> None:
        from omegaconf import OmegaConf

        self.out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(ckpt._plain(self.run_config)), self.out_dir / "config.yaml")


def train(task: TaskConfig, policy_name: str, policy_cfg: dict[str, Any] | None, cfg: TrainerConfig,
          run_config: dict[str, Any] | None = None, stop_at: int | None = None) -> TrainResult:
    """Validate the configuration, then train; see `Trainer`."""
    return Trainer(task, policy_name, policy_cfg, cfg, run_config).fit(stop_at=stop_at)


def _reset_accelerate_singletons() -> None:
    """Let one process run several trainings with different settings (tests, sweeps).

    accelerate keeps its state in process-wide singletons that refuse a second, different configuration;
    outside a distributed launch nothing else depends on them, so they are cleared before each run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

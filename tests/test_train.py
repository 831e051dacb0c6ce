"""Trainer: a short run learns and writes last/ + best/, bad configs fail before training, the CLI, accelerate."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import ACTION_HIGH, ACTION_LOW, make_store  # noqa: E402

from robopolicy.policies.base import PolicySpec  # noqa: E402
from robopolicy.policies.registry import POLICIES, ConfigError, make_policy  # noqa: E402
from robopolicy.train import DataConfigError, TaskConfig, Trainer, TrainerConfig, train  # noqa: E402
from robopolicy.train.checkpoint import REQUIRED_FILES  # noqa: E402
from robopolicy.train.ema import EMA  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory, _few_threads) -> Path:
    return make_store(tmp_path_factory.mktemp("train") / "s.zarr")


def _task(store: Path, **kw) -> TaskConfig:
    return TaskConfig(store=str(store), obs_keys=["state"], n_obs_steps=2, horizon=8, n_action_steps=4, **kw)


def _cfg(out: Path, **kw) -> TrainerConfig:
    base = dict(steps=60, batch_size=16, lr=1e-3, warmup_steps=5, val_every=20, checkpoint_every=30, log_every=5,
                out_dir=str(out), progress=False)
    base.update(kw)
    return TrainerConfig(**base)


def test_short_run_reduces_loss_and_writes_checkpoints(store, tmp_path):
    result = train(_task(store), "test_mlp", {}, _cfg(tmp_path / "run"))
    losses = [loss for _, loss in result.losses]
    assert result.step == 60 and len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    for name in ("last", "best"):
        for f in REQUIRED_FILES:
            assert (tmp_path / "run" / name / f).is_file(), f"{name}/{f}"
    assert (tmp_path / "run" / "last" / "train_state" / "trainer.pt").is_file()
    assert not (tmp_path / "run" / "best" / "train_state").exists()
    assert not list((tmp_path / "run").glob(".*"))  # no staging directories left behind
    meta = json.loads((tmp_path / "run" / "last" / "meta.json").read_text())
    assert meta["step"] == 60 and meta["policy"] == "test_mlp"
    assert meta["spec"]["obs_shapes"] == {"state": [4]} and meta["spec"]["action_dim"] == 2
    assert len(meta["dataset"]["fingerprint"]) == 40 and "git_revision" in meta
    assert "val/loss" in meta["metrics"] and "train/loss" in meta["metrics"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 60
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_amp_bf16_on_cpu_trains(store, tmp_path):
    result = train(_task(store), "test_mlp", {}, _cfg(tmp_path / "amp", steps=10, amp=True, val_every=5))
    assert all(np.isfinite(loss) for _, loss in result.losses) and (tmp_path / "amp" / "best").is_dir()


def test_compiled_loss_trains_and_checkpoints_keep_their_keys(store, tmp_path):
    eager = train(_task(store), "test_mlp", {}, _cfg(tmp_path / "eager", steps=60, val_every=0))
    compiled = train(_task(store), "test_mlp", {}, _cfg(tmp_path / "compiled", steps=60, val_every=0, compile=True))
    # inductor draws its own random numbers, so the losses are not bitwise those of the eager run; they must
    # fall like them
    e, c = (np.array([v for _, v in r.losses]) for r in (eager, compiled))
    assert c[-10:].mean() < 0.7 * c[:10].mean()
    assert abs(c[-10:].mean() - e[-10:].mean()) < 0.2 * e[-10:].mean()
    from safetensors.torch import load_file

    keys = {name: set(load_file(str(tmp_path / name / "last" / "model.safetensors"))) for name in ("eager", "compiled")}
    assert keys["compiled"] == keys["eager"] and not any("_orig_mod" in k for k in keys["compiled"])


def test_wall_budget_stops_early_and_writes_last(store, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import robopolicy.train.trainer as trainer_mod

    clock = iter(range(0, 10**6, 10))  # every monotonic() call in the trainer advances 10 s; the budget is 45 s
    monkeypatch.setattr(trainer_mod, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    result = train(_task(store), "test_mlp", {}, _cfg(tmp_path / "w", steps=60, max_wall_s=45.0, val_every=0))
    assert 1 <= result.step < 10
    meta = json.loads((tmp_path / "w" / "last" / "meta.json").read_text())
    assert meta["step"] == result.step


def test_resume_with_another_policy_config_is_refused(store, tmp_path):
    train(_task(store), "test_mlp", {}, _cfg(tmp_path / "r", steps=4, val_every=0, checkpoint_every=0))
    with pytest.raises(ConfigError, match="cannot resume"):
        Trainer(_task(store), "test_mlp", {"hidden": 8}, _cfg(tmp_path / "r", steps=8, resume=True)).fit()


def test_ema_schedule_matches_diffusion_policy():
    ema = EMA(torch.nn.Linear(2, 2))
    # DP's EMAModel: decay 0 for the first two updates, then 1 - (1 + k)^-0.75, capped at 0.9999.
    assert [ema.decay_at(n) for n in (0, 1)] == [0.0, 0.0]
    assert ema.decay_at(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema.decay_at(10**7) == 0.9999
    src = torch.nn.Linear(2, 2)
    ema.update(src)
    assert torch.equal(ema.averaged.weight, src.weight)


# --------------------------------------------------------------------------------------------- bad configs
def test_unknown_policy_config_key_is_named(store):
    spec = PolicySpec(obs_shapes={"state": (4,)}, action_dim=2, horizon=8, n_action_steps=4)
    with pytest.raises(ConfigError, match=r"hiden.*valid keys.*hidden"):
        make_policy("test_mlp", spec, {"hiden": 32})
    with pytest.raises(ConfigError, match="unknown key"):
        Trainer(_task(store), "test_mlp", {"hiden": 32}, _cfg(Path("unused")))


def test_unknown_policy_and_missing_module(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown policy 'nope'.*diffusion"):
        make_policy("nope", PolicySpec(obs_shapes={"state": (4,)}, action_dim=2), {})
    monkeypatch.setitem(POLICIES, "ghost", "robopolicy.policies.ghost_head:GhostPolicy")
    with pytest.raises(ConfigError, match=r"robopolicy\.policies\.ghost_head"):
        make_policy("ghost", PolicySpec(obs_shapes={"state": (4,)}, action_dim=2), {})


def test_missing_obs_key_lists_the_store(store, tmp_path):
    with pytest.raises(DataConfigError, match=r"\['images/front'\].*holds: action \(2,\), state \(4,\)"):
        Trainer(TaskConfig(store=str(store), obs_keys=["images/front"]), "test_mlp", {}, _cfg(tmp_path))


def test_bad_horizon_from_validate_config(store, tmp_path):
    task = TaskConfig(store=str(store), obs_keys=["state"], n_obs_steps=2, horizon=10, n_action_steps=4)
    with pytest.raises(ConfigError, match="horizon 10 is not divisible by 4"):
        Trainer(task, "test_mlp", {}, _cfg(tmp_path))
    assert not (tmp_path / "last").exists()


def test_bad_horizon_for_the_diffusion_unet(store, tmp_path):
    pytest.importorskip("robopolicy.policies.diffusion")
    task = TaskConfig(store=str(store), obs_keys=["state"], n_obs_steps=2, horizon=10, n_action_steps=4)
    with pytest.raises(ConfigError, match=r"horizon 10 is not divisible.*down_dims"):
        Trainer(task, "diffusion", {"unet": {"down_dims": [16, 32, 64]}}, _cfg(tmp_path))


def test_missing_store_and_eval_without_env(tmp_path, store):
    with pytest.raises(DataConfigError, match="no episode store"):
        Trainer(_task(tmp_path / "missing.zarr"), "test_mlp", {}, _cfg(tmp_path))
    with pytest.raises(ValueError, match="task.env"):
        Trainer(_task(store), "test_mlp", {}, _cfg(tmp_path, eval_every=10))


# --------------------------------------------------------------------------------------------- CLI
def _cli(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from robopolicy.cli.train import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(args)
    return rc, out.getvalue() + err.getvalue()


def test_cli_unknown_keys_fail_before_training(store, tmp_path):
    rc, text = _cli([f"task.store={store}", "trainer.stepz=3", f"trainer.out_dir={tmp_path}/r"])
    assert rc == 2 and "stepz" in text
    rc, text = _cli([f"task.store={store}", "policy.config.bogus=1", f"trainer.out_dir={tmp_path}/r"])
    assert rc == 2 and "bogus" in text
    rc, text = _cli([f"task.store={store}", "task.obs_keys=[images/top]", f"trainer.out_dir={tmp_path}/r"])
    assert rc == 2 and "images/top" in text and "state (4,)" in text
    assert not (tmp_path / "r").exists()


def test_cli_trains_the_diffusion_head(store, tmp_path):
    pytest.importorskip("robopolicy.policies.diffusion")
    rc, text = _cli([
        "task=pusht", f"task.store={store}", "task.horizon=8", "task.n_action_steps=4", "policy=diffusion_cpu",
        "policy.config.unet.down_dims=[16,32]", "policy.config.unet.diffusion_step_embed_dim=16",
        "trainer.steps=4", "trainer.batch_size=8", "trainer.val_every=2", "trainer.checkpoint_every=2",
        "trainer.progress=false", f"trainer.out_dir={tmp_path}/run",
    ])
    assert rc == 0, text
    assert "best checkpoint" in text
    import robopolicy

    agent = robopolicy.load(tmp_path / "run" / "best", seed=0)
    assert agent.env_kwargs == {"obs_mode": "state"} and agent.nfe == 10
    actions = agent.act({"state": np.zeros((3, 2, 4), np.float32)})
    assert actions.shape == (3, 4, 2)
    # DDIM with clip_sample keeps the normalized chunk in [-1, 1]: raw actions stay in the data's range.
    assert actions.min() >= ACTION_LOW - 1e-4 and actions.max() <= ACTION_HIGH + 1e-4


# --------------------------------------------------------------------------------------------- accelerate
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHED = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from train_helpers import make_store  # registers test_mlp
from robopolicy.train import TaskConfig, TrainerConfig, Trainer
task = TaskConfig(store={store!r}, obs_keys=["state"], n_obs_steps=2, horizon=8, n_action_steps=4)
cfg = TrainerConfig(steps=30, batch_size=8, lr=1e-3, warmup_steps=2, val_every=10, checkpoint_every=15,
                    log_every=5, out_dir={out!r}, progress=False, cpu=True)
trainer = Trainer(task, "test_mlp", {{}}, cfg)
result = trainer.fit()
rank = trainer.acc.process_index
torch.save({{k: v.clone() for k, v in trainer.policy.state_dict().items()}}, {out!r} + f"/rank{{rank}}.pt")
torch.save([loss for _, loss in result.losses], {out!r} + f"/losses{{rank}}.pt")
"""


def test_accelerate_two_cpu_processes(store, tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(tests=str(Path(__file__).parent), store=str(store), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        # `accelerate launch --cpu` runs one process; --multi_gpu goes through torchrun and accelerate falls
        # back to gloo on the CPU (MULTI_CPU) when no GPU is visible or trainer.cpu is set.
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((out / "last" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 30
    assert {p.name for p in (out / "last" / "train_state").iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt"}
    w0, w1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # gradients were all-reduced: ranks stay identical
    l0, l1 = torch.load(out / "losses0.pt"), torch.load(out / "losses1.pt")
    assert l0 != l1  # each rank trained on its own shard of every global batch
    assert np.mean(l0[-5:]) < np.mean(l0[:5])


# --------------------------------------------------------------------------------------------- sim evaluation
def test_train_with_sim_eval_then_eval_cli_on_the_checkpoint(tmp_path):
    pytest.importorskip("sim.pusht")
    from robopolicy.cli.eval import main as eval_main
    from robopolicy.eval.demos import collect_demos

    store = tmp_path / "pusht.zarr"
    collect_demos("pusht", 3, store, obs_mode="state", image_size=None, progress=False)
    task = TaskConfig(store=str(store), obs_keys=["state"], n_obs_steps=2, horizon=8, n_action_steps=4,
                      val_ratio=0.0, env="pusht", env_kwargs={"obs_mode": "state"}, max_episode_steps=8)
    cfg = _cfg(tmp_path / "run", steps=20, eval_every=10, eval_episodes=2, val_every=0, checkpoint_every=0)
    result = train(task, "test_mlp", {}, cfg)
    assert {"eval/success_rate", "eval/score_mean"} <= set(result.metrics)
    meta = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
    assert "eval/success_rate" in meta["metrics"] and meta["step"] in (10, 20)
    assert (tmp_path / "run" / "eval" / "step_0000010" / "eval.json").is_file()

    rc = eval_main(["task=pusht", f"checkpoint={tmp_path / 'run' / 'best'}", "episodes=2", "workers=1",
                    "max_steps=8", "videos=0", f"out={tmp_path / 'eval'}", "progress=false"])
    assert rc == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(report["episodes"]) == 2


def test_start_window_options_enlarge_the_epoch(store, tmp_path):
    plain = Trainer(_task(store), "test_mlp", {}, _cfg(tmp_path / "a"))
    weighted = Trainer(_task(store, start_window_steps=2, start_window_repeat=3), "test_mlp", {}, _cfg(tmp_path / "b"))
    plain._setup()
    weighted._setup()
    n_episodes = int(plain.train_ds.episode_mask.sum())
    assert len(weighted._sampler) == len(plain._sampler) + 2 * 2 * n_episodes
    with pytest.raises(DataConfigError, match="start_window_repeat"):
        Trainer(_task(store, start_window_steps=2, start_window_repeat=0), "test_mlp", {}, _cfg(tmp_path / "c"))

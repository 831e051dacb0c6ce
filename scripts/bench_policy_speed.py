"""Our Diffusion Policy vs LeRobot's DiffusionPolicy at the same sizes, side by side in one run (issue [C]).

Measures, at equal network sizes and NFE, interleaving the two implementations so that load on the machine
hits both alike (medians over repetitions, ratios ours / LeRobot):
- inference latency at batch 1: one network evaluation and a DDIM-10 chunk (ours in fp32 and with int8 UNet
  weights, `robopolicy.load(path, quantize="int8")`);
- training throughput: samples/s of a full step (forward, backward, AdamW) at the given batch size; ours with
  the optimizer `robopolicy train` builds (fused AdamW), LeRobot's with torch's default AdamW as its trainer.

Configurations: `state` (Diffusion Policy's low-dim UNet, down_dims 256-512-1024, ~65 M parameters, PushT-like
state 2 + environment state 18), `image` (LeRobot's default UNet, 512-1024-2048, plus a GroupNorm ResNet-18 on one 96x96 camera with
an 84x84 crop, ~263 M parameters) and `cpu` (our CPU preset, down_dims 64-128-256, state only).

    python scripts/bench_policy_speed.py --configs state cpu image --reps 5 --out results/bench_policy_speed.json
    python scripts/bench_policy_speed.py --configs cpu --compile      # + our step with trainer.compile=true
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robopolicy.nn.conv1d import quantize_int8_
from robopolicy.nn.unet1d import UNetConfig
from robopolicy.nn.vision import ImageEncoderConfig
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.obs_conditioning import ObsEncoderConfig
from robopolicy.train.config import TrainerConfig
from robopolicy.train.optim import make_optimizer

HORIZON, N_OBS, N_ACT, ACTION_DIM, STATE_DIM, ENV_DIM = 16, 2, 8, 2, 2, 18


@dataclass
class BenchConfig:
    down_dims: tuple[int, ...]
    step_embed: int
    image: bool


CONFIGS = {
    "state": BenchConfig((256, 512, 1024), 256, image=False),
    "image": BenchConfig((512, 1024, 2048), 128, image=True),
    "cpu": BenchConfig((64, 128, 256), 64, image=False),
}


def build_ours(c: BenchConfig) -> DiffusionPolicy:
    shapes: dict[str, tuple[int, ...]] = {"state": (STATE_DIM,), "env_state": (ENV_DIM,)}
    if c.image:
        shapes = {"state": (STATE_DIM,), "images/top": (3, 96, 96)}
    spec = PolicySpec(obs_shapes=shapes, action_dim=ACTION_DIM, n_obs_steps=N_OBS, horizon=HORIZON,
                      n_action_steps=N_ACT)
    cfg = DiffusionPolicy.Config(
        unet=UNetConfig(down_dims=list(c.down_dims), diffusion_step_embed_dim=c.step_embed),
        obs=ObsEncoderConfig(image=ImageEncoderConfig(width=64, blocks_per_stage=[2, 2, 2, 2], num_keypoints=32,
                                                      crop_shape=[84, 84])),
        scheduler="ddim", num_inference_steps=10,
    )
    return DiffusionPolicy(spec, cfg)


def build_lerobot(c: BenchConfig):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusion

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))}
    if c.image:
        inputs["observation.images.top"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96))
    else:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(ENV_DIM,))
    cfg = DiffusionConfig(
        input_features=inputs, output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        n_obs_steps=N_OBS, horizon=HORIZON, n_action_steps=N_ACT, down_dims=c.down_dims,
        diffusion_step_embed_dim=c.step_embed, crop_shape=(84, 84), pretrained_backbone_weights=None,
        use_group_norm=True, noise_scheduler_type="DDIM", num_inference_steps=10, device="cpu",
    )
    return LeRobotDiffusion(cfg)


def batches(c: BenchConfig, b: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Matching inputs for both implementations (normalized data; LeRobot's normalization is a separate
    processor step in 0.6, so both models see the same tensors)."""
    g = torch.Generator().manual_seed(0)
    state = torch.rand(b, N_OBS, STATE_DIM, generator=g) * 2 - 1
    action = torch.rand(b, HORIZON, ACTION_DIM, generator=g) * 2 - 1
    ours: dict[str, Any] = {"state": state}
    theirs: dict[str, Any] = {"observation.state": state}
    if c.image:
        img = torch.rand(b, N_OBS, 3, 96, 96, generator=g)
        ours["images/top"] = img
        theirs["observation.images.top"] = img
    else:
        env = torch.rand(b, N_OBS, ENV_DIM, generator=g) * 2 - 1
        ours["env_state"] = env
        theirs["observation.environment_state"] = env
    pad = torch.zeros(b, HORIZON, dtype=torch.bool)
    return {"obs": ours, "action": action}, {**theirs, "action": action, "action_is_pad": pad}


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def bench_config(name: str, c: BenchConfig, reps: int, calls: int, train_batch: int, train_steps: int,
                 compile_: bool = False) -> dict:
    torch.manual_seed(0)
    ours, theirs = build_ours(c), build_lerobot(c)
    res: dict[str, Any] = {"params_ours": n_params(ours), "params_lerobot": n_params(theirs)}
    ob1, tb1 = batches(c, 1)
    # --- inference: eval mode, no grad
    ours.eval()
    theirs.eval()
    ours_q = copy.deepcopy(ours)
    quantize_int8_(ours_q)  # our int8 CPU inference mode (robopolicy.load(path, quantize="int8"))
    noise = torch.randn(1, HORIZON, ACTION_DIM)
    with torch.no_grad():
        cond_o = ours.obs_encoder(ob1["obs"])
        # LeRobot stacks the cameras into one key before its model (as its policy.forward does)
        tb = {**tb1, "observation.images": tb1["observation.images.top"].unsqueeze(2)} if c.image else tb1
        cond_t = theirs.diffusion._prepare_global_conditioning(tb)
        step = torch.tensor([50])
        keys = ("nfe_ours", "nfe_ours_int8", "nfe_lerobot", "chunk_ours", "chunk_ours_int8", "chunk_lerobot")
        lat: dict[str, list[float]] = {k: [] for k in keys}
        for _ in range(reps):
            lat["nfe_ours"] += timed(lambda: ours.model(noise, step, cond_o), calls)
            lat["nfe_ours_int8"] += timed(lambda: ours_q.model(noise, step, cond_o), calls)
            lat["nfe_lerobot"] += timed(lambda: theirs.diffusion.unet(noise, step, global_cond=cond_t), calls)
            lat["chunk_ours"] += timed(lambda: ours.predict_chunk(ob1["obs"], noise), max(1, calls // 3))
            lat["chunk_ours_int8"] += timed(lambda: ours_q.predict_chunk(ob1["obs"], noise), max(1, calls // 3))
            lat["chunk_lerobot"] += timed(lambda: theirs.diffusion.generate_actions(tb, noise=noise),
                                          max(1, calls // 3))
    for k, v in lat.items():
        res[f"{k}_ms_median"] = statistics.median(v)
    res["nfe_ratio"] = res["nfe_ours_ms_median"] / res["nfe_lerobot_ms_median"]
    res["chunk_ratio"] = res["chunk_ours_ms_median"] / res["chunk_lerobot_ms_median"]
    res["nfe_ratio_int8"] = res["nfe_ours_int8_ms_median"] / res["nfe_lerobot_ms_median"]
    res["chunk_ratio_int8"] = res["chunk_ours_int8_ms_median"] / res["chunk_lerobot_ms_median"]
    # --- training: a full step with AdamW
    if train_steps:
        obt, tbt = batches(c, train_batch)
        ours.train()
        theirs.train()
        opt_o = make_optimizer(ours, TrainerConfig(lr=1e-4))  # what `robopolicy train` uses (fused AdamW)
        opt_t = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

        def step_ours():
            loss = ours.compute_loss(obt)["loss"]
            opt_o.zero_grad(set_to_none=True)
            loss.backward()
            opt_o.step()

        def step_theirs():
            loss, _ = theirs.forward(dict(tbt))
            opt_t.zero_grad(set_to_none=True)
            loss.backward()
            opt_t.step()

        steps = {"ours": step_ours, "lerobot": step_theirs}
        if compile_:  # `robopolicy train trainer.compile=true`: the same weights, the loss call compiled
            ours_c = copy.deepcopy(ours)
            opt_c = make_optimizer(ours_c, TrainerConfig(lr=1e-4))
            loss_c = torch.compile(ours_c.compute_loss)

            def step_ours_compiled():
                loss = loss_c(obt)["loss"]
                opt_c.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()

            t0 = time.perf_counter()
            step_ours_compiled()
            step_ours_compiled()  # the backward graph compiles on the first call, re-specialisations after it
            res["compile_s"] = time.perf_counter() - t0
            steps["ours_compiled"] = step_ours_compiled
        for fn in steps.values():
            fn()  # warm-up (allocations, optimizer state)
        tr: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(max(1, reps // 2)):
            for k, fn in steps.items():
                tr[k] += timed(fn, train_steps)
        for k, v in tr.items():
            res[f"train_step_{k}_ms_median"] = statistics.median(v)
            res[f"train_samples_per_s_{k}"] = train_batch * 1e3 / statistics.median(v)
        res["train_speedup"] = res["train_samples_per_s_ours"] / res["train_samples_per_s_lerobot"]
        if compile_:
            res["train_speedup_compiled"] = res["train_samples_per_s_ours_compiled"] / res["train_samples_per_s_lerobot"]
        res["train_batch"] = train_batch
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["state", "cpu", "image"], choices=sorted(CONFIGS))
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians over all calls)")
    ap.add_argument("--calls", type=int, default=6, help="network evaluations per repetition")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=2, help="training steps per repetition (0: skip)")
    ap.add_argument("--compile", action="store_true",
                    help="also time our training step with the loss compiled (trainer.compile=true)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on a shared 2-core box)")
    ap.add_argument("--out", default="results/bench_policy_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "load_avg_start": os.getloadavg(), "args": vars(args), "configs": {},
    }
    for name in args.configs:
        t0 = time.time()
        r = bench_config(name, CONFIGS[name], args.reps, args.calls, args.train_batch, args.train_steps, args.compile)
        r["wall_s"] = time.time() - t0
        result["configs"][name] = r
        print(f"{name}: params ours {r['params_ours'] / 1e6:.1f} M / LeRobot {r['params_lerobot'] / 1e6:.1f} M | "
              f"NFE {r['nfe_ours_ms_median']:.1f} vs {r['nfe_lerobot_ms_median']:.1f} ms (x{r['nfe_ratio']:.2f}) | "
              f"DDIM-10 {r['chunk_ours_ms_median']:.0f} vs {r['chunk_lerobot_ms_median']:.0f} ms "
              f"(x{r['chunk_ratio']:.2f}; int8 {r['chunk_ours_int8_ms_median']:.0f} ms, x{r['chunk_ratio_int8']:.2f})"
              + (
                  f" | train {r['train_samples_per_s_ours']:.1f} vs {r['train_samples_per_s_lerobot']:.1f} "
                  f"samples/s (x{r['train_speedup']:.2f})" if "train_speedup" in r else "")
              + (f" | compiled {r['train_samples_per_s_ours_compiled']:.1f} samples/s "
                 f"(x{r['train_speedup_compiled']:.2f}, {r['compile_s']:.0f} s to compile)"
                 if "train_speedup_compiled" in r else ""), flush=True)
    result["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""2-D multimodal toy: do the generative heads keep every mode where an MSE regressor averages them?

Data: for one uninformative observation (state ~ N(0, 0.1^2), T_o = 2), the action chunk (T_p = 4, A = 2)
is a straight line from the origin to one of `--modes` centres on a ring of radius 0.8 (equal
probabilities) plus N(0, 0.05^2) noise per entry. Trained on it with the same budget and network:
DiffusionPolicy (sampled with DDPM-100 and DDIM-8 from the same weights), FlowPolicy (Euler K = 1, 4, 10
from the same weights) and an MLP regressor with MSE loss.

Metrics per sampler (on `--n-eval` samples): mass per mode (nearest template chunk by RMS distance), the
largest deviation from the true 1/modes, the number of modes with >= 1/(2 modes) of the mass, the fraction
of chunks inside the region holding 99.9 % of their mode's own samples ("on-mode", chi-square bound; the data
itself scores 0.999), the same for the final action alone, the median RMS distance to the nearest mode;
training time, NFE and latency per chunk at batch 1 on this CPU (median over repeats, after warm-up).

Writes results/toy_multimodal.json and results/toy_multimodal.png (final action of every sampled chunk).
    .venv/bin/python scripts/toy_multimodal.py [--steps 1000] [--seeds 0] [--modes 8]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from robopolicy.nn import MLP, unet_preset
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.flow import FlowPolicy

SIGMA, RADIUS, HORIZON = 0.05, 0.8, 4
# "On a mode": inside the region that holds 99.9 % of that mode's own samples. The squared error of a true
# sample over its chunk is SIGMA^2 * chi2(8 dof); chi2.ppf(0.999, 8) = 26.12 -> RMS < 0.090. For the final
# action alone (2 dof): chi2.ppf(0.999, 2) = 13.82 -> distance < 0.186.
ON_MODE_RMS = SIGMA * math.sqrt(26.124 / (HORIZON * 2))
ON_MODE_FINAL = SIGMA * math.sqrt(13.816)


def templates(n_modes: int) -> torch.Tensor:
    """(n_modes, T_p, 2): the noiseless chunk of every mode."""
    ang = torch.arange(n_modes) * 2 * math.pi / n_modes
    centres = RADIUS * torch.stack([ang.cos(), ang.sin()], -1)
    return centres[:, None, :] * (torch.arange(1, HORIZON + 1) / HORIZON)[None, :, None]


def toy_batch(b: int, tmpl: torch.Tensor, gen: torch.Generator) -> dict:
    mode = torch.randint(0, len(tmpl), (b,), generator=gen)
    action = tmpl[mode] + SIGMA * torch.randn(b, HORIZON, 2, generator=gen)
    return {"obs": {"state": 0.1 * torch.randn(b, 2, 2, generator=gen)}, "action": action}


def mode_stats(chunks: torch.Tensor, tmpl: torch.Tensor) -> dict:
    rms = ((chunks[:, None] - tmpl[None]) ** 2).mean((-1, -2)).sqrt()
    dist, mode = rms.min(1)
    final = (chunks[:, None, -1] - tmpl[None, :, -1]).norm(dim=-1).min(1).values
    n = len(tmpl)
    mass = torch.bincount(mode, minlength=n).float() / len(chunks)
    return {
        "mode_mass": [round(float(m), 4) for m in mass],
        "max_mass_error": round(float((mass - 1 / n).abs().max()), 4),
        "modes_covered": int((mass >= 0.5 / n).sum()),
        "on_mode_fraction": round(float((dist < ON_MODE_RMS).float().mean()), 4),
        "final_action_on_mode_fraction": round(float((final < ON_MODE_FINAL).float().mean()), 4),
        "median_rms_to_mode": round(float(dist.median()), 4),
    }


def train(model: torch.nn.Module, loss_fn, batch_fn, steps: int, lr: float) -> tuple[float, float]:
    """AdamW with one-cycle cosine schedule; returns (seconds, mean loss of the last 50 steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(batch_fn())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return time.perf_counter() - start, statistics.fmean(losses[-50:])


@torch.no_grad()
def latency_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def run_seed(seed: int, args: argparse.Namespace, tmpl: torch.Tensor) -> tuple[dict, dict]:
    spec = PolicySpec(obs_shapes={"state": (2,)}, action_dim=2, n_obs_steps=2, horizon=HORIZON, n_action_steps=2)
    unet = unet_preset("tiny", down_dims=args.down_dims, diffusion_step_embed_dim=args.embed_dim)
    test = toy_batch(args.n_eval, tmpl, torch.Generator().manual_seed(10_000 + seed))
    noise = torch.randn(args.n_eval, HORIZON, 2, generator=torch.Generator().manual_seed(20_000 + seed))
    obs1 = {"state": test["obs"]["state"][:1]}
    results, samples = {"data": {"head": "ground truth", **mode_stats(test["action"], tmpl)}}, {"data": test["action"]}

    heads = {
        "diffusion": (DiffusionPolicy(spec, DiffusionPolicy.Config(unet=unet)),
                      [("DDPM-100", dict(scheduler="ddpm", num_inference_steps=100)),
                       ("DDIM-8", dict(scheduler="ddim", num_inference_steps=8))]),
        "flow": (FlowPolicy(spec, FlowPolicy.Config(unet=unet)),
                 [(f"Flow K={k}", dict(num_inference_steps=k)) for k in (1, 4, 10)]),
    }
    for name, (policy, samplers) in heads.items():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        secs, loss = train(policy, lambda b, p=policy: p.compute_loss(b)["loss"],
                           lambda g=gen: toy_batch(args.batch, tmpl, g), args.steps, args.lr)
        n_params = sum(q.numel() for q in policy.parameters())
        for label, kw in samplers:
            policy.set_inference(**kw)
            chunks = policy.predict_chunk(test["obs"], noise)
            samples[label] = chunks
            results[label] = {
                "head": name, "nfe": policy.nfe, "train_seconds": round(secs, 1), "final_loss": round(loss, 5),
                "params": n_params, **mode_stats(chunks, tmpl),
                "latency_ms_batch1": latency_ms(lambda p=policy: p.predict_chunk(obs1, noise[:1]), args.repeats),
            }
            print(label, json.dumps(results[label]))

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    reg = MLP(2 * 2, [256, 256], HORIZON * 2)

    def reg_loss(b):
        return ((reg(b["obs"]["state"].flatten(1)).view(-1, HORIZON, 2) - b["action"]) ** 2).mean()

    secs, loss = train(reg, reg_loss, lambda: toy_batch(args.batch, tmpl, gen), args.steps, args.lr)
    with torch.no_grad():
        chunks = reg(test["obs"]["state"].flatten(1)).view(-1, HORIZON, 2)
    samples["MSE regressor"] = chunks
    results["MSE regressor"] = {
        "head": "mlp_mse", "nfe": 1, "train_seconds": round(secs, 1), "final_loss": round(loss, 5),
        "params": sum(q.numel() for q in reg.parameters()), **mode_stats(chunks, tmpl),
        "latency_ms_batch1": latency_ms(lambda: reg(obs1["state"].flatten(1)), args.repeats),
    }
    print("MSE regressor", json.dumps(results["MSE regressor"]))
    return results, samples


def plot(samples: dict, results: dict, tmpl: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples)
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        last = samples[name][:, -1].numpy()  # final action of every chunk
        ax.scatter(last[:, 0], last[:, 1], s=3, alpha=0.5)
        ax.scatter(tmpl[:, -1, 0], tmpl[:, -1, 1], marker="x", c="red", s=30)
        r = results[name]
        ax.set_title(f"{name}\non-mode {r['on_mode_fraction']:.2f}, mass err {r['max_mass_error']:.2f}", fontsize=9)
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--down-dims", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/toy_multimodal.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmpl = templates(args.modes)
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed], samples = run_seed(seed, args, tmpl)
        if seed == args.seeds[0]:
            plot(samples, per_seed[seed], tmpl, args.out.with_suffix(".png"),
                 f"{args.modes}-mode ring toy, seed {seed}, {args.steps} steps x batch {args.batch}: final action per chunk")
    summary = {}
    for label in per_seed[args.seeds[0]]:
        runs = [per_seed[s][label] for s in args.seeds]
        summary[label] = {k: [r[k] for r in runs if k in r] for k in (
            "max_mass_error", "modes_covered", "on_mode_fraction", "final_action_on_mode_fraction", "latency_ms_batch1")}
    out = {
        "toy": {"modes": args.modes, "radius": RADIUS, "sigma": SIGMA, "horizon": HORIZON, "action_dim": 2,
                "n_obs_steps": 2, "on_mode_rms_threshold": round(ON_MODE_RMS, 4),
                "final_action_threshold": round(ON_MODE_FINAL, 4)},
        "budget": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "optimizer": "AdamW + one-cycle cosine",
                   "unet_down_dims": args.down_dims, "step_embed_dim": args.embed_dim, "seeds": args.seeds,
                   "n_eval": args.n_eval, "threads": args.threads},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "summary_over_seeds": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

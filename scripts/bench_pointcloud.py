"""Point-cloud benchmark (issue [H]): sampling methods, store size and loader speed of stored points vs
recomputing them from stored depth, and the per-call latency of heads conditioned on point clouds.

Frames are real embedded-scene depth frames from a store collected with point clouds (the default is the
store of configs/task/embedded_push_pointcloud.yaml). Single-threaded torch, median over repeats.

1. sampling: exact FPS, FPS after a voxel grid (several voxel sizes) and random, on the cropped front-camera
   cloud of each frame: time per frame and coverage (max / mean distance from a cropped point to the
   nearest sampled one, mm).
2. storage: bytes on disk per frame of `pointcloud` vs `depth/front` in the store, and samples/s of a
   SequenceDataset reading stored points vs one that rebuilds them from stored depth on every sample.
3. latency: MeanFlow (1 NFE, MP1) and rectified flow (4 NFE) with the CPU UNet preset, batch 1, from
   pointcloud + state vs images/front + state; the policy call alone and with the point-cloud build.

    python scripts/bench_pointcloud.py [--store data/embedded_push_pointcloud.zarr --frames 40 --repeats 30]
Writes results/bench_pointcloud.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robopolicy.data import EpisodeStore  # noqa: E402
from robopolicy.data.dataset import SequenceConfig, SequenceDataset  # noqa: E402
from robopolicy.perception import (  # noqa: E402
    PointCloudConfig,
    crop_to_workspace,
    depth_to_points,
    pointcloud_from_frame,
    sample_points,
)
from robopolicy.perception.env import camera_geometries, make_env  # noqa: E402
from robopolicy.policies.base import PolicySpec  # noqa: E402
from robopolicy.policies.registry import make_policy  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_sampling(store: EpisodeStore, geometry, cfg: PointCloudConfig, frames: np.ndarray) -> dict:
    depth = store.array("depth/front")
    rgb = store.array("images/front")
    clouds = [crop_to_workspace(depth_to_points(depth[i], geometry, rgb[i] if cfg.color else None),
                                cfg.workspace_lower, cfg.workspace_upper) for i in frames]
    methods = [("fps", None), ("fps_voxel", 0.01), ("fps_voxel", 0.02), ("fps_voxel", 0.03), ("random", None)]
    out = {"n_frames": len(frames), "num_points": cfg.num_points,
           "cropped_points_median": int(np.median([len(c) for c in clouds]))}
    for method, voxel in methods:
        ms, cover_max, cover_mean = [], [], []
        for pts in clouds:
            t0 = time.perf_counter()
            s = sample_points(pts, cfg.num_points, method, voxel or 0.01)
            ms.append((time.perf_counter() - t0) * 1000.0)
            d = torch.cdist(torch.from_numpy(pts[:, :3]), torch.from_numpy(s[:, :3])).min(1).values
            cover_max.append(float(d.max()) * 1000)
            cover_mean.append(float(d.mean()) * 1000)
        name = method if voxel is None else f"{method}@{voxel * 100:g}cm"
        out[name] = {"ms_median": statistics.median(ms), "cover_max_mm": statistics.median(cover_max),
                     "cover_mean_mm": statistics.median(cover_mean)}
        print(f"sampling {name:<16} {out[name]['ms_median']:7.2f} ms  cover max {out[name]['cover_max_mm']:.1f} mm"
              f"  mean {out[name]['cover_mean_mm']:.1f} mm", flush=True)
    return out


class _DepthRecompute(SequenceDataset):
    """A loader that rebuilds `pointcloud` from stored depth on every sample (the alternative design)."""

    def __init__(self, store, cfg, geometry, pc_cfg):
        super().__init__(store, cfg)
        self.geometry, self.pc_cfg = geometry, pc_cfg

    def __getitem__(self, idx):
        item = super().__getitem__(idx)
        depth = item["obs"].pop("depth/front").numpy()
        rgb = item["obs"].pop("images/front").numpy().transpose(0, 2, 3, 1)
        item["obs"]["pointcloud"] = torch.from_numpy(np.stack([
            pointcloud_from_frame({"front": d}, {"front": self.geometry}, self.pc_cfg, {"front": c})
            for d, c in zip(depth, rgb, strict=True)]))
        return item


def bench_storage(store: EpisodeStore, geometry, pc_cfg: PointCloudConfig, n_samples: int) -> dict:
    n = store.n_frames
    sizes = {k: _dir_bytes(Path(store.path) / "data" / k) / n for k in ("pointcloud", "depth/front", "images/front")}
    seq = dict(horizon=16, n_action_steps=8, n_obs_steps=2, val_ratio=0.0)
    stored = SequenceDataset(store, SequenceConfig(obs_keys=["pointcloud", "state"], **seq))
    recompute = _DepthRecompute(store, SequenceConfig(obs_keys=["depth/front", "images/front", "state"], **seq),
                                geometry, pc_cfg)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(stored), n_samples)
    rates = {}
    for name, ds in (("stored_points", stored), ("recompute_from_depth", recompute)):
        ds[0]
        t0 = time.perf_counter()
        for i in idx:
            ds[int(i)]
        rates[name] = n_samples / (time.perf_counter() - t0)
    a, b = stored[int(idx[0])]["obs"]["pointcloud"], recompute[int(idx[0])]["obs"]["pointcloud"]
    out = {"bytes_per_frame": sizes, "samples_per_s": rates, "identical": bool(torch.equal(a, b)),
           "loader_speedup_stored": rates["stored_points"] / rates["recompute_from_depth"]}
    print(f"storage per frame: pointcloud {sizes['pointcloud'] / 1e3:.1f} kB, depth {sizes['depth/front'] / 1e3:.1f} kB"
          f", rgb {sizes['images/front'] / 1e3:.1f} kB; loader samples/s stored {rates['stored_points']:.0f} vs "
          f"recompute {rates['recompute_from_depth']:.1f} (identical tensors: {out['identical']})", flush=True)
    return out


def bench_latency(store: EpisodeStore, env, pc_cfg: PointCloudConfig, repeats: int) -> dict:
    frame = store.get_episode(0, ["pointcloud", "state", "images/front", "depth/front"])
    n_pts, ch = frame["pointcloud"].shape[1:]
    unet = {"down_dims": [64, 128, 256], "kernel_size": 5, "n_groups": 8, "diffusion_step_embed_dim": 64}
    image = {"width": 16, "blocks_per_stage": [1, 1, 1, 1], "num_keypoints": 32, "feature_dim": 64, "group_size": 8}
    obs_pc = {"pointcloud": torch.from_numpy(np.stack([frame["pointcloud"][0]] * 2))[None],
              "state": torch.from_numpy(np.stack([frame["state"][0]] * 2))[None]}
    img = torch.from_numpy(frame["images/front"][0]).permute(2, 0, 1).float() / 255
    obs_rgb = {"images/front": torch.stack([img, img])[None], "state": obs_pc["state"]}
    out = {}
    geometries = camera_geometries(env, ("front",))
    out["pointcloud_from_frame_ms"] = _median_ms(lambda: pointcloud_from_frame(
        {"front": frame["depth/front"][0]}, geometries, pc_cfg, {"front": frame["images/front"][0]}), repeats)
    for head, steps in (("meanflow", 1), ("flow", 4), ("flow", 1)):
        for obs_name, obs, shapes in (
            ("pointcloud", obs_pc, {"pointcloud": (n_pts, ch), "state": (14,)}),
            ("rgb", obs_rgb, {"images/front": (3, 96, 96), "state": (14,)}),
        ):
            spec = PolicySpec(obs_shapes=shapes, action_dim=5, n_obs_steps=2, horizon=16, n_action_steps=8)
            policy = make_policy(head, spec, {"unet": unet, "obs": {"image": image}, "num_inference_steps": steps})
            policy.eval()
            noise = torch.randn(1, 16, 5)
            with torch.inference_mode():
                ms = _median_ms(lambda p=policy, o=obs, z=noise: p.predict_chunk(o, noise=z), repeats)
                enc_ms = _median_ms(lambda p=policy, o=obs: p.obs_encoder(o), repeats)
            key = f"{head}_{steps}step_{obs_name}"
            out[key] = {"policy_ms": ms, "obs_encoder_ms": enc_ms,
                        "params_obs_encoder": sum(p.numel() for p in policy.obs_encoder.parameters())}
            print(f"latency {key:<26} policy {ms:6.2f} ms (obs encoder {enc_ms:5.2f} ms)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/embedded_push_pointcloud.zarr")
    ap.add_argument("--task", default="embedded_push")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--parts", default="sampling,storage,latency", help="comma-separated subset to run")
    ap.add_argument("--out", default="results/bench_pointcloud.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = EpisodeStore.open(args.store, mode="r")
    h, w = store.schema.fields["depth/front"].shape
    env = make_env(args.task, obs_mode="pixels", image_size=(h, w), cameras=("front",),
                   pointcloud={"num_points": int(store.schema.fields["pointcloud"].shape[0]),
                               "color": store.schema.fields["pointcloud"].shape[1] == 6})
    env.reset(seed=0)
    pc_cfg = env.cfg
    geometry = camera_geometries(env, ("front",))["front"]  # the front camera is fixed
    frames = np.linspace(0, store.n_frames - 1, args.frames).astype(int)
    parts = set(args.parts.split(","))
    # The machine is shared: the load average says how contended the timings were (ratios stay comparable).
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "store": args.store, "torch_threads": 1,
              "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0],
              "pointcloud_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(pc_cfg).items()}}
    if "sampling" in parts:
        result["sampling"] = bench_sampling(store, geometry, pc_cfg, frames)
    if "storage" in parts:
        result["storage"] = bench_storage(store, geometry, pc_cfg, args.samples)
    if "latency" in parts:
        result["latency"] = bench_latency(store, env, pc_cfg, args.repeats)
    result["load_average_end"] = os.getloadavg()[0]
    env.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

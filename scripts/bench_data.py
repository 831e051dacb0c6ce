"""Data-layer benchmark: EpisodeStore write throughput and training-style random access, side by side
with LeRobot 0.6's LeRobotDataset on the same episodes (exported with `robopolicy data export-lerobot`).

Setting (issue [A]): 20 episodes x 200 frames, 2 cameras 96x96, T_o=2, T_p=16, batch 64, 2 DataLoader
workers, shuffled. Frames are synthetic scenes (moving coloured boxes on a textured table, light noise)
so that both zarr's lossless codec and LeRobot's video codec see realistic content.
Also: state-only access, and real-time recording of 2 cameras at 240x320 / 30 Hz through EpisodeRecorder.
Writes results/bench_data.json.

    python scripts/bench_data.py [--episodes 20 --frames 200 --batches 30 --skip-lerobot]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robopolicy.data import EpisodeStore  # noqa: E402
from robopolicy.data.dataset import SequenceConfig, SequenceDataset  # noqa: E402

T_O, T_P, BATCH, WORKERS = 2, 16, 64, 2


def scene_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = cv2.GaussianBlur(rng.integers(90, 160, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    out = np.empty((n, h, w, 3), np.uint8)
    p, v = rng.uniform(0.2, 0.8, (3, 2)), rng.normal(0, 0.01, (3, 2))
    colors = rng.integers(0, 255, (3, 3))
    for t in range(n):
        img = table.copy()
        p = np.clip(p + v, 0.1, 0.9)
        for (x, y), c in zip(p, colors, strict=True):
            cv2.rectangle(img, (int(x * w) - w // 10, int(y * h) - h // 10), (int(x * w) + w // 10, int(y * h) + h // 10),
                          tuple(int(v) for v in c), -1)
        out[t] = np.clip(img + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
    return out


def make_episode(length: int, seed: int, hw=(96, 96), cameras=("front", "wrist")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ep = {
        "timestamp": np.arange(length) / 10.0 + seed * 1000,
        "state": np.cumsum(rng.normal(0, 0.05, (length, 8)), 0).astype(np.float32),
        "action": np.cumsum(rng.normal(0, 0.05, (length, 7)), 0).astype(np.float32),
    }
    for i, cam in enumerate(cameras):
        ep[f"images/{cam}"] = scene_frames(length, *hw, seed * 10 + i)
    return ep


def loader_rate(dataset, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         persistent_workers=False, multiprocessing_context="forkserver")
    it = iter(loader)
    for _ in range(3):  # warm-up: worker start, file handles, decoders
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        n += len(b["action"])
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def bench_write(episodes: list[dict], root: Path) -> dict:
    path = root / "write.zarr"
    store = EpisodeStore.create(path, fps=10)
    t0 = time.perf_counter()
    for ep in episodes:
        store.add_episode(ep, {"task": "bench", "source": "expert", "success": True})
    dt = time.perf_counter() - t0
    frames = sum(len(ep["action"]) for ep in episodes)
    return {"frames": frames, "frames_per_s": frames / dt, "seconds": dt, "store": store}


def bench_realtime_recording(root: Path, seconds: float = 10.0, hz: float = 30.0) -> dict:
    """2 cameras 240x320 at 30 Hz through EpisodeRecorder: add_step latency and whether the loop keeps up."""
    cams = {c: scene_frames(60, 240, 320, i) for i, c in enumerate(("front", "wrist"))}
    store = EpisodeStore.create(root / "rt.zarr", fps=hz)
    rec = store.recorder({"task": "rt"}, flush_every=8)
    period, n = 1.0 / hz, int(seconds * hz)
    lat, late = [], 0
    start = time.monotonic()
    for t in range(n):
        deadline = start + t * period
        while time.monotonic() < deadline:
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        if time.monotonic() - deadline > period:
            late += 1
        step = {"timestamp": time.monotonic(), "state": np.zeros(8, np.float32), "action": np.zeros(7, np.float32)}
        step.update({f"images/{c}": f[t % 60] for c, f in cams.items()})
        t0 = time.perf_counter()
        rec.add_step(step)
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    rec.save()
    save_s = time.perf_counter() - t0
    # The most the recorder sustains: no pacing.
    rec = store.recorder({"task": "max"}, flush_every=8)
    t0 = time.perf_counter()
    for t in range(150):
        step = {"timestamp": 1e6 + t, "state": np.zeros(8, np.float32), "action": np.zeros(7, np.float32)}
        step.update({f"images/{c}": f[t % 60] for c, f in cams.items()})
        rec.add_step(step)
    rec.save()
    max_hz = 150 / (time.perf_counter() - t0)
    lat.sort()
    return {
        "cameras": 2, "resolution": [240, 320], "target_hz": hz, "steps": n,
        "add_step_ms_p50": lat[len(lat) // 2], "add_step_ms_p99": lat[int(len(lat) * 0.99)],
        "late_steps": late, "save_s": save_s, "max_sustained_hz": max_hz,
        "headroom_x": max_hz / hz,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--skip-lerobot", action="store_true")
    ap.add_argument("--out", default="results/bench_data.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict = {"setting": {"episodes": args.episodes, "frames": args.frames, "cameras": 2, "image": [96, 96],
                                "T_o": T_O, "T_p": T_P, "batch": BATCH, "workers": WORKERS,
                                "batches_timed": args.batches}}
    root = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        episodes = [make_episode(args.frames, s) for s in range(args.episodes)]
        w = bench_write(episodes, root)
        store = w.pop("store")
        result["write_ours"] = w
        print(f"write (EpisodeStore.add_episode): {w['frames_per_s']:.0f} frames/s")
        result["realtime_recording"] = rt = bench_realtime_recording(root)
        print(f"recording 2x240x320 @30Hz: add_step p50 {rt['add_step_ms_p50']:.2f} ms p99 {rt['add_step_ms_p99']:.2f} ms,"
              f" late steps {rt['late_steps']}, max sustained {rt['max_sustained_hz']:.0f} Hz")

        img_cfg = dict(obs_keys=["state", "images/front", "images/wrist"], n_obs_steps=T_O, horizon=T_P,
                       n_action_steps=8, val_ratio=0)
        ours = {
            "images_in_memory": SequenceDataset(store, SequenceConfig(**img_cfg)),
            "images_from_zarr": SequenceDataset(store, SequenceConfig(**img_cfg, image_cache_bytes=0)),
            "state_only": SequenceDataset(store, SequenceConfig(obs_keys=["state"], n_obs_steps=T_O, horizon=T_P,
                                                                n_action_steps=8, val_ratio=0)),
        }
        rates: dict[str, list[float]] = {}
        lerobot = {}
        if not args.skip_lerobot:
            from lerobot_bench import lerobot_datasets  # scripts/lerobot_bench.py

            lerobot, export_info = lerobot_datasets(store.path, root, T_O, T_P)
            result["write_lerobot"] = export_info
        # Interleave repeats so machine noise hits both sides alike; report medians.
        for _ in range(3):
            for name, ds in {**{f"ours_{k}": v for k, v in ours.items()},
                             **{f"lerobot_{k}": v for k, v in lerobot.items()}}.items():
                rates.setdefault(name, []).append(loader_rate(ds, args.batches))
        result["samples_per_s"] = {k: {"median": statistics.median(v), "runs": v} for k, v in rates.items()}
        for k, v in result["samples_per_s"].items():
            print(f"{k:32s} {v['median']:8.0f} samples/s")
        if lerobot:
            med = {k: v["median"] for k, v in result["samples_per_s"].items()}
            result["ratios"] = {
                "ours_in_memory_vs_lerobot_video": med["ours_images_in_memory"] / med["lerobot_video"],
                "ours_from_zarr_vs_lerobot_video": med["ours_images_from_zarr"] / med["lerobot_video"],
                "ours_in_memory_vs_lerobot_images": med["ours_images_in_memory"] / med["lerobot_images"],
                "ours_from_zarr_vs_lerobot_images": med["ours_images_from_zarr"] / med["lerobot_images"],
                "ours_state_only_vs_lerobot_state_only": med["ours_state_only"] / med["lerobot_state_only"],
            }
            for k, v in result["ratios"].items():
                print(f"{k:40s} x{v:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["date"] = time.strftime("%Y-%m-%d")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

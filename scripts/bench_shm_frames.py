"""Cost of reading the latest camera frame from another process: shared-memory ring vs Pipe vs Queue.

A child process produces frames at `--fps` (a SyntheticCamera for the ring, the same frames sent through a
multiprocessing Pipe or Queue otherwise); the parent plays the control loop, calling "latest()" at `--rate`
Hz for `--seconds`:

- shm:   ProcessCamera.latest() (one copy out of the ring + the stall checks);
- pipe:  drain the pipe (poll / recv until empty) and keep the last frame;
- queue: drain the queue (get_nowait until Empty) and keep the last frame.

Reported per transport and frame size: latency of a latest() call (median, p99) over all calls and over the
calls that returned a frame newer than the previous call's, the frame's age when the loop got it (now -
capture time: delivery latency at this polling rate) and the ratios pipe / shm and queue / shm.
Writes results/bench_shm_frames.json.

    .venv/bin/python scripts/bench_shm_frames.py [--seconds 3] [--fps 30] [--rate 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.camera_process import ProcessCamera  # noqa: E402
from hardware.drivers.synthetic import SyntheticCamera  # noqa: E402

SIZES = [(240, 320), (480, 640)]


def _producer(kind: str, chan, h: int, w: int, fps: float, stop) -> None:
    k, nxt = 0, time.monotonic()
    while not stop.is_set():
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        nxt += 1.0 / fps
        color = np.full((h, w, 3), k % 256, dtype=np.uint8)  # same work as SyntheticCamera
        msg = (color, time.monotonic(), k)
        if kind == "pipe":
            chan.send(msg)
        else:
            chan.put(msg)
        k += 1


def _stats(x: list[float]) -> dict:
    a = np.asarray(x) * 1e6
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean())}  # fmt: skip


def _loop(latest, seconds: float, rate: float) -> dict:
    calls, new_calls, ages = [], [], []
    last_idx = -1
    period = 1.0 / rate
    t_end = time.monotonic() + seconds
    nxt = time.monotonic()
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        got = latest()
        dt = time.perf_counter() - t0
        calls.append(dt)
        if got is not None and got[2] > last_idx:
            new_calls.append(dt)
            ages.append(time.monotonic() - got[1])
            last_idx = got[2]
        nxt += period
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return {"all_calls": _stats(calls), "new_frame_calls": _stats(new_calls), "frame_age": _stats(ages),
            "frames_received": len(new_calls)}  # fmt: skip


def bench_shm(h: int, w: int, fps: float, seconds: float, rate: float) -> dict:
    cam = ProcessCamera(SyntheticCamera(name="bench", height=h, width=w, fps=fps), stall_timeout=5.0)
    cam.start()
    try:
        time.sleep(0.3)

        def latest():
            f = cam.latest()
            return f.color, f.timestamp, f.index

        return _loop(latest, seconds, rate)
    finally:
        cam.stop()


def bench_channel(kind: str, h: int, w: int, fps: float, seconds: float, rate: float) -> dict:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    if kind == "pipe":
        rx, tx = ctx.Pipe(duplex=False)
        chan = tx
    else:
        q = ctx.Queue()
        chan = q
    p = ctx.Process(target=_producer, args=(kind, chan, h, w, fps, stop), daemon=True)
    p.start()
    last = [None]

    if kind == "pipe":

        def latest():
            while rx.poll():
                last[0] = rx.recv()
            return last[0]
    else:

        def latest():
            while True:
                try:
                    last[0] = q.get_nowait()
                except queue_mod.Empty:
                    return last[0]

    try:
        while last[0] is None:  # wait for the first frame
            latest()
            time.sleep(0.01)
        return _loop(latest, seconds, rate)
    finally:
        stop.set()
        if kind == "queue":  # drain so the feeder thread can exit
            t = time.monotonic() + 1.0
            while time.monotonic() < t:
                try:
                    q.get(timeout=0.05)
                except queue_mod.Empty:
                    if not p.is_alive():
                        break
        p.join(3)
        if p.is_alive():
            p.terminate()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0, help="control-loop rate calling latest(), Hz")
    ap.add_argument("--out", default="results/bench_shm_frames.json")
    args = ap.parse_args(argv)
    results: dict = {
        "config": vars(args),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
        },
        "sizes": {},
    }
    for h, w in SIZES:
        key = f"{h}x{w}"
        r = {
            "shm": bench_shm(h, w, args.fps, args.seconds, args.rate),
            "pipe": bench_channel("pipe", h, w, args.fps, args.seconds, args.rate),
            "queue": bench_channel("queue", h, w, args.fps, args.seconds, args.rate),
        }
        ratios = {}
        for other in ("pipe", "queue"):
            for part in ("new_frame_calls", "frame_age"):
                for stat in ("median_us", "p99_us"):
                    a, b = r[other][part].get(stat), r["shm"][part].get(stat)
                    if a and b:
                        ratios[f"{other}/shm {part} {stat}"] = a / b
        r["ratios"] = ratios
        results["sizes"][key] = r
        print(
            f"== {key} colour frames, {args.fps:g} fps, latest() at {args.rate:g} Hz for {args.seconds:g} s"
        )
        for t in ("shm", "pipe", "queue"):
            nc, age = r[t]["new_frame_calls"], r[t]["frame_age"]
            print(
                f"  {t:5s} latest() with a new frame: median {nc['median_us']:8.1f} us  p99 {nc['p99_us']:8.1f} us"
                f" | all calls median {r[t]['all_calls']['median_us']:7.1f} us"
                f" | frame age median {age['median_us'] / 1000:6.2f} ms  p99 {age['p99_us'] / 1000:6.2f} ms"
                f" | frames {r[t]['frames_received']}"
            )
        for k, v in ratios.items():
            print(f"  {k}: {v:.2f}x")
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

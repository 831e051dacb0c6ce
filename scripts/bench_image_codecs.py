"""Measure lossless image codecs for the episode store: write speed, read speed and size.

Frames are MuJoCo renders (Meta-World's scene at 240x320) with and without camera-like sensor noise,
since real cameras compress far worse than clean renders. Each frame is its own chunk, as in the store.
Writes results/bench_image_codecs.json.

    python scripts/bench_image_codecs.py [--frames 120]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

CANDIDATES = {
    "none": None,
    "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "blosc-zstd1-shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
    "blosc-zstd3-bitshuffle": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    "zstd3": ZstdCodec(level=3),
    "blosc-zstd5-noshuffle": BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle"),
}


def render_frames(n: int, h: int, w: int) -> np.ndarray:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco

        xml = f"""<mujoco><visual><global offwidth="{w}" offheight="{h}"/></visual>
        <worldbody><light pos="0 0 3"/><geom type="plane" size="2 2 .1" rgba=".6 .5 .4 1"/>
        <body name="b" pos="0 0 .2"><freejoint/><geom type="box" size=".1 .2 .1" rgba=".8 .1 .1 1"/></body>
        <body pos=".3 .2 .1"><geom type="sphere" size=".1" rgba=".1 .3 .8 1"/></body>
        <camera name="c" pos="0 -1.2 .8" xyaxes="1 0 0 0 .6 .8"/></worldbody></mujoco>"""
        model = mujoco.MjModel.from_xml_string(xml)
        data = mujoco.MjData(model)
        out = np.empty((n, h, w, 3), np.uint8)
        with mujoco.Renderer(model, h, w) as r:
            for i in range(n):
                data.qvel[:3] = [0.3 * np.sin(i / 10), 0.2, 0.0]
                mujoco.mj_step(model, data)
                r.update_scene(data, camera="c")
                out[i] = r.render()
        return out
    except Exception as e:  # no GL: fall back to smooth synthetic images
        print(f"rendering unavailable ({e}); using synthetic frames")
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack([((xx + yy * 0.5 + 3 * i) % 255).astype(np.uint8)[..., None].repeat(3, -1) for i in range(n)])


def measure(frames: np.ndarray, codec, root: Path) -> dict:
    path = root / "a.zarr"
    shutil.rmtree(path, ignore_errors=True)
    n, h, w, c = frames.shape
    arr = zarr.create_array(
        store=str(path), shape=(n, h, w, c), chunks=(1, h, w, c), dtype="uint8",
        compressors=[codec] if codec is not None else None, zarr_format=3,
    )
    t0 = time.perf_counter()
    for i in range(n):  # one frame per write, as a recorder does
        arr[i] = frames[i]
    write_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    arr = zarr.open_array(str(path), mode="r")
    t0 = time.perf_counter()
    for i in np.random.default_rng(0).permutation(n):
        arr[int(i)]
    read_s = time.perf_counter() - t0
    return {
        "write_frames_per_s": n / write_s,
        "read_frames_per_s": n / read_s,
        "bytes_per_frame": size / n,
        "ratio": frames.nbytes / size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--out", default="results/bench_image_codecs.json")
    args = ap.parse_args()
    clean = render_frames(args.frames, 240, 320)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 2.0, clean.shape), 0, 255).astype(np.uint8)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in CANDIDATES.items():
            results[name] = {
                "render": measure(clean, codec, Path(tmp)),
                "render+noise(sigma=2)": measure(noisy, codec, Path(tmp)),
            }
            r = results[name]
            print(f"{name:24s} clean: {r['render']['write_frames_per_s']:7.0f} w/s {r['render']['read_frames_per_s']:7.0f} r/s "
                  f"x{r['render']['ratio']:5.1f} | noisy: {r['render+noise(sigma=2)']['write_frames_per_s']:7.0f} w/s "
                  f"x{r['render+noise(sigma=2)']['ratio']:5.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"frame_shape": [240, 320, 3], "frames": args.frames, "codecs": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

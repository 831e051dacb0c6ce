"""One labelled camera frame per task, mid-way through an expert demonstration, tiled into one PNG:
what the demos of every simulated task look like (docs/img/demo_frames.png).

    python scripts/demo_frames.py [--tasks pusht robosuite_lift ...] [--steps 30] [--out docs/img/demo_frames.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

import sim

DEFAULT_TASKS = ["pusht", "embedded_push", "embedded_pick_place", "embedded_stack", "robosuite_lift",
                 "robosuite_can", "robosuite_square", "metaworld_drawer-open", "metaworld_pick-place",
                 "metaworld_door-open"]


def frame_after(task: str, steps: int, size: int) -> np.ndarray:
    env = sim.make_env(task, obs_mode="both", image_size=size)
    expert = sim.make_expert(task, env)
    obs, info = env.reset(seed=0)
    expert.reset(0)
    for _ in range(steps):
        obs, _, term, trunc, info = env.step(expert.act(obs, info))
        if term or trunc:
            break
    cams = sorted(k for k in obs if k.startswith("images/"))
    frame = np.concatenate([cv2.resize(obs[k], (size, size)) for k in cams], axis=1)
    env.close()
    label = np.full((18, frame.shape[1], 3), 255, np.uint8)
    cv2.putText(label, task, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([label, frame], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--steps", type=int, default=30, help="expert steps before the frame is taken")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default="docs/img/demo_frames.png")
    args = ap.parse_args()
    tiles = [frame_after(t, args.steps, args.size) for t in args.tasks]
    width = max(t.shape[1] for t in tiles)
    rows, row, row_w = [], [], 0
    for t in tiles:  # pack tiles into rows of at most ~4 camera views
        if row and row_w + t.shape[1] > 4 * (args.size + 1) * 1.5:
            rows.append(row)
            row, row_w = [], 0
        row.append(np.pad(t, ((0, 0), (0, 2), (0, 0)), constant_values=255))
        row_w += t.shape[1] + 2
    rows.append(row)
    width = max(sum(t.shape[1] for t in r) for r in rows)
    canvas = [np.pad(np.concatenate(r, axis=1), ((0, 2), (0, width - sum(t.shape[1] for t in r)), (0, 0)),
                     constant_values=255) for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(canvas, axis=0), cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

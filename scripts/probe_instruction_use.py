"""Does a language-conditioned head act on the instruction's colour word? A diagnostic for [F]'s VLA.

On the push-only language scene (configs/task/embedded_multitask_push.yaml), at the first step of each layout,
ask the policy for its first chunk under each of the three instructions ("push the red / green / blue block to
the target") and measure the cosine between its first 4 xy actions and the direction from the hand to each
block. A head that reads the colour moves more towards the named block than towards the others; equal cosines
mean it ignores the word and cannot choose the block.

    .venv/bin/python scripts/probe_instruction_use.py runs/vla/dd/best runs/vla/dl/best --layouts 24
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

COLOURS = ("red", "green", "blue")


def probe(path: str, layouts: int, seed: int) -> dict:
    import robopolicy
    from sim import make_env

    env = make_env("embedded_multitask", obs_mode="state", kinds=["push"])
    agent = robopolicy.load(path, device="cpu")
    named, other, spread = [], [], []
    try:
        for k in range(layouts):
            obs, _ = env.reset(seed=seed + k)
            scene = env.unwrapped.scene
            hand = scene.ee_pos()[:2]
            history = np.stack([obs["state"]] * agent.n_obs_steps)[None]
            chunks = {}
            for colour in COLOURS:
                torch.manual_seed(0)
                agent.reset()
                chunks[colour] = agent.act({"state": history, "language": [f"push the {colour} block to the target"]})[0]
                move = chunks[colour][:4, :2].sum(0)
                for block in COLOURS:
                    to_block = scene.block_pose(block)[0][:2] - hand
                    cos = float(np.dot(move, to_block) / (np.linalg.norm(move) * np.linalg.norm(to_block) + 1e-9))
                    (named if block == colour else other).append(cos)
            spread.append(np.mean([np.abs(chunks[a] - chunks[b]).mean() for a in COLOURS for b in COLOURS if a < b]))
    finally:
        env.close()
    return {"checkpoint": path, "layouts": layouts, "cos_named_block": round(float(np.mean(named)), 3),
            "cos_other_blocks": round(float(np.mean(other)), 3),
            "mean_abs_action_difference_between_colours": round(float(np.mean(spread)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="language-conditioned checkpoints trained on the push-only scene")
    ap.add_argument("--layouts", type=int, default=24)
    ap.add_argument("--seed", type=int, default=100_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for path in args.checkpoints:
        print(json.dumps(probe(path, args.layouts, args.seed)), flush=True)


if __name__ == "__main__":
    main()

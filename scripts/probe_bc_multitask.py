"""How learnable is a language-switched episode store by plain behaviour cloning? A diagnostic for [F]'s VLA.

Fits an MLP from (state_{t-1}, state_t, the instruction as a one-hot or as the heads' WordLlama features) to the
expert's next action (L1 loss), reports the held-out per-dimension action error next to predicting zero, then runs
it closed loop (one action per step, no chunking) on the eval seeds of scripts/bench_vla.py. It is a yardstick, not a policy head: if this cannot solve
the scene, a head's 0% says more about the data than about the head.

    .venv/bin/python scripts/probe_bc_multitask.py --store data/embedded_multitask_600.zarr --episodes 36
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def instruction_features(instructions: list[str], text: str) -> np.ndarray:
    """One row per instruction: a one-hot, or the frozen WordLlama token features the language heads get,
    mean-pooled (256-D): can a plain learner act on what the heads are given?"""
    if text == "onehot":
        return np.eye(len(instructions))
    from robopolicy.nn.text_encoder import FrozenTextEncoder

    feats, mask = FrozenTextEncoder().encode(instructions)
    m = mask[..., None].float()
    return ((feats * m).sum(1) / m.sum(1).clamp(min=1)).numpy()


def load_pairs(store_path: str, text: str = "onehot") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str],
                                                                np.ndarray]:
    """(inputs, actions, episode index per row, sorted instructions, their feature rows) of a store."""
    from robopolicy.data.episode_store import EpisodeStore

    store = EpisodeStore.open(store_path)
    langs = [str(store.episode_attrs(i).get("language", "")) for i in range(store.n_episodes)]
    instructions = sorted(set(langs))
    table = instruction_features(instructions, text)
    xs, ys, eps = [], [], []
    for i in range(store.n_episodes):
        ep = store.get_episode(i, ["state", "action"])
        state = ep["state"]
        prev = np.concatenate([state[:1], state[:-1]])
        code = np.repeat(table[instructions.index(langs[i])][None], len(state), axis=0)
        xs.append(np.concatenate([prev, state, code], axis=1))
        ys.append(ep["action"])
        eps.append(np.full(len(state), i))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(eps), instructions, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/embedded_multitask_600.zarr")
    ap.add_argument("--steps", type=int, default=4000, help="Adam steps, batch 256")
    ap.add_argument("--episodes", type=int, default=36, help="closed-loop episodes, seeds --seed, --seed + 1, ...")
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--kinds", nargs="+", default=None,
                    help="task kinds of the eval scene (env kwarg `kinds`), e.g. --kinds push; default all three")
    ap.add_argument("--text", choices=["onehot", "wordllama"], default="onehot",
                    help="instruction input: a one-hot, or the heads' frozen WordLlama features, mean-pooled")
    ap.add_argument("--out", default="results/probe_bc_multitask.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    x, y, ep, instructions, table = load_pairs(args.store, args.text)
    val = ep % 20 == 0  # every 20th episode held out
    mu, sd = x[~val].mean(0), x[~val].std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    train_idx = np.where(~val)[0]
    t0 = time.perf_counter()
    for _ in range(args.steps):
        b = torch.as_tensor(rng.choice(train_idx, 256))
        loss = (net(xt[b]) - yt[b]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        mae = (net(xt[val]) - yt[val]).abs().mean(0).numpy()
    zero = np.abs(y[val]).mean(0)
    print(f"fit {time.perf_counter() - t0:.0f} s; held-out MAE per action dim {mae.round(3)}; "
          f"predicting zero {zero.round(3)}", flush=True)

    from sim.registry import make_env

    env = make_env("embedded_multitask", obs_mode="state", kinds=args.kinds)
    per_kind: dict[str, list[int]] = {}
    try:
        for k in range(args.episodes):
            obs, info = env.reset(seed=args.seed + k)
            if info["language"] not in instructions:
                raise SystemExit(f"instruction {info['language']!r} is not in the store; collect more demos")
            code = table[instructions.index(info["language"])]
            prev, success = obs["state"], False
            for _ in range(args.max_steps):
                feat = (np.concatenate([prev, obs["state"], code]) - mu) / sd
                prev = obs["state"]
                with torch.no_grad():
                    action = net(torch.tensor(feat, dtype=torch.float32)[None])[0].numpy()
                obs, _, terminated, truncated, info = env.step(action)
                success = bool(info["success"])
                if success or terminated or truncated:
                    break
            per_kind.setdefault(info["task"], [0, 0])
            per_kind[info["task"]][0] += int(success)
            per_kind[info["task"]][1] += 1
    finally:
        env.close()
    total = sum(v[0] for v in per_kind.values())
    print(f"closed loop: {total}/{args.episodes} successes; per kind (successes, episodes) {per_kind}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"store": args.store, "steps": args.steps, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "held_out_mae": mae.round(4).tolist(), "predict_zero_mae": zero.round(4).tolist(),
                               "episodes": args.episodes, "seed": args.seed, "kinds": args.kinds, "text": args.text, "successes": total,
                               "per_kind": per_kind}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

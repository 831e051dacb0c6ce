"""`robopolicy data ...`: inspect, validate, render and convert episode stores."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from robopolicy.data import EpisodeStore, StoreFormatError

console = Console()


def _open(path: str, mode: str = "r") -> EpisodeStore:
    try:
        return EpisodeStore.open(path, mode=mode)
    except (FileNotFoundError, StoreFormatError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise SystemExit(1) from None


def cmd_info(args) -> int:
    from robopolicy.data.inspect import summarize

    info = summarize(_open(args.store))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    head = Table(title=f"{info['path']}", show_header=False)
    lengths = info["episode_length"]
    for name, value in [
        ("episodes", info["episodes"]), ("frames", info["frames"]), ("fps", f"{info['fps']:g}"),
        ("duration", f"{info['duration_s_nominal']:.1f} s nominal, {info['duration_s_measured']:.1f} s measured"),
        ("episode length", f"min {lengths['min']}, mean {lengths['mean']:.1f}, max {lengths['max']}"),
        ("success", f"{info['success']['true']} yes / {info['success']['false']} no / "
                    f"{info['success']['unlabelled']} unlabelled"),
        ("tasks", ", ".join(f"{k or '-'} ({v})" for k, v in info["tasks"].items())),
        ("sources", ", ".join(f"{k} ({v})" for k, v in info["sources"].items())),
    ]:
        head.add_row(name, str(value))
    console.print(head)
    keys = Table(title="keys")
    for col in ("key", "kind", "dtype", "per-step shape"):
        keys.add_column(col)
    for k, spec in info["keys"].items():
        keys.add_row(k, spec["kind"], spec["dtype"], str(tuple(spec["shape"])))
    console.print(keys)
    return 0


def cmd_validate(args) -> int:
    from robopolicy.data.inspect import validate_store

    store = _open(args.store, mode="a" if args.repair else "r")
    torn = {k: store.array(k).shape[0] - store.n_frames for k in store.keys if store.array(k).shape[0] != store.n_frames}
    if torn and not args.repair:
        console.print(f"[yellow]uncommitted rows after the last episode (a write was interrupted): {torn}; "
                      "they are ignored; run with --repair to remove them[/yellow]")
    report = validate_store(store, deep=args.deep)
    for p in report.problems:
        console.print(f"[red]problem:[/red] {p}")
    verdict = "[green]OK[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]"
    console.print(f"{verdict}: checked {report.checked_episodes} episodes, {report.checked_frames} frames"
                  f"{' (images decompressed)' if args.deep else ''}")
    return 0 if report.ok else 1


def cmd_render(args) -> int:
    from robopolicy.data.render import render_episode

    store = _open(args.store)
    episodes = range(store.n_episodes) if args.all else args.episode
    for i in episodes:
        try:
            paths = render_episode(store, i, args.out)
        except IndexError as e:
            console.print(f"[red]error:[/red] {e}")
            return 1
        console.print(f"episode {i}: " + ", ".join(f"{k} -> {v}" for k, v in paths.items()))
    return 0


def cmd_export(args) -> int:
    from robopolicy.data.lerobot_io import export_lerobot

    out = export_lerobot(args.store, args.out, repo_id=args.repo_id, use_videos=not args.images,
                         overwrite=args.overwrite)
    console.print(f"wrote LeRobotDataset v3 to {out}")
    return 0


def cmd_import(args) -> int:
    from robopolicy.data.lerobot_io import import_lerobot

    store = import_lerobot(args.dataset, args.out, overwrite=args.overwrite)
    console.print(f"imported {store.n_episodes} episodes ({store.n_frames} frames) into {store.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robopolicy data", description="Inspect, validate, render and convert "
                                "episode stores (zarr v3, see DESIGN.md) and LeRobotDataset v3 folders.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("info", help="episodes, frames, keys, shapes, duration and success counts")
    s.add_argument("store")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("validate", help="check every episode (NaN/inf, timestamps, attributes, torn tails)")
    s.add_argument("store")
    s.add_argument("--deep", action="store_true", help="also decompress every image chunk")
    s.add_argument("--repair", action="store_true", help="remove uncommitted rows left by an interrupted write")
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("render", help="write an episode as mp4 (cameras side by side) + PNG of actions/state")
    s.add_argument("store")
    s.add_argument("--episode", type=int, nargs="+", default=[0], help="episode indices (default 0)")
    s.add_argument("--all", action="store_true", help="render every episode")
    s.add_argument("--out", default="renders", help="output folder (default ./renders)")
    s.set_defaults(fn=cmd_render)
    s = sub.add_parser("export-lerobot", help="write a LeRobotDataset v3 (videos included) with lerobot's API")
    s.add_argument("store")
    s.add_argument("out", help="output folder of the LeRobot dataset (must not exist)")
    s.add_argument("--repo-id", default=None, help="dataset repo id recorded in its metadata (default local/<name>)")
    s.add_argument("--images", action="store_true", help="store frames as lossless images instead of videos")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("import-lerobot", help="read a local LeRobotDataset v3 into a new episode store")
    s.add_argument("dataset", help="folder of a LeRobotDataset v3 (with meta/info.json)")
    s.add_argument("out", help="path of the new episode store (.zarr)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.set_defaults(fn=cmd_import)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, FileExistsError, ValueError, StoreFormatError) as e:
        # Bad input (a missing path, an existing output, a foreign dataset): one line, not a traceback.
        console.print(f"[red]error:[/red] {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

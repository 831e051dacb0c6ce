"""EpisodeStore -> LeRobotDataset v3, written through lerobot's own API (see lerobot_io for the naming)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data.episode_store import EpisodeStore
from robopolicy.data.lerobot_io import (
    SIDECAR_FORMAT,
    SIDECAR_PATH,
    SIDECAR_VERSION,
    default_repo_id,
    feature_name_for_key,
    prefetch,
)
from robopolicy.data.schema import FieldSpec, key_kind

log = logging.getLogger(__name__)

_IMAGE_NAMES = ["height", "width", "channels"]


def _plan_features(store: EpisodeStore, use_videos: bool) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """LeRobot feature dict plus (store key, feature name, kind) for every exported key."""
    features: dict[str, dict] = {}
    plan: list[tuple[str, str, str]] = []
    names_extra = (store.schema.extra or {}).get("names", {}) if store.schema else {}
    for key in store.keys:
        spec: FieldSpec = store.schema.fields[key]
        kind = key_kind(key)
        if kind == "timestamp":
            continue
        name = feature_name_for_key(key)
        if name in features:
            raise ValueError(f"store keys {[k for k, n, _ in plan if n == name] + [key]} both map to the LeRobot "
                             f"feature '{name}'; rename one of them before exporting")
        if kind == "image":
            features[name] = {"dtype": "video" if use_videos else "image", "shape": tuple(spec.shape),
                              "names": list(_IMAGE_NAMES)}
        elif kind == "depth":
            # lerobot's raw depth path: 16-bit TIFF frames embedded in parquet, lossless (unit mm for uint16).
            features[name] = {"dtype": "image", "shape": (*spec.shape, 1), "names": list(_IMAGE_NAMES),
                              "info": {"is_depth_map": True}}
        else:
            shape = tuple(spec.shape) or (1,)
            names = names_extra.get(key)
            if not (isinstance(names, list) and len(shape) == 1 and len(names) == shape[0]):
                names = None
            features[name] = {"dtype": spec.dtype, "shape": shape, "names": names}
        plan.append((key, name, kind))
    return features, plan


def _frame_value(kind: str, row: np.ndarray) -> np.ndarray:
    if kind == "depth":
        return row[..., None]
    if kind == "lowdim" and row.ndim == 0:
        return row.reshape(1)
    return row


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; choose another directory or pass overwrite=True")
        if any(out_dir.iterdir()) and not (out_dir / "meta" / "info.json").exists():
            raise FileExistsError(f"{out_dir} exists and is not a LeRobot dataset; refusing to overwrite it")
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial


def _check_video_lengths(root: Path, video_keys: list[str], lengths: list[int], fps: int) -> None:
    """Every episode's video segment must span exactly its frames (lerobot's streaming encoder drops frames
    silently when its queue is full; the export sizes the queue so it cannot, this checks it)."""
    if not video_keys:
        return
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted((root / "meta" / "episodes").glob("*/*.parquet"))]
    rows: dict[int, dict[str, Any]] = {}
    for t in tables:
        for r in t.select([c for c in t.column_names if not c.startswith("stats/")]).to_pylist():
            rows[int(r["episode_index"])] = r
    for ep, n in enumerate(lengths):
        for vk in video_keys:
            span = (rows[ep][f"videos/{vk}/to_timestamp"] - rows[ep][f"videos/{vk}/from_timestamp"]) * fps
            if abs(span - n) > 0.5:
                raise RuntimeError(f"export: the video of '{vk}' for episode {ep} holds {span:.1f} frames, "
                                   f"expected {n}; the encoder lost frames. Retry with encoding='png'.")


def export_store(store_path, out_dir, repo_id=None, use_videos=True, progress=True, overwrite=False,
                 encoding="streaming", rgb_encoder=None) -> Path:
    from tqdm.auto import tqdm

    if encoding not in ("streaming", "png"):
        raise ValueError(f"encoding must be 'streaming' or 'png', got {encoding!r}")
    store = EpisodeStore.open(store_path, mode="r")
    if store.n_episodes == 0 or store.schema is None:
        raise ValueError(f"{store_path}: the store has no episodes; nothing to export")
    out_dir = Path(out_dir)
    repo_id = repo_id or default_repo_id(store_path)
    fps = store.fps
    lr_fps = int(round(fps))
    if lr_fps < 1:
        raise ValueError(f"{store_path}: fps {fps} cannot be written to LeRobot (integer fps >= 1)")
    if not math.isclose(fps, lr_fps, abs_tol=1e-6):
        warnings.warn(f"LeRobot stores an integer fps: writing {lr_fps} for the store's {fps} (the exact "
                      "rate is kept in the sidecar)", stacklevel=3)
    features, plan = _plan_features(store, use_videos)
    robots = {str(a.get("robot") or "") for a in store.all_episode_attrs()} - {""}
    robot_type = robots.pop() if len(robots) == 1 else None
    lengths = [int(n) for n in store.episode_lengths]

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration per video otherwise
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.utils import SuppressProgressBars

    partial = _prepare_out_dir(out_dir, overwrite)
    streaming = encoding == "streaming" and use_videos and any(k == "image" for _, _, k in plan)
    ds = LeRobotDataset.create(
        repo_id, lr_fps, features, root=partial, robot_type=robot_type, use_videos=use_videos,
        video_backend="pyav",  # torchcodec is not loadable everywhere; decoding here is pyav's job anyway
        rgb_encoder=rgb_encoder, streaming_encoding=streaming,
        # never drop frames: the queue holds a whole episode (offline export feeds faster than real time)
        encoder_queue_maxsize=max(lengths) + 2,
    )
    import av

    av.logging.set_libav_level(av.logging.WARNING)  # silence ffmpeg's per-episode mp4 "second pass" notes
    episodes_meta = []
    episodes = prefetch(lambda i: (store.get_episode(i), store.episode_attrs(i)), store.n_episodes)
    try:
        with SuppressProgressBars():  # datasets' per-episode "Map" bars
            for i, (ep, attrs) in enumerate(tqdm(episodes, desc="export-lerobot", unit="ep",
                                                 total=store.n_episodes, disable=not progress)):
                task = str(attrs.get("language") or attrs.get("task") or "")
                for t in range(lengths[i]):
                    frame = {name: _frame_value(kind, ep[key][t]) for key, name, kind in plan}
                    frame["task"] = task
                    ds.add_frame(frame)
                ds.save_episode()
                episodes_meta.append({"episode_index": i, "length": lengths[i], "attrs": attrs,
                                      "timestamps": ep["timestamp"].tolist()})
            ds.finalize()
        video_keys = [name for _, name, kind in plan if kind == "image" and use_videos]
        _check_video_lengths(partial, video_keys, lengths, lr_fps)
        sidecar = {
            "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "repo_id": repo_id,
            "source_store": str(Path(store_path).resolve()), "fps": fps, "schema": store.schema.to_json(),
            "features": {key: name for key, name, _ in plan},
            "episodes": episodes_meta,
        }
        (partial / SIDECAR_PATH).write_text(json.dumps(sidecar))
    except BaseException:
        episodes.close()
        with contextlib.suppress(Exception):
            ds.finalize()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        av.logging.set_libav_level(av.logging.INFO)  # libav's default
    images_tmp = partial / "images"  # lerobot leaves its (empty) per-frame staging folders behind
    if images_tmp.is_dir() and not any(p.is_file() for p in images_tmp.rglob("*")):
        shutil.rmtree(images_tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir

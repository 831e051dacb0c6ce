"""Local LeRobotDataset v3 -> EpisodeStore (see lerobot_io for the naming and the sidecar).

Reads the dataset's files directly (info.json, tasks and episodes parquet, data parquet, mp4) so no Hub
access can be triggered; each data file is read once and each video file decoded once, front to back,
whole episodes at a time.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data.episode_store import EpisodeStore
from robopolicy.data.lerobot_io import (
    LEROBOT_DEFAULT_COLUMNS,
    LeRobotFormatError,
    _feature_info,
    key_for_feature,
    prefetch,
    read_sidecar,
)
from robopolicy.data.schema import TIMESTAMP_KEY

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- metadata
def _read_info(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise FileNotFoundError(f"no LeRobot dataset at {root}")
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        hint = ""
        if (root / "zarr.json").exists():
            hint = " It looks like a zarr store (an EpisodeStore?); export it with `robopolicy data export-lerobot`."
        raise LeRobotFormatError(f"{root} is not a LeRobot dataset: {info_path.relative_to(root)} is missing.{hint}")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LeRobotFormatError(f"{info_path}: unreadable ({e})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise LeRobotFormatError(
            f"{root} is a LeRobot dataset of codebase version {version or 'unknown'}; only v3 is read. Convert it "
            "with lerobot's converter (python -m lerobot.scripts.convert_dataset_v21_to_v30) first.")
    for field in ("fps", "features", "data_path"):
        if field not in info:
            raise LeRobotFormatError(f"{info_path} has no '{field}'; the dataset metadata is damaged")
    return info


def _read_tasks(root: Path) -> dict[int, str]:
    import pandas as pd

    path = root / "meta" / "tasks.parquet"
    if not path.exists():
        raise LeRobotFormatError(f"{root}: meta/tasks.parquet is missing; the dataset metadata is damaged")
    df = pd.read_parquet(path)
    if "task" in df.columns:
        return {int(i): str(t) for t, i in zip(df["task"], df["task_index"], strict=True)}
    return {int(i): str(t) for t, i in zip(df.index, df["task_index"], strict=True)}


def _read_episodes(root: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root}: no meta/episodes/*/*.parquet; the dataset has no episode index")
    rows = []
    for f in files:
        names = [c for c in pq.read_schema(f).names if not c.startswith("stats/")]
        rows += pq.read_table(f, columns=names).to_pylist()
    rows.sort(key=lambda r: int(r["episode_index"]))
    return rows


def _sidecar_for(root: Path, episodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    side = read_sidecar(root)
    if side is None:
        return None
    eps = side.get("episodes", [])
    if [int(e["length"]) for e in eps] != [int(r["length"]) for r in episodes]:
        warnings.warn(f"{root}: the robopolicy sidecar does not match the dataset's episodes (edited after export?); "
                      "ignoring it: attributes and timestamps come from LeRobot's metadata", stacklevel=4)
        return None
    return side


# ---------------------------------------------------------------------------------------------- columns
def _column_to_numpy(col, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        raise LeRobotFormatError(f"column has {arr.null_count} missing values")
    while True:
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
            arr = arr.flatten()
        else:
            break
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(n, *shape).astype(dtype, copy=False)


def _decode_image_column(col, root: Path, is_depth: bool, depth_unit: str | None) -> np.ndarray:
    import pyarrow as pa
    from PIL import Image

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    out = []
    for item in arr.to_pylist():
        src = io.BytesIO(item["bytes"]) if item.get("bytes") else root / str(item.get("path"))
        with Image.open(src) as img:
            out.append(_depth_to_mm(np.array(img), depth_unit) if is_depth else np.asarray(img.convert("RGB")))
    return np.stack(out)


def _depth_to_mm(a: np.ndarray, unit: str | None) -> np.ndarray:
    if a.ndim == 3:
        a = a[..., 0]
    if np.issubdtype(a.dtype, np.floating) or unit == "m":
        scale = 1000.0 if (unit or "m") == "m" else 1.0
        return np.clip(np.rint(a.astype(np.float64) * scale), 0, 65535).astype(np.uint16)
    return a.astype(np.uint16)


# ---------------------------------------------------------------------------------------------- videos
class _VideoSegments:
    """Sequential PyAV decoder for one video feature: consecutive episodes come out of one decoding pass."""

    def __init__(self, name: str, ft: dict[str, Any], tolerance_s: float):
        self.name = name
        self.tol = tolerance_s
        self.is_depth = bool(_feature_info(ft).get("is_depth_map"))
        self.depth_cfg = None
        if self.is_depth:
            from lerobot.configs import DepthEncoderConfig

            self.depth_cfg = DepthEncoderConfig.from_video_info(ft.get("info"))
        self.path: Path | None = None
        self._container = None
        self._frames = None
        self._ahead = None
        self._consumed_t = -np.inf

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = self._ahead = None
        self.path = None

    def _seek(self, path: Path, t: float) -> None:
        import av

        if path != self.path:
            self.close()
            self._container = av.open(str(path))
            self.path = path
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
        if t > 0:
            self._container.seek(max(0, round(t / self._stream.time_base) - 1), backward=True, any_frame=False,
                                 stream=self._stream)
        else:
            self._container.seek(0)
        self._frames = self._container.decode(self._stream)
        self._ahead = None
        self._consumed_t = -np.inf

    def read(self, path: Path, times: np.ndarray) -> np.ndarray:
        """Frames nearest to the absolute ``times`` (seconds in the file), each within the tolerance."""
        lo, hi = float(times[0]) - self.tol, float(times[-1]) + self.tol
        ahead_t = None if self._ahead is None else float(self._ahead.pts * self._stream.time_base)
        if path != self.path or lo <= self._consumed_t or (lo - (ahead_t or self._consumed_t)) > 2.0:
            self._seek(path, lo)
        got_t: list[float] = []
        got: list = []
        while True:
            fr, self._ahead = (self._ahead, None) if self._ahead is not None else (next(self._frames, None), None)
            if fr is None:
                break
            if fr.pts is None:
                continue
            t = float(fr.pts * self._stream.time_base)
            if t > hi:
                self._ahead = fr
                break
            self._consumed_t = t
            if t >= lo:
                got_t.append(t)
                got.append(fr)
        if not got:
            raise LeRobotFormatError(f"{path}: no frames of '{self.name}' between {lo:.4f} s and {hi:.4f} s")
        gt = np.asarray(got_t)
        idx = np.abs(gt[None, :] - times[:, None]).argmin(axis=1)
        err = np.abs(gt[idx] - times)
        if (err > self.tol).any():
            bad = int(np.argmax(err > self.tol))
            raise LeRobotFormatError(
                f"{path}: no frame of '{self.name}' within {self.tol} s of t={times[bad]:.4f} s (nearest "
                f"{gt[idx[bad]]:.4f} s); the video and the timestamps disagree. Pass a larger tolerance_s to accept it.")
        if not self.is_depth:
            return np.stack([got[i].to_ndarray(format="rgb24") for i in idx])
        import torch
        from lerobot.datasets.depth_utils import dequantize_depth

        # the torch path, as LeRobotDataset's reader uses it: identical values to what lerobot returns
        codes = torch.from_numpy(np.stack([got[i].to_ndarray(format="gray12le") for i in idx])[:, None])
        c = self.depth_cfg
        mm = dequantize_depth(codes, depth_min=c.depth_min, depth_max=c.depth_max, shift=c.shift, use_log=c.use_log,
                              output_unit="mm", output_tensor=True)
        return mm[:, 0].numpy().astype(np.uint16)


# ---------------------------------------------------------------------------------------------- import
def _plan(info: dict[str, Any], side: dict[str, Any] | None) -> list[tuple[str, str, dict, str]]:
    """(feature name, store key, feature, kind in video|image|lowdim) for every imported feature."""
    from_side = {name: key for key, name in (side or {}).get("features", {}).items()}
    plan, used, skipped = [], set(), []
    for name, ft in info["features"].items():
        dtype = ft.get("dtype")
        if name in LEROBOT_DEFAULT_COLUMNS or name.startswith("language_"):
            continue
        if dtype in ("string", "language") or dtype is None:
            skipped.append(name)
            continue
        key = from_side.get(name) or key_for_feature(name, ft)
        base, n = key, 1
        while key in used or key == TIMESTAMP_KEY:
            key, n = f"{base}_{n}", n + 1
        used.add(key)
        kind = dtype if dtype in ("video", "image") else "lowdim"
        plan.append((name, key, ft, kind))
    if skipped:
        warnings.warn(f"LeRobot features without a numeric or visual value are not imported: {skipped}", stacklevel=4)
    return plan


def _timestamps(ts32: np.ndarray, frame_index: np.ndarray, fps: int) -> tuple[np.ndarray, np.ndarray]:
    """(times relative to the episode for the video lookup, float64 store timestamps) of one episode.

    LeRobot writes timestamp = frame_index / fps as float32; when that holds, the store gets the exact
    float64 value instead of the float32 rounding."""
    rel = ts32.astype(np.float64)
    nominal = frame_index.astype(np.float64) / fps
    store_ts = nominal if np.array_equal(nominal.astype(np.float32), ts32.astype(np.float32)) else rel
    if len(store_ts) > 1 and (np.diff(store_ts) <= 0).any():
        warnings.warn("LeRobot timestamps are not strictly increasing in an episode; using frame_index / fps",
                      stacklevel=4)
        store_ts = nominal
    return rel, store_ts


class _EpisodeReader:
    """Loads episode n of a LeRobot dataset as EpisodeStore steps + attributes (call in episode order)."""

    def __init__(self, root: Path, info: dict, tasks: dict[int, str], episodes: list[dict], side: dict | None,
                 tolerance_s: float):
        self.root, self.info, self.tasks, self.episodes, self.side = root, info, tasks, episodes, side
        self.fps = int(info["fps"])
        self.plan = _plan(info, side)
        self.readers = {name: _VideoSegments(name, ft, tolerance_s) for name, _, ft, kind in self.plan
                        if kind == "video"}
        self.side_fields = ((side or {}).get("schema") or {}).get("fields", {})
        self.columns = ["timestamp", "frame_index", "episode_index", "task_index"]
        self.columns += [name for name, _, _, kind in self.plan if kind != "video"]
        self._table_key = self._tbl = None
        self._cols: dict[str, np.ndarray] = {}
        self._rows: dict[int, np.ndarray] = {}
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(4, len(self.readers))))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for r in self.readers.values():
            r.close()

    def _table(self, ep: dict, e: int):
        """The data file holding episode e (read once), and the row numbers of e in it, in frame order."""
        import pyarrow.parquet as pq

        key = (int(ep["data/chunk_index"]), int(ep["data/file_index"]))
        if key != self._table_key:
            path = self.root / self.info["data_path"].format(chunk_index=key[0], file_index=key[1])
            if not path.exists():
                raise LeRobotFormatError(f"{self.root}: data file {path.relative_to(self.root)} of episode {e} is missing")
            self._tbl, self._table_key = pq.read_table(path, columns=self.columns), key
            self._cols = {c: self._tbl.column(c).to_numpy() for c in self.columns[:4]}
            order = np.lexsort((self._cols["frame_index"], self._cols["episode_index"]))
            eps, starts = np.unique(self._cols["episode_index"][order], return_index=True)
            self._rows = dict(zip(eps.tolist(), np.split(order, starts[1:]), strict=True))
        return self._tbl, self._rows.get(e, np.zeros(0, dtype=np.int64))

    def load(self, n: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        ep = self.episodes[n]
        e = int(ep["episode_index"])
        tbl, rows = self._table(ep, e)
        if len(rows) != int(ep["length"]):
            raise LeRobotFormatError(f"{self.root}: episode {e} has {len(rows)} rows in its data file but length "
                                     f"{ep['length']} in meta/episodes")
        rel_ts, store_ts = _timestamps(self._cols["timestamp"][rows], self._cols["frame_index"][rows], self.fps)
        steps: dict[str, np.ndarray] = {}
        futures = {}
        for name, key, ft, kind in self.plan:
            if kind == "video":
                vpath = self.root / self.info["video_path"].format(
                    video_key=name, chunk_index=int(ep[f"videos/{name}/chunk_index"]),
                    file_index=int(ep[f"videos/{name}/file_index"]))
                times = float(ep[f"videos/{name}/from_timestamp"]) + rel_ts
                futures[key] = self.pool.submit(self.readers[name].read, vpath, times)
            elif kind == "image":
                fi = _feature_info(ft)
                steps[key] = _decode_image_column(tbl.column(name).take(rows), self.root,
                                                  bool(fi.get("is_depth_map")), fi.get("depth_unit"))
            else:
                spec = self.side_fields.get(key)
                shape = tuple(spec["shape"]) if spec else tuple(ft["shape"])
                dtype = spec["dtype"] if spec else ft["dtype"]
                steps[key] = _column_to_numpy(tbl.column(name).take(rows), shape, dtype)
        for key, fut in futures.items():
            steps[key] = fut.result()
        if self.side is not None:
            side_ep = self.side["episodes"][n]
            steps[TIMESTAMP_KEY] = np.asarray(side_ep["timestamps"], dtype=np.float64)
            return steps, dict(side_ep["attrs"])
        steps[TIMESTAMP_KEY] = store_ts
        task_idx = self._cols["task_index"][rows]
        ep_tasks = [self.tasks.get(int(t), "") for t in dict.fromkeys(task_idx.tolist())]
        task = ep_tasks[0] if ep_tasks else ""
        attrs = {"task": task, "language": task, "success": None, "source": "imported",
                 "robot": self.info.get("robot_type") or "",
                 "lerobot": {"dataset": str(self.root.resolve()), "episode_index": e}}
        if len(ep_tasks) > 1:
            attrs["lerobot"]["tasks"] = ep_tasks
        return steps, attrs


def import_dataset(dataset_dir, store_path, progress=True, overwrite=False, tolerance_s=1e-4) -> EpisodeStore:
    from tqdm.auto import tqdm

    root = Path(dataset_dir)
    info = _read_info(root)
    store_path = Path(store_path)
    if store_path.exists() and not overwrite:
        raise FileExistsError(f"{store_path} already exists; choose another path or pass overwrite=True")
    episodes = _read_episodes(root)
    side = _sidecar_for(root, episodes)
    reader = _EpisodeReader(root, info, _read_tasks(root), episodes, side, tolerance_s)
    partial = store_path.with_name(store_path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    done, loaded = False, None
    try:
        store = EpisodeStore.create(partial, fps=float(side["fps"]) if side else float(info["fps"]))
        loaded = prefetch(reader.load, len(episodes))
        for steps, attrs in tqdm(loaded, desc="import-lerobot", unit="ep", total=len(episodes), disable=not progress):
            store.add_episode(steps, attrs)
        done = True
    finally:
        if loaded is not None:
            loaded.close()  # waits for a load still running in the prefetch thread
        reader.close()
        if not done:
            shutil.rmtree(partial, ignore_errors=True)
    if store_path.exists():
        shutil.rmtree(store_path)
    partial.rename(store_path)
    return EpisodeStore.open(store_path, mode="a")

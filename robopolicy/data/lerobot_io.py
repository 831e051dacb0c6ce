"""LeRobotDataset v3 interop: export an EpisodeStore through lerobot's own writer, import any local v3 dataset.

Feature names (EpisodeStore key -> LeRobot feature)::

    state              -> observation.state
    action             -> action
    images/<cam>       -> observation.images.<cam>   dtype "video" (mp4, lossy) or "image" (png, lossless)
    depth/<cam>        -> observation.depth.<cam>    dtype "image", shape (H, W, 1), info.is_depth_map:
                                                     lerobot's raw 16-bit TIFF path, lossless, unit mm
    timestamp          -> (lerobot writes its own nominal frame_index / fps; ours go to the sidecar)
    <other low-dim>    -> observation.<key>          ('/' becomes '.'; names already starting with
                                                     'observation.', 'action.' or 'next.' are kept)

lerobot 0.6.1 can also store depth as a 12-bit log-quantised video; that is lossy, so the export uses the
lossless image path. The import reads both.

What LeRobot's schema cannot hold travels in a sidecar, ``meta/robopolicy_episodes.json`` inside the
dataset: the exact store fps, the store schema, the key -> feature map, and per episode the attributes
(task, language, success, source, robot, start time, ...) and the measured timestamps. The import uses
the sidecar only when it matches the dataset (same episode count and lengths), so a dataset edited
later with lerobot's tools falls back to what LeRobot itself stores.

lerobot is imported lazily: ``import robopolicy.data`` stays light.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from robopolicy.data.schema import DEPTH_PREFIX, IMAGE_PREFIX, TIMESTAMP_KEY

SIDECAR_PATH = "meta/robopolicy_episodes.json"
SIDECAR_FORMAT = "robopolicy.lerobot_sidecar"
SIDECAR_VERSION = 1

# Columns every LeRobot v3 dataset carries; not features of our store.
LEROBOT_DEFAULT_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_KEPT_PREFIXES = ("observation.", "action.", "next.")


class LeRobotFormatError(ValueError):
    """A directory is not a readable LeRobotDataset v3 (missing metadata, other version, broken files)."""


# ---------------------------------------------------------------------------------------------- naming
def feature_name_for_key(key: str) -> str:
    """The LeRobot feature name an EpisodeStore key is exported under."""
    if key == "state":
        return "observation.state"
    if key == "action":
        return "action"
    if key.startswith(IMAGE_PREFIX):
        return "observation.images." + key[len(IMAGE_PREFIX):].replace("/", ".")
    if key.startswith(DEPTH_PREFIX):
        return "observation.depth." + key[len(DEPTH_PREFIX):].replace("/", ".")
    name = key.replace("/", ".")
    return name if name.startswith(_KEPT_PREFIXES) else "observation." + name


def key_for_feature(name: str, ft: dict[str, Any]) -> str:
    """The EpisodeStore key a LeRobot feature is imported as (inverse of :func:`feature_name_for_key`)."""
    visual = ft.get("dtype") in ("video", "image")
    is_depth = visual and bool(_feature_info(ft).get("is_depth_map"))
    if name == "observation.state":
        return "state"
    if name == "action":
        return "action"
    for prefix in ("observation.images.", "observation.depth."):
        if name.startswith(prefix):
            cam = name[len(prefix):]
            return (DEPTH_PREFIX if is_depth or prefix == "observation.depth." else IMAGE_PREFIX) + cam
    if visual:  # e.g. pusht's "observation.image"
        cam = name.removeprefix("observation.").replace(".", "_")
        return (DEPTH_PREFIX if is_depth else IMAGE_PREFIX) + cam
    if name == TIMESTAMP_KEY:
        raise ValueError("'timestamp' is not a data feature")
    return name.removeprefix("observation.")


def _feature_info(ft: dict[str, Any]) -> dict[str, Any]:
    info = ft.get("info") or {}
    return {**(ft.get("video_info") or {}), **info}


def default_repo_id(store_path: str | Path) -> str:
    name = Path(store_path).name
    for suffix in (".zarr", ".zip"):
        name = name.removesuffix(suffix)
    return f"local/{name or 'dataset'}"


def read_sidecar(dataset_dir: str | Path) -> dict[str, Any] | None:
    path = Path(dataset_dir) / SIDECAR_PATH
    if not path.exists():
        return None
    try:
        side = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LeRobotFormatError(f"{path}: unreadable robopolicy sidecar ({e}); delete it to import "
                                 "the dataset from LeRobot's own metadata only") from None
    if side.get("format") != SIDECAR_FORMAT or side.get("version") != SIDECAR_VERSION:
        return None
    return side


def prefetch(fn: Callable[[int], Any], n: int) -> Iterator[Any]:
    """Yield fn(0), ..., fn(n-1) in order, computing the next item in a background thread meanwhile."""
    if n <= 0:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(fn, 0)
        for i in range(n):
            item = fut.result()
            if i + 1 < n:
                fut = pool.submit(fn, i + 1)
            yield item


# ---------------------------------------------------------------------------------------------- public API
def export_lerobot(
    store_path: str | Path,
    out_dir: str | Path,
    repo_id: str | None = None,
    use_videos: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    encoding: str = "streaming",
    rgb_encoder: Any = None,
) -> Path:
    """Write the EpisodeStore at ``store_path`` as a LeRobotDataset v3 in ``out_dir`` (lerobot's own API).

    ``repo_id`` defaults to ``local/<store name>``. ``use_videos`` stores cameras as mp4 (lerobot's default
    codec, AV1 crf 30, lossy) or, when False, as lossless PNG inside the parquet files. ``encoding`` picks
    lerobot's video path: "streaming" (frames fed to encoder threads, no PNG round trip; fastest) or "png"
    (lerobot's classic path: PNG per frame, then encode per episode). ``rgb_encoder`` is passed to
    ``LeRobotDataset.create`` (a ``lerobot.configs.RGBEncoderConfig``; None = lerobot's defaults).
    The dataset is written beside ``out_dir`` and moved into place when complete. Returns ``out_dir``.
    """
    from robopolicy.data.lerobot_export import export_store

    return export_store(store_path, out_dir, repo_id=repo_id, use_videos=use_videos, progress=progress,
                        overwrite=overwrite, encoding=encoding, rgb_encoder=rgb_encoder)


def import_lerobot(
    dataset_dir: str | Path,
    store_path: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    tolerance_s: float = 1e-4,
):
    """Read the local LeRobotDataset v3 in ``dataset_dir`` into a new EpisodeStore at ``store_path``.

    Videos are decoded sequentially with PyAV, one pass per video file, whole episodes at a time.
    Tasks become the episodes' ``language`` and ``task`` attributes; timestamps come from our sidecar when
    the dataset was exported by robopolicy, else from LeRobot's timestamp column. ``tolerance_s`` is the
    largest gap allowed between a frame's timestamp and the video frame decoded for it (lerobot's default).
    Returns the store, open for appending.
    """
    from robopolicy.data.lerobot_import import import_dataset

    return import_dataset(dataset_dir, store_path, progress=progress, overwrite=overwrite,
                          tolerance_s=tolerance_s)

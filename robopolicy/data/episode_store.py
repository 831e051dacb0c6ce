"""EpisodeStore: episodes of robot data in one zarr v3 group (Diffusion Policy's replay-buffer layout).

Layout::

    store.zarr/
      zarr.json                 attributes: format, version, schema (keys, dtypes, shapes, fps, cameras)
      data/<key>                time-major arrays, all episodes concatenated (images/<cam>, depth/<cam>, ...)
      meta/episode_attrs        one JSON string per episode (task, language, success, source, robot, ...)
      meta/episode_ends         int64 cumulative end index of every episode: the commit record

Appending is atomic per episode: the data rows are written first, then the episode's attributes, and
``episode_ends`` last. zarr's local store replaces every file by rename, so a process killed at any
point leaves either the old or the new commit record; rows past the last committed end are a torn tail,
ignored by readers and removed the next time the store is opened for writing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robopolicy.data.codecs import chunks_for, compressors_for
from robopolicy.data.errors import EpisodeValidationError, StoreFormatError
from robopolicy.data.frame_io import FrameChunkIO, frame_io_for
from robopolicy.data.schema import StoreSchema, key_kind

FORMAT_NAME = "robopolicy.episode_store"
FORMAT_VERSION = 1
SOURCES = ("teleop", "expert", "policy", "rollout", "imported")
_ATTR_DEFAULTS: dict[str, Any] = {
    "task": "",
    "language": "",
    "success": None,
    "source": "teleop",
    "robot": "",
}


def _normalise_attrs(attrs: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(_ATTR_DEFAULTS)
    out["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out.update(attrs or {})
    if out["source"] not in SOURCES:
        raise EpisodeValidationError(f"attribute 'source' must be one of {SOURCES}, got {out['source']!r}")
    if out["success"] is not None:
        out["success"] = bool(out["success"])
    try:
        json.dumps(out)
    except TypeError as e:
        raise EpisodeValidationError(f"episode attributes must be JSON-serialisable: {e}") from None
    return out


class EpisodeStore:
    """A growing set of episodes on disk. Open with :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    def __init__(self, root: zarr.Group, path: Path, mode: str):
        self._root = root
        self.path = path
        self.mode = mode
        self._check_format()
        self.schema: StoreSchema | None = (
            StoreSchema.from_json(root.attrs["schema"]) if root.attrs.get("schema") else None
        )
        self._ends = self._read_committed_ends()
        self._arrays: dict[str, zarr.Array] = {}
        self._frame_io: dict[str, FrameChunkIO | None] = {}
        if mode != "r":
            self._clean_torn_tail()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls, path: str | Path, fps: float | None = None, schema: StoreSchema | None = None, overwrite: bool = False
    ) -> EpisodeStore:
        """Create an empty store. The schema is declared here or fixed by the first episode written."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; open it with EpisodeStore.open(path, mode='a') "
                                  "or pass overwrite=True to replace it")
        if schema is not None:
            schema.check_kinds()
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        root.attrs.update({
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fps": float(fps if fps is not None else (schema.fps if schema else 10.0)),
            "schema": schema.to_json() if schema else None,
        })
        meta = root.create_group("meta")
        meta.create_array("episode_attrs", shape=(0,), chunks=(1,), dtype=str)
        meta.create_array("episode_ends", shape=(0,), chunks=(8192,), dtype="int64", fill_value=-1)
        root.create_group("data")
        store = cls(root, path, "a")
        if schema is not None:
            store._create_arrays(schema)
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EpisodeStore:
        """Open an existing store read-only ('r') or for appending ('a', which also repairs a torn tail)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise FileNotFoundError(f"no episode store at {path}")
        if not (path / "zarr.json").exists():
            hint = " (it looks like a zarr v2 store: .zgroup)" if (path / ".zgroup").exists() else ""
            raise StoreFormatError(
                f"{path} is not a zarr v3 group{hint}. An EpisodeStore is created by EpisodeStore.create "
                "or `robopolicy sim collect`; convert other data with `robopolicy data import-lerobot`."
            )
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+", zarr_format=3)
        except Exception as e:  # zarr raises several types for unreadable metadata
            raise StoreFormatError(f"{path}: cannot read zarr metadata ({type(e).__name__}: {e})") from None
        return cls(root, path, mode)

    @classmethod
    def open_or_create(cls, path: str | Path, fps: float | None = None) -> EpisodeStore:
        path = Path(path)
        return cls.open(path, "a") if path.exists() else cls.create(path, fps=fps)

    # ------------------------------------------------------------------ integrity
    def _check_format(self) -> None:
        attrs = self._root.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise StoreFormatError(
                f"{self.path} is a zarr group but not an EpisodeStore (attribute 'format' is "
                f"{attrs.get('format')!r}). If it is a Diffusion Policy replay buffer or another dataset, "
                "import it instead of opening it."
            )
        if attrs.get("version") != FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path}: store format version {attrs.get('version')} is not supported by this robopolicy "
                f"(expects {FORMAT_VERSION}); upgrade robopolicy or re-export the data"
            )
        for name in ("meta/episode_ends", "meta/episode_attrs"):
            if name not in self._root:
                raise StoreFormatError(f"{self.path}: missing array '{name}'. The store is damaged; "
                                       "recover episodes with `robopolicy data validate --repair`.")

    def _read_committed_ends(self) -> np.ndarray:
        ends = np.asarray(self._root["meta/episode_ends"][:], dtype=np.int64)
        # A trailing -1 is a commit record that was resized but never written: not committed.
        valid = ends >= 0
        n = int(np.argmin(valid)) if not valid.all() else len(ends)
        ends = ends[:n]
        if len(ends) and (np.diff(ends) <= 0).any():
            raise StoreFormatError(f"{self.path}: meta/episode_ends is not increasing; the store is damaged")
        n_attrs = self._root["meta/episode_attrs"].shape[0]
        if n_attrs < len(ends):
            raise StoreFormatError(f"{self.path}: {len(ends)} episodes committed but only {n_attrs} attribute "
                                   "records; the store is damaged")
        if self.schema_json() is not None:
            for key in self.schema_json()["fields"]:
                if f"data/{key}" not in self._root:
                    raise StoreFormatError(f"{self.path}: schema names key '{key}' but data/{key} is missing")
                rows = self._root[f"data/{key}"].shape[0]
                if len(ends) and rows < ends[-1]:
                    raise StoreFormatError(
                        f"{self.path}: data/{key} has {rows} rows but the episodes end at {ends[-1]}; "
                        "the store is damaged (data lost after commit)"
                    )
        return ends

    def schema_json(self) -> dict | None:
        return self._root.attrs.get("schema")

    def _clean_torn_tail(self) -> None:
        """Remove rows past the last committed episode and partial files left by a killed writer."""
        end = self.n_frames
        for key in self.keys:
            arr = self.array(key)  # the cached object, so later writes see the new shape
            if arr.shape[0] != end:
                arr.resize((end, *arr.shape[1:]))
        for name in ("meta/episode_attrs", "meta/episode_ends"):
            arr = self._root[name]
            if arr.shape[0] != self.n_episodes:
                arr.resize((self.n_episodes,))
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    @property
    def fps(self) -> float:
        return float(self.schema.fps if self.schema else self._root.attrs["fps"])

    @property
    def keys(self) -> list[str]:
        return sorted(self.schema.fields) if self.schema else []

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends]))

    def episode_slice(self, i: int) -> slice:
        i = self._check_index(i)
        return slice(int(self._ends[i - 1]) if i else 0, int(self._ends[i]))

    def _check_index(self, i: int) -> int:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range: the store has {self.n_episodes} episodes")
        return i % self.n_episodes

    def array(self, key: str) -> zarr.Array:
        """The raw zarr array of a key (rows past n_frames are not committed)."""
        if key not in self._arrays:
            if key not in self.keys:
                raise KeyError(f"no key '{key}' in {self.path}; keys: {self.keys}")
            self._arrays[key] = self._root[f"data/{key}"]
        return self._arrays[key]

    def frame_reader(self, key: str):
        """An object with ``read(start, stop) -> ndarray`` for a key: the direct chunk reader for one-frame
        chunked keys (images, depth; see frame_io.py), zarr otherwise."""
        fio = self._frame_io_for(key)
        return fio if fio is not None else _ZarrRows(self.array(key))

    def _frame_io_for(self, key: str) -> FrameChunkIO | None:
        if key not in self._frame_io:
            self.array(key)  # raises a clear KeyError for unknown keys
            self._frame_io[key] = frame_io_for(self.path / "data" / key) if key_kind(key) in ("image", "depth") else None
        return self._frame_io[key]

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        sl = self.episode_slice(i)
        return {k: np.asarray(self.array(k)[sl]) for k in (keys or self.keys)}

    def episode_attrs(self, i: int) -> dict[str, Any]:
        i = self._check_index(i)
        return json.loads(str(self._root["meta/episode_attrs"][i]))

    def all_episode_attrs(self) -> list[dict[str, Any]]:
        raw = self._root["meta/episode_attrs"][: self.n_episodes] if self.n_episodes else []
        return [json.loads(str(s)) for s in raw]

    def __len__(self) -> int:
        return self.n_episodes

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_episodes):
            yield self.get_episode(i)

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, frames={self.n_frames}, keys={self.keys})"

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode == "r":
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to write")

    def _create_arrays(self, schema: StoreSchema) -> None:
        for key, spec in schema.fields.items():
            self._root.create_array(
                f"data/{key}", shape=(0, *spec.shape), chunks=chunks_for(key, spec), dtype=spec.dtype,
                compressors=compressors_for(key), fill_value=0,
            )
        self._root.attrs["schema"] = schema.to_json()
        self.schema = schema

    def ensure_schema(self, steps: dict[str, np.ndarray]) -> StoreSchema:
        """Return the store's schema, fixing it from `steps` if this is the first episode."""
        self._require_writable()
        if self.schema is None:
            self._create_arrays(StoreSchema.from_steps(steps, fps=self._root.attrs["fps"]))
        return self.schema

    def add_episode(self, steps: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> int:
        """Validate and append one whole episode; returns its index. Nothing is written if validation fails."""
        self._require_writable()
        steps = {k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in steps.items()}
        schema = self.schema or StoreSchema.from_steps(steps, fps=self._root.attrs["fps"])
        n = schema.validate_episode(steps)
        attrs = _normalise_attrs(attrs)
        self.ensure_schema(steps)
        start = self.n_frames
        for key in self.keys:
            self.write_rows(key, start, steps[key])
        return self.commit_episode(n, attrs)

    def write_rows(self, key: str, start: int, rows: np.ndarray) -> None:
        """Write rows of one key at [start, start+len) past the committed end, growing the array if needed.

        Used by add_episode and by EpisodeRecorder; rows are not part of any episode until commit_episode.
        """
        arr = self.array(key)
        stop = start + len(rows)
        if arr.shape[0] < stop:
            arr.resize((stop, *arr.shape[1:]))
        fio = self._frame_io_for(key)
        if fio is not None:
            fio.write(start, rows)
        else:
            arr[start:stop] = rows

    def commit_episode(self, length: int, attrs: dict[str, Any]) -> int:
        """Make the `length` rows after the committed end an episode: attributes first, episode_ends last."""
        idx = self.n_episodes
        end = self.n_frames + int(length)
        attr_arr = self._root["meta/episode_attrs"]
        if attr_arr.shape[0] < idx + 1:
            attr_arr.resize((idx + 1,))
        attr_arr[idx] = json.dumps(_normalise_attrs(attrs))
        for key in self.keys:  # trim rows a recorder reserved beyond this episode
            arr = self.array(key)
            if arr.shape[0] != end:
                arr.resize((end, *arr.shape[1:]))
        ends = self._root["meta/episode_ends"]
        ends.resize((idx + 1,))
        ends[idx] = end
        self._ends = np.append(self._ends, np.int64(end))
        return idx

    def set_episode_attrs(self, i: int, **updates: Any) -> dict[str, Any]:
        """Update attributes of a committed episode (e.g. the operator's success label)."""
        self._require_writable()
        i = self._check_index(i)
        attrs = self.episode_attrs(i)
        attrs.update(updates)
        self._root["meta/episode_attrs"][i] = json.dumps(_normalise_attrs(attrs))
        return attrs

    def recorder(self, attrs: dict[str, Any] | None = None, flush_every: int = 16, on_exit: str = "discard"):
        """Start recording an episode step by step (see EpisodeRecorder)."""
        from robopolicy.data.recorder import EpisodeRecorder

        return EpisodeRecorder(self, attrs or {}, flush_every=flush_every, on_exit=on_exit)


class _ZarrRows:
    """``read(start, stop)`` over a zarr array, for keys the direct frame reader does not handle."""

    def __init__(self, arr: zarr.Array):
        self.arr = arr

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.arr[start:stop])

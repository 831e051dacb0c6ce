"""Direct reads and writes of one-frame chunks (images, depth), bypassing zarr-python's per-call overhead.

Why by hand: zarr-python 3 routes every access through its asyncio codec pipeline, which costs about
2.7 ms per call for a 2-frame read on this machine, against 0.45 ms to read the same chunk files and
decode them with numcodecs' Blosc (measured in scripts/bench_data.py). Random access to single-frame
chunks is exactly what training and 30 Hz recording do, so it dominates both.

This stays inside the zarr v3 format: arrays are created, resized and described by zarr; we only read
and write their chunk files, with the codec their metadata names, at the path the v3 "default" chunk
key encoding gives (``c/<i>/0/0/0``), and every write replaces the file by rename as zarr does.
Arrays with any other layout get ``None`` from :func:`frame_io_for` and callers fall back to zarr.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numcodecs
import numpy as np

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="frame-io")
    return _POOL


def _forget_pool() -> None:  # threads do not survive fork: a child builds its own pool
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)

_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


class FrameChunkIO:
    """Read/write rows of a zarr v3 array chunked (1, ...) with [bytes(, blosc)] codecs on local disk."""

    def __init__(self, array_dir: Path, frame_shape: tuple[int, ...], dtype: np.dtype, codec: numcodecs.Blosc | None,
                 fill_value: int = 0):
        self.dir = Path(array_dir)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.codec = codec
        self.fill_value = fill_value
        self._suffix = "/".join(["0"] * len(frame_shape))

    def _chunk_path(self, i: int) -> Path:
        return self.dir / "c" / str(i) / self._suffix

    def read_frame(self, i: int) -> np.ndarray:
        try:
            raw = self._chunk_path(i).read_bytes()
        except FileNotFoundError:  # zarr does not store chunks equal to the fill value
            return np.full(self.frame_shape, self.fill_value, self.dtype)
        data = self.codec.decode(raw) if self.codec is not None else raw
        return np.frombuffer(data, dtype=self.dtype).reshape(self.frame_shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.frame_shape), self.dtype)
        for j, i in enumerate(range(start, stop)):
            out[j] = self.read_frame(i)
        return out

    def write_frame(self, i: int, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=self.dtype)
        payload = self.codec.encode(frame) if self.codec is not None else frame.tobytes()
        path = os.path.join(self.dir, "c", str(i), self._suffix)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write rows at [start, start+len); the array must already have been resized by zarr.

        Long runs go through a small thread pool: Blosc and file I/O release the GIL."""
        if len(rows) < 8:
            for j in range(len(rows)):
                self.write_frame(start + j, rows[j])
            return
        list(_pool().map(lambda j: self.write_frame(start + j, rows[j]), range(len(rows))))


def frame_io_for(array_dir: Path) -> FrameChunkIO | None:
    """A FrameChunkIO for an array directory whose zarr.json matches the supported layout, else None."""
    try:
        meta = json.loads((Path(array_dir) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    shape, chunks = meta.get("shape", []), meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
    key_enc = meta.get("chunk_key_encoding", {})
    if (meta.get("node_type") != "array" or not chunks or chunks[0] != 1 or list(chunks[1:]) != list(shape[1:])
            or key_enc.get("name") != "default" or key_enc.get("configuration", {}).get("separator", "/") != "/"
            or not isinstance(meta.get("data_type"), str)):
        return None
    codecs = meta.get("codecs", [])
    if not codecs or codecs[0].get("name") != "bytes":
        return None
    dtype = np.dtype(meta["data_type"])
    if dtype.itemsize > 1 and codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    codec = None
    if len(codecs) == 2 and codecs[1].get("name") == "blosc":
        cfg = codecs[1]["configuration"]
        codec = numcodecs.Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=_SHUFFLE[cfg["shuffle"]],
                                blocksize=cfg.get("blocksize", 0))
    elif len(codecs) != 1:
        return None
    return FrameChunkIO(Path(array_dir), tuple(shape[1:]), dtype, codec, fill_value=meta.get("fill_value", 0) or 0)

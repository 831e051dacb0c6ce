"""Writing frames to an mp4 (H.264 through PyAV, the FFmpeg bindings lerobot also uses)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 23) -> Path:
    """Encode uint8 RGB frames [H, W, 3] into an H.264 mp4 (yuv420p, so any player opens it).

    Odd frame sizes are padded by one pixel because yuv420p needs even dimensions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"no frames to write to {path}")
    h, w = first.shape[:2]
    H, W = h + h % 2, w + w % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in _chain(first, frames):
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frame size changed from {(h, w)} to {frame.shape[:2]} while writing {path}")
            if (H, W) != (h, w):
                frame = np.pad(frame, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _chain(first, rest):
    yield first
    yield from rest


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode a whole video into uint8 RGB frames [T, H, W, 3] (for tests and review)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

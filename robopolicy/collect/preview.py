"""Live preview of every camera with the episode state drawn on it.

Three sinks, chosen by `make_preview(mode)`:

- ``window``: one OpenCV window (needs a display); keys pressed in it drive the session (see keys.py).
- ``file``: headless; refreshes ``<dir>/latest.png`` every `every_s` seconds and streams every preview
  frame into ``<dir>/preview.mp4`` (H.264 through PyAV), so a remote operator can watch the session.
- ``none``: nothing is drawn (cheapest).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from robopolicy.collect.keys import key_name

PREVIEW_MODES = ("auto", "window", "file", "none")


@dataclass
class PreviewStatus:
    """What the status bar shows."""

    recording: bool
    n_saved: int
    elapsed_s: float  # of the current episode (0 when idle)
    language: str = ""
    loop_hz: float = 0.0
    dropped: dict[str, int] | None = None
    message: str = ""


def _fit_height(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    interp = cv2.INTER_NEAREST if height > h else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(w * height / h)), height), interpolation=interp)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, color=(255, 255, 255)) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def tile_cameras(frames: dict[str, np.ndarray], height: int = 240, label: bool = True) -> np.ndarray:
    """Camera images (RGB uint8) side by side at one height, each labelled with its name."""
    tiles = []
    for name, img in frames.items():
        tile = np.ascontiguousarray(_fit_height(img, height))
        if label:
            _text(tile, name, (6, height - 8))
        tiles.append(tile)
    if not tiles:
        return np.zeros((height, height, 3), np.uint8)
    return np.concatenate(tiles, axis=1)


def compose_preview(frames: dict[str, np.ndarray], status: PreviewStatus, height: int = 240) -> np.ndarray:
    """The preview image (RGB uint8): a status bar over the camera tiles; red frame while recording."""
    body = tile_cameras(frames, height)
    bar_h = 44
    bar = np.full((bar_h, body.shape[1], 3), 32, np.uint8)
    if status.recording:
        cv2.circle(bar, (14, 14), 7, (230, 30, 30), -1)
        state = f"REC {status.elapsed_s:5.1f} s"
    else:
        state = "IDLE"
    _text(bar, f"{state}   saved {status.n_saved}   {status.loop_hz:4.1f} Hz", (28, 19), 0.5)
    line2 = status.message or status.language
    if status.dropped and any(status.dropped.values()):
        line2 = (line2 + "   dropped " + " ".join(f"{k}:{v}" for k, v in status.dropped.items())).strip()
    _text(bar, line2[:120], (8, 37), 0.4, (200, 200, 200))
    img = np.concatenate([bar, body], axis=0)
    if status.recording:
        cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (230, 30, 30), 3)
    return img


class Preview:
    """Base: a preview that shows nothing and reads no keys."""

    mode = "none"

    def show(self, frames: dict[str, np.ndarray], status: PreviewStatus) -> list[str]:
        """Draw one update; returns the names of the keys pressed since the last call ("enter", "y", ...)."""
        return []

    def close(self) -> None:
        pass


class WindowPreview(Preview):
    """An OpenCV window; keys pressed in it are returned as actions."""

    mode = "window"

    def __init__(self, title: str = "robopolicy collect", height: int = 240) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RuntimeError("preview=window needs a display (DISPLAY is not set); on a headless machine use "
                               "preview=file (PNG + mp4 under preview_dir) or preview=none")
        self.title, self.height = title, height
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error as e:
            raise RuntimeError(f"cannot open a preview window ({e}); use preview=file or preview=none") from None

    def show(self, frames, status):
        img = compose_preview(frames, status, self.height)
        cv2.imshow(self.title, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        name = key_name(cv2.waitKey(1))
        return [name] if name else []

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


class Mp4Stream:
    """Append RGB frames to an H.264 mp4 one at a time (PyAV), for long sessions."""

    def __init__(self, path: str | Path, fps: float, crf: int = 28) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=max(1, round(fps)))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self._size: tuple[int, int] | None = None
        self.n_frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        h, w = frame.shape[:2]
        H, W = h + h % 2, w + w % 2
        if self._size is None:
            self._size = (H, W)
            self._stream.height, self._stream.width = H, W
        if (H, W) != self._size:
            frame = cv2.resize(frame, (self._size[1], self._size[0]))
        elif (H, W) != (h, w):
            frame = np.pad(frame, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self.n_frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self.n_frames:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None


class FilePreview(Preview):
    """Headless preview: `latest.png` refreshed every `every_s` s and (optionally) `preview.mp4`."""

    mode = "file"

    def __init__(self, directory: str | Path, every_s: float = 1.0, video: bool = True, fps: float = 10.0,
                 height: int = 240) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.every_s = float(every_s)
        self.height = height
        self._last_png = -float("inf")
        self._video = Mp4Stream(self.dir / "preview.mp4", fps) if video else None
        self.n_snapshots = 0

    @property
    def latest_png(self) -> Path:
        return self.dir / "latest.png"

    def show(self, frames, status):
        img = compose_preview(frames, status, self.height)
        if self._video is not None:
            self._video.write(img)
        now = time.monotonic()
        if now - self._last_png >= self.every_s:
            self.snapshot(img)
            self._last_png = now
        return []

    def snapshot(self, img: np.ndarray) -> None:
        """Atomically replace latest.png (a viewer never sees a half-written file)."""
        tmp = self.dir / ".latest.tmp.png"
        cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        os.replace(tmp, self.latest_png)
        self.n_snapshots += 1

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None


def make_preview(mode: str, directory: str | Path | None = None, every_s: float = 1.0, video: bool = True,
                 fps: float = 10.0, height: int = 240) -> Preview:
    """Build the preview for `mode` (auto: a window when a display exists, otherwise none)."""
    if mode not in PREVIEW_MODES:
        raise ValueError(f"preview must be one of {', '.join(PREVIEW_MODES)}, got {mode!r}")
    if mode == "auto":
        has_display = not sys.platform.startswith("linux") or bool(
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        mode = "window" if has_display else "none"
    if mode == "window":
        return WindowPreview(height=height)
    if mode == "file":
        if directory is None:
            raise ValueError("preview=file needs preview_dir")
        return FilePreview(directory, every_s=every_s, video=video, fps=fps, height=height)
    return Preview()

"""Rollout videos: which episodes to keep, frame capture, and the mp4 writer.

The runner records frames of in-flight episodes and keeps, per outcome (success / failure), the
`per_outcome` episodes with the lowest indices, so the same episodes are shown whatever the worker count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from robopolicy.eval.metrics import EpisodeRecord


def frame_from_obs(obs: dict[str, np.ndarray], max_side: int = 256) -> np.ndarray | None:
    """One frame from an observation's camera images (side by side, equal height), or None without cameras."""
    cams = sorted(k for k in obs if k.startswith("images/"))
    if not cams:
        return None
    return fit_frame(np.concatenate([_to_height(obs[k], obs[cams[0]].shape[0]) for k in cams], axis=1), max_side)


def _to_height(img: np.ndarray, height: int) -> np.ndarray:
    if img.shape[0] == height:
        return img
    width = max(1, round(img.shape[1] * height / img.shape[0]))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def fit_frame(frame: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Downscale a frame so its longest side is <= max_side (keeps memory bounded while recording)."""
    frame = np.asarray(frame, dtype=np.uint8)
    scale = max_side / max(frame.shape[:2])
    if scale < 1.0:
        size = (max(2, round(frame.shape[1] * scale)), max(2, round(frame.shape[0] * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame)


def _upscale_factor(height: int, min_height: int = 192) -> int:
    """Integer factor that brings small frames (e.g. 84x84 observations) to a watchable, labelled size."""
    return max(1, -(-min_height // height))


class VideoSelector:
    """Keeps the frames of the `per_outcome` lowest-index successes and failures."""

    def __init__(self, per_outcome: int):
        self.per_outcome = per_outcome
        self.kept: dict[bool, dict[int, tuple[EpisodeRecord, list[np.ndarray]]]] = {True: {}, False: {}}

    def wants_frames(self, episode_index: int) -> bool:
        """Whether an episode could still enter either pool (else its frames need not be recorded)."""
        if self.per_outcome <= 0:
            return False
        for pool in self.kept.values():
            if len(pool) < self.per_outcome or max(pool) > episode_index:
                return True
        return False

    def offer(self, record: EpisodeRecord, frames: list[np.ndarray]) -> None:
        """Consider a finished episode; evicts the highest index of its pool when over capacity."""
        if not frames or self.per_outcome <= 0:
            return
        pool = self.kept[bool(record.success)]
        pool[record.index] = (record, frames)
        if len(pool) > self.per_outcome:
            del pool[max(pool)]

    def selected(self) -> list[tuple[EpisodeRecord, list[np.ndarray]]]:
        """Successes then failures, each by episode index."""
        out = []
        for outcome in (True, False):
            out += [self.kept[outcome][i] for i in sorted(self.kept[outcome])]
        return out


def _annotate(frame: np.ndarray, text: str, ok: bool) -> np.ndarray:
    """Draw the episode label on a black band at the top, scaled to fit the frame's width."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(1.0, 0.95 * frame.shape[1] / tw)
    band = int(th * scale) + 8
    frame = frame.copy()
    cv2.rectangle(frame, (0, 0), (frame.shape[1], band), (0, 0, 0), -1)
    color = (40, 200, 40) if ok else (230, 40, 40)
    cv2.putText(frame, text, (4, band - 5), font, scale, color, 1, cv2.LINE_AA)
    return frame


def write_episodes_mp4(path: Path, episodes: list[tuple[EpisodeRecord, list[np.ndarray]]], fps: float) -> Path:
    """Write selected episodes one after another into an H.264 mp4, each frame labelled with its outcome."""
    if not episodes:
        raise ValueError("no episodes with frames to write")
    height = max(f.shape[0] for _, frames in episodes for f in frames)
    width = max(f.shape[1] for _, frames in episodes for f in frames)
    # yuv420p needs even sizes.
    k = _upscale_factor(height)
    height, width = height * k, width * k
    height, width = height + height % 2, width + width % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for record, frames in episodes:
            label = (f"ep {record.index} seed {record.seed} "
                     f"{'SUCCESS' if record.success else 'FAIL'} score {record.score:.2f}")
            for frame in frames:
                if k > 1:
                    frame = np.repeat(np.repeat(frame, k, axis=0), k, axis=1)
                canvas = np.zeros((height, width, 3), dtype=np.uint8)
                canvas[: frame.shape[0], : frame.shape[1]] = frame
                canvas = _annotate(canvas, label, record.success)
                for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frames_summary(episodes: list[tuple[EpisodeRecord, list[Any]]]) -> list[dict[str, Any]]:
    """JSON-friendly description of what the video shows."""
    return [{"index": r.index, "seed": r.seed, "success": r.success, "n_frames": len(f)} for r, f in episodes]

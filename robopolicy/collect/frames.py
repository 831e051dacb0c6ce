"""Dropped frames and stalled cameras: is each camera's latest frame new since the previous step?"""

from __future__ import annotations

from collections.abc import Mapping

from hardware.camera import Frame


class FrameWatch:
    """Track every camera's latest frame timestamp across steps.

    A frame whose timestamp did not advance since the previous step is *dropped* (the step records the old
    frame again); a camera with no new frame for more than `camera_timeout` seconds of session time is
    *stalled* (its cable or process is gone, so the session must not keep recording stale images).
    """

    def __init__(self, camera_timeout: float) -> None:
        self.camera_timeout = float(camera_timeout)
        self._last_frame_ts: dict[str, float] = {}
        self._last_new_frame_t: dict[str, float] = {}

    def check(self, frames: Mapping[str, Frame], t: float) -> tuple[list[str], str | None]:
        """Look at this step's frames (taken at session time `t`).

        Returns the names of the cameras whose frame was dropped, and the name of the first stalled camera
        (None when none is); the cameras after a stalled one are not looked at (the session ends).
        """
        dropped = []
        for name, fr in frames.items():
            prev = self._last_frame_ts.get(name)
            if prev is not None and fr.timestamp <= prev:
                dropped.append(name)
                if t - self._last_new_frame_t.get(name, t) > self.camera_timeout:
                    return dropped, name
            else:
                self._last_new_frame_t[name] = t
                self._last_frame_ts[name] = fr.timestamp
        return dropped, None

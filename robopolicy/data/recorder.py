"""EpisodeRecorder: write an episode step by step while it happens (teleop, deployment).

Camera frames are handed to a background thread that writes them into the store past the committed
end in small batches, so a 30 Hz loop never waits on compression; low-dim rows stay in memory and are
written at save. Nothing is part of the store until `save()` commits the episode; `discard()`, a
crash or SIGKILL leave the committed episodes untouched (the torn tail is removed on next open).

A `Deferred` value (the runtime's `pointcloud`, robopolicy/utils/deferred.py) is checked by its declared
shape and dtype at `add_step`, built by the writer thread soon after (so the control loop never computes
it, and its frames are freed), and written at save with the low-dim rows, its values checked then.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from robopolicy.data.errors import EpisodeValidationError
from robopolicy.data.schema import TIMESTAMP_KEY, StoreSchema, key_kind
from robopolicy.utils.deferred import Deferred

_STOP = object()


class EpisodeRecorder:
    """Append steps with :meth:`add_step`, then :meth:`save` or :meth:`discard`. Also a context manager:
    leaving the block without saving discards the episode (or saves it, with ``on_exit="save"``)."""

    def __init__(self, store, attrs: dict[str, Any], flush_every: int = 16, on_exit: str = "discard"):
        store._require_writable()
        if getattr(store, "_active_recorder", None) is not None:
            raise RuntimeError("another episode is being recorded into this store; save or discard it first")
        store._active_recorder = self
        self.store = store
        self.attrs = dict(attrs)
        self.attrs.setdefault("start_time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.flush_every = int(flush_every)
        self.on_exit = on_exit
        self.start = store.n_frames
        self.n_steps = 0
        self._last_ts: float | None = None
        self._lowdim: dict[str, list[np.ndarray]] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._written: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._writer, name="episode-writer", daemon=True)
        self._thread.start()
        self._closed = False

    # -------------------------------------------------------------- writer thread
    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    if isinstance(item, Deferred):
                        item.get()  # build now, off the caller's thread; save() finds it built
                    else:
                        key, start, rows = item
                        self.store.write_rows(key, start, rows)
                except BaseException as e:  # reported to the caller at save()
                    self._error = e

    def _flush(self, key: str) -> None:
        rows = self._pending.get(key)
        if rows:
            start = self.start + self._written.get(key, 0)
            self._queue.put((key, start, np.stack(rows)))
            self._written[key] = self._written.get(key, 0) + len(rows)
            self._pending[key] = []

    # -------------------------------------------------------------- API
    def add_step(self, step: dict[str, Any]) -> None:
        """Validate one step (a dict key -> per-step array, including 'timestamp') and queue it for writing."""
        if self._closed:
            raise RuntimeError("this episode was already saved or discarded")
        if self._error is not None:
            raise RuntimeError(f"writing the episode failed: {self._error}") from self._error
        deferred = {k: v for k, v in step.items() if isinstance(v, Deferred)}
        arrays = {k: np.asarray(v) for k, v in step.items() if k not in deferred}
        if TIMESTAMP_KEY in arrays:
            arrays[TIMESTAMP_KEY] = arrays[TIMESTAMP_KEY].astype(np.float64, copy=False)
        batch = {k: v[None] for k, v in arrays.items()}
        # deferred values: their declared shape and dtype now, their values at save (not built yet)
        batch.update({k: np.zeros((1, *v.shape), v.dtype) for k, v in deferred.items()})
        schema = self.store.schema or self.store.ensure_schema(batch)
        try:
            schema.validate_episode(batch)
        except EpisodeValidationError as e:
            raise EpisodeValidationError(f"step {self.n_steps}: {e}") from None
        ts = float(arrays[TIMESTAMP_KEY])
        if self._last_ts is not None and ts <= self._last_ts:
            raise EpisodeValidationError(
                f"step {self.n_steps}: timestamp {ts:.6f} is not after the previous step's {self._last_ts:.6f}"
            )
        self._last_ts = ts
        for key, arr in arrays.items():
            if key_kind(key) in ("image", "depth"):
                self._pending.setdefault(key, []).append(arr)
                if len(self._pending[key]) >= self.flush_every:
                    self._flush(key)
            else:
                self._lowdim.setdefault(key, []).append(arr)
        for key, value in deferred.items():
            self._lowdim.setdefault(key, []).append(value)
            try:
                self._queue.put_nowait(value)
            except queue.Full:
                pass  # the writer is behind: save() builds it; add_step never waits for a build
        self.n_steps += 1

    def _finish_writer(self) -> None:
        for key in list(self._pending):
            self._flush(key)
        self._queue.put(_STOP)
        self._thread.join()
        self._closed = True
        self.store._active_recorder = None

    def save(self, **attrs: Any) -> int:
        """Commit the episode (attrs such as success=True are merged in); returns its index."""
        if self._closed:
            raise RuntimeError("this episode was already saved or discarded")
        self._finish_writer()
        if self._error is not None:
            self.store._clean_torn_tail()
            raise RuntimeError(f"writing the episode failed, nothing was saved: {self._error}") from self._error
        if self.n_steps == 0:
            raise EpisodeValidationError("cannot save an episode with no steps")
        for key, rows in self._lowdim.items():
            stacked = np.stack(rows)  # builds any Deferred the writer did not reach
            if any(isinstance(r, Deferred) for r in rows):
                StoreSchema._check_values(key, stacked)  # their values were not seen by add_step
            self.store.write_rows(key, self.start, stacked)
        self.attrs.update(attrs)
        return self.store.commit_episode(self.n_steps, self.attrs)

    def discard(self) -> None:
        """Drop the episode; the store keeps exactly the episodes it had."""
        if self._closed:
            return
        self._finish_writer()
        self.store._clean_torn_tail()

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if self.on_exit == "save" and self.n_steps:
            self.save(aborted=exc_type is not None)
        else:
            self.discard()

"""A shared-memory ring buffer of camera frames with a per-slot sequence lock.

One writer (the camera process) and any number of readers (the control loop, the preview) share one
`multiprocessing.shared_memory` block:

    header   magic, version, geometry, publish counter, writer state, heartbeat, intrinsics, error text
    slots    n_slots x (slot header: seq, capture timestamp, frame index, publish time | colour | depth)

Writing frame k into slot s = k % n_slots: seq[s] += 1 (odd: being written), copy the data and the stamps,
seq[s] += 1 (even: stable), then publish counter = k + 1. Reading the latest frame: slot of counter - 1,
read seq (retry if odd), copy the data out, read seq again; equal means the copy is not torn, else retry.
The reader never blocks the writer and never sees a half-written frame; a ring of several slots means the
writer almost never laps a reader that is copying (and when it does, the reader retries).

Memory ordering: the seq / data / seq sequence relies on stores not being reordered with stores and loads
not with loads, which holds on x86-64 (TSO). On weakly ordered CPUs (ARM) the numpy copies are not fenced;
the retry still catches a lap in practice but the guarantee is weaker there.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

MAGIC = 0x5250_4652_414D_4531  # "RPFRAME1"
VERSION = 1

# header layout, in 8-byte words
_H_MAGIC, _H_VERSION, _H_NSLOTS, _H_HEIGHT, _H_WIDTH, _H_DEPTH, _H_COUNT, _H_STATE, _H_PID = range(9)
_H_HEARTBEAT = 9  # float64
_H_K = 10  # 9 float64: intrinsics
_H_WORDS = 19
_ERR_BYTES = 1024
_HEADER_BYTES = _H_WORDS * 8 + _ERR_BYTES  # 1176, padded below
_SLOT_HDR = 64  # seq, timestamp, index, published_at (+ padding to a cache line)

STATE_STARTING, STATE_RUNNING, STATE_ERROR, STATE_STOPPED = 0, 1, 2, 3


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class RingFrame:
    """A frame read from the ring (arrays are copies unless read with copy=False)."""

    color: np.ndarray
    depth: np.ndarray | None
    timestamp: float  # capture time, monotonic clock
    index: int  # frame index from the camera
    published_at: float  # monotonic time the writer put it in the ring
    count: int  # publish counter: how many frames the writer has published so far


class TornReadError(RuntimeError):
    """The writer kept overwriting the slot being read for more than the allowed retries."""


class FrameRing:
    """A ring of `n_slots` frames of shape (height, width, 3) uint8 [+ (height, width) uint16 depth].

    Create with `FrameRing.create(...)` (allocates and owns the block: `unlink()` frees it) or attach to
    an existing one with `FrameRing.attach(name)`.
    """

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.shm = shm
        self.owner = owner
        buf = shm.buf
        self._hdr_i = np.ndarray((_H_WORDS,), dtype=np.int64, buffer=buf, offset=0)
        self._hdr_f = np.ndarray((_H_WORDS,), dtype=np.float64, buffer=buf, offset=0)
        self._err = np.ndarray((_ERR_BYTES,), dtype=np.uint8, buffer=buf, offset=_H_WORDS * 8)
        if int(self._hdr_i[_H_MAGIC]) != MAGIC:
            raise ValueError(f"shared memory '{shm.name}' is not a frame ring (bad magic)")
        self.n_slots = int(self._hdr_i[_H_NSLOTS])
        self.height = int(self._hdr_i[_H_HEIGHT])
        self.width = int(self._hdr_i[_H_WIDTH])
        self.has_depth = bool(self._hdr_i[_H_DEPTH])
        color_b = self.height * self.width * 3
        depth_b = self.height * self.width * 2 if self.has_depth else 0
        self._slot_bytes = _align(_SLOT_HDR + _align(color_b) + depth_b)
        base = _align(_HEADER_BYTES)
        self._seq, self._ts, self._idx, self._pub = [], [], [], []
        self._color, self._depth = [], []
        for s in range(self.n_slots):
            off = base + s * self._slot_bytes
            self._seq.append(np.ndarray((1,), dtype=np.uint64, buffer=buf, offset=off))
            self._ts.append(np.ndarray((1,), dtype=np.float64, buffer=buf, offset=off + 8))
            self._idx.append(np.ndarray((1,), dtype=np.int64, buffer=buf, offset=off + 16))
            self._pub.append(np.ndarray((1,), dtype=np.float64, buffer=buf, offset=off + 24))
            c = np.ndarray((self.height, self.width, 3), dtype=np.uint8, buffer=buf, offset=off + _SLOT_HDR)
            self._color.append(c)
            if self.has_depth:
                d_off = off + _SLOT_HDR + _align(color_b)
                self._depth.append(
                    np.ndarray((self.height, self.width), dtype=np.uint16, buffer=buf, offset=d_off)
                )
        self.torn_retries = 0  # reads that had to retry because the writer was in the slot

    # ---- construction -------------------------------------------------------------------------------
    @staticmethod
    def nbytes(height: int, width: int, depth: bool, n_slots: int) -> int:
        color_b = height * width * 3
        depth_b = height * width * 2 if depth else 0
        return _align(_HEADER_BYTES) + n_slots * _align(_SLOT_HDR + _align(color_b) + depth_b)

    @classmethod
    def create(
        cls, height: int, width: int, depth: bool = False, n_slots: int = 4, name: str | None = None
    ) -> FrameRing:
        if n_slots < 2:
            raise ValueError(f"a frame ring needs at least 2 slots, got {n_slots}")
        if height <= 0 or width <= 0:
            raise ValueError(f"bad frame size {height}x{width}")
        name = name or f"rp_frames_{os.getpid()}_{secrets.token_hex(4)}"
        shm = shared_memory.SharedMemory(
            name=name, create=True, size=cls.nbytes(height, width, depth, n_slots)
        )
        hdr = np.ndarray((_H_WORDS,), dtype=np.int64, buffer=shm.buf, offset=0)
        hdr[:] = 0
        hdr[_H_VERSION], hdr[_H_NSLOTS], hdr[_H_HEIGHT], hdr[_H_WIDTH] = VERSION, n_slots, height, width
        hdr[_H_DEPTH], hdr[_H_PID] = int(depth), os.getpid()
        hdr[_H_MAGIC] = MAGIC  # last: an attacher sees a complete header or a bad magic
        del hdr
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        return cls(shared_memory.SharedMemory(name=name, create=False), owner=False)

    @property
    def name(self) -> str:
        return self.shm.name

    # ---- writer -------------------------------------------------------------------------------------
    def write(self, color: np.ndarray, timestamp: float, index: int, depth: np.ndarray | None = None) -> int:
        """Publish one frame; returns the publish counter after it."""
        if color.shape != (self.height, self.width, 3):
            raise ValueError(f"frame shape {color.shape} != ring shape {(self.height, self.width, 3)}")
        count = int(self._hdr_i[_H_COUNT])
        s = count % self.n_slots
        seq = self._seq[s]
        seq[0] += np.uint64(1)  # odd: slot being written
        np.copyto(self._color[s], color, casting="unsafe")
        if self.has_depth:
            if depth is None:
                self._depth[s].fill(0)
            else:
                np.copyto(self._depth[s], depth, casting="unsafe")
        self._ts[s][0] = timestamp
        self._idx[s][0] = index
        now = time.monotonic()
        self._pub[s][0] = now
        seq[0] += np.uint64(1)  # even: stable
        self._hdr_i[_H_COUNT] = count + 1
        self._hdr_f[_H_HEARTBEAT] = now
        return count + 1

    def set_state(self, state: int, error: str = "") -> None:
        if error:
            b = error.encode("utf-8", "replace")[: _ERR_BYTES - 1]
            self._err[:] = 0
            self._err[: len(b)] = np.frombuffer(b, dtype=np.uint8)
        self._hdr_i[_H_STATE] = state

    def heartbeat(self) -> None:
        self._hdr_f[_H_HEARTBEAT] = time.monotonic()

    def set_intrinsics(self, K: np.ndarray) -> None:
        self._hdr_f[_H_K : _H_K + 9] = np.asarray(K, dtype=np.float64).reshape(9)

    # ---- reader -------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Frames published so far."""
        return int(self._hdr_i[_H_COUNT])

    @property
    def state(self) -> int:
        return int(self._hdr_i[_H_STATE])

    @property
    def error(self) -> str:
        raw = bytes(self._err)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    @property
    def last_heartbeat(self) -> float:
        return float(self._hdr_f[_H_HEARTBEAT])

    def intrinsics(self) -> np.ndarray:
        return self._hdr_f[_H_K : _H_K + 9].reshape(3, 3).copy()

    def read_latest(
        self, copy: bool = True, max_retries: int = 100, out: RingFrame | None = None
    ) -> RingFrame | None:
        """The newest complete frame, or None if nothing was published yet.

        copy=False returns views into shared memory: valid only until the writer laps the ring
        (n_slots - 1 frames later); use it only to copy out or inspect at once.
        """
        for _ in range(max_retries):
            count = int(self._hdr_i[_H_COUNT])
            if count == 0:
                return None
            s = (count - 1) % self.n_slots
            seq = self._seq[s]
            s1 = int(seq[0])
            if s1 & 1:  # the writer lapped the ring and is in this slot: take the newer one next time
                self.torn_retries += 1
                continue
            ts, idx, pub = float(self._ts[s][0]), int(self._idx[s][0]), float(self._pub[s][0])
            if copy:
                color = self._color[s].copy()
                depth = self._depth[s].copy() if self.has_depth else None
            else:
                color = self._color[s]
                depth = self._depth[s] if self.has_depth else None
            if int(seq[0]) == s1:
                return RingFrame(color, depth, ts, idx, pub, count)
            self.torn_retries += 1
        raise TornReadError(
            f"frame ring '{self.name}': the writer overwrote the slot on every one of {max_retries} reads; "
            "use more slots"
        )

    # ---- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        # drop the numpy views before closing the mapping (else BufferError: exported pointers exist)
        self._hdr_i = self._hdr_f = self._err = None  # type: ignore[assignment]
        self._seq = self._ts = self._idx = self._pub = self._color = self._depth = []
        try:
            self.shm.close()
        except BufferError:  # a caller still holds a copy=False view; the mapping goes with the process
            pass

    def unlink(self) -> None:
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass

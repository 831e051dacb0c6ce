"""Shared-memory frame ring and ProcessCamera: no torn frames under a fast writer and a slow reader, the
latest frame is the newest one, a stalled or crashed camera process raises CameraStalledError."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.camera_process import ProcessCamera
from hardware.drivers.synthetic import SyntheticCamera
from hardware.errors import (
    CameraStalledError,
    DeviceAlreadyConnectedError,
    DeviceNotConnectedError,
    HardwareError,
)
from hardware.shm_ring import FrameRing


def _hammer(name: str, n: int, ready) -> None:
    """Writer process: publish n frames as fast as possible (frame k: every byte k % 256)."""
    ring = FrameRing.attach(name)
    ready.set()
    h, w = ring.height, ring.width
    frames = [np.full((h, w, 3), k, dtype=np.uint8) for k in range(256)]
    depths = [np.full((h, w), k * 257, dtype=np.uint16) for k in range(256)]
    for k in range(n):
        ring.write(frames[k % 256], float(k), k, depths[k % 256])
    ring.close()


def test_ring_roundtrip_and_layout():
    ring = FrameRing.create(4, 5, depth=True, n_slots=3)
    try:
        assert ring.read_latest() is None
        reader = FrameRing.attach(ring.name)
        for k in range(7):
            color = np.arange(60, dtype=np.uint8).reshape(4, 5, 3) + k
            ring.write(color, timestamp=100.0 + k, index=k, depth=np.full((4, 5), 1000 + k, np.uint16))
            f = reader.read_latest()
            assert f.index == k and f.timestamp == 100.0 + k and f.count == k + 1
            assert np.array_equal(f.color, color) and np.all(f.depth == 1000 + k)
        ring.set_intrinsics(np.eye(3) * 2)
        assert np.allclose(reader.intrinsics(), np.eye(3) * 2)
        with pytest.raises(ValueError, match="shape"):
            ring.write(np.zeros((5, 4, 3), np.uint8), 0.0, 0)
        reader.close()
    finally:
        ring.close()
        ring.unlink()


def test_ring_fast_writer_slow_reader_sees_no_torn_frame():
    """A writer process laps a 2-slot ring as fast as it can; the reader copies big frames slowly.

    Every frame the reader gets must be uniform (one writer frame, not two mixed) and consistent with its
    index and timestamp; indices never go backwards; the reader sees the newest frames.
    """
    h, w, n = 240, 320, 6000
    ring = FrameRing.create(h, w, depth=True, n_slots=2)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hammer, args=(ring.name, n, ready), daemon=True)
    p.start()
    try:
        assert ready.wait(20)
        last, checked, raw_torn = -1, 0, 0
        while p.is_alive() or checked == 0:
            # control: a plain copy of the newest slot without the sequence check does tear
            raw = ring._color[(ring.count - 1) % 2].copy()
            raw_torn += int(raw.min() != raw.max())
            f = ring.read_latest()
            if f is None:
                continue
            k = f.index
            assert k >= last
            v = k % 256
            assert f.color.min() == v and f.color.max() == v, f"torn colour frame at index {k}"
            assert f.depth.min() == v * 257 and f.depth.max() == v * 257, f"torn depth frame at index {k}"
            assert f.timestamp == float(k)
            last, checked = k, checked + 1
            time.sleep(0.0005)  # slow reader
        p.join(10)
        f = ring.read_latest()
        assert f.index == n - 1 and f.count == n  # latest is the last one written
        assert checked > 10
        print(f"reads {checked}, seqlock retries {ring.torn_retries}, torn unchecked copies {raw_torn}")
    finally:
        if p.is_alive():
            p.terminate()
        ring.close()
        ring.unlink()


def test_process_camera_latest_and_stall():
    cam = ProcessCamera(
        SyntheticCamera(name="syn", height=48, width=64, fps=200.0, depth=True, stall_after=60),
        stall_timeout=0.2,
    )
    with pytest.raises(DeviceNotConnectedError):
        cam.latest()
    cam.start()
    try:
        with pytest.raises(DeviceAlreadyConnectedError):
            cam.start()
        assert cam.name == "syn"
        assert np.allclose(cam.intrinsics()[0, 0], 0.8 * 64)
        seen = []
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:
            try:
                f = cam.latest()
            except CameraStalledError:
                break
            assert f.color.shape == (48, 64, 3) and f.depth.dtype == np.uint16
            assert f.color.min() == f.color.max() == f.index % 256
            assert time.monotonic() - f.timestamp < 1.0
            seen.append(f.index)
            time.sleep(0.005)
        else:
            pytest.fail("the camera stalled after 60 frames but latest() never raised CameraStalledError")
        assert seen == sorted(seen) and seen[-1] >= 40  # (a heavily loaded reader may miss the last few)
        with pytest.raises(CameraStalledError, match="syn") as ei:
            cam.latest()
        assert ei.value.last_index == 59 and ei.value.age > 0.2
        assert (
            0 < cam.frames_published <= 60
        )  # the child publishes the newest frame; skipped ones show as index gaps
    finally:
        cam.stop()
    cam.stop()  # twice is fine
    with pytest.raises(DeviceNotConnectedError):
        cam.latest()


def test_process_camera_start_error_names_the_device():
    cam = ProcessCamera(
        SyntheticCamera(name="bad", fps=10.0, stall_after=0, start_timeout=0.3), start_timeout=20
    )
    with pytest.raises(HardwareError, match="bad.*no frame within"):
        cam.start()
    assert not cam.is_running


def test_process_camera_child_death_is_a_stall():
    cam = ProcessCamera(SyntheticCamera(name="dies", height=8, width=8, fps=100.0), stall_timeout=5.0)
    cam.start()
    try:
        cam.latest()
        cam._proc.kill()
        cam._proc.join(5)
        with pytest.raises(CameraStalledError, match="exited"):
            cam.latest()
    finally:
        cam.stop()


def test_camera_process_exits_when_its_parent_dies(tmp_path):
    """A parent that dies without stop() (os._exit, SIGKILL) must not leave the camera process holding the
    device: the child sees EOF on its stop pipe and exits."""
    import os
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from hardware.camera_process import ProcessCamera\n"
        "from hardware.drivers.synthetic import SyntheticCamera\n"
        "if __name__ == '__main__':\n"
        "    cam = ProcessCamera(SyntheticCamera(height=8, width=8, fps=50.0))\n"
        "    cam.start()\n"
        "    print(cam._proc.pid, flush=True)\n"
        "    os._exit(0)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": root}, check=True)  # fmt: skip
    pid = int(out.stdout.split()[0])
    t_end = time.monotonic() + 10.0
    while time.monotonic() < t_end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the camera process outlived its parent")

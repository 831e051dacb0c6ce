"""The suite's hang watchdog (tests/conftest.py): a test stuck in native code, where pytest-timeout's signal
cannot reach it, ends the run with every thread's stack, and the progress file names the test that died."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HANGS_IN_NATIVE_CODE = '''
import ctypes


def test_passes():
    pass


def test_hangs_holding_the_gil():
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: a default glibc mutex
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # locks itself out: no signal handler can run


def test_never_reached():
    pass
'''


def test_watchdog_ends_a_native_hang_and_names_the_test(tmp_path):
    (tmp_path / "test_native_hang.py").write_text(HANGS_IN_NATIVE_CODE)
    progress = tmp_path / "progress.txt"
    env = {k: v for k, v in os.environ.items() if k != "ROBOPOLICY_TEST_SKIP_PASSED"}  # set in test.sh's rerun
    env.update(PYTHONPATH=str(Path(__file__).parent), ROBOPOLICY_TEST_HANG_S="2", ROBOPOLICY_TEST_PROGRESS=str(progress))
    t0 = time.monotonic()
    # -p conftest: this suite's conftest as a plugin; timeout=1 shows that pytest-timeout alone would not end it
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                          "-o", "timeout=1", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert out.returncode != 0
    assert "Timeout (0:00:02)!" in out.stderr and "test_hangs_holding_the_gil" in out.stderr  # the stack
    lines = progress.read_text().splitlines()
    assert lines == ["start test_native_hang.py::test_passes", "passed test_native_hang.py::test_passes",
                     "start test_native_hang.py::test_hangs_holding_the_gil"]

"""Bringing a session's devices up and down, holding the arm, and turning Ctrl-C / SIGTERM into a stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hardware.arm import Arm
from hardware.camera import Camera
from hardware.teleop import TeleopDevice


def install_stop_signals(pending: Callable[[], bool], request_stop: Callable[[str], None]) -> Callable[[], None]:
    """Route SIGINT / SIGTERM to `request_stop` (the loop ends cleanly at its next step); a second signal while
    a stop is `pending` raises KeyboardInterrupt, so a hung step can still be broken out of.

    Only the main thread can install signal handlers; elsewhere this does nothing. Returns the function that
    restores the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum, frame):  # noqa: ARG001
        if pending():  # second signal: stop now
            raise KeyboardInterrupt
        request_stop(f"interrupted ({signal.Signals(signum).name})")

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    return restore


def open_devices(arm: Arm, cameras: Sequence[Camera], teleop: TeleopDevice, opened: list[Any]) -> None:
    """Connect / start the devices that are not yet, appending each to `opened` as soon as it is up (so a
    failure half-way still lets :func:`close_devices` close the ones already opened)."""
    if not arm.is_connected:
        arm.connect()
        opened.append(arm)
    for cam in cameras:
        if not cam.is_running:
            cam.start()
            opened.append(cam)
    if not teleop.is_connected:
        teleop.connect()
        opened.append(teleop)


def close_devices(opened: Sequence[Any], closers: Sequence[Callable[[], Any] | None],
                  log: Callable[[str], None]) -> None:
    """Call `closers` (preview, key source; None entries are skipped), then close the devices in `opened` in
    reverse order. Failures are logged, never raised: this runs while an error may be propagating."""
    for closer in closers:
        if closer is not None:
            try:
                closer()
            except Exception as e:  # never mask the real error
                log(f"warning: closing {closer} failed: {e}")
    for dev in reversed(opened):
        try:
            if isinstance(dev, Camera):
                dev.stop()
            else:
                dev.disconnect()
        except Exception as e:
            log(f"warning: closing {type(dev).__name__} failed: {e}")


def hold_arm(arm: Arm, log: Callable[[str], None]) -> None:
    """Command the arm to stay where it is (after a lost device, at the end); failures are only logged."""
    try:
        if arm.is_connected:
            s = arm.read_state()
            arm.command_ee_pose(s.ee_pos, s.ee_quat)
    except Exception as e:
        log(f"warning: could not command a hold: {e}")

"""Exceptions shared by every hardware interface and driver."""

from __future__ import annotations


class HardwareError(RuntimeError):
    """Base class of every error raised by a hardware interface or driver."""


class DeviceNotConnectedError(HardwareError):
    """A device was used before `connect()` / `start()` (or after `disconnect()` / `stop()`)."""


class DeviceAlreadyConnectedError(HardwareError):
    """`connect()` / `start()` was called on a device that is already connected or running."""


class CommandRejectedError(HardwareError):
    """A command was malformed (wrong shape, NaN) or outside the device's limits."""


class DeviceNotFoundError(HardwareError):
    """A device could not be found or reached (unplugged, wrong serial / port / IP, no permission).

    The message names the device, the serial / port / address that was tried and what to check.
    """


class DeviceFaultError(HardwareError):
    """A connected device reported a fault (protective stop, controller error code, lost connection).

    `code` carries the vendor's error code where there is one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class CameraStalledError(HardwareError):
    """A running camera stopped delivering frames: the newest frame is older than the allowed bound.

    The caller (teleop tool, runtime) should mark the episode and hold the arm.
    """

    def __init__(self, camera: str, age: float, bound: float, last_index: int, detail: str = "") -> None:
        msg = (
            f"camera '{camera}' stalled: newest frame (index {last_index}) is {age:.3f} s old, "
            f"over the {bound:.3f} s bound"
        )
        super().__init__(msg + (f"; {detail}" if detail else ""))
        self.camera = camera
        self.age = age
        self.bound = bound
        self.last_index = last_index

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

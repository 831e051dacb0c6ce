"""Small helpers shared by the drivers: serial-port and video-device listings for error messages."""

from __future__ import annotations

import glob
import os


def list_serial_ports() -> list[str]:
    """The USB serial ports present (/dev/ttyACM*, /dev/ttyUSB*, macOS /dev/tty.usbmodem*)."""
    pats = ["/dev/ttyACM*", "/dev/ttyUSB*", "/dev/tty.usbmodem*", "/dev/tty.usbserial*"]
    return sorted(p for pat in pats for p in glob.glob(pat))


def list_video_devices() -> list[str]:
    """The V4L2 video devices present (/dev/video*)."""
    return sorted(glob.glob("/dev/video*"))


def check_serial_port(port: str, device: str) -> None:
    """Raise DeviceNotFoundError naming the device, the port and the ports that exist, if `port` is missing."""
    from hardware.errors import DeviceNotFoundError

    if os.path.exists(port):
        return
    present = list_serial_ports()
    raise DeviceNotFoundError(
        f"{device}: serial port '{port}' does not exist. Ports present: "
        f"{', '.join(present) if present else 'none (/dev/ttyACM*, /dev/ttyUSB*)'}. "
        "Check the USB cable and the arm's power supply, that the port name is right "
        "(`lerobot-find-port` finds it), and that your user is in the 'dialout' group."
    )

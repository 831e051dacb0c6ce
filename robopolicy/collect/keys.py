"""Key bindings of the collection tool: keys (preview window or terminal) and device buttons -> actions.

One table drives the tool, its `--help` and the preview's legend. A device button with an action's name
(or one of its aliases) triggers that action; buttons are edge-triggered, so holding one fires it once.
"""

from __future__ import annotations

import os
import select
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Binding:
    action: str
    keys: tuple[str, ...]  # key names as printed in the help ("space", "s", "esc", ...)
    help: str


# The keys match hardware.drivers.keyboard's default buttons (enter, y, n, backspace, esc), so a key means
# the same whether the keyboard teleop device or the preview window / terminal sees it.
BINDINGS: tuple[Binding, ...] = (
    Binding("record", ("enter",), "idle: start recording an episode; recording: stop and save it\n"
                                  "(success = the sim task's check; unset on hardware)"),
    Binding("success", ("y",), "stop and save the episode, marked success=true"),
    Binding("failure", ("n",), "stop and save the episode, marked success=false"),
    Binding("discard", ("backspace",), "stop and discard the episode (nothing is written)"),
    Binding("reset", ("t",), "idle: reset the scene with the next seed (sim)"),
    Binding("quit", ("esc", "q"), "end the session (an episode being recorded is handled as on_abort says)"),
)
ACTIONS: tuple[str, ...] = tuple(b.action for b in BINDINGS)

# Device button names that mean an action (SpaceMouse / gamepad / keyboard drivers name them differently).
BUTTON_ALIASES: dict[str, str] = {
    "start": "record", "stop": "record", "toggle": "record",
    "save": "success", "succeed": "success", "fail": "failure",
    "rerecord": "discard", "cancel": "discard",
    "exit": "quit", "escape": "quit",
}

_KEY_NAMES = {32: "space", 27: "esc", 8: "backspace", 127: "backspace", 13: "enter", 10: "enter"}


def key_name(code: int) -> str | None:
    """cv2.waitKey / terminal byte -> key name ("space", "s", ...); None for no key."""
    if code is None or code < 0:
        return None
    code &= 0xFF
    if code in _KEY_NAMES:
        return _KEY_NAMES[code]
    ch = chr(code)
    return ch.lower() if ch.isprintable() else None


def action_for_key(name: str | None) -> str | None:
    """The action bound to a key name, or None."""
    if name is None:
        return None
    for b in BINDINGS:
        if name in b.keys:
            return b.action
    return None


def action_for_button(name: str) -> str | None:
    """The action a device button triggers, or None for buttons the tool does not use (e.g. 'grip')."""
    name = name.lower()
    if name in ACTIONS:
        return name
    return BUTTON_ALIASES.get(name)


def route_keys(dev, names) -> list[str]:
    """The actions of keys from the preview window or the terminal.

    A keyboard teleop device (one with `buttons`, `moves` and a manual backend, like
    hardware.drivers.keyboard) gets every key as a tap and reports its own buttons at its next poll; only
    the keys it does not claim (reset, quit) become actions here, so no key fires twice.
    """
    keyboard = isinstance(getattr(dev, "buttons", None), dict) and isinstance(getattr(dev, "moves", None), dict)
    actions = []
    for name in names:
        if keyboard and getattr(dev, "backend", None) == "manual" and hasattr(dev, "tap"):
            dev.tap(name)
        claimed = keyboard and (name in dev.buttons or name in dev.moves
                                or name == getattr(dev, "gripper_key", None))
        action = None if claimed else action_for_key(name)
        if action is not None:
            actions.append(action)
    return actions


class ButtonEdges:
    """Turns device button states into actions on the press (rising edge) only."""

    def __init__(self) -> None:
        self._prev: dict[str, bool] = {}

    def __call__(self, buttons: dict[str, bool]) -> list[str]:
        out = []
        for name, pressed in buttons.items():
            if pressed and not self._prev.get(name, False):
                action = action_for_button(name)
                if action is not None:
                    out.append(action)
        self._prev = {k: bool(v) for k, v in buttons.items()}
        return out


def help_table(indent: str = "  ") -> str:
    """The key table for --help and the README ('[name]' is the device button with that name)."""
    lines = []
    for b in BINDINGS:
        keys = " / ".join(b.keys)
        text = b.help.replace("\n", "\n" + indent + " " * 27)
        lines.append(f"{indent}{keys:<15} {'[' + b.action + ']':<10} {text}")
    return "\n".join(lines)


def parse_terminal_bytes(data: bytes) -> list[str]:
    """Key names of raw terminal input; escape sequences (arrow keys: ESC [ A) are skipped, a lone ESC is 'esc'."""
    names, i = [], 0
    while i < len(data):
        b = data[i]
        if b == 27 and i + 1 < len(data) and data[i + 1] in (ord("["), ord("O")):
            i += 2
            while i < len(data) and not (0x40 <= data[i] <= 0x7E):  # parameters up to the final byte
                i += 1
            i += 1
            continue
        name = key_name(b)
        if name:
            names.append(name)
        i += 1
    return names


class TerminalKeys:
    """Non-blocking single-key reads from the controlling terminal (cbreak mode), for headless sessions.

    Only works when stdin is a TTY; `poll()` returns the key names typed since the last call.
    """

    def __init__(self) -> None:
        import termios
        import tty

        if not sys.stdin.isatty():
            raise RuntimeError("terminal keys need stdin to be a terminal")
        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)

    def poll(self) -> list[str]:
        names = []
        while select.select([self._fd], [], [], 0)[0]:
            data = os.read(self._fd, 64)
            if not data:
                break
            names += parse_terminal_bytes(data)
        return names

    def close(self) -> None:
        import termios

        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

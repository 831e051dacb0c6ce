"""SpaceMouse (hidapi), keyboard (pynput listener) and gamepad (pygame) teleop devices against fakes of
their SDKs: report parsing, axis signs, deadzone and scaling, buttons and the gripper toggle."""

from __future__ import annotations

import struct
import types

import numpy as np
import pytest

from hardware.drivers.gamepad import Gamepad
from hardware.drivers.keyboard import Keyboard
from hardware.drivers.spacemouse import SpaceMouse, apply_deadzone
from hardware.errors import DeviceFaultError, DeviceNotConnectedError, DeviceNotFoundError


class FakeHidDevice:
    def __init__(self, reports):
        self.reports = reports
        self.calls = []

    def open_path(self, path):
        self.calls.append(("open_path", path))

    def set_nonblocking(self, v):
        self.calls.append(("set_nonblocking", v))

    def read(self, n):
        self.calls.append(("read", n))
        return self.reports.pop(0) if self.reports else []

    def close(self):
        self.calls.append(("close",))


def fake_hid(devices, reports):
    dev = FakeHidDevice(reports)
    return types.SimpleNamespace(enumerate=lambda *a: devices, device=lambda: dev, dev=dev)


def rep(rid, *vals):
    return list(bytes([rid]) + struct.pack(f"<{len(vals)}h", *vals))


SM = {"vendor_id": 0x256F, "product_id": 0xC635, "path": b"/dev/hidraw3"}


def test_spacemouse_parses_reports_with_signs_deadzone_and_scale():
    reports = [rep(1, 350, 175, -350), rep(2, 0, 20, 350), rep(3, 0b01)]
    hid = fake_hid([{"vendor_id": 0x046D, "product_id": 0xC52B, "path": b"x"}, SM], reports)
    sm = SpaceMouse(translation_scale=0.01, rotation_scale=0.1, deadzone=0.1, hid_module=hid)
    with pytest.raises(DeviceNotConnectedError):
        sm.poll()
    sm.connect()
    assert hid.dev.calls[:2] == [("open_path", b"/dev/hidraw3"), ("set_nonblocking", 1)]
    assert sm.product == "SpaceMouse Compact"
    cmd = sm.poll()  # drains all three reports
    assert cmd.mode == "delta"
    # x: +1 -> +0.01; y: raw +0.5, sign -1 -> -(0.5-0.1)/0.9; z: raw -1, sign -1 -> +1
    assert np.allclose(cmd.pos, [0.01, -0.01 * 0.4 / 0.9, 0.01])
    # rx 0; ry raw 20/350 = 0.057 < deadzone -> 0; rz +1 (sign +1) -> 0.1
    assert np.allclose(cmd.rot, [0.0, 0.0, 0.1])
    assert cmd.buttons == {"gripper": True, "record": False} and cmd.gripper == 0.0  # toggled closed
    hid.dev.reports += [rep(3, 0), rep(3, 0b01), rep(3, 0b10)]  # release, press again, then record
    cmd = sm.poll()
    assert cmd.gripper == 1.0 and cmd.buttons == {"gripper": False, "record": True}
    hid.dev.reports += [rep(1, 0, 0, 0, 0, 0, 0)]  # newer devices: translation + rotation in one report
    assert np.allclose(sm.poll().pos, 0) and np.allclose(sm.poll().rot, 0)
    sm.disconnect()
    assert hid.dev.calls[-1] == ("close",)


def test_spacemouse_missing_names_vendor_ids():
    hid = fake_hid([{"vendor_id": 0x1234, "product_id": 1, "path": b"k"}], [])
    with pytest.raises(DeviceNotFoundError, match=r"SpaceMouse.*0x256f"):
        SpaceMouse(hid_module=hid).connect()
    assert np.allclose(apply_deadzone(np.array([0.05, -0.55, 1.0]), 0.1), [0, -0.5, 1.0])


class FakeListener:
    def __init__(self, on_press, on_release):
        self.on_press, self.on_release = on_press, on_release
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True


def test_keyboard_held_keys_latched_buttons_gripper_toggle():
    made = {}

    def factory(p, r):
        made["l"] = FakeListener(p, r)
        return made["l"]

    kb = Keyboard(translation_step=0.01, rotation_step=0.1, listener_factory=factory)
    kb.connect()
    lst = made["l"]
    assert lst.started
    key = types.SimpleNamespace(char="W")  # pynput KeyCode
    lst.on_press(key)
    lst.on_press(types.SimpleNamespace(char="j"))
    c1, c2 = kb.poll(), kb.poll()
    assert np.allclose(c1.pos, [0.01, 0, 0]) and np.allclose(c1.rot, [0, 0, 0.1])
    assert np.allclose(c2.pos, c1.pos)  # held: moves every poll
    lst.on_release(key)
    assert np.allclose(kb.poll().pos, 0)
    enter = types.SimpleNamespace(char=None, name="enter")  # pynput Key.enter
    lst.on_press(enter), lst.on_release(enter)  # a short press between two polls is not lost
    c = kb.poll()
    assert c.buttons["record"] and not c.buttons["discard"]
    assert not kb.poll().buttons["record"]
    lst.on_press(types.SimpleNamespace(char=None, name="space"))
    assert kb.poll().gripper == 0.0
    kb.disconnect()
    assert lst.stopped
    # manual backend: taps from a preview window move for one poll
    kb = Keyboard(backend="manual", translation_step=0.01)
    kb.connect()
    kb.tap("s")
    assert np.allclose(kb.poll().pos, [-0.01, 0, 0]) and np.allclose(kb.poll().pos, 0)


def test_keyboard_without_display_says_what_to_do():
    def broken(p, r):
        raise ImportError("this platform is not supported: no DISPLAY")

    with pytest.raises(DeviceNotFoundError, match="backend: manual"):
        Keyboard(listener_factory=broken).connect()
    with pytest.raises(ValueError, match="bad move"):
        Keyboard(moves={"w": "+q"})


class FakeJoystick:
    def __init__(self, i):
        self.axes = [0.0] * 6
        self.buttons = [0] * 11
        self.alive = True

    def init(self):
        pass

    def get_init(self):
        return self.alive

    def get_name(self):
        return "Fake Xbox pad"

    def get_numaxes(self):
        return 6

    def get_numbuttons(self):
        return 11

    def get_axis(self, i):
        return self.axes[i]

    def get_button(self, i):
        return self.buttons[i]

    def quit(self):
        pass


def fake_pygame(n=1):
    js = FakeJoystick(0)
    pumps = []
    pg = types.SimpleNamespace(
        display=types.SimpleNamespace(init=lambda: None),
        joystick=types.SimpleNamespace(init=lambda: None, get_count=lambda: n, Joystick=lambda i: js),
        event=types.SimpleNamespace(pump=lambda: pumps.append(1)),
        js=js,
        pumps=pumps,
    )
    return pg


def test_gamepad_axes_deadzone_buttons():
    pg = fake_pygame()
    gp = Gamepad(deadzone=0.2, translation_step=0.01, rotation_step=0.1, pygame_module=pg)
    gp.connect()
    pg.js.axes[1] = -1.0  # left stick pushed forward -> +x
    pg.js.axes[0] = 0.1  # inside the deadzone
    pg.js.axes[3] = 0.6  # right stick right -> -yaw
    c = gp.poll()
    assert pg.pumps  # events pumped every poll
    assert np.allclose(c.pos, [0.01, 0, 0]) and np.allclose(c.rot, [0, 0, -0.1 * 0.4 / 0.8])
    pg.js.buttons[0] = 1
    assert gp.poll().gripper == 0.0 and gp.poll().gripper == 0.0  # toggles once per press
    pg.js.buttons[0] = 0
    pg.js.buttons[2] = 1
    c = gp.poll()
    assert c.buttons["record"] and c.gripper == 0.0
    pg.js.alive = False
    with pytest.raises(DeviceFaultError, match="disconnected"):
        gp.poll()
    with pytest.raises(DeviceNotFoundError, match="index 0 not found, 0 connected"):
        Gamepad(pygame_module=fake_pygame(n=0)).connect()

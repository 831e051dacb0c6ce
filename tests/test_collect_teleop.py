"""The teleop collection tool driven end to end in sim by a scripted teleop device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("mujoco")

from camera_fakes import WrappedCamera  # noqa: E402

from hardware.camera import Camera, Frame  # noqa: E402
from hardware.errors import DeviceNotConnectedError  # noqa: E402
from robopolicy.collect.devices import make_sim_devices  # noqa: E402
from robopolicy.collect.keys import ButtonEdges, action_for_key, key_name, parse_terminal_bytes  # noqa: E402
from robopolicy.collect.preview import (  # noqa: E402
    FilePreview,
    PreviewStatus,
    WindowPreview,
    compose_preview,
    make_preview,
)
from robopolicy.collect.scripted import (  # noqa: E402
    ScriptedTeleop,
    ScriptStep,
    demo_script,
    episode_script,
    square_moves,
)
from robopolicy.collect.session import CollectSession  # noqa: E402
from robopolicy.data.episode_store import EpisodeStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LANG = "put the green block in the target"
# state layout: joints 0-5, gripper width 6, EE position 7-9, EE quaternion 10-13
GRIP, EE_X, EE_Y = 6, 7, 8


class StutterCamera(WrappedCamera):
    """Repeats the previous frame on the listed calls (dropped frames), and from call `freeze_at` on returns
    one frame forever (a stalled camera)."""

    def __init__(self, inner: Camera, repeat_on=(), freeze_at: int | None = None) -> None:
        super().__init__(inner)
        self.repeat_on, self.freeze_at = set(repeat_on), freeze_at
        self.calls = 0
        self._last: Frame | None = None

    def latest(self) -> Frame:
        i, self.calls = self.calls, self.calls + 1
        frozen = self.freeze_at is not None and i >= self.freeze_at
        if self._last is not None and (i in self.repeat_on or frozen):
            return self._last
        self._last = self.inner.latest()
        return self._last


def run_session(tmp_path: Path, script, *, cameras=("front",), wrap=None, raise_ok=False, **kw):
    dev = make_sim_devices("embedded_pick_place", cameras, image_size=32, realtime=False)
    cams = [wrap(c) for c in dev.cameras] if wrap else dev.cameras
    store = EpisodeStore.open_or_create(tmp_path / "teleop.zarr", fps=10)
    logs: list[str] = []
    session = CollectSession(dev.arm, cams, ScriptedTeleop(script, after="quit"), store, fps=10,
                             task="embedded_pick_place", robot_name="sim", scene=dev.scene, clock=dev.clock,
                             log=logs.append, **kw)
    result = session.run()
    return result, EpisodeStore.open(tmp_path / "teleop.zarr"), logs, cams


def _away_episode(ending: str) -> list[ScriptStep]:
    """record, a 12-step square, then 8 steps of +x (ending ~10 cm from home), then `ending`."""
    return ([ScriptStep(press=("record",))] + square_moves(12) + [ScriptStep(dpos=(0.015, 0, 0), gripper=0.0)] * 8
            + [ScriptStep(press=(ending,)), ScriptStep(), ScriptStep()])


def test_three_episodes_save_discard_failure(tmp_path):
    script = _away_episode("success") + _away_episode("discard") + _away_episode("failure")
    result, store, logs, _ = run_session(tmp_path, script, cameras=("front", "wrist"))
    assert result.ended_by == "quit" and result.error is None
    assert [e.outcome for e in result.episodes] == ["saved", "discarded", "saved"]
    assert store.n_episodes == 2
    a0, a1 = store.all_episode_attrs()
    assert (a0["success"], a1["success"]) == (True, False)
    for a in (a0, a1):
        assert a["language"] == LANG and a["task"] == "embedded_pick_place" and a["source"] == "teleop"
        assert a["aborted"] is False and a["dropped_frames"] == {"front": 0, "wrist": 0}
        assert a["cameras"] == ["front", "wrist"] and a["action_mode"] == "target"
        assert a["achieved_hz"] == pytest.approx(10.0, rel=1e-3)
    assert (a0["seed"], a1["seed"]) == (0, 2)  # a new seed every episode (the discarded one used 1)
    assert result.achieved_hz == pytest.approx(10.0, rel=1e-3)
    assert any("dropped frames: front 0, wrist 0" in line for line in logs)

    for i in range(2):
        ep = store.get_episode(i)
        n = len(ep["timestamp"])
        assert n == 21  # the record press step + 20 moves
        assert np.all(np.diff(ep["timestamp"]) > 0)
        np.testing.assert_allclose(np.diff(ep["timestamp"]), 0.1, atol=1e-6)
        assert ep["state"].shape == (n, 14) and ep["action"].shape == (n, 8)
        # every episode starts from the freshly reset scene: the arm at home (0.35, 0, 0.25)
        np.testing.assert_allclose(ep["state"][0, EE_X:EE_X + 3], [0.35, 0.0, 0.25], atol=0.005)
        # the square's first side moves +x by 3 cm, the second +y; the gripper closes in the second half
        assert ep["state"][4, EE_X] - ep["state"][0, EE_X] > 0.015
        assert ep["state"][8, EE_Y] - ep["state"][4, EE_Y] > 0.015
        assert ep["state"][-1, GRIP] < ep["state"][0, GRIP] - 0.02
        assert ep["state"][-1, EE_X] - ep["state"][0, EE_X] > 0.07  # ...and ends ~10 cm away
        assert ep["action"][-1, 7] == 0.0 and ep["action"][0, 7] == pytest.approx(0.08)
        np.testing.assert_allclose(np.linalg.norm(ep["action"][:, 3:7], axis=1), 1.0, atol=1e-5)
        for cam in ("front", "wrist"):
            imgs = ep[f"images/{cam}"]
            assert imgs.shape == (n, 32, 32, 3) and imgs.dtype == np.uint8
            assert np.abs(imgs[-1].astype(int) - imgs[0].astype(int)).sum() > 0  # the scene moved
            assert np.all(np.diff(ep[f"timestamps/{cam}"]) > 0)
            assert np.all(ep[f"timestamps/{cam}"] <= ep["timestamp"] + 1e-9)


@pytest.mark.parametrize("on_abort", ["save", "discard"])
def test_exception_mid_episode_keeps_earlier_episodes(tmp_path, on_abort):
    script = demo_script(["success", "failure"], n_steps=8)
    script += [ScriptStep(press=("record",))] + [ScriptStep(dpos=(0.01, 0, 0))] * 4
    script += [ScriptStep(error=RuntimeError("boom in episode 3"))]
    with pytest.raises(RuntimeError, match="boom in episode 3"):
        run_session(tmp_path, script, on_abort=on_abort)
    store = EpisodeStore.open(tmp_path / "teleop.zarr")
    attrs = store.all_episode_attrs()
    assert [a["success"] for a in attrs[:2]] == [True, False]
    assert list(store.episode_lengths[:2]) == [9, 9]
    if on_abort == "save":
        assert store.n_episodes == 3
        assert attrs[2]["aborted"] is True and attrs[2]["success"] is False
        assert "boom in episode 3" in attrs[2]["end_reason"]
        assert store.episode_lengths[2] == 5
    else:
        assert store.n_episodes == 2
    # the store is appendable again afterwards (no torn tail left behind)
    EpisodeStore.open(tmp_path / "teleop.zarr", "a")


def test_lost_teleop_device_ends_episode_cleanly(tmp_path):
    script = episode_script(6, "success") + [ScriptStep(press=("record",)), ScriptStep(dpos=(0.01, 0, 0))]
    script += [ScriptStep(error=DeviceNotConnectedError("spacemouse unplugged (usb 1-2)"))]
    result, store, logs, _ = run_session(tmp_path, script, on_abort="save")
    assert result.ended_by == "device_lost" and "unplugged" in result.error
    assert store.n_episodes == 2
    a = store.episode_attrs(1)
    assert a["aborted"] is True and "teleop device 'scripted' lost" in a["end_reason"]
    assert store.episode_attrs(0)["success"] is True
    assert any("error: teleop device" in line for line in logs)


def test_dropped_frames_are_counted_per_camera(tmp_path):
    script = episode_script(10, "success")
    result, store, logs, cams = run_session(
        tmp_path, script, cameras=("front", "wrist"),
        wrap=lambda c: StutterCamera(c, repeat_on={3, 4, 8} if c.name == "front" else {5}))
    assert store.episode_attrs(0)["dropped_frames"] == {"front": 3, "wrist": 1}
    assert store.episode_attrs(0)["n_dropped_frames"] == 4
    assert result.episodes[0].dropped_frames == {"front": 3, "wrist": 1}
    assert any("dropped frames: front 3, wrist 1" in line for line in logs)
    ts = store.get_episode(0)["timestamps/front"]
    assert int((np.diff(ts) == 0).sum()) == 3  # the repeated frames carry their original capture time


def test_camera_stall_aborts_the_episode(tmp_path):
    script = episode_script(5, "success") + episode_script(40, "success")
    result, store, _, _ = run_session(tmp_path, script, camera_timeout=0.5,
                                      wrap=lambda c: StutterCamera(c, freeze_at=12))
    assert result.ended_by == "device_lost" and "camera 'front' stalled" in result.error
    assert store.n_episodes == 2
    a = store.episode_attrs(1)
    assert a["aborted"] is True and "stalled" in a["end_reason"]
    assert a["dropped_frames"]["front"] >= 5  # frozen steps before the timeout are counted as dropped


def _collect_until_third_episode(out: Path, preview: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """Start `robopolicy collect` with a scripted teleop (episodes: success, failure, unfinished) and return
    once it is a dozen steps into the third episode."""
    cmd = [sys.executable, "-m", "robopolicy.cli.collect", "teleop=scripted", "realtime=true", "fps=20",
           f"out={out}", "cameras=[front]", "image_size=32", *preview,
           "script.steps=8", "script.endings=[success,failure,none]", "on_abort=save", "terminal_keys=off"]
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("recording episode 2"):
            break
    if not (lines and lines[-1].startswith("recording episode 2")):
        proc.kill()
        raise AssertionError("".join(lines))
    time.sleep(0.6)  # a dozen steps into episode 3
    return proc, lines


def test_sigint_subprocess_keeps_saved_episodes(tmp_path):
    out = tmp_path / "teleop.zarr"
    proc, lines = _collect_until_third_episode(out, ["preview=file", "preview_every=0.2"])
    try:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 130, log
    assert "interrupted (SIGINT)" in log
    store = EpisodeStore.open(out)
    attrs = store.all_episode_attrs()
    assert store.n_episodes == 3, log
    assert [a["success"] for a in attrs] == [True, False, False]
    assert [a["aborted"] for a in attrs] == [False, False, True]
    assert attrs[2]["end_reason"] == "interrupted (SIGINT)"
    assert list(store.episode_lengths[:2]) == [9, 9] and store.episode_lengths[2] >= 3
    # headless preview: a PNG snapshot and a preview video were written
    from robopolicy.utils.video import read_mp4

    prev = Path(str(out) + ".preview")
    assert (prev / "latest.png").stat().st_size > 0
    video = read_mp4(prev / "preview.mp4")
    assert video.shape[0] >= 20 and video.shape[3] == 3


def test_button_edges_and_keys():
    edges = ButtonEdges()
    assert edges({"record": True}) == ["record"]
    assert edges({"record": True}) == []  # held: fires once
    assert edges({"record": False, "save": True, "grip": True}) == ["success"]  # alias; unknown ignored
    assert action_for_key(key_name(13)) == "record" and action_for_key(key_name(27)) == "quit"
    assert action_for_key(key_name(ord("N"))) == "failure" and action_for_key(key_name(-1)) is None
    assert parse_terminal_bytes(b"y\x1b[A\x1bq\x7f") == ["y", "esc", "q", "backspace"]  # arrow key skipped


def test_headless_preview(tmp_path, monkeypatch):
    frames = {"front": np.zeros((32, 32, 3), np.uint8), "wrist": np.full((48, 64, 3), 200, np.uint8)}
    img = compose_preview(frames, PreviewStatus(recording=True, n_saved=2, elapsed_s=3.2, language=LANG,
                                                dropped={"front": 1}))
    assert img.dtype == np.uint8 and img.shape[0] == 240 + 44 and img.shape[1] == 240 + 320
    pv = FilePreview(tmp_path / "pv", every_s=0.0, fps=10)
    for _ in range(3):
        assert pv.show(frames, PreviewStatus(recording=False, n_saved=0, elapsed_s=0.0)) == []
    pv.close()
    assert (tmp_path / "pv" / "latest.png").exists() and pv.n_snapshots == 3
    from robopolicy.utils.video import read_mp4

    assert read_mp4(tmp_path / "pv" / "preview.mp4").shape[0] == 3
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        assert make_preview("auto").mode == "none"
        with pytest.raises(RuntimeError, match="preview=file"):
            WindowPreview()


def test_cli_help_and_config():
    from robopolicy.cli import collect as cli

    text = cli.help_text()
    for word in ("enter", "[discard]", "on_abort", "preview=auto", "review store="):
        assert word in text
    cfg = cli.compose(["fps=20", "robot=sim", "teleop=scripted", "episodes=3", "script.endings=[success,none]"])
    assert cfg.fps == 20 and cfg.robot == "sim" and cfg.teleop == "scripted" and cfg.episodes == 3
    assert list(cfg.script.endings) == ["success", "none"] and cfg.on_abort == "save"
    assert cli.main(["bogus_key=1"]) == 2


class ListKeys:
    """A key source (like TerminalKeys) that types one scripted list of key names per step."""

    def __init__(self, per_step):
        self.per_step, self.i = list(per_step), 0

    def poll(self):
        self.i += 1
        return self.per_step[self.i - 1] if self.i <= len(self.per_step) else ["q"]


def test_keys_drive_a_manual_keyboard_teleop(tmp_path):
    kb_mod = pytest.importorskip("hardware.drivers.keyboard")
    dev = make_sim_devices("embedded_pick_place", ("front",), image_size=32, realtime=False)
    keyboard = kb_mod.Keyboard(backend="manual")
    # t: reset (handled by the tool), enter: record (the keyboard's own button), w: +x taps, y: success
    keys = [["t"], ["enter"]] + [["w"]] * 6 + [["y"], []]
    store = EpisodeStore.open_or_create(tmp_path / "kb.zarr", fps=10)
    result = CollectSession(dev.arm, dev.cameras, keyboard, store, fps=10, task="embedded_pick_place",
                            scene=dev.scene, clock=dev.clock, key_source=ListKeys(keys), log=lambda s: None).run()
    assert result.ended_by == "quit"
    store = EpisodeStore.open(tmp_path / "kb.zarr")
    assert store.n_episodes == 1
    a = store.episode_attrs(0)
    assert a["success"] is True and a["seed"] == 1 and a["teleop"] == "keyboard"  # seed 1: after the reset
    ep = store.get_episode(0)
    assert ep["action"][-1, 0] - ep["action"][0, 0] > 0.015  # the taps moved the target along +x


def test_store_recorded_with_other_keys_is_refused_up_front(tmp_path, episode_factory):
    store = EpisodeStore.create(tmp_path / "other.zarr", fps=10)
    store.add_episode(episode_factory(4), {"task": "x"})  # an expert-style store: no timestamps/<cam> keys
    with pytest.raises(ValueError, match="another out="):
        CollectSession(None, [], ScriptedTeleop([]), store, fps=10)


def test_sigkill_subprocess_keeps_saved_episodes(tmp_path):
    """A hard kill (no handler runs) mid-episode 3: the two saved episodes survive and the store repairs."""
    out = tmp_path / "teleop.zarr"
    proc, lines = _collect_until_third_episode(out, ["preview=none"])
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = EpisodeStore.open(out)
    assert store.n_episodes == 2, "".join(lines)
    assert [a["success"] for a in store.all_episode_attrs()] == [True, False]
    assert list(store.episode_lengths) == [9, 9]
    repaired = EpisodeStore.open(out, mode="a")
    assert all(repaired.array(k).shape[0] == 18 for k in repaired.keys)

"""Episode review: replay a recorded teleop episode's actions on the simulated arm and write a
side-by-side video (recorded frame | replayed frame, one row per camera) with the tracking error plotted
under it, plus a JSON of the per-step errors.

The replay rebuilds the episode's scene from its stored seed (same block layout and goal), servos the arm
to the recorded first joint configuration, then streams the recorded actions at the recorded rate on the
as-fast-as-possible simulator, observing before each action exactly as the collection loop did. The
tracking error at step t is the distance between the recorded and the replayed end-effector position
(and the largest joint difference), i.e. how faithfully the action stream reproduces the demonstration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robopolicy.collect.geometry import quat_from_rotvec, quat_mul, quat_normalize
from robopolicy.collect.preview import _text


@dataclass
class ReviewResult:
    video: Path
    summary_json: Path
    ee_err_mm: np.ndarray  # [T] recorded vs replayed EE position distance (mm)
    joint_err_rad: np.ndarray  # [T] largest joint difference (rad)
    recorded_success: bool | None
    replayed_success: bool | None

    def summary(self) -> str:
        e = self.ee_err_mm
        return (f"replayed {len(e)} steps -> {self.video}\n"
                f"EE tracking error: mean {e.mean():.1f} mm, median {np.median(e):.1f} mm, max {e.max():.1f} mm, "
                f"final {e[-1]:.1f} mm; joint error max {self.joint_err_rad.max():.3f} rad\n"
                f"success: recorded {self.recorded_success}, replayed {self.replayed_success}")


def _error_strip(err: np.ndarray, t: int, width: int, height: int = 64) -> np.ndarray:
    strip = np.full((height, width, 3), 24, np.uint8)
    top = max(float(err.max()), 1.0)
    n = len(err)
    xs = (np.arange(t + 1) * (width - 1) / max(n - 1, 1)).astype(np.int32)
    ys = (height - 4 - err[: t + 1] / top * (height - 22)).astype(np.int32)
    if t >= 1:
        cv2.polylines(strip, [np.stack([xs, ys], 1).reshape(-1, 1, 2)], False, (255, 180, 40), 1, cv2.LINE_AA)
    cv2.circle(strip, (int(xs[-1]), int(ys[-1])), 3, (255, 80, 40), -1)
    _text(strip, f"step {t}/{n - 1}  EE error {err[t]:5.1f} mm  (plot max {top:.1f} mm)", (6, 14), 0.4)
    return strip


def _row(recorded: np.ndarray, replayed: np.ndarray, cam: str, height: int) -> np.ndarray:
    tiles = []
    for img, label in ((recorded, f"recorded {cam}"), (replayed, f"replayed {cam}")):
        h, w = img.shape[:2]
        tile = cv2.resize(img, (round(w * height / h), height), interpolation=cv2.INTER_NEAREST)
        _text(tile, label, (5, height - 7), 0.4)
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def review_episode(store_path: str | Path, episode: int, out: str | Path | None = None, *,
                   settle_s: float = 3.0, height: int = 192, log=print) -> ReviewResult:
    """Replay episode `episode` of the store at `store_path`; write `out` (mp4) and `out`.json."""
    from robopolicy.collect.devices import sim_family
    from robopolicy.data.episode_store import EpisodeStore
    from robopolicy.utils.video import write_mp4
    from sim.embedded.robot import SimArm, SimCamera, SimRobot

    store = EpisodeStore.open(store_path, "r")
    if not 0 <= episode < store.n_episodes:
        raise IndexError(f"episode {episode} does not exist: {store_path} holds {store.n_episodes} episodes")
    attrs: dict[str, Any] = store.episode_attrs(episode)
    mode = attrs.get("action_mode")
    if mode not in ("target", "delta"):
        raise ValueError(f"episode {episode} was not recorded by `robopolicy collect` (no action_mode attribute); "
                         "review replays teleop episodes (EE target or delta actions)")
    data = store.get_episode(episode)
    states, actions = data["state"].astype(np.float64), data["action"].astype(np.float64)
    T = len(actions)
    fps = float(attrs.get("fps") or store.fps)
    family = sim_family(str(attrs.get("task") or "embedded_multitask"))
    seed = attrs.get("seed")
    cams = [k[len("images/"):] for k in sorted(data) if k.startswith("images/")]
    if out is None:
        out = Path("results/review") / f"{Path(store_path).stem}_ep{episode}.mp4"
    out = Path(out)

    robot = SimRobot(realtime=False, seed=seed, task=family)
    arm = SimArm(robot)
    cameras = [SimCamera(robot, c, *data[f"images/{c}"].shape[1:3]) for c in cams]
    arm.connect()
    for c in cameras:
        c.start()
    try:
        n_j = arm.limits().n_joints
        q0, g0 = states[0, :n_j], float(states[0, n_j])
        arm.command_joint_positions(q0)
        arm.command_gripper(g0)
        waited = 0.0
        while waited < settle_s:
            robot.clock.sleep(0.05)
            waited += 0.05
            s = arm.read_state()
            if np.max(np.abs(s.joint_positions - q0)) < 2e-3 and abs(s.gripper_width - g0) < 2e-3:
                break
        if mode == "delta":
            init = np.asarray(attrs["initial_target"], np.float64)
            tgt_pos, tgt_quat = init[:3].copy(), quat_normalize(init[3:7])

        ee_err = np.zeros(T)
        j_err = np.zeros(T)
        rows: list[list[np.ndarray]] = []
        for t in range(T):
            s = arm.read_state()
            ee_err[t] = 1000.0 * float(np.linalg.norm(s.ee_pos - states[t, n_j + 1:n_j + 4]))
            j_err[t] = float(np.max(np.abs(s.joint_positions - states[t, :n_j])))
            rows.append([c.latest().color for c in cameras])
            a = actions[t]
            if mode == "target":
                arm.command_ee_pose(a[:3], a[3:7])
            else:
                tgt_pos = tgt_pos + a[:3]
                tgt_quat = quat_normalize(quat_mul(quat_from_rotvec(a[3:6]), tgt_quat))
                arm.command_ee_pose(tgt_pos, tgt_quat)
            arm.command_gripper(float(a[-1]))
            robot.clock.sleep(1.0 / fps)
        from sim.embedded.task_defs import is_success

        with robot.lock:
            replayed_success = bool(is_success(robot.scene, robot.task))
    finally:
        for c in cameras:
            c.stop()
        arm.disconnect()

    def frames():
        for t in range(T):
            body = np.concatenate([_row(data[f"images/{c}"][t], rows[t][i], c, height) for i, c in enumerate(cams)],
                                  axis=0)
            yield np.concatenate([body, _error_strip(ee_err, t, body.shape[1])], axis=0)

    write_mp4(out, frames(), fps)
    recorded_success = attrs.get("sim_success", attrs.get("success"))
    summary = {
        "store": str(store_path), "episode": episode, "steps": T, "fps": fps, "video": str(out),
        "language": attrs.get("language"), "seed": seed,
        "ee_err_mm": {"mean": float(ee_err.mean()), "median": float(np.median(ee_err)),
                      "max": float(ee_err.max()), "final": float(ee_err[-1])},
        "joint_err_rad_max": float(j_err.max()),
        "recorded_success": recorded_success, "replayed_success": replayed_success,
        "per_step_ee_err_mm": [round(float(x), 3) for x in ee_err],
    }
    js = out.with_suffix(".json")
    js.write_text(json.dumps(summary, indent=1))
    result = ReviewResult(out, js, ee_err, j_err, recorded_success, replayed_success)
    log(result.summary())
    return result

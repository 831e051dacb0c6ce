"""DeploymentService: the daemon's state machine over one robot and one control loop.

    idle --load--> ready --start--> running --stop / success / timeout / estop / fault--> ready
    any --estop--> e-stopped (latched hold) --reset--> ready

Every episode is recorded into the EpisodeStore (`store`) with source=policy, the instruction, the
checkpoint and its SHA-256, the safety interventions, and the success label the operator gives at stop
(or the simulator's success check when `stop_on_success`). Saving runs off the control loop's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robopolicy.deploy.robot import ChecksumError, RobotBundle, build_robot, check_spec, checkpoint_digest
from robopolicy.runtime.inference_worker import CheckpointAgent, make_worker
from robopolicy.runtime.loop import ControlLoop, EpisodeEnd, RuntimeConfig
from robopolicy.runtime.observation import ObservationAssembler
from robopolicy.runtime.safety import SafetyConfig, SafetyLayer

log = logging.getLogger("robopolicy.deploy")


class ServiceError(RuntimeError):
    """A request that cannot be served in the current state (the message says what to do)."""


@dataclass
class DeployConfig:
    """configs/deploy.yaml (server keys are read by the CLI)."""

    robot: dict[str, Any] = field(default_factory=lambda: {"name": "sim", "kwargs": {}})
    cameras: list[dict[str, Any]] = field(default_factory=list)
    sim_task: str = "push"  # embedded task family when robot=sim
    sim_seed: int = 0
    state: str = "proprio"  # proprio | sim_full (sim only)
    action_mode: str = "ee_delta"  # ee_delta | ee_target | joint_target
    action_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: list[int] | None = None
    pointcloud: dict[str, Any] | None = None  # PointCloudConfig entries over the checkpoint's (deploy/pointcloud.py)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    store: str | None = "data/deploy.zarr"
    stop_on_success: bool = True  # simulator: end the episode (success=true) when the goal holds
    device: str = "cpu"
    load_timeout_s: float = 120.0
    auto_restart_worker: bool = True
    checkpoint: str | None = None  # loaded at start when given
    plugins: list[str] = field(default_factory=list)  # modules imported before loading (extra policy heads)
    host: str = "127.0.0.1"
    port: int = 8765
    allow_remote: bool = False
    token_file: str = "~/.config/robopolicy/deploy_token"
    token_env: str = "ROBOPOLICY_DEPLOY_TOKEN"
    keyboard_estop: str = "auto"  # auto (when stdin is a terminal) | on | off


class DeploymentService:
    """Owns the robot, the control loop and the inference worker; every public method is thread-safe."""

    def __init__(self, cfg: DeployConfig, robot: RobotBundle | None = None, success_fn: Any = None) -> None:
        self.cfg = cfg
        self.robot = robot or build_robot(cfg.robot, cfg.cameras, cfg.state, cfg.action_mode, cfg.action_kwargs,
                                          cfg.sim_task, cfg.sim_seed)
        self._success_fn = success_fn
        self._lock = threading.RLock()
        self.loop: ControlLoop | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.episodes: list[dict[str, Any]] = []  # finished episodes of this session
        self._episode: dict[str, Any] | None = None
        self._store: Any = None
        self._saving: list[threading.Thread] = []
        self._watchdog: threading.Thread | None = None
        self._closing = threading.Event()
        self.started = False

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Connect the robot, start the control loop (holding) and load `cfg.checkpoint` if set."""
        self.robot.connect()
        size = tuple(self.cfg.image_size) if self.cfg.image_size else None
        assembler = ObservationAssembler(self.robot.arm, self.robot.cameras, self.robot.state_fn,
                                         self.cfg.runtime.max_obs_age_s, size)  # type: ignore[arg-type]
        safety = SafetyLayer(self.robot.arm.limits(), self.cfg.safety, is_ee=self.robot.adapter.is_ee)
        success = self._success_fn or (self.robot.success if self.robot.sim is not None and self.cfg.stop_on_success
                                       else None)
        self.loop = ControlLoop(self.robot.arm, assembler, self.robot.adapter, safety, self.cfg.runtime,
                                success_fn=success, on_episode_end=self._on_loop_end)
        self.robot_obs = self.robot.obs_shapes(size)  # type: ignore[arg-type]
        self.loop.start()
        self.started = True
        self._watchdog = threading.Thread(target=self._watch, name="robopolicy-deploy-watchdog", daemon=True)
        self._watchdog.start()
        if self.cfg.checkpoint:
            self.load(self.cfg.checkpoint)

    def close(self) -> None:
        """Stop any episode (saved, unlabelled), the loop and the worker; disconnect the robot."""
        self._closing.set()
        if self.loop is not None:
            if self.loop.running:
                self.stop_episode(success=None)
            self.loop.stop()
            if self.loop.worker is not None:
                self.loop.worker.stop()
        for t in list(self._saving):
            t.join(timeout=30)
        if self.started:
            self.robot.disconnect()
        self.started = False

    def _require_loop(self) -> ControlLoop:
        if self.loop is None:
            raise ServiceError("the service is not started")
        return self.loop

    # ------------------------------------------------------------------ policy
    def load(self, path: str, sha256: str | None = None, inference: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check and load a checkpoint into a fresh worker; refuses a spec or hash mismatch."""
        from robopolicy.deploy.pointcloud import pointcloud_for_policy
        from robopolicy.train.checkpoint import read_config, read_meta, resolve_checkpoint

        loop = self._require_loop()
        if loop.running:
            raise ServiceError("an episode is running; stop it before loading another checkpoint")
        ckpt = resolve_checkpoint(Path(path).expanduser())
        digest = checkpoint_digest(ckpt)
        if sha256 and sha256.lower() != digest:
            raise ChecksumError(f"checkpoint {ckpt} has SHA-256 {digest}, not the expected {sha256}; refusing to "
                                f"load it (copy it again, or pass the hash of the checkpoint you mean)")
        meta = read_meta(ckpt)
        # a `pointcloud` policy: built from the cameras' depth with the checkpoint's config (checked here)
        points = pointcloud_for_policy(meta["spec"], read_config(ckpt), self.cfg.pointcloud, self.robot, str(ckpt))
        robot_obs = dict(self.robot_obs) | ({"pointcloud": points.shape} if points is not None else {})
        check_spec(meta["spec"], robot_obs, self.robot.adapter, str(ckpt))
        factory = CheckpointAgent(str(ckpt), self.cfg.device, None, dict(inference or {}), tuple(self.cfg.plugins))
        rt = self.cfg.runtime
        t0 = time.monotonic()
        worker, agent = None, None
        if rt.inference == "sync":
            agent = factory()
        else:
            worker = make_worker(rt.worker, factory, rt.worker_threads, rt.worker_nice)
            worker.start(self.cfg.load_timeout_s)
        if checkpoint_digest(ckpt) != digest:
            if worker is not None:
                worker.stop()
            raise ChecksumError(f"checkpoint {ckpt} changed while it was being loaded; load it again")
        with self._lock:
            old = loop.worker
            with loop.lock:  # one swap: no tick sees the new policy with the old observation keys
                loop.assembler.pointcloud = points
                loop.set_policy(worker, agent, int(meta["spec"]["n_obs_steps"]), list(meta["spec"]["obs_shapes"]))
            if old is not None:
                old.stop()
            self.checkpoint = {"path": str(ckpt), "sha256": digest, "policy": meta.get("policy"),
                               "spec": meta["spec"], "load_s": round(time.monotonic() - t0, 2),
                               "worker": rt.worker if worker is not None else "sync",
                               "nfe": (worker.info if worker is not None else {}).get("nfe")}
        log.info("loaded checkpoint %s (sha256 %s)", ckpt, digest[:12])
        return dict(self.checkpoint)

    def restart_worker(self) -> dict[str, Any]:
        """Restart the inference worker (after it died or hung); the episode goes on once chunks arrive."""
        loop = self._require_loop()
        if loop.worker is None:
            raise ServiceError("no inference worker to restart: load a checkpoint first")
        loop.worker.restart(self.cfg.load_timeout_s)
        log.info("inference worker restarted (restart %d)", loop.worker.restarts)
        return {"restarts": loop.worker.restarts, "alive": loop.worker.alive}

    def _watch(self) -> None:
        """Auto-restart a dead worker (cfg.auto_restart_worker)."""
        while not self._closing.wait(0.5):
            loop = self.loop
            w = loop.worker if loop is not None else None
            if self.cfg.auto_restart_worker and w is not None and not w.alive:
                log.warning("inference worker is dead (%s); restarting it", w.dead_reason)
                try:
                    w.restart(self.cfg.load_timeout_s)
                except Exception as e:
                    log.error("restarting the inference worker failed: %s", e)
                    self._closing.wait(5.0)

    # ------------------------------------------------------------------ episodes
    def start_episode(self, instruction: str | None = None, seed: int | None = None) -> dict[str, Any]:
        loop = self._require_loop()
        with self._lock:
            # the e-stop first: right after one the loop may still be closing the episode it ended
            if loop.safety.estopped:
                raise ServiceError(f"e-stop is active ({loop.safety.estop_reason}); POST /reset first")
            if loop.running:
                raise ServiceError("an episode is already running; stop it first")
            if self.checkpoint is None:
                raise ServiceError("no policy loaded: POST /load a checkpoint first")
            sim_language = self.robot.reset_scene(seed)
            language = instruction if instruction is not None else (sim_language or "")
            recorder = None
            if self.cfg.store:
                if self._store is None:
                    from robopolicy.data.episode_store import EpisodeStore

                    self._store = EpisodeStore.open_or_create(self.cfg.store, fps=self.cfg.runtime.policy_hz)
                attrs = {"source": "policy", "language": language, "task": self.cfg.sim_task if self.robot.sim
                         else "deploy", "robot": str(self.cfg.robot.get("name")), "seed": seed,
                         "checkpoint": self.checkpoint["path"], "checkpoint_sha256": self.checkpoint["sha256"],
                         "fps": self.cfg.runtime.policy_hz, "action_mode": self.cfg.action_mode,
                         "cameras": [c.name for c in self.robot.cameras]}
                recorder = self._store.recorder(attrs)
            loop.start_episode(language, recorder)
            self._episode = {"index": len(self.episodes), "language": language, "seed": seed,
                             "started": time.time(), "interventions_before": dict(loop.safety.log.counts)}
            log.info("episode started: %r", language)
            return {"episode": self._episode["index"], "language": language}

    def stop_episode(self, success: bool | None = None, discard: bool = False) -> dict[str, Any]:
        """End the running episode with the operator's success label (None: unlabelled)."""
        loop = self._require_loop()
        with self._lock:
            recorder = loop.recorder
            end = loop.stop_episode("stopped", success)
            if end is None:
                raise ServiceError("no episode is running")
            return self._finish(end, recorder, discard, wait=True)

    def _on_loop_end(self, end: EpisodeEnd) -> None:
        # Called in the loop thread: hand the saving to another thread.
        assert self.loop is not None
        recorder = self.loop.recorder
        t = threading.Thread(target=self._finish, args=(end, recorder, False, True), daemon=True)
        t.start()  # before it is listed: reset() and close() join whatever is listed, from other threads
        self._saving.append(t)

    def _finish(self, end: EpisodeEnd, recorder: Any, discard: bool, wait: bool) -> dict[str, Any]:
        with self._lock:
            loop = self._require_loop()
            ep = self._episode or {"index": len(self.episodes)}
            before = ep.get("interventions_before", {})
            interventions = {k: v - before.get(k, 0) for k, v in loop.safety.log.counts.items()
                             if v - before.get(k, 0) > 0}
            result = {"episode": ep["index"], "end_reason": end.reason, "success": end.success, "steps": end.steps,
                      "language": ep.get("language"), "interventions": interventions, "saved_index": None}
            if recorder is not None:
                try:
                    if discard or end.steps == 0 or recorder.n_steps == 0:
                        recorder.discard()
                    else:
                        result["saved_index"] = recorder.save(success=end.success, end_reason=end.reason,
                                                              interventions=interventions,
                                                              aborted=end.reason in ("estop", "fault"))
                except Exception as e:
                    log.error("saving the episode failed: %s", e)
                    result["save_error"] = str(e)
            self.episodes.append(result)
            self._episode = None  # cleared last: status reads "finishing" until the result is in
            log.info("episode %d ended: %s (success=%s, %d steps)", ep["index"], end.reason, end.success, end.steps)
            return result

    # ------------------------------------------------------------------ safety
    def estop(self, reason: str = "operator e-stop (API)") -> dict[str, Any]:
        loop = self._require_loop()
        loop.safety.estop(reason)
        return {"estop": True, "reason": loop.safety.estop_reason}

    def heartbeat(self) -> dict[str, Any]:
        self._require_loop().safety.heartbeat()
        return {"ok": True}

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Clear the e-stop and faults (no episode may be running); the simulator gets a new layout."""
        loop = self._require_loop()
        # an e-stop ends the running episode from the loop thread: give it a moment to finish closing it
        deadline = time.monotonic() + 2.0
        while loop.running and loop.safety.estopped and time.monotonic() < deadline:
            time.sleep(0.01)
        # The loop clears `running` and then hands the episode to a saving thread, both under loop.lock:
        # taking that lock once makes sure the thread is listed before we join it.
        with loop.lock:
            pass
        # outside self._lock: a saving thread takes it in _finish, and joining it under the lock would stall 30 s
        for t in list(self._saving):
            t.join(timeout=30)
        with self._lock:
            if loop.running:
                raise ServiceError("an episode is running; stop it before reset")
            self._saving = [t for t in self._saving if t.is_alive()]
            loop.safety.clear_estop()
            loop.safety.reset_motion()
            loop.fault = None
            self.robot.reset_scene(seed)
            return {"estop": False}

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        loop = self._require_loop()
        w = loop.worker
        if loop.safety.estopped:
            state = "estopped"
        elif loop.running:
            state = "running"
        elif self._episode is not None:
            state = "finishing"  # the loop ended the episode; it is being saved
        else:
            state = "ready" if self.checkpoint else "idle"
        arm = self.robot.arm.read_state()
        return {
            "state": state,
            "estop_reason": loop.safety.estop_reason,
            "holding": loop.safety.holding,
            "hold_reason": loop.safety.hold_reason,
            "fault": loop.fault,
            "checkpoint": self.checkpoint,
            "worker": None if w is None else {"kind": w.kind, "alive": w.alive, "dead_reason": w.dead_reason,
                                              "restarts": w.restarts, "last_error": w.last_error},
            "episode": None if self._episode is None else {**{k: v for k, v in self._episode.items()
                                                              if k != "interventions_before"},
                                                           "steps": loop.steps},
            "last_episode": self.episodes[-1] if self.episodes else None,
            "arm": {"ee_pos": arm.ee_pos.round(4).tolist(), "gripper_width": round(float(arm.gripper_width), 4)},
            "config": {"rate_hz": self.cfg.runtime.rate_hz, "policy_hz": self.cfg.runtime.policy_hz,
                       "blend": self.cfg.runtime.blend, "inference": self.cfg.runtime.inference,
                       "robot": self.cfg.robot.get("name"), "state": self.cfg.state,
                       "action_mode": self.cfg.action_mode, "store": self.cfg.store},
            "metrics": loop.metrics(),
        }


def config_to_json(cfg: DeployConfig) -> dict[str, Any]:
    return asdict(cfg)

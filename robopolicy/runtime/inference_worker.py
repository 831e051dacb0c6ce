"""Policy inference off the control loop: in a worker process (default) or a thread.

The loop submits the newest observation history with `submit()` and collects finished chunks with
`poll()`; neither blocks. While the worker is busy only the newest request is kept (an older pending one
is replaced: its observation would be stale by the time it ran). Every chunk carries the observation time
it was computed from, so the executor can drop actions whose time has passed.

A process isolates the loop from the policy completely (the GIL, a crash, a runaway allocation) and can be
given a lower priority; `scripts/bench_runtime.py` measures the loop's timing with both. If the process
dies the worker reports `alive == False` with the exit code, and `restart()` brings it back.
"""

from __future__ import annotations

import abc
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopolicy.utils.deferred import resolve_stacked


class InferenceWorkerError(RuntimeError):
    """The worker could not start (the message carries the worker's own error) or is not running."""


@dataclass
class ActionChunk:
    """Raw actions computed from the observation taken at `obs_time`."""

    seq: int
    obs_time: float  # monotonic time of the observation the chunk was computed from
    actions: np.ndarray  # float32 (T_a, A), raw (the robot's action space); action k is for obs_time + k * dt
    compute_s: float  # time inside the agent's act()
    received: float = 0.0  # monotonic time the loop received it


@dataclass(frozen=True)
class CheckpointAgent:
    """Picklable factory: `robopolicy.load(path, ...)` inside the worker."""

    path: str
    device: str = "cpu"
    seed: int | None = None
    inference: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # modules to import first (they register extra policy heads)

    def __call__(self) -> Any:
        import importlib

        import robopolicy

        for module in self.plugins:
            importlib.import_module(module)

        return robopolicy.load(self.path, device=self.device, seed=self.seed, **self.inference)


def _describe(agent: Any) -> dict[str, Any]:
    spec = getattr(agent, "spec", None)
    return {"n_obs_steps": int(agent.n_obs_steps), "n_action_steps": int(agent.n_action_steps),
            "nfe": int(getattr(agent, "nfe", 0)), "spec": spec.to_json() if spec is not None else None}


def _act(agent: Any, obs: dict[str, Any]) -> tuple[np.ndarray, float]:
    obs = resolve_stacked(obs)  # deferred point clouds are built here, in the worker (not timed as inference)
    t0 = time.perf_counter()
    out = np.asarray(agent.act(obs), dtype=np.float32)
    if out.ndim != 3 or out.shape[0] != 1:
        raise ValueError(f"agent.act returned shape {out.shape}; the Agent protocol wants (1, T_a, A)")
    return out[0], time.perf_counter() - t0


def _process_main(conn: Any, factory: Callable[[], Any], num_threads: int, nice: int) -> None:
    """Worker process: build the agent, then answer requests until told to stop."""
    try:
        if nice:
            os.nice(nice)
        import torch

        torch.set_num_threads(num_threads)
        agent = factory()
        conn.send(("ready", _describe(agent)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "reset":
            agent.reset()
            continue
        _, seq, obs_time, obs = msg
        try:
            actions, compute_s = _act(agent, obs)
            conn.send(("chunk", seq, obs_time, actions, compute_s))
        except BaseException:
            conn.send(("failed", seq, traceback.format_exc()))


class InferenceWorker(abc.ABC):
    """Bookkeeping shared by both workers: the newest-only pending request and the results."""

    kind = "base"

    def __init__(self, factory: Callable[[], Any], num_threads: int = 1) -> None:
        self.factory = factory
        self.num_threads = int(num_threads)
        self.info: dict[str, Any] = {}
        self.last_error: str | None = None  # the agent's last exception (a failed act), as text
        self.restarts = 0
        self._seq = 0
        self._busy = False
        self._pending: tuple[int, float, dict[str, Any]] | None = None
        self.replaced = 0  # requests replaced by a newer one before they ran

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(self, obs: dict[str, Any], obs_time: float) -> int:
        """Queue an inference on `obs` ({key: (1, T_o, ...)}); returns its sequence number."""
        self._seq += 1
        req = (self._seq, obs_time, obs)
        if self._busy:
            if self._pending is not None:
                self.replaced += 1
            self._pending = req
        else:
            self._send(req)
        return self._seq

    @abc.abstractmethod
    def _send(self, req: tuple[int, float, dict[str, Any]]) -> None:
        """Hand a request to the idle worker."""

    @abc.abstractmethod
    def poll(self) -> list[ActionChunk]:
        """Chunks finished since the last call (never blocks)."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the worker can answer requests."""

    @property
    @abc.abstractmethod
    def dead_reason(self) -> str | None:
        """Why the worker is not alive (None while it is)."""

    @abc.abstractmethod
    def reset_agent(self) -> None:
        """Call the agent's reset() (a new episode: streaming agents drop their action buffer)."""

    def _finished(self) -> None:
        self._busy = False
        if self._pending is not None:
            req, self._pending = self._pending, None
            self._send(req)

    def restart(self, timeout: float = 120.0) -> None:
        """Stop (or reap a dead worker) and start a fresh one."""
        self.stop()
        self.restarts += 1
        self.start(timeout)

    @abc.abstractmethod
    def start(self, timeout: float = 120.0) -> None:
        """Build the agent; raises InferenceWorkerError when it cannot."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the worker (safe to call twice)."""


class ProcessInferenceWorker(InferenceWorker):
    """The agent in a spawned process, talking over a pipe.

    Args:
        factory: picklable zero-argument callable returning an Agent (e.g. `CheckpointAgent(path)`).
        num_threads: torch threads inside the worker.
        nice: niceness added to the worker process so the control loop wins the CPU when they compete.
    """

    kind = "process"

    def __init__(self, factory: Callable[[], Any], num_threads: int = 1, nice: int = 5) -> None:
        super().__init__(factory, num_threads)
        self.nice = int(nice)
        self._proc: Any = None
        self._conn: Any = None
        self._dead_reason: str | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Spawn the process and wait until the agent is built; raises InferenceWorkerError on failure."""
        # The loop thread polls self._conn: it only sees the new process once it is ready.
        self._proc, self._conn = None, None
        self._busy, self._pending = False, None
        self._dead_reason = "the inference worker is (re)starting"
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_process_main, args=(child, self.factory, self.num_threads, self.nice),
                           name="robopolicy-inference", daemon=True)
        proc.start()
        child.close()

        def fail(msg: str) -> InferenceWorkerError:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=2.0)
            parent.close()
            self._dead_reason = msg
            return InferenceWorkerError(msg)

        if not parent.poll(timeout):
            raise fail(f"the inference worker did not load the policy within {timeout:.0f} s")
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            proc.join(timeout=2.0)
            raise fail(f"the inference worker exited while loading (exit code {proc.exitcode})") from None
        if msg[0] == "error":
            raise fail(f"the inference worker failed to load the policy:\n{msg[1]}")
        self.info = msg[1]
        self._proc, self._conn, self._dead_reason = proc, parent, None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._dead_reason is None and self._proc.is_alive()

    @property
    def dead_reason(self) -> str | None:
        """Why the worker is not alive (None while it is)."""
        if self._dead_reason is not None:
            return self._dead_reason
        if self._proc is None:
            return "the inference worker is not started (load a checkpoint)"
        if not self._proc.is_alive():
            self._dead_reason = f"inference worker process {self._proc.pid} died (exit code {self._proc.exitcode})"
        return self._dead_reason

    def _send(self, req: tuple[int, float, dict[str, Any]]) -> None:
        try:
            self._conn.send(("infer", *req))
            self._busy = True
        except (OSError, ValueError, BrokenPipeError):
            self._dead_reason = self.dead_reason or "the pipe to the inference worker broke"

    def poll(self) -> list[ActionChunk]:
        """Chunks finished since the last call (never blocks)."""
        out: list[ActionChunk] = []
        if self._conn is None:
            return out
        try:
            while self._conn.poll(0):
                msg = self._conn.recv()
                if msg[0] == "chunk":
                    _, seq, obs_time, actions, compute_s = msg
                    out.append(ActionChunk(seq, obs_time, actions, compute_s, time.monotonic()))
                elif msg[0] == "failed":  # the agent raised; the loop holds until a chunk comes
                    self.last_error = msg[2]
                self._finished()
        except (EOFError, OSError):
            self._busy = False
            _ = self.dead_reason
            if self._dead_reason is None:
                self._dead_reason = "the pipe to the inference worker closed"
        return out

    def reset_agent(self) -> None:
        """Call the agent's reset() (a new episode: streaming agents drop their action buffer)."""
        if self.alive:
            self._pending = None
            try:
                self._conn.send(("reset",))
            except (OSError, BrokenPipeError):
                pass

    def kill(self) -> None:
        """SIGKILL the worker (fault injection in tests)."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within 2 s."""
        if self._proc is None:
            return
        self._dead_reason = "the inference worker was stopped"
        try:
            if self._proc.is_alive():
                self._conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=2.0)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn, self._busy, self._pending = None, None, False, None


class ThreadInferenceWorker(InferenceWorker):
    """The agent in a thread of the daemon's process (shares the GIL with the loop)."""

    kind = "thread"

    def __init__(self, factory: Callable[[], Any], num_threads: int = 1) -> None:
        super().__init__(factory, num_threads)
        self.agent: Any = None
        self._cv = threading.Condition()
        self._request: tuple[int, float, dict[str, Any]] | None = None
        self._results: list[ActionChunk] = []
        self._thread: threading.Thread | None = None
        self._stop = False
        self._crashed: str | None = None

    def start(self, timeout: float = 120.0) -> None:
        import torch

        torch.set_num_threads(self.num_threads)
        try:
            self.agent = self.factory()
        except BaseException as e:
            raise InferenceWorkerError(f"failed to load the policy: {e!r}") from e
        self.info = _describe(self.agent)
        self._stop, self._crashed, self._busy, self._pending = False, None, False, None
        self._thread = threading.Thread(target=self._run, name="robopolicy-inference", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._crashed is None

    @property
    def dead_reason(self) -> str | None:
        if self._thread is None:
            return "the inference worker is not started (load a checkpoint)"
        return self._crashed if self._crashed else (None if self._thread.is_alive() else "inference thread ended")

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stop or self._request is not None)
                if self._stop:
                    return
                req, self._request = self._request, None
            assert req is not None
            seq, obs_time, obs = req
            try:
                actions, compute_s = _act(self.agent, obs)
                chunk = ActionChunk(seq, obs_time, actions, compute_s)
            except BaseException:
                self.last_error = traceback.format_exc()
                chunk = None
            with self._cv:
                if chunk is not None:
                    chunk.received = time.monotonic()
                    self._results.append(chunk)
                else:
                    self._results.append(ActionChunk(-1, obs_time, np.zeros((0, 0), np.float32), 0.0))

    def _send(self, req: tuple[int, float, dict[str, Any]]) -> None:
        with self._cv:
            self._request = req
            self._busy = True
            self._cv.notify_all()

    def poll(self) -> list[ActionChunk]:
        with self._cv:
            results, self._results = self._results, []
        out = []
        for chunk in results:
            self._finished()
            if chunk.seq >= 0:
                out.append(chunk)
        return out

    def reset_agent(self) -> None:
        if self.agent is not None:
            with self._cv:
                self._pending = None
                self.agent.reset()

    def stop(self) -> None:
        if self._thread is None:
            return
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=5.0)
        self._thread = None
        self._busy, self._pending = False, None


def make_worker(kind: str, factory: Callable[[], Any], num_threads: int = 1, nice: int = 5) -> InferenceWorker:
    """"process" (default for deployment) or "thread"."""
    if kind == "process":
        return ProcessInferenceWorker(factory, num_threads=num_threads, nice=nice)
    if kind == "thread":
        return ThreadInferenceWorker(factory, num_threads=num_threads)
    raise ValueError(f"inference worker must be 'process' or 'thread', got {kind!r}")

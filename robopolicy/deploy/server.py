"""The daemon's HTTP API (FastAPI): every route needs `Authorization: Bearer <token>`.

    GET  /status              state, checkpoint, worker, episode, metrics (loop rate, jitter, misses, latencies)
    GET  /metrics             the metrics part of /status
    POST /load                {"path": ..., "sha256": optional, "inference": {...}}   -> 409 on spec/hash mismatch
    POST /episodes/start      {"instruction": optional, "seed": optional}
    POST /episodes/stop       {"success": true | false | null, "discard": false}
    POST /estop               {"reason": optional}
    POST /reset               {"seed": optional}          clears the e-stop
    POST /heartbeat           keeps the operator heartbeat alive (when safety.heartbeat_timeout_s is set)
    POST /worker/restart      restart the inference worker

The server binds to loopback unless `allow_remote` is set: the robot is not to be driven from the network
by accident. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from robopolicy.deploy.auth import token_matches
from robopolicy.deploy.robot import ChecksumError, SpecMismatchError
from robopolicy.deploy.service import DeploymentService, ServiceError

log = logging.getLogger("robopolicy.deploy.server")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name) resolves only to loopback addresses."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind address unless explicitly allowed."""
    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"refusing to bind the deployment API to {host!r}, which is not a loopback address: "
                         f"anyone on that network could move the robot. Use host=127.0.0.1 (and an SSH tunnel), "
                         f"or set allow_remote=true if you really mean it")


def create_app(service: DeploymentService, token: str) -> Any:
    """The FastAPI app over `service`."""
    if not token:
        raise ValueError("an empty API token is not allowed")
    app = FastAPI(title="robopolicy deployment daemon", docs_url=None, redoc_url=None, openapi_url=None)

    def auth(request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), token):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token (Authorization: Bearer "
                                "<token>; the token is in the daemon's token file or $ROBOPOLICY_DEPLOY_TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ServiceError)
    async def _conflict(_: Request, e: ServiceError):
        return JSONResponse(status_code=409, content={"detail": str(e)})

    @app.exception_handler(SpecMismatchError)
    async def _spec(_: Request, e: SpecMismatchError):
        return JSONResponse(status_code=409, content={"detail": str(e)})

    @app.exception_handler(ChecksumError)
    async def _hash(_: Request, e: ChecksumError):
        return JSONResponse(status_code=409, content={"detail": str(e)})

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, KeyError, ValueError) as e:
            if isinstance(e, (SpecMismatchError, ChecksumError)):
                raise
            raise HTTPException(status_code=400, detail=str(e)) from e
        except RuntimeError as e:
            if isinstance(e, ServiceError):
                raise
            raise HTTPException(status_code=500, detail=str(e)) from e

    guard = [Depends(auth)]
    required, optional = Body(...), Body(default={})  # JSON bodies (named: defaults are evaluated once)

    @app.get("/status", dependencies=guard)
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/metrics", dependencies=guard)
    def metrics() -> dict[str, Any]:
        return service.status()["metrics"]

    @app.post("/load", dependencies=guard)
    def load(body: dict[str, Any] = required) -> dict[str, Any]:
        if "path" not in body:
            raise HTTPException(status_code=400, detail="body needs 'path' (a checkpoint directory on the robot)")
        return call(service.load, body["path"], body.get("sha256"), body.get("inference"))

    @app.post("/episodes/start", dependencies=guard)
    def start(body: dict[str, Any] = optional) -> dict[str, Any]:
        return call(service.start_episode, body.get("instruction"), body.get("seed"))

    @app.post("/episodes/stop", dependencies=guard)
    def stop(body: dict[str, Any] = optional) -> dict[str, Any]:
        return call(service.stop_episode, body.get("success"), bool(body.get("discard", False)))

    @app.post("/estop", dependencies=guard)
    def estop(body: dict[str, Any] = optional) -> dict[str, Any]:
        return service.estop(body.get("reason") or "operator e-stop (API)")

    @app.post("/reset", dependencies=guard)
    def reset(body: dict[str, Any] = optional) -> dict[str, Any]:
        return call(service.reset, body.get("seed"))

    @app.post("/heartbeat", dependencies=guard)
    def heartbeat() -> dict[str, Any]:
        return service.heartbeat()

    @app.post("/worker/restart", dependencies=guard)
    def restart_worker() -> dict[str, Any]:
        return call(service.restart_worker)

    return app


class ServerThread:
    """uvicorn serving `app` in a background thread (tests, and `deploy serve` runs it in the foreground)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False) -> None:
        import uvicorn

        check_bind(host, allow_remote)
        # access_log off: request lines are noise at heartbeat rates (and headers are never logged anyway).
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self.server.run, name="robopolicy-deploy-http", daemon=True)
        self._thread.start()
        ev = threading.Event()
        while not self.server.started and self._thread.is_alive():
            ev.wait(0.02)
            timeout -= 0.02
            if timeout <= 0:
                raise RuntimeError("the HTTP server did not start")
        if not self.server.started:
            raise RuntimeError("the HTTP server failed to start (port in use?)")

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets if self.server.servers else []
        return int(sockets[0].getsockname()[1]) if sockets else int(self.server.config.port)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

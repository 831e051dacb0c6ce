"""A small client of the daemon's HTTP API (what `robopolicy deploy status|load|start|stop|estop` use)."""

from __future__ import annotations

from typing import Any

import httpx


class DeployAPIError(RuntimeError):
    """The daemon answered with an error (the message is its `detail`)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class DeployClient:
    """`DeployClient("http://127.0.0.1:8765", token)`; every method returns the daemon's JSON answer."""

    def __init__(self, url: str, token: str | None, timeout: float = 180.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = self._http.request(method, path, json=body if method == "POST" else None)
        except httpx.ConnectError as e:
            raise DeployAPIError(0, f"cannot reach the daemon at {self._http.base_url} ({e}); is "
                                 f"`robopolicy deploy serve` running?") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise DeployAPIError(r.status_code, str(detail))
        return r.json()

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def metrics(self) -> dict[str, Any]:
        return self._call("GET", "/metrics")

    def load(self, path: str, sha256: str | None = None, **inference: Any) -> dict[str, Any]:
        return self._call("POST", "/load", {"path": path, "sha256": sha256, "inference": inference})

    def start(self, instruction: str | None = None, seed: int | None = None) -> dict[str, Any]:
        return self._call("POST", "/episodes/start", {"instruction": instruction, "seed": seed})

    def stop(self, success: bool | None = None, discard: bool = False) -> dict[str, Any]:
        return self._call("POST", "/episodes/stop", {"success": success, "discard": discard})

    def estop(self, reason: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/estop", {"reason": reason})

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        return self._call("POST", "/reset", {"seed": seed})

    def heartbeat(self) -> dict[str, Any]:
        return self._call("POST", "/heartbeat", {})

    def restart_worker(self) -> dict[str, Any]:
        return self._call("POST", "/worker/restart", {})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeployClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The deployment daemon over HTTP on the simulated arm, with a real (tiny) checkpoint loaded through the API."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploy_helpers import make_reach_checkpoint, reach_success  # noqa: E402

from robopolicy.data.episode_store import EpisodeStore  # noqa: E402
from robopolicy.deploy.client import DeployAPIError, DeployClient  # noqa: E402
from robopolicy.deploy.server import ServerThread, check_bind, create_app  # noqa: E402
from robopolicy.deploy.service import DeployConfig, DeploymentService  # noqa: E402
from robopolicy.policies.registry import build_config  # noqa: E402

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_reach_checkpoint(tmp_path_factory.mktemp("reach"))
    finally:
        torch.set_num_threads(n)


def _daemon(tmp: Path, worker: str, max_episode_s: float = 30.0):
    cfg = build_config(DeployConfig, {"store": str(tmp / "deploy.zarr"), "plugins": ["train_helpers"],
                                      "auto_restart_worker": False,
                                      "runtime": {"rate_hz": 100, "worker": worker, "max_episode_s": max_episode_s},
                                      "safety": {"max_ee_speed": 0.45, "max_ee_accel": 3.0}}, "deploy")
    svc = DeploymentService(cfg)
    svc._success_fn = lambda: reach_success(svc.robot.arm)
    svc.start()
    server = ServerThread(create_app(svc, TOKEN), "127.0.0.1", 0)
    server.start()
    return svc, server, DeployClient(f"http://127.0.0.1:{server.port}", TOKEN)


def _wait_end(client, timeout=25.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = client.status()
        if st["state"] not in ("running", "finishing"):
            return st
        time.sleep(0.2)
    raise AssertionError(f"episode did not end in {timeout} s: {st['arm']}, hold={st['hold_reason']}")


def test_policy_reaches_the_goal_through_the_api_and_the_episode_is_recorded(checkpoint, tmp_path):
    svc, server, client = _daemon(tmp_path, "thread")
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert httpx.get(url + "/status").status_code == 401  # no token
        assert httpx.get(url + "/status", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert server.server.config.host == "127.0.0.1"
        with pytest.raises(DeployAPIError, match="no policy loaded"):
            client.start()
        with pytest.raises(DeployAPIError, match="not the expected"):
            client.load(str(checkpoint), sha256="0" * 64)
        bad = tmp_path / "bad"
        shutil.copytree(checkpoint, bad)
        meta = json.loads((bad / "meta.json").read_text())
        meta["spec"]["obs_shapes"]["state"] = [38]
        (bad / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(DeployAPIError, match=r"'state': the policy was trained on shape \(38,\), this robot "
                                                 r"gives \(14,\)") as e:
            client.load(str(bad))
        assert e.value.status == 409
        info = client.load(str(checkpoint))
        assert len(info["sha256"]) == 64
        client.start("reach the point", seed=0)
        st = _wait_end(client)
        last = st["last_episode"]
        assert last is not None, {k: st[k] for k in ("state", "fault", "hold_reason", "episode", "arm")}
        assert last["end_reason"] == "success" and last["success"] is True, st
        assert st["metrics"]["chunks_received"] > 0 and st["metrics"]["loop"]["ticks"] > 50
        # e-stop: the next episode ends at once and cannot restart until reset
        client.start("again", seed=1)
        t0 = time.monotonic()
        while (client.status()["episode"] or {}).get("steps", 0) < 3 and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        client.estop("test e-stop")
        st = client.status()
        assert st["state"] == "estopped" and st["estop_reason"] == "test e-stop"
        with pytest.raises(DeployAPIError, match="e-stop is active"):
            client.start()
        client.reset()
        assert client.status()["state"] == "ready"
    finally:
        client.close()
        server.stop()
        svc.close()
    store = EpisodeStore.open(tmp_path / "deploy.zarr")
    attrs = [store.episode_attrs(i) for i in range(store.n_episodes)]
    assert attrs[0]["source"] == "policy" and attrs[0]["success"] is True
    assert attrs[0]["language"] == "reach the point" and attrs[0]["checkpoint_sha256"] == info["sha256"]
    assert attrs[-1]["end_reason"] == "estop" and attrs[-1]["aborted"] is True, svc.episodes


def test_api_is_loopback_only_by_default():
    assert DeployConfig().host == "127.0.0.1" and not DeployConfig().allow_remote
    with pytest.raises(ValueError, match="not a loopback address"):
        check_bind("0.0.0.0", allow_remote=False)
    check_bind("0.0.0.0", allow_remote=True)
    check_bind("localhost", allow_remote=False)


@pytest.mark.slow
def test_killed_worker_holds_then_recovers_after_restart(checkpoint, tmp_path):
    svc, server, client = _daemon(tmp_path, "process", max_episode_s=150.0)
    try:
        client.load(str(checkpoint))
        client.start("reach", seed=0)
        svc.loop.worker.kill()  # right away: the reach would succeed within ~1.5 s
        time.sleep(1.0)
        st = client.status()
        print("status after kill:", json.dumps({k: st[k] for k in ("state", "holding", "hold_reason", "worker")}))
        assert st["state"] == "running" and st["holding"] and "died (exit code -9)" in st["hold_reason"], st
        assert st["worker"]["alive"] is False
        held = np.array(st["arm"]["ee_pos"])
        time.sleep(0.5)
        assert np.linalg.norm(np.array(client.status()["arm"]["ee_pos"]) - held) < 0.005  # not moving
        client.restart_worker()
        st = _wait_end(client, timeout=60.0)
        assert st["last_episode"]["end_reason"] == "success", st
        assert st["last_episode"]["interventions"].get("worker_dead", 0) > 0
    finally:
        client.close()
        server.stop()
        svc.close()

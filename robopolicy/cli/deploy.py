"""`robopolicy deploy`: run the deployment daemon (`serve`) or talk to it (status, load, start, stop, estop, ...).

Thin layer: `serve` composes configs/deploy.yaml with hydra and runs robopolicy.deploy; the other commands
are an HTTP client of the running daemon.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

HELP = """\
usage: robopolicy deploy serve [key=value ...]          run the daemon (configs/deploy.yaml)
       robopolicy deploy status [--json]
       robopolicy deploy load PATH [--sha256 HEX] [--set num_inference_steps=10 ...]
       robopolicy deploy start [--instruction TEXT] [--seed N]
       robopolicy deploy stop [--success | --failure] [--discard]
       robopolicy deploy estop [--reason TEXT]
       robopolicy deploy reset | restart-worker | heartbeat

client options: --url (default http://127.0.0.1:8765), --token-file (default ~/.config/robopolicy/deploy_token;
$ROBOPOLICY_DEPLOY_TOKEN wins).

serve: the daemon drives the simulated arm unless robot= names a driver (configs/robot/*.yaml), binds to
127.0.0.1:8765 (allow_remote=true to bind elsewhere), and creates its token file on first start. Pressing
Enter in its terminal (or 'e' + Enter) e-stops the robot. Every episode is recorded into store= with
source=policy and the success label given at stop.
"""


def _serve(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from robopolicy.cli.config import compose_config
    from robopolicy.deploy.auth import load_token
    from robopolicy.deploy.server import ServerThread, check_bind, create_app
    from robopolicy.deploy.service import DeployConfig, DeploymentService
    from robopolicy.policies.registry import build_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw = OmegaConf.to_container(compose_config("deploy", argv), resolve=True)
    cfg: DeployConfig = build_config(DeployConfig, raw, where="deploy")  # type: ignore[arg-type]
    check_bind(cfg.host, cfg.allow_remote)  # before anything moves
    token = load_token(cfg.token_file, cfg.token_env, create=True)
    service = DeploymentService(cfg)
    service.start()
    server = ServerThread(create_app(service, token), cfg.host, cfg.port, cfg.allow_remote)
    server.start()
    print(f"robopolicy deploy: serving on http://{cfg.host}:{server.port} (robot={cfg.robot.get('name')}, "
          f"{cfg.runtime.rate_hz:g} Hz); token in {cfg.token_file} or ${cfg.token_env}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    keyboard = cfg.keyboard_estop == "on" or (cfg.keyboard_estop == "auto" and sys.stdin.isatty())
    if keyboard:
        threading.Thread(target=_keyboard_estop, args=(service, done), daemon=True).start()
        print("press Enter (or e + Enter) to e-stop; Ctrl-C stops the daemon", flush=True)
    done.wait()
    print("stopping: the running episode is saved unlabelled", flush=True)
    server.stop()
    service.close()
    return 0


def _keyboard_estop(service: Any, done: threading.Event) -> None:
    for line in sys.stdin:
        if done.is_set():
            return
        if line.strip().lower() in ("", "e", "estop", "stop"):
            service.estop("operator e-stop (keyboard)")
            print("E-STOP (keyboard). `robopolicy deploy reset` clears it.", flush=True)


def _client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robopolicy deploy", add_help=False)
    p.add_argument("command")
    p.add_argument("path", nargs="?")
    p.add_argument("--url", default="http://127.0.0.1:8765")
    p.add_argument("--token-file", default="~/.config/robopolicy/deploy_token")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sha256")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--instruction")
    p.add_argument("--seed", type=int)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--success", dest="success", action="store_true", default=None)
    g.add_argument("--failure", dest="success", action="store_false")
    p.add_argument("--discard", action="store_true")
    p.add_argument("--reason")
    return p


def _fmt_status(s: dict[str, Any]) -> str:
    m = s["metrics"]
    loop = m["loop"]
    ck = s.get("checkpoint") or {}
    lines = [f"state: {s['state']}" + (f"  (e-stop: {s['estop_reason']})" if s.get("estop_reason") else ""),
             f"checkpoint: {ck.get('path', '-')}  sha256 {str(ck.get('sha256', '-'))[:12]}",
             f"worker: {s['worker']}",
             f"holding: {s['holding']}" + (f" ({s['hold_reason']})" if s.get("hold_reason") else ""),
             f"loop: {loop['rate_hz']:.1f}/{loop['target_hz']:g} Hz, period error p50 {loop['period_error_p50_ms']:.3f}"
             f" ms p99 {loop['period_error_p99_ms']:.3f} ms max {loop['period_error_max_ms']:.3f} ms, "
             f"deadline misses {loop['deadline_misses']}"]
    for key in ("inference_ms", "obs_to_chunk_ms", "obs_age_ms"):
        v = m[key]
        if v["p50"] is not None:
            lines.append(f"{key}: p50 {v['p50']:.2f} p99 {v['p99']:.2f} max {v['max']:.2f}")
    lines.append(f"interventions: {m['interventions']['counts']}")
    if s.get("episode"):
        lines.append(f"episode: {s['episode']}")
    if s.get("last_episode"):
        lines.append(f"last episode: {s['last_episode']}")
    if s.get("fault"):
        lines.append(f"fault: {s['fault']}")
    return "\n".join(lines)


def _client(argv: list[str]) -> int:
    from robopolicy.deploy.auth import TokenError, load_token
    from robopolicy.deploy.client import DeployAPIError, DeployClient

    args = _client_parser().parse_args(argv)
    try:
        token = load_token(args.token_file)
    except TokenError as e:
        print(f"robopolicy deploy: {e}", file=sys.stderr)
        return 2
    inference: dict[str, Any] = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        inference[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    with DeployClient(args.url, token) as c:
        calls = {
            "status": lambda: c.status(),
            "load": lambda: c.load(args.path, args.sha256, **inference) if args.path else None,
            "start": lambda: c.start(args.instruction, args.seed),
            "stop": lambda: c.stop(args.success, args.discard),
            "estop": lambda: c.estop(args.reason),
            "reset": lambda: c.reset(args.seed),
            "restart-worker": lambda: c.restart_worker(),
            "heartbeat": lambda: c.heartbeat(),
        }
        if args.command not in calls:
            print(f"robopolicy deploy: unknown command {args.command!r}\n\n{HELP}", file=sys.stderr)
            return 2
        if args.command == "load" and not args.path:
            print("robopolicy deploy load: give the checkpoint directory (on the robot workstation)", file=sys.stderr)
            return 2
        try:
            out = calls[args.command]()
        except DeployAPIError as e:
            print(f"robopolicy deploy {args.command}: {e}", file=sys.stderr)
            return 1
    if args.command == "status" and not args.json:
        print(_fmt_status(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0
    if argv[0] == "serve":
        return _serve(argv[1:])
    return _client(argv)

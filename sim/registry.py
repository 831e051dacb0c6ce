"""Task registry: one name -> one gymnasium env factory and its scripted expert.

Every task module registers itself here (`register_task`) so that the CLIs, the eval runner and the
demo collector look tasks up by name (`make_env("pusht")`) without an if/elif factory.
Task modules are imported lazily (`TASK_MODULES`) so that importing `sim` does not import
robosuite or Meta-World unless one of their tasks is asked for.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class TaskSpec:
    """What the registry knows of a task."""

    name: str
    make_env: Callable[..., gym.Env]
    make_expert: Callable[..., Any] | None  # (env, **expert_kwargs) -> expert
    max_episode_steps: int
    fps: float
    description: str = ""


_TASKS: dict[str, TaskSpec] = {}

# Task name prefix -> module that registers it on import.
TASK_MODULES: dict[str, str] = {
    "pusht": "sim.pusht",
    "robosuite_": "sim.robosuite_tasks",
    "metaworld_": "sim.metaworld_tasks",
    "embedded_": "sim.embedded.tasks",
}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (called by task modules at import time)."""
    _TASKS[spec.name] = spec
    return spec


def _import_for(name: str) -> None:
    for prefix, module in TASK_MODULES.items():
        if name.startswith(prefix):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ImportError(
                    f"task '{name}' needs module '{module}', which failed to import ({e}). "
                    "Install the simulation extras: pip install -e '.[sim]'"
                ) from e


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, importing its module on first use."""
    if name not in _TASKS:
        _import_for(name)
    if name not in _TASKS:
        raise KeyError(f"unknown task '{name}'. Known tasks: {', '.join(sorted(list_tasks()))}")
    return _TASKS[name]


def list_tasks(load_all: bool = True) -> list[str]:
    """Names of all registered tasks (importing every task module that imports cleanly)."""
    if load_all:
        for module in TASK_MODULES.values():
            try:
                importlib.import_module(module)
            except ImportError:
                pass
    return sorted(_TASKS)


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Create the gymnasium env of a task (kwargs go to the task's factory, e.g. render size)."""
    return get_task(name).make_env(**kwargs)


def make_expert(name: str, env: gym.Env, **kwargs: Any) -> Any:
    """Create the scripted expert of a task for a given env instance (kwargs go to the expert, e.g. style)."""
    spec = get_task(name)
    if spec.make_expert is None:
        raise KeyError(f"task '{name}' has no scripted expert")
    if kwargs:
        try:
            inspect.signature(spec.make_expert).bind(env, **kwargs)
        except TypeError as e:
            raise ValueError(f"the expert of task '{name}' does not take {sorted(kwargs)} ({e})") from e
    return spec.make_expert(env, **kwargs)

"""Simulated tasks, scripted experts and a simulated robot (no imports from robopolicy)."""

import os

# MuJoCo fixes its GL backend at first import; offscreen EGL is what every sim task here renders with.
os.environ.setdefault("MUJOCO_GL", "egl")

from sim.registry import TaskSpec, get_task, list_tasks, make_env, make_expert, register_task  # noqa: E402

__all__ = ["TaskSpec", "get_task", "list_tasks", "make_env", "make_expert", "register_task"]

"""Simulated tasks, scripted experts and a simulated robot (no imports from robopolicy)."""

from sim.registry import TaskSpec, get_task, list_tasks, make_env, make_expert, register_task

__all__ = ["TaskSpec", "get_task", "list_tasks", "make_env", "make_expert", "register_task"]

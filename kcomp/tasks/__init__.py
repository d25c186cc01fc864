"""Tasks: each implements the small protocol in `base.py`; train/oof/tta are written once against it."""

from kcomp.registry import Registry
from kcomp.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")

# The one list of task modules (no folder scanning). Each registers itself on import.
_MODULES = ("kcomp.tasks.cls", "kcomp.tasks.seg", "kcomp.tasks.det", "kcomp.tasks.ink")


def _load() -> None:
    import importlib

    for m in _MODULES:
        importlib.import_module(m)


def task_names() -> list[str]:
    """The tasks' names without importing their modules (option checks and `--help` need no torch)."""
    return [m.rsplit(".", 1)[1] for m in _MODULES]


def get_task(name: str) -> Task:
    _load()  # always: a task module imported directly (tests, plugins) must not hide the others
    return TASKS.get(name)()


__all__ = ["TASKS", "Task", "get_task", "task_names"]

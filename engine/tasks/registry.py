"""The table of tasks: built-in ones by name, plug-ins from entry points, the environment or code.

Built-in tasks are listed here and only here. A third party adds one without editing the engine:
an ``oncostaging.tasks`` entry point (``name = "package.module:TASK"``) in its package metadata, a
``module:attribute`` in ``$ONCOSTAGING_TASKS`` (comma-separated; handy for a process the Slicer
module starts), or :func:`register_task` in Python. A task's module is imported only when the task
is looked up, and its declaration must not import torch (see :mod:`engine.tasks.base`).
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib import metadata

from engine.errors import EngineError
from engine.tasks.base import Task

log = logging.getLogger(__name__)

#: Where the built-in tasks are declared, in the order ``engine tasks`` lists them. A task's name is
#: written once, in its declaration; this table only says where the declarations are.
BUILTIN_TASK_SOURCES: tuple[str, ...] = (
    "engine.tasks.esophagus:TASK",
    "engine.tasks.npc:TASK",
    "engine.tasks.gtv:TASK",
    "engine.tasks.pet:TASK",
)
ENTRY_POINT_GROUP = "oncostaging.tasks"
TASKS_ENV = "ONCOSTAGING_TASKS"

_registered: dict[str, Task] = {}
_loaded: dict[str, Task] = {}
_builtin: dict[str, str] = {}


def builtin_sources() -> dict[str, str]:
    """name → ``module:attribute`` of the built-in tasks (their declarations are imported once)."""
    if not _builtin:
        for source in BUILTIN_TASK_SOURCES:
            task = _import(source)
            _builtin[task.name] = source
            _loaded.setdefault(task.name, task)
    return _builtin


def builtin_task_names() -> list[str]:
    return list(builtin_sources())


class UnknownTaskError(EngineError):
    """A task name that no built-in, entry point or registration provides."""


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make ``task`` known to the CLI, planner, synth, bundles and the Slicer logic of this process."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task needs an engine.tasks.Task, got {type(task).__name__}")
    if (
        not task.name
        or not task.name.replace("_", "").replace("-", "").isalnum()
        or task.name != task.name.lower()
    ):
        raise EngineError(f"Task name {task.name!r} must be lower-case letters, digits, '-' or '_'.")
    taken = task.name in _registered or task.name in _known_sources()
    if not replace and taken and _lookup(task.name) is not task:
        raise EngineError(
            f"A task named '{task.name}' is already registered; pass replace=True to replace it."
        )
    _registered[task.name] = task
    _loaded.pop(task.name, None)
    return task


def unregister_task(name: str) -> None:
    """Forget a task registered with :func:`register_task` (built-ins stay)."""
    _registered.pop(name, None)
    _loaded.pop(name, None)


def _env_sources() -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in os.environ.get(TASKS_ENV, "").split(","))):
        if ":" not in item:
            raise EngineError(
                f"${TASKS_ENV} entry {item!r} must be 'module:attribute', e.g. 'mytasks.liver:TASK'."
            )
        out[f"env:{item}"] = item
    return out


def _entry_point_sources() -> dict[str, str]:
    try:
        points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken third-party distribution must not take the built-ins down
        log.warning("Could not read %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return {}
    return {ep.name: ep.value for ep in points}


def _known_sources() -> dict[str, str]:
    """name → ``module:attribute``; environment entries are keyed by their source until imported."""
    return {**builtin_sources(), **_entry_point_sources()}


def _import(source: str) -> Task:
    module_name, _, attribute = source.partition(":")
    try:
        task = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"Cannot load the task declared as '{source}': {exc}") from exc
    if not isinstance(task, Task):
        raise EngineError(f"'{source}' is not an engine.tasks.Task (it is a {type(task).__name__}).")
    return task


def _load_env_tasks() -> None:
    for key, source in _env_sources().items():
        if key not in _loaded:
            task = _import(source)
            _loaded[key] = task
            _registered.setdefault(task.name, task)


def _lookup(name: str) -> Task | None:
    if name in _registered:
        return _registered[name]
    if name in _loaded:
        return _loaded[name]
    source = _known_sources().get(name)
    if source is None:
        return None
    task = _import(source)
    if task.name != name:
        raise EngineError(f"'{source}' declares task '{task.name}' but is registered as '{name}'.")
    _loaded[name] = task
    return task


def task_names() -> list[str]:
    """Every known task: built-ins first in their order, then plug-ins by name."""
    _load_env_tasks()
    builtin = builtin_task_names()
    extra = sorted((set(_entry_point_sources()) | set(_registered)) - set(builtin))
    return [*builtin, *extra]


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is an error that lists the known ones."""
    _load_env_tasks()
    task = _lookup(name) if isinstance(name, str) else None
    if task is None:
        raise UnknownTaskError(f"Unknown task {name!r}; known tasks are {', '.join(task_names())}.")
    return task


def all_tasks() -> list[Task]:
    return [get_task(n) for n in task_names()]


def pipeline_task_names() -> list[str]:
    """Tasks that train and run models (the others declare data and phantoms only)."""
    return [t.name for t in all_tasks() if t.has_pipeline]


def phantom_task_names() -> list[str]:
    return [t.name for t in all_tasks() if t.phantom is not None]

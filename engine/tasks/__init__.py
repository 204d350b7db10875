"""Tasks as plug-ins: each task declares its data and implements its entry points; the command
line, planner, phantoms, model bundles and the Slicer modules look tasks up here by name.

See ``docs/architecture.md`` ("Adding a task") for how to write one.
"""

from engine.tasks.base import (
    DEVICE_CHOICES,
    T_STAGES,
    TASK_COMMANDS,
    TTA_HELP,
    TTA_MODES,
    Label,
    PlanDefaults,
    Task,
    anatomy,
    check_tta,
    code,
    neoplasm,
)
from engine.tasks.registry import (
    BUILTIN_TASK_SOURCES,
    ENTRY_POINT_GROUP,
    TASKS_ENV,
    UnknownTaskError,
    all_tasks,
    builtin_task_names,
    get_task,
    phantom_task_names,
    pipeline_task_names,
    register_task,
    task_names,
    unregister_task,
)

__all__ = [
    "BUILTIN_TASK_SOURCES",
    "DEVICE_CHOICES",
    "ENTRY_POINT_GROUP",
    "TASKS_ENV",
    "TASK_COMMANDS",
    "T_STAGES",
    "TTA_HELP",
    "TTA_MODES",
    "Label",
    "PlanDefaults",
    "Task",
    "UnknownTaskError",
    "all_tasks",
    "builtin_task_names",
    "anatomy",
    "check_tta",
    "code",
    "get_task",
    "neoplasm",
    "phantom_task_names",
    "pipeline_task_names",
    "register_task",
    "task_names",
    "unregister_task",
]

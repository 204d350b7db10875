"""The EsophagusStaging logic for scripts and the Python console: the shared task logic, bound to
the esophagus task, under the names earlier versions of the module used."""

from __future__ import annotations

from typing import Any

from OncoStagingCommon.logic import RunOptions as StagingOptions  # noqa: F401
from OncoStagingCommon.logic import TaskInputError as StagingInputError  # noqa: F401
from OncoStagingCommon.logic import TaskLogic, TrainingRequest, describe_training_event  # noqa: F401
from OncoStagingCommon.process import Launcher

TASK = "esophagus"


class EsophagusStagingLogic(TaskLogic):
    """``TaskLogic("esophagus")``."""

    def __init__(self, scene: Any = None, launcher: Launcher | None = None, python: str | None = None):
        TaskLogic.__init__(self, TASK, scene=scene, launcher=launcher, python=python)

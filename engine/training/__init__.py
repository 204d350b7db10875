"""Task-agnostic training: configs, the :class:`Trainer` loop, atomic checkpoints, progress, DDP.

Modules: :mod:`~engine.training.steps` (the task protocol and results), :mod:`~engine.training.loaders`
(reproducible batches), :mod:`~engine.training.trainer` (the loop), :mod:`~engine.training.checkpoint`,
:mod:`~engine.training.config`, :mod:`~engine.training.callbacks`, :mod:`~engine.training.distributed`
and :mod:`~engine.training.tasks` (reusable segmentation and classification tasks).

A pipeline plugs in by writing a :class:`TrainingTask` (``training_step`` → :class:`StepOutput`,
``validation_step`` → metrics dict) and calling ``Trainer(model, task, train, val, config).fit()``.
"""

from engine.training.callbacks import (PROGRESS_PREFIX, CsvHistoryLogger, JsonLinesProgress, ProgressEvent,
                                       TqdmProgress, parse_progress_line, read_history)
from engine.training.checkpoint import (Checkpoint, has_checkpoint, load_checkpoint, load_model_weights,
                                        save_checkpoint)
from engine.training.config import (OptimizerConfig, SchedulerConfig, TrainerConfig, build_optimizer,
                                    build_scheduler)
from engine.training.distributed import DistributedContext, detect_torchrun, init_distributed
from engine.training.loaders import LoaderContext, build_loader
from engine.training.steps import StepOutput, TrainingResult, TrainingTask, move_to_device
from engine.training.trainer import Trainer

__all__ = [
    "PROGRESS_PREFIX", "Checkpoint", "CsvHistoryLogger", "DistributedContext", "JsonLinesProgress",
    "LoaderContext", "OptimizerConfig", "ProgressEvent", "SchedulerConfig", "StepOutput", "TqdmProgress",
    "Trainer", "TrainerConfig", "TrainingResult", "TrainingTask", "build_loader", "build_optimizer",
    "build_scheduler", "detect_torchrun", "has_checkpoint", "init_distributed", "load_checkpoint",
    "load_model_weights", "move_to_device", "parse_progress_line", "read_history", "save_checkpoint",
]

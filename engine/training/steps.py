"""What a pipeline supplies to the training loop and gets back: the :class:`TrainingTask` protocol, its
:class:`StepOutput`, the :class:`TrainingResult` of a run, and helpers for writing tasks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class StepOutput:
    """What a training step returns: the loss to back-propagate and float metrics to log.

    ``batch_size`` (optional) weights the step in the epoch mean; steps count equally otherwise.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None


@runtime_checkable
class TrainingTask(Protocol):
    """The per-pipeline part of training.

    ``model`` is the (possibly DDP-wrapped) module in ``training_step`` and the bare module in
    ``validation_step``; the task moves the batch to ``device`` itself (:func:`move_to_device`).
    ``training_step`` may return a bare loss tensor. Optional hooks, found by name:

    * ``validation_epoch_end(outputs: list[dict]) -> dict[str, float]`` – aggregate all validation
      outputs (gathered from every rank); default: mean of each numeric key. Use it for metrics
      that do not average (AUC, C-index, global Dice) by returning per-case values from the step.
    * ``parameter_groups(model) -> iterable`` – param groups (e.g. lower lr for a backbone).
    * ``on_epoch_start(epoch: int, model) -> None`` – curricula, sampling schedules.
    * ``state_dict() -> dict`` / ``load_state_dict(dict)`` – task state saved in checkpoints
      (tensors, numbers, strings, lists, dicts only).
    """

    def training_step(self, model: torch.nn.Module, batch: Any, device: torch.device) -> StepOutput | torch.Tensor:
        ...

    def validation_step(self, model: torch.nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
        ...


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Tensors anywhere in nested dicts/lists/tuples moved to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking and device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def mean_metrics(outputs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each numeric key over validation batches (keys absent from a batch are skipped)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for out in outputs:
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    continue
                v = v.item()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                sums[k] += float(v)
                counts[k] += 1
    return {k: sums[k] / counts[k] for k in sums}


@dataclass
class TrainingResult:
    """Outcome of :meth:`Trainer.fit`. ``epochs_run`` counts completed epochs, including resumed ones."""

    epochs_run: int
    start_epoch: int
    global_step: int
    best_metric: float | None
    best_epoch: int | None
    monitor: str
    stopped_early: bool
    cancelled: bool
    history_path: Path
    checkpoint_path: Path | None
    best_checkpoint_path: Path | None
    final_metrics: dict[str, float] = field(default_factory=dict)

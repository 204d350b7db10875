"""Segment & Stage of one MRI with an NPC model: the engine's generic runner with this task's input check
(MRI only) — segmentation.nii.gz, segmentation.seg.nrrd, gradcam.nii.gz, report.json, overview.png."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.pipelines.case import RunResult, segment_case
from engine.tasks.npc.predictor import check_mri

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.tasks.base import CancelFn, ProgressFn
    from engine.tasks.npc import NpcTask


def segment_and_stage(task: NpcTask, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                      gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
                      cancel: CancelFn | None = None, series_uid: str | None = None) -> RunResult:
    """All result files or none; the input is checked (an MRI, not a CT) before the model is loaded."""
    return segment_case(task, source, out_dir, lambda: task.load_predictor(model, device), gradcam=gradcam,
                        overwrite=overwrite, progress=progress, cancel=cancel, series_uid=series_uid,
                        check_input=check_mri)

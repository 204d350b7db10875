"""Segment & Stage of one CT with nn-TransEC: the generic runner with this task's input check and report.

The report adds to the generic one how many stage classifiers the model averages; the prediction's
own fields (KRT box, test-time augmentation, an ensemble's member probabilities) come from
:class:`~engine.tasks.esophagus.predictor.EsophagusPrediction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.io.image import Image
from engine.pipelines import case
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn, ProgressFn, check_tta
from engine.tasks.esophagus import TASK
from engine.tasks.esophagus.options import classifier_weight_names
from engine.tasks.esophagus.predictor import EsophagusPredictor, check_ct_intensities


def build_report(prediction: case.Prediction, bundle: ModelBundle, image: Image,
                 source: str) -> dict[str, Any]:
    """The content of ``report.json`` for one CT."""
    return case.build_report(TASK.name, prediction, bundle, image, source,
                             model_fields={"stage_classifiers": len(classifier_weight_names(bundle))})


def segment_and_stage(input_path: str | Path | Image, out_dir: str | Path,
                      model: str | Path | ModelBundle | EsophagusPredictor | None = None,
                      device: str = "auto", gradcam: bool = True, overwrite: bool = False,
                      progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                      series_uid: str | None = None, tta: str = "all", restrict_to_roi: bool = True
                      ) -> case.RunResult:
    """Segment & Stage one CT and write every result file into ``out_dir``, all or nothing.

    Everything is checked before anything is written: the output folder, the input image (CT in HU,
    3D), the model (task, sha256). ``restrict_to_roi=False`` runs the full-resolution stage on the whole
    volume instead of around the low-resolution foreground.
    """
    check_tta(tta)
    return case.segment_case(TASK, input_path, out_dir, lambda: TASK.load_predictor(model, device),
                             gradcam=gradcam, overwrite=overwrite, progress=progress, cancel=cancel,
                             series_uid=series_uid, check_input=check_ct_intensities, report=build_report,
                             tta=tta, restrict_to_roi=restrict_to_roi)

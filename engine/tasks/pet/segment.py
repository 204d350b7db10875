"""Segment & Predict one PET through the engine's generic runner.

A DICOM PET series is converted to body-weight SUV from its own tags first (the conversion goes into
``report.json``); a volume file must already be in SUV. Either way the volume is checked before the
model is loaded, so a wrong input changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.io.image import Image
from engine.io.suv import check_suv_volume, is_pet_series, read_suv_series

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.pipelines.case import Prediction, RunResult
    from engine.registry import ModelBundle
    from engine.tasks.base import CancelFn, ProgressFn
    from engine.tasks.pet import PetTask

log = logging.getLogger(__name__)


def read_pet(source: Any, series_uid: str | None) -> tuple[Any, dict[str, Any] | None]:
    """What the runner reads: a DICOM PET folder becomes an in-memory SUV volume (with its conversion)."""
    if isinstance(source, Image) or not Path(source).is_dir() or not is_pet_series(source, series_uid):
        return source, None
    image, conversion = read_suv_series(source, series_uid)
    return image, conversion.to_dict()


def segment(task: PetTask, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
            gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None, series_uid: str | None = None) -> RunResult:
    """All result files or none (``engine.pipelines.case.segment_case``); ``report.json`` adds ``uptake``,
    ``pathology_probabilities``, ``outcome_probabilities`` and, for DICOM input, ``suv_conversion``."""
    from engine.pipelines.case import build_report, read_input, segment_case

    volume, conversion = read_pet(source, series_uid)
    name = str(Path(source).absolute()) if not isinstance(source, Image) else "<in-memory image>"

    def report(prediction: Prediction, bundle: ModelBundle, image: Image, _name: str) -> dict[str, Any]:
        prediction.suv_conversion = conversion  # type: ignore[attr-defined]
        return build_report(task.name, prediction, bundle, image, name)

    result = segment_case(task, volume, out_dir, lambda: task.load_predictor(model, device), gradcam=gradcam,
                          overwrite=overwrite, progress=progress, cancel=cancel,
                          series_uid=series_uid if conversion is None else None, check_input=check_suv_volume,
                          report=report)
    try:  # replaces the generic figure in one rename; the generic one stays if drawing fails
        image = volume if isinstance(volume, Image) else read_input(volume, series_uid, task.modality)[0]
        draw_overview(image, result, task)
    except Exception:
        log.exception("Could not draw the PET overview; the generic overview.png is kept.")
    return result


def draw_overview(image: Image, result: RunResult, task: PetTask) -> None:
    """The overview with the outcome as the highlighted bars and the uptake figures in the title."""
    from engine.pipelines import outputs
    from engine.reporting.overview import render_overview

    prediction, report = result.prediction, result.report
    uptake = report.get("uptake") or {}
    figures = (f"SUVmax {uptake['suv_max']:.1f}, MTV {uptake['mtv_ml']:.1f} ml, TLG {uptake['tlg']:.0f}"
               if uptake else "no tumour found")
    pathology = report.get("predicted_pathology")
    title = (f"{Path(str(report['input']['path'])).name} — {figures}"
             + (f"; pathology {pathology}" if pathology else "")
             + f" ({report['model']['id']} {report['model']['version']})")
    bars = {f"outcome {k}": v for k, v in (report.get("outcome_probabilities") or {}).items()}
    cam = prediction.gradcam.array if prediction.gradcam is not None else None
    render_overview(image, prediction.labels, cam, outputs.segments_from_labels(task.labels), bars,
                    result.out_dir / outputs.OVERVIEW_FILE, focus_label=1, title=title,
                    warnings=prediction.warnings)

"""Segment one CT with a GTV model through the engine's generic runner, then draw the task's overview
(three planes and the slice-probability curve) over the generic one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ImageError
from engine.io.image import Image
from engine.pipelines import outputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.pipelines.case import RunResult
    from engine.tasks.base import CancelFn, ProgressFn
    from engine.tasks.gtv import GtvTask

log = logging.getLogger(__name__)


def check_ct(image: Image) -> None:
    """Refuse what cannot be a CT in HU: a body CT holds air (≤ −500 HU) and nothing far below −1000 HU."""
    if image.modality and image.modality.upper() != "CT":
        raise ImageError(f"GTVSeg needs a CT volume, but the input's modality is '{image.modality}'.")
    a = image.array
    if float(np.percentile(a, 5)) < -1100.0:
        raise ImageError("Intensities go far below air (-1000 HU): the volume is not in Hounsfield units.")
    if float(np.mean(a <= -500)) < 0.005:
        raise ImageError("The input does not look like a CT in Hounsfield units (almost no voxels at air values).")


def segment(task: GtvTask, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
            gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None, series_uid: str | None = None,
            threshold: float | None = None) -> RunResult:
    """All result files or none (``engine.pipelines.case.segment_case``); ``report.json`` carries
    ``slice_probabilities`` (one per input slice, input order) and ``slices_kept``."""
    from engine.pipelines.case import segment_case
    from engine.tasks.gtv.figure import render_gtv_overview

    result = segment_case(task, source, out_dir, lambda: task.load_predictor(model, device), gradcam=gradcam,
                          overwrite=overwrite, progress=progress, cancel=cancel, series_uid=series_uid,
                          check_input=check_ct, threshold=threshold)
    prediction = result.prediction
    path = result.out_dir / outputs.OVERVIEW_FILE
    try:  # replaces the generic figure in one rename; the generic one stays if drawing fails
        image = prediction.image if prediction.image is not None else _input_image(source, series_uid,
                                                                                   prediction.labels)
        model_info = result.report.get("model", {})
        render_gtv_overview(image, prediction.labels, prediction.gradcam, prediction.slice_probabilities,
                            prediction.slices_kept, prediction.slice_threshold, path,
                            title=f"{Path(str(result.report['input']['path'])).name} — GTV "
                                  f"{prediction.volumes_cm3.get('GTV', 0.0):.2f} cm³ "
                                  f"({model_info.get('id')} {model_info.get('version')})")
    except Exception:
        log.exception("Could not draw the GTV overview; the generic overview.png is kept.")
    return result


def _input_image(source: Any, series_uid: str | None, like: Image) -> Image:
    """The input again (the runner does not hand it back); an in-memory image as it is."""
    from engine.pipelines.case import read_input

    image, _ = read_input(source, series_uid, "CT")
    if image.shape != like.shape:
        raise ImageError("The input changed while it was segmented.")
    return image

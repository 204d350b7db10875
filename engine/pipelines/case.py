"""Segment & Stage of one image, for any task: read, check, predict, report, write all files or none.

A task brings a predictor (a loaded model whose ``predict`` returns a :class:`Prediction`) and an
input check; this module does the rest the same way for every task, so that ``report.json`` and the
result files look alike whichever task made them (the Slicer modules and ``summary.csv`` read them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from engine.domain.check import apply_domain_check
from engine.errors import Cancelled, EngineError
from engine.io.image import Image
from engine.pipelines import outputs
from engine.utils.profiling import peak_memory_mb

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.registry import ModelBundle
    from engine.tasks.base import CancelFn, ProgressFn, Task

log = logging.getLogger(__name__)

#: What a cancelled Segment & Stage says: it stops before any result file is moved into place.
CANCELLED_MESSAGE = "Segment & Stage cancelled; nothing was written"


@dataclass
class Prediction:
    """A model's output for one image, in the image's original geometry.

    Tasks that stage fill ``stage_probabilities`` and ``predicted_stage``; a task adds its own report
    fields by extending this class and :meth:`report_fields`.
    """

    labels: Image
    gradcam: Image | None = None
    volumes_cm3: dict[str, float] = field(default_factory=dict)
    stage_probabilities: dict[str, float] | None = None
    predicted_stage: str | None = None
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    #: the check against the model's training data (:mod:`engine.domain`); None: not checked
    domain: dict[str, Any] | None = None
    #: False when the stage should not be believed (outside the training domain); None: not judged
    stage_reliable: bool | None = None

    def report_fields(self) -> dict[str, Any]:
        """This prediction's part of ``report.json``."""
        out: dict[str, Any] = {}
        if self.stage_probabilities is not None:
            out["stage_probabilities"] = self.stage_probabilities
            out["predicted_stage"] = self.predicted_stage
            if self.stage_reliable is not None:
                out["stage_reliable"] = self.stage_reliable
        out.update({"volumes_cm3": {k: round(v, 4) for k, v in self.volumes_cm3.items()},
                    "warnings": self.warnings, "timings_s": self.timings_s, "device": self.device})
        if self.domain is not None:
            out["domain"] = self.domain
        return out


class Predictor(Protocol):
    """A loaded model: what :func:`segment_case` needs of a task's predictor."""

    bundle: "ModelBundle"

    def predict(self, image: Image, gradcam: bool = True, progress: "ProgressFn | None" = None,
                cancel: "CancelFn | None" = None, **options: Any) -> Prediction: ...


@dataclass
class RunResult:
    """What :func:`segment_case` wrote and found; ``report`` is the content of ``report.json``."""

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any]
    prediction: Prediction

    @property
    def predicted_stage(self) -> str | None:
        return self.prediction.predicted_stage


class StepTimer:
    """Times the named steps of a prediction, reports progress at each step's start and stops there
    when cancelled (so a cancelled run never gets as far as writing)."""

    def __init__(self, progress: "ProgressFn | None", cancel: "CancelFn | None", steps: Sequence[str]):
        self.progress, self.cancel, self.steps = progress, cancel, list(steps)
        self.timings: dict[str, float] = {}

    def step(self, name: str) -> "_Step":
        return _Step(self, name)


class _Step:
    def __init__(self, timer: StepTimer, name: str):
        self.timer, self.name, self.start = timer, name, 0.0

    def __enter__(self) -> None:
        timer = self.timer
        if timer.cancel is not None and timer.cancel():
            raise Cancelled(CANCELLED_MESSAGE)
        if timer.progress is not None:
            timer.progress(self.name, timer.steps.index(self.name) / len(timer.steps))
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> bool:
        self.timer.timings[self.name] = round(time.perf_counter() - self.start, 3)
        return False


def load_model(task_name: str, model: "str | Path | ModelBundle | None" = None) -> "ModelBundle":
    """A bundle object, a path, an installed model id, or (None) the newest installed/demo model of a task."""
    from engine.registry import ModelBundle, find_bundle, load_bundle

    if isinstance(model, ModelBundle):
        if model.task != task_name:
            raise EngineError(f"Model '{model.id}' is for task '{model.task}', not '{task_name}'.")
        return model
    if model is not None and Path(model).expanduser().exists():
        return load_bundle(Path(model).expanduser(), expected_task=task_name, verify=True)
    return find_bundle(task_name, None if model is None else str(model))


def build_report(task_name: str, prediction: Prediction, bundle: "ModelBundle", image: Image, source: str,
                 model_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``report.json``: model, input geometry, then the prediction's fields."""
    import engine

    return {
        "task": task_name,
        "model": {"id": bundle.id, "name": bundle.name, "version": bundle.version,
                  "sha256": {w.name: w.sha256 for w in bundle.weights}, "intended_use": bundle.intended_use,
                  **(model_fields or {})},
        "input": {"path": source, "shape": list(image.shape)[::-1], "spacing": list(image.spacing_xyz),
                  "origin": list(image.origin), "axis_order": "x, y, z"},
        **prediction.report_fields(),
        "engine_version": engine.__version__,
    }


ReportBuilder = Callable[[Prediction, "ModelBundle", Image, str], dict[str, Any]]


def read_input(source: str | Path | Image, series_uid: str | None, modality: str) -> tuple[Image, str]:
    """The image and how the report names it; an image without a modality is taken as the task's."""
    from engine.io.image import read_image

    if isinstance(source, Image):
        image, name = source, "<in-memory image>"
    else:
        image, name = read_image(source, series_uid=series_uid), str(Path(source).absolute())
    if image.modality is None:
        image.modality = modality
    return image, name


def segment_case(task: "Task", source: str | Path | Image, out_dir: str | Path,
                 load_predictor: Callable[[], Predictor], *, gradcam: bool = True, overwrite: bool = False,
                 progress: "ProgressFn | None" = None, cancel: "CancelFn | None" = None,
                 series_uid: str | None = None, check_input: Callable[[Image], None] | None = None,
                 report: ReportBuilder | None = None, **predict_options: Any) -> RunResult:
    """Segment & Stage one image and write ``segmentation.nii.gz``, ``segmentation.seg.nrrd``,
    ``gradcam.nii.gz``, ``report.json`` and ``overview.png`` into ``out_dir``, all or nothing.

    Everything is checked before the model runs: the output folder, the input image
    (``check_input``), then the model (``load_predictor``, called only once the input is known good).
    ``report`` replaces the generic :func:`build_report` where a task records more about its model.
    """
    t0 = time.perf_counter()
    out = outputs.check_output_dir(out_dir, overwrite)
    with outputs.lock_output(out):  # also proves the folder writable before the model is loaded
        outputs.remove_stale_staging(out)
        return _segment_locked(task, source, out, load_predictor, t0, gradcam=gradcam, overwrite=overwrite,
                               progress=progress, cancel=cancel, series_uid=series_uid, check_input=check_input,
                               report=report, **predict_options)


def _segment_locked(task: "Task", source: str | Path | Image, out: Path, load_predictor: Callable[[], Predictor],
                    t0: float, *, gradcam: bool, overwrite: bool, progress: "ProgressFn | None",
                    cancel: "CancelFn | None", series_uid: str | None,
                    check_input: Callable[[Image], None] | None, report: ReportBuilder | None,
                    **predict_options: Any) -> RunResult:
    """:func:`segment_case` once the output folder is locked."""
    t_read = time.perf_counter()
    image, name = read_input(source, series_uid, task.modality)
    if check_input is not None:
        check_input(image)
    t_load = time.perf_counter()
    predictor = load_predictor()
    t_predict = time.perf_counter()
    prediction = predictor.predict(image, gradcam=gradcam, progress=progress, cancel=cancel,
                                   **predict_options)
    prediction.timings_s = {"read": round(t_load - t_read, 3), "load_model": round(t_predict - t_load, 3),
                            **prediction.timings_s}
    if task.field_of_view is not None:  # any scan runs; one that cannot hold the anatomy is flagged
        prediction.warnings += task.field_of_view.warnings(task.name, image.shape, image.spacing,
                                                           image.direction)
    bundle = predictor.bundle
    with _timed(prediction, "domain_check"):
        apply_domain_check(task, bundle, image, prediction)
    content = (report(prediction, bundle, image, name) if report is not None
               else build_report(task.name, prediction, bundle, image, name))
    writers = _result_writers(task, image, prediction, bundle, name)
    if cancel is not None and cancel():
        raise Cancelled(CANCELLED_MESSAGE)
    t_write = time.perf_counter()

    def write_report(path: Path) -> None:  # after the others, so their write time is included
        content["timings_s"] = {**content["timings_s"], "write": round(time.perf_counter() - t_write, 3),
                                "total": round(time.perf_counter() - t0, 3)}
        content["memory"] = peak_memory_mb()
        outputs.write_json(path, content)

    files = outputs.write_all(out, writers, last={outputs.REPORT_FILE: write_report})
    if overwrite and prediction.gradcam is None and (out / outputs.GRADCAM_FILE).exists():
        (out / outputs.GRADCAM_FILE).unlink()  # a stale heat map must not pass for this run's
    log.info("Segment & Stage: %s → %s (%s)", name, prediction.predicted_stage, out)
    return RunResult(out, files, content, prediction)


class _timed:
    """Adds the time a step outside the predictor takes to the prediction's timings."""

    def __init__(self, prediction: Prediction, name: str):
        self.prediction, self.name, self.start = prediction, name, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> bool:
        self.prediction.timings_s[self.name] = round(time.perf_counter() - self.start, 3)
        return False


def _result_writers(task: "Task", image: Image, prediction: Prediction, bundle: "ModelBundle",
                    name: str) -> dict[str, Callable[[Path], Any]]:
    """File name → function writing it: label map, Slicer segmentation, Grad-CAM, overview figure."""
    from engine.io.image import write_image
    from engine.io.segmentation_nrrd import write_segmentation_nrrd
    from engine.reporting.overview import render_overview

    segments = outputs.segments_from_labels(bundle.labels)
    labels, cam = prediction.labels, prediction.gradcam
    writers: dict[str, Callable[[Path], Any]] = {
        outputs.SEGMENTATION_FILE: lambda p: write_image(labels, p),
        outputs.SLICER_SEGMENTATION_FILE: lambda p: write_segmentation_nrrd(labels, p, segments),
    }
    if cam is not None:
        writers[outputs.GRADCAM_FILE] = lambda p: write_image(cam, p)
    focus = dict(bundle.plan.get("labels") or {}).get(task.tumour_label) if task.tumour_label else None
    found = f" — predicted {prediction.predicted_stage}" if prediction.predicted_stage is not None else ""
    if found and prediction.stage_reliable is False:
        found += " (UNRELIABLE: outside the model's training data)"
    title = f"{Path(name).name}{found} ({bundle.id} {bundle.version})"
    writers[outputs.OVERVIEW_FILE] = lambda p: render_overview(
        image, labels, cam.array if cam is not None else None, segments, prediction.stage_probabilities, p,
        focus_label=focus, title=title, warnings=prediction.warnings)
    return writers

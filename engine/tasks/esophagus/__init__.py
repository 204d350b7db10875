"""EsophagusStaging: esophageal cancer on CT — five structures segmented and the T-stage (T1–T4) by
nn-TransEC (cascade segmentation → KRT crop → stage classifier with transfer and cross-task attention).

This file declares the task and maps its entry points to the modules that implement them; it
imports no network library, so listing tasks and models stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engine.tasks.base import (CancelFn, FieldOfView, Label, PlanDefaults, ProgressFn, Task, anatomy, check_tta,
                               neoplasm)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.pipelines.case import RunResult
    from engine.registry import ModelBundle
    from engine.tasks.esophagus.predictor import EsophagusPredictor

STAGES = ("T1", "T2", "T3", "T4")
TUMOUR, ORGAN_OF_ORIGIN = "EC", "esophagus"

LABELS = (
    Label("EC", 1, (230, 41, 41), neoplasm()),
    Label("aorta", 2, (224, 122, 40), anatomy("15825003", "Aorta")),
    Label("esophagus", 3, (214, 184, 128), anatomy("32849002", "Esophagus")),
    Label("lymph node", 4, (80, 190, 80), anatomy("59441001", "Lymph node")),
    Label("pericardium", 5, (90, 130, 230), anatomy("76848001", "Pericardium")),
)


class EsophagusTask(Task):
    """nn-TransEC: training in three phases, Segment & Stage, evaluation, ensembles."""

    def add_arguments(self, command: str, parser: argparse.ArgumentParser) -> None:
        if command == "train":
            from engine.tasks.esophagus.cli import add_train_arguments

            add_train_arguments(parser)
        elif command == "run":
            parser.add_argument("--whole-volume", action="store_true",
                                help="esophagus: run the full-resolution stage on the whole volume, not only "
                                     "around what the low-resolution stage found (slower; for comparisons)")

    def options_from_args(self, command: str, args: argparse.Namespace) -> dict[str, Any]:
        if command == "train":
            from engine.tasks.esophagus.cli import train_options

            return {"options": train_options(args)}
        if command == "run" and getattr(args, "whole_volume", False):
            return {"restrict_to_roi": False}
        return {}

    def train(self, dataset: str | Path, out_dir: str | Path, *, plan: Any = None,
              callbacks: Sequence[Any] = (), overwrite: bool = False, command: str | None = None,
              resume: bool = False, **options: Any) -> ModelBundle:
        from engine.tasks.esophagus.training import train

        return train(dataset, out_dir, options.get("options"), plan=plan, callbacks=list(callbacks),
                     cancel=options.get("cancel"), overwrite=overwrite, command=command, resume=resume)

    def load_predictor(self, model: Any = None, device: str = "auto") -> EsophagusPredictor:
        from engine.pipelines.case import load_model
        from engine.tasks.esophagus.predictor import EsophagusPredictor

        if isinstance(model, EsophagusPredictor):
            return model
        return EsophagusPredictor(load_model(self.name, model), device)

    def segment(self, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, series_uid: str | None = None, tta: str = "all",
                **options: Any) -> RunResult:
        from engine.tasks.esophagus.segment import segment_and_stage

        return segment_and_stage(source, out_dir, model, device=device, gradcam=gradcam, overwrite=overwrite,
                                 progress=progress, cancel=cancel, series_uid=series_uid, tta=tta,
                                 restrict_to_roi=options.get("restrict_to_roi", True))

    def run_batch(self, source: str | Path, out_dir: str | Path, model: Any = None, *, tta: str = "all",
                  **options: Any) -> Path:
        check_tta(tta)  # a wrong level is the command's error, not one per case
        return super().run_batch(source, out_dir, model, tta=tta, **options)

    def evaluate(self, dataset: str | Path, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 cancel: CancelFn | None = None, tta: str = "all", **options: Any) -> dict[str, Path]:
        from engine.tasks.esophagus.evaluation import evaluate

        return evaluate(dataset, out_dir, model, device=device, overwrite=overwrite, progress=progress,
                        cancel=cancel, tta=tta, cases=options.get("cases"))

    def ensemble(self, models: Sequence[Any], out_dir: str | Path, **options: Any) -> ModelBundle:
        from engine.tasks.esophagus.ensemble import ensemble_classifiers

        return ensemble_classifiers(models, out_dir, **options)

    def ensemble_members(self, bundle: ModelBundle) -> list[str]:
        from engine.tasks.esophagus.options import classifier_weight_names

        return classifier_weight_names(bundle)


TASK = EsophagusTask(
    name="esophagus",
    title="Esophageal cancer segmentation and T-staging (nn-TransEC)",
    modality="CT",
    labels=LABELS,
    stage_names=STAGES,
    tumour_label=TUMOUR,
    organ_of_origin=ORGAN_OF_ORIGIN,
    plan_defaults=PlanDefaults(dims=3, cascade=True),
    phantom="engine.synth.esophagus",
    slicer_module="EsophagusStaging",
    summary="cascade segmentation of 5 structures, KRT crop, T1-T4 classifier, Grad-CAM; trains and runs",
    # a thoracic CT: the tumour, the aorta and the pericardium in one view, slices thin enough for the wall
    field_of_view=FieldOfView(min_extent_mm=(80.0, 150.0, 150.0), max_spacing_mm=(10.0, 6.0, 6.0),
                              min_spacing_mm=(0.1, 0.1, 0.1), region="the mediastinum around the esophagus"),
)

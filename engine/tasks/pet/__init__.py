"""PET outcome: metabolic tumour, pathology and treatment outcome from FDG PET in SUV.

This file declares the task and maps its entry points to the modules that implement them; it
imports no network library, so listing tasks and models stays light.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.tasks.base import (
    CancelFn,
    FieldOfView,
    Label,
    PlanDefaults,
    ProgressFn,
    Task,
    check_tta,
    neoplasm,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.pipelines.case import RunResult
    from engine.registry import ModelBundle
    from engine.tasks.pet.predictor import PetPredictor


class PetTask(Task):
    """Multi-task multi-scale training, Segment & Predict (uptake figures, pathology, outcome), evaluation."""

    def add_arguments(self, command: str, parser: argparse.ArgumentParser) -> None:
        if command == "train":
            from engine.tasks.pet.cli import add_train_arguments

            add_train_arguments(parser)
        elif command == "evaluate":
            parser.add_argument("--compare-to", metavar="MODEL",
                                help="a second PET model evaluated on the same cases; its outcome AUC is compared "
                                     "with DeLong's test")

    def options_from_args(self, command: str, args: argparse.Namespace) -> dict[str, Any]:
        if command == "train":
            from engine.tasks.pet.cli import train_options

            return {"options": train_options(args)}
        if command == "evaluate" and getattr(args, "compare_to", None):
            return {"compare": args.compare_to}
        return {}

    def train(self, dataset: str | Path, out_dir: str | Path, *, plan: Any = None, callbacks: Sequence[Any] = (),
              overwrite: bool = False, command: str | None = None, resume: bool = False,
              **options: Any) -> ModelBundle:
        from engine.errors import TrainingError
        from engine.tasks.pet.training import train

        if plan is not None:
            raise TrainingError("The PET outcome task fixes its own plan (2 mm isotropic, fixed crops); "
                                "--plan and --target-spacing do not apply.")
        return train(dataset, out_dir, options.get("options"), callbacks=list(callbacks),
                     cancel=options.get("cancel"), overwrite=overwrite, command=command, resume=resume)

    def load_predictor(self, model: Any = None, device: str = "auto") -> PetPredictor:
        from engine.pipelines.case import load_model
        from engine.tasks.pet.predictor import PetPredictor

        if isinstance(model, PetPredictor):
            return model
        return PetPredictor(load_model(self.name, model), device)

    def segment(self, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, series_uid: str | None = None, tta: str = "all",
                **options: Any) -> RunResult:
        from engine.tasks.pet.segment import segment

        check_tta(tta)  # the network is not mirrored (left and right lungs differ); the option is still checked
        return segment(self, source, out_dir, model, device=device, gradcam=gradcam, overwrite=overwrite,
                       progress=progress, cancel=cancel, series_uid=series_uid)

    def evaluate(self, dataset: str | Path, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 cancel: CancelFn | None = None, tta: str = "all", **options: Any) -> dict[str, Path]:
        from engine.tasks.pet.evaluation import evaluate

        check_tta(tta)
        return evaluate(dataset, out_dir, model, device=device, overwrite=overwrite, progress=progress,
                        cancel=cancel, compare=options.get("compare"))


TASK = PetTask(
    name="pet",
    title="Treatment-outcome prediction from FDG PET (multi-task, multi-scale)",
    modality="PT",
    labels=(Label("tumour", 1, (255, 160, 0), neoplasm()),),
    tumour_label="tumour",
    plan_defaults=PlanDefaults(dims=3, target_spacing=(2.0, 2.0, 2.0)),  # the paper: 2 mm isotropic
    phantom="engine.synth.pet",
    slicer_module="EsophagusStaging",
    summary="multi-task multi-scale network: tumour segmentation, SUVmax/mean/peak, MTV, TLG, pathology and "
            "outcome probabilities, multi-scale Grad-CAM; DICOM PET converted to SUV; trains and runs",
    # one thoracic bed position at least; PET voxels are 2-5.5 mm, so 8 mm is already a coarse scanner
    field_of_view=FieldOfView(min_extent_mm=(100.0, 200.0, 200.0), max_spacing_mm=(8.0, 8.0, 8.0),
                              min_spacing_mm=(0.5, 0.5, 0.5), region="the thorax around the tumour"),
)

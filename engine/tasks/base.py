"""What a task is: its declaration (name, modality, labels, stages, plan defaults, phantom) and its
entry points (train, Segment & Stage, evaluate, model card, CLI options).

This module imports neither torch nor MONAI: the command line's parser, ``engine tasks``, the model
list and the Slicer modules read task declarations without loading a network library. A task's
heavy code is imported inside its entry points.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from engine.errors import EngineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.registry.bundle import ModelBundle

#: The UICC/AJCC primary-tumour categories the staging tasks predict.
T_STAGES = ("T1", "T2", "T3", "T4")
#: Where a command may run; ``auto`` picks CUDA when available.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Test-time augmentation levels: "all" mirrors the segmentation and the stage classifier, "stage"
#: only the classifier, "none" neither. A task without a stage reads "stage" as "none".
TTA_MODES = ("all", "stage", "none")
TTA_HELP = (
    "test-time mirroring: 'all' (default) averages the segmentation over mirrored windows (about 4x the "
    "segmentation time) and the stage probabilities over the classifier's mirrorings; 'stage' only the "
    "latter (fast); 'none' neither"
)
#: Commands whose options a task may extend with :meth:`Task.add_arguments`.
TASK_COMMANDS = ("train", "run", "evaluate")

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


def check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise EngineError(f"Test-time augmentation must be one of {', '.join(TTA_MODES)}, not {tta!r}.")


def code(scheme: str, value: str, meaning: str) -> dict[str, str]:
    """One coded concept (DICOM ``(scheme, code, meaning)`` triplet), as Slicer's terminologies store it."""
    return {"coding_scheme": scheme, "code": value, "meaning": meaning}


def anatomy(snomed: str, meaning: str) -> dict[str, Any]:
    """Terminology of a normal anatomical structure (SNOMED CT)."""
    return {
        "category": code("SCT", "123037004", "Anatomical Structure"),
        "type": code("SCT", snomed, meaning),
    }


def neoplasm() -> dict[str, Any]:
    """Terminology of a tumour: a morphologically altered structure of type neoplasm (SNOMED CT)."""
    return {
        "category": code("SCT", "49755003", "Morphologically Altered Structure"),
        "type": code("SCT", "108369006", "Neoplasm"),
    }


@dataclass(frozen=True)
class Label:
    """One segmentation label; colour and terminology let Slicer show it like a hand-made segment."""

    name: str
    value: int
    color: tuple[int, int, int]
    terminology: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "value": self.value, "color": list(self.color)}
        if self.terminology is not None:
            d["terminology"] = dict(self.terminology)
        return d


#: Colour of a structure that a task's label table does not know (a user's extra label).
UNKNOWN_LABEL_COLOR = (200, 200, 200)


@dataclass(frozen=True)
class PlanDefaults:
    """What a task's method fixes in the plan; everything else the planner derives from the data.

    ``dims`` 2 plans slice-by-slice training at ``patch_size`` in-plane; ``cascade`` adds the
    low-resolution stage of a coarse-to-fine cascade; ``target_spacing``/``patch_size`` (z, y, x)
    override the median-spacing and memory-budget rules where the paper prescribes them.
    """

    dims: int = 3
    cascade: bool = False
    target_spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] | None = None


#: The patient axes a :class:`FieldOfView` is written along, in the engine's (z, y, x) order.
PATIENT_AXES = ("cranio-caudal", "antero-posterior", "left-right")


@dataclass(frozen=True)
class FieldOfView:
    """How much of the patient an image must cover, and how finely, for a task's anatomy to be in it.

    Sizes are (z, y, x) in mm along the patient's cranio-caudal, antero-posterior and left-right axes,
    whatever the scan's storage order. An image outside these bounds still runs (a cropped or coarse
    scan may be all there is), but its result carries a warning: a model shown a volume that cannot
    hold the anatomy segments and stages it all the same, with nothing to tell the result is void.
    """

    min_extent_mm: tuple[float, float, float] | None = None
    max_spacing_mm: tuple[float, float, float] | None = None
    min_spacing_mm: tuple[float, float, float] | None = None
    #: What the extent must hold, named in the warning (e.g. "the mediastinum around the esophagus").
    region: str = "the anatomy"

    def warnings(self, task: str, shape: Sequence[int], spacing: Sequence[float],
                 direction: Any = None) -> list[str]:
        """Why an image of ``shape``/``spacing`` (z, y, x) and ``direction`` (ITK, 3×3) may not hold
        the anatomy of ``task``; empty when it can."""
        extent, step = _patient_geometry(shape, spacing, direction)
        axes = " × ".join(PATIENT_AXES)
        out = []
        if self.min_extent_mm and any(e < m for e, m in zip(extent, self.min_extent_mm)):
            out.append(f"The image covers {_mm(extent, 0)} mm ({axes}); the {task} task needs at least "
                       f"{_mm(self.min_extent_mm, 0)} mm to hold {self.region}, so the segmentation and stage "
                       "are unreliable. Use a scan that covers the whole region, or check the voxel spacing "
                       "in the file's header.")
        if self.max_spacing_mm and any(s > m for s, m in zip(step, self.max_spacing_mm)):
            out.append(f"The voxel spacing is {_mm(step, 2)} mm ({axes}); the {task} task needs at most "
                       f"{_mm(self.max_spacing_mm, 2)} mm, so small structures are lost and the result is "
                       "unreliable. Use a finer reconstruction of the scan.")
        if self.min_spacing_mm and any(s < m for s, m in zip(step, self.min_spacing_mm)):
            out.append(f"The voxel spacing is {_mm(step, 3)} mm ({axes}); the {task} task expects at least "
                       f"{_mm(self.min_spacing_mm, 3)} mm, so the spacing in the file's header is probably "
                       "in the wrong unit (it must be millimetres).")
        return out


def _patient_geometry(shape: Sequence[int], spacing: Sequence[float],
                      direction: Any) -> tuple[list[float], list[float]]:
    """Extent (bounding box) and spacing along the patient's (z, y, x) axes, so that a sagittal or
    coronal acquisition is measured like an axial one."""
    size_xyz = [float(n) * float(s) for n, s in zip(reversed(shape), reversed(spacing))]
    spacing_xyz = [float(s) for s in reversed(spacing)]
    if direction is None:
        direction = [[float(r == c) for c in range(3)] for r in range(3)]
    rows = [[abs(float(direction[r][c])) for c in range(3)] for r in range(3)]
    extent = [sum(w * n for w, n in zip(row, size_xyz)) for row in rows]
    step = [spacing_xyz[max(range(3), key=row.__getitem__)] for row in rows]
    return extent[::-1], step[::-1]


def _mm(values: Sequence[float], digits: int) -> str:
    return " × ".join(f"{round(float(v), digits):g}" for v in values)


@dataclass
class Task:
    """A task plug-in: its declaration, and entry points that subclasses implement.

    Declaring a task takes an instance with the fields filled in; making it trainable and runnable
    takes a subclass that overrides :meth:`train`, :meth:`segment`, :meth:`evaluate` (and usually
    :meth:`add_arguments` and :meth:`options_from_args`). Register it with
    :func:`engine.tasks.register_task`, an ``oncostaging.tasks`` entry point, or the
    ``ONCOSTAGING_TASKS`` environment variable.
    """

    name: str
    title: str
    modality: str
    labels: tuple[Label, ...]
    stage_names: tuple[str, ...] | None = None
    #: Label the staging and the overview figure centre on (the tumour), if any.
    tumour_label: str | None = None
    #: Label of the organ the tumour grows from; a tumour segmented away from it is flagged as outside
    #: the model's domain (:mod:`engine.domain.check`).
    organ_of_origin: str | None = None
    plan_defaults: PlanDefaults = field(default_factory=PlanDefaults)
    #: Module of the phantom generator (``generate(seed, preset, **options)``, ``description()``,
    #: ``HAS_TARGETS``), imported when a phantom is asked for.
    phantom: str | None = None
    #: The Slicer module that presents this task.
    slicer_module: str | None = None
    #: One line on what is built of this task, shown by ``engine tasks``.
    summary: str = ""
    #: What an input must cover for the anatomy to be in it; Segment & Stage warns when it does not.
    field_of_view: FieldOfView | None = None

    # --- declaration -----------------------------------------------------------------------------

    @property
    def label_map(self) -> dict[str, int]:
        """``{"background": 0, name: value, ...}``, the ``labels`` of a dataset.json."""
        return {"background": 0, **{lab.name: lab.value for lab in self.labels}}

    def label(self, name: str) -> Label | None:
        return next((lab for lab in self.labels if lab.name == name), None)

    def styled_labels(self, labels: Mapping[str, int]) -> list[Label]:
        """A plan's ``{name: value}`` as bundle labels, with this task's colours and terminology."""
        out = []
        for name, value in sorted(labels.items(), key=lambda kv: kv[1]):
            if value == 0:
                continue
            known = self.label(name)
            out.append(
                Label(
                    name,
                    int(value),
                    known.color if known else UNKNOWN_LABEL_COLOR,
                    known.terminology if known else None,
                )
            )
        return out

    def phantom_module(self) -> ModuleType:
        if self.phantom is None:
            raise EngineError(f"Task '{self.name}' has no phantom generator.")
        return importlib.import_module(self.phantom)

    @property
    def has_pipeline(self) -> bool:
        """Whether this task trains and runs models (a declaration alone only describes data)."""
        return type(self).train is not Task.train

    # --- command line ----------------------------------------------------------------------------

    def add_arguments(self, command: str, parser: argparse.ArgumentParser) -> None:
        """Add the options this task brings to ``command`` (one of :data:`TASK_COMMANDS`)."""

    def options_from_args(self, command: str, args: argparse.Namespace) -> dict[str, Any]:
        """Keyword arguments for the entry point of ``command`` from the parsed command line."""
        return {}

    # --- entry points ----------------------------------------------------------------------------

    def _not_built(self, what: str) -> EngineError:
        return EngineError(
            f"Task '{self.name}' ({self.title}) has no {what} yet; tasks that have one: "
            + ", ".join(_runnable_names())
            + "."
        )

    def train(
        self,
        dataset: str | Path,
        out_dir: str | Path,
        *,
        plan: Any = None,
        callbacks: Sequence[Any] = (),
        overwrite: bool = False,
        command: str | None = None,
        resume: bool = False,
        **options: Any,
    ) -> "ModelBundle":
        """Train this task's model on ``dataset`` and write a bundle to ``out_dir``."""
        raise self._not_built("training pipeline")

    def load_predictor(self, model: Any = None, device: str = "auto") -> Any:
        """A predictor holding ``model`` (bundle, path, installed id or None for the default) on ``device``,
        to pass as ``model`` to :meth:`segment` for many inputs."""
        raise self._not_built("Segment & Stage")

    def segment(
        self,
        source: Any,
        out_dir: str | Path,
        model: Any = None,
        *,
        device: str = "auto",
        gradcam: bool = True,
        overwrite: bool = False,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        series_uid: str | None = None,
        **options: Any,
    ) -> Any:
        """Segment & Stage one image into ``out_dir`` (all files or none); returns a run result."""
        raise self._not_built("Segment & Stage")

    def run_batch(
        self,
        source: str | Path,
        out_dir: str | Path,
        model: Any = None,
        *,
        device: str = "auto",
        gradcam: bool = True,
        overwrite: bool = False,
        progress: Callable[[int, int, str], None] | None = None,
        cancel: CancelFn | None = None,
        **options: Any,
    ) -> Path:
        """Segment & Stage a folder of images or a CSV list, one sub-folder per case + ``summary.csv``."""
        from engine.pipelines.runner import run_batch

        return run_batch(
            self,
            source,
            out_dir,
            model,
            device=device,
            gradcam=gradcam,
            overwrite=overwrite,
            progress=progress,
            cancel=cancel,
            **options,
        )

    def evaluate(
        self,
        dataset: str | Path,
        out_dir: str | Path,
        model: Any = None,
        *,
        device: str = "auto",
        overwrite: bool = False,
        progress: Callable[[int, int], None] | None = None,
        cancel: CancelFn | None = None,
        **options: Any,
    ) -> dict[str, Path]:
        """Run a model on every labelled case of ``dataset``; write metrics.json/.md and plots."""
        raise self._not_built("evaluation")

    def ensemble(self, models: Sequence[Any], out_dir: str | Path, **options: Any) -> "ModelBundle":
        """One bundle combining several trained models of this task (e.g. other folds or seeds)."""
        raise self._not_built("ensembles")

    def ensemble_members(self, bundle: "ModelBundle") -> list[str]:
        """Names of the models an ensemble bundle combines; a task without ensembles has one model per
        bundle, however many weight files it stores."""
        return [bundle.id]

    def model_card(self, bundle: "ModelBundle") -> str:
        """The bundle's model card (Markdown); by default the one written at training time."""
        return bundle.read_model_card() or f"# {bundle.name}\n\nNo model card was written for this model.\n"


def _runnable_names() -> list[str]:
    from engine.tasks.registry import all_tasks

    return [t.name for t in all_tasks() if t.has_pipeline]

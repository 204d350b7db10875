"""One Slicer logic for every task: Segment & Stage, training and the model list, without Qt.

A module names its task (``TaskLogic("esophagus")``); labels, stage names, modality and the engine's
options come from that task's declaration in :mod:`engine.tasks`, so a new task needs no logic of
its own. The engine always runs in a separate process (``python -m engine run|train --task NAME
... --progress json``), so the GUI only polls; ``wait=True`` polls in a loop for scripts and tests.
Everything is checked before anything runs, and nothing is added to the scene until a run has
succeeded: bad input and Cancel leave the scene untouched.

Listing models and reading model cards use :mod:`engine.registry` only, never the task's network
code, so the panel opens without importing PyTorch or MONAI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from engine.tasks import DEVICE_CHOICES, TASKS_ENV, TTA_MODES, Task, get_task, register_task
from engine.tasks.registry import UnknownTaskError
from OncoStagingCommon import results
from OncoStagingCommon.process import (
    EngineJob,
    JobState,
    Launcher,
    RunningProcess,
    default_python,
    subprocess_launcher,
)

log = logging.getLogger(__name__)

#: What the engine's ``run`` progress steps are called in the status line; unknown steps are spelled out.
STEP_TEXT = {"preprocess": "Preprocessing", "segmentation": "Segmenting",
             "segmentation_lowres": "Segmenting (low resolution)",
             "preprocess_fullres": "Preprocessing the region found",
             "segmentation_fullres": "Segmenting (full resolution)", "postprocess": "Cleaning up the segmentation",
             "krt": "Cropping the tumour region", "classification": "Staging", "gradcam": "Computing Grad-CAM",
             "restore": "Restoring the original geometry"}
#: ``engine train`` option that starts from another model's segmentation, and the per-phase epoch
#: options that make it fine-tune (not keep) that segmentation; used when the task's CLI offers them.
FINE_TUNE_OPTION = "--segmentation-from"
FINE_TUNE_EPOCH_OPTIONS = ("--lowres-epochs", "--fullres-epochs")
POLL_INTERVAL_S = 0.1
#: Run by the engine's Python: what PyTorch finds, as one JSON line; PyTorch stays out of Slicer's process.
DEVICE_PROBE = """import json
try:
    import torch
except ImportError:
    print(json.dumps(None))
else:
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else ""
    print(json.dumps({"cuda": cuda, "gpu": gpu, "torch": torch.__version__}))
"""


class TaskInputError(ValueError):
    """The chosen volume, model or option cannot be used; the message says what to choose instead."""


@dataclass
class RunOptions:
    """What Segment & Stage runs with: a bundle folder/zip or installed model id (None: newest)."""

    model: str | None = None
    device: str = "auto"
    gradcam: bool = True
    gradcam_opacity: float = results.DEFAULT_GRADCAM_OPACITY
    show_3d: bool = True
    #: Test-time mirroring (``run --tta``), one of :data:`engine.tasks.TTA_MODES`.
    tta: str = "all"
    #: Keep the engine's files (report.json, overview.png, ...) here; None: a temporary folder, removed.
    output_dir: str | Path | None = None


@dataclass
class RunOutcome:
    """A finished run: the scene nodes and the numbers of ``report.json``."""

    nodes: results.ResultNodes
    report: dict[str, Any]

    @property
    def predicted_stage(self) -> str | None:
        """None for a task without stages."""
        return self.report.get("predicted_stage")

    @property
    def stage_reliable(self) -> bool:
        """False when the engine found the scan or the result outside the model's training data."""
        return self.report.get("stage_reliable") is not False

    @property
    def stage_text(self) -> str:
        """The stage as the panel shows it: marked when it should not be believed."""
        if self.predicted_stage is None:
            return "–"
        return self.predicted_stage if self.stage_reliable else f"{self.predicted_stage} (unreliable)"

    @property
    def stage_probabilities(self) -> dict[str, float]:
        return dict(self.report.get("stage_probabilities") or {})

    @property
    def slice_probabilities(self) -> list[float]:
        """One tumour probability per input slice (K order); empty for a task that reports none."""
        return [float(p) for p in self.report.get("slice_probabilities") or []]

    @property
    def volumes_cm3(self) -> dict[str, float]:
        return self.report["volumes_cm3"]

    @property
    def warnings(self) -> list[str]:
        return list(self.report.get("warnings", []))


@dataclass
class ModelCard:
    """What the model selector shows about a bundle."""

    id: str
    name: str
    version: str
    path: Path
    training_data: str
    intended_use: str
    is_demo: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    #: how many models an ensemble bundle averages (``engine ensemble``); 1 for a single model
    ensemble_members: int = 1

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}" + (" (demo, not for clinical use)" if self.is_demo else "")


@dataclass
class DeviceInfo:
    cuda_available: bool
    description: str

    @classmethod
    def from_probe(cls, lines: list[str]) -> DeviceInfo:
        """What :data:`DEVICE_PROBE` printed, in words for the device selector."""
        try:
            found = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return cls(False, "Could not ask PyTorch for devices: " + (" ".join(lines[-3:]) or "no answer"))
        if found is None:
            return cls(False, "PyTorch is not installed")
        if found["cuda"]:
            return cls(True, f"GPU: {found['gpu']}")
        return cls(False, f"CPU only (PyTorch {found['torch']}, no CUDA GPU found)")


@dataclass
class Progress:
    """One progress update for the GUI: 0..1 and a line of text."""

    fraction: float
    message: str


@dataclass
class RunJob:
    """A Segment & Stage run in the background; poll it until :attr:`state` is finished."""

    volume: Any
    options: RunOptions
    engine_job: EngineJob
    work_dir: Path
    segments: list[Any]
    on_progress: Callable[[Progress], None] | None = None
    outcome: RunOutcome | None = None
    error: str | None = None

    @property
    def state(self) -> JobState:
        return self.engine_job.state

    @property
    def run_dir(self) -> Path:
        return Path(self.options.output_dir) if self.options.output_dir else self.work_dir / "run"


@dataclass
class TrainingRequest:
    """What the training panel submits; ``extra_args`` pass any other ``engine train`` option."""

    dataset: str | Path
    model_name: str
    epochs: int = 50
    device: str = "auto"
    out_dir: str | Path | None = None  # default: <user model dir>/<model id>
    resume: bool = False  # continue a stopped run into the same model folder from its last complete epochs
    #: Fine-tune this model (folder or zip) on the dataset instead of training from scratch (tasks whose
    #: ``engine train`` offers ``--segmentation-from``).
    start_from: str | Path | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        slug = re.sub(r"[^a-z0-9._-]+", "-", self.model_name.strip().lower()).strip("-._")
        if not slug:
            raise TaskInputError("Give the new model a name (letters, digits, '-', '_' or '.').")
        return slug[:100]


@dataclass
class TrainingJob:
    """Validation, then training, each in the background; poll until finished."""

    request: TrainingRequest
    out_dir: Path
    train_args: list[str]
    on_event: Callable[[dict[str, Any]], None] | None = None
    phase: str = "validate"
    job: EngineJob | None = None
    error: str | None = None
    last_epoch: dict[str, Any] | None = None

    @property
    def state(self) -> JobState:
        if self.job is None:
            return JobState.NOT_STARTED
        if self.phase == "validate" and self.job.state is JobState.SUCCEEDED:
            return JobState.RUNNING  # training is about to start
        return self.job.state


# ---------------------------------------------------------------------------------------- engine arguments

def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TaskInputError(f"{what} must be one of {', '.join(choices)}, not '{value}'.")


def train_options_of(task: Task) -> set[str]:
    """The option strings ``engine train --task NAME`` adds for ``task`` (read from its declaration)."""
    parser = argparse.ArgumentParser(add_help=False)
    task.add_arguments("train", parser)
    # argparse has no public list of its options; _actions is stable across Python versions
    return {option for action in parser._actions for option in action.option_strings}


def can_fine_tune(task: Task) -> bool:
    return FINE_TUNE_OPTION in train_options_of(task)


def engine_train_args(task: Task, request: TrainingRequest, out_dir: Path) -> list[str]:
    """The ``python -m engine`` arguments the training panel runs; the README shows the same call."""
    check_choice("Device", request.device, DEVICE_CHOICES)
    if int(request.epochs) < 1:
        raise TaskInputError("Train for at least one epoch.")
    epochs = str(int(request.epochs))
    fine_tune: list[str] = []
    if request.start_from:
        from engine.registry import MANIFEST_NAME

        offered = train_options_of(task)
        if FINE_TUNE_OPTION not in offered:
            raise TaskInputError(f"Task '{task.name}' cannot fine-tune a model; untick 'Fine-tune the selected "
                                 "model'.")
        start = Path(request.start_from).expanduser()
        if not (start / MANIFEST_NAME).is_file() and not (start.is_file() and start.suffix == ".zip"):
            raise TaskInputError(f"'{start}' is not a model to fine-tune (no {MANIFEST_NAME}); choose an "
                                 "installed model, or untick 'Fine-tune the selected model'.")
        # --epochs alone would keep a reused segmentation as it is: name its phases' epochs to train them
        fine_tune = [FINE_TUNE_OPTION, str(start)]
        for option in FINE_TUNE_EPOCH_OPTIONS:
            if option in offered:
                fine_tune += [option, epochs]
    return ["train", "--task", task.name, "--data", str(Path(request.dataset).expanduser()), "--out", str(out_dir),
            "--epochs", epochs, "--device", request.device, "--model-id", request.model_id,
            "--progress", "json", *fine_tune, *(["--resume"] if request.resume else []), *request.extra_args]


def engine_run_args(task: Task, source: Path, run_dir: Path, model_path: Path, options: RunOptions) -> list[str]:
    """The ``python -m engine run`` arguments of one Segment & Stage."""
    return ["run", "--task", task.name, "--input", str(source), "--out", str(run_dir), "--model", str(model_path),
            "--device", options.device, "--tta", options.tta, "--progress", "json",
            *([] if options.gradcam else ["--no-gradcam"])]


def interrupted_training(out_dir: str | Path) -> bool:
    """Whether a stopped training into ``out_dir`` left checkpoints that ``resume`` can continue."""
    from engine.pipelines.training_run import work_dir

    return not Path(out_dir).exists() and work_dir(out_dir).is_dir()


def task_search_path(source: str) -> str | None:
    """The folder a child Python needs on its path to import ``module:ATTR`` (None if not importable)."""
    top = source.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
    return str(Path(spec.origin).resolve().parent) if spec.origin else None


def _load_task(task_name: str, task_source: str | None) -> Task:
    try:
        return get_task(task_name)
    except UnknownTaskError:
        if task_source is None:
            raise
    module_name, _, attribute = task_source.partition(":")
    return register_task(getattr(importlib.import_module(module_name), attribute))


# ---------------------------------------------------------------------------------------- the logic

class TaskLogic(ScriptedLoadableModuleLogic):
    """Segment & Stage and training for the task ``task_name``; usable from the Python console.

    ``launcher`` starts engine commands (default: a real child process); ``python`` is the
    interpreter that runs them (default: Slicer's PythonSlicer, else this Python). ``module_name``
    owns the result nodes and the parameter node (default: the task's Slicer module). A task that
    is neither built in nor an installed plug-in is passed to the engine process as ``task_source``
    (``"module:ATTR"``, through ``$ONCOSTAGING_TASKS`` and ``PYTHONPATH``).
    """

    def __init__(self, task_name: str, scene: Any = None, launcher: Launcher | None = None,
                 python: str | None = None, module_name: str | None = None, task_source: str | None = None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.task = _load_task(task_name, task_source)
        self.task_source = task_source
        self.module_name = module_name or self.task.slicer_module or self.task.name
        self.moduleName = self.module_name  # the parameter node's name; not the class name "Task"
        self._scene = scene
        self.launcher: Launcher = launcher or subprocess_launcher
        self.python = python or default_python()

    @property
    def scene(self) -> Any:
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def has_stages(self) -> bool:
        return bool(self.task.stage_names)

    @property
    def action_name(self) -> str:
        """What the run is called in the panel and in messages: "Segment & Stage", or "Segment" for a
        task without stages."""
        return "Segment & Stage" if self.has_stages else "Segment"

    @property
    def can_fine_tune(self) -> bool:
        return can_fine_tune(self.task)

    def child_env(self) -> dict[str, str] | None:
        """The engine process's environment: this one, plus ``task_source`` where the child finds it."""
        if self.task_source is None:
            return None
        env = dict(os.environ)
        sources = [s.strip() for s in env.get(TASKS_ENV, "").split(",") if s.strip()]
        env[TASKS_ENV] = ",".join(sources + ([self.task_source] if self.task_source not in sources else []))
        folder = task_search_path(self.task_source)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if folder and folder not in paths:
            env["PYTHONPATH"] = os.pathsep.join([folder, *paths])
        return env

    def _engine_job(self, args: list[str], on_event: Callable[[dict[str, Any]], None] | None = None) -> EngineJob:
        return EngineJob(args, launcher=self.launcher, python=self.python, env=self.child_env(), on_event=on_event)

    # ------------------------------------------------------------------ models and devices

    def model_cards(self) -> list[ModelCard]:
        """The demo model and every valid bundle of this task in the user model directory."""
        from engine import registry

        cards = []
        for info in registry.list_bundles(task=self.task.name):
            if info.valid and info.bundle is not None:
                cards.append(self._card(info.bundle))
            else:
                log.warning("Model %s is not usable: %s", info.path, info.error)
        return cards

    def model_card_text(self, model: str | Path) -> str:
        """The Markdown model card of a bundle folder (what was trained on what, and how well)."""
        return self.task.model_card(self.resolve_model(str(model)))

    def import_model(self, zip_path: str | Path) -> ModelCard:
        """Install a bundle .zip into the user model directory (checked: task, checksums)."""
        from engine import registry
        from engine.errors import EngineError

        try:
            bundle = registry.import_bundle(zip_path)
        except EngineError as exc:
            raise TaskInputError(str(exc)) from exc
        if bundle.task != self.task.name:
            shutil.rmtree(bundle.path, ignore_errors=True)
            raise TaskInputError(f"'{Path(zip_path).name}' is a model for task '{bundle.task}', not "
                                 f"'{self.task.name}'; it was not installed.")
        return self._card(bundle)

    def _card(self, bundle: Any) -> ModelCard:
        data = (bundle.training or {}).get("data") or {}
        name, cases = data.get("dataset") or "not stated", data.get("cases")
        return ModelCard(id=bundle.id, name=bundle.name, version=bundle.version, path=Path(bundle.path),
                         training_data=f"{name}" + (f" ({cases} cases)" if cases else ""),
                         intended_use=bundle.intended_use, is_demo=bundle.is_demo,
                         metrics=dict(bundle.metrics or {}),
                         ensemble_members=len(self.task.ensemble_members(bundle)))

    def start_device_probe(self) -> RunningProcess:
        """Ask the engine's Python which devices PyTorch can use; poll the process, then
        :meth:`DeviceInfo.from_probe` its output. Importing PyTorch takes seconds: not in Slicer's process."""
        return self.launcher([self.python, "-c", DEVICE_PROBE], self.child_env() or dict(os.environ))

    def detect_devices(self, timeout_s: float = 120.0) -> DeviceInfo:
        """Whether a CUDA GPU is usable, in words (blocks until the probe answers)."""
        probe, lines = self.start_device_probe(), []
        deadline = time.monotonic() + timeout_s
        while probe.poll() is None and time.monotonic() < deadline:
            lines += probe.read_lines()
            time.sleep(POLL_INTERVAL_S)
        probe.kill_tree()
        return DeviceInfo.from_probe(lines + probe.read_lines())

    # ------------------------------------------------------------------ checks

    def check_volume(self, volume: Any) -> None:
        modality = self.task.modality
        if volume is None:
            raise TaskInputError(f"Choose an input {modality} volume first.")
        name = volume.GetName()
        if volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise TaskInputError(f"'{name}' is a label map; choose the {modality} volume itself.")
        if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
            raise TaskInputError(f"'{name}' is not a scalar volume; choose a {modality} volume.")
        image = volume.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise TaskInputError(f"'{name}' holds no image data.")
        if image.GetNumberOfScalarComponents() != 1:
            raise TaskInputError(f"'{name}' has {image.GetNumberOfScalarComponents()} components "
                                 f"(colour/vector image); choose a {modality} volume.")
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise TaskInputError(f"'{name}' is 2D ({dims[0]}×{dims[1]}×{dims[2]} voxels); "
                                 f"{self.action_name} needs a 3D {modality} volume.")

    def resolve_model(self, model: str | None) -> Any:
        """The bundle a run will use, checked for this task (checksums: in the run itself)."""
        from engine import registry
        from engine.errors import EngineError

        try:
            if model is not None and Path(model).expanduser().exists():
                bundle = registry.load_bundle(Path(model).expanduser(), verify=False)
            else:
                bundle = registry.find_bundle(self.task.name, model, verify=False)
        except EngineError as exc:
            raise TaskInputError(str(exc)) from exc
        if bundle.task != self.task.name:
            raise TaskInputError(f"Model '{bundle.id}' is for task '{bundle.task}', not '{self.task.name}'; "
                                 f"choose a {self.module_name} model.")
        return bundle

    def segments_for(self, bundle: Any) -> list[Any]:
        """The segments of a run: the model's label values, the task's colours and terminology."""
        from engine.pipelines.outputs import segments_from_labels

        labels = {lab.name: lab.value for lab in bundle.labels} if bundle.labels else self.task.label_map
        return segments_from_labels(self.task.styled_labels(labels))

    # ------------------------------------------------------------------ Segment & Stage

    def start(self, volume: Any, options: RunOptions | None = None,
              on_progress: Callable[[Progress], None] | None = None) -> RunJob:
        """Check everything, write the volume to a temporary file and start the engine; returns at once."""
        options = options or RunOptions()
        self.check_volume(volume)
        check_choice("Device", options.device, DEVICE_CHOICES)
        check_choice("Test-time augmentation", options.tta, TTA_MODES)
        bundle = self.resolve_model(options.model)
        segments = self.segments_for(bundle)
        work_dir = Path(tempfile.mkdtemp(prefix="oncostaging-"))
        try:
            source = work_dir / "input.nrrd"
            results.write_volume_file(volume, source)
            run_dir = Path(options.output_dir) if options.output_dir else work_dir / "run"
            job = RunJob(volume, options, self._engine_job(engine_run_args(self.task, source, run_dir,
                                                                           Path(bundle.path), options)),
                         work_dir, segments, on_progress)
            job.engine_job.on_event = lambda event: _report_step(job, event)
            job.engine_job.start()
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        return job

    def poll(self, job: RunJob) -> JobState:
        """Advance a job: read progress; when the engine has finished, import the results."""
        if job.state is not JobState.RUNNING:
            return job.state
        job.engine_job.poll()
        if job.state is JobState.SUCCEEDED and job.outcome is None:
            try:
                nodes = results.import_run_results(self.scene, job.volume, job.run_dir, self.module_name,
                                                   job.segments, job.options.gradcam_opacity, job.options.show_3d,
                                                   with_stages=self.has_stages)
                job.outcome = RunOutcome(nodes, nodes.report)
                if job.on_progress:
                    stage = job.outcome.predicted_stage
                    job.on_progress(Progress(1.0, f"Done: predicted {stage}" if stage else "Done"))
            except Exception as exc:
                job.engine_job.state = JobState.FAILED
                job.error = f"The results could not be loaded: {exc}"
                log.exception("Importing results failed")
            finally:
                shutil.rmtree(job.work_dir, ignore_errors=True)
        elif job.state is JobState.FAILED:
            job.error = job.engine_job.error_message()
            shutil.rmtree(job.work_dir, ignore_errors=True)
        return job.state

    def cancel(self, job: RunJob) -> None:
        """Stop the engine process tree; nothing of this run reaches the scene."""
        job.engine_job.cancel()
        shutil.rmtree(job.work_dir, ignore_errors=True)

    def process(self, volume: Any, options: RunOptions | None = None, wait: bool = True,
                on_progress: Callable[[Progress], None] | None = None,
                poll_interval_s: float = POLL_INTERVAL_S) -> RunOutcome | RunJob:
        """Segment & Stage ``volume``. ``wait=True`` (scripts, tests) blocks and returns the outcome or
        raises; ``wait=False`` returns the running job for the caller to :meth:`poll`."""
        job = self.start(volume, options, on_progress)
        if not wait:
            return job
        while self.poll(job) is JobState.RUNNING:
            time.sleep(poll_interval_s)
        if job.state is not JobState.SUCCEEDED or job.outcome is None:
            raise RuntimeError(f"{self.action_name} failed: {job.error or job.state.value}")
        return job.outcome

    def results_for(self, volume: Any) -> RunOutcome | None:
        nodes = results.find_results(self.scene, volume, self.module_name)
        return RunOutcome(nodes, nodes.report) if nodes is not None else None

    def export_segmentation(self, volume: Any, path: str | Path) -> Path:
        outcome = self.results_for(volume)
        if outcome is None:
            raise TaskInputError(f"There are no {self.module_name} results for '{volume.GetName()}' to export.")
        return results.export_segmentation(outcome.nodes.segmentation, path)

    # ------------------------------------------------------------------ training

    def start_training(self, request: TrainingRequest,
                       on_event: Callable[[dict[str, Any]], None] | None = None) -> TrainingJob:
        """Validate the dataset (``engine validate``), then train (``engine train``), in the background."""
        from engine.registry import user_model_dir

        dataset = Path(request.dataset).expanduser()
        if not (dataset / "dataset.json").is_file():
            raise TaskInputError(f"'{dataset}' is not a dataset folder (no dataset.json); choose the folder "
                                 "holding dataset.json, imagesTr/ and labelsTr/.")
        out_dir = Path(request.out_dir) if request.out_dir else user_model_dir() / request.model_id
        if out_dir.exists():
            raise TaskInputError(f"A model folder '{out_dir}' already exists; choose another model name.")
        if request.resume and not interrupted_training(out_dir):
            raise TaskInputError(f"There is no stopped training of '{request.model_id}' to resume; untick "
                                 "'Resume' to start a new one, or give the name of the stopped run.")
        job = TrainingJob(request, out_dir, engine_train_args(self.task, request, out_dir), on_event)
        validate = ["validate", str(dataset), "--task", self.task.name,
                    *(["--require-stages"] if self.has_stages else [])]
        job.job = self._engine_job(validate).start()
        return job

    def poll_training(self, job: TrainingJob) -> JobState:
        if job.job is None or job.job.state is not JobState.RUNNING:
            return job.state
        job.job.poll()
        if job.phase == "validate":
            if job.job.state is JobState.FAILED:
                job.error = "The dataset is not ready for training:\n" + job.job.output
            elif job.job.state is JobState.SUCCEEDED:
                job.phase = "train"
                job.job = self._engine_job(job.train_args, on_event=lambda e: _training_event(job, e)).start()
        elif job.job.state is JobState.FAILED:
            job.error = job.job.error_message()
        return job.state

    def stop_training(self, job: TrainingJob) -> None:
        if job.job is not None:
            job.job.cancel()

    def train(self, request: TrainingRequest, wait: bool = True,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> Path | TrainingJob:
        """What the training panel does; ``wait=True`` blocks and returns the new bundle folder."""
        job = self.start_training(request, on_event)
        if not wait:
            return job
        while self.poll_training(job) is JobState.RUNNING:
            time.sleep(2 * POLL_INTERVAL_S)
        if job.state is not JobState.SUCCEEDED:
            raise RuntimeError(f"Training failed: {job.error or job.state.value}")
        return job.out_dir


# ---------------------------------------------------------------------------------------- progress

def describe_step(event: dict[str, Any]) -> Progress:
    """An ``engine run`` step event as a fraction and a line of text."""
    name = str(event.get("name", ""))
    return Progress(float(event.get("fraction", 0.0)), STEP_TEXT.get(name, name.replace("_", " ")))


def _report_step(job: RunJob, event: dict[str, Any]) -> None:
    if job.on_progress is not None and event.get("kind") == "step":
        job.on_progress(describe_step(event))


def _training_event(job: TrainingJob, event: dict[str, Any]) -> None:
    if event.get("kind") in ("epoch", "validation"):
        job.last_epoch = event
    if job.on_event is not None:
        job.on_event(event)


def describe_training_event(event: dict[str, Any]) -> Progress:
    """An ``engine train`` progress event as a fraction and one line (epoch, loss, metrics)."""
    epoch, total = int(event.get("epoch") or 0), int(event.get("total_epochs") or 0)
    phase = str(event.get("message") or "").split(":", 1)[0]
    step, steps = int(event.get("step") or 0), event.get("total_steps")
    fraction = 0.0
    if total:
        within = (step / steps) if steps else 0.0
        fraction = min(1.0, (max(epoch - 1, 0) + within) / total) if event.get("kind") == "step" else epoch / total
    parts = [f"{phase} epoch {epoch}/{total}".strip()]
    if event.get("loss") is not None:
        parts.append(f"loss {float(event['loss']):.4f}")
    for key, value in (event.get("metrics") or {}).items():
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.3f}")
    if event.get("kind") == "end":
        parts.append(str(event.get("status") or "finished"))
    return Progress(fraction, ", ".join(parts))

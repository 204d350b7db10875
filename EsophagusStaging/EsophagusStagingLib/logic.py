"""EsophagusStaging logic: Segment & Stage and training, without Qt.

The engine always runs in a separate process (``python -m engine run|train ... --progress json``),
so the GUI only polls; :meth:`EsophagusStagingLogic.process` with ``wait=True`` polls in a loop
for scripts and tests. Results enter the scene through the shared glue in
:mod:`OncoStagingCommon.results`. Everything is checked before anything runs, and nothing is
added to the scene until a run has succeeded: bad input and Cancel leave the scene untouched.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from OncoStagingCommon import results
from OncoStagingCommon.process import EngineJob, JobState, Launcher, default_python, subprocess_launcher

log = logging.getLogger(__name__)

TASK = "esophagus"
MODULE_NAME = "EsophagusStaging"
STAGES = ("T1", "T2", "T3", "T4")
DEVICES = ("auto", "cpu", "cuda")
TTA_CHOICES = ("all", "stage", "none")  # engine run --tta


class StagingInputError(ValueError):
    """The chosen volume or model cannot be used; the message says what to choose instead."""


@dataclass
class StagingOptions:
    """What Segment & Stage runs with: a bundle folder/zip or installed model id (None: newest)."""

    model: str | None = None
    device: str = "auto"
    gradcam: bool = True
    gradcam_opacity: float = results.DEFAULT_GRADCAM_OPACITY
    show_3d: bool = True
    #: Test-time mirroring (``run --tta``): "all" (segmentation and stage), "stage" (fast) or "none".
    tta: str = "all"
    #: Keep the engine's files (report.json, overview.png, ...) here; None: a temporary folder, removed.
    output_dir: str | Path | None = None


@dataclass
class StagingOutcome:
    """A finished run: the scene nodes and the numbers of ``report.json``."""

    nodes: results.ResultNodes
    report: dict[str, Any]

    @property
    def predicted_stage(self) -> str:
        return self.report["predicted_stage"]

    @property
    def stage_probabilities(self) -> dict[str, float]:
        return self.report["stage_probabilities"]

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
    #: how many classifiers the staging averages (an ``engine ensemble`` bundle has several)
    stage_classifiers: int = 1

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}" + (" (demo, not for clinical use)" if self.is_demo else "")


@dataclass
class DeviceInfo:
    cuda_available: bool
    description: str


@dataclass
class Progress:
    """One progress update for the GUI: 0..1 and a line of text."""

    fraction: float
    message: str


@dataclass
class StagingJob:
    """A Segment & Stage run in the background; poll it until :attr:`state` is finished."""

    volume: Any
    options: StagingOptions
    engine_job: EngineJob
    work_dir: Path
    segments: list[Any]
    on_progress: Callable[[Progress], None] | None = None
    outcome: StagingOutcome | None = None
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
    #: Fine-tune this model (folder or zip) on the dataset instead of training from scratch: its plan
    #: and segmentation networks are the start, every phase trains ``epochs`` more, the classifier anew.
    start_from: str | Path | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        slug = re.sub(r"[^a-z0-9._-]+", "-", self.model_name.strip().lower()).strip("-._")
        if not slug:
            raise StagingInputError("Give the new model a name (letters, digits, '-', '_' or '.').")
        return slug[:100]


@dataclass
class TrainingJob:
    """Validation, then training, each in the background; poll until finished."""

    request: TrainingRequest
    out_dir: Path
    launcher: Launcher
    python: str
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


def engine_train_args(request: TrainingRequest, out_dir: Path) -> list[str]:
    """The ``python -m engine`` arguments the training panel runs; the README shows the same call."""
    if request.device not in DEVICES:
        raise StagingInputError(f"Device must be one of {', '.join(DEVICES)}, not '{request.device}'.")
    if int(request.epochs) < 1:
        raise StagingInputError("Train for at least one epoch.")
    epochs = str(int(request.epochs))
    fine_tune: list[str] = []
    if request.start_from:
        from engine.registry import MANIFEST_NAME

        start = Path(request.start_from).expanduser()
        if not (start / MANIFEST_NAME).is_file() and not (start.is_file() and start.suffix == ".zip"):
            raise StagingInputError(f"'{start}' is not a model to fine-tune (no {MANIFEST_NAME}); choose an "
                                    "installed model, or untick 'Fine-tune the selected model'.")
        # --epochs alone would keep a reused segmentation as it is: name both phases to train them on
        fine_tune = ["--segmentation-from", str(start), "--lowres-epochs", epochs, "--fullres-epochs", epochs]
    return ["train", "--task", TASK, "--data", str(Path(request.dataset).expanduser()), "--out", str(out_dir),
            "--epochs", epochs, "--device", request.device, "--model-id", request.model_id,
            "--progress", "json", *fine_tune, *(["--resume"] if request.resume else []), *request.extra_args]


def interrupted_training(out_dir: str | Path) -> bool:
    """Whether a stopped training into ``out_dir`` left checkpoints that ``resume`` can continue."""
    from engine.pipelines.esophagus import work_dir

    return not Path(out_dir).exists() and work_dir(out_dir).is_dir()


class EsophagusStagingLogic(ScriptedLoadableModuleLogic):
    """Segment & Stage and training for the EsophagusStaging module; usable from the Python console.

    ``launcher`` starts engine commands (default: a real child process); ``python`` is the
    interpreter that runs them (default: Slicer's PythonSlicer, else this Python).
    """

    def __init__(self, scene: Any = None, launcher: Launcher | None = None, python: str | None = None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self.launcher: Launcher = launcher or subprocess_launcher
        self.python = python or default_python()

    @property
    def scene(self) -> Any:
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ------------------------------------------------------------------ models and devices

    @staticmethod
    def model_cards() -> list[ModelCard]:
        """The demo model and every valid EsophagusStaging bundle in the user model directory."""
        from engine import registry

        cards = []
        for info in registry.list_bundles(task=TASK):
            if info.valid and info.bundle is not None:
                cards.append(_card(info.bundle))
            else:
                log.warning("Model %s is not usable: %s", info.path, info.error)
        return cards

    @staticmethod
    def import_model(zip_path: str | Path) -> ModelCard:
        """Install a bundle .zip into the user model directory (checked: task, checksums)."""
        from engine import registry
        from engine.errors import EngineError

        try:
            bundle = registry.import_bundle(zip_path)
        except EngineError as exc:
            raise StagingInputError(str(exc)) from exc
        if bundle.task != TASK:
            shutil.rmtree(bundle.path, ignore_errors=True)
            raise StagingInputError(f"'{Path(zip_path).name}' is a model for task '{bundle.task}', not the "
                                    "esophagus; it was not installed.")
        return _card(bundle)

    @staticmethod
    def detect_devices() -> DeviceInfo:
        """Whether a CUDA GPU is usable, in words for the device selector."""
        try:
            import torch
        except ImportError:
            return DeviceInfo(False, "PyTorch is not installed")
        if torch.cuda.is_available():
            return DeviceInfo(True, f"GPU: {torch.cuda.get_device_name(0)}")
        return DeviceInfo(False, f"CPU only (PyTorch {torch.__version__}, no CUDA GPU found)")

    # ------------------------------------------------------------------ checks

    @staticmethod
    def check_volume(volume: Any) -> None:
        if volume is None:
            raise StagingInputError("Choose an input CT volume first.")
        if volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise StagingInputError(f"'{volume.GetName()}' is a label map; choose the CT volume itself.")
        if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
            raise StagingInputError(f"'{volume.GetName()}' is not a scalar volume; choose a CT volume.")
        image = volume.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise StagingInputError(f"'{volume.GetName()}' holds no image data.")
        if image.GetNumberOfScalarComponents() != 1:
            raise StagingInputError(f"'{volume.GetName()}' has {image.GetNumberOfScalarComponents()} components "
                                    "(colour/vector image); choose a CT volume.")
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise StagingInputError(f"'{volume.GetName()}' is 2D ({dims[0]}×{dims[1]}×{dims[2]} voxels); "
                                    "Segment & Stage needs a 3D CT volume.")

    @staticmethod
    def resolve_model(model: str | None) -> Any:
        """The bundle a run will use, checked for the esophagus task (checksums: in the run itself)."""
        from engine import registry
        from engine.errors import EngineError

        try:
            if model is not None and Path(model).expanduser().exists():
                bundle = registry.load_bundle(Path(model).expanduser(), verify=False)
            else:
                bundle = registry.find_bundle(TASK, model, verify=False)
        except EngineError as exc:
            raise StagingInputError(str(exc)) from exc
        if bundle.task != TASK:
            raise StagingInputError(f"Model '{bundle.id}' is for task '{bundle.task}', not the esophagus; choose "
                                    "an EsophagusStaging model.")
        return bundle

    # ------------------------------------------------------------------ Segment & Stage

    def start(self, volume: Any, options: StagingOptions | None = None,
              on_progress: Callable[[Progress], None] | None = None) -> StagingJob:
        """Check everything, write the volume to a temporary file and start the engine; returns at once."""
        from engine.pipelines.outputs import segments_from_labels

        options = options or StagingOptions()
        self.check_volume(volume)
        if options.device not in DEVICES:
            raise StagingInputError(f"Device must be one of {', '.join(DEVICES)}, not '{options.device}'.")
        if options.tta not in TTA_CHOICES:
            raise StagingInputError(f"Test-time augmentation must be one of {', '.join(TTA_CHOICES)}, "
                                    f"not '{options.tta}'.")
        bundle = self.resolve_model(options.model)
        work_dir = Path(tempfile.mkdtemp(prefix="oncostaging-"))
        try:
            source = work_dir / "input.nrrd"
            results.write_volume_file(volume, source)
            run_dir = Path(options.output_dir) if options.output_dir else work_dir / "run"
            args = ["run", "--task", TASK, "--input", str(source), "--out", str(run_dir),
                    "--model", str(bundle.path), "--device", options.device, "--tta", options.tta,
                    "--progress", "json"]
            if not options.gradcam:
                args.append("--no-gradcam")
            job = StagingJob(volume, options, EngineJob(args, launcher=self.launcher, python=self.python),
                             work_dir, segments_from_labels(bundle.labels), on_progress)
            job.engine_job.on_event = lambda event: _report_step(job, event)
            job.engine_job.start()
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        return job

    def poll(self, job: StagingJob) -> JobState:
        """Advance a job: read progress; when the engine has finished, import the results."""
        if job.state is not JobState.RUNNING:
            return job.state
        job.engine_job.poll()
        if job.state is JobState.SUCCEEDED and job.outcome is None:
            try:
                nodes = results.import_run_results(self.scene, job.volume, job.run_dir, MODULE_NAME, job.segments,
                                                   job.options.gradcam_opacity, job.options.show_3d)
                job.outcome = StagingOutcome(nodes, nodes.report)
                if job.on_progress:
                    job.on_progress(Progress(1.0, f"Done: predicted {job.outcome.predicted_stage}"))
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

    def cancel(self, job: StagingJob) -> None:
        """Stop the engine process tree; nothing of this run reaches the scene."""
        job.engine_job.cancel()
        shutil.rmtree(job.work_dir, ignore_errors=True)

    def process(self, volume: Any, options: StagingOptions | None = None, wait: bool = True,
                on_progress: Callable[[Progress], None] | None = None,
                poll_interval_s: float = 0.1) -> StagingOutcome | StagingJob:
        """Segment & Stage ``volume``. ``wait=True`` (scripts, tests) blocks and returns the outcome or
        raises; ``wait=False`` returns the running job for the caller to :meth:`poll`."""
        import time

        job = self.start(volume, options, on_progress)
        if not wait:
            return job
        while self.poll(job) is JobState.RUNNING:
            time.sleep(poll_interval_s)
        if job.state is not JobState.SUCCEEDED or job.outcome is None:
            raise RuntimeError(f"Segment & Stage failed: {job.error or job.state.value}")
        return job.outcome

    def results_for(self, volume: Any) -> StagingOutcome | None:
        nodes = results.find_results(self.scene, volume, MODULE_NAME)
        return StagingOutcome(nodes, nodes.report) if nodes is not None else None

    def export_segmentation(self, volume: Any, path: str | Path) -> Path:
        outcome = self.results_for(volume)
        if outcome is None:
            raise StagingInputError(f"There are no EsophagusStaging results for '{volume.GetName()}' to export.")
        return results.export_segmentation(outcome.nodes.segmentation, path)

    # ------------------------------------------------------------------ training

    def start_training(self, request: TrainingRequest,
                       on_event: Callable[[dict[str, Any]], None] | None = None) -> TrainingJob:
        """Validate the dataset (``engine validate``), then train (``engine train``), in the background."""
        from engine.registry import user_model_dir

        dataset = Path(request.dataset).expanduser()
        if not (dataset / "dataset.json").is_file():
            raise StagingInputError(f"'{dataset}' is not a dataset folder (no dataset.json); choose the folder "
                                    "holding dataset.json, imagesTr/ and labelsTr/.")
        out_dir = Path(request.out_dir) if request.out_dir else user_model_dir() / request.model_id
        if out_dir.exists():
            raise StagingInputError(f"A model folder '{out_dir}' already exists; choose another model name.")
        if request.resume and not interrupted_training(out_dir):
            raise StagingInputError(f"There is no stopped training of '{request.model_id}' to resume; untick "
                                    "'Resume' to start a new one, or give the name of the stopped run.")
        engine_train_args(request, out_dir)  # checks the options now, not after validation
        job = TrainingJob(request, out_dir, self.launcher, self.python, on_event)
        job.job = EngineJob(["validate", str(dataset), "--require-stages"], launcher=self.launcher,
                            python=self.python).start()
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
                job.job = EngineJob(engine_train_args(job.request, job.out_dir), launcher=self.launcher,
                                    python=job.python, on_event=lambda e: _training_event(job, e)).start()
        elif job.job.state is JobState.FAILED:
            job.error = job.job.error_message()
        return job.state

    def stop_training(self, job: TrainingJob) -> None:
        if job.job is not None:
            job.job.cancel()

    def train(self, request: TrainingRequest, wait: bool = True,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> Path | TrainingJob:
        """What the training panel does; ``wait=True`` blocks and returns the new bundle folder."""
        import time

        job = self.start_training(request, on_event)
        if not wait:
            return job
        while self.poll_training(job) is JobState.RUNNING:
            time.sleep(0.2)
        if job.state is not JobState.SUCCEEDED:
            raise RuntimeError(f"Training failed: {job.error or job.state.value}")
        return job.out_dir


def _card(bundle: Any) -> ModelCard:
    from engine.pipelines.esophagus import classifier_weight_names

    data = (bundle.training or {}).get("data") or {}
    name, cases = data.get("dataset") or "not stated", data.get("cases")
    return ModelCard(id=bundle.id, name=bundle.name, version=bundle.version, path=Path(bundle.path),
                     training_data=f"{name}" + (f" ({cases} cases)" if cases else ""),
                     intended_use=bundle.intended_use, is_demo=bundle.is_demo, metrics=dict(bundle.metrics or {}),
                     stage_classifiers=len(classifier_weight_names(bundle)))


_STEP_TEXT = {"preprocess": "Preprocessing", "segmentation_lowres": "Segmenting (low resolution)",
              "segmentation_fullres": "Segmenting (full resolution)", "postprocess": "Cleaning up the segmentation",
              "krt": "Cropping the tumour region", "classification": "Staging", "gradcam": "Computing Grad-CAM",
              "restore": "Restoring the original geometry"}


def _report_step(job: StagingJob, event: dict[str, Any]) -> None:
    if job.on_progress is None or event.get("kind") != "step":
        return
    name = str(event.get("name", ""))
    job.on_progress(Progress(float(event.get("fraction", 0.0)), _STEP_TEXT.get(name, name.replace("_", " "))))


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

"""A complete task plug-in that lives outside the engine: the worked example of "Adding a task".

``toy`` segments a bright spherical lesion and a darker organ block in small CT-like volumes and
stages the lesion "low" or "high" by its size. It has its own phantom generator, a two-layer network
trained with Adam, a model bundle, Segment & Stage through the engine's task-independent runner
pieces (``engine.pipelines.case.segment_case``: report, atomic outputs, Slicer segmentation, overview
figure; ``engine.explain`` Grad-CAM; volumes) and an evaluation through the engine's evaluation
tables. Nothing in ``engine/`` names it: the tests register it with ``engine.tasks.register_task(TASK)``
or, for a child process, ``ONCOSTAGING_TASKS=toy_task:TASK`` with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.data.dataset import CaseTargets, DatasetDescription
from engine.errors import EngineError, ImageError
from engine.tasks import Label, PlanDefaults, Task, anatomy, check_tta, neoplasm

NAME = "toy"
STAGES = ("low", "high")
LABELS = (
    Label("lesion", 1, (230, 41, 41), neoplasm()),
    Label("organ", 2, (90, 130, 230), anatomy("10200004", "Liver")),
)
SHAPE = (16, 24, 24)
SPACING = (4.0, 2.0, 2.0)
HAS_TARGETS = True


# --- phantoms: the generator protocol (generate, description, HAS_TARGETS) --------------------------


def description() -> DatasetDescription:
    return DatasetDescription(
        name="SyntheticToy",
        channel_names={"0": "CT"},
        labels={"background": 0, **{lab.name: lab.value for lab in LABELS}},
        stages=list(STAGES),
        description="Toy phantoms of the plug-in example task.",
    )


def generate(seed: int, preset: str = "small"):
    """A noisy box of soft tissue and air, an organ block and a lesion sphere whose radius sets the stage."""
    from engine.io.image import Image
    from engine.synth.common import PhantomCase

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:12, 14:22, 3:10] = 2
    stage = STAGES[int(rng.integers(0, 2))]
    radius = 2.0 if stage == "low" else 4.0
    centre = (8 + rng.integers(-2, 3), 8 + rng.integers(-1, 2), 15 + rng.integers(-1, 2))
    lesion = ((z - centre[0]) * 0.5) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    label[lesion] = 1
    ct = np.full(SHAPE, 40.0, dtype=np.float32)
    ct[:, :, :2] = -1000.0  # air beside the body, as a CT has
    ct[label == 2] = -20.0
    ct[label == 1] = 160.0
    ct += rng.normal(0.0, 8.0, SHAPE).astype(np.float32)
    geometry = dict(spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    return PhantomCase(
        Image(ct, modality="CT", **geometry),
        Image(label, **geometry),
        CaseTargets(t_stage=stage),
        {"task": NAME, "seed": int(seed), "stage": stage},
    )


# --- the network ---------------------------------------------------------------------------------


def _network():
    import torch.nn as nn

    class ToyNet(nn.Module):
        """A shared convolution feeds a voxel-wise segmentation head and a pooled stage head."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU())
            self.segment = nn.Conv3d(8, len(LABELS) + 1, 1)
            self.stage = nn.Linear(8, len(STAGES))

        def forward(self, x):
            f = self.features(x)
            return self.segment(f), self.stage(f.mean(dim=(2, 3, 4)))

    return ToyNet()


def _normalise(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, -1000.0, 400.0) / 200.0).astype(np.float32)


class ToyPredictor:
    """Loads a toy bundle once; :meth:`predict` segments and stages one image in its own geometry."""

    def __init__(self, bundle, device: str = "auto") -> None:
        self.bundle = bundle
        self.net = _network()
        self.net.load_state_dict(bundle.load_state_dict("network"))
        self.net.eval()

    def predict(self, image, gradcam: bool = True, progress=None, cancel=None, **options):
        import torch

        from engine.explain.gradcam import grad_cam
        from engine.inference.volumes import structure_volumes_cm3
        from engine.pipelines.case import Prediction, StepTimer

        timer = StepTimer(progress, cancel, ("network", "gradcam"))
        x = torch.from_numpy(_normalise(image.array))[None, None]
        with timer.step("network"), torch.no_grad():
            seg_logits, stage_logits = self.net(x)
        labels = seg_logits[0].argmax(0).numpy().astype(np.uint8)
        probabilities = torch.softmax(stage_logits[0], 0).numpy().astype(np.float64)
        cam = None
        if gradcam:
            with timer.step("gradcam"):
                cam = grad_cam(
                    self.net,
                    self.net.features,
                    (x,),
                    class_index=int(np.argmax(probabilities)),
                    forward=lambda t: self.net(t)[1],
                ).cam
        return Prediction(
            labels=image.with_array(labels),
            gradcam=image.with_array(cam.astype(np.float32)) if cam is not None else None,
            volumes_cm3=structure_volumes_cm3(labels, image.spacing, {lab.value: lab.name for lab in LABELS}),
            stage_probabilities={s: float(p) for s, p in zip(STAGES, probabilities)},
            predicted_stage=STAGES[int(np.argmax(probabilities))],
            timings_s=timer.timings,
        )


def check_ct(image) -> None:
    """The toy model reads HU: a CT holds some air."""
    if float(np.mean(image.array <= -500)) < 0.005:
        raise ImageError("The toy task needs a CT in HU with some air in the field of view.")


class ToyTask(Task):
    """Entry points of the toy task, each built from the engine's task-independent pieces."""

    def add_arguments(self, command, parser):
        if command == "train":
            parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam's learning rate")

    def options_from_args(self, command, args):
        if command != "train":
            return {}
        return {
            "seed": args.seed,
            "steps": args.epochs or 1,
            "model_id": args.model_id,
            "version": args.version,
            "learning_rate": args.learning_rate,
        }

    def train(
        self,
        dataset,
        out_dir,
        *,
        plan=None,
        callbacks=(),
        overwrite=False,
        command=None,
        resume=False,
        **options,
    ):
        import torch

        from engine.data.dataset import RawDataset
        from engine.registry.bundle import DEMO_INTENDED_USE, save_bundle

        torch.manual_seed(int(options.get("seed") or 0))
        ds = RawDataset.load(dataset)
        cases = [(c.load_image(), c.load_label(), c.stage) for c in ds.training]
        if not cases:
            raise EngineError(f"No labelled cases to train on in {dataset}.")
        net = _network()
        optimiser = torch.optim.Adam(net.parameters(), lr=float(options.get("learning_rate") or 1e-2))
        steps = int(options.get("steps") or 1)
        losses = []
        for _ in range(steps):
            for image, label, stage in cases:
                seg, cls = net(torch.from_numpy(_normalise(image.array))[None, None])
                target = torch.from_numpy(label.array.astype(np.int64))[None]
                loss = torch.nn.functional.cross_entropy(seg, target)
                loss = loss + torch.nn.functional.cross_entropy(cls, torch.tensor([STAGES.index(stage)]))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
        return save_bundle(
            out_dir,
            id=options.get("model_id") or "toy-model",
            name="Toy model",
            version=options.get("version") or "1.0.0",
            task=NAME,
            architecture={"name": "ToyNet"},
            plan={"labels": self.label_map},
            labels=list(LABELS),
            stages=list(STAGES),
            modality="CT",
            training={"dataset": str(dataset), "steps": steps, "command": command},
            metrics={"training": {"final_loss": losses[-1], "iterations": len(losses)}},
            intended_use=DEMO_INTENDED_USE,
            weights={"network": net.state_dict()},
            model_card="# Toy model\n\nThe plug-in example task's model; trained on toy phantoms.\n",
            overwrite=overwrite,
        )

    def load_predictor(self, model=None, device="auto"):
        from engine.registry import find_bundle, load_bundle

        if isinstance(model, ToyPredictor):
            return model
        if model is not None and Path(model).exists():
            return ToyPredictor(load_bundle(model, expected_task=NAME), device)
        return ToyPredictor(find_bundle(NAME, model), device)

    def segment(
        self,
        source,
        out_dir,
        model=None,
        *,
        device="auto",
        gradcam=True,
        overwrite=False,
        progress=None,
        cancel=None,
        series_uid=None,
        tta="all",
        **options,
    ):
        from engine.pipelines.case import segment_case

        check_tta(tta)  # the toy model has no mirroring; the generic option is still checked
        return segment_case(
            self,
            source,
            out_dir,
            lambda: self.load_predictor(model, device),
            gradcam=gradcam,
            overwrite=overwrite,
            progress=progress,
            cancel=cancel,
            series_uid=series_uid,
            check_input=check_ct,
        )

    def evaluate(
        self,
        dataset,
        out_dir,
        model=None,
        *,
        device="auto",
        overwrite=False,
        progress=None,
        cancel=None,
        tta="all",
        **options,
    ):
        from engine.data.dataset import RawDataset
        from engine.evaluation import evaluate_case, summarize, write_report

        predictor = self.load_predictor(model, device)
        ds = RawDataset.load(dataset)
        evaluations = []
        for i, case in enumerate(ds.training):
            image = case.load_image()
            result = predictor.predict(image, gradcam=False, cancel=cancel)
            evaluations.append(
                evaluate_case(
                    case.case_id,
                    result.labels.array,
                    case.load_label().array,
                    image.spacing,
                    {lab.name: lab.value for lab in LABELS},
                    stage_true=case.stage,
                    stage_probabilities=result.stage_probabilities,
                )
            )
            if progress is not None:
                progress(i + 1, len(ds.training))
        report = summarize(
            evaluations, list(STAGES), {"task": NAME, "model": predictor.bundle.id, "cases": len(evaluations)}
        )
        return write_report(report, out_dir, overwrite=overwrite)


TASK = ToyTask(
    name=NAME,
    title="Toy lesion segmentation and staging (plug-in example)",
    modality="CT",
    labels=LABELS,
    stage_names=STAGES,
    tumour_label="lesion",
    plan_defaults=PlanDefaults(dims=3),
    phantom=__name__,
    summary="the plug-in example of the test suite",
)


def make_trained_toy(root: Path) -> dict[str, Path]:
    """Two toy phantoms and a toy model trained on them for one epoch through the CLI, under ``root``;
    the task must be registered. Shared by the tests that need a real run of a plug-in task."""
    from engine.cli import main

    assert main(["synth", "--task", NAME, "--cases", "2", "--seed", "3", "--out", str(root / "data")]) == 0
    assert main(["train", "--task", NAME, "--data", str(root / "data"), "--out", str(root / "model"),
                 "--epochs", "1", "--seed", "0"]) == 0
    return {"root": root, "model": root / "model", "image": sorted((root / "data" / "imagesTr").iterdir())[0]}

"""A fake engine process and placeholder models, for driving the shared logic and panel with any task
without running a network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from engine.tasks import Task
from OncoStagingCommon import results

LESION, ORGAN = 1, 2


#: What the fake engine's Python answers to the logic's device probe.
PROBE_ANSWER = {"cuda": False, "gpu": "", "torch": "2.0"}


class FakeRun:
    """One fake ``python -m engine`` command (or the device probe): running at the first poll,
    finished at the second."""

    def __init__(self, engine: FakeEngine, args: list[str]):
        self.engine, self.args, self.pid = engine, args, None
        self.polls, self.killed = 0, False
        self.lines = ['@@progress {"kind": "step", "name": "segmentation", "fraction": 0.5}', "working"]
        if args == ["-c"]:
            self.lines = [json.dumps(PROBE_ANSWER)]

    def poll(self) -> int | None:
        if self.killed:
            return -15
        self.polls += 1
        if self.polls < 2:
            return None
        if self.args[0] == "run":
            self.engine.write_run(self.args)
        return 0

    def read_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def kill_tree(self) -> None:
        self.killed = True


class FakeEngine:
    """A launcher standing in for the engine: records each command and its environment; a ``run``
    writes what the engine writes (label map on the input's grid, report.json) for ``task``; with
    ``slice_probabilities`` the report also has the gtv task's per-slice fields (one probability per
    input slice, ``slices_kept``, ``slice_threshold``); with ``gradcam`` it writes a Grad-CAM map too
    (unless the command says ``--no-gradcam``)."""

    def __init__(self, task: Task, slice_probabilities: bool = False, gradcam: bool = False):
        self.task = task
        self.slice_probabilities = slice_probabilities
        self.gradcam = gradcam
        self.commands: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.runs: list[FakeRun] = []
        self.probes: list[FakeRun] = []

    def __call__(self, argv: Sequence[str], env: dict[str, str]) -> FakeRun:
        if argv[1] == "-c":  # the device probe
            self.probes.append(FakeRun(self, ["-c"]))
            return self.probes[-1]
        assert list(argv[1:3]) == ["-m", "engine"]
        self.commands.append(list(argv[3:]))
        self.envs.append(dict(env))
        self.runs.append(FakeRun(self, list(argv[3:])))
        return self.runs[-1]

    def write_run(self, args: list[str]) -> None:
        option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
        out = Path(option["--out"])
        out.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(option["--input"])
        labels = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
        values = {lab.value for lab in self.task.labels}
        labels[2:6, 4:10, 4:10] = LESION
        if ORGAN in values:
            labels[2:6, 12:20, 4:12] = ORGAN
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(image)
        sitk.WriteImage(label_image, str(out / results.SEGMENTATION_FILE))
        if self.gradcam and "--no-gradcam" not in args:
            cam = sitk.GetImageFromArray((labels == LESION).astype(np.float32) * 0.8)
            cam.CopyInformation(image)
            sitk.WriteImage(cam, str(out / results.GRADCAM_FILE))
        voxel_cm3 = float(np.prod(image.GetSpacing())) / 1000.0
        report: dict[str, Any] = {"task": self.task.name, "model": {"intended_use": "tests"}, "warnings": [],
                                  "volumes_cm3": {lab.name: float((labels == lab.value).sum()) * voxel_cm3
                                                  for lab in self.task.labels}}
        if self.task.stage_names:
            probabilities = np.linspace(1.0, 2.0, len(self.task.stage_names))
            probabilities /= probabilities.sum()
            report["stage_probabilities"] = dict(zip(self.task.stage_names, probabilities.tolist()))
            report["predicted_stage"] = self.task.stage_names[-1]
        if self.slice_probabilities:  # slices 2..5 hold the lesion: high probability there
            probabilities = [0.9 if 2 <= k < 6 else 0.05 for k in range(labels.shape[0])]
            report.update(slice_probabilities=probabilities, slice_threshold=0.5,
                          slices_kept=[k for k, p in enumerate(probabilities) if p >= 0.5])
        (out / results.REPORT_FILE).write_text(json.dumps(report))


def save_model(task: Task, folder: Path) -> Path:
    """A valid bundle of ``task`` (its labels and stages) with placeholder weights; the fake engine never
    reads them."""
    import torch

    from engine.registry.bundle import DEMO_INTENDED_USE, save_bundle

    bundle = save_bundle(folder / f"{task.name}-model", id=f"{task.name}-model", name=f"{task.title} model",
                         version="1.0.0", task=task.name, architecture={"name": "placeholder"}, plan={},
                         labels=list(task.labels), stages=list(task.stage_names) if task.stage_names else None,
                         modality=task.modality, training={"data": {"dataset": "phantoms", "cases": 4}},
                         metrics={}, intended_use=DEMO_INTENDED_USE, weights={"network": {"w": torch.zeros(1)}},
                         model_card=f"# {task.title}\n\nPlaceholder weights for the Slicer tests.\n")
    return bundle.path

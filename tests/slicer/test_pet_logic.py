"""The treatment-outcome (PET) panel's logic in a headless Slicer scene: which volume it suggests, the run
command, the SUV table, the pathology/outcome table and chart, the Grad-CAM, re-runs and cancel. A fake
engine writes the run folder a PET run writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import slicer.util
from fakes import FakeEngine, save_model
from OncoStagingCommon.logic import RunOptions
from OncoStagingCommon.pet import PET_OWNER, UPTAKE_ROWS, PetOutcomeLogic, is_pet_volume, suggest_pet_volume
from OncoStagingCommon.process import JobState

from engine.tasks import get_task
from OncoStagingCommon import results

UPTAKE = {"suv_max": 12.5, "suv_mean": 6.25, "suv_peak": 10.0, "mtv_ml": 8.0, "tlg": 50.0}


class FakePetEngine(FakeEngine):
    """The fake engine, with the fields a PET run adds to report.json."""

    def write_run(self, args: list[str]) -> None:
        super().write_run(args)
        out = Path(args[args.index("--out") + 1])
        report: dict[str, Any] = json.loads((out / results.REPORT_FILE).read_text())
        report.update(uptake=UPTAKE, pathology_probabilities={"esophageal": 0.8, "lung": 0.2},
                      predicted_pathology="esophageal", outcome_probabilities={"good": 0.3, "poor": 0.7},
                      predicted_outcome="poor", gradcam_levels=[3, 4, 5])
        (out / results.REPORT_FILE).write_text(json.dumps(report))


def _volume(scene: Any, name: str, modality: str | None = None) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.full((8, 24, 24), 1.5, np.float32))
    node.SetSpacing(4.0, 4.0, 4.0)
    if modality:
        node.SetAttribute("DICOM.Modality", modality)
    return node


def test_the_pet_of_the_study_is_suggested(headless):
    scene = headless.scene
    assert suggest_pet_volume(scene) is None
    ct = _volume(scene, "CT chest", "CT")
    _volume(scene, "PET-like name but CT", "CT")
    assert suggest_pet_volume(scene) is None and not is_pet_volume(ct)
    by_name = _volume(scene, "WB FDG PET AC")
    assert suggest_pet_volume(scene) is by_name
    by_modality = _volume(scene, "Series 4", "PT")
    assert suggest_pet_volume(scene) is by_modality
    assert not is_pet_volume(_volume(scene, "Compet study"))   # "pet" inside a word is no PET


def _run(headless, tmp_path, volume=None, **options):
    engine = FakePetEngine(get_task("pet"), gradcam=True)
    logic = PetOutcomeLogic(scene=headless.scene, launcher=engine)
    volume = volume or _volume(headless.scene, "PET SUV", "PT")
    model = str(save_model(get_task("pet"), tmp_path))
    return logic, engine, volume, logic.predict(volume, RunOptions(model=model, device="cpu", **options),
                                                poll_interval_s=0)


def test_run_shows_segmentation_suv_table_probabilities_and_gradcam(headless, tmp_path):
    _logic, engine, volume, outcome = _run(headless, tmp_path)
    assert engine.commands[0][:3] == ["run", "--task", "pet"]
    segmentation = outcome.run.nodes.segmentation.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["tumour"]
    assert outcome.run.nodes.gradcam is not None
    table = outcome.tables.uptake_table
    assert table.GetNumberOfRows() == len(UPTAKE_ROWS)
    values = {table.GetCellText(r, 0): float(table.GetCellText(r, 1)) for r in range(table.GetNumberOfRows())}
    assert values == {label: UPTAKE[key] for key, label in UPTAKE_ROWS}
    probs = outcome.tables.probability_table
    rows = {probs.GetCellText(r, 1): float(probs.GetCellText(r, 2)) for r in range(probs.GetNumberOfRows())}
    assert rows == {"pathology: esophageal": 0.8, "pathology: lung": 0.2, "outcome: good": 0.3, "outcome: poor": 0.7}
    assert outcome.tables.probability_chart.GetTitle() == "Pathology and outcome probabilities"
    assert outcome.summary == "Predicted outcome poor (70%), pathology esophageal (80%)"
    owned = results.result_nodes_of(headless.scene, volume, PET_OWNER)
    assert {table.GetID(), probs.GetID(), outcome.tables.probability_chart.GetID()} <= {n.GetID() for n in owned}


def test_rerun_replaces_the_previous_pet_results(headless, tmp_path):
    logic, _, volume, first = _run(headless, tmp_path)
    before = headless.scene.GetNumberOfNodes()
    model = str(save_model(get_task("pet"), tmp_path / "again"))
    second = logic.predict(volume, RunOptions(model=model, device="cpu"), poll_interval_s=0)
    assert headless.scene.GetNumberOfNodes() == before
    assert not headless.scene.IsNodePresent(first.tables.uptake_table)
    assert headless.scene.IsNodePresent(second.tables.uptake_table)


def test_cancel_leaves_the_scene_as_it_was(headless, tmp_path):
    engine = FakePetEngine(get_task("pet"))
    logic = PetOutcomeLogic(scene=headless.scene, launcher=engine)
    volume = _volume(headless.scene, "PET", "PT")
    before = headless.scene.GetNumberOfNodes()
    job = logic.start(volume, RunOptions(model=str(save_model(get_task("pet"), tmp_path)), device="cpu"))
    logic.cancel(job)
    assert logic.poll(job) is not JobState.SUCCEEDED
    assert headless.scene.GetNumberOfNodes() == before
    assert logic.pet_outcome(job) is None

"""The shared task logic with tasks other than the esophagus: the plug-in toy task (stages "low" and
"high"), a segmentation-only task and the built-in ``gtv`` task (one "GTV" label, per-slice
probabilities). Labels and stages come from the task declaration; a fake engine process writes the run
folder, so these tests need no model; one test runs the real engine in a child process that finds the
plug-in through ``$ONCOSTAGING_TASKS``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import slicer  # noqa: E402
import slicer.util  # noqa: E402

from engine.tasks import TASKS_ENV, Task, get_task, unregister_task  # noqa: E402
from OncoStagingCommon import results  # noqa: E402
from OncoStagingCommon.logic import (  # noqa: E402
    RunOptions,
    TaskInputError,
    TaskLogic,
    TrainingRequest,
    train_options_of,
)
from OncoStagingCommon.process import EngineJob, JobState  # noqa: E402
from fakes import FakeEngine, save_model  # noqa: E402  (tests/slicer is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def logic_for(task: Task, scene: Any) -> tuple[TaskLogic, FakeEngine]:
    engine = FakeEngine(task)
    return TaskLogic(task.name, scene=scene, launcher=engine), engine


# ---------------------------------------------------------------------------------------- Segment & Stage

def test_toy_run_shows_the_tasks_labels_and_stage_names(headless, volume, toy, tmp_path):
    logic, engine = logic_for(toy, headless.scene)
    seen = []
    outcome = logic.process(volume, RunOptions(model=str(save_model(toy, tmp_path)), device="cpu"),
                            on_progress=seen.append, poll_interval_s=0)
    assert engine.commands[0][:3] == ["run", "--task", "toy"]
    segmentation = outcome.nodes.segmentation.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == [lab.name for lab in toy.labels] == ["lesion", "organ"]
    for segment, label in zip(segments, toy.labels):
        assert np.allclose(segment.GetColor(), [c / 255 for c in label.color])
    lesion = slicer.util.arrayFromSegmentBinaryLabelmap(outcome.nodes.segmentation, "lesion", volume)
    assert lesion[2:6, 4:10, 4:10].all() and lesion.sum() == 4 * 6 * 6
    table = outcome.nodes.probability_table.GetTable()
    stages = [table.GetValueByName(r, results.STAGE_COLUMN).ToString() for r in range(table.GetNumberOfRows())]
    assert stages == list(toy.stage_names) == ["low", "high"]
    assert outcome.predicted_stage == "high" and outcome.nodes.probability_chart is not None
    volumes = outcome.nodes.volume_table.GetTable()
    assert [volumes.GetValue(r, 0).ToString() for r in range(volumes.GetNumberOfRows())] == ["lesion", "organ"]
    assert outcome.volumes_cm3["lesion"] == pytest.approx(4 * 6 * 6 * 2.0 * 1.5 * 4.0 / 1000)
    assert [p.message for p in seen] == ["Segmenting", "Done: predicted high"]
    assert outcome.nodes.segmentation.GetAttribute(results.OWNER_ATTRIBUTE) == logic.module_name == "toy"


def test_a_task_without_stages_shows_no_probability_table(headless, volume, segmentation_only, tmp_path):
    logic, _ = logic_for(segmentation_only, headless.scene)
    model = str(save_model(segmentation_only, tmp_path))
    seen = []
    outcome = logic.process(volume, RunOptions(model=model), on_progress=seen.append, poll_interval_s=0)
    assert outcome.nodes.probability_table is None and outcome.nodes.probability_chart is None
    assert outcome.predicted_stage is None and outcome.stage_probabilities == {}
    assert seen[-1].message == "Done"
    assert {n.GetClassName() for n in outcome.nodes.nodes()} == {"vtkMRMLSegmentationNode", "vtkMRMLTableNode"}
    found = logic.results_for(volume)  # e.g. after the panel is reopened
    assert found.nodes.segmentation is outcome.nodes.segmentation and found.report == outcome.report
    count = headless.scene.GetNumberOfNodes()
    logic.process(volume, RunOptions(model=model), poll_interval_s=0)
    assert headless.scene.GetNumberOfNodes() == count


def test_a_gtv_run_shows_the_gtv_and_the_slice_probability_chart(headless, volume, tmp_path):
    """The ``gtv`` task (GTVSeg): one "GTV" segment in the task's colour and terminology, Grad-CAM,
    volume table, and the per-slice probabilities as a table and a line chart; no stage table."""
    from engine.pipelines.outputs import segments_from_labels

    gtv = get_task("gtv")
    engine = FakeEngine(gtv, slice_probabilities=True, gradcam=True)
    logic = TaskLogic("gtv", scene=headless.scene, launcher=engine)
    assert logic.module_name == "GTVSeg" and not logic.has_stages and logic.action_name == "Segment"
    model = str(save_model(gtv, tmp_path))
    seen = []
    outcome = logic.process(volume, RunOptions(model=model, device="cpu", tta="none"), on_progress=seen.append,
                            poll_interval_s=0)
    assert engine.commands[0][:3] == ["run", "--task", "gtv"] and seen[-1].message == "Done"

    segmentation = outcome.nodes.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    (label,) = gtv.labels
    (expected,) = segments_from_labels(gtv.labels)
    assert segment.GetName() == label.name == "GTV"
    assert np.allclose(segment.GetColor(), [c / 255 for c in label.color])
    terminology = segment.GetTerminology() if hasattr(segment, "GetTerminology") else \
        segment.GetTag(segment.GetTerminologyEntryTagName())[1]
    assert expected.terminology and terminology == expected.terminology
    assert "108369006^Neoplasm" in terminology
    assert segmentation.ContainsRepresentation("Closed surface")
    gtv_voxels = slicer.util.arrayFromSegmentBinaryLabelmap(outcome.nodes.segmentation, "GTV", volume)
    assert gtv_voxels.sum() == 4 * 6 * 6

    assert outcome.nodes.gradcam is not None
    assert slicer.util.arrayFromVolume(outcome.nodes.gradcam).max() == pytest.approx(0.8)
    volumes = outcome.nodes.volume_table.GetTable()
    assert volumes.GetNumberOfRows() == 1 and volumes.GetValue(0, 0).ToString() == "GTV"
    assert outcome.predicted_stage is None and outcome.nodes.probability_table is None
    assert outcome.nodes.probability_chart is None and outcome.nodes.probability_series is None

    slices = volume.GetImageData().GetDimensions()[2]
    assert len(outcome.slice_probabilities) == slices == 8
    table = outcome.nodes.slice_table.GetTable()
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns == [results.SLICE_COLUMN, results.POSITION_COLUMN, results.PROBABILITY_COLUMN,
                       results.KEPT_COLUMN, results.THRESHOLD_COLUMN]
    assert table.GetNumberOfRows() == slices
    column = {name: [table.GetValueByName(r, name) for r in range(slices)] for name in columns}
    assert [v.ToDouble() for v in column[results.SLICE_COLUMN]] == list(range(slices))
    assert [v.ToDouble() for v in column[results.POSITION_COLUMN]] == [30.0 + 4.0 * k for k in range(slices)]
    assert [v.ToDouble() for v in column[results.PROBABILITY_COLUMN]] == outcome.slice_probabilities
    assert [v.ToString() for v in column[results.KEPT_COLUMN]] == ["yes" if 2 <= k < 6 else "no" for k in range(8)]
    assert {v.ToDouble() for v in column[results.THRESHOLD_COLUMN]} == {0.5}

    curve, threshold = outcome.nodes.slice_series
    chart = outcome.nodes.slice_chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert [chart.GetNthPlotSeriesNodeID(i) for i in range(2)] == [curve.GetID(), threshold.GetID()]
    for series, y in ((curve, results.PROBABILITY_COLUMN), (threshold, results.THRESHOLD_COLUMN)):
        assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeLine
        assert series.GetTableNodeID() == outcome.nodes.slice_table.GetID()
        assert (series.GetXColumnName(), series.GetYColumnName()) == (results.SLICE_COLUMN, y)
        assert series.GetTableNode().GetTable().GetNumberOfRows() == slices  # one point per slice
    assert threshold.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash

    roles = sorted(n.GetAttribute(results.ROLE_ATTRIBUTE) for n in outcome.nodes.nodes())
    assert roles == ["gradcam", "segmentation", "slice_chart", "slice_series", "slice_series", "slice_table",
                     "volume_table"]
    assert all(n.GetAttribute(results.OWNER_ATTRIBUTE) == "GTVSeg" for n in outcome.nodes.nodes())
    found = logic.results_for(volume)  # e.g. after the panel is reopened or the scene reloaded
    assert found.nodes.slice_table is outcome.nodes.slice_table and found.nodes.slice_chart is chart
    assert found.nodes.slice_series == [curve, threshold] and found.slice_probabilities == outcome.slice_probabilities
    count = headless.scene.GetNumberOfNodes()
    logic.process(volume, RunOptions(model=model, tta="none"), poll_interval_s=0)  # a re-run replaces them
    assert headless.scene.GetNumberOfNodes() == count


def test_slice_probabilities_without_a_matching_grid_or_threshold(headless, volume):
    """A report whose slice count differs from the volume's has no z column; without
    ``slice_threshold`` there is no threshold line; without ``slice_probabilities`` nothing is made."""
    report = {"slice_probabilities": [0.1, 0.7, 0.2], "slices_kept": [1]}
    table, chart, series = results.add_slice_probabilities(headless.scene, volume, report, "odd")
    t = table.GetTable()
    assert [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())] == [
        results.SLICE_COLUMN, results.PROBABILITY_COLUMN, results.KEPT_COLUMN]
    assert [t.GetValue(r, 2).ToString() for r in range(3)] == ["no", "yes", "no"]
    assert len(series) == 1 and chart.GetNumberOfPlotSeriesNodes() == 1
    assert results.add_slice_probabilities(headless.scene, volume, {"volumes_cm3": {}}, "none") is None


def test_cancel_stops_the_process_and_leaves_the_scene_as_it_was(headless, volume, toy, tmp_path):
    logic, engine = logic_for(toy, headless.scene)
    before = headless.snapshot()
    job = logic.process(volume, RunOptions(model=str(save_model(toy, tmp_path))), wait=False)
    assert logic.poll(job) is JobState.RUNNING
    logic.cancel(job)
    assert engine.runs[0].killed and logic.poll(job) is JobState.CANCELLED
    assert headless.snapshot() == before and not job.work_dir.exists()


@pytest.mark.parametrize("option, value, message", [("device", "gpu", "Device must be one of auto, cpu, cuda"),
                                                    ("tta", "mirror", "one of all, stage, none")])
def test_options_are_checked_against_the_engines_choices(headless, volume, toy, tmp_path, option, value, message):
    logic, engine = logic_for(toy, headless.scene)
    with pytest.raises(TaskInputError, match=message):
        logic.process(volume, RunOptions(model=str(save_model(toy, tmp_path)), **{option: value}))
    assert engine.commands == []


def test_a_model_of_another_task_is_refused(headless, volume, toy, segmentation_only, tmp_path):
    logic, engine = logic_for(toy, headless.scene)
    with pytest.raises(TaskInputError, match="for task 'toyseg', not 'toy'"):
        logic.process(volume, RunOptions(model=str(save_model(segmentation_only, tmp_path))))
    assert engine.commands == []


def test_model_list_and_card_of_the_task(toy, segmentation_only, tmp_path, monkeypatch):
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(tmp_path))
    save_model(toy, tmp_path)
    save_model(segmentation_only, tmp_path)
    logic = TaskLogic("toy", scene=slicer.vtkMRMLScene())
    cards = [c for c in logic.model_cards() if c.path.parent == tmp_path]
    assert [c.id for c in cards] == ["toy-model"]
    assert cards[0].training_data == "phantoms (4 cases)" and cards[0].is_demo and cards[0].ensemble_members == 1
    assert logic.model_card_text(cards[0].path).startswith(f"# {toy.title}")


# ---------------------------------------------------------------------------------------- training

def test_training_runs_validate_then_train_with_the_tasks_options(toy, segmentation_only, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    for task, validate in ((toy, ["--require-stages"]), (segmentation_only, [])):
        logic, engine = logic_for(task, slicer.vtkMRMLScene())
        out = tmp_path / f"{task.name}-out"
        assert logic.train(TrainingRequest(dataset=tmp_path / "data", model_name="M", out_dir=out)) == out
        assert engine.commands[0] == ["validate", str(tmp_path / "data"), "--task", task.name, *validate]
        assert engine.commands[1][:3] == ["train", "--task", task.name]
    assert "--learning-rate" in train_options_of(toy)  # the toy's own option, read from its declaration
    logic = TaskLogic("toy", scene=slicer.vtkMRMLScene(), launcher=FakeEngine(toy))
    assert not logic.can_fine_tune and TaskLogic("esophagus").can_fine_tune
    with pytest.raises(TaskInputError, match="'toy' cannot fine-tune"):
        logic.start_training(TrainingRequest(dataset=tmp_path / "data", model_name="t", out_dir=tmp_path / "t",
                                             start_from=tmp_path))


# ---------------------------------------------------------------------------------------- plug-in tasks

def test_a_plugin_task_reaches_the_engine_process(tmp_path, monkeypatch):
    """A task known only to this process is loaded from ``task_source`` and handed to the engine
    process through ``$ONCOSTAGING_TASKS`` and ``PYTHONPATH``, next to the user's own entries."""
    (tmp_path / "slicer_plugin_task.py").write_text(textwrap.dedent('''
        from engine.tasks import Label, Task
        TASK = Task(name="plugged", title="Plugged-in task", modality="MR",
                    labels=(Label("mass", 1, (200, 30, 30)),))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TASKS_ENV, "toy_task:TASK")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "plugins"))
    try:
        logic = TaskLogic("plugged", scene=slicer.vtkMRMLScene(), task_source="slicer_plugin_task:TASK")
        assert logic.task.modality == "MR" and logic.module_name == "plugged"
        env = EngineJob(["tasks"], env=logic.child_env()).child_env()
        assert env[TASKS_ENV].split(",") == ["toy_task:TASK", "slicer_plugin_task:TASK"]
        assert {str(tmp_path), str(REPO / "tests" / "plugins")} <= set(env["PYTHONPATH"].split(os.pathsep))
        code = "from engine.tasks import get_task; print(get_task('plugged').title, get_task('toy').title)"
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path.parent, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("Plugged-in task Toy lesion")
    finally:
        unregister_task("plugged")
        sys.modules.pop("slicer_plugin_task", None)


def test_the_real_engine_runs_the_toy_task_in_a_child_process(headless, toy, tmp_path, monkeypatch):
    """Segment & Stage of the plug-in toy task end to end: a real child engine process finds it through
    ``task_source``; its stage names reach the probability table."""
    import toy_task

    from engine.synth import generate_dataset

    monkeypatch.delenv(TASKS_ENV, raising=False)
    dataset = generate_dataset("toy", tmp_path / "data", cases=2, seed=3)
    model = toy.train(tmp_path / "data", tmp_path / "model", steps=1, seed=0).path
    ct = headless.load_volume(dataset.training[0].image_files[0], "Toy CT")
    logic = TaskLogic("toy", scene=headless.scene, task_source=f"{toy_task.__name__}:TASK")
    outcome = logic.process(ct, RunOptions(model=str(model), device="cpu", tta="none"))
    table = outcome.nodes.probability_table.GetTable()
    assert [table.GetValue(r, 1).ToString() for r in range(table.GetNumberOfRows())] == ["low", "high"]
    assert outcome.predicted_stage in ("low", "high") and outcome.nodes.gradcam is not None


# ---------------------------------------------------------------------------------------- no torch in Slicer

LISTING = """
import json, sys
sys.path[:0] = {paths!r}
from conftest import install_scripted_module_stand_in
install_scripted_module_stand_in()
from OncoStagingCommon.logic import TaskLogic
{register}
logic = TaskLogic({task!r})
cards = logic.model_cards()
card = logic.model_card_text(cards[0].path)
heavy = [m for m in ("torch", "monai") if m in sys.modules]
print(json.dumps({{"cards": len(cards), "card": card[:2], "heavy": heavy}}))
"""


@pytest.mark.parametrize("task", ["toy", "esophagus"])
def test_listing_models_and_reading_a_model_card_import_neither_torch_nor_monai(toy, task, tmp_path):
    """The panel lists models and shows a model card in Slicer's own process: that must not load PyTorch
    or MONAI (seconds of start-up, and they may not be installed yet)."""
    from engine.registry.paths import BUILTIN_DIR_ENV, MODEL_DIR_ENV

    save_model(toy, tmp_path)
    env = {**os.environ, MODEL_DIR_ENV: str(tmp_path), BUILTIN_DIR_ENV: str(REPO / "models")}  # the demo model
    paths = [str(HERE), str(REPO / "OncoStagingCommon"), str(REPO / "tests" / "plugins"), str(REPO)]
    register = "import toy_task; from engine.tasks import register_task; register_task(toy_task.TASK)" \
        if task == "toy" else ""
    out = subprocess.run([sys.executable, "-c", LISTING.format(paths=paths, register=register, task=task)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cards"] >= 1 and result["card"] == "# "
    assert result["heavy"] == []


def test_devices_are_found_by_the_engines_python_not_in_slicers(toy):
    """The device selector's line comes from a child Python (the one that will run the engine)."""
    from OncoStagingCommon.logic import DeviceInfo

    info = TaskLogic("toy", scene=slicer.vtkMRMLScene()).detect_devices()
    assert info.description.startswith(("CPU only (PyTorch", "GPU: "))
    assert "torch" not in sys.modules or info.cuda_available == __import__("torch").cuda.is_available()
    assert DeviceInfo.from_probe(["null"]).description == "PyTorch is not installed"
    assert DeviceInfo.from_probe(['{"cuda": true, "gpu": "H200", "torch": "2.6"}']) == DeviceInfo(True, "GPU: H200")
    assert DeviceInfo.from_probe(["Traceback", "ImportError: x"]).description.startswith("Could not ask PyTorch")

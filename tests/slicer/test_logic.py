"""The shared task logic with the esophagus task and the real engine on a headless MRML scene:
Segment & Stage → nodes, checked against the engine's own files voxel for voxel; re-run, Cancel and
bad input leave the rest of the scene alone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
import slicer.util  # noqa: E402
import vtk  # noqa: E402

from OncoStagingCommon import results  # noqa: E402
from OncoStagingCommon.logic import (  # noqa: E402
    RunOptions,
    TaskInputError,
    TaskLogic,
    TrainingRequest,
    describe_training_event,
    engine_train_args,
    interrupted_training,
)
from OncoStagingCommon.process import InProcessLauncher, JobState  # noqa: E402

TASK = "esophagus"
MODULE_NAME = "EsophagusStaging"
SEGMENT_NAMES = ["EC", "aorta", "esophagus", "lymph node", "pericardium"]


@pytest.fixture
def ct(headless, phantoms):
    """The phantom CT placed under a patient and study, as Slicer's DICOM loader does."""
    case = phantoms.training[0]
    volume = headless.load_volume(case.image_files[0], "Patient1 CT")
    sh = headless.scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient1"), "Chest CT")
    sh.SetItemParent(sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume), study)
    return volume


@pytest.fixture
def logic(headless):
    return TaskLogic(TASK, scene=headless.scene, launcher=InProcessLauncher())


@pytest.fixture
def staged(headless, ct, logic, trained, tmp_path):
    out = tmp_path / "run"
    outcome = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu", output_dir=out))
    return outcome, out


def engine_labels(run_dir) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(run_dir / "segmentation.nii.gz")))


# ---------------------------------------------------------------------------------------- training panel path

def test_training_panel_validates_then_trains_with_live_progress(trained, monkeypatch):
    assert [c[0] for c in trained.commands] == ["validate", "train"]
    assert "--progress" in trained.commands[1] and "json" in trained.commands[1]
    epochs = [e for e in trained.events if e["kind"] == "epoch"]
    assert epochs and all(e["loss"] is not None for e in epochs)
    assert trained.events[-1]["kind"] == "end" and trained.events[-1]["status"] == "completed"
    line = describe_training_event(epochs[-1])
    assert "epoch 1/1" in line.message and "loss" in line.message and line.fraction == 1.0
    # The new bundle appears in the model selector once it is in the user model directory.
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(trained.bundle_dir.parent))
    cards = TaskLogic(TASK).model_cards()
    assert [c.id for c in cards if c.path == trained.bundle_dir] == ["tiny-eso"]
    card = next(c for c in cards if c.id == "tiny-eso")
    assert card.version == "1.0.0" and "8 cases" in card.training_data and card.intended_use
    assert card.ensemble_members == 1


def test_training_refuses_a_folder_without_dataset_json(logic, tmp_path):
    with pytest.raises(TaskInputError, match="dataset.json"):
        logic.start_training(TrainingRequest(dataset=tmp_path, model_name="x"))


def test_resume_continues_a_stopped_run_and_is_refused_without_one(logic, phantoms, tmp_path):
    """'Resume a stopped run' adds ``--resume``; with nothing to resume the panel says so and starts nothing."""
    out = tmp_path / "models" / "eso"
    request = TrainingRequest(dataset=phantoms.root, model_name="eso", out_dir=out, resume=True)
    assert "--resume" in engine_train_args(logic.task, request, out)
    assert "--resume" not in engine_train_args(logic.task, TrainingRequest(dataset=phantoms.root, model_name="eso"),
                                               out)
    assert not interrupted_training(out)
    with pytest.raises(TaskInputError, match="no stopped training of 'eso'"):
        logic.start_training(request)
    assert not (tmp_path / "models").exists()
    (out.parent / ".eso.work" / "classifier" / "checkpoints").mkdir(parents=True)  # what a stopped run leaves
    assert interrupted_training(out)
    out.mkdir()  # a finished model: nothing to resume any more
    assert not interrupted_training(out)


def test_fine_tuning_starts_every_phase_from_the_selected_model(logic, phantoms, tmp_path):
    """'Fine-tune the selected model' names the model and both segmentation phases' epochs (``--epochs``
    alone would keep a reused segmentation unchanged); a folder without a model is refused."""
    from engine.cli import build_parser

    model = tmp_path / "installed-model"
    model.mkdir()
    (model / "model.json").write_text("{}")  # the panel checks the folder; the engine checks the bundle
    out = tmp_path / "tuned"
    args = engine_train_args(logic.task, TrainingRequest(dataset=phantoms.root, model_name="tuned", epochs=7,
                                                         start_from=model), out)
    parsed = build_parser().parse_args(args)
    assert parsed.segmentation_from == str(model)
    assert (parsed.epochs, parsed.lowres_epochs, parsed.fullres_epochs) == (7, 7, 7)
    plain = build_parser().parse_args(engine_train_args(logic.task, TrainingRequest(dataset=phantoms.root,
                                                                                    model_name="x"), out))
    assert plain.segmentation_from is None and plain.lowres_epochs is None
    with pytest.raises(TaskInputError, match="not a model to fine-tune"):
        engine_train_args(logic.task, TrainingRequest(dataset=phantoms.root, model_name="x", start_from=tmp_path),
                          out)


def test_training_reports_validation_problems(logic, tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(RuntimeError, match="not ready for training"):
        logic.train(TrainingRequest(dataset=tmp_path, model_name="broken", out_dir=tmp_path / "m"), wait=True)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------- Segment & Stage

def test_five_named_coloured_segments_equal_the_engine_labelmap(headless, ct, staged):
    outcome, run_dir = staged
    seg = outcome.nodes.segmentation
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == SEGMENT_NAMES
    expected = engine_labels(run_dir)
    assert expected.shape == slicer.util.arrayFromVolume(ct).shape
    for value, name in enumerate(SEGMENT_NAMES, start=1):
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, ct)
        np.testing.assert_array_equal(got.astype(bool), expected == value, err_msg=name)
    ec = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("EC"))
    assert np.allclose(ec.GetColor(), (230 / 255, 41 / 255, 41 / 255))
    assert "108369006^Neoplasm" in ec.GetTerminology()  # SNOMED CT code from the model bundle
    ref = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    assert ref, "reference geometry from the input is set"


def test_closed_surfaces_are_built_for_every_present_structure(staged):
    outcome, run_dir = staged
    seg = outcome.nodes.segmentation
    present = set(np.unique(engine_labels(run_dir))) - {0}
    assert present, "the tiny model segments something"
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    assert seg.GetDisplayNode().GetVisibility3D()
    for value in present:
        polydata = vtk.vtkPolyData()
        seg.GetClosedSurfaceRepresentation(SEGMENT_NAMES[value - 1].replace(" ", "_"), polydata)
        assert polydata.GetNumberOfPoints() > 0 and polydata.GetNumberOfPolys() > 0


def test_gradcam_node_has_the_input_geometry_and_a_heat_colour_map(ct, staged):
    outcome, run_dir = staged
    cam = outcome.nodes.gradcam
    assert cam is not None and cam.GetName() == "Patient1 CT Grad-CAM"
    assert cam.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    np.testing.assert_allclose(results.ijk_to_ras(cam), results.ijk_to_ras(ct), atol=1e-4)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(run_dir / "gradcam.nii.gz")))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(cam), expected, atol=1e-6)
    assert cam.GetDisplayNode().GetColorNodeID() == results.HEAT_COLOR_NODE_ID


def test_tables_hold_the_values_of_report_json(staged):
    outcome, run_dir = staged
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    table = outcome.nodes.volume_table.GetTable()
    got = {table.GetValue(r, 0).ToString(): table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())}
    assert got == pytest.approx(report["volumes_cm3"])
    assert list(got) == SEGMENT_NAMES
    ptable = outcome.nodes.probability_table.GetTable()
    probs = {ptable.GetValueByName(r, "Stage").ToString(): ptable.GetValueByName(r, "Probability").ToDouble()
             for r in range(ptable.GetNumberOfRows())}
    assert probs == pytest.approx(report["stage_probabilities"]) and list(probs) == ["T1", "T2", "T3", "T4"]
    assert outcome.predicted_stage == report["predicted_stage"]
    chart = outcome.nodes.probability_chart
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert series.GetTableNode() is outcome.nodes.probability_table or \
        series.GetTableNodeID() == outcome.nodes.probability_table.GetID()


def test_result_nodes_are_named_after_the_input_and_sit_in_one_folder(headless, ct, staged):
    outcome, _ = staged
    sh = headless.scene.GetSubjectHierarchyNode()
    folder = outcome.nodes.folder_item
    study = sh.GetItemParent(sh.GetItemByDataNode(ct))
    assert sh.GetItemLevel(study) == "Study"
    assert folder and sh.GetItemParent(folder) == study
    for node in outcome.nodes.nodes():
        assert node.GetName().startswith("Patient1 CT")
        assert node.GetAttribute(results.OWNER_ATTRIBUTE) == MODULE_NAME
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == folder


def test_gradcam_is_the_slice_view_foreground_at_40_percent(headless, ct, logic, trained):
    composite = headless.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    outcome = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu"))
    assert composite.GetBackgroundVolumeID() == ct.GetID()
    assert composite.GetForegroundVolumeID() == outcome.nodes.gradcam.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    results.set_gradcam_opacity(headless.scene, outcome.nodes.gradcam, 0.7)
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)


def test_seg_nrrd_export_and_import_round_trip(headless, ct, staged, logic, tmp_path):
    outcome, run_dir = staged
    path = logic.export_segmentation(ct, tmp_path / "out" / "case.seg.nrrd")
    loaded = headless.segmentations.LoadSegmentationFromFile(str(path), False)
    assert loaded is not None
    segmentation = loaded.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == SEGMENT_NAMES
    expected = engine_labels(run_dir)
    for value, name in enumerate(SEGMENT_NAMES, start=1):
        got = slicer.util.arrayFromSegmentBinaryLabelmap(loaded, segmentation.GetSegmentIdBySegmentName(name), ct)
        np.testing.assert_array_equal(got.astype(bool), expected == value, err_msg=name)


def test_rerun_replaces_this_modules_outputs_and_nothing_else(headless, ct, staged, logic, trained):
    first, _ = staged
    other = headless.scene.AddNewNodeByClass("vtkMRMLTableNode", "Patient1 CT volumes")  # a user's own node
    count = headless.scene.GetNumberOfNodes()
    old_ids = [n.GetID() for n in first.nodes.nodes()]
    second = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu"))
    assert headless.scene.GetNumberOfNodes() == count
    assert all(headless.scene.GetNodeByID(i) is None for i in old_ids)
    assert headless.scene.IsNodePresent(other)
    assert len(results.result_nodes_of(headless.scene, ct, MODULE_NAME)) == len(second.nodes.nodes())
    sh = headless.scene.GetSubjectHierarchyNode()
    folders = [i for i in _all_items(sh) if sh.GetItemAttribute(i, results.OWNER_ATTRIBUTE) == MODULE_NAME]
    assert folders == [second.nodes.folder_item]


def _all_items(sh):
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]


def test_cancel_leaves_the_scene_as_it_was(headless, ct, logic, trained):
    before = headless.snapshot()
    job = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu"), wait=False)
    logic.cancel(job)
    assert logic.poll(job) is JobState.CANCELLED
    assert headless.snapshot() == before
    assert not job.work_dir.exists()


def test_engine_failure_is_reported_and_changes_nothing(headless, ct, logic, trained, tmp_path):
    before = headless.snapshot()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "report.json").write_text("{}")  # the engine refuses to overwrite another run's results
    with pytest.raises(RuntimeError, match="already holds results"):
        logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu", output_dir=busy))
    assert headless.snapshot() == before


# ---------------------------------------------------------------------------------------- bad input

def _labelmap(headless, ct):
    node = headless.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(node, np.zeros(slicer.util.arrayFromVolume(ct).shape, np.uint8))
    return node


def _flat(headless):
    node = headless.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "single slice")
    slicer.util.updateVolumeFromArray(node, np.full((1, 32, 32), -1000, np.int16))
    return node


@pytest.mark.parametrize("make_input, message", [
    (lambda h, ct: None, "Choose an input CT volume"),
    (_labelmap, "is a label map"),
    (lambda h, ct: _flat(h), "is 2D"),
])
def test_bad_input_raises_a_clear_error_and_changes_nothing(headless, ct, logic, trained, make_input, message):
    volume = make_input(headless, ct)
    before = headless.snapshot()
    array_before = slicer.util.arrayFromVolume(ct).copy()
    with pytest.raises(TaskInputError, match=message):
        logic.process(volume, RunOptions(model=str(trained.bundle_dir), device="cpu"))
    assert headless.snapshot() == before
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), array_before)


def test_a_model_of_another_task_is_refused_before_running(headless, ct, logic, trained, tmp_path):
    import shutil

    from engine.registry import seal_bundle

    other = tmp_path / "npc-model"
    shutil.copytree(trained.bundle_dir, other)
    manifest = json.loads((other / "model.json").read_text(encoding="utf-8"))
    manifest["task"] = "npc"
    (other / "model.json").write_text(json.dumps(manifest))
    seal_bundle(other, force=True)  # a genuine model of another task, not an edited one
    before = headless.snapshot()
    with pytest.raises(TaskInputError, match="task 'npc'"):
        logic.process(ct, RunOptions(model=str(other), device="cpu"))
    assert headless.snapshot() == before
    assert logic.launcher.commands == []


def test_test_time_augmentation_is_checked_then_passed_to_the_engine(headless, ct, logic, trained):
    before = headless.snapshot()
    with pytest.raises(TaskInputError, match="one of all, stage, none"):
        logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu", tta="mirror"))
    assert headless.snapshot() == before and logic.launcher.commands == []
    outcome = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu", tta="stage"))
    args = logic.launcher.commands[-1]
    assert args[args.index("--tta") + 1] == "stage"
    assert outcome.report["test_time_augmentation"]["segmentation"] == "none"


def test_no_installed_model_says_how_to_get_one(headless, ct, logic):
    with pytest.raises(TaskInputError, match="Import a model bundle"):
        logic.process(ct, RunOptions(model=None, device="cpu"))


# ---------------------------------------------------------------------------------------- the real child process

def test_real_subprocess_runs_segment_and_stage(headless, ct, trained):
    logic = TaskLogic(TASK, scene=headless.scene)  # default launcher: a child Python process
    seen = []
    outcome = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu"), on_progress=seen.append)
    assert outcome.predicted_stage in ("T1", "T2", "T3", "T4")
    assert seen and seen[-1].fraction == 1.0 and any(p.message == "Staging" for p in seen)
    assert outcome.nodes.segmentation.GetSegmentation().GetNumberOfSegments() == 5


def test_cancel_kills_the_whole_process_tree(headless, ct, trained):
    logic = TaskLogic(TASK, scene=headless.scene)
    before = headless.snapshot()
    job = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu"), wait=False)
    pid = job.engine_job._process.pid
    logic.cancel(job)
    assert job.state is JobState.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of the group is left
    assert headless.snapshot() == before


def test_model_card_says_how_many_classifiers_the_staging_averages(logic, tmp_path):
    from types import SimpleNamespace

    def bundle(architecture):
        return SimpleNamespace(id="m", name="M", version="1.0.0", path=tmp_path, intended_use="research",
                               is_demo=False, metrics={}, architecture=architecture,
                               training={"data": {"dataset": "D", "cases": 3}})

    assert logic._card(bundle({"name": "nn-MTNet"})).ensemble_members == 1
    members = ["classifier", "classifier_2", "classifier_3"]
    ensemble = bundle({"name": "nn-MTNet", "classifier_members": members})
    assert logic._card(ensemble).ensemble_members == 3


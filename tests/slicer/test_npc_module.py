"""NPCStaging on the shared logic with the real engine (in-process) on a headless MRML scene: training
through the panel's path, Segment & Stage of a phantom MRI into one GTV segment, stage table and
Grad-CAM, and a CT refused before anything is added to the scene."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import slicer
import slicer.util
from OncoStagingCommon.logic import RunOptions, TaskLogic, TrainingRequest
from OncoStagingCommon.process import InProcessLauncher

from OncoStagingCommon import results

TASK = "npc"
#: The self-test's tiny configuration (NPCStaging.TINY_TRAINING): seconds on a CPU, not accurate.
TINY_TRAINING = ["--steps-per-epoch", "2", "--batch-size", "2", "--unet-width", "8", "--unet-max-width", "16",
                 "--stage-width", "8", "--fold", "all", "--target-spacing", "6", "3.28", "3.28"]


@pytest.fixture(scope="module")
def npc_trained(tmp_path_factory):
    """Four NPC phantoms and a tiny model trained through the training panel's own path."""
    import torch

    from engine.synth import generate_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("slicer_npc")
    dataset = generate_dataset(TASK, root / "data", cases=4, seed=5)
    events: list[dict] = []
    logic = TaskLogic(TASK, scene=slicer.vtkMRMLScene(), launcher=InProcessLauncher())
    request = TrainingRequest(dataset=dataset.root, model_name="Tiny NPC", epochs=1, device="cpu",
                              out_dir=root / "model", extra_args=TINY_TRAINING)
    bundle_dir = logic.train(request, wait=True, on_event=events.append)
    return SimpleNamespace(dataset=dataset, bundle_dir=bundle_dir, events=events)


def test_the_module_names_the_npc_task(headless):
    logic = TaskLogic(TASK, scene=headless.scene, launcher=InProcessLauncher())
    assert logic.module_name == "NPCStaging" and logic.has_stages and logic.action_name == "Segment & Stage"
    assert not logic.can_fine_tune  # the network trains end to end; there is no segmentation to start from


def test_training_through_the_panel_path_reports_progress(npc_trained):
    assert (npc_trained.bundle_dir / "model.json").is_file()
    assert npc_trained.events


def test_segment_and_stage_of_an_mri_shows_the_gtv_stage_and_gradcam(headless, npc_trained, tmp_path):
    mri = headless.load_volume(npc_trained.dataset.training[0].image_files[0], "Patient1 T1C")
    logic = TaskLogic(TASK, scene=headless.scene, launcher=InProcessLauncher())
    out = tmp_path / "run"
    outcome = logic.process(mri, RunOptions(model=str(npc_trained.bundle_dir), device="cpu", tta="none",
                                            output_dir=out))
    segmentation = outcome.nodes.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "GTV"
    engine_labels = slicer.util.arrayFromVolume(headless.load_volume(out / "segmentation.nii.gz", "labels",
                                                                     labelmap=True))
    gtv = slicer.util.arrayFromSegmentBinaryLabelmap(outcome.nodes.segmentation, "GTV", mri)
    np.testing.assert_array_equal(gtv > 0, engine_labels == 1)
    assert outcome.predicted_stage in ("T1", "T2", "T3", "T4")
    assert sum(outcome.stage_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    table = outcome.nodes.probability_table.GetTable()
    assert [table.GetValueByName(r, results.STAGE_COLUMN).ToString() for r in range(table.GetNumberOfRows())] == \
        ["T1", "T2", "T3", "T4"]
    assert outcome.nodes.gradcam is not None
    assert outcome.nodes.volume_table.GetTable().GetNumberOfRows() == 1


def test_a_ct_is_refused_and_the_scene_is_unchanged(headless, npc_trained, tmp_path):
    from engine.io.image import write_image
    from engine.synth import generate_case

    write_image(generate_case("gtv", 1, "small").channels[0], tmp_path / "ct.nii.gz")
    ct = headless.load_volume(tmp_path / "ct.nii.gz", "A CT")
    logic = TaskLogic(TASK, scene=headless.scene, launcher=InProcessLauncher())
    before = headless.snapshot()
    with pytest.raises(RuntimeError, match="CT"):
        logic.process(ct, RunOptions(model=str(npc_trained.bundle_dir), device="cpu", tta="none"))
    assert headless.snapshot() == before

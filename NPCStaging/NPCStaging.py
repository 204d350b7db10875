"""NPCStaging: Segment & Stage nasopharyngeal carcinoma on contrast-enhanced T1 MRI inside 3D Slicer.

This module only names its task and its panel: the panel is :class:`OncoStagingCommon.widget.TaskWidget`
with ``Resources/UI/NPCStaging.ui``, the work is :class:`OncoStagingCommon.logic.TaskLogic`, and labels,
stages and options come from the ``npc`` task in :mod:`engine.tasks`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import slicer
from OncoStagingCommon.widget import TaskWidget
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

log = logging.getLogger(__name__)

TASK = "npc"
METHOD = ("a multi-task network: a 3D U-Net segments the GTV, its probability map × the MRI feeds a 3D Bottleneck "
          "Transformer (ResNet-50 with relative-position self-attention in its last blocks), and a "
          "feature-fusion-aware module joins the segmentation and staging features for the T-stage "
          "(transformer-based multi-task GTV segmentation and T-staging of nasopharyngeal carcinoma on MRI)")
#: A model small enough for the self-test to train in seconds on a CPU (not accurate).
TINY_TRAINING = ["--steps-per-epoch", "2", "--batch-size", "2", "--unet-width", "8", "--unet-max-width", "16",
                 "--stage-width", "8", "--fold", "all", "--target-spacing", "6", "3.28", "3.28"]


class NPCStaging(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NPC Staging"
        self.parent.categories = ["Oncology"]
        self.parent.dependencies = []
        self.parent.contributors = ["OncoStaging contributors"]
        self.parent.helpText = (
            "Outlines the gross tumour volume (GTV) of a nasopharyngeal carcinoma on a contrast-enhanced T1 MRI, "
            "estimates the T-stage (T1-T4) with probabilities and shows a Grad-CAM heat map of what the staging "
            "network looked at. Pick the MRI, a model and click <b>Segment &amp; Stage</b>; a CT is refused. "
            "The training panel trains a model on your own data (nnU-Net raw dataset layout + stages.csv)."
            "<p><b>For research use only. Not for clinical diagnosis or treatment decisions.</b> "
            "The demo model is trained on synthetic phantoms and has never seen a real MRI.</p>"
            f"<p>Method: {METHOD}.</p>")
        self.parent.acknowledgementText = f"Method: {METHOD}. Built on PyTorch, MONAI and SimpleITK."


class NPCStagingWidget(TaskWidget):
    TASK = TASK
    UI_FILE = "UI/NPCStaging.ui"


class NPCStagingTest(ScriptedLoadableModuleTest):
    """Runs in real Slicer (Developer mode → Reload and Test): Segment & Stage on a phantom MRI."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_stage_on_a_phantom()

    def test_segment_and_stage_on_a_phantom(self):
        import tempfile

        from OncoStagingCommon.logic import RunOptions, TaskInputError, TaskLogic, TrainingRequest

        from engine.synth import generate_dataset
        from engine.tasks import get_task

        task = get_task(TASK)
        root = Path(tempfile.mkdtemp(prefix="NPCStagingTest-"))
        dataset = generate_dataset(TASK, root / "data", cases=4, seed=5)
        logic = TaskLogic(TASK)
        try:
            model = logic.resolve_model(None).path  # the shipped demo model (or a newer installed one)
        except TaskInputError:
            self.delayDisplay("No NPCStaging model installed: training a tiny one on phantoms (CPU, seconds)")
            model = logic.train(TrainingRequest(dataset=root / "data", model_name="self-test", epochs=1,
                                                device="cpu", out_dir=root / "model", extra_args=TINY_TRAINING))

        self.delayDisplay("Segment & Stage in a background process")
        volume = slicer.util.loadVolume(str(dataset.training[0].image_files[0]))
        outcome = logic.process(volume, RunOptions(model=str(model), device="cpu"), wait=True)
        self.assertEqual(outcome.nodes.segmentation.GetSegmentation().GetNumberOfSegments(), len(task.labels))
        self.assertIn(outcome.predicted_stage, task.stage_names)
        self.assertAlmostEqual(sum(outcome.stage_probabilities.values()), 1.0, places=5)
        self.assertIsNotNone(outcome.nodes.gradcam)
        self.delayDisplay("Test passed")

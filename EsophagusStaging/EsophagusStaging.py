"""EsophagusStaging: Segment & Stage esophageal cancer on CT (nn-TransEC) inside 3D Slicer.

This module only names its task and its panel: the panel is :class:`OncoStagingCommon.widget.TaskWidget`
with ``Resources/UI/EsophagusStaging.ui``, the work is :class:`OncoStagingCommon.logic.TaskLogic`, and
labels, stages and options come from the ``esophagus`` task in :mod:`engine.tasks`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from OncoStagingCommon.widget import TaskWidget

log = logging.getLogger(__name__)

TASK = "esophagus"
PAPER = "Segmentation prompts classification: nnU-Net-based 3D transfer learning with ROI tokenization and cross-task attention for esophageal cancer T-stage diagnosis (nn-TransEC)"  # noqa: E501
#: A model small enough for the self-test to train in about a minute on a CPU (not accurate).
TINY_TRAINING = ["--lowres-epochs", "1", "--fullres-epochs", "1", "--classifier-epochs", "1", "--steps-per-epoch",
                 "2", "--base-features", "4", "--max-features", "8", "--folds", "4", "--fold", "0",
                 "--val-every", "1", "--seed", "1", "--target-spacing", "6.0", "3.9", "3.9"]


class EsophagusStaging(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Esophagus Staging"
        self.parent.categories = ["Oncology"]
        self.parent.dependencies = []
        self.parent.contributors = ["OncoStaging contributors"]
        self.parent.helpText = (
            "Segments esophageal cancer, aorta, esophagus, lymph nodes and pericardium on a thoracic CT, "
            "predicts the T-stage (T1-T4) with probabilities and shows a Grad-CAM heat map of what the "
            "staging network looked at. Pick a CT, a model and click <b>Segment &amp; Stage</b>. "
            "The training panel trains a model on your own data (nnU-Net raw dataset layout + stages.csv). "
            "The <b>Treatment outcome (PET)</b> panel segments the tumour on an FDG PET and predicts the "
            "pathology and the treatment outcome with SUVmax/SUVmean/SUVpeak, MTV and TLG."
            "<p><b>For research use only. Not for clinical diagnosis or treatment decisions.</b> "
            "The demo model is trained on synthetic phantoms.</p>"
            f"<p>Method: <i>{PAPER}</i>.</p>")
        self.parent.acknowledgementText = (
            "Method: " + PAPER + ". Built on PyTorch, MONAI and SimpleITK.")


class EsophagusStagingWidget(TaskWidget):
    TASK = TASK
    UI_FILE = "UI/EsophagusStaging.ui"

    def setup(self):
        """The CT staging panel, then the optional treatment-outcome (PET) panel below it."""
        TaskWidget.setup(self)
        from OncoStagingCommon.pet_panel import PetOutcomePanel

        self.petPanel = PetOutcomePanel(self.layout)

    def cleanup(self):
        if getattr(self, "petPanel", None) is not None:
            self.petPanel.cleanup()
        TaskWidget.cleanup(self)


class EsophagusStagingTest(ScriptedLoadableModuleTest):
    """Runs in real Slicer (Developer mode → Reload and Test): Segment & Stage on a phantom CT."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_stage_on_a_phantom()

    def test_segment_and_stage_on_a_phantom(self):
        import tempfile

        from engine.synth import generate_dataset
        from engine.tasks import get_task
        from OncoStagingCommon.logic import RunOptions, TaskInputError, TaskLogic, TrainingRequest

        task = get_task(TASK)
        root = Path(tempfile.mkdtemp(prefix="EsophagusStagingTest-"))
        dataset = generate_dataset(TASK, root / "data", cases=8, seed=5)
        logic = TaskLogic(TASK)
        try:
            model = logic.resolve_model(None).path  # the shipped demo model (or a newer installed one)
        except TaskInputError:
            self.delayDisplay("No EsophagusStaging model installed: training a tiny one on phantoms (CPU, ~1 min)")
            model = logic.train(TrainingRequest(dataset=root / "data", model_name="self-test", epochs=1,
                                                device="cpu", out_dir=root / "model", extra_args=TINY_TRAINING))

        self.delayDisplay("Segment & Stage in a background process")
        volume = slicer.util.loadVolume(str(dataset.training[0].image_files[0]))
        outcome = logic.process(volume, RunOptions(model=str(model), device="cpu"), wait=True)
        segmentation = outcome.nodes.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(task.labels))
        self.assertIn(outcome.predicted_stage, task.stage_names)
        self.assertAlmostEqual(sum(outcome.stage_probabilities.values()), 1.0, places=5)
        self.assertIsNotNone(outcome.nodes.gradcam)
        self.assertEqual(outcome.nodes.volume_table.GetNumberOfRows(), len(task.labels))

        self.delayDisplay("Re-run replaces the previous results")
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic.process(volume, RunOptions(model=str(model), device="cpu"), wait=True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")

"""GTVSeg: gross tumour volume (GTV) segmentation on CT, slice by slice, inside 3D Slicer.

This module only names its task and its panel: the panel is :class:`OncoStagingCommon.widget.TaskWidget`
with ``Resources/UI/GTVSeg.ui``, the work is :class:`OncoStagingCommon.logic.TaskLogic`, and labels
and options come from the ``gtv`` task in :mod:`engine.tasks` (one label, "GTV"; no stages).
"""

from __future__ import annotations

import logging

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from OncoStagingCommon.widget import TaskWidget

log = logging.getLogger(__name__)

TASK = "gtv"
METHOD = ("a heterogeneous cascade framework (HCF: ResNet-18 slice classifier, then the multi-level Spatial "
          "Alignment Network SANet on the slices it keeps), or the one-network ResFormer "
          "(Shi et al., decoupled GTV segmentation on CT)")


class GTVSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "GTV Segmentation"
        self.parent.categories = ["Oncology"]
        self.parent.dependencies = []
        self.parent.contributors = ["OncoStaging contributors"]
        self.parent.helpText = (
            "Segments the gross tumour volume (GTV) on a CT, slice by slice: a slice classifier gives every "
            "axial slice a tumour probability, and the SANet segmenter outlines the GTV on the slices whose "
            "probability reaches the threshold (0.5); ResFormer, one network doing both, is the alternative. "
            "Shows the GTV in 2D and 3D, its volume, a Grad-CAM heat map of the slice classifier (stacked "
            "to 3D) and a chart of the per-slice probabilities. Pick a CT, a model and click "
            "<b>Segment</b>. The training panel trains a model on your own data (nnU-Net raw dataset layout)."
            "<p><b>For research use only. Not for clinical diagnosis or treatment decisions.</b> "
            "The shipped model is trained on the OpenKBP head-and-neck CTs, with their PTV70 target volumes "
            "as the label: a dose target around the tumour, not a delineated GTV.</p>"
            f"<p>Method: {METHOD}.</p>")
        self.parent.acknowledgementText = (
            f"Method: {METHOD}. Training data: OpenKBP challenge (Babier et al., Med Phys 2021). "
            "Built on PyTorch, MONAI and SimpleITK.")


class GTVSegWidget(TaskWidget):
    TASK = TASK
    UI_FILE = "UI/GTVSeg.ui"


class GTVSegTest(ScriptedLoadableModuleTest):
    """Runs in real Slicer (Developer mode → Reload and Test): Segment a phantom CT with an installed model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_a_phantom()

    def test_segment_a_phantom(self):
        import tempfile
        from pathlib import Path

        from engine.io.image import write_image
        from engine.synth import generate_case
        from OncoStagingCommon.logic import RunOptions, TaskInputError, TaskLogic

        logic = TaskLogic(TASK)
        try:
            model = logic.resolve_model(None).path
        except TaskInputError:
            self.delayDisplay("No GTVSeg model installed: import one with 'Import model…' first; test skipped")
            return
        self.delayDisplay("Segment in a background process")
        ct_file = Path(tempfile.mkdtemp(prefix="GTVSegTest-")) / "phantom_ct.nii.gz"
        write_image(generate_case(TASK, 3, "small").channels[0], ct_file)
        volume = slicer.util.loadVolume(str(ct_file))
        outcome = logic.process(volume, RunOptions(model=str(model), device="cpu"), wait=True)
        self.assertEqual(outcome.nodes.segmentation.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(len(outcome.slice_probabilities), volume.GetImageData().GetDimensions()[2])
        self.assertIsNotNone(outcome.nodes.slice_chart)
        self.assertIsNone(outcome.nodes.probability_table)
        self.delayDisplay("Test passed")

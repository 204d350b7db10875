"""EsophagusStaging: Segment & Stage esophageal cancer on CT (nn-TransEC) inside 3D Slicer.

This file holds only what needs Qt or the Slicer application: module metadata, the panel
(``Resources/UI/EsophagusStaging.ui``), the first-use dependency check and the self-test. All the
work is in :mod:`EsophagusStagingLib.logic` (Qt-free, tested headless) and the shared
:mod:`OncoStagingCommon` package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

log = logging.getLogger(__name__)

POLL_INTERVAL_MS = 200
PAPER = "Segmentation prompts classification: nnU-Net-based 3D transfer learning with ROI tokenization and cross-task attention for esophageal cancer T-stage diagnosis (nn-TransEC)"  # noqa: E501


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
            "The training panel trains a model on your own data (nnU-Net raw dataset layout + stages.csv)."
            "<p><b>For research use only. Not for clinical diagnosis or treatment decisions.</b> "
            "The demo model is trained on synthetic phantoms.</p>"
            f"<p>Method: <i>{PAPER}</i>.</p>")
        self.parent.acknowledgementText = (
            "Method: " + PAPER + ". Built on PyTorch, MONAI and SimpleITK.")


def _ensure_dependencies() -> bool:
    """On first use: offer PyTorch (PyTorchUtils) and install the engine's other requirements."""
    from OncoStagingCommon import dependencies

    status = dependencies.check()
    if status.ready:
        return True
    if status.torch_missing:
        try:
            import PyTorchUtils  # noqa: F401  (from the PyTorch extension)

            torch_logic = slicer.modules.pytorchutils.widgetRepresentation().self().logic
        except (ImportError, AttributeError):
            slicer.util.errorDisplay("PyTorch is needed. Install the 'PyTorch' extension from the Extensions "
                                     "Manager, restart Slicer, and open this module again.")
            return False
        if not slicer.util.confirmOkCancelDisplay("PyTorch is not installed. Install it now with PyTorch Utils? "
                                                  "This downloads about 1-3 GB."):
            return False
        torch_logic.installTorch(askConfirmation=False)
    if status.missing:
        if not slicer.util.confirmOkCancelDisplay(
                "EsophagusStaging needs these Python packages:\n" + "\n".join(status.missing)
                + "\n\nInstall them now? (Slicer's own NumPy, VTK and SimpleITK are left as they are.)"):
            return False
        with _busy():
            dependencies.install(status.missing)
    return dependencies.check().ready


class _busy:
    def __enter__(self):
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)

    def __exit__(self, *exc):
        qt.QApplication.restoreOverrideCursor()


@parameterNodeWrapper
class EsophagusStagingParameterNode:
    """GUI state saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: str = "auto"
    gradcam: bool = True
    mirrorSegmentation: bool = True
    gradcamOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = 50
    trainingModelName: str = "my-esophagus-model"


class EsophagusStagingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._trainingJob = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

    # ------------------------------------------------------------------ setup

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from EsophagusStagingLib.logic import EsophagusStagingLogic

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/EsophagusStaging.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = EsophagusStagingLogic()

        for value, text in (("auto", "Auto"), ("cpu", "CPU"), ("cuda", "GPU (CUDA)")):
            self.ui.deviceComboBox.addItem(text, value)
            self.ui.trainingDeviceComboBox.addItem(text, value)
        self.ui.stageLabel.setStyleSheet("font-size: 28pt; font-weight: bold;")
        self.ui.resultsCollapsibleButton.collapsed = True
        self.ui.trainingCollapsibleButton.collapsed = True

        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3D)
        self.ui.gradcamVisibleCheckBox.connect("toggled(bool)", self.onGradcamVisible)
        self.ui.gradcamOpacitySlider.connect("valueChanged(double)", self.onGradcamOpacity)
        self.ui.exportSegButton.connect("clicked(bool)", self.onExportSeg)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.showChartButton.connect("clicked(bool)", self.onShowChart)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self.ui.deviceInfoLabel.text = self.logic.detect_devices().description if _torch_importable() else \
            "PyTorch not installed yet"
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        self._timer.stop()
        if self._job is not None:
            self.logic.cancel(self._job)
        if self._trainingJob is not None:
            self.logic.stop_training(self._trainingJob)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(EsophagusStagingParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, node):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._selectData(self.ui.modelComboBox, self._parameterNode.modelPath)
            self._selectData(self.ui.deviceComboBox, self._parameterNode.device)
            self.showResults()

    @staticmethod
    def _selectData(combo, value):
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    # ------------------------------------------------------------------ models and options

    def refreshModels(self, select=None):
        from EsophagusStagingLib.logic import StagingInputError

        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        try:
            self._cards = self.logic.model_cards()
        except (StagingInputError, OSError, ImportError) as exc:
            self._cards = []
            self.ui.modelCardLabel.text = str(exc)
        for card in self._cards:
            self.ui.modelComboBox.addItem(card.label, str(card.path))
        self.ui.modelComboBox.blockSignals(False)
        if select:
            self._selectData(self.ui.modelComboBox, str(select))
        self.onModelChanged()

    def currentCard(self):
        path = self.ui.modelComboBox.currentData
        return next((c for c in getattr(self, "_cards", []) if str(c.path) == path), None)

    def onModelChanged(self, *_):
        card = self.currentCard()
        if card is None:
            self.ui.modelCardLabel.text = "No model installed: use 'Import model…' or train one below."
        else:
            self.ui.modelCardLabel.text = (f"<b>{card.name}</b> version {card.version}<br>"
                                           f"Training data: {card.training_data}<br>"
                                           + (f"Staging: mean of {card.stage_classifiers} classifiers<br>"
                                              if card.stage_classifiers > 1 else "")
                                           + f"Intended use: {card.intended_use}")
            if self._parameterNode:
                self._parameterNode.modelPath = str(card.path)
        self.updateButtons()

    def onDeviceChanged(self, *_):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.currentData

    def onImportModel(self):
        from EsophagusStagingLib.logic import StagingInputError

        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import model bundle", "",
                                              "Model bundle (*.zip)")
        if not path:
            return
        try:
            card = self.logic.import_model(path)
        except StagingInputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.refreshModels(select=card.path)

    def onInputChanged(self, *_):
        self.showResults()
        self.updateButtons()

    def updateButtons(self):
        running = self._job is not None
        volume = self.ui.inputVolumeSelector.currentNode()
        self.ui.applyButton.text = "Cancel" if running else "Segment && Stage"
        self.ui.applyButton.enabled = running or (volume is not None and self.currentCard() is not None)
        self.ui.applyButton.toolTip = "" if self.ui.applyButton.enabled else "Choose a CT volume and a model."
        training = self._trainingJob is not None
        self.ui.trainButton.enabled = not training
        self.ui.stopTrainingButton.enabled = training

    # ------------------------------------------------------------------ Segment & Stage

    def onApplyOrCancel(self):
        if self._job is not None:
            self.logic.cancel(self._job)
            self._job = None
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
            self.ui.progressBar.value = 0
            self.updateButtons()
            return
        if not _ensure_dependencies():
            return
        from EsophagusStagingLib.logic import StagingInputError, StagingOptions

        options = StagingOptions(model=self._parameterNode.modelPath or None,
                                 device=self.ui.deviceComboBox.currentData, gradcam=self.ui.gradcamCheckBox.checked,
                                 gradcam_opacity=self.ui.gradcamOpacitySlider.value,
                                 tta="all" if self.ui.mirrorSegmentationCheckBox.checked else "stage")
        try:
            self._job = self.logic.start(self.ui.inputVolumeSelector.currentNode(), options,
                                         on_progress=self.onProgress)
        except StagingInputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting the engine…"
        self._timer.start()
        self.updateButtons()

    def onProgress(self, progress):
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.statusLabel.text = progress.message

    def onPoll(self):
        from OncoStagingCommon.process import JobState

        if self._job is not None and self.logic.poll(self._job) is not JobState.RUNNING:
            job, self._job = self._job, None
            if job.state is JobState.SUCCEEDED:
                self.showResults()
                self.ui.resultsCollapsibleButton.collapsed = False
                slicer.util.resetSliceViews()
            elif job.state is JobState.FAILED:
                self.ui.statusLabel.text = "Failed."
                slicer.util.errorDisplay(f"Segment & Stage failed:\n{job.error}")
            self.updateButtons()
        if self._trainingJob is not None:
            self.pollTraining()
        if self._job is None and self._trainingJob is None:
            self._timer.stop()

    def currentOutcome(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        return self.logic.results_for(volume) if volume is not None and self.logic else None

    def showResults(self):
        outcome = self.currentOutcome()
        has = outcome is not None
        for w in (self.ui.show3DCheckBox, self.ui.gradcamVisibleCheckBox, self.ui.gradcamOpacitySlider,
                  self.ui.exportSegButton, self.ui.showChartButton):
            w.enabled = has
        self.ui.exportDicomSegButton.enabled = has and _from_dicom(self.ui.inputVolumeSelector.currentNode())
        if not has:
            self.ui.stageLabel.text = "–"
            self.ui.warningsLabel.text = ""
            self.ui.probabilityTableView.setMRMLTableNode(None)
            self.ui.volumeTableView.setMRMLTableNode(None)
            return
        self.ui.stageLabel.text = outcome.predicted_stage
        self.ui.probabilityTableView.setMRMLTableNode(outcome.nodes.probability_table)
        self.ui.volumeTableView.setMRMLTableNode(outcome.nodes.volume_table)
        warnings = outcome.warnings + [f"Model: {outcome.report.get('model', {}).get('intended_use', '')}"]
        self.ui.warningsLabel.text = "\n".join(f"⚠ {w}" for w in warnings if w)
        self.ui.gradcamVisibleCheckBox.enabled = outcome.nodes.gradcam is not None
        self.ui.gradcamOpacitySlider.enabled = outcome.nodes.gradcam is not None
        self.onShowChart()

    def onShow3D(self, visible):
        from OncoStagingCommon import results

        outcome = self.currentOutcome()
        if outcome:
            results.set_surfaces_visible(outcome.nodes.segmentation, visible)

    def onGradcamVisible(self, visible):
        from OncoStagingCommon import results

        outcome = self.currentOutcome()
        if outcome and outcome.nodes.gradcam is not None:
            results.show_gradcam_in_slice_views(slicer.mrmlScene, self.ui.inputVolumeSelector.currentNode(),
                                                outcome.nodes.gradcam if visible else None,
                                                self.ui.gradcamOpacitySlider.value)

    def onGradcamOpacity(self, value):
        from OncoStagingCommon import results

        outcome = self.currentOutcome()
        if outcome and outcome.nodes.gradcam is not None:
            results.set_gradcam_opacity(slicer.mrmlScene, outcome.nodes.gradcam, value)

    def onShowChart(self):
        outcome = self.currentOutcome()
        if outcome:
            slicer.modules.plots.logic().ShowChartInLayout(outcome.nodes.probability_chart)

    def onExportSeg(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export segmentation",
                                              f"{volume.GetName()}.seg.nrrd", "Slicer segmentation (*.seg.nrrd)")
        if path:
            if not path.endswith(".seg.nrrd"):
                path += ".seg.nrrd"
            self.logic.export_segmentation(volume, path)
            self.ui.statusLabel.text = f"Saved {path}"

    def onExportDicomSeg(self):
        """DICOM SEG through Slicer's DICOM export (needs the input's DICOM study in the database)."""
        outcome = self.currentOutcome()
        if not outcome:
            return
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        item = sh.GetItemByDataNode(outcome.nodes.segmentation)
        try:
            import DICOMSegmentationPlugin  # noqa: F401  (QuantitativeReporting / Slicer's DICOM plugins)
        except ImportError:
            slicer.util.errorDisplay("DICOM SEG export needs the QuantitativeReporting extension.")
            return
        exportDialog = slicer.qSlicerDICOMExportDialog()
        exportDialog.setMRMLScene(slicer.mrmlScene)
        exportDialog.execDialog(item)

    # ------------------------------------------------------------------ training

    def onTrain(self):
        from EsophagusStagingLib.logic import StagingInputError, TrainingRequest

        if not _ensure_dependencies():
            return
        if self.ui.fineTuneCheckBox.checked and not self.ui.modelComboBox.currentData:
            slicer.util.errorDisplay("Select the model to fine-tune under Segment & Stage, or untick "
                                     "'Fine-tune the selected model'.")
            return
        request = TrainingRequest(dataset=self.ui.datasetPathLineEdit.currentPath,
                                  model_name=self.ui.modelNameLineEdit.text, epochs=self.ui.epochsSpinBox.value,
                                  device=self.ui.trainingDeviceComboBox.currentData,
                                  resume=self.ui.resumeTrainingCheckBox.checked,
                                  start_from=self.ui.modelComboBox.currentData
                                  if self.ui.fineTuneCheckBox.checked else None)
        try:
            self._trainingJob = self.logic.start_training(request, on_event=self.onTrainingEvent)
        except StagingInputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.trainingStatusLabel.text = "Validating the dataset…"
        self.ui.trainingProgressBar.value = 0
        self._timer.start()
        self.updateButtons()

    def onTrainingEvent(self, event):
        from EsophagusStagingLib.logic import describe_training_event

        progress = describe_training_event(event)
        self.ui.trainingProgressBar.value = int(100 * progress.fraction)
        self.ui.trainingStatusLabel.text = progress.message

    def pollTraining(self):
        from OncoStagingCommon.process import JobState

        state = self.logic.poll_training(self._trainingJob)
        if state is JobState.RUNNING:
            return
        job, self._trainingJob = self._trainingJob, None
        if state is JobState.SUCCEEDED:
            self.ui.trainingStatusLabel.text = f"Model written to {job.out_dir}"
            self.refreshModels(select=job.out_dir)
        elif state is JobState.FAILED:
            self.ui.trainingStatusLabel.text = "Training failed."
            slicer.util.errorDisplay(job.error or "Training failed.")
        self.updateButtons()

    def onStopTraining(self):
        if self._trainingJob is not None:
            self.logic.stop_training(self._trainingJob)
            self._trainingJob = None
            self.ui.trainingStatusLabel.text = ("Stopped; no model was written. Tick 'Resume a stopped run' and "
                                                "train again with the same name to continue.")
            self.updateButtons()


def _torch_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _from_dicom(volume) -> bool:
    from OncoStagingCommon.results import came_from_dicom

    return volume is not None and came_from_dicom(volume)


class EsophagusStagingTest(ScriptedLoadableModuleTest):
    """Runs in real Slicer (Developer mode → Reload and Test): Segment & Stage on a phantom CT."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_stage_on_a_phantom()

    def test_segment_and_stage_on_a_phantom(self):
        import tempfile

        from engine.errors import EngineError
        from engine.pipelines import esophagus
        from engine.planning import extract_fingerprint, make_plan
        from engine.registry import find_bundle
        from engine.synth import generate_dataset
        from EsophagusStagingLib.logic import EsophagusStagingLogic, StagingOptions

        root = Path(tempfile.mkdtemp(prefix="EsophagusStagingTest-"))
        dataset = generate_dataset("esophagus", root / "data", cases=8, seed=5)
        try:
            bundle = find_bundle("esophagus")  # the shipped demo model (or a newer installed one)
        except EngineError:
            self.delayDisplay("No EsophagusStaging model installed: training a tiny one on phantoms (CPU, ~1 min)")
            plan = make_plan(extract_fingerprint(dataset), "esophagus", spacing=(6.0, 3.9, 3.9))
            options = esophagus.TrainOptions(lowres_epochs=1, fullres_epochs=1, classifier_epochs=1,
                                             steps_per_epoch=2, base_features=4, max_features=8, folds=4, fold=0,
                                             val_every=1, device="cpu", seed=1)
            bundle = esophagus.train(root / "data", root / "model", options, plan=plan)

        self.delayDisplay("Segment & Stage in a background process")
        volume = slicer.util.loadVolume(str(dataset.training[0].image_files[0]))
        logic = EsophagusStagingLogic()
        outcome = logic.process(volume, StagingOptions(model=str(bundle.path), device="cpu"), wait=True)
        segmentation = outcome.nodes.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 5)
        self.assertIn(outcome.predicted_stage, ("T1", "T2", "T3", "T4"))
        self.assertAlmostEqual(sum(outcome.stage_probabilities.values()), 1.0, places=5)
        self.assertIsNotNone(outcome.nodes.gradcam)
        self.assertEqual(outcome.nodes.volume_table.GetNumberOfRows(), 5)

        self.delayDisplay("Re-run replaces the previous results")
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic.process(volume, StagingOptions(model=str(bundle.path), device="cpu"), wait=True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")

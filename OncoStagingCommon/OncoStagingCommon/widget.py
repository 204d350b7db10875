"""The panel every OncoStaging module shows: a :class:`TaskWidget` subclass names its task and .ui file.

The only file of this package that imports Qt; it runs in the Slicer application only. All the
work is in :class:`OncoStagingCommon.logic.TaskLogic` (tested headless). A module's .ui must hold
every ``self.ui.<name>`` widget used here; the stage widgets (stage label, probability table,
chart button) are hidden for a task without stages. For such a task, a run whose report has
``slice_probabilities`` fills the same place with the slice table and chart (the module's .ui
words its captions), and the run button says "Segment" instead of "Segment & Stage".
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import qt
import slicer
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from engine.tasks import DEVICE_CHOICES
from OncoStagingCommon import dependencies, results
from OncoStagingCommon.logic import (
    DeviceInfo,
    RunOptions,
    TaskInputError,
    TaskLogic,
    TrainingRequest,
    describe_training_event,
)
from OncoStagingCommon.process import JobState

log = logging.getLogger(__name__)

POLL_INTERVAL_MS = 200
DEVICE_TEXT = {"auto": "Auto", "cpu": "CPU", "cuda": "GPU (CUDA)"}


@parameterNodeWrapper
class TaskParameterNode:
    """GUI state saved with the scene (one parameter node per module; the fields are shared)."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: str = "auto"
    gradcam: bool = True
    mirrorSegmentation: bool = True
    gradcamOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = 50
    trainingModelName: str = ""


class _busy:
    def __enter__(self):
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)

    def __exit__(self, *exc):
        qt.QApplication.restoreOverrideCursor()


def ensure_dependencies(module_name: str) -> bool:
    """On first use: offer PyTorch (PyTorchUtils) and install the engine's other requirements."""
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
                f"{module_name} needs these Python packages:\n" + "\n".join(status.missing)
                + "\n\nInstall them now? (Slicer's own NumPy, VTK and SimpleITK are left as they are.)"):
            return False
        with _busy():
            dependencies.install(status.missing)
    return dependencies.check().ready


def select_data(combo: Any, value: Any) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


class TaskWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Segment & Stage, results and training panels of one task. Subclasses set :attr:`TASK` (and
    :attr:`UI_FILE` when the .ui is not ``Resources/UI/<Module>.ui``)."""

    TASK: str = ""
    UI_FILE: str | None = None

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: TaskLogic | None = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._trainingJob = None
        self._deviceProbe = None
        self._deviceProbeLines = []
        self._cards = []
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

    def createLogic(self) -> TaskLogic:
        return TaskLogic(self.TASK, module_name=self.moduleName)

    # ------------------------------------------------------------------ setup

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(self.UI_FILE or f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()

        for value in DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(DEVICE_TEXT.get(value, value.upper()), value)
            self.ui.trainingDeviceComboBox.addItem(DEVICE_TEXT.get(value, value.upper()), value)
        self.ui.stageLabel.setStyleSheet("font-size: 28pt; font-weight: bold;")
        for w in (self.ui.stageCaptionLabel, self.ui.stageLabel):
            w.visible = self.logic.has_stages
        self.setChartPlaceVisible(self.logic.has_stages)
        self.ui.fineTuneCheckBox.visible = self.logic.can_fine_tune
        self.ui.resultsCollapsibleButton.collapsed = True
        self.ui.trainingCollapsibleButton.collapsed = True

        for widget, signal, slot in (
                (self.ui.applyButton, "clicked(bool)", self.onApplyOrCancel),
                (self.ui.importModelButton, "clicked(bool)", self.onImportModel),
                (self.ui.modelComboBox, "currentIndexChanged(int)", self.onModelChanged),
                (self.ui.deviceComboBox, "currentIndexChanged(int)", self.onDeviceChanged),
                (self.ui.show3DCheckBox, "toggled(bool)", self.onShow3D),
                (self.ui.gradcamVisibleCheckBox, "toggled(bool)", self.onGradcamVisible),
                (self.ui.gradcamOpacitySlider, "valueChanged(double)", self.onGradcamOpacity),
                (self.ui.exportSegButton, "clicked(bool)", self.onExportSeg),
                (self.ui.exportDicomSegButton, "clicked(bool)", self.onExportDicomSeg),
                (self.ui.showChartButton, "clicked(bool)", self.onShowChart),
                (self.ui.trainButton, "clicked(bool)", self.onTrain),
                (self.ui.stopTrainingButton, "clicked(bool)", self.onStopTraining),
                (self.ui.inputVolumeSelector, "currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)):
            widget.connect(signal, slot)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self.ui.deviceInfoLabel.text = "Looking for a GPU…"
        self._deviceProbe = self.logic.start_device_probe()
        self._timer.start()
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        self._timer.stop()
        if self._job is not None:
            self.logic.cancel(self._job)
        if self._trainingJob is not None:
            self.logic.stop_training(self._trainingJob)
        if self._deviceProbe is not None:
            self._deviceProbe.kill_tree()

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
        self.setParameterNode(TaskParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.trainingModelName:
            self._parameterNode.trainingModelName = f"my-{self.logic.task.name}-model"
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
            select_data(self.ui.modelComboBox, self._parameterNode.modelPath)
            select_data(self.ui.deviceComboBox, self._parameterNode.device)
            self.showResults()

    # ------------------------------------------------------------------ models and options

    def refreshModels(self, select=None):
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        try:
            self._cards = self.logic.model_cards()
        except (TaskInputError, OSError, ImportError) as exc:
            self._cards = []
            self.ui.modelCardLabel.text = str(exc)
        for card in self._cards:
            self.ui.modelComboBox.addItem(card.label, str(card.path))
        self.ui.modelComboBox.blockSignals(False)
        if select:
            select_data(self.ui.modelComboBox, str(select))
        self.onModelChanged()

    def currentCard(self):
        path = self.ui.modelComboBox.currentData
        return next((c for c in self._cards if str(c.path) == path), None)

    def onModelChanged(self, *_):
        card = self.currentCard()
        if card is None:
            self.ui.modelCardLabel.text = "No model installed: use 'Import model…' or train one below."
        else:
            what = "Staging: mean of {} classifiers" if self.logic.has_stages else "Ensemble of {} models"
            self.ui.modelCardLabel.text = (f"<b>{card.name}</b> version {card.version}<br>"
                                           f"Training data: {card.training_data}<br>"
                                           + (what.format(card.ensemble_members) + "<br>"
                                              if card.ensemble_members > 1 else "")
                                           + f"Intended use: {card.intended_use}")
            if self._parameterNode:
                self._parameterNode.modelPath = str(card.path)
        self.updateButtons()

    def onDeviceChanged(self, *_):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.currentData

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import model bundle", "",
                                              "Model bundle (*.zip)")
        if not path:
            return
        try:
            card = self.logic.import_model(path)
        except TaskInputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.refreshModels(select=card.path)

    def onInputChanged(self, *_):
        self.showResults()
        self.updateButtons()

    def updateButtons(self):
        running = self._job is not None
        volume = self.ui.inputVolumeSelector.currentNode()
        self.ui.applyButton.text = "Cancel" if running else self.logic.action_name.replace("&", "&&")
        self.ui.applyButton.enabled = running or (volume is not None and self.currentCard() is not None)
        self.ui.applyButton.toolTip = "" if self.ui.applyButton.enabled else \
            f"Choose a {self.logic.task.modality} volume and a model."
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
        if not ensure_dependencies(self.moduleName):
            return
        options = RunOptions(model=self._parameterNode.modelPath or None,
                             device=self.ui.deviceComboBox.currentData, gradcam=self.ui.gradcamCheckBox.checked,
                             gradcam_opacity=self.ui.gradcamOpacitySlider.value,
                             tta="all" if self.ui.mirrorSegmentationCheckBox.checked else "stage")
        try:
            self._job = self.logic.start(self.ui.inputVolumeSelector.currentNode(), options,
                                         on_progress=self.onProgress)
        except TaskInputError as exc:
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
        if self._job is not None and self.logic.poll(self._job) is not JobState.RUNNING:
            job, self._job = self._job, None
            if job.state is JobState.SUCCEEDED:
                self.showResults()
                self.ui.resultsCollapsibleButton.collapsed = False
                slicer.util.resetSliceViews()
            elif job.state is JobState.FAILED:
                self.ui.statusLabel.text = "Failed."
                slicer.util.errorDisplay(f"{self.logic.action_name} failed:\n{job.error}")
            self.updateButtons()
        if self._trainingJob is not None:
            self.pollTraining()
        if self._deviceProbe is not None:
            self.pollDeviceProbe()
        if self._job is None and self._trainingJob is None and self._deviceProbe is None:
            self._timer.stop()

    def pollDeviceProbe(self):
        finished = self._deviceProbe.poll() is not None
        self._deviceProbeLines += self._deviceProbe.read_lines()
        if finished:
            self.ui.deviceInfoLabel.text = DeviceInfo.from_probe(self._deviceProbeLines).description
            self._deviceProbe, self._deviceProbeLines = None, []

    def currentOutcome(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        return self.logic.results_for(volume) if volume is not None and self.logic else None

    def setChartPlaceVisible(self, visible: bool) -> None:
        """The probability caption, table and chart button: stage probabilities, or slice probabilities."""
        for w in (self.ui.probabilityCaptionLabel, self.ui.probabilityTableView, self.ui.showChartButton):
            w.visible = bool(visible)

    @staticmethod
    def chartNodes(outcome) -> tuple[Any, Any]:
        """The (table, chart) the panel shows: the stage probabilities, else the slice probabilities."""
        if outcome is None:
            return None, None
        nodes = outcome.nodes
        if nodes.probability_chart is not None:
            return nodes.probability_table, nodes.probability_chart
        return nodes.slice_table, nodes.slice_chart

    def showResults(self):
        outcome = self.currentOutcome()
        has = outcome is not None
        for w in (self.ui.show3DCheckBox, self.ui.gradcamVisibleCheckBox, self.ui.gradcamOpacitySlider,
                  self.ui.exportSegButton):
            w.enabled = has
        table, chart = self.chartNodes(outcome)
        self.setChartPlaceVisible(self.logic.has_stages or table is not None)
        self.ui.showChartButton.enabled = chart is not None
        volume = self.ui.inputVolumeSelector.currentNode()
        self.ui.exportDicomSegButton.enabled = has and volume is not None and results.came_from_dicom(volume)
        if not has:
            self.ui.stageLabel.text = "–"
            self.ui.warningsLabel.text = ""
            self.ui.probabilityTableView.setMRMLTableNode(None)
            self.ui.volumeTableView.setMRMLTableNode(None)
            return
        self.ui.stageLabel.text = outcome.stage_text
        self.ui.stageLabel.setStyleSheet("font-size: 28pt; font-weight: bold;"
                                         + ("" if outcome.stage_reliable else " color: #c0392b;"))
        self.ui.probabilityTableView.setMRMLTableNode(table)
        self.ui.volumeTableView.setMRMLTableNode(outcome.nodes.volume_table)
        warnings = outcome.warnings + [f"Model: {outcome.report.get('model', {}).get('intended_use', '')}"]
        self.ui.warningsLabel.text = "\n".join(f"⚠ {w}" for w in warnings if w)
        self.ui.gradcamVisibleCheckBox.enabled = outcome.nodes.gradcam is not None
        self.ui.gradcamOpacitySlider.enabled = outcome.nodes.gradcam is not None
        self.onShowChart()

    def onShow3D(self, visible):
        outcome = self.currentOutcome()
        if outcome:
            results.set_surfaces_visible(outcome.nodes.segmentation, visible)

    def onGradcamVisible(self, visible):
        outcome = self.currentOutcome()
        if outcome and outcome.nodes.gradcam is not None:
            results.show_gradcam_in_slice_views(slicer.mrmlScene, self.ui.inputVolumeSelector.currentNode(),
                                                outcome.nodes.gradcam if visible else None,
                                                self.ui.gradcamOpacitySlider.value)

    def onGradcamOpacity(self, value):
        outcome = self.currentOutcome()
        if outcome and outcome.nodes.gradcam is not None:
            results.set_gradcam_opacity(slicer.mrmlScene, outcome.nodes.gradcam, value)

    def onShowChart(self):
        """The stage (or slice) probability chart in the layout's plot view."""
        _, chart = self.chartNodes(self.currentOutcome())
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

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
        if not ensure_dependencies(self.moduleName):
            return
        fine_tune = self.logic.can_fine_tune and self.ui.fineTuneCheckBox.checked
        if fine_tune and not self.ui.modelComboBox.currentData:
            slicer.util.errorDisplay(f"Select the model to fine-tune under {self.logic.action_name}, or "
                                     "untick 'Fine-tune the selected model'.")
            return
        request = TrainingRequest(dataset=self.ui.datasetPathLineEdit.currentPath,
                                  model_name=self.ui.modelNameLineEdit.text, epochs=self.ui.epochsSpinBox.value,
                                  device=self.ui.trainingDeviceComboBox.currentData,
                                  resume=self.ui.resumeTrainingCheckBox.checked,
                                  start_from=self.ui.modelComboBox.currentData if fine_tune else None)
        try:
            self._trainingJob = self.logic.start_training(request, on_event=self.onTrainingEvent)
        except TaskInputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.trainingStatusLabel.text = "Validating the dataset…"
        self.ui.trainingProgressBar.value = 0
        self._timer.start()
        self.updateButtons()

    def onTrainingEvent(self, event):
        progress = describe_training_event(event)
        self.ui.trainingProgressBar.value = int(100 * progress.fraction)
        self.ui.trainingStatusLabel.text = progress.message

    def pollTraining(self):
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

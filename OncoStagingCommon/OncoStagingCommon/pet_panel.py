"""The "Treatment outcome (PET)" collapsible panel: choose the PET, Segment & Predict in a background
engine process with progress and cancel, then the tumour segmentation and Grad-CAM over the PET, the
SUV table, and the pathology and outcome probabilities as a table and a chart.

Built in code (no .ui) so any module can add it below its own panel; the work is
:class:`~OncoStagingCommon.pet.PetOutcomeLogic`.
"""

from __future__ import annotations

import logging
from typing import Any

import ctk
import qt
import slicer

from OncoStagingCommon.logic import RunOptions, TaskInputError
from OncoStagingCommon.pet import PetOutcomeLogic
from OncoStagingCommon.process import JobState

log = logging.getLogger(__name__)

POLL_INTERVAL_MS = 200
RUN_TEXT, CANCEL_TEXT = "Segment && Predict", "Cancel"


class PetOutcomePanel:
    """The PET panel's widgets and their wiring; ``layout`` is the module panel's layout."""

    def __init__(self, layout: Any, logic: PetOutcomeLogic | None = None):
        self.logic = logic or PetOutcomeLogic()
        self._job = None
        self.outcome = None
        self.button = ctk.ctkCollapsibleButton()
        self.button.text = "Treatment outcome (PET)"
        self.button.collapsed = True
        layout.addWidget(self.button)
        form = qt.QFormLayout(self.button)
        self.volumeSelector = slicer.qMRMLNodeComboBox()
        self.volumeSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.volumeSelector.noneEnabled = True
        self.volumeSelector.addEnabled = False
        self.volumeSelector.removeEnabled = False
        self.volumeSelector.setMRMLScene(slicer.mrmlScene)
        self.volumeSelector.toolTip = "The FDG PET in SUV (a DICOM PET is converted from its own tags)."
        form.addRow("PET volume:", self.volumeSelector)
        self.applyButton = qt.QPushButton(RUN_TEXT)
        self.applyButton.toolTip = "Tumour segmentation, SUV figures, pathology and outcome probabilities."
        form.addRow(self.applyButton)
        self.progressBar = qt.QProgressBar()
        self.statusLabel = qt.QLabel("")
        self.summaryLabel = qt.QLabel("")
        self.summaryLabel.wordWrap = True
        form.addRow(self.progressBar)
        form.addRow(self.statusLabel)
        form.addRow(self.summaryLabel)
        self.uptakeView = slicer.qMRMLTableView()
        self.probabilityView = slicer.qMRMLTableView()
        form.addRow("SUV:", self.uptakeView)
        form.addRow("Probabilities:", self.probabilityView)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.button.connect("contentsCollapsed(bool)", self.onCollapsed)

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self.logic.cancel(self._job)
            self._job = None

    def onCollapsed(self, collapsed: bool) -> None:
        """Opening the panel suggests the PET of the loaded study when none is chosen."""
        if not collapsed and self.volumeSelector.currentNode() is None:
            suggested = self.logic.suggested_volume()
            if suggested is not None:
                self.volumeSelector.setCurrentNode(suggested)

    def onApplyOrCancel(self, *_: Any) -> None:
        if self._job is not None:
            self.logic.cancel(self._job)
            self._job = None
            self.statusLabel.text = "Cancelled; the scene was not changed."
            self.progressBar.value = 0
            self.applyButton.text = RUN_TEXT
            return
        try:
            self._job = self.logic.start(self.volumeSelector.currentNode(), RunOptions(), on_progress=self.onProgress)
        except TaskInputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.applyButton.text = CANCEL_TEXT
        self.progressBar.value = 0
        self.statusLabel.text = "Starting the engine…"
        self._timer.start()

    def onProgress(self, progress: Any) -> None:
        self.progressBar.value = int(100 * progress.fraction)
        self.statusLabel.text = progress.message

    def onPoll(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        if self.logic.poll(self._job) is JobState.RUNNING:
            return
        job, self._job = self._job, None
        self._timer.stop()
        self.applyButton.text = RUN_TEXT
        if job.state is JobState.SUCCEEDED:
            self.showOutcome(self.logic.pet_outcome(job))
        elif job.state is JobState.FAILED:
            self.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"{self.logic.action_name} failed:\n{job.error}")

    def showOutcome(self, outcome: Any) -> None:
        self.outcome = outcome
        if outcome is None:
            return
        warnings = [f"⚠ {w}" for w in outcome.run.warnings]
        self.summaryLabel.text = "\n".join([outcome.summary, *warnings])
        self.uptakeView.setMRMLTableNode(outcome.tables.uptake_table)
        self.probabilityView.setMRMLTableNode(outcome.tables.probability_table)
        slicer.modules.plots.logic().ShowChartInLayout(outcome.tables.probability_chart)
        self.statusLabel.text = "Done"
        self.progressBar.value = 100

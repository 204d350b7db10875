"""The treatment-outcome (PET) panel's logic: choose the PET of the loaded study, run the ``pet`` task
through the shared :class:`~OncoStagingCommon.logic.TaskLogic`, and turn its report into an SUV table,
a pathology/outcome probability table and a bar chart beside the segmentation and the Grad-CAM.

Qt-free: it uses MRML and the engine's torch-free modules only, so the headless tests drive it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from OncoStagingCommon import results
from OncoStagingCommon.logic import POLL_INTERVAL_S, RunJob, RunOptions, RunOutcome, TaskLogic
from OncoStagingCommon.process import JobState

log = logging.getLogger(__name__)

PET_TASK = "pet"
#: Owner of the PET panel's result nodes (kept apart from the CT staging results of the same module).
PET_OWNER = "EsophagusStaging PET"
MEASURE_COLUMN, VALUE_COLUMN, CLASS_COLUMN = "Measure", "Value", "Class"
#: The report's uptake figures, in table order, with the names and units the table shows.
UPTAKE_ROWS = (("suv_max", "SUVmax [g/ml]"), ("suv_mean", "SUVmean [g/ml]"), ("suv_peak", "SUVpeak [g/ml]"),
               ("mtv_ml", "MTV [ml]"), ("tlg", "TLG [g]"))
#: Volume names that mark a PET when the DICOM modality is not recorded (whole words, any case).
PET_NAME = re.compile(r"(^|[^a-z])(pet|pt|suv|fdg)([^a-z]|$)", re.IGNORECASE)


def is_pet_volume(node: Any) -> bool:
    """A scalar volume recorded as DICOM modality PT, or named like a PET (PET, PT, SUV, FDG)."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        return False
    modality = node.GetAttribute("DICOM.Modality")
    if modality:
        return modality.strip().upper() == "PT"
    return bool(PET_NAME.search(node.GetName() or ""))


def suggest_pet_volume(scene: Any) -> Any | None:
    """The PET of the loaded study: the last-added volume that :func:`is_pet_volume` accepts, None if none."""
    found = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if is_pet_volume(node) and node.GetAttribute(results.OWNER_ATTRIBUTE) is None:
            found = node
    return found


@dataclass
class PetTables:
    """The PET panel's own result nodes."""

    uptake_table: Any | None
    probability_table: Any
    probability_chart: Any
    probability_series: Any


@dataclass
class PetOutcome:
    """A finished PET run: the shared result nodes, the PET tables and the report's numbers."""

    run: RunOutcome
    tables: PetTables

    @property
    def report(self) -> dict[str, Any]:
        return self.run.report

    @property
    def uptake(self) -> dict[str, float]:
        return dict(self.report.get("uptake") or {})

    @property
    def outcome_probabilities(self) -> dict[str, float]:
        return dict(self.report.get("outcome_probabilities") or {})

    @property
    def pathology_probabilities(self) -> dict[str, float]:
        return dict(self.report.get("pathology_probabilities") or {})

    @property
    def summary(self) -> str:
        """One line for the panel: predicted outcome and pathology with their probabilities."""
        outcome, pathology = self.report.get("predicted_outcome"), self.report.get("predicted_pathology")
        parts = []
        if outcome:
            parts.append(f"outcome {outcome} ({self.outcome_probabilities.get(outcome, 0.0):.0%})")
        if pathology:
            parts.append(f"pathology {pathology} ({self.pathology_probabilities.get(pathology, 0.0):.0%})")
        return "Predicted " + ", ".join(parts) if parts else "No prediction"


def add_pet_tables(scene: Any, input_volume: Any, report: dict[str, Any], owner: str = PET_OWNER) -> PetTables:
    """SUV table, probability table and bar chart from a PET ``report``, tagged and filed with the run's
    other results (so the next run replaces them)."""
    base = input_volume.GetName()
    uptake = report.get("uptake") or {}
    created: list[Any] = []
    uptake_table = None
    if uptake:
        uptake_table = results.add_table(scene, f"{base} SUV", [
            (MEASURE_COLUMN, "string", [label for _, label in UPTAKE_ROWS]),
            (VALUE_COLUMN, "double", [uptake.get(key, float("nan")) for key, _ in UPTAKE_ROWS])])
        created.append(uptake_table)
    rows = [(f"pathology: {k}", v) for k, v in (report.get("pathology_probabilities") or {}).items()]
    rows += [(f"outcome: {k}", v) for k, v in (report.get("outcome_probabilities") or {}).items()]
    table = results.add_table(scene, f"{base} pathology and outcome probabilities", [
        (results.INDEX_COLUMN, "double", list(range(1, len(rows) + 1))),
        (results.STAGE_COLUMN, "string", [name for name, _ in rows]),
        (results.PROBABILITY_COLUMN, "double", [p for _, p in rows])])
    chart, series = results.add_probability_chart(scene, table, f"{base} pathology and outcome chart")
    chart.SetTitle("Pathology and outcome probabilities")
    chart.SetXAxisTitle("Class")
    created += [table, series, chart]
    for node, role in ((uptake_table, "uptake_table"), (table, "pet_probability_table"),
                       (series, "pet_probability_series"), (chart, "pet_probability_chart")):
        if node is not None:
            results._tag(node, owner, input_volume, role)
    _file_with_results(scene, input_volume, owner, created)
    return PetTables(uptake_table, table, chart, series)


def _file_with_results(scene: Any, input_volume: Any, owner: str, nodes: list[Any]) -> None:
    """Put ``nodes`` in the folder the shared import made for this run's results."""
    sh = scene.GetSubjectHierarchyNode()
    folders = results._owned_folders(scene, input_volume, owner)
    if sh is None or not folders:
        return
    for node in nodes:
        item = sh.GetItemByDataNode(node) or sh.CreateItem(folders[-1], node)
        sh.SetItemParent(item, folders[-1])


class PetOutcomeLogic(TaskLogic):
    """Segment & Predict of the ``pet`` task; ``poll`` adds the PET tables once the shared import is done."""

    def __init__(self, scene: Any = None, launcher: Any = None, python: str | None = None):
        TaskLogic.__init__(self, PET_TASK, scene=scene, launcher=launcher, python=python, module_name=PET_OWNER)
        self.pet_outcomes: dict[int, PetOutcome] = {}

    @property
    def action_name(self) -> str:
        return "Segment & Predict"

    def suggested_volume(self) -> Any | None:
        return suggest_pet_volume(self.scene)

    def check_volume(self, volume: Any) -> None:
        TaskLogic.check_volume(self, volume)
        if not is_pet_volume(volume):
            log.warning("'%s' is not marked as PET (DICOM modality or name); the engine checks its values "
                        "are SUV.", volume.GetName())

    def poll(self, job: RunJob) -> JobState:
        state = TaskLogic.poll(self, job)
        if state is JobState.SUCCEEDED and job.outcome is not None and id(job) not in self.pet_outcomes:
            tables = add_pet_tables(self.scene, job.volume, job.outcome.report)
            self.pet_outcomes[id(job)] = PetOutcome(job.outcome, tables)
        return state

    def pet_outcome(self, job: RunJob) -> PetOutcome | None:
        return self.pet_outcomes.get(id(job))

    def predict(self, volume: Any, options: RunOptions | None = None,
                poll_interval_s: float = POLL_INTERVAL_S) -> PetOutcome:
        """Segment & Predict ``volume`` and wait (scripts, tests): the PET outcome, or an error."""
        import time

        job = self.start(volume, options)
        while self.poll(job) is JobState.RUNNING:
            time.sleep(poll_interval_s)
        found = self.pet_outcome(job)
        if job.state is not JobState.SUCCEEDED or found is None:
            raise RuntimeError(f"{self.action_name} failed: {job.error or job.state.value}")
        return found

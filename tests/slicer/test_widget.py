"""The shared panel (``OncoStagingCommon.widget.TaskWidget``) driven without Qt: stand-ins replace the
Qt widgets of the module's .ui (only names that exist in the .ui), the logic and the scene are real,
the engine is the fake one of ``test_task_logic``. Checks the panel's wiring, not its looks."""

from __future__ import annotations

import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import slicer  # noqa: E402
import slicer.util  # noqa: E402

from engine.tasks import DEVICE_CHOICES  # noqa: E402
from fakes import FakeEngine, save_model  # noqa: E402
from OncoStagingCommon.logic import TaskLogic  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "EsophagusStaging" / "Resources" / "UI" / "EsophagusStaging.ui"
GTV_UI = REPO / "GTVSeg" / "Resources" / "UI" / "GTVSeg.ui"


class Combo:
    """A combo box: items with data, the current one, no signals."""

    def __init__(self):
        self.items: list[tuple[str, object]] = []
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        self.currentIndex = max(self.currentIndex, 0)

    def clear(self):
        self.items, self.currentIndex = [], -1

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if self.currentIndex >= 0 else None

    def blockSignals(self, block):
        pass

    def connect(self, signal, slot):
        pass


def parameter_node_wrapper(cls):
    """``parameterNodeWrapper`` without Qt: the declared fields with their defaults."""

    class Wrapped:
        def __init__(self, node):
            for name in cls.__annotations__:
                setattr(self, name, getattr(cls, name, None))

        def connectGui(self, ui):
            return "gui"

        def disconnectGui(self, tag):
            pass

    return Wrapped


@pytest.fixture
def panel_of(headless, monkeypatch):
    """Build a panel class's widget on the headless scene; returns (widget, ui, error messages)."""
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper, wrapper.WithinRange = parameter_node_wrapper, lambda low, high: None
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock(name="qt"))
    monkeypatch.setitem(sys.modules, "ctk", mock.MagicMock(name="ctk"))
    for qt_class in ("qMRMLNodeComboBox", "qMRMLTableView"):  # Qt widgets slicer-core does not have
        monkeypatch.setattr(slicer, qt_class, mock.MagicMock(name=qt_class), raising=False)
    for name in ("OncoStagingCommon.widget", "OncoStagingCommon.pet_panel", "EsophagusStaging", "GTVSeg"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    errors: list[str] = []
    for name, value in (("loadUI", lambda path: mock.MagicMock(name=path)), ("errorDisplay", errors.append),
                        ("resetSliceViews", lambda: None)):
        monkeypatch.setattr(slicer.util, name, value)
    plots = mock.MagicMock(name="plots logic")
    monkeypatch.setattr(slicer.modules, "plots", SimpleNamespace(logic=lambda: plots), raising=False)
    monkeypatch.setattr(TaskLogic, "start_device_probe", lambda self: FakeEngine(self.task)([self.python, "-c"], {}))
    built = []

    def build(widget_class, ui_file: Path = UI):
        names = {w.get("name") for w in ET.parse(ui_file).getroot().iter("widget")}
        ui = SimpleNamespace(**{n: Combo() if n.endswith("ComboBox") else mock.MagicMock(name=n) for n in names})
        monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
        widget = widget_class()
        widget.layout = mock.MagicMock()
        widget.setup()
        widget.plots = plots  # what the chart button calls: ShowChartInLayout(chart)
        monkeypatch.setattr(sys.modules["OncoStagingCommon.widget"], "ensure_dependencies", lambda name: True)
        built.append(widget)
        return widget, ui, errors

    yield build
    for widget in built:
        widget.cleanup()  # stops observing the scene before the scene is cleared


def toy_panel(task_name: str):
    from OncoStagingCommon.widget import TaskWidget

    return type("ToyWidget", (TaskWidget,), {"TASK": task_name, "UI_FILE": str(UI)})


def run(widget, ui, volume, model, engine=None):
    ui.inputVolumeSelector.currentNode.return_value = volume
    widget._parameterNode.modelPath = str(model)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.gradcamOpacitySlider.value = 0.4
    widget.logic.launcher = engine or FakeEngine(widget.logic.task)
    widget.onApplyOrCancel()
    assert ui.applyButton.text == "Cancel"
    while widget._job is not None:
        widget.onPoll()
    return widget.logic.launcher


def test_the_esophagus_module_is_the_shared_panel_for_its_task(panel_of):
    import EsophagusStaging

    widget, ui, errors = panel_of(EsophagusStaging.EsophagusStagingWidget)
    assert widget.logic.task.name == "esophagus" and widget.logic.module_name == "EsophagusStaging"
    assert [d for _, d in ui.deviceComboBox.items] == [d for _, d in ui.trainingDeviceComboBox.items] \
        == list(DEVICE_CHOICES)
    assert ui.stageLabel.visible is True and ui.fineTuneCheckBox.visible is True
    assert widget._parameterNode.trainingModelName == "my-esophagus-model"
    assert errors == []


def test_a_toy_run_fills_stage_and_probability_table(panel_of, toy, volume, tmp_path):
    widget, ui, errors = panel_of(toy_panel("toy"))
    assert ui.stageLabel.visible is True and ui.fineTuneCheckBox.visible is False
    engine = run(widget, ui, volume, save_model(toy, tmp_path))
    assert errors == [] and engine.commands[0][:3] == ["run", "--task", "toy"]
    outcome = widget.logic.results_for(volume)
    assert ui.stageLabel.text == "high" and ui.applyButton.text == "Segment && Stage"
    ui.probabilityTableView.setMRMLTableNode.assert_called_with(outcome.nodes.probability_table)
    ui.volumeTableView.setMRMLTableNode.assert_called_with(outcome.nodes.volume_table)
    assert ui.showChartButton.enabled is True and ui.progressBar.value == 100


def test_a_task_without_stages_hides_the_stage_widgets(panel_of, segmentation_only, volume, tmp_path):
    widget, ui, errors = panel_of(toy_panel("toyseg"))
    assert ui.stageLabel.visible is False and ui.probabilityTableView.visible is False
    assert ui.showChartButton.visible is False
    run(widget, ui, volume, save_model(segmentation_only, tmp_path))
    assert errors == [] and ui.stageLabel.text == "–" and ui.showChartButton.enabled is False
    ui.probabilityTableView.setMRMLTableNode.assert_called_with(None)


def test_the_gtv_module_segments_and_shows_the_slice_probabilities(panel_of, volume, tmp_path):
    """GTVSeg is the shared panel for the ``gtv`` task: "Segment" (no stages), the stage widgets hidden,
    and after a run the slice-probability table in the panel's chart place and its chart in the plot view."""
    import GTVSeg

    from engine.tasks import get_task

    widget, ui, errors = panel_of(GTVSeg.GTVSegWidget, GTV_UI)
    assert widget.logic.task.name == "gtv" and widget.logic.module_name == "GTVSeg"
    assert widget._parameterNode.trainingModelName == "my-gtv-model"
    assert ui.applyButton.text == "Segment"
    assert ui.stageLabel.visible is False and ui.stageCaptionLabel.visible is False
    assert ui.probabilityTableView.visible is False and ui.showChartButton.visible is False  # until a run
    assert ui.fineTuneCheckBox.visible is widget.logic.can_fine_tune
    engine = run(widget, ui, volume, save_model(get_task("gtv"), tmp_path),
                 FakeEngine(widget.logic.task, slice_probabilities=True, gradcam=True))
    assert errors == [] and engine.commands[0][:3] == ["run", "--task", "gtv"]
    assert ui.applyButton.text == "Segment" and ui.progressBar.value == 100
    outcome = widget.logic.results_for(volume)
    assert outcome.nodes.slice_chart is not None and outcome.nodes.probability_table is None
    assert ui.probabilityTableView.visible is True and ui.probabilityCaptionLabel.visible is True
    ui.probabilityTableView.setMRMLTableNode.assert_called_with(outcome.nodes.slice_table)
    ui.volumeTableView.setMRMLTableNode.assert_called_with(outcome.nodes.volume_table)
    assert ui.showChartButton.visible is True and ui.showChartButton.enabled is True
    assert ui.stageLabel.visible is False and ui.stageLabel.text == "–"
    assert ui.gradcamVisibleCheckBox.enabled is True
    widget.plots.ShowChartInLayout.assert_called_with(outcome.nodes.slice_chart)
    widget.plots.ShowChartInLayout.reset_mock()
    widget.onShowChart()
    widget.plots.ShowChartInLayout.assert_called_once_with(outcome.nodes.slice_chart)


def test_training_panel_validates_then_trains(panel_of, toy, tmp_path):
    widget, ui, errors = panel_of(toy_panel("toy"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    ui.datasetPathLineEdit.currentPath = str(tmp_path / "data")
    ui.modelNameLineEdit.text = "Toy 2"
    ui.epochsSpinBox.value = 3
    ui.resumeTrainingCheckBox.checked = False
    widget.logic.launcher = engine = FakeEngine(toy)
    with mock.patch("engine.registry.user_model_dir", return_value=tmp_path / "models"):
        widget.onTrain()
    assert ui.stopTrainingButton.enabled is True
    while widget._trainingJob is not None:
        widget.onPoll()
    assert errors == [] and [c[0] for c in engine.commands] == ["validate", "train"]
    assert engine.commands[1][engine.commands[1].index("--model-id") + 1] == "toy-2"
    assert ui.trainingStatusLabel.text == f"Model written to {tmp_path / 'models' / 'toy-2'}"


def test_the_device_line_comes_from_the_probe_process(panel_of, toy):
    widget, ui, _ = panel_of(toy_panel("toy"))
    assert ui.deviceInfoLabel.text == "Looking for a GPU…"
    while widget._deviceProbe is not None:
        widget.onPoll()
    assert ui.deviceInfoLabel.text == "CPU only (PyTorch 2.0, no CUDA GPU found)"


def test_a_stage_outside_the_models_domain_is_shown_marked_unreliable(panel_of, toy, volume, tmp_path,
                                                                      monkeypatch):
    from OncoStagingCommon.logic import RunOutcome

    widget, ui, errors = panel_of(toy_panel("toy"))
    run(widget, ui, volume, save_model(toy, tmp_path))
    found = widget.logic.results_for(volume)
    assert found.stage_reliable and ui.stageLabel.text == "high"
    outcome = RunOutcome(found.nodes, {**found.report, "stage_reliable": False,
                                       "warnings": ["Outside the model's training data — field of view …"]})
    monkeypatch.setattr(widget.logic, "results_for", lambda volume: outcome)
    widget.showResults()
    assert ui.stageLabel.text == "high (unreliable)" and outcome.stage_text == "high (unreliable)"
    assert "color" in ui.stageLabel.setStyleSheet.call_args[0][0]
    assert ui.warningsLabel.text.startswith("⚠ Outside the model's training data")
    assert errors == []

"""The treatment-outcome (PET) panel's wiring without Qt: stand-ins replace its Qt widgets, the logic and
the scene are real, the engine is the fake PET engine. Checks what the panel does, not its looks."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from unittest import mock

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import slicer
import slicer.util
from fakes import save_model
from test_pet_logic import FakePetEngine, _volume

from engine.tasks import get_task


@pytest.fixture
def panel(headless, monkeypatch, tmp_path):
    for name in ("qt", "ctk"):
        module = mock.MagicMock(name=name)
        for widget in ("QLabel", "QPushButton", "QProgressBar", "ctkCollapsibleButton"):  # one object per call
            getattr(module, widget).side_effect = lambda *args, _w=widget: mock.MagicMock(name=_w)
        monkeypatch.setitem(sys.modules, name, module)
    for qt_class in ("qMRMLNodeComboBox", "qMRMLTableView"):
        monkeypatch.setattr(slicer, qt_class, lambda _name=qt_class: mock.MagicMock(name=_name), raising=False)
    monkeypatch.delitem(sys.modules, "OncoStagingCommon.pet_panel", raising=False)
    errors: list[str] = []
    monkeypatch.setattr(slicer.util, "errorDisplay", errors.append)
    plots = mock.MagicMock(name="plots logic")
    monkeypatch.setattr(slicer.modules, "plots", SimpleNamespace(logic=lambda: plots), raising=False)
    from OncoStagingCommon.pet import PetOutcomeLogic
    from OncoStagingCommon.pet_panel import CANCEL_TEXT, RUN_TEXT, PetOutcomePanel

    logic = PetOutcomeLogic(scene=headless.scene, launcher=FakePetEngine(get_task("pet"), gradcam=True))
    monkeypatch.setattr(logic, "resolve_model", lambda model: __import__("engine.registry", fromlist=["x"])
                        .load_bundle(save_model(get_task("pet"), tmp_path), verify=False))
    widget = PetOutcomePanel(mock.MagicMock(name="layout"), logic)
    yield SimpleNamespace(widget=widget, errors=errors, plots=plots, run=RUN_TEXT, cancel=CANCEL_TEXT)
    widget.cleanup()


def test_opening_the_panel_suggests_the_pet(panel, headless):
    _volume(headless.scene, "CT", "CT")
    pet = _volume(headless.scene, "Series 7", "PT")
    panel.widget.volumeSelector.currentNode.return_value = None
    panel.widget.onCollapsed(False)
    panel.widget.volumeSelector.setCurrentNode.assert_called_once_with(pet)


def test_run_shows_the_summary_tables_and_chart(panel, headless):
    w = panel.widget
    w.volumeSelector.currentNode.return_value = _volume(headless.scene, "PET", "PT")
    w.onApplyOrCancel()
    assert w.applyButton.text == panel.cancel
    while w._job is not None:
        w.onPoll()
    assert panel.errors == []
    assert w.applyButton.text == panel.run and w.statusLabel.text == "Done"
    assert w.summaryLabel.text.startswith("Predicted outcome poor (70%), pathology esophageal (80%)")
    w.uptakeView.setMRMLTableNode.assert_called_with(w.outcome.tables.uptake_table)
    w.probabilityView.setMRMLTableNode.assert_called_with(w.outcome.tables.probability_table)
    panel.plots.ShowChartInLayout.assert_called_with(w.outcome.tables.probability_chart)


def test_cancel_stops_the_run_and_no_volume_is_an_error(panel, headless):
    w = panel.widget
    w.volumeSelector.currentNode.return_value = _volume(headless.scene, "PET", "PT")
    before = headless.scene.GetNumberOfNodes()
    w.onApplyOrCancel()
    w.onApplyOrCancel()
    assert w._job is None and w.applyButton.text == panel.run and "Cancelled" in w.statusLabel.text
    assert headless.scene.GetNumberOfNodes() == before
    w.volumeSelector.currentNode.return_value = None
    w.onApplyOrCancel()
    assert panel.errors and "Choose an input PT volume" in panel.errors[0]

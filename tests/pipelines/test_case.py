"""The task-independent parts of Segment & Stage: prediction report fields, step timer, model loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import Cancelled, EngineError
from engine.io.image import Image
from engine.pipelines.case import Prediction, StepTimer, load_model

REPO = Path(__file__).resolve().parents[2]


def test_a_prediction_without_stages_reports_no_stage_fields():
    labels = Image(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    fields = Prediction(labels, volumes_cm3={"organ": 1.234567}, warnings=["w"]).report_fields()
    assert fields == {"volumes_cm3": {"organ": 1.2346}, "warnings": ["w"], "timings_s": {}, "device": "cpu"}
    staged = Prediction(labels, stage_probabilities={"low": 0.25, "high": 0.75}, predicted_stage="high")
    assert list(staged.report_fields())[:2] == ["stage_probabilities", "predicted_stage"]


def test_step_timer_reports_progress_times_steps_and_stops_when_cancelled():
    seen, stop = [], {"now": False}
    timer = StepTimer(lambda name, fraction: seen.append((name, fraction)), lambda: stop["now"], ["a", "b"])
    with timer.step("a"):
        pass
    assert seen == [("a", 0.0)] and set(timer.timings) == {"a"}
    stop["now"] = True
    with pytest.raises(Cancelled, match="nothing was written"):
        with timer.step("b"):
            raise AssertionError("a cancelled step must not run")
    assert set(timer.timings) == {"a"}


def test_a_model_of_another_task_is_refused():
    from engine.registry import load_bundle

    demo = REPO / "models" / "esophagus-demo-0.6.0"
    if not (demo / "model.json").is_file():
        pytest.skip("the shipped demo model is not in this checkout")
    bundle = load_bundle(demo, verify=False)
    assert load_model("esophagus", bundle) is bundle
    with pytest.raises(EngineError, match="for task 'esophagus', not 'npc'"):
        load_model("npc", bundle)

"""The generic loop: history, early stopping, cancellation, resume, progress events."""

from __future__ import annotations

import io
import json
import threading

import pytest
import torch

from engine.errors import Cancelled, TrainingError
from engine.training import (PROGRESS_PREFIX, JsonLinesProgress, OptimizerConfig, ProgressEvent,
                             SchedulerConfig, StepOutput, TqdmProgress, Trainer, TrainerConfig, load_checkpoint,
                             parse_progress_line, read_history)
from training_toys import RegressionTask, ScriptedTask, ToyDataset, toy_net


def _config(tmp_path, **kw) -> TrainerConfig:
    base = dict(epochs=4, batch_size=4, device="cpu", seed=7, out_dir=str(tmp_path / "run"),
                optimizer=OptimizerConfig(name="adam", lr=1e-2),
                scheduler=SchedulerConfig(name="cosine"))
    base.update(kw)
    return TrainerConfig(**base)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_writes_history_and_checkpoints(tmp_path):
    model = toy_net()
    events: list[ProgressEvent] = []
    result = Trainer(model, RegressionTask(), ToyDataset(16), ToyDataset(8, seed=5),
                     _config(tmp_path, val_every=2), callbacks=[events.append]).fit()
    assert (result.epochs_run, result.start_epoch, result.global_step) == (4, 0, 16)
    assert not result.cancelled and not result.stopped_early and result.monitor == "val_loss"
    rows = read_history(result.history_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"lr", "time_s", "train_loss", "train_mae", "val_loss", "val_mae"} <= set(rows[0])
    assert rows[0]["val_loss"] is None and rows[1]["val_loss"] is not None  # val_every=2
    assert rows[0]["lr"] == pytest.approx(1e-2) and rows[2]["lr"] == pytest.approx(5e-3)  # cosine, 4 epochs
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    ck = load_checkpoint(result.checkpoint_path)
    assert ck.epoch == 4 and ck.global_step == 16
    assert all(torch.equal(ck.model_state[k], v) for k, v in model.state_dict().items())
    best = load_checkpoint(result.best_checkpoint_path)
    assert best.epoch == result.best_epoch and result.best_metric == pytest.approx(
        min(r["val_loss"] for r in rows if r["val_loss"] is not None))
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1].status == "completed"
    assert kinds.count("step") == 16 and kinds.count("epoch") == 4 and kinds.count("validation") == 2
    steps = [e for e in events if e.kind == "step"]
    assert steps[0].total_steps == 4 and steps[-1].eta_s == pytest.approx(0.0)
    assert (tmp_path / "run" / "trainer_config.json").is_file()


@pytest.mark.parametrize("mode, values, stop_epoch, best_epoch", [
    ("min", [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 1.0, 1.0], 5, 3),
    ("max", [0.1, 0.5, 0.4, 0.6, 0.6, 0.55, 0.9, 0.9], 6, 4),
])
def test_early_stopping_on_scripted_metric(tmp_path, mode, values, stop_epoch, best_epoch):
    cfg = _config(tmp_path, epochs=8, early_stopping_patience=2, monitor="val_score", mode=mode)
    result = Trainer(toy_net(), ScriptedTask(values), ToyDataset(8), ToyDataset(4), cfg).fit()
    assert result.stopped_early and result.epochs_run == stop_epoch
    assert result.best_epoch == best_epoch and result.best_metric == values[best_epoch - 1]
    assert len(read_history(result.history_path)) == stop_epoch
    assert load_checkpoint(result.checkpoint_path).epoch == stop_epoch
    assert load_checkpoint(result.best_checkpoint_path).epoch == best_epoch


def test_min_delta_and_patience_counted_in_validations(tmp_path):
    cfg = _config(tmp_path, epochs=8, val_every=2, early_stopping_patience=2, monitor="val_score",
                  min_delta=0.5)
    # validated at epochs 2,4,6,8: 3.0 best, 2.8 and 2.7 are not better by 0.5 → stop at epoch 6.
    result = Trainer(toy_net(), ScriptedTask([9, 3.0, 9, 2.8, 9, 2.7, 9, 1.0]), ToyDataset(8), ToyDataset(4),
                     cfg).fit()
    assert result.stopped_early and result.epochs_run == 6 and result.best_epoch == 2


def test_cancel_after_k_steps_keeps_last_complete_checkpoint(tmp_path):
    counter = {"n": 0}

    class CountingTask(RegressionTask):
        def training_step(self, model, batch, device):
            counter["n"] += 1
            return super().training_step(model, batch, device)

    cfg = _config(tmp_path)  # 4 steps per epoch
    result = Trainer(toy_net(), CountingTask(), ToyDataset(16), ToyDataset(8), cfg,
                     cancel=lambda: counter["n"] >= 10).fit()
    assert result.cancelled and not result.stopped_early
    assert counter["n"] == 10 and result.epochs_run == 2 and result.global_step == 10  # live count
    ck = load_checkpoint(result.checkpoint_path)
    assert ck.epoch == 2 and ck.global_step == 8
    assert [r["epoch"] for r in read_history(result.history_path)] == [1, 2]
    assert sorted(p.name for p in result.checkpoint_path.iterdir() if p.name.startswith(".")) == []


def test_cancel_before_first_step_writes_no_checkpoint(tmp_path):
    stop = threading.Event()
    stop.set()
    events: list[ProgressEvent] = []
    result = Trainer(toy_net(), RegressionTask(), ToyDataset(8), None, _config(tmp_path),
                     cancel=stop, callbacks=[events.append]).fit()
    assert result.cancelled and result.epochs_run == 0 and result.checkpoint_path is None
    assert events[-1].kind == "end" and events[-1].status == "cancelled"


def test_callback_raising_cancelled_stops_at_next_step(tmp_path):
    def gui(event: ProgressEvent) -> None:
        if event.kind == "step" and event.global_step == 6:
            raise Cancelled("user pressed stop")

    result = Trainer(toy_net(), RegressionTask(), ToyDataset(16), None, _config(tmp_path), callbacks=[gui]).fit()
    assert result.cancelled and result.global_step == 6 and result.epochs_run == 1
    assert result.monitor == "train_loss"  # no validation data: falls back to the training loss


def _run(tmp_path, name, task=None, **kw):
    model = toy_net(seed=3)
    cfg = _config(tmp_path, out_dir=str(tmp_path / name), scheduler=SchedulerConfig(name="cosine", warmup_epochs=1))
    trainer = Trainer(model, task or RegressionTask(), ToyDataset(16), ToyDataset(8, seed=5), cfg, **kw)
    return model, trainer


def test_resume_equals_uninterrupted_run(tmp_path):
    full_model, trainer = _run(tmp_path, "full")
    full = trainer.fit()

    counter = {"n": 0}

    class CountingTask(RegressionTask):
        def training_step(self, model, batch, device):
            counter["n"] += 1
            return super().training_step(model, batch, device)

    # 4 steps per epoch: cancelled after 2 steps of epoch 3, i.e. after the epoch-2 checkpoint.
    _, trainer = _run(tmp_path, "split", task=CountingTask(), cancel=lambda: counter["n"] >= 10)
    first = trainer.fit()
    assert first.cancelled and first.epochs_run == 2 and first.global_step == 10

    resumed_model, trainer = _run(tmp_path, "split", resume=True)
    second = trainer.fit()
    assert second.start_epoch == 2 and second.epochs_run == 4 and second.global_step == full.global_step
    for name, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    full_hist, split_hist = read_history(full.history_path), read_history(second.history_path)
    assert [r["epoch"] for r in split_hist] == [1, 2, 3, 4]
    for a, b in zip(full_hist, split_hist):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"] and a["lr"] == b["lr"]
    assert second.best_metric == full.best_metric and second.best_epoch == full.best_epoch


def test_resume_from_explicit_path_and_fresh_start_without_checkpoint(tmp_path):
    model, trainer = _run(tmp_path, "a", resume=True)  # nothing to resume: starts fresh
    result = trainer.fit()
    assert result.start_epoch == 0 and result.epochs_run == 4
    cfg = _config(tmp_path, epochs=4, out_dir=str(tmp_path / "b"), scheduler=SchedulerConfig(name="cosine",
                                                                                           warmup_epochs=1))
    again = Trainer(toy_net(), RegressionTask(), ToyDataset(16), ToyDataset(8), cfg).fit(
        resume_from=result.checkpoint_path)
    assert again.start_epoch == 4 and again.epochs_run == 4 and again.global_step == 16
    with pytest.raises(TrainingError, match="checkpoint.json' is missing"):
        Trainer(toy_net(), RegressionTask(), ToyDataset(16), None, cfg).fit(resume_from=tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="does not fit this model"):
        Trainer(toy_net(hidden=5), RegressionTask(), ToyDataset(16), None, cfg).fit(
            resume_from=result.checkpoint_path)


def test_json_progress_lines_parse(tmp_path):
    stream = io.StringIO()
    Trainer(toy_net(), RegressionTask(), ToyDataset(8), ToyDataset(4), _config(tmp_path, epochs=2),
            callbacks=[JsonLinesProgress(stream)]).fit()
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith(PROGRESS_PREFIX) for line in lines)
    events = [parse_progress_line(line) for line in lines]
    assert [e.kind for e in events] == (["start"] + (["step"] * 2 + ["validation", "epoch"]) * 2 + ["end"])
    raw = json.loads(lines[-2][len(PROGRESS_PREFIX):])
    assert raw["kind"] == "epoch" and raw["epoch"] == 2 and raw["total_epochs"] == 2
    assert {"train_loss", "val_loss", "val_mae"} <= set(raw["metrics"])
    assert isinstance(raw["lr"], float) and raw["elapsed_s"] >= 0 and raw["eta_s"] == 0
    assert parse_progress_line("INFO something happened") is None


def test_json_progress_writes_null_for_nan():
    stream = io.StringIO()
    JsonLinesProgress(stream)(ProgressEvent("step", 1, 2, loss=float("nan"), metrics={"m": float("inf")}))
    data = json.loads(stream.getvalue()[len(PROGRESS_PREFIX):])
    assert data["loss"] is None and data["metrics"]["m"] is None


def test_tqdm_callback_runs(tmp_path):
    out = io.StringIO()
    Trainer(toy_net(), RegressionTask(), ToyDataset(8), None, _config(tmp_path, epochs=2),
            callbacks=[TqdmProgress(file=out)]).fit()
    assert "epoch 2/2" in out.getvalue() and "training completed" in out.getvalue()


def test_steps_per_epoch_cycles_the_loader(tmp_path):
    result = Trainer(toy_net(), RegressionTask(), ToyDataset(4), None,
                     _config(tmp_path, epochs=2, batch_size=2, steps_per_epoch=5)).fit()
    assert result.global_step == 10


def test_loader_factory_gets_epoch_context(tmp_path):
    seen = []
    data = ToyDataset(8)

    def factory(ctx):
        seen.append((ctx.epoch, ctx.train, ctx.rank, ctx.world_size))
        return ctx.loader(data, batch_size=4)

    Trainer(toy_net(), RegressionTask(), factory, factory, _config(tmp_path, epochs=2)).fit()
    assert seen == [(1, True, 0, 1), (1, False, 0, 1), (2, True, 0, 1), (2, False, 0, 1)]


def test_gradient_clipping_bounds_the_update(tmp_path):
    class HugeGrad(RegressionTask):
        def training_step(self, model, batch, device):
            return sum(p.sum() for p in model.parameters()) * 1e6

    model = toy_net(dropout=0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = _config(tmp_path, epochs=1, batch_size=8, grad_clip=1.0, optimizer=OptimizerConfig(name="sgd", lr=1.0,
                                                                                          momentum=0.0))
    Trainer(model, HugeGrad(), ToyDataset(8), None, cfg).fit()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(1.0, rel=1e-4)


def test_non_finite_loss_fails_clearly(tmp_path):
    class NaNTask(RegressionTask):
        def training_step(self, model, batch, device):
            return StepOutput(loss=torch.tensor(float("nan"), requires_grad=True))

    events: list[ProgressEvent] = []
    with pytest.raises(TrainingError, match="lower the learning rate"):
        Trainer(toy_net(), NaNTask(), ToyDataset(8), None, _config(tmp_path), callbacks=[events.append]).fit()
    assert events[-1].status == "failed"


def test_missing_monitor_lists_available_metrics(tmp_path):
    with pytest.raises(TrainingError, match="val_dice.*val_loss, val_mae"):
        Trainer(toy_net(), RegressionTask(), ToyDataset(8), ToyDataset(4),
                _config(tmp_path, monitor="val_dice")).fit()


def test_bad_inputs(tmp_path):
    with pytest.raises(TrainingError, match="Dataset, a loader factory or an iterable"):
        Trainer(toy_net(), RegressionTask(), 42, None, _config(tmp_path)).fit()
    with pytest.raises(TrainingError, match="no batches"):
        Trainer(toy_net(), RegressionTask(), ToyDataset(3), None, _config(tmp_path, drop_last=True)).fit()
    with pytest.raises(TrainingError, match="training_step"):
        Trainer(toy_net(), object(), ToyDataset(3), None, _config(tmp_path))

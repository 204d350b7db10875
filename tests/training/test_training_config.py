"""Configs round-trip through JSON; optimizers and schedulers follow their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import TrainingError
from engine.training import (OptimizerConfig, SchedulerConfig, TrainerConfig, build_optimizer,
                             build_scheduler)


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


def _lr_trajectory(cfg: SchedulerConfig, epochs: int, lr: float = 1.0, metrics=None) -> list[float]:
    opt = build_optimizer(_params(), OptimizerConfig(name="sgd", lr=lr, momentum=0.0))
    sched = build_scheduler(opt, cfg, epochs)
    lrs = []
    for e in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if metrics is not None:
            sched.step(metrics[e])
        else:
            sched.step()
    return lrs


def test_trainer_config_json_round_trip(tmp_path):
    cfg = TrainerConfig(epochs=7, steps_per_epoch=5, early_stopping_patience=3, monitor="val_dice", mode="max",
                        grad_clip=1.5, out_dir=str(tmp_path),
                        optimizer=OptimizerConfig(name="SGD", lr=0.01, momentum=0.99, nesterov=True),
                        scheduler=SchedulerConfig(name="poly", warmup_epochs=2))
    back = TrainerConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.optimizer.name == "sgd" and back.optimizer.betas == (0.9, 0.999)
    assert TrainerConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    cfg.save(tmp_path / "c.json")
    assert TrainerConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("bad, match", [
    ({"optimizer": {"name": "lion"}}, "adam, adamw, sgd"),
    ({"scheduler": {"name": "step"}}, "none, cosine, poly, plateau, cosine_restarts"),
    ({"mode": "best"}, "min, max"),
    ({"epochs": 0}, "epochs"),
    ({"epohcs": 3}, "unknown key"),
    ({"scheduler": {"name": "plateau", "warmup_epochs": 2}}, "plateau"),
])
def test_invalid_config_is_rejected_with_valid_names(bad, match):
    with pytest.raises(TrainingError, match=match):
        TrainerConfig.from_dict(bad)


def test_build_optimizer_uses_config():
    sgd = build_optimizer(_params(), OptimizerConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True,
                                                     weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.1, 0.8, True, 1e-4)
    assert isinstance(build_optimizer(_params(), OptimizerConfig(name="adam")), torch.optim.Adam)
    adamw = build_optimizer(_params(), OptimizerConfig(name="adamw", lr=3e-4, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(TrainingError, match="no trainable parameters"):
        build_optimizer([], OptimizerConfig())


def test_unknown_scheduler_name_at_build_time():
    cfg = SchedulerConfig()
    cfg.name = "exp"
    opt = build_optimizer(_params(), OptimizerConfig())
    with pytest.raises(TrainingError, match="cosine"):
        build_scheduler(opt, cfg, 10)


def test_cosine_reaches_half_lr_half_way_and_min_lr_at_end():
    lrs = _lr_trajectory(SchedulerConfig(name="cosine"), 10, lr=0.02)
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[5] == pytest.approx(0.01, abs=1e-12)
    assert lrs == sorted(lrs, reverse=True)
    opt = build_optimizer(_params(), OptimizerConfig(name="sgd", lr=1.0, momentum=0))
    sched = build_scheduler(opt, SchedulerConfig(name="cosine", min_lr=0.1), 4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_poly_follows_nnunet_formula():
    epochs, lr = 8, 0.01
    lrs = _lr_trajectory(SchedulerConfig(name="poly"), epochs, lr=lr)
    assert lrs == pytest.approx([lr * (1 - e / epochs) ** 0.9 for e in range(epochs)], rel=1e-12)
    floor = _lr_trajectory(SchedulerConfig(name="poly", min_lr=0.001, poly_exponent=2.0), 4, lr=lr)
    assert floor == pytest.approx([0.001 + 0.009 * (1 - e / 4) ** 2 for e in range(4)])


def test_warmup_then_cosine():
    lrs = _lr_trajectory(SchedulerConfig(name="cosine", warmup_epochs=2, warmup_start_factor=0.1), 6)
    assert lrs[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert lrs[3:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)])


def test_cosine_restarts_restart_after_t0():
    lrs = _lr_trajectory(SchedulerConfig(name="cosine_restarts", t0=3, t_mult=2), 10)
    assert lrs[0] == lrs[3] == lrs[9] == pytest.approx(1.0)
    assert lrs[1] == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))


def test_plateau_reduces_after_patience():
    lrs = _lr_trajectory(SchedulerConfig(name="plateau", plateau_patience=1, plateau_factor=0.5), 6,
                         metrics=[1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    # metric flat from epoch 1: bad epochs 1, 2 (> patience 1) → halve after the third value.
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    lrs = _lr_trajectory(SchedulerConfig(name="plateau", plateau_patience=0, plateau_factor=0.5), 4,
                         metrics=[1.0, 2.0, 3.0, 4.0])
    assert lrs == pytest.approx([1.0, 1.0, 0.5, 0.25])


def test_none_scheduler_keeps_lr():
    assert _lr_trajectory(SchedulerConfig(name="none"), 5, lr=0.3) == pytest.approx([0.3] * 5)

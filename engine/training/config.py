"""Training configuration: plain dataclasses that round-trip through JSON.

Configs are saved next to every checkpoint and in the run folder, so a run can be inspected,
reproduced and resumed from the files alone. Optimizers and schedulers are the stock
``torch.optim`` ones, built from names so a plan file or CLI flag can choose them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.optim import lr_scheduler

from engine.errors import TrainingError
from engine.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "poly", "plateau", "cosine_restarts")
MONITOR_MODES = ("min", "max")
DEVICES = ("auto", "cpu", "cuda")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a dict, rejecting unknown keys (typos must not pass silently)."""
    if not isinstance(data, dict):
        raise TrainingError(f"{where}: expected a JSON object, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainingError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}.")
    return cls(**data)


@dataclass
class OptimizerConfig:
    """Which ``torch.optim`` optimizer and its hyper-parameters (momentum/nesterov: SGD only)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        self.name = str(self.name).lower()
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.name not in OPTIMIZERS:
            raise TrainingError(f"Unknown optimizer '{self.name}'; valid names: {', '.join(OPTIMIZERS)}.")
        if not self.lr > 0:
            raise TrainingError(f"Optimizer lr must be > 0, got {self.lr}.")
        if self.weight_decay < 0:
            raise TrainingError(f"weight_decay must be >= 0, got {self.weight_decay}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizerConfig:
        return _from_dict(cls, data, "optimizer config")


@dataclass
class SchedulerConfig:
    """Per-epoch learning-rate schedule.

    ``cosine`` anneals to ``min_lr`` over the run; ``poly`` is nnU-Net's
    ``lr·(1 - e/E)^0.9``; ``cosine_restarts`` is SGDR with ``t0``/``t_mult``; ``plateau``
    multiplies by ``plateau_factor`` after ``plateau_patience`` evaluations without improvement
    of the trainer's monitored metric. ``warmup_epochs`` ramps linearly from
    ``warmup_start_factor·lr`` before the main schedule (not with ``plateau``).
    """

    name: str = "none"
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.1
    t0: int = 10
    t_mult: int = 1
    poly_exponent: float = 0.9
    plateau_patience: int = 10
    plateau_factor: float = 0.1

    def __post_init__(self) -> None:
        self.name = str(self.name).lower()
        if self.name not in SCHEDULERS:
            raise TrainingError(f"Unknown scheduler '{self.name}'; valid names: {', '.join(SCHEDULERS)}.")
        if self.warmup_epochs < 0:
            raise TrainingError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}.")
        if self.warmup_epochs and self.name == "plateau":
            raise TrainingError("Warm-up cannot be combined with the 'plateau' scheduler; "
                                "set warmup_epochs to 0 or choose cosine/poly.")
        if not 0 < self.warmup_start_factor <= 1:
            raise TrainingError(f"warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}.")
        if self.t0 < 1 or self.t_mult < 1:
            raise TrainingError(f"cosine_restarts needs t0 >= 1 and t_mult >= 1, got {self.t0}, {self.t_mult}.")
        if not 0 < self.plateau_factor < 1:
            raise TrainingError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchedulerConfig:
        return _from_dict(cls, data, "scheduler config")


@dataclass
class TrainerConfig:
    """Everything the generic trainer decides; task-specific choices live in the task object.

    ``early_stopping_patience`` counts evaluations of ``monitor`` (validations when it is a
    ``val_*`` metric) without an improvement larger than ``min_delta``; ``None`` disables it.
    ``steps_per_epoch`` fixes the number of optimizer steps per epoch (nnU-Net style, cycling the
    loader); ``None`` means one pass over the data. ``amp`` enables bf16 autocast on CUDA only:
    CPU always trains in fp32.
    """

    epochs: int = 100
    steps_per_epoch: int | None = None
    batch_size: int = 2
    val_batch_size: int | None = None
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    val_every: int = 1
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = True
    grad_clip: float | None = None
    checkpoint_every: int = 1
    save_best: bool = True
    out_dir: str = "training_run"
    ddp_find_unused_parameters: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, dict):
            self.optimizer = OptimizerConfig.from_dict(self.optimizer)
        if isinstance(self.scheduler, dict):
            self.scheduler = SchedulerConfig.from_dict(self.scheduler)
        self.out_dir = str(self.out_dir)
        self.mode = str(self.mode).lower()
        self.device = str(self.device).lower()
        if self.epochs < 1:
            raise TrainingError(f"epochs must be >= 1, got {self.epochs}.")
        for name in ("steps_per_epoch", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainingError(f"{name} must be >= 1 or null, got {value}.")
        for name in ("batch_size", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_workers < 0:
            raise TrainingError(f"num_workers must be >= 0, got {self.num_workers}.")
        if self.mode not in MONITOR_MODES:
            raise TrainingError(f"Unknown monitor mode '{self.mode}'; valid modes: {', '.join(MONITOR_MODES)}.")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise TrainingError(f"Unknown device '{self.device}'; valid: {', '.join(DEVICES)} (or cuda:N).")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise TrainingError(f"grad_clip must be > 0 or null, got {self.grad_clip}.")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["optimizer"] = self.optimizer.to_dict()
        d["scheduler"] = self.scheduler.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        return _from_dict(cls, dict(data), "trainer config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"Trainer config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainerConfig:
        path = Path(path)
        if not path.is_file():
            raise TrainingError(f"Trainer config file not found: {path}")
        return cls.from_json(path.read_text(encoding="utf-8"))


def build_optimizer(params: Iterable[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Instantiate the configured optimizer over ``params`` (tensors or param-group dicts)."""
    params = list(params)
    if not params:
        raise TrainingError("The model has no trainable parameters to optimize.")
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise TrainingError(f"Unknown optimizer '{cfg.name}'; valid names: {', '.join(OPTIMIZERS)}.")


def _poly_lambdas(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total: int) -> list[Any]:
    """One factor function per param group: min_lr is absolute, so the factor depends on the base lr."""
    def make(base_lr: float):
        floor = min(cfg.min_lr / base_lr, 1.0) if base_lr > 0 else 0.0

        def factor(epoch: int) -> float:
            progress = min(epoch, total) / total
            return floor + (1.0 - floor) * (1.0 - progress) ** cfg.poly_exponent
        return factor
    return [make(group["lr"]) for group in optimizer.param_groups]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_epochs: int,
                    mode: str = "min") -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    """Per-epoch scheduler (``step()`` once per epoch; ``plateau`` takes ``step(metric)``).

    ``none`` still returns a constant :class:`~torch.optim.lr_scheduler.LambdaLR`, so the
    trainer and checkpoints handle one code path. ``mode`` is the monitor mode, for plateau.
    """
    if cfg.name not in SCHEDULERS:
        raise TrainingError(f"Unknown scheduler '{cfg.name}'; valid names: {', '.join(SCHEDULERS)}.")
    if total_epochs < 1:
        raise TrainingError(f"total_epochs must be >= 1, got {total_epochs}.")
    if cfg.name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.plateau_factor,
                                              patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    warmup = min(cfg.warmup_epochs, total_epochs - 1) if cfg.warmup_epochs else 0
    main_epochs = max(total_epochs - warmup, 1)
    if cfg.name == "none":
        main: lr_scheduler.LRScheduler = lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    elif cfg.name == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_epochs, eta_min=cfg.min_lr)
    elif cfg.name == "poly":
        main = lr_scheduler.LambdaLR(optimizer, _poly_lambdas(optimizer, cfg, main_epochs))
    else:  # cosine_restarts
        main = lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.t0, T_mult=cfg.t_mult,
                                                        eta_min=cfg.min_lr)
    if not warmup:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0,
                                 total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])

"""A task-agnostic training loop.

Every pipeline (esophagus cascade + classifier, NPC multitask, GTV 2D cascade, PET multitask)
shares this loop and supplies only a small :class:`~engine.training.steps.TrainingTask` object that
knows how to turn a batch into a loss and validation metrics. The loop owns what must be right once:
device and bf16 autocast, seeding, per-epoch reproducible shuffling (:mod:`engine.training.loaders`),
clipping, validation cadence, early stopping, per-step cancellation, atomic checkpoints with
bit-exact resume, progress events, ``history.csv`` and DDP under ``torchrun``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from engine.errors import Cancelled, TrainingError
from engine.training.callbacks import Callback, CsvHistoryLogger, ProgressEvent
from engine.training.checkpoint import (capture_rng_state, has_checkpoint, load_checkpoint,
                                        restore_rng_state, save_checkpoint)
from engine.training.config import TrainerConfig, build_optimizer, build_scheduler
from engine.training.distributed import (DistributedContext, cleanup_distributed, init_distributed,
                                         wrap_model)
from engine.training.loaders import DataSource, LoaderContext, build_loader, epoch_batches, epoch_seed
from engine.training.steps import StepOutput, TrainingResult, TrainingTask, mean_metrics, move_to_device
from engine.utils.seeding import seed_everything

__all__ = [
    "BEST_DIR", "CONFIG_FILE", "HISTORY_FILE", "LAST_DIR", "Callback", "DataSource", "LoaderContext",
    "StepOutput", "Trainer", "TrainingResult", "TrainingTask", "build_loader", "move_to_device",
]

log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
CONFIG_FILE = "trainer_config.json"
LAST_DIR = "checkpoints/last"
BEST_DIR = "checkpoints/best"


class _CancelRequest(Exception):
    """Internal: unwinds the loop to the single place that handles cancellation."""


@dataclass
class _LoopState:
    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_evaluations: int = 0
    stopped_early: bool = False


# --------------------------------------------------------------------------- trainer

class Trainer:
    """Runs ``task`` on ``model``; see :class:`TrainingTask` and :class:`TrainerConfig`.

    ``cancel`` is a :class:`threading.Event` or a callable returning True to stop; it is checked
    before every step. A cancelled run writes nothing more: the last complete checkpoint stays
    and ``fit`` returns with ``cancelled=True``. A callback or task raising
    :class:`~engine.errors.Cancelled` cancels the same way. ``resume=True`` continues from
    ``<out_dir>/checkpoints/last`` when it exists.
    """

    def __init__(self, model: torch.nn.Module, task: TrainingTask, train_data: DataSource,
                 val_data: DataSource | None = None, config: TrainerConfig | None = None,
                 callbacks: Sequence[Callback] = (),
                 cancel: threading.Event | Callable[[], bool] | None = None,
                 resume: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TrainingError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        for hook in ("training_step", "validation_step"):
            if not callable(getattr(task, hook, None)) and not (hook == "validation_step" and val_data is None):
                raise TrainingError(f"The training task {type(task).__name__} has no {hook}() method.")
        self.model = model
        self.task = task
        self.train_data = train_data
        self.val_data = val_data
        self.config = config or TrainerConfig()
        self.callbacks = list(callbacks)
        self.cancel = cancel
        self.resume = resume
        self.collate_fn = collate_fn
        self.out_dir = Path(self.config.out_dir)
        self.history_path = self.out_dir / HISTORY_FILE
        self.last_dir = self.out_dir / LAST_DIR
        self.best_dir = self.out_dir / BEST_DIR
        self._cancel_flag = False
        self.monitor = self.config.monitor
        if val_data is None and self.monitor.startswith("val_"):
            self.monitor = "train_" + self.monitor[len("val_"):]
            log.info("No validation data: monitoring '%s' instead of '%s'.", self.monitor, self.config.monitor)

    # ------------------------------------------------------------------ public

    def fit(self, resume_from: str | Path | None = None) -> TrainingResult:
        """Train until ``epochs``, early stop or cancellation; ``resume_from`` names a checkpoint folder."""
        ctx, device = init_distributed(self.config.device)
        ok = False
        try:
            result = self._fit(ctx, device, Path(resume_from) if resume_from is not None else None)
            ok = True
            return result
        finally:
            cleanup_distributed(ctx, barrier=ok)

    # ------------------------------------------------------------------ setup

    def _fit(self, ctx: DistributedContext, device: torch.device, resume_from: Path | None) -> TrainingResult:
        cfg = self.config
        self._ctx, self._device = ctx, device
        seed_everything(cfg.seed + ctx.rank, deterministic=cfg.deterministic)
        model = self.model.to(device)
        params = (self.task.parameter_groups(model) if callable(getattr(self.task, "parameter_groups", None))
                  else [p for p in model.parameters() if p.requires_grad])
        optimizer = build_optimizer(params, cfg.optimizer)
        scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, mode=cfg.mode)
        state = _LoopState()

        source = self._resume_source(resume_from)
        rng_to_restore = None
        if source is not None:
            rng_to_restore = self._restore(source, model, optimizer, scheduler, state)
        start_epoch = state.epoch

        self._amp = self._use_amp(device)
        train_model = wrap_model(model, ctx, device, cfg.ddp_find_unused_parameters)
        self._emitters: list[Callback] = []
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / CONFIG_FILE)
            history = CsvHistoryLogger(self.history_path, resume_epoch=start_epoch if source else None)
            self._emitters = [history, *self.callbacks]
        ctx.barrier()
        if rng_to_restore is not None:
            restore_rng_state(rng_to_restore)  # last, so nothing after it draws from the generators

        self._t_start = time.monotonic()
        self._steps_done = 0
        self._steps_per_epoch: int | None = cfg.steps_per_epoch
        self._emit(ProgressEvent("start", epoch=start_epoch, total_epochs=cfg.epochs,
                                 global_step=state.global_step, lr=optimizer.param_groups[0]["lr"]))
        status, message, cancelled, final_metrics = "completed", None, False, {}
        try:
            if start_epoch >= cfg.epochs:
                log.info("Checkpoint is at epoch %d of %d: nothing left to train.", start_epoch, cfg.epochs)
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                final_metrics = self._run_epoch(epoch, model, train_model, optimizer, scheduler, state)
                if state.stopped_early:
                    status = "early_stopped"
                    break
        except (_CancelRequest, Cancelled) as exc:
            cancelled, status = True, "cancelled"
            message = str(exc) or "cancelled by the user"
            log.info("Training cancelled during epoch %d; last complete checkpoint kept.", state.epoch + 1)
        except BaseException as exc:
            self._emit(self._event("end", state, optimizer, status="failed", message=str(exc)))
            raise
        self._emit(self._event("end", state, optimizer, status=status, message=message,
                               metrics=final_metrics))
        return TrainingResult(
            epochs_run=state.epoch, start_epoch=start_epoch, global_step=state.global_step,
            best_metric=state.best_metric, best_epoch=state.best_epoch, monitor=self.monitor,
            stopped_early=state.stopped_early, cancelled=cancelled, history_path=self.history_path,
            checkpoint_path=self.last_dir if has_checkpoint(self.last_dir) else None,
            best_checkpoint_path=self.best_dir if has_checkpoint(self.best_dir) else None,
            final_metrics=final_metrics)

    def _resume_source(self, resume_from: Path | None) -> Path | None:
        """The checkpoint folder to continue from: ``resume_from``, else the last one when ``resume``."""
        if resume_from is not None:
            return resume_from
        if self.resume:
            if has_checkpoint(self.last_dir):
                return self.last_dir
            log.info("No checkpoint in %s; starting a new run.", self.last_dir)
        elif has_checkpoint(self.last_dir) and self._ctx.is_main:
            log.warning("%s holds a checkpoint of an earlier run; it will be overwritten "
                        "(add --resume to the command to continue it).", self.last_dir)
        return None

    def _use_amp(self, device: torch.device) -> bool:
        """bf16 autocast on CUDA only (no loss scaling needed); CPU trains in fp32."""
        if not self.config.amp or device.type != "cuda":
            return False
        if not torch.cuda.is_bf16_supported():
            log.warning("This GPU does not support bf16; training in fp32.")
            return False
        return True

    # ------------------------------------------------------------------ epoch

    def _run_epoch(self, epoch: int, model: torch.nn.Module, train_model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, scheduler: Any, state: _LoopState) -> dict[str, float]:
        cfg, ctx = self.config, self._ctx
        t0 = time.monotonic()
        lr = float(optimizer.param_groups[0]["lr"])
        if callable(getattr(self.task, "on_epoch_start", None)):
            self.task.on_epoch_start(epoch, model)
        train = ctx.all_reduce_mean(self._train_epoch(epoch, train_model, model, optimizer, state))
        metrics = {f"train_{k}": v for k, v in train.items()}
        if self.val_data is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            val = {f"val_{k}": v for k, v in self._validate(epoch, model).items()}
            metrics.update(val)
            self._emit(self._event("validation", state, optimizer, epoch=epoch, metrics=val))

        value = metrics.get(self.monitor)
        evaluated = self.monitor in metrics
        if not evaluated and (not self.monitor.startswith("val_") or any(k.startswith("val_") for k in metrics)):
            raise TrainingError(f"Monitored metric '{self.monitor}' was not produced; available metrics: "
                                f"{', '.join(sorted(metrics)) or 'none'}. Set TrainerConfig.monitor accordingly.")
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if evaluated and value is not None and math.isfinite(value):
                scheduler.step(value)
        else:
            scheduler.step()

        state.epoch = epoch
        improved = False
        if evaluated:
            improved = self._update_early_stopping(float(value), epoch, state)  # type: ignore[arg-type]
        metrics["time_s"] = time.monotonic() - t0
        if improved and cfg.save_best:
            self._save(self.best_dir, model, optimizer, scheduler, state)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or state.stopped_early:
            self._save(self.last_dir, model, optimizer, scheduler, state)
        log.info("epoch %d/%d  lr %.3g  %s", epoch, cfg.epochs, lr,
                 "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self._emit(self._event("epoch", state, optimizer, epoch=epoch, metrics=metrics, lr=lr,
                               loss=metrics.get("train_loss")))
        return metrics

    def _update_early_stopping(self, value: float, epoch: int, state: _LoopState) -> bool:
        cfg = self.config
        best = state.best_metric
        if not math.isfinite(value):
            improved = False
        elif best is None:
            improved = True
        elif cfg.mode == "min":
            improved = value < best - cfg.min_delta
        else:
            improved = value > best + cfg.min_delta
        if improved:
            state.best_metric, state.best_epoch, state.bad_evaluations = value, epoch, 0
        else:
            state.bad_evaluations += 1
            if cfg.early_stopping_patience is not None and state.bad_evaluations >= cfg.early_stopping_patience:
                state.stopped_early = True
                log.info("Early stopping at epoch %d: %s has not improved for %d evaluation(s) "
                         "(best %.6g at epoch %s).", epoch, self.monitor, state.bad_evaluations,
                         state.best_metric if state.best_metric is not None else math.nan, state.best_epoch)
        return improved

    def _loader(self, source: DataSource, epoch: int, train: bool) -> Iterable[Any]:
        ctx = self._ctx
        lctx = LoaderContext(epoch=epoch, seed=self.config.seed, rank=ctx.rank, world_size=ctx.world_size,
                             train=train, config=self.config,
                             generator=torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch)))
        return epoch_batches(source, lctx, self.collate_fn)

    def _train_epoch(self, epoch: int, train_model: torch.nn.Module, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, state: _LoopState) -> dict[str, float]:
        cfg, device = self.config, self._device
        loader = self._loader(self.train_data, epoch, train=True)
        total = cfg.steps_per_epoch
        if total is None:
            try:
                total = len(loader)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self._steps_per_epoch = total
        train_model.train()
        sums: dict[str, float] = defaultdict(float)
        weight = 0.0
        step = 0
        batches: Iterator[Any] = iter(loader)
        while cfg.steps_per_epoch is None or step < cfg.steps_per_epoch:
            self._check_cancel()
            try:
                batch = next(batches)
            except StopIteration:
                if cfg.steps_per_epoch is None or step == 0:
                    break
                batches = iter(loader)  # cycle: fixed number of steps per epoch
                try:
                    batch = next(batches)
                except StopIteration:
                    raise TrainingError("The training loader cannot be iterated again within an epoch; "
                                        "return a re-iterable (e.g. a DataLoader) when steps_per_epoch is set.")
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self._amp):
                out = self.task.training_step(train_model, batch, device)
            if isinstance(out, torch.Tensor):
                out = StepOutput(loss=out)
            loss = out.loss
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TrainingError("training_step must return a scalar loss tensor.")
            if not torch.isfinite(loss.detach()).all():
                raise TrainingError(f"Loss became {loss.item()} at epoch {epoch}, step {step + 1}; "
                                    "lower the learning rate or set grad_clip.")
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            state.global_step += 1
            self._steps_done += 1
            w = float(out.batch_size or 1)
            loss_value = float(loss.detach())
            sums["loss"] += loss_value * w
            for k, v in out.metrics.items():
                sums[k] += float(v) * w
            weight += w
            self._emit(self._event("step", state, optimizer, epoch=epoch, step=step, loss=loss_value,
                                   metrics={k: float(v) for k, v in out.metrics.items()}))
        if step == 0:
            raise TrainingError("The training data yielded no batches; check the dataset and batch_size "
                                "(drop_last with fewer cases than one batch gives none).")
        return {k: v / weight for k, v in sorted(sums.items())}

    def _validate(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        ctx, device = self._ctx, self._device
        loader = self._loader(self.val_data, epoch, train=False)  # type: ignore[arg-type]
        model.eval()
        outputs: list[dict[str, Any]] = []
        cancelled = False
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self._amp):
            for batch in loader:
                # Local check only: ranks may hold different numbers of validation batches.
                if self._cancel_requested_local():
                    cancelled = True
                    break
                outputs.append(self.task.validation_step(model, batch, device))
        if ctx.any(cancelled):
            raise _CancelRequest("cancelled during validation")
        if ctx.enabled:
            outputs = [o for rank_outputs in ctx.all_gather_objects(outputs) for o in rank_outputs]
        end = getattr(self.task, "validation_epoch_end", None)
        if callable(end):
            metrics = end(outputs)
        else:
            metrics = mean_metrics(outputs)
        return {k: float(v) for k, v in sorted(metrics.items())}

    # ------------------------------------------------------------------ cancellation

    def _cancel_requested_local(self) -> bool:
        if self._cancel_flag:
            return True
        c = self.cancel
        if c is None:
            return False
        if isinstance(c, threading.Event):
            return c.is_set()
        return bool(c())

    def _check_cancel(self) -> None:
        if self._ctx.any(self._cancel_requested_local()):
            raise _CancelRequest("cancelled by the user")

    # ------------------------------------------------------------------ checkpoints

    def _save(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, state: _LoopState) -> None:
        ctx = self._ctx
        rng = ctx.all_gather_objects(capture_rng_state())  # collective: every rank takes part
        if ctx.is_main:
            task_state = self.task.state_dict() if callable(getattr(self.task, "state_dict", None)) else None
            save_checkpoint(directory, model, {
                "epoch": state.epoch,
                "global_step": state.global_step,
                "best_metric": state.best_metric,
                "best_epoch": state.best_epoch,
                "bad_evaluations": state.bad_evaluations,
                "stopped_early": state.stopped_early,
                "monitor": self.monitor,
                "world_size": ctx.world_size,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "task": task_state,
                "config": self.config.to_dict(),
            })
        ctx.barrier()

    def _restore(self, source: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, state: _LoopState) -> dict[str, Any] | None:
        """Load weights/optimizer/scheduler/counters now; the RNG state is returned to restore last."""
        ckpt = load_checkpoint(source)
        s = ckpt.state
        try:
            model.load_state_dict(ckpt.model_state, strict=True)
        except RuntimeError as exc:
            raise TrainingError(f"Checkpoint {source} does not fit this model: {exc}") from exc
        try:
            optimizer.load_state_dict(s["optimizer"])
            scheduler.load_state_dict(s["scheduler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise TrainingError(f"Checkpoint {source} has an optimizer/scheduler state that does not fit "
                                f"the configured ones ({exc}); resume with the same configuration.") from exc
        state.epoch = int(s["epoch"])
        state.global_step = int(s["global_step"])
        state.best_metric = s.get("best_metric")
        state.best_epoch = s.get("best_epoch")
        state.bad_evaluations = int(s.get("bad_evaluations", 0))
        if s.get("task") is not None and callable(getattr(self.task, "load_state_dict", None)):
            self.task.load_state_dict(s["task"])
        old = s.get("config") or {}
        changed = sorted(k for k, v in self.config.to_dict().items()
                         if k not in ("epochs", "out_dir") and old.get(k, v) != v)
        if changed:
            log.warning("Resuming with a changed configuration (%s); the run will differ from an "
                        "uninterrupted one.", ", ".join(changed))
        log.info("Resuming from %s at epoch %d (global step %d).", source, state.epoch, state.global_step)
        rng = s.get("rng") or []
        if not rng:
            return None
        if len(rng) != self._ctx.world_size:
            log.warning("Checkpoint was written by %d process(es), now %d: RNG streams restored from rank 0 only.",
                        len(rng), self._ctx.world_size)
            return rng[0]
        return rng[self._ctx.rank]

    # ------------------------------------------------------------------ events

    def _event(self, kind: str, state: _LoopState, optimizer: torch.optim.Optimizer, epoch: int | None = None,
               step: int = 0, **kw: Any) -> ProgressEvent:
        total_epochs = self.config.epochs
        epoch = state.epoch if epoch is None else epoch
        per_epoch = self._steps_per_epoch
        elapsed = time.monotonic() - self._t_start
        eta = None
        if per_epoch and self._steps_done:
            if kind == "step":
                remaining = (total_epochs - epoch) * per_epoch + (per_epoch - step)
            else:
                remaining = (total_epochs - epoch) * per_epoch
            eta = elapsed / self._steps_done * max(remaining, 0)
        if kind == "end":
            eta = 0.0
        kw.setdefault("lr", float(optimizer.param_groups[0]["lr"]))
        return ProgressEvent(kind, epoch=epoch, total_epochs=total_epochs, step=step,  # type: ignore[arg-type]
                             total_steps=per_epoch, global_step=state.global_step, elapsed_s=elapsed,
                             eta_s=eta, **kw)

    def _emit(self, event: ProgressEvent) -> None:
        """Deliver to rank-0 callbacks; a failing callback is logged and never kills a long run."""
        for cb in self._emitters:
            try:
                cb(event)
            except Cancelled:
                self._cancel_flag = True  # honoured at the next step check, on every rank
            except Exception:
                if isinstance(cb, CsvHistoryLogger):
                    raise
                log.exception("Progress callback %r failed; continuing.", cb)

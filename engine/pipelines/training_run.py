"""The run folder of a training, for any task: where checkpoints wait for the bundle, resume checks.

A training writes its checkpoints and ``history.csv`` files into a hidden work folder beside the
bundle it will write, with a record of its dataset and options. The folder outlives a cancelled or
failed run so that ``resume`` can continue it, and the record lets ``resume`` refuse a command that
differs from the stopped run's.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from engine.errors import Cancelled, TrainingError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.tasks.base import CancelFn
    from engine.training.trainer import Callback, TrainingResult

log = logging.getLogger(__name__)

#: Written into the work folder when a run starts, so ``resume`` can refuse different options.
RUN_OPTIONS_FILE = "train_options.json"
CANCELLED_MESSAGE = "training cancelled by the user; no model was written"


class Deadline:
    """A cancel callable that also fires at a wall-clock deadline (``time.monotonic()`` seconds, or None
    for none), and remembers whether the deadline was what stopped the run: the trainers keep the model
    then, where a user's cancel writes nothing."""

    def __init__(self, cancel: CancelFn | None, until: float | None):
        self.cancel, self.until, self.reached = cancel, until, False

    @classmethod
    def after_minutes(cls, cancel: CancelFn | None, minutes: float | None) -> Deadline:
        return cls(cancel, None if minutes is None else time.monotonic() + 60.0 * minutes)

    def __call__(self) -> bool:
        if self.cancel is not None and self.cancel():
            return True
        if self.until is not None and time.monotonic() >= self.until:
            self.reached = True
            return True
        return False


def work_dir(out_dir: str | Path) -> Path:
    """Where a training into ``out_dir`` keeps its checkpoints until the bundle is written (for ``resume``)."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.work"


def run_record(dataset: str | Path, options: Any) -> dict[str, Any]:
    """What must not change between a stopped run and its resume: the dataset and every option
    (``options`` is a dataclass), as JSON would give it back."""
    return json.loads(json.dumps({"dataset": str(Path(dataset).expanduser().absolute()), **asdict(options)}))


def check_resume(work: Path, current: dict[str, Any], resume: bool) -> None:
    """On resume, refuse a dataset or options that differ from the stopped run's (read-only: bad input
    writes nothing)."""
    recorded = work / RUN_OPTIONS_FILE
    if not resume:
        if work.is_dir():
            log.warning("%s holds an unfinished training; starting over (--resume would continue it).", work)
        return
    if not work.is_dir():
        raise TrainingError(f"Nothing to resume: no unfinished training in {work}. Run without --resume.")
    if recorded.is_file():
        before = json.loads(recorded.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
        if changed:
            diffs = ", ".join(f"{k} ({before.get(k)!r} → {current.get(k)!r})" for k in changed)
            raise TrainingError(f"resume continues a stopped run with the same options, but these "
                                f"differ: {diffs}. Repeat the original command with --resume.")
    else:
        log.warning("%s has no %s (written by an older engine): resuming without checking the options.",
                    work, RUN_OPTIONS_FILE)
    log.info("Resuming the training in %s.", work)


def record_run(work: Path, record: dict[str, Any], resume: bool) -> None:
    """Write the run record; a new run first clears an earlier run's work folder, so a later resume
    cannot pick up that run's checkpoints for a phase this run has not reached."""
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / RUN_OPTIONS_FILE).write_text(json.dumps(record, indent=1))


def command_line(command: str | None) -> str:
    """What a bundle records as the command that made it: the caller's, else this process's."""
    return command or " ".join(shlex.quote(a) for a in sys.argv)


def check_cancel(cancel: "CancelFn | None") -> None:
    if cancel is not None and cancel():
        raise Cancelled(CANCELLED_MESSAGE)


def final_metrics(result: "TrainingResult") -> dict[str, float]:
    """The last epoch's metrics, also when that epoch ran before a resume (then from ``history.csv``)."""
    if result.final_metrics or not result.history_path.is_file():
        return dict(result.final_metrics)
    return epoch_metrics(result, None)


def epoch_metrics(result: "TrainingResult", epoch: int | None) -> dict[str, float]:
    """One epoch's row of ``history.csv`` (the last row for ``None``)."""
    from engine.training.callbacks import read_history

    rows = read_history(result.history_path) if result.history_path.is_file() else []
    if epoch is not None:
        rows = [r for r in rows if r["epoch"] == epoch]
    return {k: v for k, v in rows[-1].items() if v is not None and k not in ("epoch", "lr")} if rows else {}


class PhaseTaggedCallbacks:
    """Tags trainer events with the phase, so one GUI progress bar can follow a multi-phase training."""

    def __init__(self, phase: str, callbacks: Sequence["Callback"]):
        self.phase = phase
        self.callbacks = list(callbacks)

    def __call__(self, event: Any) -> None:
        event.message = f"{self.phase}: {event.message}" if event.message else self.phase
        for cb in self.callbacks:
            cb(event)

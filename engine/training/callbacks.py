"""Progress reporting: one event type, several consumers.

The trainer emits :class:`ProgressEvent` objects to plain callables. The Slicer module runs
training in a subprocess and parses :class:`JsonLinesProgress` lines from its stdout; the CLI
shows :class:`TqdmProgress` bars; :class:`CsvHistoryLogger` keeps ``history.csv``. In
distributed runs only rank 0 emits events.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TextIO

from engine.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

EventKind = Literal["start", "step", "epoch", "validation", "end"]
#: Prefix of machine-readable progress lines, so a parent process can tell them from log output.
PROGRESS_PREFIX = "@@progress "


@dataclass
class ProgressEvent:
    """A snapshot of training progress; ``epoch``/``step`` are 1-based, 0 before the first.

    ``status`` is set on ``end`` events: ``completed``, ``early_stopped``, ``cancelled`` or ``failed``
    (with ``message``). ``total_steps`` is the number of steps of one epoch (``None`` when unknown).
    """

    kind: EventKind
    epoch: int
    total_epochs: int
    step: int = 0
    total_steps: int | None = None
    global_step: int = 0
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    status: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no NaN/Infinity: a diverged metric becomes null rather than an unparseable line.
        d["loss"] = _finite_or_none(d["loss"])
        d["metrics"] = {k: _finite_or_none(v) for k, v in d["metrics"].items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProgressEvent:
        return cls(**data)


Callback = Callable[[ProgressEvent], None]


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonLinesProgress:
    """Writes ``@@progress {json}`` per event to a stream (stdout by default) and flushes.

    ``min_interval_s`` throttles ``step`` events only (other kinds are always written), so a fast
    loop does not flood the pipe to the GUI.
    """

    def __init__(self, stream: TextIO | None = None, prefix: str = PROGRESS_PREFIX,
                 min_interval_s: float = 0.0) -> None:
        self.stream = stream
        self.prefix = prefix
        self.min_interval_s = min_interval_s
        self._last_step_time = -math.inf

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "step" and self.min_interval_s > 0:
            now = time.monotonic()
            last_of_epoch = event.total_steps is not None and event.step >= event.total_steps
            if now - self._last_step_time < self.min_interval_s and not last_of_epoch:
                return
            self._last_step_time = now
        stream = self.stream or sys.stdout
        stream.write(self.prefix + json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        stream.flush()


def parse_progress_line(line: str, prefix: str = PROGRESS_PREFIX) -> ProgressEvent | None:
    """The event on a ``@@progress`` line, ``None`` for any other (log) line."""
    if not line.startswith(prefix):
        return None
    return ProgressEvent.from_dict(json.loads(line[len(prefix):]))


class TqdmProgress:
    """CLI progress: one bar per epoch over its steps, and a summary line per epoch."""

    def __init__(self, leave: bool = False, file: TextIO | None = None) -> None:
        self.leave = leave
        self.file = file
        self._bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if event.kind == "step":
            if self._bar is None:
                self._bar = tqdm(total=event.total_steps, desc=f"epoch {event.epoch}/{event.total_epochs}",
                                 leave=self.leave, file=self.file, dynamic_ncols=True)
            self._bar.update(event.step - self._bar.n)
            if event.loss is not None:
                self._bar.set_postfix(loss=f"{event.loss:.4g}", refresh=False)
        elif event.kind in ("epoch", "end"):
            self._close()
            if event.kind == "epoch":
                shown = ", ".join(f"{k}={v:.4g}" for k, v in event.metrics.items() if isinstance(v, float))
                eta = f", eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
                tqdm.write(f"epoch {event.epoch}/{event.total_epochs}: {shown}{eta}", file=self.file)
            else:
                tqdm.write(f"training {event.status}" + (f": {event.message}" if event.message else ""),
                           file=self.file)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CsvHistoryLogger:
    """``history.csv``: one row per epoch (epoch, lr, time_s, train_*, val_*).

    Columns grow as metrics appear (validation may start later), so the whole small file is
    rewritten atomically at each epoch. On resume, rows after the checkpoint's epoch are dropped,
    because those epochs will be trained again.
    """

    FIXED = ("epoch", "lr", "time_s")

    def __init__(self, path: str | Path, resume_epoch: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if resume_epoch is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume_epoch]
            self._write()

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind != "epoch":
            return
        row: dict[str, Any] = {"epoch": event.epoch, "lr": event.lr,
                               "time_s": round(event.metrics.get("time_s", 0.0), 4)}
        row.update({k: v for k, v in event.metrics.items() if k != "time_s"})
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        columns = list(self.FIXED)
        for row in self.rows:
            columns += sorted(k for k in row if k not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def read_history(path: str | Path) -> list[dict[str, float | None]]:
    """``history.csv`` as numbers (empty cells → ``None``), e.g. for plots in the Slicer module."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        out.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
        out[-1]["epoch"] = int(r["epoch"])  # type: ignore[assignment]
    return out

"""Running a task on many inputs: a folder of images or a CSV list, one sub-folder per case.

Knows no task: each case goes through :meth:`engine.tasks.Task.segment`, and the summary row is read
from the case's ``report.json`` fields that every task writes (``predicted_stage`` and
``stage_probabilities`` where the task stages, ``volumes_cm3``, ``warnings``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine.errors import Cancelled, EngineError
from engine.pipelines import outputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.tasks.base import CancelFn, Task

log = logging.getLogger(__name__)


def summary_row(report: dict[str, Any]) -> dict[str, Any]:
    """The columns of ``summary.csv`` for one case's report."""
    row: dict[str, Any] = {"status": "ok"}
    if report.get("predicted_stage") is not None:
        row["predicted_stage"] = report["predicted_stage"]
    row.update({f"p_{k}": round(v, 6) for k, v in (report.get("stage_probabilities") or {}).items()})
    row.update({f"volume_cm3_{k.replace(' ', '_')}": v for k, v in report.get("volumes_cm3", {}).items()})
    row["warnings"] = " | ".join(report.get("warnings", []))
    return row


def run_batch(task: "Task", source: str | Path, out_dir: str | Path, model: Any = None, *, device: str = "auto",
              gradcam: bool = True, overwrite: bool = False,
              progress: Callable[[int, int, str], None] | None = None, cancel: "CancelFn | None" = None,
              **options: Any) -> Path:
    """Segment & Stage every input of a folder or CSV list into ``out_dir/<case>/`` and write one
    ``summary.csv``; a failed case is a row with its error and the batch goes on."""
    inputs = outputs.list_inputs(source)
    out = Path(out_dir).expanduser()
    summary = out / outputs.SUMMARY_FILE
    if summary.exists() and not overwrite:
        raise EngineError(f"'{out}' already holds a batch summary; choose a new folder or pass --overwrite.")
    predictor = task.load_predictor(model, device)
    rows = []
    for i, path in enumerate(inputs):
        if cancel is not None and cancel():
            raise Cancelled(f"batch cancelled after {i} of {len(inputs)} case(s)")
        name = outputs.case_name(path)
        if progress is not None:
            progress(i, len(inputs), name)
        row: dict[str, Any] = {"case": name, "input": str(path)}
        try:
            result = task.segment(path, out / name, predictor, gradcam=gradcam, overwrite=overwrite,
                                  cancel=cancel, **options)
            row.update(summary_row(result.report))
        except Cancelled:
            raise
        except EngineError as exc:
            log.error("%s: %s", name, exc)
            row.update({"status": "error", "error": str(exc)})
        rows.append(row)
    if progress is not None:
        progress(len(inputs), len(inputs), "")
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_summary_csv(summary, rows)
    return summary

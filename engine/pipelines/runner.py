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
    ``summary.csv`` whose ``status`` column says ok, error or cancelled for each case; a failed case
    is a row with its error and the batch goes on. The batch folder is locked and checked writable
    before the model is loaded; a cancelled batch still writes the summary of what it did."""
    inputs = outputs.list_inputs(source)
    out = outputs.check_output_dir(out_dir, overwrite=True)
    summary = out / outputs.SUMMARY_FILE
    if summary.exists() and not overwrite:
        raise EngineError(f"'{out}' already holds a batch summary; choose a new folder, or allow replacing "
                          "it (--overwrite).")
    with outputs.lock_output(out):
        outputs.remove_stale_staging(out)
        predictor = task.load_predictor(model, device)
        rows: list[dict[str, Any]] = []
        try:
            for i, path in enumerate(inputs):
                if cancel is not None and cancel():
                    raise Cancelled(f"batch cancelled after {i} of {len(inputs)} case(s)")
                if progress is not None:
                    progress(i, len(inputs), outputs.case_name(path))
                rows.append(_run_case(task, path, out, predictor, gradcam=gradcam, overwrite=overwrite,
                                      cancel=cancel, **options))
        except (Cancelled, KeyboardInterrupt):
            rows += [{"case": outputs.case_name(p), "input": str(p), "status": "cancelled"}
                     for p in inputs[len(rows):]]
            outputs.write_summary_csv(summary, rows)
            raise
        if progress is not None:
            progress(len(inputs), len(inputs), "")
        outputs.write_summary_csv(summary, rows)
    return summary


def _run_case(task: "Task", path: Path, out: Path, predictor: Any, **options: Any) -> dict[str, Any]:
    """One case of a batch as its ``summary.csv`` row; an error is the row's, not the batch's."""
    name = outputs.case_name(path)
    row: dict[str, Any] = {"case": name, "input": str(path)}
    try:
        result = task.segment(path, out / name, predictor, **options)
        row.update(summary_row(result.report))
    except Cancelled:
        raise
    except EngineError as exc:
        log.error("%s: %s", name, exc)
        row.update({"status": "error", "error": str(exc)})
    except Exception as exc:  # a bug or a system error in one case must not lose the others' rows
        log.error("%s: unexpected %s: %s", name, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        row.update({"status": "error", "error": f"unexpected error: {exc}"})
    return row


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of a ``summary.csv``."""
    import csv

    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))

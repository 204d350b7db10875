"""Writing a run's results: all files or none, and never over another run's results by accident.

Every task pipeline writes the same kinds of files (label map, Slicer segmentation, Grad-CAM,
``report.json``, ``overview.png``). They are written into a hidden staging folder inside the output
folder and moved into place only when all of them exist, so a failed or cancelled run leaves the
folder as it was.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from engine.errors import EngineError
from engine.io.image import READABLE_SUFFIXES
from engine.io.segmentation_nrrd import SegmentInfo
from engine.pipelines.locking import LOCK_FILE, OutputBusy, lock_output  # noqa: F401  (re-exported)
from engine.registry.bundle import Label
from engine.utils import signals
from engine.utils.atomic import apply_umask

log = logging.getLogger(__name__)

SEGMENTATION_FILE = "segmentation.nii.gz"
SLICER_SEGMENTATION_FILE = "segmentation.seg.nrrd"
GRADCAM_FILE = "gradcam.nii.gz"
REPORT_FILE = "report.json"
OVERVIEW_FILE = "overview.png"
RUN_FILES = (SEGMENTATION_FILE, SLICER_SEGMENTATION_FILE, GRADCAM_FILE, REPORT_FILE, OVERVIEW_FILE)
SUMMARY_FILE = "summary.csv"
STAGING_PREFIX = ".staging-"

#: Slicer's terminology context for anatomy codes (what the segment editor writes for SNOMED CT anatomy).
_SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool, files: Sequence[str] = RUN_FILES) -> Path:
    """Refuse an output folder that already holds results of a run, unless ``overwrite``."""
    if not str(out_dir).strip():
        raise EngineError("The output folder is empty; name a folder for the results.")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise EngineError(f"Output path '{out}' is a file; choose a folder for the results.")
    existing = [f for f in files if (out / f).exists()]
    if existing and not overwrite:
        raise EngineError(f"'{out}' already holds results of another run ({', '.join(existing)}); choose a "
                          "new output folder, or allow replacing them (--overwrite).")
    return out


class OutputWriteError(EngineError):
    """The results could not be written (disk full, device gone); the output folder is unchanged."""


def write_all(out_dir: Path, writers: Mapping[str, Callable[[Path], Any]],
              last: Mapping[str, Callable[[Path], Any]] | None = None) -> dict[str, Path]:
    """Call ``writer(staging_path)`` for every file name, then move all files into ``out_dir``.

    ``writers`` run concurrently in threads — compressing images (SimpleITK and zlib release the GIL)
    and rendering the figure overlap, which saves a good part of the writing time of a run — and
    ``last`` after all of them (a report that records how long writing took). Any exception (including
    a stop signal) removes the staging folder once every writer thread has stopped — removing it under
    a running writer, or leaving the process with writers still inside native code, is what aborts
    the interpreter — so ``out_dir`` is untouched. Files get the permissions the umask asks for.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    names = [*writers, *(last or {})]
    pool = ThreadPoolExecutor(max_workers=max(1, len(writers)))
    try:
        futures = [pool.submit(writer, staging / name) for name, writer in writers.items()]
        pool.shutdown(wait=True)
        try:
            for future in futures:
                future.result()  # the first writer's error, raised after all have finished
            for name, writer in (last or {}).items():
                writer(staging / name)
        except OSError as exc:  # a full, read-only or vanished disk: the user's to fix, not a bug
            raise OutputWriteError(f"Could not write the results into '{out_dir}': "
                                   f"{exc.strerror or exc}. Nothing was written; free disk space or choose "
                                   "another output folder.") from exc
        missing = [name for name in names if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"writer for {', '.join(missing)} produced no file")
        for name in names:
            apply_umask(staging / name)
        written = {}
        with signals.deferred():  # all files move, or none
            for name in names:
                os.replace(staging / name, out_dir / name)
                written[name] = out_dir / name
        return written
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a signal may have cut the first wait short
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove staging folders a killed run left in ``out_dir``; call only while holding its lock (so
    no live run of this engine is writing into them)."""
    removed = []
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        tmp = out_dir / (SUMMARY_FILE + ".tmp")
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
    if removed:
        log.info("Removed %d unfinished staging folder(s) left in %s by a stopped run.", len(removed), out_dir)
    return removed


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def slicer_terminology(term: Mapping[str, Any] | None) -> str | None:
    """A bundle label's terminology (category/type codes) as Slicer's ``TerminologyEntry`` value."""
    if not term or "category" not in term or "type" not in term:
        return None

    def code(c: Mapping[str, str] | None) -> str:
        return "^".join((c["coding_scheme"], c["code"], c["meaning"])) if c else "^^"

    modifier = code(term.get("type_modifier"))
    return "~".join([_SLICER_CONTEXT, code(term["category"]), code(term["type"]), modifier, _ANATOMY_CONTEXT,
                     "^^", "^^"])


def segments_from_labels(labels: Iterable[Label]) -> list[SegmentInfo]:
    return [SegmentInfo(lab.name, lab.value, tuple(c / 255.0 for c in lab.color),  # type: ignore[arg-type]
                        slicer_terminology(lab.terminology)) for lab in labels]


def list_inputs(source: str | os.PathLike) -> list[Path]:
    """Inputs of a batch: a CSV (column ``input``, else the first column; relative paths are relative
    to the CSV) or a folder whose image files and DICOM sub-folders are the cases."""
    src = Path(source).expanduser()
    if src.is_file() and src.suffix.lower() == ".csv":
        with src.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise EngineError(f"The input list {src} is empty.")
        column = rows[0].index("input") if "input" in rows[0] else 0
        body = rows[1:] if "input" in rows[0] or not Path(rows[0][0]).suffix else rows
        paths = [Path(r[column]) if Path(r[column]).is_absolute() else src.parent / r[column]
                 for r in body if r and r[column].strip()]
    elif src.is_dir():
        paths = sorted(p for p in src.iterdir() if not p.name.startswith(".") and (
            (p.is_file() and p.name.lower().endswith(READABLE_SUFFIXES)) or p.is_dir()))
    else:
        raise EngineError(f"Batch input '{src}' must be a folder of images or a CSV list of input paths.")
    if not paths:
        raise EngineError(f"No input images found in '{src}' (NIfTI, NRRD, MHA files or DICOM folders).")
    return paths


def case_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_summary_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with signals.deferred():
        os.replace(tmp, path)

"""What each ``python -m engine`` command does, given its parsed arguments.

Each command is a thin wrapper around the Python API (tasks, registry, data), so what the command line
does, scripts and the Slicer modules can do too; :mod:`engine.cli` builds the parser and runs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from engine.errors import EngineError

log = logging.getLogger("engine")


def _tqdm_progress(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A (done, total) callback drawing a tqdm bar on stderr, and a closer."""
    from tqdm import tqdm

    bar: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=desc, unit="case", file=sys.stderr, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return update, close


# --- commands -----------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from engine.data.validate import validate_dataset

    update, close = _tqdm_progress("validating")
    try:
        report = validate_dataset(args.dataset, require_stages=True if args.require_stages else None,
                                  progress=update, task=args.task)
    finally:
        close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def cmd_synth(args: argparse.Namespace) -> int:
    from engine.synth import generate_dataset

    update, close = _tqdm_progress(f"synth {args.task}")
    try:
        ds = generate_dataset(args.task, args.out, cases=args.cases, seed=args.seed, preset=args.preset,
                              overwrite=args.overwrite, test_cases=args.test_cases, progress=update)
    finally:
        close()
    stages = {}
    for c in ds.training:
        if c.stage:
            stages[c.stage] = stages.get(c.stage, 0) + 1
    print(f"Wrote {len(ds.training)} training and {len(ds.test)} test case(s) to {ds.root}")
    if stages:
        print("Stages: " + ", ".join(f"{k} {v}" for k, v in sorted(stages.items())))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.data.dataset import RawDataset
    from engine.data.validate import validate_dataset
    from engine.planning import extract_fingerprint, infer_task, make_plan

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise EngineError(f"'{out}' already exists; choose another --out or pass --overwrite.")
    if not args.skip_validation:
        report = validate_dataset(args.dataset)
        if not report.ok:
            print(report.summary(), file=sys.stderr)
            raise EngineError("The dataset has problems (listed above); fix them before planning, or pass "
                              "--skip-validation.")
    ds = RawDataset.load(args.dataset)
    task = args.task or infer_task(ds.description.modality, ds.description.labels)
    update, close = _tqdm_progress("fingerprint")
    try:
        fp = extract_fingerprint(ds, progress=update)
    finally:
        close()
    plan = make_plan(fp, task)
    plan.save(out)
    for name, cfg in plan.configurations.items():
        print(f"{name}: spacing {cfg.spacing} mm, median shape {cfg.median_shape}, patch {cfg.patch_size}, "
              f"batch {cfg.batch_size}, {cfg.network.num_stages} stages, strides {cfg.network.strides[1:]}")
    print(f"normalisation: {plan.normalization.scheme}"
          + (f", clip {[round(c, 1) for c in plan.normalization.clip]}" if plan.normalization.clip else ""))
    if plan.krt_box_size:
        print(f"KRT box ({plan.tumour_label}): {plan.krt_box_size}")
    if plan.stage_loss_weights:
        print(f"stage loss weights α2 {plan.stage_names}: {plan.stage_loss_weights}")
    print(f"Plan for task '{task}' written to {out}")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from engine.data.dataset import RawDataset
    from engine.data.splits import dataset_splits, save_splits

    ds = RawDataset.load(args.dataset)
    splits = dataset_splits(ds, folds=args.folds, seed=args.seed)
    out = Path(args.out) if args.out else ds.root / "splits.json"
    if out.exists() and not args.overwrite:
        raise EngineError(f"'{out}' already exists; pass --overwrite to replace it.")
    save_splits(splits, out)
    for i, fold in enumerate(splits):
        print(f"fold {i}: {len(fold['train'])} train / {len(fold['val'])} val")
    print(f"Splits written to {out}")
    return 0


def cmd_convert_openkbp(args: argparse.Namespace) -> int:
    from engine.data.importers import import_openkbp

    update, close = _tqdm_progress("converting")
    try:
        ds = import_openkbp(args.source, args.out, cases=args.cases, include_ptv=args.include_ptv,
                            overwrite=args.overwrite, progress=update, gtv_from=args.gtv_from)
    finally:
        close()
    print(f"Wrote {len(ds.training)} case(s) with labels {ds.description.labels} to {ds.root}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from engine import registry

    if args.models_command == "list":
        infos = registry.list_bundles(task=args.task)
        if not infos:
            print(f"No models found (user model directory: {registry.user_model_dir()}).")
        for info in infos:
            print(f"{info.id or '?'}\t{info.task or '?'}\t{info.display_name}\t{info.path}")
        return 0
    if args.models_command == "import":
        bundle = registry.import_bundle(args.zip, overwrite=args.overwrite)
        print(f"Imported {bundle.id} {bundle.version} ({bundle.task}) into {bundle.path}")
        return 0
    if args.models_command == "verify":
        bundle = registry.load_bundle(args.path, expected_task=args.task)
        print(f"OK: {bundle.id} {bundle.version} ({bundle.task}); model.json, model card and "
              f"{len(bundle.weights)} weight file(s): sha256 verified")
        return 0
    if args.models_command == "export":
        bundle = registry.load_bundle(args.path)
        out = registry.export_bundle(bundle, args.zip)
        print(f"Exported {bundle.id} {bundle.version} to {out}")
        return 0
    if args.models_command == "seal":
        bundle = registry.seal_bundle(args.path, force=args.force)
        print(f"Sealed: {bundle.id} {bundle.version} ({bundle.task}); model.json and MODEL_CARD.md checksums "
              "recorded, weights sha256 verified")
        return 0
    if args.models_command == "profile":
        from engine.domain.profile import training_cases_profile

        profile = training_cases_profile(registry.load_bundle(args.path), args.data, args.all_cases)
        if args.source:
            profile.source = args.source
        bundle = registry.record_training_domain(args.path, profile.to_dict())
        print(f"Recorded the training-data profile of {profile.cases} case(s) in {bundle.id} {bundle.version}; "
              "model.json re-sealed")
        return 0
    raise AssertionError(args.models_command)


def _task(name: str):
    from engine.tasks import get_task

    return get_task(name)


def _task_of(args: argparse.Namespace):
    """The task named by ``--task``, else the one the ``--model`` bundle was trained for."""
    if args.task:
        return _task(args.task)
    if not args.model:
        raise EngineError("Name the task (--task) or the model (--model); `python -m engine tasks` lists the tasks.")
    from engine import registry

    path = Path(args.model).expanduser()
    if path.exists():
        return _task(registry.load_bundle(path, verify=False).task)
    matches = [i for i in registry.list_bundles() if i.valid and args.model in (i.id, i.path.name)]
    if not matches:
        raise EngineError(f"No installed model '{args.model}'; `python -m engine models list` shows the installed "
                          "ones.")
    return _task(matches[0].task)


def cmd_tasks(args: argparse.Namespace) -> int:
    from engine import registry
    from engine.tasks import all_tasks

    installed: dict[str, list[str]] = {}
    for info in registry.list_bundles():
        if info.valid and info.task:
            installed.setdefault(info.task, []).append(f"{info.id} {info.version}")
    rows = [{"name": t.name, "title": t.title, "modality": t.modality,
             "labels": {lab.name: lab.value for lab in t.labels}, "stages": list(t.stage_names or []),
             "pipeline": t.has_pipeline, "phantoms": t.phantom is not None, "slicer_module": t.slicer_module,
             "models": installed.get(t.name, []), "summary": t.summary} for t in all_tasks()]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        print(f"{r['name']}  ({r['modality']})  {r['title']}")
        print(f"    labels: {', '.join(f'{v} {k}' for k, v in r['labels'].items())}")
        print(f"    stages: {', '.join(r['stages']) or '-'}")
        print(f"    pipeline: {'yes' if r['pipeline'] else 'no'}; phantoms: {'yes' if r['phantoms'] else 'no'}; "
              f"models installed: {', '.join(r['models']) or 'none'}")
        if r["summary"]:
            print(f"    {r['summary']}")
    return 0


def _step_progress(kind: str) -> Callable[[str, float], None]:
    """Progress of Segment & Stage steps: JSON lines for the Slicer module, else log lines."""
    from engine.training.callbacks import PROGRESS_PREFIX

    def emit(step: str, fraction: float) -> None:
        if kind == "json":
            print(PROGRESS_PREFIX + json.dumps({"kind": "step", "name": step, "fraction": round(fraction, 4)}),
                  flush=True)
        else:
            log.info("%3d%%  %s", int(100 * fraction), step.replace("_", " "))

    return emit


def _command_line() -> str:
    return "python -m engine " + " ".join(a for a in sys.argv[1:] if a != "--resume")


def cmd_train(args: argparse.Namespace) -> int:
    from engine.training.callbacks import JsonLinesProgress, TqdmProgress

    task = _task(args.task)
    _check_fold(args)
    options = task.options_from_args("train", args)
    plan = None
    if args.plan:
        plan = args.plan
    elif args.target_spacing:
        from engine.data.dataset import RawDataset
        from engine.planning import extract_fingerprint, make_plan

        plan = make_plan(extract_fingerprint(RawDataset.load(args.data)), args.task, spacing=args.target_spacing)
    progress = JsonLinesProgress(min_interval_s=1.0) if args.progress == "json" else TqdmProgress()
    from contextlib import nullcontext

    from engine.pipelines.outputs import lock_output
    from engine.training.distributed import detect_torchrun

    out = Path(args.out).expanduser().absolute()  # the bundle replaces the folder: lock beside it
    # under torchrun every rank runs this command and only the first writes the bundle, so only it locks
    launcher = detect_torchrun()
    first_rank = launcher is None or launcher.rank == 0
    lock = lock_output(out, out.parent / f".{out.name}.oncostaging.lock") if first_rank else nullcontext()
    with lock:
        bundle = task.train(args.data, args.out, plan=plan, callbacks=[progress], overwrite=args.overwrite,
                            command=_command_line(), resume=args.resume, **options)
    if not first_rank:  # the first rank reports the model it wrote
        return 0
    variant = bundle.architecture.get("variant")
    print(f"Model {bundle.id} {bundle.version}{f' ({variant})' if variant else ''} written to {bundle.path}")
    for phase, values in bundle.metrics.items():
        if isinstance(values, dict) and values:
            print(f"  {phase}: " + ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3f}"
                                              for k, v in values.items() if isinstance(v, (int, float))))
    return 0


def _check_fold(args: argparse.Namespace) -> None:
    """``--fold`` must name one of the ``--folds`` folds (argparse checks each alone)."""
    folds = args.folds if args.folds is not None else 5
    if args.fold != "all" and int(args.fold) >= folds:
        raise EngineError(f"--fold {args.fold} does not exist with {folds} folds: choose 0 to {folds - 1}, "
                          "or 'all' to train on every case.")


def cmd_ensemble(args: argparse.Namespace) -> int:
    task = _task(args.task)
    bundle = task.ensemble(args.models, args.out, model_id=args.model_id, version=args.version,
                           overwrite=args.overwrite, command="python -m engine " + " ".join(sys.argv[1:]),
                           weights_dtype=args.weights_dtype)
    members = task.ensemble_members(bundle)
    print(f"Model {bundle.id} {bundle.version} written to {bundle.path}: segmentation of {args.models[0]}, "
          f"staging averaged over {len(members)} classifiers")
    return 0


def _is_batch_input(path: Path) -> bool:
    from engine.io.image import list_dicom_series

    if path.is_file():
        return path.suffix.lower() == ".csv"
    if path.is_dir():
        try:
            return not list_dicom_series(path)
        except EngineError:
            return True
    return False


def cmd_run(args: argparse.Namespace) -> int:
    task = _task_of(args)
    options = {"tta": args.tta, **task.options_from_args("run", args)}
    source = Path(args.input)
    if not source.exists():
        raise EngineError(f"Input '{source}' does not exist.")
    if _is_batch_input(source):
        update, close = _tqdm_progress("Segment & Stage")
        try:
            summary = task.run_batch(source, args.out, args.model, device=args.device, gradcam=not args.no_gradcam,
                                     overwrite=args.overwrite, progress=lambda done, total, name: update(done, total),
                                     **options)
        finally:
            close()
        return _report_batch(summary)
    result = task.segment(source, args.out, args.model, device=args.device, gradcam=not args.no_gradcam,
                          overwrite=args.overwrite, progress=_step_progress(args.progress),
                          series_uid=args.series_uid, **options)
    print(format_staging_result(result.report, result.out_dir, result.files))
    if getattr(args, "profile", False):
        from engine.utils.profiling import format_profile

        print(format_profile(result.report))
    return 0


def _report_batch(summary: Path) -> int:
    """Print where the summary is and which cases failed; status 1 when any did."""
    from engine.pipelines.runner import read_summary

    rows = read_summary(summary)
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"Batch summary written to {summary}: {len(rows) - len(failed)} of {len(rows)} case(s) done")
    if failed:
        print(f"{len(failed)} case(s) failed:")
        for r in failed:
            print(f"  {r.get('case')}: {r.get('error') or r.get('status')}")
    return 1 if failed else 0


def format_staging_result(report: dict, out_dir: Path, files: dict[str, Path] | None = None) -> str:
    """What ``engine run`` prints: the stage (for a staging task), volumes, warnings, model and files."""
    lines = []
    if report.get("predicted_stage") is not None:
        lines += [f"Predicted stage: {report['predicted_stage']}",
                  "Stage probabilities: " + ", ".join(f"{k} {v:.3f}" for k, v in report["stage_probabilities"].items())]
    lines.append("Volumes (cm³): " + ", ".join(f"{k} {v:.2f}" for k, v in report["volumes_cm3"].items()))
    lines += [f"Warning: {w}" for w in report["warnings"]]
    lines.append(f"Model: {report['model']['id']} {report['model']['version']} ({report['model']['intended_use']})")
    names = (sorted(Path(p).name for p in files.values()) if files is not None
             else sorted(p.name for p in Path(out_dir).iterdir() if not p.name.startswith(".")))
    lines.append(f"Outputs in {out_dir}: " + ", ".join(names))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.pipelines.outputs import check_output_dir, lock_output

    task = _task_of(args)
    out = check_output_dir(args.out, overwrite=True)
    update, close = _tqdm_progress("evaluating")
    try:
        with lock_output(out):
            files = task.evaluate(args.data, args.out, args.model, device=args.device, overwrite=args.overwrite,
                                  progress=update, tta=args.tta, **task.options_from_args("evaluate", args))
    finally:
        close()
    md = next((Path(path) for path in files.values() if Path(path).name == "metrics.md"), None)
    if md is not None:
        print(md.read_text(encoding="utf-8"))
    print("Written: " + ", ".join(str(p) for p in files.values()))
    return 0

"""Command line: ``python -m engine <command> ...``.

Each command is a thin wrapper around the Python API, so what the CLI does, scripts and the
Slicer modules can do too. User-facing problems (:class:`EngineError`) print one clear message
and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from engine import __version__
from engine.errors import EngineError
from engine.utils import signals
from engine.utils.cliargs import fold as fold_arg, int_at_least, non_negative_int, output_path, positive_float, positive_int

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
    from engine.pipelines.outputs import lock_output

    out = Path(args.out).expanduser().absolute()  # the bundle replaces the folder: lock beside it
    with lock_output(out, out.parent / f".{out.name}.oncostaging.lock"):
        bundle = task.train(args.data, args.out, plan=plan, callbacks=[progress], overwrite=args.overwrite,
                            command=_command_line(), resume=args.resume, **options)
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
    md = files.get("metrics.md")
    if md is not None:
        print(Path(md).read_text(encoding="utf-8"))
    print("Written: " + ", ".join(str(p) for p in files.values()))
    return 0


# --- parser -------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one ``error:`` line (status 2), like every other user error."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"error: {message} ('{self.prog} --help' lists the options)\n")


class _TaskCommandParser(_Parser):
    """A command's parser that adds the options of the task named by ``--task`` before parsing, so each
    task brings its own options without the command line knowing them."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        command = getattr(self, "task_command", None)
        argv = list(sys.argv[1:] if args is None else args)
        if command is not None and not getattr(self, "task_arguments_added", False):
            name = _task_hint(argv)
            if name is not None:
                from engine.tasks import UnknownTaskError, get_task

                try:
                    task = get_task(name)
                except UnknownTaskError:
                    task = None  # argparse's choices check reports the unknown name
                if task is not None:
                    task.add_arguments(command, self)
                    self.task_arguments_added = True
        return super().parse_known_args(argv, namespace)


def _task_hint(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return None


def _command(sub, name: str, task_command: str | None = None, **kwargs) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, **kwargs)
    parser.task_command = task_command  # type: ignore[attr-defined]
    return parser


def build_parser() -> argparse.ArgumentParser:
    from engine.tasks import phantom_task_names, task_names

    tasks, phantoms = task_names(), phantom_task_names()
    p = _Parser(prog="python -m engine",
                                description="OncoStaging engine: cancer segmentation and T-staging.")
    p.add_argument("--version", action="version", version=f"oncostaging-engine {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_TaskCommandParser)

    s = _command(sub, "tasks", help="list the registered tasks: modality, labels, stages, installed models")
    s.add_argument("--json", action="store_true", help="print the list as JSON")
    s.set_defaults(func=cmd_tasks)
    _add_data_commands(sub, tasks, phantoms)
    _add_training_commands(sub, tasks)
    _add_inference_commands(sub, tasks)
    _add_models_command(sub, tasks)
    return p


def _add_data_commands(sub, tasks: Sequence[str], phantoms: Sequence[str]) -> None:
    from engine.synth import PRESETS

    s = _command(sub, "validate", help="check a dataset (nnU-Net raw layout + stages.csv); lists all problems")
    s.add_argument("dataset", help="dataset folder holding dataset.json, imagesTr/, labelsTr/")
    s.add_argument("--require-stages", action="store_true", help="every training case must have a T-stage")
    s.add_argument("--task", choices=tasks, help="also check the dataset against this task (modality, labels, stages)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_validate)

    s = _command(sub, "synth", help="write a synthetic phantom dataset (deterministic by seed)")
    s.add_argument("--task", required=True, choices=phantoms)
    s.add_argument("--cases", type=positive_int, required=True, help="number of training cases")
    s.add_argument("--test-cases", type=non_negative_int, default=0, help="additional unlabelled cases in imagesTs/")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=output_path, required=True, help="new or empty output folder")
    s.add_argument("--preset", choices=PRESETS, default="small",
                   help="small: fast, for tests and CPU training; realistic: paper-sized volumes")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    s.set_defaults(func=cmd_synth)

    s = _command(sub, "plan", help="fingerprint a dataset and write the training plan (JSON)")
    s.add_argument("dataset")
    s.add_argument("--out", type=output_path, required=True, help="plan file to write, e.g. plan.json")
    s.add_argument("--task", choices=tasks, help="task (default: inferred from modality and labels)")
    s.add_argument("--skip-validation", action="store_true", help="plan even if validation finds problems")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_plan)

    s = _command(sub, "splits", help="write stratified k-fold cross-validation splits (splits.json)")
    s.add_argument("dataset")
    s.add_argument("--folds", type=int_at_least(2), default=5)
    s.add_argument("--seed", type=int, default=12345)
    s.add_argument("--out", type=output_path, help="default: DATASET/splits.json")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_splits)

    s = _command(sub, "convert-openkbp", help="turn OpenKBP pt_N/{ct,labels}.nii.gz folders into a dataset")
    s.add_argument("source", help="folder holding pt_1, pt_2, ...")
    s.add_argument("--out", type=output_path, required=True)
    s.add_argument("--cases", type=positive_int, help="convert only the first N patients (sorted by number)")
    s.add_argument("--include-ptv", action="store_true", help="keep PTV56/63/70 labels (default: organs 1-7)")
    s.add_argument("--gtv-from", choices=("PTV56", "PTV63", "PTV70"),
                   help="write a single-label GTV dataset (task gtv) from this PTV; organs overwrite PTVs")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_convert_openkbp)



def _add_training_commands(sub, tasks: Sequence[str]) -> None:
    from engine.tasks import DEVICE_CHOICES

    s = _command(sub, "train", "train", help="train a task's model on a dataset and write a model bundle "
                                                    "(--task T --help lists the task's own options)")
    s.add_argument("--task", required=True, choices=tasks)
    s.add_argument("--data", required=True, help="dataset folder (nnU-Net raw layout + stages.csv)")
    s.add_argument("--out", type=output_path, required=True, help="model bundle folder to write")
    s.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs of every training phase (default: the task's)")
    s.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    s.add_argument("--fold", type=fold_arg, default="0",
                   help="cross-validation fold to hold out (0 to FOLDS-1), or 'all' to train on everything")
    s.add_argument("--folds", type=int_at_least(2), help="number of folds (default 5)")
    s.add_argument("--seed", type=int)
    s.add_argument("--plan", help="use this plan.json instead of planning the dataset")
    s.add_argument("--target-spacing", type=positive_float, nargs=3, metavar=("Z", "Y", "X"),
                   help="plan with this full-resolution spacing in mm (coarser = faster, e.g. for CPU)")
    s.add_argument("--model-id", help="bundle id (default: the task's)")
    s.add_argument("--version", help="bundle version (default 1.0.0)")
    s.add_argument("--demo", action="store_true", help="label the bundle as trained on phantoms, not for clinical use")
    s.add_argument("--progress", choices=("tqdm", "json"), default="tqdm",
                   help="json: machine-readable '@@progress' lines (used by the Slicer module)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last complete epochs "
                        "(kept in the hidden .OUT.work folder beside --out)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_train)

    s = _command(sub, "ensemble", help="combine models that share a segmentation into one bundle that "
                                        "stages with the mean of their classifiers")
    s.add_argument("--task", required=True, choices=tasks)
    s.add_argument("--models", required=True, nargs="+", metavar="MODEL",
                   help="two or more model folders or ids, each trained with --segmentation-from the same "
                        "model (e.g. other folds or seeds); the first gives the segmentation and defaults")
    s.add_argument("--out", type=output_path, required=True, help="model bundle folder to write")
    s.add_argument("--model-id", help="bundle id (default: the first model's)")
    s.add_argument("--version", help="bundle version (default: the first model's)")
    s.add_argument("--weights-dtype", choices=("float32", "float16"), default="float32",
                   help="float16 stores the weights in half the space (rounded; still computed in float32)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_ensemble)



def _add_inference_commands(sub, tasks: Sequence[str]) -> None:
    from engine.tasks import DEVICE_CHOICES, TTA_HELP, TTA_MODES

    s = _command(sub, "run", "run", help="Segment & Stage an image (file, DICOM folder) or a batch (folder/CSV)")
    s.add_argument("--task", choices=tasks, help="default: the task of the --model bundle")
    s.add_argument("--input", required=True, help="image file, DICOM series folder, folder of images or CSV list")
    s.add_argument("--out", type=output_path, required=True, help="output folder")
    s.add_argument("--model", help="bundle folder/zip or installed model id (default: newest installed or demo)")
    s.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    s.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM heat map")
    s.add_argument("--tta", choices=TTA_MODES, default="all", help=TTA_HELP)
    s.add_argument("--series-uid", help="DICOM series to read when the folder holds several")
    s.add_argument("--progress", choices=("log", "json"), default="log")
    s.add_argument("--overwrite", action="store_true", help="replace results of an earlier run in --out")
    s.set_defaults(func=cmd_run)

    s = _command(sub, "evaluate", "evaluate", help="evaluate a model on a labelled dataset: metrics.json/.md, ROC, Bland-Altman")
    s.add_argument("--task", choices=tasks, help="default: the task of the --model bundle")
    s.add_argument("--data", required=True)
    s.add_argument("--model", help="bundle folder/zip or installed model id (default: newest installed or demo)")
    s.add_argument("--out", type=output_path, required=True)
    s.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    s.add_argument("--tta", choices=TTA_MODES, default="all", help=TTA_HELP)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_evaluate)



def _add_models_command(sub, tasks: Sequence[str]) -> None:
    s = _command(sub, "models", help="list, import, verify, export or seal model bundles")
    msub = s.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    m = msub.add_parser("list", help="list the shipped demo models and the user's models")
    m.add_argument("--task", choices=tasks)
    m = msub.add_parser("import", help="import a bundle .zip into the user model directory")
    m.add_argument("zip")
    m.add_argument("--overwrite", action="store_true")
    m = msub.add_parser("verify", help="check a bundle's files and sha256 checksums")
    m.add_argument("path", help="bundle folder or .zip")
    m.add_argument("--task", choices=tasks, help="also require this task")
    m = msub.add_parser("export", help="write a bundle folder as a .zip to share")
    m.add_argument("path")
    m.add_argument("zip")
    m = msub.add_parser("seal", help="record the checksums of model.json and MODEL_CARD.md in a bundle saved "
                        "by an older engine (after checking its weights)")
    m.add_argument("path", help="bundle folder")
    m.add_argument("--force", action="store_true", help="also re-seal a bundle whose model.json or model card "
                   "was edited on purpose")
    s.set_defaults(func=cmd_models)


def _printable_streams() -> None:
    """Results name units such as "cm³" and "×"; a terminal that cannot show them gets escapes, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _printable_streams()
    try:
        parser = build_parser()  # reads the task table, which a broken plug-in can spoil
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with signals.handle_signals():
            return int(args.func(args) or 0)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: the computer ran out of memory for this image; nothing was written. Close other "
              "programs, use '--tta none' or '--device cuda', or run on a machine with more memory.",
              file=sys.stderr)
        return 2
    except signals.Interrupted as exc:
        print(f"cancelled ({exc}); nothing half-written was left behind", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("cancelled; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

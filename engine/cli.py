"""Command line: ``python -m engine <command> ...`` — the parser and the entry point.

The commands themselves are in :mod:`engine.commands`. User-facing problems (:class:`EngineError`)
print one clear message and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, Sequence

from engine import __version__
from engine.commands import (
    cmd_validate,
    cmd_synth,
    cmd_plan,
    cmd_splits,
    cmd_convert_openkbp,
    cmd_models,
    cmd_tasks,
    cmd_train,
    cmd_ensemble,
    cmd_run,
    cmd_evaluate,
)
from engine.errors import EngineError
from engine.utils import signals
from engine.utils.cliargs import fold as fold_arg, int_at_least, non_negative_int, output_path, positive_float, positive_int

log = logging.getLogger("engine")


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
    s.add_argument("--profile", action="store_true", help="print each step's time and the peak memory")
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
    m = msub.add_parser("profile", help="record in a bundle what its training data looked like (the domain "
                        "each run is checked against), from that dataset")
    m.add_argument("path", help="bundle folder")
    m.add_argument("--data", required=True, help="raw dataset (nnU-Net layout) holding the training cases")
    m.add_argument("--all-cases", action="store_true", help="profile every case of --data, not only the ones "
                   "model.json lists as training cases")
    m.add_argument("--source", default="", help="where the cases came from, in words (kept in model.json)")
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

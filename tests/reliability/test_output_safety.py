"""Nothing lost or half-written: one run per output folder, a stopped run (SIGINT, SIGTERM, SIGKILL)
leaves the folder as it was or lets the next run clean it, an unwritable folder is refused before the
model is loaded, and result files honour the umask.

Runs use the plug-in example task (``tests/plugins/toy_task.py``); a child process gets a variant whose
overview figure waits until the run is told to stop, so a signal can be sent while results are being
written, without any timing assumption."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.tasks import register_task, unregister_task

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"
LOCK_FILE = ".oncostaging.lock"

#: A toy task whose overview writer announces itself and then waits until the process is stopped.
SLOW_PLUGIN = '''
import os, time
from pathlib import Path

import engine.reporting.overview as overview
import toy_task

try:
    from engine.utils.signals import cancelled
except ImportError:  # an engine without signal handling: wait a little, then go on
    def cancelled():
        return False

_render = overview.render_overview


def render_overview(*args, **kwargs):
    Path(os.environ["SLOW_MARKER"]).write_text("writing", encoding="utf-8")
    deadline = time.monotonic() + float(os.environ.get("SLOW_WAIT_S", "20"))
    while not cancelled() and time.monotonic() < deadline:
        time.sleep(0.02)
    if cancelled():
        raise RuntimeError("stopped")
    return _render(*args, **kwargs)


overview.render_overview = render_overview
TASK = toy_task.TASK
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy task registered in this process, a trained toy model and one input image."""
    import toy_task

    register_task(toy_task.TASK)
    trained = toy_task.make_trained_toy(tmp_path_factory.mktemp("toy"))
    root = trained["root"]
    (root / "plugin").mkdir()
    (root / "plugin" / "slow_toy.py").write_text(SLOW_PLUGIN, encoding="utf-8")
    yield {**trained, "plugin": root / "plugin", "module": toy_task}
    unregister_task("toy")


def run_args(toy, out: Path, *extra: str, source: Path | None = None) -> list[str]:
    return ["run", "--task", "toy", "--model", str(toy["model"]), "--input", str(source or toy["image"]),
            "--out", str(out), "--no-gradcam", *extra]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".staging-")] if folder.exists() else []


def start_slow_run(toy, out: Path, tmp_path: Path, *extra: str,
                   source: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """A child ``python -m engine run`` that is writing its results into ``out`` when this returns."""
    marker = tmp_path / "writing.marker"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "ONCOSTAGING_TASKS": "slow_toy:TASK", "SLOW_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(toy["plugin"]), str(PLUGINS), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-m", "engine", *run_args(toy, out, *extra, source=source)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a wait for the child to get there, not a timing assertion
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out_, err = proc.communicate()
            pytest.fail(f"the child run never started writing (status {proc.returncode}):\n{out_}\n{err}")
        time.sleep(0.05)
    return proc, marker


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


# --- one run per folder ---------------------------------------------------------------------------

def test_a_second_run_into_a_folder_being_written_is_refused(toy, tmp_path, capsys):
    out = tmp_path / "out"
    proc, _ = start_slow_run(toy, out, tmp_path)
    try:
        assert main(run_args(toy, out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
        assert f"being written by process {proc.pid}" in err[0] and "choose another folder" in err[0]
        assert "python -m engine run" in err[0]  # the holder's command
    finally:
        status, _, stderr = stop(proc, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, stderr
    assert not staging(out) and not (out / "report.json").exists()


def _hold_lock(folder: Path) -> int:
    """Lock ``folder`` the way a run of the engine does, from this test process."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"424242\npython -m engine run --out elsewhere\n")
    return fd


@pytest.mark.parametrize("command", ["run", "batch", "evaluate"])
def test_every_command_refuses_a_locked_output_folder(toy, tmp_path, capsys, command):
    out = tmp_path / "out"
    if command == "batch":
        (tmp_path / "inputs").mkdir()
        os.link(toy["image"], tmp_path / "inputs" / toy["image"].name)
        args = run_args(toy, out, source=tmp_path / "inputs")
    elif command == "evaluate":
        args = ["evaluate", "--task", "toy", "--model", str(toy["model"]), "--data", str(toy["root"] / "data"),
                "--out", str(out)]
    else:
        args = run_args(toy, out)
    fd = _hold_lock(out)
    try:
        assert main(args) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "being written by process 424242 (python -m engine run --out elsewhere)" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_train_refuses_a_bundle_folder_another_training_writes(toy, tmp_path, capsys):
    out = tmp_path / "model"
    fd = os.open(tmp_path / f".model{LOCK_FILE}", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"515151\npython -m engine train\n")
    try:
        assert main(["train", "--task", "toy", "--data", str(toy["root"] / "data"), "--out", str(out),
                     "--epochs", "1"]) == 2
    finally:
        os.close(fd)
    assert "being written by process 515151" in capsys.readouterr().err
    assert not out.exists()


# --- signals ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_writing_leaves_the_folder_as_it_was(toy, tmp_path, capsys, sig):
    out = tmp_path / "out"
    assert main(run_args(toy, out)) == 0  # an earlier run's results, which --overwrite would replace
    before = snapshot(out)
    proc, _ = start_slow_run(toy, out, tmp_path, "--overwrite")
    status, _, stderr = stop(proc, sig)
    assert status == 128 + sig, stderr
    assert "FATAL" not in stderr and "Traceback" not in stderr
    assert "cancelled" in stderr
    assert snapshot(out) == before  # no staging folder, no lock file, the old results intact


def test_a_cancelled_batch_says_which_cases_were_cancelled(toy, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        os.link(toy["image"], inputs / name)
    out = tmp_path / "out"
    proc, _ = start_slow_run(toy, out, tmp_path, source=inputs)
    status, _, stderr = stop(proc, signal.SIGINT)
    assert status == 128 + signal.SIGINT, stderr
    assert "FATAL" not in stderr and "Traceback" not in stderr
    with (out / "summary.csv").open(newline="", encoding="utf-8") as fh:
        assert {row["case"]: row["status"] for row in csv.DictReader(fh)} == {"a": "cancelled", "b": "cancelled"}
    assert sorted(p.name for p in out.rglob("*")) == ["summary.csv"]  # no staging, no lock, no half case


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(toy, tmp_path, capsys):
    out = tmp_path / "out"
    proc, _ = start_slow_run(toy, out, tmp_path)
    proc.kill()
    proc.communicate(timeout=300)
    assert staging(out), "a killed run cannot clean up after itself"
    assert main(run_args(toy, out)) == 0  # the kernel dropped the dead run's lock
    assert not staging(out)
    assert (out / "report.json").is_file() and not (out / LOCK_FILE).exists()


# --- permissions, checked before the model is loaded -------------------------------------------------

def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write to (root ignores modes: then a sysfs folder)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    for candidate in (Path("/sys/kernel"), Path("/proc/sys")):
        try:
            (candidate / ".oncostaging-probe").touch()
        except OSError:
            if candidate.is_dir():
                return candidate
    pytest.skip("no unwritable folder available to this user")


@pytest.fixture
def loads(toy, monkeypatch):
    """Records every model load of the toy task."""
    calls: list[object] = []
    original = toy["module"].ToyTask.load_predictor

    def load_predictor(self, model=None, device="auto"):
        calls.append(model)
        return original(self, model, device)

    monkeypatch.setattr(toy["module"].ToyTask, "load_predictor", load_predictor)
    return calls


@pytest.mark.parametrize("where", ["folder", "new sub-folder", "batch"])
def test_an_unwritable_output_folder_is_refused_before_the_model_is_loaded(toy, tmp_path, capsys, loads, where):
    folder = _unwritable_folder(tmp_path)
    out = folder / "new" if where == "new sub-folder" else folder
    source = None
    if where == "batch":
        (tmp_path / "inputs").mkdir()
        os.link(toy["image"], tmp_path / "inputs" / toy["image"].name)
        source = tmp_path / "inputs"
    try:
        assert main(run_args(toy, out, source=source)) == 2
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Cannot write to the output folder" in err[0], err
    assert loads == []


def test_outputs_honour_the_umask(toy, tmp_path, capsys):
    previous = os.umask(0o027)
    try:
        assert main(run_args(toy, tmp_path / "out")) == 0
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes and set(modes.values()) == {0o640}, modes

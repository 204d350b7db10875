"""Running an engine command (``python -m engine ...``) in the background.

The GUI must never freeze during inference or training, and Cancel must stop everything the
command started (DataLoader workers included). So the command runs in its own process group,
its output is read by a thread into a queue, and the caller *polls* — from a Qt timer in Slicer,
or in a loop for scripts. Progress arrives as ``@@progress {json}`` lines (the engine's
``--progress json``); every other line is kept as log text for error messages.

The launcher is injectable: :class:`InProcessLauncher` runs the same command line through
``engine.cli.main`` in this process, which lets tests exercise the job logic without a child.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

log = logging.getLogger(__name__)

#: Same prefix as ``engine.training.callbacks.PROGRESS_PREFIX`` (not imported: that pulls in torch).
PROGRESS_PREFIX = "@@progress "
_TAIL_LINES = 200
_KILL_GRACE_S = 3.0


class JobState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class RunningProcess(Protocol):
    """What a launcher returns: a started command that can be polled, read and killed."""

    def poll(self) -> int | None: ...

    def read_lines(self) -> list[str]: ...

    def kill_tree(self) -> None: ...


Launcher = Callable[[Sequence[str], Mapping[str, str]], RunningProcess]


def engine_search_path() -> str:
    """The folder that holds the ``engine`` package, so a child Python can ``import engine``."""
    import engine

    return str(Path(engine.__file__).resolve().parent.parent)


def default_python() -> str:
    """Slicer's ``PythonSlicer`` when running inside Slicer, else this interpreter."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


class ChildProcess:
    """A real child process in its own process group; a reader thread drains its output."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]):
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # own process group: Cancel can kill the whole tree
        self._popen = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=dict(env), text=True, encoding="utf-8",
                                       errors="replace", bufsize=1, **kwargs)
        self.pid = self._popen.pid
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"engine-output-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            self._lines.put(line.rstrip("\r\n"))

    def poll(self) -> int | None:
        code = self._popen.poll()
        if code is not None:
            self._reader.join(timeout=5)  # the last lines are in the queue before we report the end
        return code

    def read_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def kill_tree(self) -> None:
        if self._popen.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.pid)], capture_output=True, check=False)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self._popen.wait(timeout=_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # children that ignored SIGTERM, or outlived the leader
        self._popen.wait()


def subprocess_launcher(argv: Sequence[str], env: Mapping[str, str]) -> RunningProcess:
    return ChildProcess(argv, env)


class InProcessLauncher:
    """Runs ``<python> -m engine ARGS`` as ``engine.cli.main(ARGS)`` in this process, to completion,
    when launched; its output is then replayed through :meth:`read_lines`. For tests and debugging:
    it blocks, and it cannot be interrupted half-way."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> RunningProcess:
        argv = list(argv)
        if argv[1:3] != ["-m", "engine"]:
            raise ValueError(f"InProcessLauncher only runs 'python -m engine ...', not {argv!r}")
        self.commands.append(argv[3:])
        return _FinishedCommand(*self._run(argv[3:], env))

    @staticmethod
    def _run(args: list[str], env: Mapping[str, str]) -> tuple[int, list[str]]:
        from engine.cli import main

        out = io.StringIO()
        saved = {k: os.environ.get(k) for k in env if os.environ.get(k) != env[k]}
        os.environ.update({k: env[k] for k in saved})
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    code = int(main(args) or 0)
                except SystemExit as exc:  # argparse errors
                    code = int(exc.code) if isinstance(exc.code, int) else 1
                except Exception as exc:  # a bug in the engine: report like a crashed child would
                    log.exception("engine command failed in-process")
                    out.write(f"\n{type(exc).__name__}: {exc}\n")
                    code = 1
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return code, out.getvalue().splitlines()


class _FinishedCommand:
    def __init__(self, code: int, lines: list[str]):
        self._code, self._lines, self.pid = code, lines, None

    def poll(self) -> int | None:
        return self._code

    def read_lines(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines

    def kill_tree(self) -> None:
        pass


@dataclass
class EngineJob:
    """One engine command in the background: start, poll for progress events, cancel, wait.

    ``engine_args`` are the arguments after ``python -m engine``. ``on_event`` receives each parsed
    progress event (a dict) during :meth:`poll`.
    """

    engine_args: list[str]
    launcher: Launcher = subprocess_launcher
    python: str = field(default_factory=default_python)
    env: dict[str, str] | None = None
    on_event: Callable[[dict[str, Any]], None] | None = None
    state: JobState = JobState.NOT_STARTED
    returncode: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    output_tail: deque = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    _process: RunningProcess | None = field(default=None, repr=False)

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", "engine", *self.engine_args]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        path = env.get("PYTHONPATH", "")
        engine_dir = engine_search_path()
        if engine_dir not in path.split(os.pathsep):
            env["PYTHONPATH"] = engine_dir + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> EngineJob:
        if self.state is not JobState.NOT_STARTED:
            raise RuntimeError(f"job already {self.state.value}")
        log.info("Starting: %s", " ".join(self.argv))
        self._process = self.launcher(self.argv, self.child_env())
        self.state = JobState.RUNNING
        return self

    def poll(self) -> list[dict[str, Any]]:
        """Read what the command wrote since the last poll; returns the new progress events."""
        if self.state is not JobState.RUNNING or self._process is None:
            return []
        code = self._process.poll()  # before reading: all output of a finished process is then queued
        new = self._consume(self._process.read_lines())
        if code is not None:
            self.returncode = code
            self.state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
        return new

    def _consume(self, lines: list[str]) -> list[dict[str, Any]]:
        new = []
        for line in lines:
            if line.startswith(PROGRESS_PREFIX):
                try:
                    event = json.loads(line[len(PROGRESS_PREFIX):])
                except json.JSONDecodeError:
                    self.output_tail.append(line)
                    continue
                self.events.append(event)
                new.append(event)
                if self.on_event is not None:
                    self.on_event(event)
            else:
                self.output_tail.append(line)
        return new

    def cancel(self) -> None:
        """Stop the command and everything it started; a finished job is left as it is."""
        if self.state is JobState.RUNNING and self._process is not None:
            self._process.kill_tree()
            self._process.read_lines()
        if self.state in (JobState.RUNNING, JobState.NOT_STARTED):
            self.state = JobState.CANCELLED

    def wait(self, poll_interval_s: float = 0.1) -> JobState:
        while self.state is JobState.RUNNING:
            self.poll()
            if self.state is JobState.RUNNING:
                time.sleep(poll_interval_s)
        return self.state

    @property
    def output(self) -> str:
        return "\n".join(self.output_tail)

    def error_message(self) -> str:
        """The engine's one-line ``error: ...`` message if there is one, else the end of its output."""
        for line in reversed(self.output_tail):
            if line.startswith("error: "):
                return line[len("error: "):]
        tail = [line for line in self.output_tail if line.strip()][-15:]
        return "\n".join(tail) or f"the engine exited with status {self.returncode}"

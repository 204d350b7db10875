"""One run per output folder: an exclusive lock file held while a run writes there.

Two runs writing into the same folder at once would each "succeed" with the other's files mixed in.
The lock (``flock`` on ``.oncostaging.lock``, holding the owner's PID and command line; on platforms
without ``fcntl`` an exclusively created file whose PID is checked for life) is taken before any
work starts, which also proves the folder can be written, so a read-only folder or a path under a
file is refused before a model is loaded. The kernel drops an ``flock`` with its process, so a
killed run never blocks the next one.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
from pathlib import Path
from types import TracebackType

from engine.errors import EngineError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".oncostaging.lock"


class OutputBusy(EngineError):
    """Another process is writing into the output folder."""


def folder_problem(folder: Path, exc: OSError) -> EngineError:
    """A user-facing message for an output folder that cannot be created or written."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            return EngineError(f"Cannot use '{folder}' as an output folder: '{parent}' is a file. "
                               "Choose another output folder.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the file system is read-only" if exc.errno == errno.EROFS else "permission denied"
        return EngineError(f"Cannot write to the output folder '{folder}' ({why}). Choose a folder you "
                           "can write to.")
    return EngineError(f"Cannot write to the output folder '{folder}' ({exc.strerror or exc}). Choose "
                       "another output folder.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _owner(path: Path) -> tuple[int | None, str]:
    try:
        first, _, rest = path.read_text(encoding="utf-8").partition("\n")
        return int(first), rest.strip()
    except (OSError, ValueError):
        return None, ""


def _busy(folder: Path, path: Path) -> OutputBusy:
    pid, command = _owner(path)
    who = f"process {pid}" if pid is not None else "another process"
    what = f" ({command})" if command else ""
    return OutputBusy(f"'{folder}' is being written by {who}{what}; wait for it or choose another folder.")


class OutputLock:
    """Holds the lock of one output folder; a context manager that releases it (and removes a folder
    it created that stayed empty)."""

    def __init__(self, folder: Path, path: Path, fd: int, created: Path | None):
        self.folder, self.path, self._fd, self._created = folder, path, fd, created

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it, so no one locks a dead file
        except OSError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = -1
        if self._created is not None:
            try:
                self._created.rmdir()  # only if empty: a run that failed early leaves no folder
            except OSError:
                pass

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_output(folder: str | os.PathLike, lock_path: str | os.PathLike | None = None) -> OutputLock:
    """Create ``folder`` if needed and lock it for this process; raises :class:`OutputBusy` when
    another run holds it, and an :class:`EngineError` when it cannot be created or written.
    ``lock_path`` puts the lock file elsewhere (beside a folder that is replaced as a whole)."""
    folder = Path(folder).expanduser()
    path = Path(lock_path) if lock_path is not None else folder / LOCK_FILE
    created = None if folder.exists() or lock_path is not None else folder
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder, path)
    except OSError as exc:
        raise folder_problem(folder, exc) from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{_command()}\n".encode("utf-8"))
    except OSError as exc:
        os.close(fd)
        raise folder_problem(folder, exc) from exc
    return OutputLock(folder, path, fd, created)


def _command() -> str:
    args = sys.argv[1:] if Path(sys.argv[0]).name in ("__main__.py", "-m") else sys.argv
    return "python -m engine " + " ".join(shlex.quote(a) for a in args) if args else "python"


def _acquire(folder: Path, path: Path) -> int:
    """An open descriptor of the lock file that this process holds exclusively."""
    for _ in range(20):
        if fcntl is None:  # pragma: no cover - Windows
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, _ = _owner(path)
                if pid is not None and _pid_alive(pid):
                    raise _busy(folder, path) from None
                path.unlink(missing_ok=True)  # left by a process that died
                continue
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, path) from None
        except OSError:
            os.close(fd)
            raise
        try:  # the holder may have removed the file between our open and flock: lock the current one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OutputBusy(f"'{folder}' is being locked and released by other processes; try again.")

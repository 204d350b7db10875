"""Atomic file and folder writes: a temporary file (or folder) beside the target, then ``os.replace``,
so readers (and a crash) never see half a file or half a folder."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from engine.errors import EngineError


def fsync_dir(directory: Path) -> None:
    """Make renames durable; best effort (not every platform lets a folder be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``; an existing target is swapped out first and only
    removed once the new folder is in place, so a failure leaves the old one."""
    backup: Path | None = None
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()
        else:
            backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)


def check_target(out_dir: Path, overwrite: bool, what: str, error: type[Exception] = EngineError) -> None:
    """Refuse (raising ``error``) to let ``what`` replace a non-empty ``out_dir`` unless ``overwrite``."""
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise error(f"{out_dir} already exists and is not empty; {what} would replace it. "
                        "Choose another folder, remove it, or allow replacing it (--overwrite).")


def current_umask() -> int:
    """The process's file-creation mask, read without changing it where the platform allows (setting
    it to read it back races with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path, directory: bool | None = None) -> None:
    """Give ``path`` the permissions an ordinary ``open``/``mkdir`` would have given it.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600 files and 0700 folders whatever the umask; a result
    moved into place from one would be unreadable by the user's group. Call this before the move.
    """
    path = Path(path)
    is_dir = path.is_dir() if directory is None else directory
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())

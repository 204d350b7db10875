"""Keep ITK's console chatter from appearing before the engine's own error message.

ITK warnings and MetaIO/GDCM messages go straight to the process's standard error (file descriptor 2),
so a user reading a corrupt file would see a C++ warning and then our explanation. Around a read,
ITK's warning display is switched off and descriptor 2 is redirected to a temporary file: when the
read fails, what ITK said goes to the debug log only (the raised error explains the problem); when it
succeeds, the captured text is written back to standard error unchanged, so nothing another thread
printed meanwhile is lost.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import SimpleITK as sitk

log = logging.getLogger(__name__)
_LOCK = threading.RLock()


@dataclass
class Console:
    """What ITK wrote to standard error during the read."""

    text: str = ""


def _redirect() -> tuple[int, object] | None:
    """Point descriptor 2 at a temporary file; None where the platform does not allow it."""
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        return None
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        return None
    try:
        os.dup2(capture.fileno(), 2)
    except OSError:
        os.close(saved)
        capture.close()
        return None
    return saved, capture


@contextmanager
def quiet_itk() -> Iterator[Console]:
    """Silence ITK during the block; the yielded :class:`Console` holds what it printed afterwards."""
    console = Console()
    with _LOCK:
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        redirected = _redirect()
        failed = True
        try:
            yield console
            failed = False
        finally:
            if redirected is not None:
                saved, capture = redirected
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)  # type: ignore[attr-defined]
                raw = capture.read()  # type: ignore[attr-defined]
                capture.close()  # type: ignore[attr-defined]
                console.text = raw.decode("utf-8", errors="replace")
                if raw and not failed:
                    os.write(2, raw)
                elif raw:
                    log.debug("ITK output of the failed read: %s", console.text.strip())
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)

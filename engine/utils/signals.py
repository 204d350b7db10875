"""SIGINT and SIGTERM end a command cleanly: the main thread stops at the next Python instruction with
:class:`Interrupted`, ``finally`` blocks remove staging folders and release locks, and the process
exits with 128 + the signal number.

The handler raises only once: a second signal while cleaning up is noted, not raised, so the cleanup
(joining writer threads, removing a staging folder) is never itself interrupted half-way. Sections
that must not be interrupted at all (moving finished files into place) run inside :func:`deferred`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """The user (Ctrl-C) or the system (SIGTERM) asked the command to stop."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {NAMES.get(signum, signum)}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)


class _State:
    received: int | None = None  # the first signal received
    raised = False  # Interrupted was raised once already
    defer_depth = 0
    pending: int | None = None  # a signal that arrived inside deferred()


_state = _State()


def cancelled() -> bool:
    """Whether a stop signal has arrived (a ``cancel`` callback for long loops)."""
    return _state.received is not None


def _handler(signum: int, frame: object) -> None:
    if _state.received is None:
        _state.received = signum
    if _state.raised:
        return
    if _state.defer_depth > 0:
        _state.pending = signum
        return
    _state.raised = True
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Install the handlers for the duration of a command (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    _state.received, _state.raised, _state.pending, _state.defer_depth = None, False, None, 0
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back a stop signal until the block has finished (e.g. renames that must all happen)."""
    _state.defer_depth += 1
    try:
        yield
    finally:
        _state.defer_depth -= 1
        if _state.defer_depth == 0 and _state.pending is not None and not _state.raised:
            signum, _state.pending = _state.pending, None
            _state.raised = True
            raise Interrupted(signum)

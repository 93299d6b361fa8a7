"""Standard streams as a scheduler leaves them: closed, or a reader that goes away.

Two things an unattended run meets that a terminal never shows (docs/FORMATS.md, exit codes):

* A process started with standard input, output or error closed (``cmd <&- >&-``, some
  supervisors) hands descriptors 0-2 to the next files and sockets it opens. uvloop aborts
  (``uv__close: Assertion fd > STDERR_FILENO``, exit 134) when it closes such a socket, and a
  result file opened as descriptor 1 would receive whatever is printed. :func:`reopen_closed`
  puts ``/dev/null`` on every closed one first, as daemons do.
* Standard error piped into a reader that exits (``2>&1 | head``) or a terminal that hangs up
  makes every later write fail (EPIPE, EIO). A diagnostic line is not worth the run: the
  progress tick that raised stopped flushing the outputs, and the summary table's print turned a
  finished run into exit 1. :func:`tolerate_lost_stderr` makes such a write drop the rest of
  standard error instead (it goes to ``/dev/null``); the files and the exit code are unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any, TextIO

__all__ = ["drop_stdout", "reopen_closed", "tolerate_lost_stderr"]

_LOST = (errno.EPIPE, errno.EIO, errno.ENOSPC, errno.EBADF, errno.ENXIO)


def reopen_closed() -> None:
    """Open ``/dev/null`` on each of descriptors 0-2 that is closed (and the matching stream)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: often fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


class _Tolerant:
    """``sys.stderr`` that sends the rest to ``/dev/null`` once its reader is gone."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _lost(self, exc: OSError) -> None:
        if exc.errno not in _LOST:
            raise exc
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())  # buffered bytes and later writes go nowhere
            os.close(null)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._lost(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def tolerate_lost_stderr() -> None:
    """Make a failed write to standard error (reader gone, terminal hung up) drop the output."""
    if sys.stderr is not None and not isinstance(sys.stderr, _Tolerant):
        sys.stderr = _Tolerant(sys.stderr)


def drop_stdout() -> None:
    """Send the rest of standard output to ``/dev/null`` once its reader is gone (EPIPE), so
    the interpreter's final flush of what is still buffered raises nothing either."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)

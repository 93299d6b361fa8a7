"""What stops a run early, and the exit code it then ends with.

:class:`Breaker` stops a run whose recent jobs mostly fail, before the rest fail too;
:class:`Stop` keeps why the run is stopping (a guard, a signal, a defect) and its exit code;
:func:`fatal` names the guard a fatal request error trips.
"""

from __future__ import annotations

from collections import deque

from .errors import AuthError, CircuitOpen, EndpointError, GuardTripped, QuotaError
from .models import ErrorInfo

__all__ = ["EXIT_FAILED", "EXIT_GUARD", "EXIT_OK", "Breaker", "Stop", "fatal"]

EXIT_OK, EXIT_FAILED, EXIT_GUARD = 0, 1, 3

_FATAL: dict[str, type[GuardTripped]] = {
    "insufficient_quota": QuotaError,
    "endpoint": EndpointError,
}


def fatal(err: ErrorInfo) -> GuardTripped:
    """The guard a fatal request error (``ErrorInfo.fatal``) trips: quota, endpoint or auth."""
    return _FATAL.get(err.code, AuthError)(err.message)


class Stop:
    """Why a run is stopping; the first reason, exit code and guard win."""

    __slots__ = ("_code", "active", "bug", "guard", "reason")

    def __init__(self) -> None:
        self.active = False
        self.reason: str | None = None  # a guard's code, "signal", "error"
        self._code: int | None = None
        self.guard: GuardTripped | None = None
        self.bug: BaseException | None = None  # a defect, re-raised when the run returns

    def begin(self, reason: str, exit_code: int) -> bool:
        """Note a stop; True for the first one."""
        first = not self.active
        self.active = True
        self.reason = self.reason or reason
        if self._code is None:
            self._code = exit_code
        return first

    def trip(self, exc: GuardTripped) -> bool:
        """Note a tripped guard; True when the run must stop at once (its key or quota is dead:
        every request in flight is wasted)."""
        if self.guard is None:
            self.guard = exc
        return isinstance(exc, AuthError | QuotaError)

    def exit_code(self, failed: bool) -> int:
        if self._code is not None:
            return self._code
        return EXIT_FAILED if failed else EXIT_OK


class Breaker:
    """Counts failures over the last ``window`` finished jobs (O(1) per job)."""

    __slots__ = ("_failures", "_last", "_rate")

    def __init__(self, window: int, error_rate: float) -> None:
        self._last: deque[bool] = deque(maxlen=max(1, window))
        self._failures = 0
        self._rate = error_rate

    def add(self, failed: bool) -> CircuitOpen | None:
        """Count a finished job; the guard to trip when the window is full and failing."""
        b = self._last
        if len(b) == b.maxlen and b[0]:
            self._failures -= 1
        b.append(failed)
        if not failed:
            return None
        self._failures += 1
        if len(b) == b.maxlen and self._failures >= self._rate * len(b):
            return CircuitOpen(
                f"{self._failures} of the last {len(b)} jobs failed: "
                "stopping before the rest fail the same way"
            )
        return None

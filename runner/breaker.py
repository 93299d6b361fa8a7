"""The circuit breaker: stop a run whose recent jobs mostly fail, before the rest fail too."""

from __future__ import annotations

from collections import deque

from .errors import CircuitOpen

__all__ = ["Breaker"]


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

"""Live progress: a rich bar on a terminal, a plain line every few seconds otherwise (cron logs).

The plain lines come every ``log_interval_s`` seconds (``--log-interval``, 5 by default), the
same interval as the JSON ``progress`` events.

Log lines start with a UTC ISO 8601 timestamp (``2026-11-28T17:05:09Z [runner] ...``) so that
a cron log or CI output can be read against other logs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from .pipeline import LiveStats

__all__ = ["ProgressDisplay", "make_progress"]

LOG_INTERVAL_S = 5.0  # RunConfig.log_interval_s's default


def _line(s: LiveStats, elapsed: float) -> str:
    rate = s.done / elapsed if elapsed > 0 else 0.0
    tok = (s.prompt_tokens + s.completion_tokens) / elapsed if elapsed > 0 else 0.0
    hit = s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0
    total = f"/{s.total}" if s.total is not None else ""
    eta = ""
    if s.total and rate > 0:
        eta = f" eta {max(0.0, (s.total - s.done - s.skipped) / rate):.0f}s"
    cost = f" ${s.billed:.4f}" if s.billed else ""
    busy = f"{s.in_flight} in flight" if s.workers is None else f"{s.workers} workers running"
    return (
        f"{s.done + s.skipped}{total} done, {rate:.0f} req/s, {tok:.0f} tok/s, "
        f"cache hit {hit:.1%}, {s.failed} errors, {s.retries} retries, {busy}{cost}{eta}"
    )


class ProgressDisplay:
    """Receives engine ticks; renders a bar or log lines."""

    __slots__ = ("_bar", "_clock", "_interval", "_last_log", "_mode", "_out", "_task")

    def __init__(
        self,
        mode: str,
        out: TextIO | None = None,
        *,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._out = out or sys.stderr
        self._mode = mode
        self._interval = interval_s
        self._clock = clock
        self._last_log = clock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if mode == "bar":
            # rich costs ~0.1 s of CPU to import: only a terminal bar pays for it.
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]runner"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(file=self._out),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("run", total=None, info="")

    def tick(self, s: LiveStats) -> None:
        elapsed = time.perf_counter() - s.started
        if self._bar is not None and self._task is not None:
            rate = s.done / elapsed if elapsed > 0 else 0.0
            tok = (s.prompt_tokens + s.completion_tokens) / elapsed if elapsed > 0 else 0.0
            hit = s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0
            self._bar.update(
                self._task,
                completed=s.done + s.skipped,
                total=s.total,
                info=(
                    f"{rate:.0f} req/s  {tok:,.0f} tok/s  hit {hit:.0%}  "
                    f"err {s.failed}  retry {s.retries}"
                ),
            )
        elif self._mode == "log":
            now = self._clock()
            if now - self._last_log >= self._interval:
                self._last_log = now
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                print(f"{stamp} [runner] {_line(s, elapsed)}", file=self._out, flush=True)

    def note(self, message: str, **_fields: Any) -> None:
        """A line said at once, above the bar or between the log lines (a stop in progress);
        ``_fields`` are for a JSON log (:meth:`runner.observe.Observer.stopping`), not shown."""
        if self._bar is not None:
            self._bar.console.print(f"runner: {message}", markup=False, highlight=False)
        else:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{stamp} [runner] {message}", file=self._out, flush=True)

    def close(self, s: LiveStats | None = None) -> None:
        if self._bar is not None:
            if s is not None:
                self.tick(s)
            self._bar.stop()
            self._bar = None


def make_progress(
    mode: str, out: TextIO | None = None, *, interval_s: float = LOG_INTERVAL_S
) -> ProgressDisplay | None:
    """``auto`` is a bar on a terminal and log lines otherwise; ``off`` shows nothing.

    :param interval_s: seconds between log lines (``RunConfig.log_interval_s``).
    """
    stream = out or sys.stderr
    if mode == "auto":
        mode = "bar" if stream.isatty() else "log"
    if mode == "off":
        return None
    return ProgressDisplay(mode, stream, interval_s=interval_s)

"""Run events as JSON lines on stderr (``--log-format json``): one object per line, nothing else.

Built on the standard library's :mod:`logging` with a small orjson formatter rather than
structlog. Events come once per run phase or progress tick, never per request, so formatting speed
does not matter; what matters is that a host process (an Airflow worker, a notebook) already
configures :mod:`logging`, so its handlers, levels and filters apply to ``runner.events`` with no
extra dependency and no second logging system to configure.

Every line is ``{"ts": "<UTC ISO 8601>", "level": "...", "event": "...", ...fields}``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

__all__ = ["LOGGER_NAME", "EventLog", "JsonFormatter", "utc_iso"]

LOGGER_NAME = "runner.events"


def utc_iso(ts: float) -> str:
    """``2026-11-28T16:55:01.123Z`` for a Unix timestamp."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, event name, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": utc_iso(record.created),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        # default=str: a Path or an unexpected object becomes text instead of a lost event.
        return orjson.dumps(doc, default=str).decode()


class _EventHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler an :class:`EventLog` with a stream attaches (told apart from a host's)."""


class EventLog:
    """Emits named events to the ``runner.events`` logger.

    :param stream: when given, attach a JSON handler writing to it (the CLI passes stderr) for
        as long as this object is open; without it the host's logging configuration decides.
    :param quiet: with a stream, only errors are written.
    """

    __slots__ = ("_handler", "_log", "_root_handler")

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._log = logging.getLogger(LOGGER_NAME)
        self._handler: logging.Handler | None = None
        self._root_handler: logging.Handler | None = None
        if stream is not None and not any(isinstance(h, _EventHandler) for h in self._log.handlers):
            # One JSON handler at a time: a CLI note said while the run's own log is open
            # (runner.api.run's on_start) is one line, not one per open EventLog.
            handler = _EventHandler(stream)
            handler.setFormatter(JsonFormatter())
            handler.setLevel(logging.ERROR if quiet else logging.INFO)
            self._log.addHandler(handler)
            # Our own handler prints the line; the root's would print it a second time.
            self._log.propagate = False
            self._handler = handler
            root = logging.getLogger()
            if not root.handlers:
                # Nobody configured logging (the CLI): a library's warning (an OpenTelemetry
                # exporter retrying, say) would reach stderr as a bare text line through
                # logging's last resort, breaking "one JSON object per line".
                lib = logging.StreamHandler(stream)
                lib.setFormatter(JsonFormatter())
                lib.setLevel(logging.ERROR if quiet else logging.WARNING)
                root.addHandler(lib)
                self._root_handler = lib
        if self._log.level == logging.NOTSET or self._log.level > logging.INFO:
            self._log.setLevel(logging.INFO)

    def emit(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        self._log.log(level, event, extra={"fields": fields})

    def close(self) -> None:
        if self._handler is not None:
            self._log.removeHandler(self._handler)
            self._handler.flush()
            self._handler = None
            self._log.propagate = True
        if self._root_handler is not None:
            logging.getLogger().removeHandler(self._root_handler)
            self._root_handler = None

    def run_end(
        self, exit_code: int, stopped: str | None, summary: dict[str, Any], **extra: Any
    ) -> None:
        """The ``run_end`` event, one shape for every kind of run: its figures come from the
        summary; ``extra`` says what kind (``workers=N``, ``via="batch"``)."""
        lat = summary.get("latency_ms") or {}
        ttft = summary.get("ttft_ms") or {}
        self.emit(
            "run_end",
            logging.INFO if exit_code == 0 else logging.ERROR,
            **extra,
            exit_code=exit_code,
            stopped=stopped,
            jobs=summary.get("jobs"),
            not_sent=summary.get("not_sent"),
            wall_s=summary.get("wall_s"),
            requests_per_s=summary.get("requests_per_s"),
            tokens=summary.get("tokens"),
            cache_hit_ratio=summary.get("cache_hit_ratio"),
            cost=summary.get("cost"),
            retries=summary.get("retries"),
            limiter_wait_s=summary.get("limiter_wait_s"),
            latency_ms={k: lat.get(k) for k in ("p50", "p99")} if lat else None,
            ttft_ms={k: ttft.get(k) for k in ("p50", "p99")} if ttft else None,
        )


def error_line(
    message: str, exit_code: int, stream: TextIO | None = None, *, exc: BaseException | None = None
) -> None:
    """An ``error`` event for a run that ends before it starts (bad config, missing input), or
    for an unexpected exception (with its traceback, still one JSON line)."""
    log = EventLog(stream or sys.stderr)
    try:
        log._log.error(
            "error",
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
            extra={"fields": {"message": message, "exit_code": exit_code}},
        )
    finally:
        log.close()


def note_line(message: str, *, error: bool = False, quiet: bool = False) -> None:
    """A ``warning`` (or ``error``) event outside a run's own events (the CLI's notes)."""
    log = EventLog(sys.stderr, quiet=quiet)
    try:
        log.emit("error" if error else "warning", logging.ERROR if error else logging.WARNING,
                 message=message)  # fmt: skip
    finally:
        log.close()


def note(message: str, *, log_format: str, quiet: bool, error: bool = False) -> None:
    """A warning (or error) outside a run's own events, in the run's log format: a
    :func:`note_line` event under ``json``, else a ``runner: warning:`` line (not under -q,
    which still says errors)."""
    if log_format == "json":
        note_line(message, error=error, quiet=quiet)
    elif error or not quiet:
        print(f"runner: {'error' if error else 'warning'}: {message}", file=sys.stderr, flush=True)

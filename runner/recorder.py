"""Turns a finished job into its result line and latency record, writes both, and counts it.

The engine hands over what it knows (the dispatch, the final attempt, its timings); this
module owns the result ids, the clock origin that maps monotonic times to unix seconds, and
the order of the bookkeeping: sink first (the result line is the commit record), then the
accounts.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .models import Attempt, LatencyRecord
from .results import ResultLine

if TYPE_CHECKING:
    from .accounting import Accounts
    from .cache import Dispatch

__all__ = ["Recorder", "Sink"]


class Sink(Protocol):
    """Where results go. A job's key is its custom_id; a bad line without an id of its own is
    keyed by its line number (an int, so it can never be mistaken for a job's id).

    The engine calls :meth:`done` once per input item, in input order, before it sends the
    item (a reordering sink, :class:`runner.sinks.InputOrder`, relies on that).
    """

    def done(self, custom_id: str | int) -> bool: ...
    def write(self, result: ResultLine, record: LatencyRecord) -> None: ...
    def flush(self) -> None: ...


class Recorder:
    """Writes each finished job once: result line, latency record, accounts."""

    __slots__ = ("_model", "_perf0", "_run_id", "_seq", "_wall0", "accounts", "sink")

    def __init__(self, sink: Sink, accounts: Accounts, *, model: str) -> None:
        self.sink = sink
        self.accounts = accounts
        self._model = model
        self._run_id = os.urandom(6).hex()
        self._seq = 0
        self._perf0 = 0.0
        self._wall0 = time.time()

    def start(self, perf0: float) -> None:
        """Pin the clock origin: ``perf0`` (the engine's monotonic clock) is now."""
        self._perf0, self._wall0 = perf0, time.time()

    def _next_id(self) -> str:
        self._seq += 1
        return f"batch_req_{self._run_id}{self._seq:08x}"

    def job(
        self,
        d: Dispatch,
        a: Attempt,
        *,
        attempts: int,
        t_start: float,
        now: float,
        limiter_s: float,
    ) -> None:
        """Record a job's final attempt; times are the engine's monotonic clock."""
        job = d.job
        wall0, perf0, t_admit = self._wall0, self._perf0, d.admitted or self._perf0
        rec = LatencyRecord.of_attempt(
            job,
            a,
            attempts=attempts,
            queued_at=wall0 + (t_admit - perf0),
            started_at=wall0 + (t_start - perf0),
            ended_at=wall0 + (now - perf0),
            queue_ms=(t_start - t_admit) * 1000.0,
            total_ms=(now - t_start) * 1000.0,
            cache_role=d.role,
            limiter_ms=limiter_s * 1000.0,
            model=job.model or self._model,
        )
        err = a.error
        body: Any = a.body if a.raw is None else orjson.Fragment(a.raw)
        self.sink.write(
            ResultLine(
                self._next_id(),
                job.custom_id,
                job.line,
                a.status,
                a.request_id,
                body,
                None if err is None else err.code,
                None if err is None else err.message,
                job.metadata,
            ),
            rec,
        )
        self.accounts.job(rec, limiter_s)

    def invalid(
        self, custom_id: str | None, line: int, message: str, cache_id: str | None = None
    ) -> None:
        """Record a line that is not a sendable job (``invalid_input``)."""
        now = time.time()
        rec = LatencyRecord(
            custom_id=custom_id,
            cache_id=cache_id,
            outcome="error",
            queued_at=now,
            ended_at=now,
            error_code="invalid_input",
        )
        self.sink.write(
            ResultLine(
                self._next_id(), custom_id, line, error_code="invalid_input", error_message=message
            ),
            rec,
        )
        self.accounts.job(rec)

"""The asyncio engine: reader -> scheduler -> workers -> sinks.

The engine owns the protocols it needs (:class:`Backend`, :class:`Limiter`; :class:`Sink` lives
with :mod:`runner.recorder`) and never imports aiohttp or a provider: the CLI and
:mod:`runner.api` wire concrete parts in. It keeps only the flow of jobs (read-ahead,
dispatch, stop); its parts live in their own modules: :mod:`runner.sender` (one job's attempts,
retries and result), :mod:`runner.recorder` (result lines and latency records),
:mod:`runner.accounting` (live counters, summary, ``--max-cost``), :mod:`runner.guards` (circuit
breaker, why a run stops), :mod:`runner.priming` (pre-warm, first-byte release, explicit
caches). Input order is a sink's business (:class:`runner.sinks.InputOrder`): line numbers never
steer the engine.

Flow control has no polling. The reader admits jobs into the :class:`~runner.cache.Scheduler`
until ``read_ahead`` jobs are outstanding, then waits for space. ``_pump`` starts one task per
dispatchable job while fewer than ``concurrency`` are in flight (the task runs
:meth:`Sender.work <runner.sender.Sender.work>`); every finished job pumps again.
A failed job is a result, never an exception: only guards and signals stop a run early, and jobs
they leave unsent have no result line, so re-running the same command sends them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._records import Record
from .accounting import HOLD, Accounts, LiveStats
from .budget import RequestBudget
from .cache import Dispatch, Scheduler
from .config import RunConfig
from .errors import BudgetExceeded, GuardTripped
from .guards import EXIT_FAILED, EXIT_GUARD, Breaker, Stop
from .models import Attempt, BadLine, Job
from .priming import Priming, scheduler_for
from .providers.capabilities import Capabilities
from .recorder import Recorder, Sink
from .retry import RetryPolicy
from .sender import Sender

if TYPE_CHECKING:
    from .explicit_cache import ExplicitCaches

__all__ = ["Backend", "Engine", "LiveStats", "RunOutcome", "Sink"]

FLUSH_INTERVAL_S = 0.2


class Backend(Protocol):
    #: what the provider can do; the engine reads this, never the provider's name
    capabilities: Capabilities

    async def send(
        self,
        job: Job,
        *,
        cache_key: str | None,
        on_first_byte: Callable[[], None] | None = None,
        prewarm: bool = False,
    ) -> Attempt: ...


class Limiter(Protocol):
    async def acquire(self, est_tokens: int) -> float: ...
    def release(self, est_tokens: int, attempt: Attempt) -> None: ...


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RunOutcome(Record):
    """How a run ended: its summary, its exit code, and why it stopped early (if it did)."""

    summary: dict[str, Any]
    exit_code: int
    stopped: str | None  # why the run ended early: a guard code, "signal", or None


class Engine:
    """Runs an iterable of jobs to completion through one backend and one sink."""

    def __init__(
        self,
        config: RunConfig,
        *,
        backend: Backend,
        sink: Sink,
        limiter: Limiter,
        jobs_name: str = "jobs",
        on_tick: Callable[[LiveStats], None] | None = None,
        explicit: ExplicitCaches | None = None,
        policy: RetryPolicy | None = None,
        scheduler: Scheduler | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Wire one run. ``policy``, ``scheduler``, ``clock`` and ``sleep`` default to the ones
        the config describes; tests pass their own (millisecond backoff, a fake clock).
        """
        self.config = config
        self.backend = backend
        self.sink = sink
        self.limiter = limiter
        caps = self.capabilities = backend.capabilities
        self.budget = RequestBudget.for_run(config, caps)
        self.accounts = Accounts(config, self.budget)
        self.stats, self.summary = self.accounts.stats, self.accounts.summary
        self.recorder = Recorder(sink, self.accounts, model=config.model)
        self.scheduler = scheduler or scheduler_for(config, self.budget, caps)
        self.priming = Priming(
            self.scheduler, backend, limiter, self.accounts, explicit, self._pump, caps
        )
        self.stop = Stop()
        self._clock = clock
        self.sender = Sender(
            backend=backend,
            limiter=limiter,
            policy=policy or RetryPolicy(max_attempts=config.max_attempts),
            budget=self.budget,
            scheduler=self.scheduler,
            priming=self.priming,
            recorder=self.recorder,
            accounts=self.accounts,
            breaker=Breaker(config.breaker_min_requests, config.breaker_error_rate),
            stop=self.stop,
            trip=self._trip,
            pump=self._pump,
            clock=clock,
            sleep=sleep,
        )
        self._jobs_name = jobs_name
        self._on_tick = on_tick
        self._concurrency = config.concurrency
        self._read_ahead = max(config.read_ahead, config.concurrency)
        self._inflight = self._admitted = 0
        self._tasks: set[asyncio.Task[bool]] = set()
        self._space = asyncio.Event()
        self._all_done = asyncio.Event()
        self._reading = True
        self._held: Dispatch | None = None  # waits for in-flight requests to settle (budget)
        self._wake: asyncio.TimerHandle | None = None  # pumps when the scheduler asked to be
        # The loop run() runs on, looked up once: _pump runs twice per request, and on CPython
        # 3.11 get_running_loop() calls getpid(), a system call (0.35 us in this VM).
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public ------------------------------------------------------------------------------

    async def run(self, items: Iterable[Job | BadLine]) -> RunOutcome:
        self._loop = asyncio.get_running_loop()
        t0 = self._clock()
        self.recorder.start(t0)
        self.stats.started = t0
        ticker = asyncio.create_task(self._tick())
        try:
            await self._feed(iter(items))
            self._reading = False
            self._check_done()
            await self._all_done.wait()
        finally:
            ticker.cancel()
            if self._wake is not None:
                self._wake.cancel()
            self._cancel_inflight()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.sink.flush()
        stop = self.stop
        if stop.bug is not None:
            raise stop.bug
        control = self.scheduler.control.summary() if self.config.cache == "warm" else None
        summary = self.accounts.final(self._clock() - t0, stop.reason, stop.guard, control)
        return RunOutcome(summary, stop.exit_code(self.stats.failed > 0), stop.reason)

    def request_stop(self, reason: str, exit_code: int, *, hard: bool = False) -> None:
        """Stop reading and drain (``hard``: cancel in-flight requests at once)."""
        first = self.stop.begin(reason, exit_code)
        self._space.set()
        if hard:
            self._cancel_inflight()
        else:
            self.sender.cancel_parked()
        if not hard and first:
            asyncio.get_running_loop().call_later(self.config.drain_s, self._cancel_inflight)
        self._check_done()

    # -- reading -----------------------------------------------------------------------------

    async def _feed(self, it: Iterator[Job | BadLine]) -> None:
        sink, stats, record, sched = self.sink, self.stats, self.recorder, self.scheduler
        n = 0
        # Under `warm`, see the whole read-ahead window before choosing which groups to prime
        # first: priming groups in arrival order while the window fills would open many small
        # groups at once and thrash a bounded provider cache.
        filling = self.config.cache == "warm"
        for item in it:
            if self.stop.active:
                break
            # A bad line's result is keyed by its id when it has one, else by its line. The
            # sink is asked once per item, in input order (an ordering sink relies on it).
            cid = item.custom_id
            if sink.done(item.line if cid is None else cid):
                stats.skipped += 1  # an earlier run wrote its result
                continue
            stats.read += 1
            if isinstance(item, BadLine):
                record.invalid(cid, item.line, item.message)
                continue
            # A prompt that cannot fit the context window would only waste a paid call.
            problem = self.budget.context_problem(item, self._jobs_name)
            if problem is not None:
                record.invalid(item.custom_id, item.line, problem, item.cache_id)
                continue
            self._admitted += 1
            sched.add(item, self._clock())
            n += 1
            if self._admitted >= self._read_ahead:
                filling = False
                self._pump()
                if self._admitted >= self._read_ahead:
                    self._space.clear()
                    await self._space.wait()
            elif not filling or sched.has_ready():
                # While the window fills, a job that needs no primer (no group, or a prefix too
                # short to cache) goes out at once: only the groups wait to be seen whole.
                self._pump(open_groups=not filling)
                if not n & 255:
                    await asyncio.sleep(0)  # let started requests make progress while reading
        self._pump()

    # -- dispatch ----------------------------------------------------------------------------

    def _pump(self, open_groups: bool = True) -> None:
        if self.stop.active:
            return
        sched = self.scheduler
        loop = self._loop or asyncio.get_running_loop()
        while self._inflight < self._concurrency:
            d = self._held or sched.next(self._concurrency - self._inflight, open_groups)
            self._held = None
            if d is None:
                if self._wake is None and (w := sched.wake_in()) is not None:
                    # Nothing to send until a deadline (the cache probe's isolation): pump then.
                    self._wake = loop.call_later(w, self._woken)
                return
            est = 0.0
            if self.accounts.max_cost is not None:
                try:
                    est = self.accounts.reserve(d.job, self._inflight)
                except BudgetExceeded as exc:
                    self._trip(exc)
                    return
                if est == HOLD:
                    self._held = d  # sent once in-flight requests settle (_done pumps again)
                    return
            self._inflight += 1
            self.stats.in_flight = self._inflight
            t = loop.create_task(self.sender.work(d, est))
            self._tasks.add(t)
            # Bookkeeping runs in a done-callback, not a finally: a task cancelled before its
            # first step never runs its body, yet must still free its slot.
            t.add_done_callback(functools.partial(self._done, d, est))

    def _woken(self) -> None:
        self._wake = None
        self._pump()

    def _done(self, d: Dispatch, est_cost: float, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        written = False
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                written = task.result()
            elif self.stop.bug is None:
                # A defect, not a failed request: stop cleanly and re-raise it from run().
                self.stop.bug = exc
                self.request_stop("error", EXIT_FAILED)
        self._inflight -= 1
        self._admitted -= 1
        self.stats.in_flight = self._inflight
        if not written:
            self.accounts.settle(est_cost)  # a written job settled when it was billed
        if not written and d.role == "primer":
            self.scheduler.answered(d, False)
        self.scheduler.finished(d)
        self.priming.finished(d)
        if self._admitted < self._read_ahead:
            self._space.set()
        self._pump()
        self._check_done()

    # -- guards and shutdown -----------------------------------------------------------------

    def _trip(self, exc: GuardTripped) -> None:
        self.request_stop(exc.code, EXIT_GUARD, hard=self.stop.trip(exc))

    def _cancel_inflight(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    def _check_done(self) -> None:
        if self._inflight == 0 and (
            self.stop.active or (not self._reading and self._admitted == 0)
        ):
            self._all_done.set()

    async def _tick(self) -> None:
        """Flush outputs in small batches and feed the progress display."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.sink.flush()
            if self._on_tick is not None:
                self._on_tick(self.stats)

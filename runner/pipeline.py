"""The asyncio engine: reader -> scheduler -> workers -> sinks.

The engine owns the protocols it needs (:class:`Backend`, :class:`Sink`, :class:`Limiter`) and
never imports aiohttp or a provider: the CLI and :mod:`runner.api` wire concrete parts in.

Flow control has no polling. The reader admits jobs into the :class:`~runner.cache.Scheduler`
until ``read_ahead`` jobs are outstanding, then waits for space. ``_pump`` starts one task per
dispatchable job while fewer than ``concurrency`` are in flight; every finished job pumps again.
A failed job is a result, never an exception: only guards and signals stop a run early, and jobs
they leave unsent have no result line, so re-running the same command sends them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .budget import RequestBudget
from .cache import Dispatch, Scheduler
from .config import RunConfig
from .errors import (
    AuthError,
    BudgetExceeded,
    CircuitOpen,
    EndpointError,
    GuardTripped,
    QuotaError,
)
from .models import (
    Attempt,
    BadLine,
    CacheRole,
    ErrorInfo,
    Job,
    LatencyRecord,
    Price,
    estimate_tokens,
)
from .providers.capabilities import Capabilities
from .retry import RetryPolicy
from .stats import SummaryBuilder, cost_of

if TYPE_CHECKING:
    from .explicit_cache import ExplicitCaches

__all__ = ["Backend", "Engine", "LiveStats", "RunOutcome", "Sink"]

FLUSH_INTERVAL_S = 0.2
EXIT_OK, EXIT_FAILED, EXIT_GUARD = 0, 1, 3


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


class Sink(Protocol):
    # A job's key is its custom_id; a bad line without an id of its own is keyed by its line
    # number (an int, so it can never be mistaken for a job's id).
    def done(self, custom_id: str | int) -> bool: ...
    def expect(self, line: int) -> None: ...
    def write(self, result: dict[str, Any], record: LatencyRecord, line: int) -> None: ...
    def flush(self) -> None: ...


class Limiter(Protocol):
    async def acquire(self, est_tokens: int) -> float: ...
    def release(self, est_tokens: int, attempt: Attempt) -> None: ...


@dataclass(slots=True)
class LiveStats:
    """Counters the progress display reads; updated in place, never copied on the hot path."""

    total: int | None = None
    read: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    billed: float = 0.0
    limiter_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    summary: dict[str, Any]
    exit_code: int
    stopped: str | None  # why the run ended early: a guard code, "signal", or None


class _Abandon(Exception):
    """A job left unsent because the run is stopping; it gets no result line."""


_CANCELLED = ErrorInfo("cancelled", "request cancelled", retriable=True)
_FATAL: dict[str, type[GuardTripped]] = {
    "insufficient_quota": QuotaError,
    "endpoint": EndpointError,
}


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
        self.explicit = explicit  # explicit provider caches per group (Gemini cachedContents)
        self.backend = backend
        self.sink = sink
        self.limiter = limiter
        self.stats = LiveStats()
        # One pricing path: every job is priced by the model it is sent with.
        self.summary = SummaryBuilder(None, price_of=config.price)
        caps = self.capabilities = backend.capabilities
        self.budget = RequestBudget.for_run(config, caps)
        self.policy = policy or RetryPolicy(max_attempts=config.max_attempts)
        self.scheduler = scheduler or Scheduler(
            strategy=config.cache,
            ttl_s=config.cache_ttl_s,
            max_active_groups=config.max_active_groups,
            min_cacheable_tokens=self.budget.min_cacheable_tokens,
            lookahead=2 * config.concurrency,
            max_per_group=config.group_concurrency or config.concurrency,
            adapt=config.cache_adapt,
            concurrency=config.concurrency,
            key_rpm=config.key_rpm if config.cache == "warm" and caps.spreads_cache_keys else None,
        )
        self._clock = clock
        self._sleep = sleep
        self._jobs_name = jobs_name
        self._on_tick = on_tick
        self._first_byte = caps.release_on_first_byte
        self._prewarm_primers = caps.prewarm
        self._concurrency = config.concurrency
        self._read_ahead = max(config.read_ahead, config.concurrency)
        self._inflight = 0
        self._admitted = 0
        self._admit_t: dict[int, float] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        # Tasks with nothing on the wire (waiting for the limiter or a retry delay): a stop
        # cancels them at once instead of letting them wait out the drain.
        self._parked: set[asyncio.Task[Any] | None] = set()
        self._space = asyncio.Event()
        self._all_done = asyncio.Event()
        self._reading = True
        self._stopping = False
        self._stop_reason: str | None = None
        self._exit_override: int | None = None
        self._guard: GuardTripped | None = None
        self._bug: BaseException | None = None
        self._inflight_cost = 0.0
        self._held: Dispatch | None = None  # waits for in-flight requests to settle (budget)
        self._breaker: deque[bool] = deque(maxlen=max(1, config.breaker_min_requests))
        self._breaker_failures = 0
        self._run_id = os.urandom(6).hex()
        self._seq = 0
        self._perf0 = clock()
        self._wall0 = time.time()

    # -- public ------------------------------------------------------------------------------

    async def run(self, items: Iterable[Job | BadLine]) -> RunOutcome:
        self._perf0 = self._clock()
        self._wall0 = time.time()
        self.stats.started = self._perf0
        ticker = asyncio.create_task(self._tick())
        try:
            await self._feed(iter(items))
            self._reading = False
            self._check_done()
            await self._all_done.wait()
        finally:
            ticker.cancel()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.sink.flush()
        if self._bug is not None:
            raise self._bug
        wall = self._clock() - self._perf0
        summary = self.summary.summary(
            wall_s=wall,
            retries=self.stats.retries,
            limiter_wait_s=self.stats.limiter_s,
            skipped_resumed=self.stats.skipped,
        )
        summary["stopped"] = self._stop_reason
        summary["not_sent"] = max(0, self.stats.read - self.stats.done)
        if self.config.cache == "warm":
            summary["cache_control"] = self.scheduler.control.summary()
        if self._guard is not None:
            summary["guard"] = {"code": self._guard.code, "message": str(self._guard)}
        return RunOutcome(summary, self._exit_code(), self._stop_reason)

    def request_stop(self, reason: str, exit_code: int, *, hard: bool = False) -> None:
        """Stop reading and drain (``hard``: cancel in-flight requests at once)."""
        first = not self._stopping
        self._stopping = True
        self._stop_reason = self._stop_reason or reason
        if self._exit_override is None:
            self._exit_override = exit_code
        self._space.set()
        if hard:
            self._cancel_inflight()
        else:
            for t in list(self._parked):
                if t is not None:
                    t.cancel()
        if not hard and first:
            asyncio.get_running_loop().call_later(self.config.drain_s, self._cancel_inflight)
        self._check_done()

    # -- reading -----------------------------------------------------------------------------

    async def _feed(self, it: Iterator[Job | BadLine]) -> None:
        sink, stats, sched = self.sink, self.stats, self.scheduler
        precheck = self._precheck
        n = 0
        # Under `warm`, see the whole read-ahead window before choosing which groups to prime
        # first: priming groups in arrival order while the window fills would open many small
        # groups at once and thrash a bounded provider cache.
        filling = self.config.cache == "warm"
        for item in it:
            if self._stopping:
                break
            # A bad line's result is keyed by its id when it has one, else by its line.
            cid = item.custom_id
            if sink.done(item.line if cid is None else cid):
                stats.skipped += 1  # an earlier run wrote its result
                continue
            stats.read += 1
            sink.expect(item.line)
            if isinstance(item, BadLine):
                self._write_invalid(cid, item.line, item.message)
                continue
            problem = precheck(item)
            if problem is not None:
                self._write_invalid(item.custom_id, item.line, problem, item.cache_id)
                continue
            self._admitted += 1
            self._admit_t[id(item)] = self._clock()
            sched.add(item)
            n += 1
            if self._admitted >= self._read_ahead:
                filling = False
                self._pump()
                if self._admitted >= self._read_ahead:
                    self._space.clear()
                    await self._space.wait()
            elif not filling:
                self._pump()
                if not n & 255:
                    await asyncio.sleep(0)  # let started requests make progress while reading
        self._pump()

    def _precheck(self, job: Job) -> str | None:
        """Why a job would only waste a paid call (its prompt cannot fit the context window)."""
        if self.budget.context_window is None:
            return None
        return self.budget.context_problem(job, self._jobs_name)

    # -- dispatch ----------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._stopping:
            return
        sched = self.scheduler
        loop = asyncio.get_running_loop()
        while self._inflight < self._concurrency:
            d, self._held = self._held or sched.next(self._concurrency - self._inflight), None
            if d is None:
                return
            est = 0.0
            if self.config.max_cost is not None:
                est = self._budget_check(d)
                if est < 0:
                    return
                self._inflight_cost += est
            self._inflight += 1
            self.stats.in_flight = self._inflight
            t = loop.create_task(self._work(d))
            self._tasks.add(t)
            # Bookkeeping runs in a done-callback, not a finally: a task cancelled before its
            # first step never runs its body, yet must still free its slot.
            t.add_done_callback(functools.partial(self._done, d, est))

    def _budget_check(self, d: Dispatch) -> float:
        """The request's worst-case cost, or -1 when it must not be sent now.

        Worst case: its prompt estimate at the input price plus its ``max_tokens`` at the
        output price (or the average finished request, if more). When that would cross the
        budget even with nothing in flight, the run stops; when only what is in flight stands
        in the way, the request waits for it to settle, so the budget is spent, not reserved.
        """
        budget = self.config.max_cost
        assert budget is not None
        price = self.config.price(d.job.model)
        # Sums of float additions and subtractions can end a hair below zero: never show -0.0000.
        billed, inflight = self.stats.billed, max(self._inflight_cost, 0.0)
        if price is None:
            model = d.job.model or self.config.model
            self._trip(BudgetExceeded(f"no price for model {model!r}: --max-cost cannot be kept"))
            return -1.0
        # The length estimate can be off, so also assume each request costs what the average
        # finished one did.
        est = max(self._est_cost(d.job, price), self._avg_cost())
        if billed + est > budget:
            self._trip(
                BudgetExceeded(
                    f"stopped at ${billed:.4f} billed, ${inflight:.4f} in flight, budget "
                    f"${budget:g}: the next request could cost up to ${est:.4f}"
                )
            )
            return -1.0
        if self._inflight and billed + inflight + est > budget:
            self._held = d  # sent once in-flight requests settle (_done pumps again)
            return -1.0
        return est

    def _avg_cost(self) -> float:
        n = self.stats.ok + self.stats.failed
        return self.stats.billed / n if n else 0.0

    def _est_cost(self, job: Job, price: Price) -> float:
        return cost_of(estimate_tokens(job.prompt_chars), 0, 0, self.budget.completion(job), price)[
            0
        ]

    async def _work(self, d: Dispatch) -> bool:
        """Send one job through its retries; True when its result was written."""
        job = d.job
        t_admit = self._admit_t.pop(id(job), self._perf0)
        t_start = self._clock()
        est = self.budget.tokens(job)
        role = d.role
        primer = role == "primer"
        cb = self._first_byte_cb(d) if primer and self._first_byte else None
        attempts = 0
        limiter_s = 0.0
        a: Attempt | None = None
        explicit = self.explicit if d.group is not None else None
        try:
            if primer and self._prewarm_primers:
                await self._prewarm(d)
            if explicit is not None:
                await self._open_explicit(explicit, d)
            me = asyncio.current_task()
            parked = self._parked
            while True:
                attempts += 1
                key = d.cache_key if explicit is None else explicit.key(d.group)
                parked.add(me)  # inline, not a wrapper coroutine: this runs per request
                try:
                    limiter_s += await self.limiter.acquire(est)
                finally:
                    parked.discard(me)
                if self._stopping:  # stopped while parked: leave it unsent for a resume
                    self.limiter.release(est, Attempt(status=None, error=_CANCELLED))
                    raise _Abandon
                try:
                    a = await self.backend.send(job, cache_key=key, on_first_byte=cb)
                except BaseException:
                    self.limiter.release(est, Attempt(status=None, error=_CANCELLED))
                    raise
                self.limiter.release(est, a)
                err = a.error
                if err is None:
                    if primer:
                        self.scheduler.answered(d, True)
                    if explicit is not None:
                        explicit.answered(a.latency_ms / 1000.0)
                    break
                if explicit is not None and key is not None and err.code == "cache_missing":
                    # The group's cache expired or vanished: recreate it (or fall back to the
                    # full prompt) and send again at once; this is not the job's failure.
                    await explicit.lost(d.group or "", key, job, self._group_left(d))
                    continue
                if err.fatal:
                    cls = _FATAL.get(err.code, AuthError)
                    self._trip(cls(err.message))
                    raise _Abandon
                if primer and attempts == 1:
                    self.scheduler.answered(d, False)  # promote a follower meanwhile
                    self._pump()
                if not self.policy.should_retry(err, attempts):
                    break
                if self._stopping:
                    raise _Abandon  # a resume retries it; don't sleep through a drain
                self.stats.retries += 1
                parked.add(me)
                try:
                    await self._sleep(self.policy.delay(err, attempts))
                finally:
                    parked.discard(me)
            if a.usage is not None and a.error is None:
                self.scheduler.observe(d, a.usage.prompt_tokens, a.usage.cached_tokens)
            self._finish(job, role, a, attempts, t_admit, t_start, limiter_s)
            return True
        except _Abandon:
            return False  # no result line: the job stays unsent for a resume

    def _group_left(self, d: Dispatch) -> int:
        return (self.scheduler.pending(d.group) or 1) if d.group is not None else 1

    async def _open_explicit(self, explicit: ExplicitCaches, d: Dispatch) -> None:
        """A primer opens its group's explicit cache, then releases the followers; others
        only extend the cache when it is close to expiring."""
        if d.role == "primer":
            assert d.group is not None
            await explicit.open(d.group, d.job, self._group_left(d))
            self.scheduler.answered(d, True)
            self._pump()
        else:
            explicit.touch(d.group, self._group_left(d))

    def _done(self, d: Dispatch, est_cost: float, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        written = False
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                written = task.result()
            elif self._bug is None:
                # A defect, not a failed request: stop cleanly and re-raise it from run().
                self._bug = exc
                self.request_stop("error", EXIT_FAILED)
        self._inflight -= 1
        self._admitted -= 1
        self.stats.in_flight = self._inflight
        self._inflight_cost -= est_cost
        if not written and d.role == "primer":
            self.scheduler.answered(d, False)
        self.scheduler.finished(d)
        if self.explicit is not None and d.group is not None and d.role != "none":
            if self.scheduler.pending(d.group) is None:
                self.explicit.close(d.group)  # the group's last job is answered
        if self._admitted < self._read_ahead:
            self._space.set()
        self._pump()
        self._check_done()

    async def _prewarm(self, d: Dispatch) -> None:
        """A write-only pre-warm request (``Capabilities.prewarm``): bills only the cache write."""
        job = d.job
        est = estimate_tokens(job.prefix_chars)
        self.stats.limiter_s += await self.limiter.acquire(est)
        a = await self.backend.send(job, cache_key=d.cache_key, prewarm=True)
        self.limiter.release(est, a)
        if a.usage is not None:
            u = a.usage
            self.summary.add_usage(
                u.prompt_tokens,
                u.cached_tokens or 0,
                u.cache_write_tokens,
                u.completion_tokens,
                model=job.model,
            )
            price = self.config.price(job.model)
            if price is not None:
                self.stats.billed += cost_of(
                    u.prompt_tokens, u.cached_tokens or 0, u.cache_write_tokens, 0, price
                )[0]
        if a.error is None:
            self.scheduler.answered(d, True)

    def _first_byte_cb(self, d: Dispatch) -> Callable[[], None]:
        def released() -> None:
            self.scheduler.answered(d, True)
            self._pump()

        return released

    # -- results -----------------------------------------------------------------------------

    def _next_id(self) -> str:
        self._seq += 1
        return f"batch_req_{self._run_id}{self._seq:08x}"

    def _finish(
        self,
        job: Job,
        role: CacheRole,
        a: Attempt | None,
        attempts: int,
        t_admit: float,
        t_start: float,
        limiter_s: float,
    ) -> None:
        assert a is not None
        now = self._clock()
        wall0, perf0 = self._wall0, self._perf0
        err = a.error
        u = a.usage
        rec = LatencyRecord.of_attempt(
            job,
            a,
            attempts=attempts,
            queued_at=wall0 + (t_admit - perf0),
            started_at=wall0 + (t_start - perf0),
            ended_at=wall0 + (now - perf0),
            queue_ms=(t_start - t_admit) * 1000.0,
            total_ms=(now - t_start) * 1000.0,
            cache_role=role,
            limiter_ms=limiter_s * 1000.0,
            model=job.model or self.config.model,
        )
        stats = self.stats
        if u is not None:
            stats.prompt_tokens += u.prompt_tokens
            stats.cached_tokens += u.cached_tokens or 0
            stats.completion_tokens += u.completion_tokens
            price = self.config.price(job.model)
            if price is not None:
                stats.billed += cost_of(
                    u.prompt_tokens,
                    u.cached_tokens or 0,
                    u.cache_write_tokens,
                    u.completion_tokens,
                    price,
                )[0]
        body: Any = a.body
        if a.raw is not None:
            body = orjson.Fragment(a.raw)
        response = (
            None
            if a.status is None
            else {"status_code": a.status, "request_id": a.request_id, "body": body}
        )
        result: dict[str, Any] = {
            "id": self._next_id(),
            "custom_id": job.custom_id,
            "response": response,
            "error": None if err is None else {"code": err.code, "message": err.message},
        }
        if job.metadata is not None:
            result["metadata"] = job.metadata
        self.sink.write(result, rec, job.line)
        self.summary.add(rec)
        stats.done += 1
        stats.limiter_s += limiter_s
        if err is None:
            stats.ok += 1
        else:
            stats.failed += 1
        self._breaker_add(err is not None)

    def _write_invalid(
        self, custom_id: str | None, line: int, message: str, cache_id: str | None = None
    ) -> None:
        now = time.time()
        rec = LatencyRecord(
            custom_id=custom_id,
            cache_id=cache_id,
            outcome="error",
            queued_at=now,
            ended_at=now,
            error_code="invalid_input",
        )
        result: dict[str, Any] = {
            "id": self._next_id(),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": "invalid_input", "message": message},
        }
        if custom_id is None:
            result["line"] = line  # the marker of a line-keyed result (docs/FORMATS.md)
        self.sink.write(result, rec, line)
        self.summary.add(rec)
        self.stats.done += 1
        self.stats.failed += 1

    # -- guards and shutdown -----------------------------------------------------------------

    def _breaker_add(self, failed: bool) -> None:
        b = self._breaker
        if len(b) == b.maxlen and b[0]:
            self._breaker_failures -= 1
        b.append(failed)
        if failed:
            self._breaker_failures += 1
            if (
                len(b) == b.maxlen
                and self._breaker_failures >= self.config.breaker_error_rate * len(b)
                and not self._stopping
            ):
                self._trip(
                    CircuitOpen(
                        f"{self._breaker_failures} of the last {len(b)} jobs failed: "
                        "stopping before the rest fail the same way"
                    )
                )

    def _trip(self, exc: GuardTripped) -> None:
        if self._guard is None:
            self._guard = exc
        self.request_stop(exc.code, EXIT_GUARD, hard=isinstance(exc, AuthError | QuotaError))

    def _cancel_inflight(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    def _check_done(self) -> None:
        if self._inflight == 0 and (self._stopping or (not self._reading and self._admitted == 0)):
            self._all_done.set()

    def _exit_code(self) -> int:
        if self._exit_override is not None:
            return self._exit_override
        return EXIT_FAILED if self.stats.failed else EXIT_OK

    async def _tick(self) -> None:
        """Flush outputs in small batches and feed the progress display."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.sink.flush()
            if self._on_tick is not None:
                self._on_tick(self.stats)

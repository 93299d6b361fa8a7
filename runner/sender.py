"""One job's way from the limiter to its result line: attempts, retries, recording.

The engine decides *when* a job goes (read-ahead, concurrency, cost holds, stop); a
:class:`Sender` decides *how*: each attempt waits for the limiter, goes to the backend and is
released again; a failure is retried by the :class:`~runner.retry.RetryPolicy` after its delay;
the final attempt becomes the job's result line (:mod:`runner.recorder`), is billed and counts
towards the circuit breaker. :meth:`Sender.work` is the body of each of the engine's job tasks,
so the per-request path has no extra coroutine layer.

A job abandoned because the run is stopping (stopped while waiting, or a fatal error) gets no
result line, so a resume sends it again. A task waiting with nothing on the wire (for the
limiter or a retry delay) is *parked*: a stop cancels it at once instead of waiting out the drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .guards import fatal
from .models import Attempt, ErrorInfo
from .retry import FIELD_REFUSED

if TYPE_CHECKING:
    from .accounting import Accounts
    from .budget import RequestBudget
    from .cache import Dispatch, Scheduler
    from .errors import GuardTripped
    from .guards import Breaker, Stop
    from .pipeline import Backend, Limiter
    from .priming import Priming
    from .recorder import Recorder
    from .retry import RetryPolicy

__all__ = ["Sender"]


class _Abandon(Exception):
    """A job left unsent because the run is stopping; it gets no result line."""


_CANCELLED = ErrorInfo("cancelled", "request cancelled", retriable=True)


class Sender:
    """Sends dispatched jobs through their attempts and records each one's final attempt.

    ``trip`` stops the run for a tripped guard; ``pump`` lets the engine dispatch more (a
    primer's first failure promotes a follower meanwhile).
    """

    __slots__ = (
        "_accounts",
        "_backend",
        "_breaker",
        "_budget",
        "_clock",
        "_limiter",
        "_policy",
        "_priming",
        "_pump",
        "_recorder",
        "_scheduler",
        "_sleep",
        "_stop",
        "_trip",
        "parked",
    )

    def __init__(
        self,
        *,
        backend: Backend,
        limiter: Limiter,
        policy: RetryPolicy,
        budget: RequestBudget,
        scheduler: Scheduler,
        priming: Priming,
        recorder: Recorder,
        accounts: Accounts,
        breaker: Breaker,
        stop: Stop,
        trip: Callable[[GuardTripped], None],
        pump: Callable[[], None],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._backend, self._limiter, self._policy = backend, limiter, policy
        self._budget, self._scheduler, self._priming = budget, scheduler, priming
        self._recorder, self._accounts, self._breaker = recorder, accounts, breaker
        self._stop, self._trip, self._pump = stop, trip, pump
        self._clock, self._sleep = clock, sleep
        #: tasks with nothing on the wire (waiting for the limiter or a retry delay)
        self.parked: set[asyncio.Task[Any] | None] = set()

    def cancel_parked(self) -> None:
        """Cancel every parked task: a stopping run has no use for what they wait for."""
        for t in list(self.parked):
            if t is not None:
                t.cancel()

    async def work(self, d: Dispatch, est_cost: float = 0.0) -> bool:
        """Send one job through its retries; True when its result was written (and its cost
        reservation ``est_cost`` given back, as the cost is billed in the same step)."""
        job, limiter, priming, stop = d.job, self._limiter, self._priming, self._stop
        t_start = self._clock()
        est = self._budget.tokens(job)
        primer = d.role == "primer"
        explicit = priming.explicit if d.group is not None else None
        cb = priming.on_first_byte(d) if primer else None
        attempts, refused, limiter_s = 0, 0, 0.0
        a: Attempt | None = None
        try:
            if primer or explicit is not None:
                await priming.before(d, explicit)
            me = asyncio.current_task()
            parked = self.parked
            while True:
                attempts += 1
                key = d.cache_key if explicit is None else explicit.key(d.group)
                parked.add(me)  # inline, not a wrapper coroutine: this runs per request
                try:
                    limiter_s += await limiter.acquire(est)
                finally:
                    parked.discard(me)
                if stop.active:  # stopped while parked: leave it unsent for a resume
                    limiter.release(est, Attempt(status=None, error=_CANCELLED))
                    raise _Abandon
                try:
                    a = await self._backend.send(job, cache_key=key, on_first_byte=cb)
                except BaseException:
                    limiter.release(est, Attempt(status=None, error=_CANCELLED))
                    raise
                limiter.release(est, a)
                err = a.error
                if err is None:
                    if primer or explicit is not None:
                        priming.answered(d, explicit, a)
                    break
                if explicit is not None and await priming.lost(d, explicit, key, err):
                    continue  # the group's cache is back (or gone): this is not a failure
                if err.fatal:
                    self._trip(fatal(err))
                    raise _Abandon
                # A refused field of ours is no try of the job (runner/retry.py): it goes again
                # at once, whatever max_attempts says, and the tries the policy and the primer
                # count leave those requests out. Only here: the policy never sees a refusal.
                if err.code == FIELD_REFUSED:
                    refused += 1
                    wait = 0.0
                else:
                    if primer and attempts - refused == 1:
                        self._scheduler.answered(d, False)  # promote a follower meanwhile
                        self._pump()
                    if not self._policy.should_retry(err, attempts - refused):
                        break
                    wait = self._policy.delay(err, attempts - refused)
                if stop.active:
                    raise _Abandon  # a resume retries it; don't sleep through a drain
                self._accounts.stats.retries += 1
                parked.add(me)
                try:
                    await self._sleep(wait)
                finally:
                    parked.discard(me)
            if a.usage is not None and a.error is None:
                self._scheduler.observe(d, a.usage.prompt_tokens, a.usage.cached_tokens)
            self._recorder.job(
                d, a, attempts=attempts, t_start=t_start, now=self._clock(), limiter_s=limiter_s
            )
            # billed just now: no longer in flight (an answer without usage at its estimate)
            u = a.usage
            unmetered = a.error is None and (
                u is None or not (u.prompt_tokens or u.completion_tokens)
            )
            self._accounts.settle(est_cost, unmetered=unmetered)
            tripped = self._breaker.add(a.error is not None)
            if tripped is not None and not stop.active:
                self._trip(tripped)
            return True
        except _Abandon:
            return False  # no result line: the job stays unsent for a resume

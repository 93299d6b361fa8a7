"""Request and token rate limits with adaptive concurrency: the gate around every HTTP attempt.

:class:`RateController` combines, in the order an attempt passes them:

(a) a global *pause*, set when the server throttles (429/529) or reports an exhausted quota
    window, ended by one timer at the reset time;
(b) an *adaptive concurrency* limit (AIMD: halved on a throttle, +1 per round trip of
    successes, never above the configured concurrency);
(c) a requests-per-minute bucket and (d) a tokens-per-minute bucket.

The buckets are leaky buckets kept here rather than ``aiolimiter.AsyncLimiter`` because the
controller needs four things that limiter does not offer: giving tokens back when the real
usage was below the estimate, charging more when it was above, lowering the rate when the
server reports a lower limit, and admitting a request heavier than the bucket (aiolimiter
raises ``ValueError`` above ``max_rate``). The semantics otherwise match: a bucket of
capacity ``C`` leaking ``R`` units per second admits a request while the level stays at most
``C``.

Everything is O(1) per call and nothing runs in the background: waiters sleep until their own
reserved time, and pause waiters share one event set by one ``loop.call_later`` timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .models import Attempt, RateInfo

__all__ = ["BURST_S", "DEFAULT_PAUSE_S", "MAX_PAUSE_S", "RateController", "TokenBucket"]

#: Seconds of traffic a bucket may release at once. Providers enforce per-minute limits over
#: shorter windows too ("60,000 RPM may be enforced as 1,000 per second"), so releasing a whole
#: minute's worth at start-up would only buy 429s; one second keeps the pace smooth.
BURST_S = 1.0
#: Pause after a throttle that named no delay of its own.
DEFAULT_PAUSE_S = 1.0
#: The longest pause a header may impose; past this a retry is cheaper than idling the run.
MAX_PAUSE_S = 120.0

_THROTTLE_CODES = frozenset({"rate_limited", "overloaded"})


class TokenBucket:
    """A leaky bucket measured in requests or tokens per minute, with reservations.

    :meth:`reserve` charges the bucket at once and returns how long the caller must wait
    before its reservation is due, so later callers queue behind it in arrival order without a
    waiter list. The level may therefore exceed the capacity: the excess is time already
    promised to waiting callers.

    A request heavier than the capacity is *admitted* as if it weighed the capacity (when the
    bucket is empty) but *charged* its full weight, so a huge prompt cannot wait forever and
    the average rate still holds: the callers after it wait for the extra.
    """

    __slots__ = ("_clock", "_last", "_level", "capacity", "per_minute", "rate")

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        if not per_minute > 0:
            raise ValueError(f"a rate must be > 0 per minute, got {per_minute}")
        self._clock = clock
        self._level = 0.0
        self._last = clock()
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # units per second
        # At least one whole unit, so that rpm below 60 still admits a request.
        self.capacity = max(self.rate * BURST_S, 1.0)

    def _leak(self) -> float:
        now = self._clock()
        level = self._level
        if level:
            # Plain comparisons rather than max(): this runs twice per attempt.
            level -= (now - self._last) * self.rate
            if level < 0.0:
                level = 0.0
            self._level = level
        self._last = now
        return level

    @property
    def level(self) -> float:
        """Units in the bucket now (above ``capacity`` while reservations are pending)."""
        return self._leak()

    def reserve(self, amount: float) -> float:
        """Charge ``amount`` and return the seconds until it may be used (0 when at once)."""
        level = self._leak()
        capacity = self.capacity
        need = level - capacity + (amount if amount < capacity else capacity)
        self._level = level + amount
        return need / self.rate if need > 0 else 0.0

    def adjust(self, delta: float) -> None:
        """Charge ``delta`` more units (negative: give them back). The level stays >= 0."""
        self._level = max(self._leak() + delta, 0.0)

    def set_rate(self, per_minute: float) -> None:
        """Change the rate; the level so far leaks at the old rate first."""
        self._leak()
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * BURST_S, 1.0)


class RateController:
    """The one object the pipeline calls around each HTTP attempt.

    Create it inside the running event loop. ``await acquire(est)`` before sending,
    ``release(est, attempt)`` after, exactly once per successful ``acquire``.

    :param concurrency: the most attempts in flight; the adaptive limit never exceeds it.
    :param rpm: requests per minute, or None for no local limit (one may still be learned
        from the server's rate-limit headers).
    :param tpm: tokens per minute (estimated before the call, corrected from usage after),
        or None likewise.
    :param clock: seconds on a monotonic scale; the running loop's clock by default. Timers
        are scheduled relative to it, so an injected clock must advance with the loop's.
    """

    __slots__ = (
        "_acked",
        "_clock",
        "_concurrency",
        "_config_rpm",
        "_config_tpm",
        "_episode_until",
        "_in_flight",
        "_limit",
        "_loop",
        "_paused_until",
        "_pauses",
        "_resume",
        "_resume_handle",
        "_rpm",
        "_seen_limits",
        "_slot_waiters",
        "_stale",
        "_throttles",
        "_tpm",
    )

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._concurrency = concurrency
        self._limit = concurrency
        self._in_flight = 0
        self._acked = 0  # successes since the last additive increase
        # Attempts already in flight when the limit was last halved: their throttles belong to
        # the same congestion episode and must not halve it again (TCP's once per round trip).
        self._stale = 0
        self._throttles = 0
        self._episode_until = float("-inf")  # end of the pause opened by the last halving
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._config_rpm = rpm
        self._config_tpm = tpm
        self._rpm = TokenBucket(rpm, self._clock) if rpm is not None else None
        self._tpm = TokenBucket(tpm, self._clock) if tpm is not None else None
        self._seen_limits: tuple[float | None, float | None] = (None, None)
        self._paused_until = 0.0
        self._pauses = 0
        self._resume = asyncio.Event()  # set while not paused
        self._resume.set()
        self._resume_handle: asyncio.TimerHandle | None = None

    # -- read-only state -------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """The current adaptive concurrency limit (1 ..= configured concurrency)."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Attempts between ``acquire`` and ``release``."""
        return self._in_flight

    @property
    def paused_until(self) -> float | None:
        """The clock time the current pause ends, or None when not paused."""
        return None if self._resume.is_set() else self._paused_until

    @property
    def pauses(self) -> int:
        """Pauses opened so far (an extension of the current pause is not a new one)."""
        return self._pauses

    @property
    def throttles(self) -> int:
        """429/529 responses seen so far."""
        return self._throttles

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute rate in force (configured, or lowered by the server)."""
        return self._rpm.per_minute if self._rpm is not None else None

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute rate in force (configured, or lowered by the server)."""
        return self._tpm.per_minute if self._tpm is not None else None

    # -- acquire ---------------------------------------------------------------------------

    async def acquire(self, est_tokens: int) -> float:
        """Wait until an attempt weighing ``est_tokens`` may be sent.

        :returns: seconds spent waiting on the pause and the rate buckets (not on the
            concurrency slot, which is queueing rather than limiting).
        """
        waited = 0.0
        while True:
            if not self._resume.is_set():
                waited += await self._wait_pause()
            if self._in_flight < self._limit and not self._slot_waiters:
                self._in_flight += 1  # the hot path: no await, no clock read
            else:
                await self._wait_slot()
            if not self._resume.is_set():
                # Paused while queued for the slot: hand it back so that, when the pause
                # ends, only the (now lower) limit of attempts goes out, not every waiter.
                self._free_slot()
                continue
            rpm, tpm = self._rpm, self._tpm
            if rpm is None and tpm is None:
                return waited
            # Reservations are synchronous; only a reservation not yet due costs an await.
            try:
                if rpm is not None and (wait := rpm.reserve(1)) > 0:
                    waited += await self._sleep(rpm, 1, wait)
                if tpm is not None and (wait := tpm.reserve(est_tokens)) > 0:
                    try:
                        waited += await self._sleep(tpm, est_tokens, wait)
                    except BaseException:
                        if rpm is not None:
                            rpm.adjust(-1)
                        raise
            except BaseException:
                self._free_slot()
                raise
            if self._resume.is_set():
                return waited
            # Paused while waiting for tokens: return them and queue again behind the pause.
            self._refund(est_tokens)
            self._free_slot()

    async def _wait_pause(self) -> float:
        start = self._clock()
        while not self._resume.is_set():
            await self._resume.wait()
        return self._clock() - start

    async def _wait_slot(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._slot_waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self._free_slot()
            raise

    async def _sleep(self, bucket: TokenBucket, amount: float, wait: float) -> float:
        start = self._clock()
        try:
            await asyncio.sleep(wait)
        except BaseException:
            bucket.adjust(-amount)  # a cancelled attempt must not keep its reservation
            raise
        return self._clock() - start

    def _refund(self, est_tokens: int) -> None:
        if self._rpm is not None:
            self._rpm.adjust(-1)
        if self._tpm is not None:
            self._tpm.adjust(-est_tokens)

    def _free_slot(self) -> None:
        self._in_flight -= 1
        self._wake_slots()

    def _wake_slots(self) -> None:
        # Hand each free slot straight to the oldest live waiter, so a newcomer on the fast
        # path cannot overtake it; cancelled waiters are dropped here, lazily.
        waiters = self._slot_waiters
        while waiters and self._in_flight < self._limit:
            fut = waiters.popleft()
            if not fut.done():
                self._in_flight += 1
                fut.set_result(None)

    # -- release ---------------------------------------------------------------------------

    def release(self, est_tokens: int, attempt: Attempt) -> None:
        """Free the slot taken by :meth:`acquire` and learn from the attempt's outcome.

        - Usage known: the token bucket is charged the difference between the real tokens
          (prompt + completion) and ``est_tokens``; a surplus estimate is given back. Unknown
          usage (a failed attempt) keeps the estimate charged, erring on the safe side.
        - Rate headers: a server limit below the local rate lowers it (never above the
          configured rate); a window with nothing remaining pauses everything until its reset.
        - A throttle (429/529) pauses everything and halves the concurrency limit once per
          congestion episode; a success counts towards the additive increase.
        """
        self._in_flight -= 1
        fresh = self._stale == 0
        if not fresh:
            self._stale -= 1
        usage = attempt.usage
        if usage is not None and self._tpm is not None:
            delta = usage.prompt_tokens + usage.completion_tokens - est_tokens
            if delta:
                self._tpm.adjust(delta)
        rate = attempt.rate
        if rate is not None:
            self._learn(rate)
        error = attempt.error
        if error is None:
            # Only attempts sent after the last halving speak for the new limit (TCP likewise
            # does not grow its window while recovering).
            if fresh and self._limit < self._concurrency:
                self._acked += 1
                if self._acked >= self._limit:
                    self._acked = 0
                    self._limit += 1
        elif error.code in _THROTTLE_CODES:
            self._throttle(error.retry_after_s, rate, fresh)
        self._wake_slots()

    def _throttle(self, retry_after_s: float | None, rate: RateInfo | None, fresh: bool) -> None:
        self._throttles += 1
        if retry_after_s is not None and retry_after_s >= 0:
            pause = retry_after_s
        else:
            pause = DEFAULT_PAUSE_S
            if rate is not None:
                # A reset sooner than the default is the server saying capacity is back then.
                for reset in (rate.reset_requests_s, rate.reset_tokens_s):
                    if reset is not None and 0 <= reset < pause:
                        pause = reset
        now = self._clock()
        if fresh and now >= self._episode_until:
            self._limit = max(self._limit // 2, 1)
            self._acked = 0
            self._stale = self._in_flight
            self._episode_until = now + min(pause, MAX_PAUSE_S)
        self.pause(pause)

    def _learn(self, rate: RateInfo) -> None:
        limits = (rate.limit_requests, rate.limit_tokens)
        if limits != self._seen_limits:  # most responses repeat the last ones: skip the work
            self._seen_limits = limits
            self._apply_limits(rate)
        if rate.remaining_requests == 0 and rate.reset_requests_s:
            self.pause(rate.reset_requests_s)
        if rate.remaining_tokens == 0 and rate.reset_tokens_s:
            self.pause(rate.reset_tokens_s)

    def _apply_limits(self, rate: RateInfo) -> None:
        if rate.limit_requests is not None and rate.limit_requests > 0:
            self._rpm = self._lower(self._rpm, self._config_rpm, rate.limit_requests)
        if rate.limit_tokens is not None and rate.limit_tokens > 0:
            self._tpm = self._lower(self._tpm, self._config_tpm, rate.limit_tokens)

    def _lower(
        self, bucket: TokenBucket | None, configured: float | None, server: float
    ) -> TokenBucket:
        # The server's limit governs up to the configured one: a key upgraded mid-run may
        # climb back to the configuration, never past what the user asked for.
        target = server if configured is None else min(server, configured)
        if bucket is None:
            return TokenBucket(target, self._clock)
        if bucket.per_minute != target:
            bucket.set_rate(target)
        return bucket

    # -- pause -----------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every :meth:`acquire` for ``seconds`` (at most :data:`MAX_PAUSE_S`) from now.

        A pause only ever extends the current one. Waiters wake together when its single
        timer fires and then pass the concurrency limit one slot at a time.
        """
        if not seconds > 0:  # also refuses NaN, which would poison the timer
            return
        until = self._clock() + min(seconds, MAX_PAUSE_S)
        if until <= self._paused_until:
            return
        self._paused_until = until
        if self._resume.is_set():
            self._pauses += 1
        self._resume.clear()
        if self._resume_handle is not None:
            self._resume_handle.cancel()
        self._resume_handle = self._loop.call_later(until - self._clock(), self._on_resume)

    def _on_resume(self) -> None:
        self._resume_handle = None
        self._resume.set()

"""Tests for runner.limits with the event loop's clock patched: no test sleeps in real time.

Time moves only when a test calls :meth:`Clock.advance`, which then runs the loop a few
rounds so that due timers fire and the tasks they wake get to run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from unittest import mock

import pytest

from runner.limits import DEFAULT_PAUSE_S, MAX_PAUSE_S, RateController, TokenBucket
from runner.models import Attempt, ErrorInfo, RateInfo, Usage


class Clock:
    """Stands in for ``loop.time``; the loop schedules its timers against it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float = 0.0) -> None:
        await self.settle()  # tasks created just before start at the old time
        self.now += seconds
        await self.settle()

    @staticmethod
    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)


@pytest.fixture
async def clock() -> AsyncIterator[Clock]:
    fake = Clock()
    with mock.patch.object(asyncio.get_running_loop(), "time", fake):
        yield fake


def ok(prompt: int = 0, completion: int = 0, rate: RateInfo | None = None) -> Attempt:
    return Attempt(
        status=200, usage=Usage(prompt_tokens=prompt, completion_tokens=completion), rate=rate
    )


def throttled(
    retry_after_s: float | None = 2.0, rate: RateInfo | None = None, code: str = "rate_limited"
) -> Attempt:
    error = ErrorInfo(code, "slow down", True, retry_after_s=retry_after_s)
    return Attempt(status=429 if code == "rate_limited" else 529, error=error, rate=rate)


def start(coro: Coroutine[Any, Any, float]) -> asyncio.Task[float]:
    return asyncio.ensure_future(coro)


def finished(tasks: list[asyncio.Task[float]]) -> int:
    return sum(t.done() for t in tasks)


# -- fast path --------------------------------------------------------------------------------


async def test_fast_path_returns_zero_without_yielding() -> None:
    ctl = RateController(concurrency=2, rpm=None, tpm=None)
    coro = ctl.acquire(100)
    # Completing on the first send proves the coroutine never suspended.
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    assert done.value.value == 0.0
    assert ctl.in_flight == 1
    ctl.release(100, ok())
    assert ctl.in_flight == 0


async def test_generous_limits_do_not_yield_either() -> None:
    ctl = RateController(concurrency=2, rpm=1e9, tpm=1e12)
    with pytest.raises(StopIteration) as done:
        ctl.acquire(100).send(None)
    assert done.value.value == 0.0


def test_must_be_created_inside_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        RateController(concurrency=1, rpm=None, tpm=None)


async def test_invalid_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        RateController(concurrency=0, rpm=None, tpm=None)
    with pytest.raises(ValueError):
        RateController(concurrency=1, rpm=0, tpm=None)
    with pytest.raises(ValueError):
        RateController(concurrency=1, rpm=None, tpm=-5)


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrency_slots_are_handed_over_in_order(clock: Clock) -> None:
    ctl = RateController(concurrency=2, rpm=None, tpm=None)
    await ctl.acquire(1)
    await ctl.acquire(1)
    waiters = [start(ctl.acquire(1)) for _ in range(3)]
    await clock.advance()
    assert finished(waiters) == 0
    ctl.release(1, ok())
    await clock.advance()
    assert [t.done() for t in waiters] == [True, False, False]
    assert waiters[0].result() == 0.0  # slot waits are queueing, not limiter time
    assert ctl.in_flight == 2
    ctl.release(1, ok())
    ctl.release(1, ok())
    await clock.advance()
    assert finished(waiters) == 3


async def test_cancelled_slot_waiter_is_skipped(clock: Clock) -> None:
    ctl = RateController(concurrency=1, rpm=None, tpm=None)
    await ctl.acquire(1)
    first, second = start(ctl.acquire(1)), start(ctl.acquire(1))
    await clock.advance()
    first.cancel()
    await clock.advance()
    ctl.release(1, ok())
    await clock.advance()
    assert first.cancelled() and second.done()
    assert ctl.in_flight == 1


async def test_slot_handed_to_a_task_cancelled_before_it_ran_is_passed_on(clock: Clock) -> None:
    ctl = RateController(concurrency=1, rpm=None, tpm=None)
    await ctl.acquire(1)
    first, second = start(ctl.acquire(1)), start(ctl.acquire(1))
    await clock.advance()
    ctl.release(1, ok())  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it resumes
    await clock.advance()
    assert first.cancelled() and second.done()
    assert ctl.in_flight == 1


# -- rate buckets -----------------------------------------------------------------------------


async def test_rpm_60_paces_one_request_a_second(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=60, tpm=None)
    tasks = [start(ctl.acquire(1)) for _ in range(5)]
    done_at: dict[int, float] = {}
    for _ in range(10):
        await clock.advance(0.5)
        for i, t in enumerate(tasks):
            if t.done() and i not in done_at:
                done_at[i] = clock.now - 1000.0
    # The first goes at once (reported at the first 0.5 s step), then one a second.
    assert [done_at[i] for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 4.0]
    assert [t.result() for t in tasks] == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_rpm_below_one_a_second_still_admits_single_requests(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=6, tpm=None)
    assert await ctl.acquire(1) == 0.0
    second = start(ctl.acquire(1))
    await clock.advance(9.9)
    assert not second.done()
    await clock.advance(0.1)
    assert second.result() == pytest.approx(10.0)


async def test_tpm_charges_token_weights(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=None, tpm=6000)  # 100 tokens/s, burst 100
    assert await ctl.acquire(100) == 0.0
    second = start(ctl.acquire(50))
    await clock.advance(0.4)
    assert not second.done()
    await clock.advance(0.1)
    assert second.result() == pytest.approx(0.5)


@pytest.mark.parametrize(("actual", "expected_wait"), [(30, 0.3), (300, 3.0), (100, 1.0)])
async def test_tpm_corrected_from_usage(clock: Clock, actual: int, expected_wait: float) -> None:
    ctl = RateController(concurrency=10, rpm=None, tpm=6000)
    await ctl.acquire(100)
    ctl.release(100, ok(prompt=actual - 10, completion=10))
    nxt = start(ctl.acquire(100))
    await clock.advance(expected_wait - 0.01)
    assert not nxt.done()
    await clock.advance(0.01)
    assert nxt.result() == pytest.approx(expected_wait)


async def test_unknown_usage_keeps_the_estimate_charged(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=None, tpm=6000)
    await ctl.acquire(100)
    ctl.release(100, Attempt(status=None, error=ErrorInfo("connection", "reset", True)))
    nxt = start(ctl.acquire(100))
    await clock.advance(0.99)
    assert not nxt.done()
    await clock.advance(0.01)
    assert nxt.done()


async def test_oversize_weight_is_admitted_but_charged_in_full(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=None, tpm=6000)  # capacity 100 tokens
    # Ten times the capacity would never fit; it goes when the bucket is empty...
    assert await ctl.acquire(1000) == 0.0
    # ...and the tokens it used beyond the capacity are paid for by whoever comes next.
    nxt = start(ctl.acquire(10))
    await clock.advance(9.0)
    assert not nxt.done()
    await clock.advance(0.1)
    assert nxt.result() == pytest.approx(9.1)


async def test_oversize_weight_waits_for_an_empty_bucket(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=None, tpm=6000)
    await ctl.acquire(60)
    big = start(ctl.acquire(10_000))
    await clock.advance(0.59)
    assert not big.done()
    await clock.advance(0.01)
    assert big.result() == pytest.approx(0.6)


async def test_cancelled_token_wait_gives_its_reservation_back(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=60, tpm=None)
    await ctl.acquire(1)
    doomed = start(ctl.acquire(1))
    await clock.advance(0.1)
    doomed.cancel()
    await clock.advance()
    assert ctl.in_flight == 1
    # Without the refund this one would queue behind the cancelled reservation (2 s).
    nxt = start(ctl.acquire(1))
    await clock.advance(0.9)
    assert nxt.result() == pytest.approx(0.9)


async def test_cancelled_tpm_wait_also_returns_the_request_token(clock: Clock) -> None:
    ctl = RateController(concurrency=10, rpm=120, tpm=6000)  # bursts of 2 requests, 100 tokens
    await ctl.acquire(100)
    doomed = start(ctl.acquire(100))  # its request token is free at once, its tokens in 1 s
    await clock.advance(0.5)
    doomed.cancel()
    await clock.advance()
    # Both reservations came back, so two small requests fit in both buckets at once.
    small = [start(ctl.acquire(1)) for _ in range(2)]
    await clock.advance()
    assert [t.result() for t in small] == [0.0, 0.0]


def test_token_bucket_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, lambda: 0.0)


def test_token_bucket_level_leaks_and_never_goes_negative() -> None:
    now = [0.0]
    bucket = TokenBucket(60, lambda: now[0])
    bucket.reserve(3)
    now[0] = 1.0
    assert bucket.level == pytest.approx(2.0)
    bucket.adjust(-10)
    assert bucket.level == 0.0


# -- throttles and pauses ---------------------------------------------------------------------


async def test_429_pauses_all_acquires_until_the_reset(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=2.0))
    assert ctl.paused_until == pytest.approx(clock.now + 2.0)
    assert ctl.throttles == 1
    waiters = [start(ctl.acquire(1)) for _ in range(3)]
    await clock.advance(1.99)
    assert finished(waiters) == 0
    await clock.advance(0.01)
    assert finished(waiters) == 3
    assert [t.result() for t in waiters] == [pytest.approx(2.0)] * 3
    assert ctl.paused_until is None
    assert await ctl.acquire(1) == 0.0  # resumed: the fast path again


async def test_529_overloaded_pauses_too(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=None, code="overloaded"))
    assert ctl.paused_until == pytest.approx(clock.now + DEFAULT_PAUSE_S)
    assert ctl.limit == 4


async def test_other_errors_neither_pause_nor_back_off(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, Attempt(status=500, error=ErrorInfo("http_5xx", "oops", True)))
    assert ctl.paused_until is None and ctl.limit == 8 and ctl.throttles == 0


async def test_pause_without_delay_uses_a_sooner_reset_header(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    rate = RateInfo(reset_requests_s=0.2, reset_tokens_s=30.0)
    ctl.release(1, throttled(retry_after_s=None, rate=rate))
    assert ctl.paused_until == pytest.approx(clock.now + 0.2)


async def test_pause_is_capped(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=86_400.0))
    assert ctl.paused_until == pytest.approx(clock.now + MAX_PAUSE_S)


async def test_a_longer_pause_extends_the_current_one(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=1.0))
    waiter = start(ctl.acquire(1))
    await clock.advance(0.5)
    ctl.release(1, throttled(retry_after_s=2.0))  # now until t+2.5
    ctl.pause(0.1)  # shorter: ignored
    ctl.pause(float("nan"))  # nonsense: ignored
    ctl.pause(-1.0)
    await clock.advance(1.0)
    assert not waiter.done()  # the first timer was replaced, not left to fire
    await clock.advance(1.0)
    assert waiter.result() == pytest.approx(2.5)


async def test_after_a_pause_only_the_reduced_limit_goes_out(clock: Clock) -> None:
    ctl = RateController(concurrency=4, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=1.0))
    assert ctl.limit == 2
    waiters = [start(ctl.acquire(1)) for _ in range(10)]
    await clock.advance(1.0)
    # Everyone woke at the one reset timer, but only two attempts may be sent.
    assert finished(waiters) == 2 and ctl.in_flight == 2
    ctl.release(1, ok())
    await clock.advance()
    assert finished(waiters) == 3


async def test_waiters_queued_for_a_slot_when_a_pause_begins_wait_for_it(clock: Clock) -> None:
    ctl = RateController(concurrency=2, rpm=None, tpm=None)
    await ctl.acquire(1)
    await ctl.acquire(1)
    queued = [start(ctl.acquire(1)) for _ in range(3)]
    await clock.advance()
    ctl.release(1, throttled(retry_after_s=1.0))  # frees a slot but pauses and halves
    await clock.advance(0.5)
    assert finished(queued) == 0
    assert ctl.in_flight == 1
    ctl.release(1, ok())
    await clock.advance()
    assert finished(queued) == 0  # the freed slot does not let anyone past the pause
    assert ctl.in_flight == 0
    await clock.advance(0.5)
    # The new limit is 1, and successes of attempts sent before the halving do not raise it.
    assert finished(queued) == 1 and ctl.limit == 1


async def test_pause_during_a_token_wait_returns_the_tokens_and_waits(clock: Clock) -> None:
    ctl = RateController(concurrency=4, rpm=60, tpm=6000)
    await ctl.acquire(1)
    pacing = start(ctl.acquire(1))  # due at +1 s
    await clock.advance(0.5)
    ctl.pause(2.0)
    await clock.advance(0.5)
    assert not pacing.done()  # its token came due during the pause
    await clock.advance(1.5)
    assert pacing.result() == pytest.approx(2.5)


# -- AIMD -------------------------------------------------------------------------------------


async def test_burst_of_429s_halves_once_then_ramps_back(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    for _ in range(8):
        await ctl.acquire(1)
    for _ in range(8):  # all from the same congestion episode
        ctl.release(1, throttled(retry_after_s=1.0))
    assert ctl.limit == 4
    assert ctl.throttles == 8
    await clock.advance(1.0)
    # Additive increase: +1 after `limit` successes, i.e. one per round trip.
    for expected in (5, 6, 7, 8, 8):
        for _ in range(ctl.limit):
            await ctl.acquire(1)
            ctl.release(1, ok())
        assert ctl.limit == expected


async def test_late_429s_from_the_old_episode_do_not_halve_again(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    for _ in range(4):
        await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=0.5))
    assert ctl.limit == 4
    await clock.advance(1.0)  # the pause is over, but three old attempts are still out
    ctl.release(1, throttled(retry_after_s=0.5))
    assert ctl.limit == 4
    for _ in range(2):
        ctl.release(1, ok())
    await clock.advance(1.0)
    await ctl.acquire(1)  # sent after the backoff: a throttle now is news
    ctl.release(1, throttled(retry_after_s=0.5))
    assert ctl.limit == 2


async def test_limit_never_drops_below_one(clock: Clock) -> None:
    ctl = RateController(concurrency=2, rpm=None, tpm=None)
    for _ in range(3):
        await ctl.acquire(1)
        ctl.release(1, throttled(retry_after_s=0.1))
        await clock.advance(0.1)
    assert ctl.limit == 1


# -- learning from headers --------------------------------------------------------------------


async def test_server_limits_lower_the_local_rates_but_never_raise_them(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=600, tpm=100_000)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=RateInfo(limit_requests=60, limit_tokens=50_000)))
    assert (ctl.rpm, ctl.tpm) == (60, 50_000)
    await clock.advance(1.0)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=RateInfo(limit_requests=60, limit_tokens=50_000)))
    assert (ctl.rpm, ctl.tpm) == (60, 50_000)
    await clock.advance(1.0)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=RateInfo(limit_requests=10_000, limit_tokens=10**7)))
    assert (ctl.rpm, ctl.tpm) == (600, 100_000)


async def test_server_limits_are_learned_when_none_configured(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=RateInfo(limit_requests=60, limit_tokens=6000)))
    assert (ctl.rpm, ctl.tpm) == (60, 6000)
    assert await ctl.acquire(100) == 0.0
    nxt = start(ctl.acquire(1))
    await clock.advance(0.99)
    assert not nxt.done()  # the learned 60 rpm now paces requests
    await clock.advance(0.01)
    assert nxt.done()


async def test_learned_rate_slows_the_bucket(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=6000, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=RateInfo(limit_requests=60)))
    nxt = start(ctl.acquire(1))
    await clock.advance(0.9)
    assert not nxt.done()
    await clock.advance(0.1)
    assert nxt.done()


@pytest.mark.parametrize(
    "rate",
    [
        RateInfo(remaining_requests=0, reset_requests_s=3.0),
        RateInfo(remaining_tokens=0, reset_tokens_s=3.0),
    ],
)
async def test_exhausted_window_pauses_until_its_reset(clock: Clock, rate: RateInfo) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=rate))
    assert ctl.paused_until == pytest.approx(clock.now + 3.0)
    assert ctl.limit == 8 and ctl.throttles == 0  # no throttle happened: no backoff
    waiter = start(ctl.acquire(1))
    await clock.advance(2.9)
    assert not waiter.done()
    await clock.advance(0.1)
    assert waiter.done()


async def test_remaining_capacity_does_not_pause(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    await ctl.acquire(1)
    rate = RateInfo(remaining_requests=1, reset_requests_s=3.0, remaining_tokens=0)
    ctl.release(1, ok(rate=rate))
    assert ctl.paused_until is None

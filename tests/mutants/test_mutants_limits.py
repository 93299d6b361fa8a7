"""Rate-controller behaviour that surviving mutants of ``runner/limits.py`` showed untested.

Each test names the behaviour; docs/TESTING.md lists the mutants it was written against.
The loop's clock is patched (``clock`` fixture of test_limits): no test sleeps in real time.
"""

from __future__ import annotations

import pytest
from test_limits import Clock, clock, ok, start, throttled

from runner.limits import DEFAULT_PAUSE_S, RateController, TokenBucket
from runner.models import RateInfo

__all__ = ["clock"]  # the fixture, imported for pytest


async def test_each_additive_increase_needs_a_full_round_of_successes(clock: Clock) -> None:
    ctl = RateController(concurrency=8, rpm=None, tpm=None)
    for _ in range(8):
        await ctl.acquire(1)
    ctl.release(1, throttled(retry_after_s=1.0))
    for _ in range(7):
        ctl.release(1, ok())  # the old episode's attempts do not count towards the increase
    assert ctl.limit == 4
    await clock.advance(1.0)
    for limit in (4, 5):
        for _ in range(limit - 1):
            await ctl.acquire(1)
            ctl.release(1, ok())
        assert ctl.limit == limit  # one short of a round: no increase yet
        await ctl.acquire(1)
        ctl.release(1, ok())
        assert ctl.limit == limit + 1


async def test_pauses_are_counted_once_each_and_a_zero_pause_is_none(clock: Clock) -> None:
    ctl = RateController(concurrency=2, rpm=None, tpm=None)
    ctl.pause(0.0)
    assert (ctl.pauses, ctl.paused_until) == (0, None)
    ctl.pause(2.0)
    ctl.pause(3.0)  # extends the open pause
    assert ctl.pauses == 1
    await clock.advance(3.0)
    assert ctl.paused_until is None
    ctl.pause(1.0)
    assert ctl.pauses == 2


@pytest.mark.parametrize(
    ("attempt", "paused"),
    [
        (throttled(retry_after_s=0.0), False),  # "retry-after: 0": capacity is back now
        (throttled(retry_after_s=None, rate=RateInfo(reset_requests_s=0.0)), False),
        (throttled(retry_after_s=None, rate=RateInfo(reset_tokens_s=0.0)), False),
        (throttled(retry_after_s=None), True),  # no delay named: the default pause
    ],
)
async def test_a_throttle_whose_server_says_now_does_not_pause(
    clock: Clock, attempt: object, paused: bool
) -> None:
    ctl = RateController(concurrency=4, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, attempt)  # type: ignore[arg-type]
    assert ctl.limit == 2  # halved all the same
    assert ctl.paused_until == (clock.now + DEFAULT_PAUSE_S if paused else None)


@pytest.mark.parametrize(
    ("rate", "rpm", "tpm"),
    [
        (RateInfo(limit_requests=0, limit_tokens=0), None, None),  # no limit, not a zero rate
        (RateInfo(limit_tokens=5000), None, 5000),
        (RateInfo(limit_requests=1, limit_tokens=1), 1, 1),
    ],
)
async def test_server_limits_of_zero_are_ignored_and_of_one_are_kept(
    clock: Clock, rate: RateInfo, rpm: float | None, tpm: float | None
) -> None:
    ctl = RateController(concurrency=4, rpm=None, tpm=None)
    await ctl.acquire(1)
    ctl.release(1, ok(rate=rate))
    assert (ctl.rpm, ctl.tpm) == (rpm, tpm)


async def test_a_lowered_token_rate_keeps_what_the_bucket_already_holds(clock: Clock) -> None:
    ctl = RateController(concurrency=4, rpm=None, tpm=60_000)  # 1,000 tokens a second
    await ctl.acquire(1000)
    ctl.release(1000, ok(prompt=1000, rate=RateInfo(limit_tokens=30_000)))  # 500/s, bucket 500
    nxt = start(ctl.acquire(5))
    await clock.advance(0.9)
    assert not nxt.done()  # the 1,000 charged still leak, now at 500 a second
    await clock.advance(0.2)
    assert nxt.result() >= 1.01  # (505 - 0) / 500 a second, seen at the next step


def test_token_bucket_reserve_is_zero_when_free_and_drains_to_empty() -> None:
    now = [0.0]
    bucket = TokenBucket(60.0, lambda: now[0])  # one a second, capacity one
    assert bucket.reserve(1) == 0.0
    assert bucket.reserve(1) == pytest.approx(1.0)
    now[0] = 100.0
    assert bucket.level == 0.0
    assert bucket.reserve(0.5) == 0.0  # never a negative wait
    slow = TokenBucket(0.5, lambda: now[0])  # one every two minutes is still a rate
    assert slow.reserve(1) == 0.0

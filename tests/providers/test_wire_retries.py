"""The retry loop over the wire: a whole engine, a real backend and a loopback server.

A field the server refused is re-sent by the sender as an attempt of its own (through the
limiter, counted), never behind the limiter's back inside the backend; a ``retry-after`` of 0,
in the past or of a millisecond still backs off, growing with each attempt.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any

import orjson
import pytest
from aiohttp import web
from providers.engine_run import CountingLimiter, SleepLog, plain_job, run_jobs
from providers.fake_provider import Fake

import runner.retry
from runner.config import RunConfig
from runner.retry import RetryPolicy

OK = {"id": "c1", "choices": [{"index": 0, "message": {"content": "ok"}}]}
REFUSED = {"detail": [{"type": "extra_forbidden", "loc": ["body", "prompt_cache_key"]}]}


def keyed(body: dict[str, Any]) -> bool:
    return "prompt_cache_key" in body


async def refuse_the_key(request: web.Request) -> web.StreamResponse:
    if keyed(orjson.loads(await request.read())):
        return web.json_response(REFUSED, status=422)
    return web.json_response(OK)


async def test_a_refused_field_is_resent_through_the_limiter_as_an_attempt(fake: Fake) -> None:
    """Before, the backend re-sent the refused request itself: the server saw 3 requests while
    the limiter let 2 through (one request outside the RPM/TPM budget) and the job's record
    said 1 attempt. Now every request the server sees passed the limiter."""
    fake.handler = refuse_the_key
    limiter, sleep = CountingLimiter(), SleepLog()
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    jobs = [plain_job(0, "g"), plain_job(1, "g")]
    out, sink = await run_jobs(fake, config, jobs, limiter=limiter, sleep=sleep)
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None, None]
    assert [keyed(s.json()) for s in fake.seen] == [True, False, False]
    assert limiter.acquired == len(limiter.released) == len(fake.seen) == 3
    assert [r.attempts for r in sink.records] == [2, 1]
    refusal = limiter.released[0].error  # the limiter saw the refusal, as any failed attempt
    assert refusal is not None and refusal.code == "field_refused"
    assert sleep.delays == [0.0]  # re-sent at once: nothing to wait for
    assert out.summary["retries"] == 1


async def test_a_refused_field_is_resent_even_on_the_last_allowed_attempt(fake: Fake) -> None:
    """``max_attempts`` counts tries of the job; a request runner itself malformed for this
    server is no try of it (and cannot repeat: the field is never sent again)."""
    fake.handler = refuse_the_key
    limiter = CountingLimiter()
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    policy = RetryPolicy(max_attempts=1)
    out, sink = await run_jobs(fake, config, [plain_job(0, "g")], limiter=limiter, policy=policy)
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None]
    assert limiter.acquired == len(fake.seen) == 2


async def test_every_request_in_flight_when_a_field_is_refused_is_resent(fake: Fake) -> None:
    """Four streams in flight all carry ``stream_options`` when the first refusal comes back.
    Before, only the request that learnt of the refusal was re-sent: the other three failed
    with their HTTP 400."""
    carried = 0
    all_in = asyncio.Event()

    async def old_azure(request: web.Request) -> web.StreamResponse:
        nonlocal carried
        if "stream_options" in orjson.loads(await request.read()):
            carried += 1
            if carried == 4:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 10)
            err = {"error": {"message": "Unrecognized request argument supplied: stream_options"}}
            return web.json_response(err, status=400)
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        choice = {"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}
        chunk = {"id": "c1", "choices": [choice]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp

    fake.handler = old_azure
    limiter = CountingLimiter()
    config = RunConfig(
        provider="openai", base_url="http://x", model="m", stream=True, concurrency=4, cache="none"
    )
    out, sink = await run_jobs(fake, config, [plain_job(i) for i in range(4)], limiter=limiter)
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None] * 4
    assert sorted(r.attempts for r in sink.records) == [2, 2, 2, 2]
    assert limiter.acquired == len(fake.seen) == 8


def _midpoint_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter drawn at the middle of its range: the backoff is exactly half its ceiling."""

    class Midpoint(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return (a + b) / 2

    monkeypatch.setattr(runner.retry, "_default_rng", Midpoint())


def _past_date() -> str:
    return email.utils.formatdate(time.time() - 3600, usegmt=True)


async def _delays_after_429s(fake: Fake, refusals: int, headers: dict[str, str]) -> list[float]:
    """One job against a server that answers 429 with ``headers`` ``refusals`` times, then
    200: the delays the retry loop slept (the sleep injected, the run checked to succeed)."""
    answers = 0

    async def throttled(request: web.Request) -> web.StreamResponse:
        nonlocal answers
        answers += 1
        if answers <= refusals:
            err = {"error": {"message": "Rate limit reached", "type": "requests"}}
            return web.json_response(err, status=429, headers=headers)
        return web.json_response(OK)

    fake.handler = throttled
    sleep = SleepLog()
    config = RunConfig(provider="openai", base_url="http://x", model="m", cache="none")
    policy = RetryPolicy(max_attempts=5, base_s=0.5, cap_s=30.0)
    out, sink = await run_jobs(
        fake, config, [plain_job(0)], limiter=CountingLimiter(), policy=policy, sleep=sleep
    )
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None]
    assert sink.records[0].attempts == refusals + 1
    return sleep.delays


@pytest.mark.parametrize(
    "headers",
    [{"retry-after": "0"}, {"retry-after-ms": "1"}, {"retry-after": _past_date()}],
    ids=["zero", "one-ms", "past-date"],
)
async def test_a_retry_after_of_nothing_still_backs_off_and_grows(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> None:
    """A server answering every 429 with ``retry-after: 0`` was retried at once, in a hot loop.
    The server's delay is a floor under the policy's backoff, not a replacement for it."""
    _midpoint_jitter(monkeypatch)
    delays = await _delays_after_429s(fake, 3, headers)
    assert len(delays) == 3
    assert all(d > 0 for d in delays), delays
    assert delays[0] < delays[1] < delays[2], delays
    assert delays == [0.25, 0.5, 1.0]  # the backoff ceilings 0.5, 1, 2 at mid-jitter


async def test_a_large_retry_after_is_still_honoured(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    _midpoint_jitter(monkeypatch)
    delays = await _delays_after_429s(fake, 2, {"retry-after": "20"})
    assert delays == [21.0, 21.0]  # 20 s plus half of the 10% upward jitter, as asked


async def test_a_primer_refused_a_field_holds_its_followers_until_it_is_answered(
    fake: Fake,
) -> None:
    """A failed primer lets a follower go meanwhile (it will back off); a primer whose field was
    refused goes again at once, so its followers still wait for its answer (and the cache)."""
    fake.handler = refuse_the_key
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=4)
    jobs = [plain_job(i, "g") for i in range(3)]
    out, sink = await run_jobs(fake, config, jobs, limiter=CountingLimiter())
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None] * 3
    asked = [s.json()["messages"][0]["content"] for s in fake.seen]
    assert asked[:2] == ["q0", "q0"] and sorted(asked[2:]) == ["q1", "q2"]

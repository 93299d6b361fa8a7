"""A refused field (FIELD_REFUSED) is no try of the job: the sender alone says so.

The sender re-sends the request at once and counts the job's tries without it; the retry policy
never sees a refusal (it once exempted one from ``max_attempts`` as well, a second copy of the
rule). These tests go through the whole engine: a scripted backend for the sender's count, a
real OpenAI backend on the loopback fake for the bound (the field is never sent twice).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from providers.engine_run import CountingLimiter, SleepLog, plain_job, run_jobs
from providers.fake_provider import Fake
from test_explicit_cache_units import Store
from test_pipeline import FakeBackend, MemorySink, NoLimits, fail, job, ok

from runner.config import RunConfig
from runner.explicit_cache import ExplicitCaches
from runner.models import Attempt, ErrorInfo, Job
from runner.pipeline import Engine
from runner.retry import FIELD_REFUSED, RetryPolicy


def refused() -> Attempt:
    return Attempt(status=422, error=ErrorInfo(FIELD_REFUSED, "refused prompt_cache_key", True))


def _config(**kw: Any) -> RunConfig:
    return RunConfig(**{"concurrency": 1, "progress": "off", **kw})


async def test_a_refusal_is_resent_at_once_and_takes_no_try() -> None:
    # refused, then failures: max_attempts 2 gives the job two real tries after the refusal
    # (three requests), and the refusal's re-send waits for nothing.
    be = FakeBackend(lambda j, n: refused() if n == 1 else fail("http_5xx", True))
    sink, sleep = MemorySink(), SleepLog()
    policy = RetryPolicy(max_attempts=2, base_s=0.5, cap_s=0.5)
    out = await Engine(
        _config(), backend=be, sink=sink, limiter=NoLimits(), policy=policy, sleep=sleep
    ).run([job(0)])
    assert len(be.sent) == 3 and sink.records[0].attempts == 3
    assert sink.results[0]["error"]["code"] == "http_5xx"
    assert out.summary["retries"] == 2
    assert sleep.delays[0] == 0.0 and 0.0 <= sleep.delays[1] <= 0.5


async def test_a_refusal_after_the_last_try_is_still_resent() -> None:
    # A job that found its explicit cache gone goes again at once, and that request counts as
    # its try: with max_attempts 1 a refusal then came past the job's last try. The policy's
    # own exemption covered this path alone (the sender's count did not): the sender now
    # re-sends any refusal, so the job is answered instead of ending as "field_refused".
    def script(j: Job, n: int) -> Attempt:
        if j.custom_id != "j2":
            return ok(2000, 1900)
        if n == 1:
            return Attempt(status=404, error=ErrorInfo("cache_missing", "gone", True))
        return refused() if n == 2 else ok(2000, 1900)

    caches = ExplicitCaches(Store(), tag="t", concurrency=1, min_ttl_s=60.0)
    be, sink = FakeBackend(script), MemorySink()
    out = await Engine(
        _config(max_attempts=1),
        backend=be,
        sink=sink,
        limiter=NoLimits(),
        explicit=caches,
        policy=RetryPolicy(max_attempts=1),
    ).run([job(i, group="ctx:abc", prefix_chars=8000) for i in range(4)])
    assert caches.recreated == 1
    assert [cid for cid, _ in be.sent].count("j2") == 3, be.sent
    assert out.exit_code == 0 and all(r["error"] is None for r in sink.results)
    assert next(r.attempts for r in sink.records if r.custom_id == "j2") == 3


@pytest.mark.timeout(15)  # a loop would run until the timeout
async def test_a_server_that_refuses_everything_cannot_make_it_loop(fake: Fake) -> None:
    # A server that names both fields runner adds (prompt_cache_key, stream_options) in every
    # 400, sent or not: each refused field is dropped for the run, so the job is re-sent once,
    # past max_attempts 1, and the next 400 (naming fields that request did not carry) is the
    # job's own error.
    bodies: list[dict[str, Any]] = []

    async def refuse_all(request: web.Request) -> web.StreamResponse:
        bodies.append(orjson.loads(await request.read()))
        said = "Unrecognized request arguments supplied: prompt_cache_key, stream_options"
        return web.json_response({"error": {"message": said}}, status=400)

    fake.handler = refuse_all
    limiter = CountingLimiter()
    stream = RunConfig(
        provider="openai", base_url="http://x", model="m", concurrency=1, stream=True
    )
    policy = RetryPolicy(max_attempts=1)
    out, sink = await run_jobs(
        fake, stream, [plain_job(0, "g")], limiter=limiter, policy=policy, sleep=SleepLog()
    )
    assert [("prompt_cache_key" in b, "stream_options" in b) for b in bodies] == [
        (True, True),
        (False, False),
    ]
    assert out.exit_code == 1 and sink.records[0].attempts == 2
    error = sink.results[0]["error"]
    assert error is not None and error["code"] != FIELD_REFUSED, error
    assert limiter.acquired == 2

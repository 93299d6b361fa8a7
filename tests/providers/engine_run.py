"""A whole engine over a real backend and the loopback fake: the sender's retry loop, the
limiter and the wire together, with the limiter, retry policy and sleep injected."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from providers.fake_provider import Fake

from runner.config import RunConfig
from runner.models import Attempt, Job, LatencyRecord
from runner.pipeline import Engine, RunOutcome
from runner.providers import open_backend
from runner.results import ResultLine
from runner.retry import RetryPolicy

KEY = "sk-engine-run-0123456789"


class CountingLimiter:
    """Lets everything through at once and counts what passes: one acquisition per request."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released: list[Attempt] = []

    async def acquire(self, est_tokens: int) -> float:
        self.acquired += 1
        return 0.0

    def release(self, est_tokens: int, attempt: Attempt) -> None:
        self.released.append(attempt)


class ListSink:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.records: list[LatencyRecord] = []

    def done(self, custom_id: str | int) -> bool:
        return False

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        self.results.append(result.to_dict())
        self.records.append(record)

    def flush(self) -> None:
        pass


class SleepLog:
    """An injected sleep: records each delay, waits one loop turn instead."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


PREFIX_CHARS = 20_000  # above every model's minimum cacheable prefix: a warm run primes it


def plain_job(i: int, group: str | None = None) -> Job:
    """Job ``j<i>``; with a ``group``, one whose long shared prefix a warm run primes (its
    primer and followers carry the group's ``prompt_cache_key``)."""
    prefix = PREFIX_CHARS if group else 0
    return Job(
        f"j{i}",
        i + 1,
        ({"role": "user", "content": f"q{i}"},),
        1 if group else 0,
        group,
        group,
        None,
        {"max_tokens": 8},
        prefix + 10,
        prefix,
    )


async def run_jobs(
    fake: Fake,
    config: RunConfig,
    jobs: Iterable[Job],
    *,
    limiter: CountingLimiter,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tuple[RunOutcome, ListSink]:
    sink = ListSink()
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        engine = Engine(
            config,
            backend=backend,
            sink=sink,
            limiter=limiter,
            policy=policy,
            sleep=sleep or SleepLog(),
        )
        out = await asyncio.wait_for(engine.run(jobs), 30)
    return out, sink

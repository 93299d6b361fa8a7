"""Engine tests with an in-memory fake backend and sink (no network, no sleeping on time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.config import RunConfig
from runner.models import Attempt, BadLine, ErrorInfo, Job, LatencyRecord, Price, Usage
from runner.pipeline import Engine
from runner.providers.capabilities import OPENAI
from runner.results import ResultLine
from runner.retry import RetryPolicy


def job(i: int, group: str | None = None, prefix_chars: int = 0) -> Job:
    return Job(
        custom_id=f"j{i}",
        line=i + 1,
        messages=({"role": "user", "content": f"q{i}"},),
        prefix_len=1 if group else 0,
        group=group,
        cache_id=group.split(":")[0] if group else None,
        model=None,
        params={"max_tokens": 8},
        prompt_chars=prefix_chars + 10,
        prefix_chars=prefix_chars,
    )


class MemorySink:
    def __init__(self, done: set[str] | None = None) -> None:
        self.results: list[dict[str, Any]] = []
        self.records: list[LatencyRecord] = []
        self._done = done or set()
        self.flushes = 0

    def done(self, custom_id: str | int) -> bool:
        return custom_id in self._done

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        self.results.append(result.to_dict())
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1


class NoLimits:
    async def acquire(self, est_tokens: int) -> float:
        return 0.0

    def release(self, est_tokens: int, attempt: Attempt) -> None:
        pass


Script = Callable[[Job, int], Attempt]


class FakeBackend:
    """Answers from a script: (job, attempt number) -> Attempt. Records every send."""

    capabilities = OPENAI

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or (lambda j, n: ok())
        self.sent: list[tuple[str, str | None]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def send(
        self,
        job: Job,
        *,
        cache_key: str | None,
        on_first_byte: Callable[[], None] | None = None,
        prewarm: bool = False,
    ) -> Attempt:
        self.sent.append((job.custom_id, cache_key))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            n = sum(1 for cid, _ in self.sent if cid == job.custom_id)
            return self.script(job, n)
        finally:
            self.in_flight -= 1


def ok(prompt: int = 100, cached: int = 0) -> Attempt:
    return Attempt(
        status=200,
        body={"id": "x", "choices": []},
        raw=b'{"id":"x","choices":[]}',
        usage=Usage(prompt, cached, 0, 8),
        request_id="req",
        latency_ms=1.0,
    )


def fail(code: str, retriable: bool, status: int | None = 500, fatal: bool = False) -> Attempt:
    return Attempt(status=status, error=ErrorInfo(code, f"{code} happened", retriable, 0.0, fatal))


def engine(backend: FakeBackend, sink: MemorySink, **kw: Any) -> Engine:
    config = RunConfig(**{"concurrency": 4, "max_attempts": 3, "progress": "off", **kw})
    return Engine(config, backend=backend, sink=sink, limiter=NoLimits())


async def test_every_job_gets_exactly_one_result() -> None:
    sink = MemorySink()
    be = FakeBackend()
    out = await engine(be, sink, concurrency=3).run([job(i) for i in range(50)])
    assert sorted(r["custom_id"] for r in sink.results) == sorted(f"j{i}" for i in range(50))
    assert out.exit_code == 0
    assert out.summary["jobs"]["ok"] == 50
    assert be.max_in_flight <= 3
    assert sink.records[0].outcome == "ok" and sink.records[0].attempts == 1


async def test_bad_lines_become_invalid_input_results() -> None:
    sink = MemorySink()
    items: list[Job | BadLine] = [job(0), BadLine(2, None, "query", "f:2: query: missing"), job(2)]
    out = await engine(FakeBackend(), sink).run(items)
    bad = [r for r in sink.results if r["error"]]
    assert [(r["custom_id"], r["line"], r["error"]["code"]) for r in bad] == [
        (None, 2, "invalid_input")
    ]
    assert bad[0]["error"]["message"] == "f:2: query: missing"
    assert out.exit_code == 1


async def test_retriable_errors_retry_then_succeed_and_count_attempts() -> None:
    def script(j: Job, n: int) -> Attempt:
        return fail("http_5xx", True) if n < 3 else ok()

    sink = MemorySink()
    be = FakeBackend(script)
    out = await engine(be, sink, max_attempts=3).run([job(0)])
    assert out.exit_code == 0
    assert sink.records[0].attempts == 3
    assert out.summary["retries"] == 2
    assert len(be.sent) == 3


async def test_permanent_errors_are_not_retried() -> None:
    sink = MemorySink()
    be = FakeBackend(lambda j, n: fail("http_4xx", False, 400))
    out = await engine(be, sink).run([job(0)])
    assert len(be.sent) == 1
    assert sink.results[0]["error"]["code"] == "http_4xx"
    assert sink.results[0]["response"]["status_code"] == 400
    assert out.exit_code == 1


async def test_auth_failure_stops_at_once_and_leaves_jobs_unsent() -> None:
    sink = MemorySink()
    be = FakeBackend(lambda j, n: fail("auth", False, 401, fatal=True))
    out = await engine(be, sink, concurrency=1).run([job(i) for i in range(20)])
    assert out.exit_code == 3
    assert out.stopped == "auth"
    assert sink.results == []  # nothing written: a resume sends them all
    assert len(be.sent) == 1


async def test_resumed_jobs_are_skipped() -> None:
    sink = MemorySink(done={"j0", "j1"})
    be = FakeBackend()
    out = await engine(be, sink).run([job(i) for i in range(4)])
    assert sorted(cid for cid, _ in be.sent) == ["j2", "j3"]
    assert out.summary["jobs"]["skipped_resumed"] == 2


async def test_warm_strategy_holds_followers_behind_the_primer() -> None:
    sink = MemorySink()
    be = FakeBackend(lambda j, n: ok(2000, 0 if j.custom_id == "j0" else 1920))
    be.gate = asyncio.Event()  # no request answers until the gate opens
    jobs = [job(i, group="ctx:abc", prefix_chars=8000) for i in range(6)]
    # Fixed limits: the learned ones would first probe with two followers (test_cachectl.py).
    task = asyncio.create_task(engine(be, sink, concurrency=8, cache_adapt=False).run(jobs))
    for _ in range(20):
        await asyncio.sleep(0)
    # With eight free slots, only the primer went out while it has not answered.
    assert [cid for cid, _ in be.sent] == ["j0"]
    be.gate.set()
    await task
    roles = {r.custom_id: r.cache_role for r in sink.records}
    assert roles["j0"] == "primer"
    assert all(roles[f"j{i}"] == "follower" for i in range(1, 6))
    assert be.max_in_flight == 5  # the followers fanned out together afterwards


async def test_jobs_without_a_group_go_out_while_the_warm_window_fills() -> None:
    """The reader sees the whole read-ahead window before it opens any group, but a job that
    needs no primer is dispatched as soon as it is read: the first request of an ungrouped file
    does not wait for thousands of lines to be parsed."""
    in_flight_when_read: list[int] = []
    sink = MemorySink()
    be = FakeBackend()
    eng = engine(be, sink, concurrency=8, read_ahead=8, cache_adapt=False)

    def items() -> Any:
        for i in range(8):
            in_flight_when_read.append(eng.stats.in_flight)
            # j0 and j4 have no group; the others share one, behind its primer
            yield job(i) if i in (0, 4) else job(i, group="ctx:abc", prefix_chars=8000)

    await eng.run(items())
    assert sorted(r["custom_id"] for r in sink.results) == [f"j{i}" for i in range(8)]
    # j0 was in flight while j1..j4 were read, j0 and j4 while the rest were: no grouped job
    # (not even the primer) went out before the window was whole.
    assert in_flight_when_read == [0, 1, 1, 1, 1, 2, 2, 2]
    roles = {r.custom_id: r.cache_role for r in sink.records}
    assert roles["j0"] == roles["j4"] == "none" and roles["j1"] == "primer"


async def test_cache_none_sends_everything_at_once() -> None:
    sink = MemorySink()
    be = FakeBackend()
    be.gate = asyncio.Event()
    jobs = [job(i, group="ctx:abc", prefix_chars=8000) for i in range(6)]
    task = asyncio.create_task(engine(be, sink, concurrency=8, cache="none").run(jobs))
    for _ in range(20):
        await asyncio.sleep(0)
    assert be.in_flight == 6
    be.gate.set()
    await task
    assert {r.cache_role for r in sink.records} == {"none"}


async def test_max_cost_stops_before_the_budget_is_crossed() -> None:
    price = Price(input=1_000_000.0, output=0.0)  # $1 per token: 100-token jobs cost $100
    sink = MemorySink()
    be = FakeBackend()
    out = await engine(be, sink, concurrency=1, max_cost=450.0, prices={"mock-1": price}).run(
        [job(i) for i in range(10)]
    )
    assert out.exit_code == 3
    assert out.stopped == "max_cost"
    assert out.summary["cost"]["billed"] <= 450.0
    assert 1 <= len(sink.results) < 10


async def test_circuit_breaker_trips_on_a_failure_storm() -> None:
    sink = MemorySink()
    be = FakeBackend(lambda j, n: fail("http_4xx", False, 400))
    out = await engine(be, sink, concurrency=2, breaker_min_requests=10).run(
        [job(i) for i in range(100)]
    )
    assert out.exit_code == 3 and out.stopped == "circuit_open"
    assert len(sink.results) < 30


async def test_context_window_precheck_makes_invalid_input_without_a_call() -> None:
    sink = MemorySink()
    be = FakeBackend()
    big = job(0, group=None, prefix_chars=0)
    big = Job(**{**{f: getattr(big, f) for f in big.__slots__}, "prompt_chars": 40_000})
    await engine(be, sink, context_window=4096).run([big, job(1)])
    assert be.sent == [("j1", None)]
    assert sink.results[0]["error"]["code"] == "invalid_input"
    assert "context window" in sink.results[0]["error"]["message"]


@pytest.mark.parametrize("hard", [False, True])
async def test_stop_request_drains_or_cancels_and_leaves_the_rest_unsent(hard: bool) -> None:
    sink = MemorySink()
    be = FakeBackend()
    be.gate = asyncio.Event()
    eng = engine(be, sink, concurrency=2, drain_s=60.0)
    task = asyncio.create_task(eng.run([job(i) for i in range(10)]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert be.in_flight == 2
    eng.request_stop("signal", 130, hard=hard)
    if not hard:
        be.gate.set()
    out = await task
    assert out.exit_code == 130
    assert len(sink.results) == (0 if hard else 2)
    assert out.summary["not_sent"] == 10 - len(sink.results)


async def test_engine_waits_the_policys_backoff_between_attempts() -> None:
    """The injected sleep sees each delay the policy chose: the server's, growing per attempt."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    def script(j: Job, n: int) -> Attempt:
        if n < 4:
            return Attempt(status=429, error=ErrorInfo("rate_limited", "slow down", True, 0.5 * n))
        return ok()

    sink = MemorySink()
    config = RunConfig(concurrency=1, max_attempts=5, progress="off")
    # a backoff (at most 0.4 s) below the server's delays: those are what the sleep sees
    policy = RetryPolicy(max_attempts=5, base_s=0.1, cap_s=0.4)
    eng = Engine(
        config,
        backend=FakeBackend(script),
        sink=sink,
        limiter=NoLimits(),
        policy=policy,
        sleep=fake_sleep,
    )
    out = await eng.run([job(0)])
    assert out.exit_code == 0 and sink.records[0].attempts == 4
    assert len(slept) == 3
    for n, s in enumerate(slept, start=1):  # never earlier than asked, at most 10% later
        assert 0.5 * n <= s <= 0.55 * n


class _SlowFirst(FakeBackend):
    """Answers later jobs first: job i waits (n - i) loop turns."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    async def send(self, job: Job, **kw: Any) -> Attempt:
        for _ in range(2 * (self.n - int(job.custom_id[1:]))):
            await asyncio.sleep(0)
        return await super().send(job, **kw)


async def test_input_order_is_the_sinks_business_not_the_engines(tmp_path: Path) -> None:
    """The engine knows no line numbers for ordering: the InputOrder wrapper over the real
    outputs turns completions in reverse into a results file in input order (the order the
    engine asked done(), whatever the line numbers say)."""
    from runner.sinks import open_outputs

    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("x\n")
    config = RunConfig(order="input", output=tmp_path / "r.jsonl", concurrency=8)
    outputs = open_outputs(config, jobs_path=jobs_file, model=config.model, fsync=False)
    items: list[Job | BadLine] = [job(i) for i in range(8)]
    items.insert(3, BadLine(100, None, None, "jobs:100: not JSON"))
    with outputs:
        eng = Engine(config, backend=_SlowFirst(8), sink=outputs.sink, limiter=NoLimits())
        await eng.run(items)
    got = [orjson.loads(x) for x in outputs.results_path.read_bytes().splitlines()]
    assert [r["custom_id"] or r["line"] for r in got] == ["j0", "j1", "j2", 100, "j3", "j4",
                                                          "j5", "j6", "j7"]  # fmt: skip
    latency = [orjson.loads(x)["custom_id"] for x in outputs.latency_path.read_bytes().splitlines()]
    assert latency[1:] != sorted(latency[1:])  # the answers really came back out of order

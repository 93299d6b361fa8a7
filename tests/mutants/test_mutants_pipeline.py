"""Engine behaviour that surviving mutants of the pipeline showed untested.

Written against the refactored engine (``runner/pipeline.py`` with ``recorder.py``,
``accounting.py``, ``guards.py``, ``priming.py``): every test goes through ``Engine.run`` and
looks only at what a run shows (the sink's result lines and latency records, the summary, the
exit code, the requests the backend saw). docs/TESTING.md lists the mutants they were written
against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from test_explicit_cache_units import Store
from test_pipeline import FakeBackend, MemorySink, NoLimits, Script, fail, job, ok

from runner.config import RunConfig
from runner.explicit_cache import ExplicitCaches
from runner.models import Attempt, ErrorInfo, Job, LatencyRecord, Price, Usage
from runner.pipeline import Engine
from runner.providers.capabilities import ANTHROPIC
from runner.results import ResultLine

DOLLAR_A_TOKEN = Price(input=1_000_000.0, output=0.0)


def config(**kw: Any) -> RunConfig:
    return RunConfig(**{"concurrency": 4, "max_attempts": 3, "progress": "off", **kw})


def answer(prompt: int, cached: int | None = 0, write: int = 0) -> Attempt:
    a = ok(prompt)
    return replace(a, usage=Usage(prompt, cached, write, 8))


def res_message(sink: MemorySink, cid: str) -> str:
    msg: str = next(r for r in sink.results if r["custom_id"] == cid)["error"]["message"]
    return msg


class LineSink(MemorySink):
    """Also keeps the ResultLine objects (their ``line`` is what an ordering sink reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[ResultLine] = []

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        self.lines.append(result)
        super().write(result, record)


async def spin(turns: int = 30) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


# -- accounting ------------------------------------------------------------------------------


async def test_unreported_cached_tokens_count_as_none_cached() -> None:
    """A server that omits the cached count (None) has cached nothing: the live counters and
    the bill treat it as 0, not 1 (a `cached_tokens or 1` mutant)."""
    price = Price(input=1_000_000.0, output=0.0, cached_input=0.0)
    sink = MemorySink()
    eng = Engine(
        config(prices={"mock-1": price}),
        backend=FakeBackend(lambda j, n: answer(100, None)),
        sink=sink,
        limiter=NoLimits(),
    )
    out = await eng.run([job(i) for i in range(3)])
    assert eng.stats.cached_tokens == 0
    assert eng.stats.prompt_tokens == 300
    assert eng.stats.billed == pytest.approx(300.0)  # every prompt token at the full price
    assert out.summary["tokens"]["cached"] == 0


async def test_each_job_is_billed_at_its_own_models_price() -> None:
    prices = {"mock-1": DOLLAR_A_TOKEN, "big": Price(input=10_000_000.0, output=0.0)}
    jobs = [job(0), replace(job(1), model="big")]
    eng = Engine(config(prices=prices), backend=FakeBackend(lambda j, n: answer(3)),
                 sink=MemorySink(), limiter=NoLimits())  # fmt: skip
    await eng.run(jobs)
    assert eng.stats.billed == pytest.approx(3.0 + 30.0)


async def test_the_cost_budget_counts_what_is_in_flight() -> None:
    """Three $3 requests fit a $10 budget side by side, a fourth does not: it waits for the
    three to settle (and then the budget stops the run), so the bill never crosses $10."""
    sink = MemorySink()
    be = FakeBackend(lambda j, n: answer(3))  # prompt_chars 10 -> 3 estimated tokens -> $3
    be.gate = asyncio.Event()
    eng = Engine(
        config(max_cost=10.0, prices={"mock-1": DOLLAR_A_TOKEN}),
        backend=be,
        sink=sink,
        limiter=NoLimits(),
    )
    task = asyncio.create_task(eng.run([job(i) for i in range(10)]))
    await spin()
    assert be.in_flight == 3  # four free slots, but the fourth could cross the budget
    be.gate.set()
    out = await task
    assert out.stopped == "max_cost" and out.exit_code == 3
    assert len(sink.results) == 3
    assert out.summary["cost"]["billed"] == pytest.approx(9.0)
    assert out.summary["guard"]["code"] == "max_cost"
    assert out.summary["guard"]["message"].endswith(
        "budget $10: the next request could cost up to $3.0000"
    )


async def test_a_budget_that_exactly_covers_the_requests_lets_them_all_go() -> None:
    sink = MemorySink()
    out = await Engine(
        config(concurrency=1, max_cost=9.0, prices={"mock-1": DOLLAR_A_TOKEN}),
        backend=FakeBackend(lambda j, n: answer(3)),
        sink=sink,
        limiter=NoLimits(),
    ).run([job(i) for i in range(3)])
    assert out.stopped is None and out.exit_code == 0
    assert len(sink.results) == 3 and out.summary["cost"]["billed"] == pytest.approx(9.0)


async def test_the_cost_budget_assumes_the_average_request_when_estimates_run_low() -> None:
    """Each request really costs $5 where its length says $3: after the first answers, the
    budget check assumes $5, so a $13.5 budget stops after two ($10), not three ($15)."""
    sink = MemorySink()
    eng = Engine(
        config(concurrency=1, max_cost=13.5, prices={"mock-1": DOLLAR_A_TOKEN}),
        backend=FakeBackend(lambda j, n: answer(5)),
        sink=sink,
        limiter=NoLimits(),
    )
    out = await eng.run([job(i) for i in range(10)])
    assert out.stopped == "max_cost"
    assert len(sink.results) == 2
    assert out.summary["cost"]["billed"] == pytest.approx(10.0)
    # One at a time, nothing is in flight when it stops: each settled request gave back its
    # reservation.
    assert out.summary["guard"]["message"] == (
        "stopped at $10.0000 billed, $0.0000 in flight, budget $13.5: "
        "the next request could cost up to $5.0000"
    )


async def test_a_model_without_a_price_cannot_keep_a_budget() -> None:
    be = FakeBackend()
    out = await Engine(
        config(max_cost=5.0, prices={}), backend=be, sink=MemorySink(), limiter=NoLimits()
    ).run([job(0)])
    assert be.sent == []
    assert out.stopped == "max_cost" and out.exit_code == 3
    assert "no price for model 'mock-1'" in out.summary["guard"]["message"]


# -- result lines and latency records --------------------------------------------------------


async def test_an_unsendable_job_keeps_its_cache_id_and_line() -> None:
    """A job too long for the context window is an invalid_input result that still names its
    context (cache_id) and line, with no request sent; a bad line has no cache id."""
    sink = LineSink()
    be = FakeBackend()
    big = replace(job(4, group="ctx:abc", prefix_chars=8000), prompt_chars=40_000)
    out = await Engine(config(context_window=4096), backend=be, sink=sink, limiter=NoLimits()).run(
        [big, job(1)]
    )
    assert be.sent == [("j1", None)]
    rec = next(r for r in sink.records if r.custom_id == "j4")
    assert rec.cache_id == "ctx" and rec.error_code == "invalid_input"
    assert res_message(sink, "j4").startswith("jobs:5: messages: prompt of about")
    res = next(r for r in sink.lines if r.custom_id == "j4")
    assert res.line == 5 and res.error_code == "invalid_input"
    assert out.summary["jobs"]["failed"] == 1 and out.summary["jobs"]["ok"] == 1


async def test_result_lines_carry_the_jobs_line_metadata_and_a_fresh_id() -> None:
    sink = LineSink()
    jobs = [replace(job(i), line=10 + i, metadata={"k": i}) for i in range(3)]
    jobs[1] = replace(jobs[1], model="other-model")
    await Engine(config(), backend=FakeBackend(), sink=sink, limiter=NoLimits()).run(jobs)
    by_id = {r["custom_id"]: r for r in sink.results}
    assert sorted((r.custom_id, r.line) for r in sink.lines) == [("j0", 10), ("j1", 11), ("j2", 12)]
    assert [by_id[f"j{i}"]["metadata"] for i in range(3)] == [{"k": 0}, {"k": 1}, {"k": 2}]
    ids = [r["id"] for r in sink.results]
    assert len(set(ids)) == 3 and all(i.startswith("batch_req_") for i in ids)
    models = {r.custom_id: r.model for r in sink.records}
    assert models == {"j0": "mock-1", "j1": "other-model", "j2": "mock-1"}


async def test_latency_records_time_the_queue_and_the_request_on_the_engines_clock() -> None:
    """With a fake clock: admitted at t=100, sent at t=101 (one job ahead of it), answered 2 s
    after its send: queue 1000 ms, total 2000 ms, and unix times 1 s and 2 s apart."""
    now = [100.0]
    gate = asyncio.Event()

    class Timed(FakeBackend):
        async def send(self, job: Job, **kw: Any) -> Attempt:
            if job.custom_id == "j0":
                await gate.wait()
                now[0] += 1.0
            else:
                now[0] += 2.0
            return await super().send(job, **kw)

    sink = MemorySink()
    eng = Engine(
        config(concurrency=1),
        backend=Timed(),
        sink=sink,
        limiter=NoLimits(),
        clock=lambda: now[0],
    )
    task = asyncio.create_task(eng.run([job(0), job(1)]))
    await spin()
    gate.set()
    await task
    rec = {r.custom_id: r for r in sink.records}["j1"]
    assert rec.queue_ms == pytest.approx(1000.0)
    assert rec.total_ms == pytest.approx(2000.0)
    assert rec.started_at is not None and rec.queued_at is not None
    assert rec.started_at - rec.queued_at == pytest.approx(1.0)
    assert rec.ended_at - rec.started_at == pytest.approx(2.0)
    assert rec.attempts == 1 and rec.outcome == "ok"


async def test_the_limiter_wait_of_every_attempt_is_counted_and_each_permit_given_back() -> None:
    class Counting(NoLimits):
        def __init__(self) -> None:
            self.acquired: list[int] = []
            self.released: list[int] = []

        async def acquire(self, est_tokens: int) -> float:
            self.acquired.append(est_tokens)
            return 0.25

        def release(self, est_tokens: int, attempt: Attempt) -> None:
            self.released.append(est_tokens)

    limiter = Counting()
    sink = MemorySink()
    be = FakeBackend(lambda j, n: fail("http_5xx", True) if n < 3 else ok())
    out = await Engine(config(), backend=be, sink=sink, limiter=limiter).run([job(0)])
    assert sink.records[0].attempts == 3
    assert sink.records[0].limiter_ms == pytest.approx(750.0)
    assert out.summary["limiter_wait_s"] == pytest.approx(0.75)
    assert limiter.released == limiter.acquired == [11, 11, 11]  # prompt + max_tokens


async def test_queue_time_starts_when_the_job_is_admitted_not_when_the_run_started() -> None:
    """read_ahead 1: j1 is admitted only once j0 has answered (1 s after the start) and sent
    at once, so it queued 0 ms, not the 1000 ms since the run started."""
    now = [100.0]

    class Slow(FakeBackend):
        async def send(self, job: Job, **kw: Any) -> Attempt:
            now[0] += 1.0
            return await super().send(job, **kw)

    sink = MemorySink()
    eng = Engine(config(concurrency=1, read_ahead=1), backend=Slow(), sink=sink,
                 limiter=NoLimits(), clock=lambda: now[0])  # fmt: skip
    await eng.run([job(0), job(1)])
    rec = {r.custom_id: r for r in sink.records}
    assert rec["j0"].queue_ms == pytest.approx(0.0)
    assert rec["j1"].queue_ms == pytest.approx(0.0)
    assert rec["j1"].total_ms == pytest.approx(1000.0)


# -- guards and stops ------------------------------------------------------------------------


class _AllButJ0Gated(FakeBackend):
    """j0 answers at once; every other request waits for ``gate``. Notes each send as it starts."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self.started: list[str] = []
        self.j_gate = asyncio.Event()

    async def send(self, job: Job, **kw: Any) -> Attempt:
        self.started.append(job.custom_id)
        if job.custom_id != "j0":
            await self.j_gate.wait()
        return await super().send(job, **kw)


@pytest.mark.parametrize(("code", "hard"), [("insufficient_quota", True), ("endpoint", False)])
async def test_a_quota_error_cancels_requests_in_flight_an_endpoint_error_drains_them(
    code: str, hard: bool
) -> None:
    """Quota or auth dead: every request in flight is wasted, so they are cancelled (no result
    lines). A broken endpoint guard lets the requests already sent finish and be written."""
    sink = MemorySink()
    be = _AllButJ0Gated(
        lambda j, n: fail(code, False, 429, fatal=True) if j.custom_id == "j0" else ok()
    )
    eng = Engine(config(concurrency=3, drain_s=60.0), backend=be, sink=sink, limiter=NoLimits())
    task = asyncio.create_task(eng.run([job(i) for i in range(10)]))
    await spin()
    be.j_gate.set()
    out = await task
    assert out.stopped == code and out.exit_code == 3
    assert out.summary["guard"]["code"] == code
    written = sorted(r["custom_id"] for r in sink.results)
    assert written == ([] if hard else ["j1", "j2"])
    assert be.started == ["j0", "j1", "j2"]  # nothing more was sent after the trip
    assert out.summary["not_sent"] == 10 - len(written)


async def test_the_first_guard_stays_the_runs_guard() -> None:
    """An endpoint trip drains; a request answered during the drain trips auth: the run still
    reports (and stopped for) the endpoint guard that came first."""
    be = _AllButJ0Gated(lambda j, n: fail("endpoint" if j.custom_id == "j0" else "auth", False,
                                          401, fatal=True))  # fmt: skip
    eng = Engine(
        config(concurrency=3, drain_s=60.0), backend=be, sink=MemorySink(), limiter=NoLimits()
    )
    task = asyncio.create_task(eng.run([job(i) for i in range(10)]))
    await spin()
    be.j_gate.set()
    out = await task
    assert out.stopped == "endpoint" and out.summary["guard"]["code"] == "endpoint"


async def test_a_defect_stops_the_run_and_is_raised_from_run() -> None:
    """A bug (an exception that is not a failed request) is no result: the run stops sending
    and re-raises it."""

    def script(j: Job, n: int) -> Attempt:
        if j.custom_id == "j2":
            raise RuntimeError("bug in a backend")
        return ok()

    sink = MemorySink()
    be = FakeBackend(script)
    eng = Engine(config(concurrency=1), backend=be, sink=sink, limiter=NoLimits())
    with pytest.raises(RuntimeError, match="bug in a backend"):
        await eng.run([job(i) for i in range(10)])
    assert [cid for cid, _ in be.sent] == ["j0", "j1", "j2"]
    assert sorted(r["custom_id"] for r in sink.results) == ["j0", "j1"]
    assert eng.stop.reason == "error" and eng.stop.exit_code(False) == 1


async def test_the_first_stop_wins_and_sets_the_exit_code() -> None:
    sink = MemorySink()
    be = FakeBackend(lambda j, n: fail("auth", False, 401, fatal=True))
    be.gate = asyncio.Event()
    eng = Engine(config(concurrency=2, drain_s=60.0), backend=be, sink=sink, limiter=NoLimits())
    task = asyncio.create_task(eng.run([job(i) for i in range(10)]))
    await spin()
    eng.request_stop("signal", 130)
    be.gate.set()  # the requests in flight now trip the auth guard
    out = await task
    assert out.stopped == "signal" and out.exit_code == 130
    assert out.summary["stopped"] == "signal"
    assert out.summary["guard"]["code"] == "auth"  # the guard is still reported


async def test_failed_jobs_without_a_stop_exit_1_and_a_clean_run_exits_0() -> None:
    script: Script = lambda j, n: fail("http_4xx", False, 400) if j.custom_id == "j1" else ok()  # noqa: E731
    sink = MemorySink()
    eng = Engine(config(), backend=FakeBackend(script), sink=sink, limiter=NoLimits())
    out = await eng.run([job(i) for i in range(3)])
    assert out.exit_code == 1 and out.stopped is None and "guard" not in out.summary
    assert res_message(sink, "j1") == "http_4xx happened"
    assert (eng.stats.done, eng.stats.ok, eng.stats.failed) == (3, 2, 1)
    out = await Engine(config(), backend=FakeBackend(), sink=MemorySink(), limiter=NoLimits()).run(
        [job(i) for i in range(3)]
    )
    assert out.exit_code == 0 and out.stopped is None


async def test_the_breaker_trips_at_its_rate_over_the_last_window_only() -> None:
    """Window 4, rate 0.5: two failures among the last four jobs trip it; failures that left
    the window no longer count."""

    async def run(failing: set[int]) -> tuple[int, str | None]:
        sink = MemorySink()
        be = FakeBackend(
            lambda j, k: fail("http_4xx", False, 400) if int(j.custom_id[1:]) in failing else ok()
        )
        eng = Engine(
            config(concurrency=1, breaker_min_requests=4, breaker_error_rate=0.5),
            backend=be,
            sink=sink,
            limiter=NoLimits(),
        )
        out = await eng.run([job(i) for i in range(20)])
        if out.stopped:
            assert out.summary["guard"]["message"] == (
                "2 of the last 4 jobs failed: stopping before the rest fail the same way"
            )
        return len(sink.results), out.stopped

    # Two early failures, then one in every four: never two in the last four once it is full.
    assert await run({0, 1, 7, 11, 15, 19}) == (20, None)
    # 2 of the last 4 at job 5 (jobs 2..5): trips there, after six results.
    assert await run({3, 5}) == (6, "circuit_open")
    # A window not yet full never trips, however bad.
    assert await run({0, 1, 2}) == (20, None)


# -- reading and draining --------------------------------------------------------------------


async def test_the_reader_stays_read_ahead_jobs_ahead_and_counts_in_flight() -> None:
    """With every request stuck, the reader takes exactly ``read_ahead`` jobs from the input
    and the live counters show ``concurrency`` in flight; then it reads on to the end."""
    taken: list[int] = []

    def items() -> Any:
        for i in range(20):
            taken.append(i)
            yield job(i)

    be = FakeBackend()
    be.gate = asyncio.Event()
    sink = MemorySink()
    eng = Engine(config(concurrency=2, read_ahead=5), backend=be, sink=sink, limiter=NoLimits())
    task = asyncio.create_task(eng.run(items()))
    await spin()
    assert len(taken) == 5
    assert eng.stats.in_flight == 2 and eng.stats.read == 5
    be.gate.set()
    out = await task
    assert len(taken) == 20 and len(sink.results) == 20 and out.exit_code == 0
    assert eng.stats.in_flight == 0


async def test_a_drain_ends_after_drain_s_even_if_requests_never_answer() -> None:
    be = FakeBackend()
    be.gate = asyncio.Event()  # never opened
    sink = MemorySink()
    eng = Engine(config(concurrency=2, drain_s=0.01), backend=be, sink=sink, limiter=NoLimits())
    task = asyncio.create_task(eng.run([job(i) for i in range(5)]))
    await spin()
    eng.request_stop("signal", 130)
    out = await asyncio.wait_for(task, 5.0)
    assert out.exit_code == 130 and sink.results == []
    assert out.summary["not_sent"] == 5


class _Stuck(NoLimits):
    """Lets ``free`` requests through, then keeps every later one waiting for a permit."""

    def __init__(self, free: int) -> None:
        self.free = free

    async def acquire(self, est_tokens: int) -> float:
        if self.free <= 0:
            await asyncio.Event().wait()
        self.free -= 1
        return 0.0


async def test_a_soft_stop_drops_jobs_still_waiting_for_the_limiter_at_once() -> None:
    """A drain waits for requests on the wire, not for jobs that have not been sent: those
    waiting for a limiter permit are dropped at once (a resume sends them)."""
    be = FakeBackend()
    be.gate = asyncio.Event()
    sink = MemorySink()
    eng = Engine(config(concurrency=3, drain_s=60.0), backend=be, sink=sink, limiter=_Stuck(1))
    task = asyncio.create_task(eng.run([job(i) for i in range(6)]))
    await spin()
    assert be.in_flight == 1
    eng.request_stop("signal", 130)
    be.gate.set()
    out = await asyncio.wait_for(task, 5.0)
    assert [r["custom_id"] for r in sink.results] == ["j0"]
    assert out.summary["not_sent"] == 5


async def test_a_job_whose_permit_comes_as_the_run_stops_is_not_sent() -> None:
    """The limiter lets the third job go in the same step as a stop begins: the job is left
    unsent (and its permit given back), not sent into a stopping run."""
    eng: Engine | None = None
    released: list[str | None] = []

    class StopOnThird(NoLimits):
        n = 0

        async def acquire(self, est_tokens: int) -> float:
            self.n += 1
            if self.n == 3:
                assert eng is not None
                eng.request_stop("signal", 130)
            return 0.0

        def release(self, est_tokens: int, attempt: Attempt) -> None:
            released.append(None if attempt.error is None else attempt.error.code)

    be = FakeBackend()
    sink = MemorySink()
    eng = Engine(config(concurrency=1), backend=be, sink=sink, limiter=StopOnThird())
    out = await eng.run([job(i) for i in range(6)])
    assert [cid for cid, _ in be.sent] == ["j0", "j1"]
    assert released == [None, None, "cancelled"]
    assert out.exit_code == 130 and len(sink.results) == 2


async def test_a_soft_stop_drops_a_job_waiting_out_its_backoff_at_once() -> None:
    async def never(s: float) -> None:
        await asyncio.Event().wait()

    be = FakeBackend(lambda j, n: fail("http_5xx", True))
    sink = MemorySink()
    eng = Engine(config(concurrency=1, drain_s=60.0), backend=be, sink=sink, limiter=NoLimits(),
                 sleep=never)  # fmt: skip
    task = asyncio.create_task(eng.run([job(0)]))
    await spin()
    assert len(be.sent) == 1  # failed once, now sleeping before its retry
    eng.request_stop("signal", 130)
    out = await asyncio.wait_for(task, 5.0)
    assert out.exit_code == 130 and sink.results == []


async def test_a_failure_during_a_drain_is_not_retried() -> None:
    """A retriable failure answered while the run drains leaves the job unsent (no result
    line, so a resume sends it again) instead of sleeping through the drain."""
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    be = FakeBackend(lambda j, n: fail("http_5xx", True))
    be.gate = asyncio.Event()
    sink = MemorySink()
    eng = Engine(config(concurrency=2, drain_s=60.0), backend=be, sink=sink, limiter=NoLimits(),
                 sleep=sleep)  # fmt: skip
    task = asyncio.create_task(eng.run([job(i) for i in range(4)]))
    await spin()
    eng.request_stop("signal", 130)
    be.gate.set()
    out = await asyncio.wait_for(task, 5.0)
    assert slept == [] and len(be.sent) == 2
    assert sink.results == [] and out.summary["retries"] == 0


async def test_outputs_are_flushed_and_progress_fed_while_the_run_goes() -> None:
    ticks: list[int] = []
    be = FakeBackend()
    be.gate = asyncio.Event()
    sink = MemorySink()
    eng = Engine(config(), backend=be, sink=sink, limiter=NoLimits(),
                 on_tick=lambda s: ticks.append(s.in_flight))  # fmt: skip
    task = asyncio.create_task(eng.run([job(i) for i in range(4)]))
    await asyncio.sleep(0.45)  # two flush intervals of 0.2 s
    assert sink.flushes >= 2 and ticks[:2] == [4, 4]
    be.gate.set()
    await task


# -- priming ---------------------------------------------------------------------------------


async def test_a_failed_primer_promotes_a_follower_while_it_waits_to_retry() -> None:
    """The primer's first attempt fails: while it sleeps before its retry a follower is sent
    as the group's new primer, instead of the group waiting out the backoff."""
    retry = asyncio.Event()

    async def sleep(s: float) -> None:
        await retry.wait()

    def script(j: Job, n: int) -> Attempt:
        return fail("http_5xx", True) if (j.custom_id, n) == ("j0", 1) else ok(2000, 1920)

    sink = MemorySink()
    be = FakeBackend(script)
    eng = Engine(
        config(concurrency=8, cache_adapt=False),
        backend=be,
        sink=sink,
        limiter=NoLimits(),
        sleep=sleep,
    )
    jobs = [job(i, group="ctx:abc", prefix_chars=8000) for i in range(6)]
    task = asyncio.create_task(eng.run(jobs))
    await spin(60)
    sent = [cid for cid, _ in be.sent]
    assert sent[0] == "j0" and len(sent) > 1  # the group went on while j0 waits
    retry.set()
    out = await task
    assert out.exit_code == 0 and len(sink.results) == 6
    roles = {r.custom_id: r.cache_role for r in sink.records}
    assert roles["j0"] == "primer" and roles[sent[1]] == "primer"
    assert "cache_control" in out.summary  # the learned limits of a warm run


class _Anthropic(FakeBackend):
    """A backend with the pre-warm request (ANTHROPIC + --anthropic-prewarm)."""

    capabilities = replace(ANTHROPIC, prewarm=True)

    def __init__(self, script: Script, prewarm: Attempt) -> None:
        super().__init__(script)
        self.prewarm_answer = prewarm
        self.log: list[tuple[str, bool]] = []
        self.primer_gate = asyncio.Event()

    async def send(
        self,
        job: Job,
        *,
        cache_key: str | None,
        on_first_byte: Callable[[], None] | None = None,
        prewarm: bool = False,
    ) -> Attempt:
        self.log.append((job.custom_id, prewarm))
        if prewarm:
            await asyncio.sleep(0)
            return self.prewarm_answer
        if job.custom_id == "j0":
            await self.primer_gate.wait()
        return await super().send(job, cache_key=cache_key, on_first_byte=on_first_byte)


class _Recording(NoLimits):
    def __init__(self) -> None:
        self.acquired: list[int] = []

    async def acquire(self, est_tokens: int) -> float:
        self.acquired.append(est_tokens)
        return 0.25


async def test_the_anthropic_prewarm_goes_first_bills_its_write_and_releases_the_group() -> None:
    price = Price(input=1_000_000.0, output=0.0, cached_input=0.0, cache_write=2_000_000.0)
    warm = Attempt(status=200, usage=Usage(2000, None, 2000, 0), latency_ms=1.0)
    be = _Anthropic(lambda j, n: answer(2010, 2000), warm)
    limiter = _Recording()
    sink = MemorySink()
    eng = Engine(
        config(concurrency=8, cache_adapt=False, prices={"mock-1": price}),
        backend=be,
        sink=sink,
        limiter=limiter,
    )
    jobs = [job(i, group="ctx:abc", prefix_chars=8000) for i in range(4)]
    task = asyncio.create_task(eng.run(jobs))
    await spin(60)
    # The pre-warm went first, then the primer; the followers did not wait for the primer.
    assert be.log[:2] == [("j0", True), ("j0", False)]
    assert sorted(cid for cid, pw in be.log[2:]) == ["j1", "j2", "j3"]
    be.primer_gate.set()
    out = await task
    assert limiter.acquired[0] == 2000  # the pre-warm asks the limiter for the prefix only
    assert out.exit_code == 0 and len(sink.results) == 4
    # The pre-warm is no job, but its tokens are counted and billed (write at 2x).
    assert out.summary["tokens"]["cache_write"] == 2000
    assert eng.stats.prompt_tokens == 2000 + 4 * 2010
    assert eng.stats.cached_tokens == 4 * 2000
    assert eng.stats.billed == pytest.approx(2000 * 2.0 + 4 * 10)
    assert out.summary["limiter_wait_s"] == pytest.approx(5 * 0.25)


async def test_a_failed_prewarm_leaves_the_group_waiting_for_its_primer() -> None:
    broken = Attempt(status=500, error=ErrorInfo("http_5xx", "no", True))
    be = _Anthropic(lambda j, n: answer(2010, 2000), broken)
    sink = MemorySink()
    eng = Engine(
        config(concurrency=8, cache_adapt=False), backend=be, sink=sink, limiter=NoLimits()
    )
    task = asyncio.create_task(
        eng.run([job(i, group="ctx:abc", prefix_chars=8000) for i in range(4)])
    )
    await spin(60)
    assert be.log == [("j0", True), ("j0", False)]  # the followers wait for a warm cache
    be.primer_gate.set()
    out = await task
    assert out.exit_code == 0 and len(sink.results) == 4
    assert eng.stats.prompt_tokens == 4 * 2010  # a failed pre-warm without usage bills nothing


async def test_only_opted_in_primers_are_prewarmed() -> None:
    """Ungrouped jobs and followers never get a pre-warm; without the opt-in (plain
    ANTHROPIC) no primer does either."""
    warm = Attempt(status=200, usage=Usage(2000, None, 2000, 0), latency_ms=1.0)
    be = _Anthropic(lambda j, n: ok(), warm)
    be.primer_gate.set()
    await Engine(config(), backend=be, sink=MemorySink(), limiter=NoLimits()).run(
        [job(i) for i in range(3)]
        + [job(i, group="ctx:abc", prefix_chars=8000) for i in range(3, 6)]
    )
    assert [cid for cid, pw in be.log if pw] == ["j3"]
    be = _Anthropic(lambda j, n: ok(), warm)
    be.capabilities = ANTHROPIC
    be.primer_gate.set()
    await Engine(config(), backend=be, sink=MemorySink(), limiter=NoLimits()).run(
        [job(i, group="ctx:abc", prefix_chars=8000) for i in range(3)]
    )
    assert all(not pw for _, pw in be.log)


async def test_every_prewarm_counts_its_limiter_wait_and_its_request() -> None:
    warm = Attempt(status=200, usage=Usage(2000, None, 2000, 0), latency_ms=1.0)
    be = _Anthropic(lambda j, n: answer(2010, 2000), warm)
    be.primer_gate.set()
    jobs = [job(i, group=f"ctx:{i % 2}", prefix_chars=8000) for i in range(8)]
    eng = Engine(config(concurrency=8, cache_adapt=False), backend=be, sink=MemorySink(),
                 limiter=_Recording())  # fmt: skip
    out = await eng.run(jobs)
    assert sum(pw for _, pw in be.log) == 2
    assert out.summary["overhead_requests"] == 2
    assert out.summary["limiter_wait_s"] == pytest.approx((2 + 8) * 0.25)
    assert eng.stats.prompt_tokens == 2 * 2000 + 8 * 2010


async def test_an_explicit_cache_is_opened_before_the_group_goes_and_closed_after() -> None:
    """A group's explicit cache is created once, before its first request; every job of the
    group is sent with its name (ungrouped jobs with none), and the group's last answer
    deletes it."""
    store = Store()
    caches = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=1.0)
    be = FakeBackend(lambda j, n: ok(2000, 1900))
    sink = MemorySink()
    eng = Engine(config(), backend=be, sink=sink, limiter=NoLimits(), explicit=caches)
    jobs = [job(i, group="ctx:abc", prefix_chars=8000) for i in range(5)] + [job(9)]
    out = await eng.run(jobs)
    await spin()
    assert out.exit_code == 0 and len(sink.results) == 6
    assert [op for op, *_ in store.ops] == ["create", "delete"]
    name = store.ops[0][1]
    keys = dict(be.sent)
    assert {keys[f"j{i}"] for i in range(5)} == {name}
    assert keys["j9"] is None
    # The create's TTL covers the whole group: 5 jobs at 4 in parallel at the assumed 5 s
    # each, times the margin of 2 (one job would ask for 2.5 s).
    assert store.ops[0][2] == pytest.approx(12.5)
    roles = {r.custom_id: r.cache_role for r in sink.records}
    assert roles["j0"] == "primer"


async def test_a_job_that_finds_its_explicit_cache_gone_recreates_it_and_goes_again() -> None:
    store = Store()
    caches = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0)

    def script(j: Job, n: int) -> Attempt:
        if j.custom_id == "j2" and n == 1:
            return Attempt(status=404, error=ErrorInfo("cache_missing", "gone", True))
        return ok(2000, 1900)

    be = FakeBackend(script)
    sink = MemorySink()
    out = await Engine(
        config(concurrency=1), backend=be, sink=sink, limiter=NoLimits(), explicit=caches
    ).run([job(i, group="ctx:abc", prefix_chars=8000) for i in range(4)])
    assert out.exit_code == 0 and out.summary["retries"] == 0
    assert caches.recreated == 1
    sent = [k for cid, k in be.sent if cid == "j2"]
    assert sent == ["cachedContents/c1", "cachedContents/c2"]  # again, on the new cache
    assert all(r["error"] is None for r in sink.results)


async def test_the_cost_stop_message_counts_answered_requests_as_billed_not_in_flight() -> None:
    """Three $3 requests answer in one loop turn; the fourth, held for them, then cannot fit a
    $10 budget. Nothing is on the wire when it stops: the message must say $9 billed and $0 in
    flight, not count the answered requests twice (billed, and still reserved until their
    done-callbacks run)."""
    out = await Engine(
        config(concurrency=3, max_cost=10.0, prices={"mock-1": DOLLAR_A_TOKEN}),
        backend=FakeBackend(lambda j, n: answer(3)),
        sink=MemorySink(),
        limiter=NoLimits(),
    ).run([job(i) for i in range(6)])
    assert out.stopped == "max_cost"
    assert out.summary["cost"]["billed"] == pytest.approx(9.0)
    assert out.summary["guard"]["message"].startswith(
        "stopped at $9.0000 billed, $0.0000 in flight, budget $10:"
    ), out.summary["guard"]["message"]

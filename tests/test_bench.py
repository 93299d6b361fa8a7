"""Tests of ``runner bench``: workload generation, the two load loops, and an end-to-end run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner import bench
from runner.errors import ConfigError
from runner.models import Attempt, ErrorInfo, Job, LatencyRecord, Usage
from runner.providers.capabilities import GENERIC


def gaps(rate: float, n: int, **kw: Any) -> list[float]:
    ts = list(itertools.islice(bench.arrival_offsets(rate, **kw), n + 1))
    return [b - a for a, b in itertools.pairwise(ts)]


def cv(xs: list[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs)


# ----------------------------------------------------------------------------------- arrivals


def test_poisson_arrivals_have_the_asked_mean_rate_and_exponential_gaps() -> None:
    g = gaps(50.0, 20_000, seed=3)
    assert 20_000 / math.fsum(g) == pytest.approx(50.0, rel=0.03)
    assert cv(g) == pytest.approx(1.0, rel=0.05)  # exponential: std == mean
    assert min(g) >= 0.0


@pytest.mark.parametrize(("burstiness", "want_cv"), [(0.25, 2.0), (4.0, 0.5)])
def test_gamma_burstiness_sets_the_variability_but_not_the_rate(
    burstiness: float, want_cv: float
) -> None:
    g = gaps(20.0, 20_000, seed=5, arrival="gamma", burstiness=burstiness)
    assert 20_000 / math.fsum(g) == pytest.approx(20.0, rel=0.05)
    assert cv(g) == pytest.approx(want_cv, rel=0.08)


def test_arrivals_are_reproducible_from_the_seed() -> None:
    assert gaps(10.0, 50, seed=1) == gaps(10.0, 50, seed=1)
    assert gaps(10.0, 50, seed=1) != gaps(10.0, 50, seed=2)


def test_constant_arrivals_are_evenly_spaced_and_start_at_zero() -> None:
    ts = list(itertools.islice(bench.arrival_offsets(4.0, seed=0, arrival="constant"), 5))
    assert ts == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "kw", [{"rate": 0.0}, {"rate": 1.0, "burstiness": 0.0}, {"rate": 1.0, "arrival": "x"}]
)
def test_bad_arrival_parameters_are_config_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        next(bench.arrival_offsets(seed=0, **kw))


# ----------------------------------------------------------------------------------- workload


def test_synthetic_text_is_four_characters_per_token() -> None:
    rng = random.Random(0)
    corpus = "alpha beta gamma delta " * 10
    for tokens in (0, 1, 3, 256, 1000):  # 1000 tokens is longer than the corpus: it repeats
        text = bench.synthetic_text(tokens, rng, corpus, head="[x 1] ")
        assert len(text) == 4 * tokens
        assert text.isascii()


def test_synthetic_jobs_have_the_asked_lengths_unique_ids_and_are_seeded() -> None:
    jobs = list(bench.synthetic_jobs(count=50, prompt_tokens=64, output_tokens=16, seed=9))
    assert len({j.custom_id for j in jobs}) == 50
    for j in jobs:
        (msg,) = j.messages
        assert len(msg["content"]) == 256 == j.prompt_chars
        assert j.params == {"max_tokens": 16}
        assert j.group is None and j.prefix_len == 0
    # distinct prompts: no two share a cacheable start by accident
    assert len({j.messages[0]["content"][:32] for j in jobs}) == 50
    again = list(bench.synthetic_jobs(count=50, prompt_tokens=64, output_tokens=16, seed=9))
    assert again == jobs
    other = list(bench.synthetic_jobs(count=50, prompt_tokens=64, output_tokens=16, seed=10))
    assert other != jobs


def test_ignore_eos_asks_for_exactly_the_output_length() -> None:
    (job,) = bench.synthetic_jobs(
        count=1, prompt_tokens=8, output_tokens=32, seed=0, ignore_eos=True
    )
    assert job.params == {"max_tokens": 32, "ignore_eos": True, "min_tokens": 32}


def test_shared_prefix_jobs_draw_from_g_prefixes_of_k_tokens() -> None:
    jobs = list(
        bench.synthetic_jobs(
            count=200, prompt_tokens=16, output_tokens=4, seed=1, shared_prefix_tokens=300, groups=4
        )
    )
    prefixes = {j.messages[0]["content"] for j in jobs}
    assert len(prefixes) == 4
    assert all(len(p) == 1200 for p in prefixes)
    assert {j.group for j in jobs} == {f"bench-g{g}" for g in range(4)}
    for j in jobs:
        assert j.prefix_len == 1 and j.prefix_chars == 1200
        assert j.messages[0]["role"] == "system" and len(j.messages[1]["content"]) == 64
        assert j.cache_id == j.group
    # the same group always carries the same prefix
    by_group = {j.group: j.messages[0]["content"] for j in jobs}
    assert all(by_group[j.group] == j.messages[0]["content"] for j in jobs)


def test_replay_cycles_a_jobs_file_with_unique_ids() -> None:
    base = list(bench.synthetic_jobs(count=3, prompt_tokens=4, output_tokens=4, seed=0))
    ids = [j.custom_id for j in bench.replay_jobs(base, 7)]
    assert ids == [
        "bench-0",
        "bench-1",
        "bench-2",
        "bench-0#1",
        "bench-1#1",
        "bench-2#1",
        "bench-0#2",
    ]
    warm = [j.custom_id for j in bench.replay_jobs(base, 2, id_prefix="warmup-")]
    assert warm == ["warmup-bench-0", "warmup-bench-1"]


# ----------------------------------------------------------------------------------- flags


def test_sweep_parsing() -> None:
    assert bench.parse_sweep("1, 2,4,,8") == [1.0, 2.0, 4.0, 8.0]
    assert bench.parse_sweep("0.5") == [0.5]
    for bad in ("", "0", "-1", "x", "nan", "inf"):
        with pytest.raises(ConfigError):
            bench.parse_sweep(bad)


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


def test_sweep_values_are_concurrencies_or_rates() -> None:
    spec = bench.build_spec(parse("--sweep", "1,4,16"))
    assert [(p.mode, p.concurrency) for p in spec.phases] == [
        ("closed", 1),
        ("closed", 4),
        ("closed", 16),
    ]
    spec = bench.build_spec(parse("--rate", "1", "--sweep", "5,10.5", "--arrival", "gamma"))
    assert [(p.mode, p.rate, p.arrival) for p in spec.phases] == [
        ("open", 5.0, "gamma"),
        ("open", 10.5, "gamma"),
    ]
    with pytest.raises(ConfigError, match="whole numbers"):
        bench.build_spec(parse("--sweep", "1.5"))


def test_flags_reach_the_config_and_slos() -> None:
    spec = bench.build_spec(
        parse("--no-stream", "--model", "m", "--slo-ttft-ms", "100", "--mock-ttft-ms", "5")
    )
    assert spec.config.stream is False and spec.config.model == "m"
    assert spec.config.max_attempts == 1  # a benchmark measures, it does not retry
    assert spec.config.mock["base_ms"] == 5.0
    assert spec.slo_ms == {"ttft": 100.0}
    assert spec.requests == bench.DEFAULT_REQUESTS
    assert bench.build_spec(parse("--duration", "3")).requests is None


@pytest.mark.parametrize(
    "argv", [["--concurrency", "0"], ["--rate", "-2"], ["--prompt-tokens", "0"], ["--warmup", "-1"]]
)
def test_bad_flags_exit_2_before_sending(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(parse(*argv)) == 2
    assert "runner bench:" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- loops


class FakeBackend:
    """Answers every job after a couple of event-loop turns, tracking concurrency."""

    capabilities = GENERIC  # the run's Backend protocol asks for them; bench reads none

    def __init__(self, completion_tokens: int = 8, fail_every: int = 0) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self.in_flight = 0
        self.peak = 0
        self.completion_tokens = completion_tokens
        self.fail_every = fail_every

    async def send(
        self,
        job: Job,
        *,
        cache_key: str | None = None,
        on_first_byte: Callable[[], None] | None = None,
        prewarm: bool = False,
    ) -> Attempt:
        self.sent.append((job.custom_id, cache_key))
        n = len(self.sent)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)  # yield only: let other requests interleave
        self.in_flight -= 1
        if self.fail_every and n % self.fail_every == 0:
            return Attempt(
                status=503,
                error=ErrorInfo(code="http_5xx", message="overloaded", retriable=True),
                latency_ms=1.0,
            )
        return Attempt(
            status=200,
            usage=Usage(
                prompt_tokens=10, cached_tokens=0, completion_tokens=self.completion_tokens
            ),
            ttft_ms=2.0,
            latency_ms=2.0 + 0.5 * (self.completion_tokens - 1),
            itl_ms=[0.5] * (self.completion_tokens - 1),
            request_id=f"r-{n}",
        )


def jobs(n: int, **kw: Any) -> list[Job]:
    return list(bench.synthetic_jobs(count=n, prompt_tokens=4, output_tokens=8, seed=0, **kw))


async def test_closed_loop_keeps_exactly_n_in_flight_and_sends_every_job() -> None:
    backend = FakeBackend()
    records: list[LatencyRecord] = []
    phase = bench.Phase(mode="closed", concurrency=5)
    await bench.run_closed(backend, iter(jobs(40)), phase, records.append)
    assert backend.peak == 5
    assert sorted(str(r.custom_id) for r in records) == sorted(j.custom_id for j in jobs(40))
    assert all(r.queued_at == r.started_at and r.queue_ms == 0.0 for r in records)


async def test_open_loop_respects_max_in_flight_and_records_the_schedule() -> None:
    backend = FakeBackend()
    records: list[LatencyRecord] = []
    stats = bench.BenchStats()
    # An absurd rate: every arrival is due at once, so only the in-flight cap limits dispatch.
    phase = bench.Phase(mode="open", rate=1e6, max_in_flight=3, seed=4)
    await bench.run_open(backend, iter(jobs(30)), phase, records.append, stats=stats)
    assert backend.peak == 3 == stats.peak_in_flight
    assert len(records) == 30 and stats.late_ms.count == 30
    # queued_at is the scheduled arrival: offsets of the seeded schedule, in dispatch order
    offsets = list(itertools.islice(bench.arrival_offsets(1e6, seed=4), 30))
    by_id = {r.custom_id: r for r in records}
    queued = [by_id[cid].queued_at for cid, _ in backend.sent]
    base = queued[0]
    assert [q - base for q in queued] == pytest.approx(offsets, abs=1e-6)
    assert all(r.started_at is not None and r.started_at >= r.queued_at - 1e-6 for r in records)


async def test_open_loop_duration_stops_issuing_at_the_deadline() -> None:
    backend = FakeBackend()
    records: list[LatencyRecord] = []
    phase = bench.Phase(mode="open", rate=1e6, arrival="constant", duration_s=9.5e-6)
    endless = bench.synthetic_jobs(count=None, prompt_tokens=4, output_tokens=8, seed=0)
    await bench.run_open(backend, endless, phase, records.append, stats=bench.BenchStats())
    assert len(records) == 10  # arrivals at 0, 1, ... 9 microseconds


def test_record_fields_come_from_the_attempt() -> None:
    (job,) = jobs(1, shared_prefix_tokens=8, groups=1)
    a = Attempt(
        status=200,
        usage=Usage(prompt_tokens=40, cached_tokens=32, cache_write_tokens=0, completion_tokens=7),
        ttft_ms=12.5,
        latency_ms=30.0,
        itl_ms=[3.0] * 6,
        request_id="req-1",
    )
    r = bench.make_record(job, a, queued_at=100.0, started_at=100.25, ended_at=100.5)
    assert (r.custom_id, r.cache_id, r.outcome, r.status, r.attempts) == (
        job.custom_id,
        "bench-g0",
        "ok",
        200,
        1,
    )
    assert (r.prompt_tokens, r.cached_tokens, r.completion_tokens) == (40, 32, 7)
    assert (r.ttft_ms, r.latency_ms, r.itl_ms, r.request_id) == (12.5, 30.0, [3.0] * 6, "req-1")
    assert r.queue_ms == pytest.approx(250.0) and r.total_ms == pytest.approx(500.0)
    err = bench.make_record(
        job,
        Attempt(
            status=None,
            error=ErrorInfo(code="timeout", message="t", retriable=True),
            latency_ms=1000.0,
        ),
        queued_at=1.0,
        started_at=1.0,
        ended_at=2.0,
    )
    assert (err.outcome, err.error_code, err.completion_tokens) == ("error", "timeout", 0)
    assert err.latency_ms is None  # as in the run's records: no response, no response latency


async def test_warmup_requests_are_sent_but_neither_recorded_nor_counted(tmp_path: Path) -> None:
    backend = FakeBackend(fail_every=7)
    latency = tmp_path / "lat.jsonl"
    spec = bench.BenchSpec(
        config=bench.build_spec(parse()).config,
        phases=[bench.Phase(mode="closed", concurrency=4)],
        make_jobs=bench.build_spec(parse("--prompt-tokens", "4")).make_jobs,
        requests=20,
        warmup=6,
        latency=latency,
    )
    summary = await bench._run_phase(backend, spec, spec.phases[0], latency)
    sent = [cid for cid, _ in backend.sent]
    assert len(sent) == 26
    assert sum(cid.startswith("warmup") for cid in sent[:6]) == 6  # warm-up goes first
    lines = [orjson.loads(x) for x in latency.read_bytes().splitlines()]
    assert len(lines) == 20 and not any(x["custom_id"].startswith("warmup") for x in lines)
    assert summary["jobs"]["total"] == 20
    # every 7th send fails; sends 7, 14, 21 are measured ones (the warm-up took sends 1-6)
    assert summary["jobs"]["failed"] == 3 == sum(x["outcome"] == "error" for x in lines)
    assert summary["bench"]["mode"] == "closed" and summary["bench"]["concurrency"] == 4


# ----------------------------------------------------------------------------------- end to end


async def test_durations_come_from_a_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # A wall clock stepping back an hour on every read (an NTP correction, say) must not
    # reach any duration: those come from perf_counter through one anchor.
    stepping = itertools.count(2e9, -3600.0)
    monkeypatch.setattr(time, "time", lambda: next(stepping))
    records: list[LatencyRecord] = []
    await bench.run_closed(FakeBackend(), iter(jobs(4)), bench.Phase(mode="closed"), records.append)
    monkeypatch.undo()
    assert len(records) == 4
    assert all(
        r.started_at is not None and r.ended_at >= r.started_at >= r.queued_at for r in records
    )
    assert all(0.0 <= r.total_ms < 60_000 for r in records)


def test_a_bad_mock_option_is_a_config_error_before_any_request() -> None:
    spec = bench.build_spec(parse("--requests", "3"))
    spec = dataclasses.replace(spec, config=spec.config.with_overrides(mock={"bogus": 1}))
    with pytest.raises(ConfigError, match=r"unknown key mock\.bogus"):
        bench._run(spec, None)


def test_end_to_end_against_the_built_in_mock(tmp_path: Path) -> None:
    latency, summary_path = tmp_path / "lat.jsonl", tmp_path / "summary.json"
    ns = parse(
        "--requests", "200", "--concurrency", "16", "--warmup", "8",
        "--prompt-tokens", "64", "--output-tokens", "12",
        "--mock-ttft-ms", "0", "--mock-decode-ms", "0",
        "--latency", str(latency), "--summary", str(summary_path),
        "--slo-ttft-ms", "60000",
    )  # fmt: skip
    assert bench.main(ns) == 0
    summary = orjson.loads(summary_path.read_bytes())
    lines = [orjson.loads(x) for x in latency.read_bytes().splitlines()]
    assert len(lines) == 200 == summary["jobs"]["ok"] == summary["jobs"]["total"]
    assert len({x["custom_id"] for x in lines}) == 200
    assert all(x["outcome"] == "ok" and x["completion_tokens"] == 12 for x in lines)
    assert summary["tokens"]["completion"] == 200 * 12
    assert summary["tokens"]["prompt"] == sum(x["prompt_tokens"] for x in lines)
    assert all(x["ttft_ms"] is not None and x["ttft_ms"] <= x["latency_ms"] for x in lines)
    assert summary["ttft_ms"]["max"] == pytest.approx(max(x["ttft_ms"] for x in lines), abs=1e-3)
    assert summary["latency_ms"]["max"] == pytest.approx(
        max(x["latency_ms"] for x in lines), abs=1e-3
    )
    assert summary["goodput"]["requests"] == 200
    b = summary["bench"]
    assert b["mode"] == "closed" and b["concurrency"] == 16
    assert b["achieved_rps"] == pytest.approx(200 / summary["wall_s"], rel=0.01)


def test_open_loop_sweep_against_the_built_in_mock(tmp_path: Path) -> None:
    latency, summary_path = tmp_path / "lat.jsonl", tmp_path / "summary.json"
    ns = parse(
        "--rate", "1", "--sweep", "400,800", "--requests", "40", "--seed", "2",
        "--prompt-tokens", "16", "--output-tokens", "4",
        "--mock-ttft-ms", "0", "--mock-decode-ms", "0",
        "--latency", str(latency), "--summary", str(summary_path),
    )  # fmt: skip
    assert bench.main(ns) == 0
    doc = orjson.loads(summary_path.read_bytes())
    assert [s["bench"]["rate"] for s in doc["sweep"]] == [400.0, 800.0]
    for s in doc["sweep"]:
        d = s["bench"]["dispatch"]
        assert d["issued"] == 40 == s["jobs"]["ok"]
        assert d["late_ms"] is not None and 0 <= d["late_fraction"] <= 1
        path = tmp_path / f"lat.r{s['bench']['rate']:g}.jsonl"
        recs = [orjson.loads(x) for x in path.read_bytes().splitlines()]
        assert len(recs) == 40
        # queued_at is the schedule: the first arrival is at offset 0 of a seeded process
        assert all(r["queued_at"] <= r["started_at"] + 1e-4 for r in recs)

"""Found by the third red team: finding a batch again after a lost create, a journaled batch
the provider no longer knows (404), and what validate and the summary say about them.

Each test drives ``--via batch`` against the in-process mock with the fault injected the way
a provider (or a skewed clock, or another run of the same jobs) would produce it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from batchapi.conftest import (
    PRICE,
    MockFactory,
    assert_each_job_once,
    batch_config,
    job_max_tokens,
    make_inputs,
    read_jsonl,
)
from helpers import mock_process

from runner import run
from runner.batchapi import wire
from runner.batchapi.status import fetch_live, render_status
from runner.cli import main
from runner.config import load_config
from runner.jobs import contexts_for
from runner.mock import batch as mock_batch
from runner.sinks import meta_path_of, read_meta_section
from runner.validate import validate_file

PY = sys.executable


def _lose_create(monkeypatch: pytest.MonkeyPatch, nth: int, *, skew_s: float = 0.0) -> None:
    """The ``nth`` create makes its batch, then answers only after the client's timeout (the
    answer is lost); every batch's ``created_at`` is ``skew_s`` behind the runner's clock."""
    create = mock_batch.BatchService._create
    calls = 0

    async def lossy(self: Any, request: Any, anthropic: bool) -> web.Response:
        nonlocal calls
        calls += 1
        resp: web.Response = await create(self, request, anthropic)
        self._batches[self._order[-1]].created_wall -= skew_s
        if calls == nth:
            await asyncio.sleep(3)  # past the client's timeout: the answer never arrives
        return resp

    monkeypatch.setattr(mock_batch.BatchService, "_create", lossy)


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_lost_create_is_found_though_the_providers_clock_is_10_minutes_behind(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup skipped every batch created more than 5 s (Anthropic; OpenAI 300 s) before
    the local time of the create: with the local clock ahead of the provider's by more, the
    batch was missed and the jobs sent again, billed twice. Time now only bounds the listing
    (an hour); the match is on what the run put into the batch. The batch found counts as
    recovered, not created."""
    _lose_create(monkeypatch, 1, skew_s=600.0)
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 4)
    outcome = await run(jobs, batch_config(url, shape, ctx, timeout=0.5, cache="none"))
    assert outcome.exit_code == 0
    assert server.stats()["batch"]["creates"][shape] == 1
    assert server.stats()["batch"]["requests"] == 4
    assert_each_job_once(jobs)
    b = outcome.summary["batch"]
    assert (b["batches_created"], b["batches_recovered"], b["batches_total"]) == (0, 1, 1)


async def _same_jobs_elsewhere(url: str, jobs: Path) -> str:
    """Another run of the same jobs file (its own output, another max_tokens) through the same
    account: an Anthropic batch with the jobs' own ids as custom ids."""
    body = {
        "requests": [
            {
                "custom_id": j["id"],
                "params": {
                    "model": "mock-1",
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": j["query"]}],
                },
            }
            for j in read_jsonl(jobs)
        ]
    }
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    async with (
        ClientSession() as s,
        s.post(url + "/messages/batches", data=orjson.dumps(body), headers=headers) as resp,
    ):
        assert resp.status == 200
        return str((await resp.json())["id"])


async def test_a_lost_create_never_adopts_another_runs_batch_of_the_same_jobs(
    tmp_path: Path, mock: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one jobs file under one account, seconds apart; ours loses its create
    answer. The lookup took the oldest batch of the same size within 5 s, the other run's, and
    its rows passed the check (the same custom ids): our jobs got the other run's answers and
    our own batch was never collected. Every Anthropic id now carries the chunk key."""
    _lose_create(monkeypatch, 2)  # the first create is the other run's
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 4)
    other = await _same_jobs_elsewhere(url, jobs)
    outcome = await run(jobs, batch_config(url, "anthropic", ctx, timeout=0.5, cache="none"))
    assert outcome.exit_code == 0
    results, _ = assert_each_job_once(jobs)
    want = job_max_tokens(jobs)
    assert {
        r["custom_id"]: r["response"]["body"]["usage"]["output_tokens"] for r in results
    } == want
    (chunk,) = read_meta_section(jobs.with_name("jobs.results.jsonl"), "batch")["chunks"]
    assert chunk["batch_id"] != other and chunk["state"] == "done"
    assert all(s.startswith(chunk["key"] + "-") for s in chunk["sent"])
    assert server.stats()["batch"]["creates"]["anthropic"] == 2  # the other run's, and ours
    assert outcome.summary["batch"]["batches_recovered"] == 1


def _first_batch_404s(monkeypatch: pytest.MonkeyPatch, gone: list[bool]) -> None:
    """While ``gone[0]``, GET of the first batch answers the provider's 404 (deleted, expired,
    or created with another API key)."""
    handle = mock_batch.BatchService.handle

    async def missing(self: Any, request: Any, path: str, query: str) -> Any:
        first = next((b for b in self._batches.values() if b.ordinal == 1), None)
        if gone[0] and first is not None and request.method == "GET":
            if path.endswith(f"/batches/{first.id}"):
                return self._missing(first.anthropic, "batch", first.id)
        return await handle(self, request, path, query)

    monkeypatch.setattr(mock_batch.BatchService, "handle", missing)


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_journaled_batch_answering_404_is_named_and_resubmitted_only_when_asked(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 404 on polling a journaled batch stopped every re-run with exit 1 at once, the other
    batches never collected, and no way forward. Now the others are collected, the run stops
    with exit 3 naming the batch and the journal, nothing is sent twice on its own; with
    --resubmit-lost-batches its jobs go again, once."""
    gone = [True]
    _first_batch_404s(monkeypatch, gone)
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    cfg = batch_config(url, shape, ctx, cache="none", batch_max_requests=3)
    results = jobs.with_name("jobs.results.jsonl")
    for attempt in range(2):  # the first run, and a plain re-run: the same stop, nothing resent
        with pytest.raises(wire.BatchAPIError) as lost:
            await run(jobs, cfg)
        assert isinstance(lost.value, wire.BatchNotFound) and lost.value.exit_code == 3
        chunks = read_meta_section(results, "batch")["chunks"]
        first = next(c for c in chunks if c["state"] == "submitted")
        message = str(lost.value)
        assert first["batch_id"] in message and str(meta_path_of(results)) in message
        assert "--resubmit-lost-batches" in message and "404" in (first["note"] or "")
        assert len(read_jsonl(results)) == 3  # the other batch was collected
        assert server.stats()["batch"]["creates"][shape] == 2
        summary = orjson.loads(jobs.with_name("jobs.summary.json").read_bytes())
        # written after the stop: the output's 3 results; the re-run's own are none
        assert summary["jobs"]["ok"] == 3
        assert summary.get("this_run", summary["jobs"])["ok"] == (3 if attempt == 0 else 0)
        assert summary["batch"]["pending_jobs"] == 3
    live = await fetch_live(results, cfg)  # `runner status --live` shows it, not a traceback
    assert live[first["batch_id"]].status == "not found (404)"
    link = tmp_path / "latest.jsonl"  # a symlink to the results: the same run's journal
    link.symlink_to(results.name)
    assert (await fetch_live(link, cfg)).keys() == live.keys()
    assert first["batch_id"] in render_status(link)
    outcome = await run(jobs, replace(cfg, resubmit_lost_batches=True))
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)
    assert server.stats()["batch"]["creates"][shape] == 3
    assert server.stats()["batch"]["requests"] == 6 + 3
    chunks = read_meta_section(results, "batch")["chunks"]
    assert [c["state"] for c in chunks].count("lost") == 1
    again = await run(jobs, cfg)  # finished: nothing left, nothing polled
    assert again.exit_code == 0 and server.stats()["batch"]["creates"][shape] == 3


async def test_a_lost_primer_batch_neither_hangs_nor_strands_its_followers(
    tmp_path: Path, mock: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm Anthropic run's first batch holds the groups' primers, which the followers wait
    for. Lost (404), the run stops at once (the followers are not sent: their cache would be
    cold) instead of polling forever; resubmitted, the primers go again and the followers
    follow."""
    _first_batch_404s(monkeypatch, [True])
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    cfg = batch_config(url, "anthropic", ctx, cache="warm")
    with pytest.raises(wire.BatchAPIError) as lost:
        await asyncio.wait_for(run(jobs, cfg), 30)
    assert isinstance(lost.value, wire.BatchNotFound)
    assert server.stats()["batch"]["requests"] == 2  # the primers only
    outcome = await asyncio.wait_for(run(jobs, replace(cfg, resubmit_lost_batches=True)), 30)
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)
    assert server.stats()["batch"]["requests"] == 2 + 6


async def test_a_lost_batch_on_the_last_attempt_gives_its_jobs_an_error_result(
    tmp_path: Path, mock: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --resubmit-lost-batches a lost batch's jobs go again as the next attempt; past
    batch_max_attempts they become ``batch_lost`` errors (exit 1), which --retry-failed sends."""
    _first_batch_404s(monkeypatch, [True])
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    cfg = batch_config(url, "openai", ctx, cache="none", batch_max_requests=3, batch_max_attempts=1)
    outcome = await run(jobs, replace(cfg, resubmit_lost_batches=True))
    assert outcome.exit_code == 1
    results, _ = assert_each_job_once(jobs)
    codes = sorted((r.get("error") or {}).get("code", "ok") for r in results)
    assert codes == ["batch_lost"] * 3 + ["ok"] * 3
    assert server.stats()["batch"]["creates"]["openai"] == 2
    assert (await run(jobs, replace(cfg, retry_failed=True))).exit_code == 0
    assert server.stats()["batch"]["requests"] == 6 + 3


def test_validate_via_batch_prices_anthropic_warm_writes_at_the_one_hour_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A warm Anthropic batch writes to the 1-hour cache (2x input); the run's summary billed
    that, but ``validate --via batch`` estimated the writes at cache_write (the 5-minute
    1.25x), under-estimating the batch. Both now price through ``batch_prices``."""
    jobs, ctx = make_inputs(tmp_path, 4, 3)
    toml = tmp_path / "c.toml"
    toml.write_text(
        'provider = "anthropic"\nbase_url = "http://127.0.0.1:9"\nmodel = "mock-1"\n'
        '[prices."mock-1"]\ninput = 1.0\noutput = 4.0\ncached_input = 0.1\ncache_write = 1.25\n'
    )
    args = ["validate", str(jobs), "--contexts", str(ctx), "-c", str(toml), "--via", "batch"]
    assert main(args) == 0
    out = capsys.readouterr().out
    got = re.search(r"batch \$([\d.]+) with the estimated cache hits", out)
    assert got, out
    config = replace(load_config(toml), contexts=ctx)
    m = validate_file(jobs, contexts=contexts_for(config), config=config).models["mock-1"]
    assert m.cache_write_tokens > 0
    fresh = m.prompt_tokens - m.cached_tokens - m.cache_write_tokens
    p = PRICE  # the same list prices; 1-hour writes at 2 x input, all at half price
    hour = fresh * p.input + m.cached_tokens * 0.1 + m.cache_write_tokens * 2.0
    want = 0.5 * (hour + m.completion_tokens * p.output) / 1e6
    assert float(got.group(1)) == pytest.approx(want, abs=6e-5)


def test_the_command_line_exits_3_on_a_batch_the_provider_lost_then_resubmits_when_asked(
    tmp_path: Path,
) -> None:
    """The real CLI: batches submitted to one mock, then polled at a fresh one that knows none
    of them (as after a deletion, or another API key): exit 3 with the batch and journal named
    on stderr, again on a re-run; --resubmit-lost-batches then sends every job once more."""
    jobs, ctx = make_inputs(tmp_path, 2, 2)
    toml = tmp_path / "c.toml"
    args = [PY, "-m", "runner", "run", str(jobs), "--contexts", str(ctx), "-c", str(toml)]
    args += ["--via", "batch", "--progress", "off", "--cache", "none"]
    env = {**os.environ, "RUNNER_BATCH_KILL_AT": "poll"}
    flags = ("--latency", "zero", "--batch", '{"duration_s": 0.4}')
    conf = 'provider = "anthropic"\nbase_url = "{}"\npoll_interval = 0.03\n'
    with mock_process(*flags) as first:
        toml.write_text(conf.format(first))
        killed = subprocess.run(args, env=env, capture_output=True, timeout=60, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    results = jobs.with_name("jobs.results.jsonl")
    (chunk,) = read_meta_section(results, "batch")["chunks"]
    assert chunk["state"] == "submitted" and not results.read_bytes()
    with mock_process(*flags) as second:
        toml.write_text(conf.format(second))
        for _ in range(2):
            out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
            assert out.returncode == 3, out.stderr
            assert chunk["batch_id"] in out.stderr and "jobs.results.jsonl.meta.json" in out.stderr
            assert "--resubmit-lost-batches" in out.stderr and "Traceback" not in out.stderr
        again = [*args, "--resubmit-lost-batches"]
        out = subprocess.run(again, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
    assert_each_job_once(jobs)

"""``--via batch`` against the mock's batch endpoints: both shapes, limits, awkward cases,
reattach."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchapi.conftest import (
    PRICE,
    MockFactory,
    assert_each_job_once,
    batch_config,
    job_max_tokens,
    make_inputs,
    read_jsonl,
)

from runner import run
from runner.batchapi.status import render_status
from runner.config import RunConfig
from runner.models import Price
from runner.sinks import read_meta_section

SHAPES = ["openai", "anthropic"]


def journal(jobs: Path) -> dict[str, Any]:
    section = read_meta_section(jobs.with_name("jobs.results.jsonl"), "batch")
    assert isinstance(section, dict)
    return section


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_job_once_at_half_price_or_less(
    tmp_path: Path, mock: MockFactory, shape: str
) -> None:
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 4, 6)
    outcome = await run(jobs, batch_config(url, shape, ctx))
    assert outcome.exit_code == 0
    results, latency = assert_each_job_once(jobs)
    # Rows come back shuffled; each result is joined to its own job by custom_id.
    want = job_max_tokens(jobs)
    for r in results:
        body = r["response"]["body"]
        out = body["usage"]["completion_tokens" if shape == "openai" else "output_tokens"]
        assert out == want[r["custom_id"]]
    rec = latency[0]
    assert rec["batch_id"] and rec["submitted_at"] and rec["completed_at"]
    assert rec["latency_ms"] is None and rec["ttft_ms"] is None
    s = outcome.summary
    direct_uncached = s["batch"]["at_list_price"]["uncached_usd"]
    assert s["cost"]["billed"] <= 0.5 * direct_uncached + 1e-9
    assert s["cost"]["uncached"] == pytest.approx(0.5 * direct_uncached, rel=1e-6)
    assert s["tokens"]["cached"] > 0  # groups kept together: followers read the prefix
    creates = server.stats()["batch"]["creates"][shape]
    # Anthropic: the four primers go first in a batch of their own, then the rest.
    assert creates == (2 if shape == "anthropic" else 1)
    roles = [r["cache_role"] for r in latency]
    assert roles.count("primer") == (4 if shape == "anthropic" else 0)


async def test_anthropic_batch_requests_carry_the_hour_long_cache(
    tmp_path: Path, mock: MockFactory
) -> None:
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    await run(jobs, batch_config(url, "anthropic", ctx))
    batches = list(server._batch._batches.values())
    marks = [
        block.get("cache_control")
        for b in batches
        for _, params in b.requests
        for block in params["system"]
    ]
    assert marks and all(m == {"type": "ephemeral", "ttl": "1h"} for m in marks)
    # The primer batch has one request per group and ended before the followers were sent.
    primer, rest = batches
    assert len(primer.requests) == 2
    assert primer.ended_wall is not None and rest.created_wall >= primer.ended_wall


async def test_split_at_the_request_limit_keeps_groups_together(
    tmp_path: Path, mock: MockFactory
) -> None:
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 3, 4)
    outcome = await run(jobs, batch_config(url, "openai", ctx, batch_max_requests=4))
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)
    chunks = journal(jobs)["chunks"]
    assert server.stats()["batch"]["creates"]["openai"] == len(chunks) == 3
    for c in chunks:
        assert len(c["ids"]) <= 4
        assert len({cid.split("-")[0] for cid in c["ids"]}) == 1  # one cache group per batch


async def test_split_at_the_byte_limit(tmp_path: Path, mock: MockFactory) -> None:
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    outcome = await run(jobs, batch_config(url, "openai", ctx, batch_max_bytes=12_000))
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)
    # Each request is ~5.3 KB: two fit under 12,000 bytes, a whole group of three does not.
    sizes = [len(c["ids"]) for c in journal(jobs)["chunks"]]
    assert max(sizes) == 2 and sum(sizes) == 6
    assert server.stats()["batch"]["creates"]["openai"] == len(sizes)


async def test_openai_one_model_per_file(tmp_path: Path, mock: MockFactory) -> None:
    _, url = await mock(models=("mock-1", "mock-2"))
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": f"mock-{1 + i % 2}", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(6)
    ]
    jobs.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    cfg = RunConfig(
        provider="openai", base_url=url, via="batch", poll_interval=0.02, progress="off"
    )
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 0  # the mock refuses a file naming two models
    models = sorted(c["model"] for c in journal(jobs)["chunks"])
    assert models == ["mock-1", "mock-2"]
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert {r["custom_id"]: r["response"]["body"]["model"] for r in results} == {
        f"r{i}": f"mock-{1 + i % 2}" for i in range(6)
    }


@pytest.mark.parametrize("shape", SHAPES)
async def test_request_errors_inside_the_body_become_results(
    tmp_path: Path, mock: MockFactory, shape: str
) -> None:
    server, url = await mock(batch={"body_error_rate": 0.4, "body_error_status": 400})
    jobs, ctx = make_inputs(tmp_path, 2, 6)
    outcome = await run(jobs, batch_config(url, shape, ctx))
    assert outcome.exit_code == 1
    results, _ = assert_each_job_once(jobs)
    failed = [r for r in results if r["error"] is not None]
    assert failed and len(failed) < len(results)
    for r in failed:
        assert r["error"]["code"] == "http_4xx"
        assert r["response"]["status_code"] == 400
    assert outcome.summary["jobs"]["by_error"] == {"http_4xx": len(failed)}
    # A 400 is the request's own fault: never resubmitted (primers are jobs too).
    assert server.stats()["batch"]["requests"] == len(results)


async def test_retriable_errors_inside_the_body_are_resubmitted(
    tmp_path: Path, mock: MockFactory
) -> None:
    server, url = await mock(batch={"body_error_rate": 0.3, "body_error_status": 500})
    jobs, ctx = make_inputs(tmp_path, 2, 8)
    outcome = await run(jobs, batch_config(url, "openai", ctx, batch_max_attempts=6))
    results, latency = assert_each_job_once(jobs)
    assert outcome.exit_code == 0, [r["error"] for r in results if r["error"]]
    assert max(r["attempts"] for r in latency) >= 2
    assert server.stats()["batch"]["creates"]["openai"] >= 2


async def test_completed_with_no_output_file(tmp_path: Path, mock: MockFactory) -> None:
    server, url = await mock(batch={"all_failed": [1]})
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    outcome = await run(jobs, batch_config(url, "openai", ctx))
    assert outcome.exit_code == 1
    results, _ = assert_each_job_once(jobs)
    assert all(r["error"]["code"] == "http_4xx" for r in results)
    (batch,) = server._batch._batches.values()
    assert batch.final == "completed" and batch.output_file_id is None
    assert batch.error_file_id is not None


async def test_token_limit_exceeded_after_accept_is_resubmitted(
    tmp_path: Path, mock: MockFactory
) -> None:
    server, url = await mock(batch={"token_limit": [1]})
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    outcome = await run(jobs, batch_config(url, "openai", ctx))
    assert outcome.exit_code == 0
    _, latency = assert_each_job_once(jobs)
    assert {r["attempts"] for r in latency} == {2}
    assert server.stats()["batch"]["creates"]["openai"] == 2
    first = journal(jobs)["chunks"][0]
    assert first["status"] == "failed" and "resubmitted" in first["note"]


async def test_token_limit_exceeded_on_the_last_attempt_is_a_result(
    tmp_path: Path, mock: MockFactory
) -> None:
    _, url = await mock(batch={"token_limit": [1]})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    outcome = await run(jobs, batch_config(url, "openai", ctx, batch_max_attempts=1))
    assert outcome.exit_code == 1
    results, _ = assert_each_job_once(jobs)
    assert {r["error"]["code"] for r in results} == {"token_limit_exceeded"}


@pytest.mark.parametrize("shape", SHAPES)
async def test_expiry_with_partial_results_resubmits_only_the_expired_rows(
    tmp_path: Path, mock: MockFactory, shape: str
) -> None:
    n_first = 1 if shape == "openai" else 2  # Anthropic's first batch holds the primers
    server, url = await mock(batch={"expire": [n_first], "partial": 0.5})
    jobs, ctx = make_inputs(tmp_path, 2, 6)
    outcome = await run(jobs, batch_config(url, shape, ctx))
    assert outcome.exit_code == 0
    _, latency = assert_each_job_once(jobs)
    expired_batch = list(server._batch._batches.values())[n_first - 1]
    n = len(expired_batch.requests)
    attempts = [r["attempts"] for r in latency]
    assert attempts.count(2) == n - n // 2  # only the expired half went again
    assert server.stats()["batch"]["requests"] == len(latency) + (n - n // 2)


async def test_expired_rows_on_the_last_attempt_are_results(
    tmp_path: Path, mock: MockFactory
) -> None:
    _, url = await mock(batch={"expire": [1], "partial": 0.5})
    jobs, ctx = make_inputs(tmp_path, 1, 6)
    outcome = await run(jobs, batch_config(url, "openai", ctx, batch_max_attempts=1))
    assert outcome.exit_code == 1
    results, _ = assert_each_job_once(jobs)
    codes = sorted(str(r["error"] and r["error"]["code"]) for r in results)
    assert codes == ["None"] * 3 + ["batch_expired"] * 3


async def _stop_when_running(server: Any, shape: str) -> None:
    """SIGINT once the (follower) batch has some rows done; polls the mock's own state."""
    ordinal = 2 if shape == "anthropic" else 1

    def running() -> bool:
        return any(b.ordinal == ordinal for b in server._batch._batches.values())

    for _ in range(1000):
        if running():
            break
        await asyncio.sleep(0.01)  # the mock has no event to wait on
    await asyncio.sleep(0.12)  # some rows done
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancel_on_stop_then_rerun_collects_partial_and_resubmits_the_rest(
    tmp_path: Path, mock: MockFactory, shape: str
) -> None:
    server, url = await mock(batch={"duration_s": 0.6})
    jobs, ctx = make_inputs(tmp_path, 2, 10)
    cfg = batch_config(url, shape, ctx, cancel_on_stop=True)
    stopper = asyncio.create_task(_stop_when_running(server, shape))
    outcome = await run(jobs, cfg, handle_signals=True)
    await stopper
    assert outcome.exit_code == 130 and outcome.stopped == "signal"
    cancelled = [b for b in server._batch._batches.values() if b.cancel_at is not None]
    assert len(cancelled) == 1
    outcome = await run(jobs, cfg.with_overrides(cancel_on_stop=False))
    assert outcome.exit_code == 0
    _, latency = assert_each_job_once(jobs)
    n = len(cancelled[0].requests)
    again = sum(1 for r in latency if r["attempts"] == 2)
    assert 0 < again < n  # partial results kept; only the cancelled rows went again
    assert server.stats()["batch"]["requests"] == len(latency) + again


@pytest.mark.parametrize("shape", SHAPES)
async def test_stop_detaches_and_the_next_run_reattaches_without_a_new_batch(
    tmp_path: Path, mock: MockFactory, shape: str
) -> None:
    server, url = await mock(batch={"duration_s": 0.6})
    jobs, ctx = make_inputs(tmp_path, 2, 5)
    cfg = batch_config(url, shape, ctx)
    stopper = asyncio.create_task(_stop_when_running(server, shape))
    outcome = await run(jobs, cfg, handle_signals=True)
    await stopper
    assert outcome.exit_code == 130
    creates = server.stats()["batch"]["creates"][shape]
    status = render_status(jobs.with_name("jobs.results.jsonl"))
    assert "submitted" in status and "run the same command again" in status
    assert not any(b.cancel_at for b in server._batch._batches.values())
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)
    assert server.stats()["batch"]["creates"][shape] == creates
    assert server.stats()["batch"]["requests"] == 10  # each job sent once


async def test_price_table_overrides_the_batch_discount(tmp_path: Path, mock: MockFactory) -> None:
    _, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    price = Price(input=1.0, output=4.0, cached_input=0.1, batch_discount=0.25)
    outcome = await run(jobs, batch_config(url, "openai", ctx, prices={"mock-1": price}))
    s = outcome.summary
    assert s["batch"]["discount"] == 0.25
    assert s["cost"]["uncached"] == pytest.approx(
        0.25 * s["batch"]["at_list_price"]["uncached_usd"], rel=1e-5
    )
    assert PRICE.batch_discount is None


async def test_a_rerun_after_completion_sends_nothing(tmp_path: Path, mock: MockFactory) -> None:
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 4)
    cfg = batch_config(url, "openai", ctx)
    await run(jobs, cfg)
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 0 and outcome.summary["jobs"]["skipped_resumed"] == 4
    assert server.stats()["batch"]["creates"]["openai"] == 1
    assert_each_job_once(jobs)


async def test_ids_the_anthropic_wire_refuses_are_mapped_without_collisions(
    tmp_path: Path, mock: MockFactory
) -> None:
    server, url = await mock()
    jobs = tmp_path / "jobs.jsonl"
    ids = ["r1", "q.1", "r0", "a b", "x" * 70]  # "r1"/"r0" are also what positions map to
    lines = [{"id": i, "query": "hi", "params": {"max_tokens": n + 1}} for n, i in enumerate(ids)]
    jobs.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    cfg = RunConfig(
        provider="anthropic", base_url=url, via="batch", poll_interval=0.02, progress="off"
    )
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 0
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    (batch,) = server._batch._batches.values()
    sent = [cid for cid, _ in batch.requests]
    assert len(set(sent)) == 5 and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", x) for x in sent)
    # Rows come back shuffled under the mapped ids; each lands on its own job.
    got = {r["custom_id"]: r["response"]["body"]["usage"]["output_tokens"] for r in results}
    assert got == {i: n + 1 for n, i in enumerate(ids)}


@pytest.mark.parametrize("shape", SHAPES)
async def test_failed_downloads_are_retried(tmp_path: Path, mock: MockFactory, shape: str) -> None:
    server, url = await mock(batch={"fail_downloads": 2})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    outcome = await run(jobs, batch_config(url, shape, ctx))
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)
    assert server.stats()["batch"]["failed_downloads"] == 2


async def test_bad_lines_get_one_result_each_across_reruns(
    tmp_path: Path, mock: MockFactory
) -> None:
    _, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    with jobs.open("ab") as fh:
        fh.write(b"{not json\n")  # no id of its own: keyed by its line
        fh.write(b'{"id": "bad", "query": 5}\n')
    cfg = batch_config(url, "openai", ctx)
    assert (await run(jobs, cfg)).exit_code == 1
    assert (await run(jobs, cfg)).summary["jobs"]["skipped_resumed"] == 4
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert len(results) == 4
    invalid = [r for r in results if r["error"] is not None]
    assert {(r["custom_id"], r.get("line")) for r in invalid} == {(None, 3), ("bad", None)}


async def test_control_requests_still_failing_after_retries_exit_75(
    tmp_path: Path, mock: MockFactory
) -> None:
    # Found by QA: a 5xx that outlasted the retries was exit 1 ("jobs failed"); it is transient
    # (exit 75, re-run later) and the re-run reattaches and finishes.
    from runner.errors import Unavailable

    _server, url = await mock(batch={"fail_downloads": 10})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    with pytest.raises(Unavailable) as exc:
        await run(jobs, batch_config(url, "openai", ctx, poll_interval=0.001))
    assert exc.value.exit_code == 75
    outcome = await run(jobs, batch_config(url, "openai", ctx, poll_interval=0.001))
    assert outcome.exit_code == 0
    assert_each_job_once(jobs)


async def test_a_multi_model_batch_prices_each_job_by_its_own_model(
    tmp_path: Path, mock: MockFactory
) -> None:
    # Found in review: the engine priced every row at the run's model price; the summary cost
    # must equal the sum, per model, of that model's tokens at its own batch price.
    from runner.batchapi.engine import batch_price
    from runner.stats import cost_of

    _, url = await mock(models=("mock-1", "mock-2"))
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": f"mock-{1 + i % 2}",
                "max_tokens": 3 + i,
                "messages": [{"role": "user", "content": "hi " * (5 + i)}],
            },
        }
        for i in range(6)
    ]
    jobs.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    prices = {
        "mock-1": Price(input=1.0, output=4.0),
        "mock-2": Price(input=30.0, output=90.0, batch_discount=0.25),
    }
    cfg = RunConfig(
        provider="openai",
        base_url=url,
        via="batch",
        poll_interval=0.02,
        progress="off",
        prices=prices,
    )
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 0
    billed = uncached = list_billed = 0.0
    for r in read_jsonl(tmp_path / "jobs.results.jsonl"):
        model = f"mock-{1 + int(r['custom_id'][1:]) % 2}"
        u = r["response"]["body"]["usage"]
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        toks = (u["prompt_tokens"], cached, 0, u["completion_tokens"])
        bp = batch_price(prices[model])
        assert bp is not None
        b, un = cost_of(*toks, bp)
        billed += b
        uncached += un
        list_billed += cost_of(*toks, prices[model])[0]
    s = outcome.summary
    assert s["models"] == {"mock-1": 3, "mock-2": 3}
    assert s["cost"]["billed"] == pytest.approx(billed, rel=1e-6)
    assert s["cost"]["uncached"] == pytest.approx(uncached, rel=1e-6)
    assert s["batch"]["at_list_price"]["billed_usd"] == pytest.approx(list_billed, rel=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fault", ["refused", "wrong_url"])
async def test_a_refused_upload_or_create_is_misuse_exit_2(
    tmp_path: Path, mock: MockFactory, shape: str, fault: str
) -> None:
    # Found in review: a permanent 4xx on upload/create was exit 1 ("jobs failed"); like a wrong
    # endpoint before any success in a direct run, it is misuse: exit 2, do not retry.
    from runner.batchapi.wire import BatchRejected

    server, url = await mock(batch={"max_requests": 2})
    jobs, ctx = make_inputs(tmp_path, 1, 4)  # one group of 4 requests: over the mock's 2
    if fault == "wrong_url":
        url += "/nope"  # 404 from the upload (OpenAI) or the create (Anthropic)
    with pytest.raises(BatchRejected) as exc:
        await run(jobs, batch_config(url, shape, ctx, cache="none"))
    assert exc.value.exit_code == 2
    assert ("404" if fault == "wrong_url" else "400") in str(exc.value)
    assert server.stats()["batch"]["creates"][shape] == 0
    # Nothing was created, so no chunk waits in `creating` for a lookup by the next run.
    assert {c["state"] for c in journal(jobs)["chunks"]} <= {"planned", "uploading", "uploaded"}


def test_a_refused_create_exits_2_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import mock_process

    from runner.cli import main

    jobs, ctx = make_inputs(tmp_path, 1, 4)
    with mock_process("--latency", "zero", "--batch", '{"max_requests": 2}') as url:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'provider = "openai"\nbase_url = "{url}"\npoll_interval = 0.02\n')
        args = ["run", str(jobs), "--contexts", str(ctx), "-c", str(cfg), "--via", "batch"]
        assert main([*args, "--progress", "off", "--cache", "none"]) == 2
    assert "refused the batch" in capsys.readouterr().err

"""Found by the second red team: what real batch endpoints do that the mock does not.

Each test drives ``--via batch`` against the in-process mock with one fault injected the way
a provider or the network between would produce it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from batchapi.conftest import PRICE, MockFactory, assert_each_job_once, batch_config, make_inputs

from runner import run
from runner.batchapi.wire import BatchRejected
from runner.errors import Unavailable
from runner.mock import batch as mock_batch


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_create_that_times_out_after_the_batch_was_made_is_not_sent_twice(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create's answer is lost (the provider made the batch, then the gateway or the
    client's timeout cut the answer): re-sending the POST made a second batch of the same jobs,
    billed twice, the first one never collected. The run must look the batch up first."""
    create = mock_batch.BatchService._create
    calls = 0

    async def slow_first(self: Any, request: Any, anthropic: bool) -> web.Response:
        nonlocal calls
        calls += 1
        resp: web.Response = await create(self, request, anthropic)
        if calls == 1:
            await asyncio.sleep(3)  # past the client's timeout: the answer never arrives
        return resp

    monkeypatch.setattr(mock_batch.BatchService, "_create", slow_first)
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 4)
    outcome = await run(jobs, batch_config(url, shape, ctx, timeout=0.5, cache="none"))
    assert outcome.exit_code == 0
    assert server.stats()["batch"]["creates"][shape] == 1
    assert_each_job_once(jobs)


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_duplicate_unknown_and_missing_rows_give_each_job_one_result(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results file with a row twice (the second different), rows for ids never sent, and a
    row missing: each job gets exactly one result, the missing one after a resubmission."""
    answer = mock_batch.BatchService._answer
    dropped: list[str] = []

    def odd(self: Any, batch: Any, cid: str, body: dict[str, Any], status: int) -> Any:
        line, ok = answer(self, batch, cid, body, status)
        # OpenAI rows carry the jobs' ids; Anthropic's "<chunk key>-<position>"
        if cid.endswith(("-q0", "-0")):
            twin, _ = answer(self, batch, cid, body, 500)
            stranger = line.replace(cid.encode(), b"never-sent-1")
            return line + twin + stranger, ok
        if cid.endswith(("-q2", "-2")) and not dropped:
            dropped.append(cid)
            return b"", ok
        return line, ok

    monkeypatch.setattr(mock_batch.BatchService, "_answer", odd)
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    outcome = await run(jobs, batch_config(url, shape, ctx, cache="none"))
    assert dropped
    results, _ = assert_each_job_once(jobs)
    assert outcome.exit_code == 0, [r for r in results if r.get("error")]
    assert server.stats()["batch"]["requests"] == 6 + 1  # only the missing row went again


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_deleted_results_file_does_not_block_the_other_batches_forever(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch ended but its results file answers 404 (deleted, or past the
    provider's retention). The run stopped there with exit 1, and so did every re-run: the
    other batches were never collected (their files expire too). Its jobs now become
    ``results_gone`` results, not resubmitted (they ran, billed) unless --retry-failed."""
    finish, handle = mock_batch.BatchService._finish, mock_batch.BatchService.handle
    first: list[str] = []

    def gone(self: Any, batch: Any, done: int, final: str) -> None:
        finish(self, batch, done, final)
        if batch.ordinal == 1:
            first.append(batch.id)
            self._files.pop(batch.output_file_id, None)

    async def no_results(self: Any, request: Any, path: str, query: str) -> Any:
        if first and path.endswith(f"{first[0]}/results"):
            return self._error(True, 404, "results are no longer available")
        return await handle(self, request, path, query)

    monkeypatch.setattr(mock_batch.BatchService, "_finish", gone)
    monkeypatch.setattr(mock_batch.BatchService, "handle", no_results)
    server, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    cfg = batch_config(url, shape, ctx, cache="none", batch_max_requests=3)
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 1
    results, _ = assert_each_job_once(jobs)
    codes = sorted((r.get("error") or {}).get("code", "ok") for r in results)
    assert codes == ["ok"] * 3 + ["results_gone"] * 3
    assert "--retry-failed" in next(r["error"]["message"] for r in results if r.get("error"))
    assert server.stats()["batch"]["creates"][shape] == 2  # nothing billed twice on its own
    again = await run(jobs, cfg)  # a plain re-run has nothing left to do
    assert again.exit_code == 1 and server.stats()["batch"]["creates"][shape] == 2
    retried = await run(jobs, replace(cfg, retry_failed=True))  # the user's choice to pay again
    assert retried.exit_code == 0
    assert server.stats()["batch"]["requests"] == 6 + 3
    assert_each_job_once(jobs)


async def test_a_resume_exits_1_while_the_output_holds_a_failed_job(
    tmp_path: Path, mock: MockFactory
) -> None:
    """README's exit codes: 1 while any job in the output failed, after a resume too. A
    --via batch re-run of a finished output with failures exited 0 (it counted only its own
    invocation), so a scheduled job's second run reported success."""
    _, url = await mock(batch={"body_error_rate": 1.0, "body_error_status": 400})
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    cfg = batch_config(url, "openai", ctx, cache="none")
    assert (await run(jobs, cfg)).exit_code == 1
    assert (await run(jobs, cfg)).exit_code == 1


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_base_urls_password_is_in_no_batch_error(
    tmp_path: Path, mock: MockFactory, shape: str
) -> None:
    """A gateway behind basic auth (user:password@ in the base URL): the batch control
    errors printed the URL whole, password included (the direct run's were fixed before)."""
    password = "GWsecret-PW"
    _, url = await mock(batch={"fail_downloads": 100})
    authed = url.replace("http://", f"http://gw:{password}@")
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    with pytest.raises(BatchRejected) as rejected:  # a wrong path: refused at the submit
        await run(jobs, batch_config(authed + "/nope", shape, ctx, cache="none"))
    with pytest.raises(Unavailable) as down:  # the results download keeps failing (5xx)
        await run(jobs, batch_config(authed, shape, ctx, cache="none"))
    for exc in (rejected.value, down.value):
        assert "127.0.0.1" in str(exc) and password not in str(exc), str(exc)


async def test_a_batch_that_failed_validation_is_not_resubmitted(
    tmp_path: Path, mock: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI fails a batch whose input it refuses (errors.data names the line and the code,
    no output file): each job was resubmitted up to batch_max_attempts times, every attempt
    an upload, a wait and the same failure. Its rows are now results with that error."""
    view = mock_batch.BatchService._openai_view

    def invalid(self: Any, b: Any) -> dict[str, Any]:
        doc: dict[str, Any] = view(self, b)
        if doc["status"] == "failed":
            err = {"code": "model_not_found", "message": "The model 'x' does not exist", "line": 1}
            doc["errors"]["data"] = [{**err, "param": "body.model"}]
        return doc

    monkeypatch.setattr(mock_batch.BatchService, "_openai_view", invalid)
    server, url = await mock(batch={"token_limit": [1, 2, 3]})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    outcome = await run(jobs, batch_config(url, "openai", ctx, cache="none"))
    assert outcome.exit_code == 1
    assert server.stats()["batch"]["creates"]["openai"] == 1
    results, _ = assert_each_job_once(jobs)
    assert {r["error"]["code"] for r in results} == {"model_not_found"}
    assert "line 1" in results[0]["error"]["message"]


async def test_a_warm_anthropic_batch_prices_its_writes_at_the_one_hour_rate(
    tmp_path: Path, mock: MockFactory
) -> None:
    """A warm Anthropic batch marks its prefixes with the 1-hour TTL, whose writes Anthropic
    bills at 2x input; the summary priced them at cache_write (the 5-minute 1.25x), so the
    cost was a third too low and the saving overstated."""
    _, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    outcome = await run(jobs, batch_config(url, "anthropic", ctx, cache="warm"))
    tok = outcome.summary["tokens"]
    assert tok["cache_write"] > 0
    p = PRICE  # input 1.0, cached 0.1, output 4.0 per 1M; 1-hour writes at 2 x input
    fresh = tok["prompt"] - tok["cached"] - tok["cache_write"]
    list_usd = (
        fresh * p.input + tok["cached"] * 0.1 + tok["cache_write"] * 2.0 + tok["completion"] * 4.0
    ) / 1e6
    assert outcome.summary["cost"]["billed"] == pytest.approx(list_usd * 0.5, rel=1e-4)


def test_the_one_hour_write_price(tmp_path: Path) -> None:
    from runner.config import RunConfig, load_config
    from runner.models import Price

    base = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    own = Price(input=3.0, output=15.0, cache_write=3.75, cache_write_1h=5.5)
    cfg = RunConfig(provider="anthropic", base_url="http://x", model="m", prices={"m": base})
    assert cfg.price("m") == base  # the 5-minute cache: cache_write as given
    hour = replace(cfg, anthropic_cache_ttl="1h")
    assert hour.price("m").cache_write == 6.0  # type: ignore[union-attr]
    assert replace(hour, prices={"m": own}).price("m").cache_write == 5.5  # type: ignore[union-attr]
    other = RunConfig(provider="openai", base_url="http://x", model="m", prices={"m": base})
    assert replace(other, anthropic_cache_ttl="1h").price("m") == base
    toml = tmp_path / "c.toml"
    toml.write_text(
        'provider = "anthropic"\nbase_url = "http://x"\nmodel = "m"\nanthropic_cache_ttl = "1h"\n'
        "[prices.m]\ninput = 3.0\noutput = 15.0\ncache_write = 3.75\ncache_write_1h = 6.5\n"
    )
    assert load_config(toml).price("m").cache_write == 6.5  # type: ignore[union-attr]

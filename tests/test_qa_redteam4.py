"""Red team 4: what broke the recent fixes (no-op re-runs, full disks, refused fields, ...).

Each test names the defect it holds fixed.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from aiohttp import web
from promise_helpers import cli_run, fast_config, load, write_jobs
from providers.engine_run import CountingLimiter, plain_job, run_jobs
from providers.fake_provider import Fake, serve_fake

from runner.config import RunConfig
from runner.retry import RetryPolicy

OK = {"id": "c1", "choices": [{"index": 0, "message": {"content": "ok"}}]}
REFUSED = {"detail": [{"type": "extra_forbidden", "loc": ["body", "prompt_cache_key"]}]}


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    async for f in serve_fake():
        yield f


PRICES = '[prices."mock-1"]\ninput = 1.0\noutput = 4.0\n'


# -- a no-op re-run with another price ---------------------------------------------------------


def test_a_noop_rerun_with_a_corrected_price_rewrites_the_summary_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by red team 4: a user fixes a wrong price in the config and runs the same command
    # again; every job is done, so nothing is sent. The table printed the new price's cost,
    # but the summary file was "left as it was" with the old price's cost (the cost was not
    # compared), so the file the user and dashboards read kept the wrong figure.
    jobs = write_jobs(tmp_path, 6)
    summary = tmp_path / "jobs.summary.json"
    cheap = fast_config(tmp_path, PRICES)
    assert cli_run(capsys, "run", str(jobs), "-c", str(cheap))[0] == 0
    first = load(summary)["cost"]
    dear = tmp_path / "dear.toml"
    dear.write_text(cheap.read_text().replace("input = 1.0", "input = 100.0"))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(dear))
    assert code == 0, err
    again = load(summary)["cost"]
    assert again["billed"] > first["billed"] * 10, (first, again)
    assert "left as it was" not in err
    # the same price again: nothing changed, the summary is kept
    kept = summary.read_bytes()
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(dear))
    assert code == 0 and "nothing sent: the summary file is left as it was" in err, err
    assert summary.read_bytes() == kept


# -- a refused field, or a copy of the request in an error ---------------------------------------


async def test_an_error_that_echoes_the_request_refuses_no_field_of_ours(fake: Fake) -> None:
    # Found by red team 4: a FastAPI-style server answers a job's bad parameters (a
    # model-level check) with 422 whose "input" is the whole request body, so it names
    # prompt_cache_key. runner took that for a refusal of the field: it dropped the cache key
    # for every later job of the run (no cache routing for the rest of the run) and re-sent the
    # bad job, whose error then read "refused prompt_cache_key: sent again without it".
    async def validate(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if body.get("top_logprobs"):
            detail = [{"type": "value_error", "loc": ["body"], "msg": "Value error, top_logprobs "
                       "needs logprobs", "input": body}]  # fmt: skip
            return web.json_response({"detail": detail}, status=422)
        if "prompt_cache_key" in body and body["prompt_cache_key"] == "forbidden":
            return web.json_response(REFUSED, status=422)
        return web.json_response(OK)

    fake.handler = validate
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    bad, good = plain_job(0, "g"), plain_job(1, "g")
    bad = replace(bad, params={"max_tokens": 8, "top_logprobs": 3})
    policy = RetryPolicy(max_attempts=1)
    _, sink = await run_jobs(fake, config, [bad, good], limiter=CountingLimiter(), policy=policy)
    errors = [r["error"] for r in sink.results]
    assert errors[0] is not None and "refused" not in errors[0]["message"], errors
    assert errors[1] is None
    assert [("prompt_cache_key" in s.json()) for s in fake.seen] == [True, True]


async def test_a_real_refusal_beside_an_echo_free_error_is_still_a_refusal(fake: Fake) -> None:
    # The echo rule leaves a true refusal alone (the existing 422 extra_forbidden shape).
    async def strict(request: web.Request) -> web.StreamResponse:
        if "prompt_cache_key" in orjson.loads(await request.read()):
            return web.json_response(REFUSED, status=422)
        return web.json_response(OK)

    fake.handler = strict
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    _, sink = await run_jobs(fake, config, [plain_job(0, "g")], limiter=CountingLimiter())
    assert [r["error"] for r in sink.results] == [None]
    assert [("prompt_cache_key" in s.json()) for s in fake.seen] == [True, False]


def _refuse_then(fail: str) -> Any:
    """A strict server (422 to prompt_cache_key) on which the job asking ``fail`` fails (500)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if "prompt_cache_key" in body:
            return web.json_response(REFUSED, status=422)
        if body["messages"][0]["content"] == fail:
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        return web.json_response(OK)

    return handler


@pytest.mark.timeout(10)
async def test_a_primer_that_fails_after_a_refused_field_lets_its_followers_go(
    fake: Fake,
) -> None:
    # Found by red team 4: the primer promoted a follower on its first failure only when it was
    # attempt 1; after a refused field the first real failure is attempt 2, so the followers
    # waited for ever and the run never ended (a strict server and one bad primer hung it).
    fake.handler = _refuse_then("q0")
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    jobs = [plain_job(i, "g") for i in range(3)]
    policy = RetryPolicy(max_attempts=1)
    _, sink = await run_jobs(fake, config, jobs, limiter=CountingLimiter(), policy=policy)
    assert [r["error"] is None for r in sink.results] == [False, True, True]


async def test_a_refused_field_takes_none_of_the_jobs_max_attempts(fake: Fake) -> None:
    # Found by red team 4: the refused request was counted as a try, so --max-attempts 2 gave
    # the job one real try after the refusal (the promise: re-sent "outside max_attempts").
    fake.handler = _refuse_then("q0")
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    policy = RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.001)
    _, sink = await run_jobs(
        fake, config, [plain_job(0, "g")], limiter=CountingLimiter(), policy=policy
    )
    assert sink.results[0]["error"] is not None
    keyed = [("prompt_cache_key" in s.json()) for s in fake.seen]
    assert keyed == [True, False, False], keyed  # the refused request, then 2 real tries


# -- a full disk under a merge -----------------------------------------------------------------


@pytest.mark.parametrize("fails", ["w.results.jsonl", "w.summary.json"])
def test_a_full_disk_under_a_merge_is_exit_75_not_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fails: str,
) -> None:
    # Found by red team 4 (a 1 MB tmpfs: the shards fit, the merged copy did not): the merge
    # of `--workers` (and `runner merge`) let the ENOSPC out as an OSError, a traceback and
    # exit 1 ("alert, do not retry") where a run's own full disk is exit 75.
    jobs, cfg = write_jobs(tmp_path, 8), fast_config(tmp_path)
    for k in range(2):
        assert cli_run(capsys, "run", str(jobs), "-c", str(cfg), "--shard", f"{k}/2")[0] == 0
    parts = [str(tmp_path / f"jobs.shard-{k}-of-2.results.jsonl") for k in range(2)]
    real = os.replace

    def full(src: Any, dst: Any) -> None:
        if Path(dst).name == fails:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "w.results.jsonl"
    code, err = cli_run(capsys, "merge", str(out), *parts)
    assert code == 75, err
    assert "No space left on device" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.tmp"))  # no temporary copy left to fill the disk
    monkeypatch.setattr(os, "replace", real)
    assert cli_run(capsys, "merge", str(out), *parts)[0] == 0  # space freed: merged
    assert len(out.read_bytes().splitlines()) == 8


def test_a_full_disk_under_a_shards_manifest_is_exit_75_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by red team 4 (a tmpfs filled to within a few KB): a --shard run (each --workers
    # worker is one) wrote its manifest S.shard.json unguarded: a traceback, exit 1, and a
    # .tmp file left behind, where a full disk under any other output is exit 75.
    jobs, cfg = write_jobs(tmp_path, 4), fast_config(tmp_path)
    real = os.replace

    def full(src: Any, dst: Any) -> None:
        if str(dst).endswith(".shard.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    args = ("run", str(jobs), "-c", str(cfg), "--shard", "0/2")
    code, err = cli_run(capsys, *args)
    assert code == 75 and "shard.json: cannot write: No space left on device" in err, err
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(os, "replace", real)
    assert cli_run(capsys, *args)[0] == 0  # space freed: the same command runs the shard


# -- a no-op re-run of a --via batch run -------------------------------------------------------


def test_a_batch_rerun_with_every_job_written_keeps_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by red team 4: a --via batch summary counts its own invocation; a cron re-run that
    # found every job written replaced the real run's summary with one of 0 ok, 0 tokens and
    # a $0 cost (the promise of a no-op re-run keeping the summary held for direct runs only).
    jobs = write_jobs(tmp_path, 6)
    args = ("run", str(jobs), "-c", str(fast_config(tmp_path, PRICES)), "--via", "batch")
    summary = tmp_path / "jobs.summary.json"
    assert cli_run(capsys, *args)[0] == 0
    real = summary.read_bytes()
    assert load(summary)["jobs"]["ok"] == 6 and load(summary)["cost"]["billed"] > 0
    code, err = cli_run(capsys, *args)
    assert code == 0, err
    assert "nothing sent: the summary file is left as it was" in err, err
    assert summary.read_bytes() == real
    summary.unlink()  # none to keep: this invocation's is written
    assert cli_run(capsys, *args)[0] == 0
    assert load(summary)["jobs"]["skipped_resumed"] == 6


# -- --summary - onto a full disk --------------------------------------------------------------


class _FullDisk(io.RawIOBase):
    """A standard output redirected to a file on a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_summary_to_a_stdout_on_a_full_disk_is_exit_75_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by red team 4: `runner run ... --summary - > summary.json` with the disk full ended
    # in an OSError traceback, exit 1, where a full disk under any other output is exit 75.
    jobs = write_jobs(tmp_path, 3)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(_FullDisk())))
    args = ("run", str(jobs), "-c", str(fast_config(tmp_path)), "--summary", "-")
    code, err = cli_run(capsys, *args)
    assert code == 75, err
    assert "standard output (--summary -): cannot write the summary: No space left" in err
    assert len((tmp_path / "jobs.results.jsonl").read_bytes().splitlines()) == 3


# -- the lookup after a lost batch create, on a server that ignores the cursor ------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_batch_listing_whose_cursor_comes_back_is_an_error_not_a_loop(
    fake: Fake, provider: Literal["openai", "anthropic"]
) -> None:
    # Found by red team 4: an OpenAI-compatible gateway that ignores ?after= (or after_id=)
    # and answers page one with has_more on again made the lookup after a lost create list
    # the same page for ever (the Gemini listing got this bound; the batch lookups had none).
    import time

    from runner.batchapi.wire import BatchAPIError, open_batch_api
    from runner.providers._http import make_session

    now = time.time()
    if provider == "openai":
        b = {"id": "batch_x", "created_at": int(now), "metadata": {}}
        page = {"data": [b], "has_more": True, "last_id": "batch_x"}
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        b = {"id": "msgbatch_x", "created_at": stamp, "processing_status": "in_progress",
             "request_counts": {"processing": 3}}  # fmt: skip
        page = {"data": [b], "has_more": True, "last_id": "msgbatch_x"}

    async def same_page(request: web.Request) -> web.StreamResponse:
        return web.json_response(page)

    fake.handler = same_page
    config = RunConfig(provider=provider, base_url=fake.url, model="m")
    session = make_session(config, headers={})
    try:
        api = open_batch_api(config, session, base_url=fake.url, api_key="k")
        with pytest.raises(BatchAPIError, match=r"cursor .* came back"):
            await api.find(metadata={"runner_run": "r"}, sent_at=now, total=5, known=set())
    finally:
        await session.close()
    assert len(fake.seen) == 2

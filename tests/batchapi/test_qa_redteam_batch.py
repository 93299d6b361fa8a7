"""Found by the second red team: what real batch endpoints do that the mock does not.

Each test drives ``--via batch`` against the in-process mock with one fault injected the way
a provider or the network between would produce it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from batchapi.conftest import MockFactory, assert_each_job_once, batch_config, make_inputs

from runner import run
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

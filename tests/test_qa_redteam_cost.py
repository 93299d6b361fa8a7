"""``--max-cost`` against a server that reports no usage (found by the red team).

Some proxies drop ``usage`` (and a stream carries none when a server ignores
``stream_options``): each answer then billed $0 to the live budget, so ``--max-cost`` never
tripped and a run spent without limit; against this server a $0.01 budget let 200 requests
worth about $1 go out. An answer without usage now counts at the worst case it reserved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import mock_config

from runner.api import run
from runner.models import Price


def no_usage_app(*, usage: object) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        message = {"role": "assistant", "content": "x" * 400}
        body: dict[str, object] = {"id": "c", "choices": [{"message": message}]}
        if usage is not None:
            body["usage"] = usage
        return web.json_response(body)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


@pytest.fixture(params=["absent", "empty"])
async def url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    server = TestServer(no_usage_app(usage=None if request.param == "absent" else {}))
    await server.start_server()
    try:
        yield str(server.make_url("/v1"))
    finally:
        await server.close()


async def test_answers_without_usage_still_spend_the_budget(tmp_path: Path, url: str) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = (
        orjson.dumps({"id": f"q{i}", "query": "word " * 200, "params": {"max_tokens": 100}})
        for i in range(200)
    )
    jobs.write_bytes(b"\n".join(lines) + b"\n")
    # Each request's worst case: ~200 prompt tokens at $10/M + 100 at $30/M, about $0.005.
    prices = {"m": Price(input=10.0, output=30.0)}
    cfg = mock_config(tmp_path, url, model="m", prices=prices, max_cost=0.05, concurrency=4)
    out = await run(jobs, cfg)
    assert out.exit_code == 3 and out.summary["stopped"] == "max_cost", out.summary["jobs"]
    sent = out.summary["jobs"]["ok"]
    assert 0 < sent <= 15, sent  # about $0.05 / $0.005, not all 200
    assert "answers without usage counted at their worst case" in out.summary["guard"]["message"]

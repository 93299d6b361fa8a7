"""Red team: a gateway's basic-auth password in the base URL (``https://user:PW@gw/v1``, no
key) is kept out of a ``--via batch`` run's outputs in every spelling, as the key is. The
2xx control answers were guarded; a refused answer's message (a 401 quoting the
``Authorization: Basic`` header it got, base64) and the result rows were not."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp import web

from runner.batchapi.wire import BatchAPI, BatchAPIError, open_batch_api
from runner.config import RunConfig
from runner.errors import RunnerError

PW = "gw-Pass-w0rd!7x"
BASIC = base64.b64encode(f"user:{PW}".encode()).decode()
SPELLINGS = (PW, quote(PW, safe=""), BASIC)


@pytest.fixture
async def api() -> AsyncIterator[BatchAPI]:
    answers: dict[str, tuple[int, Any]] = {
        "basic": (401, {"error": {"message": f"bad credentials: Basic {BASIC}"}}),
        "quoted": (400, {"error": {"message": f"bad request ?pw={quote(PW, safe='')}"}}),
    }

    async def answer(request: web.Request) -> web.Response:
        status, body = answers[request.match_info["name"]]
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/v1/{name}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://user:{PW}@127.0.0.1:{port}/v1"
    try:
        async with aiohttp.ClientSession() as session:
            cfg = RunConfig(provider="openai", base_url=base, via="batch")
            batch_api = open_batch_api(cfg, session, base_url=base, api_key=None)
            batch_api._retry_base = 0.001
            yield batch_api
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("name", ["basic", "quoted"])
async def test_a_refused_control_answer_quoting_the_password_is_scrubbed(
    api: BatchAPI, name: str
) -> None:
    with pytest.raises((BatchAPIError, RunnerError)) as info:
        await api._call("GET", f"{api._base}/{name}")
    said = str(info.value)
    assert "[redacted]" in said  # the answer's text reached the message
    for spelling in SPELLINGS:
        assert spelling not in said, spelling


async def test_a_result_row_echoing_the_password_is_scrubbed(api: BatchAPI) -> None:
    row = {
        "custom_id": "q0",
        "response": {
            "status_code": 200,
            "request_id": f"req {PW}",
            "body": {"choices": [{"message": {"content": f"echo Basic {BASIC}"}}]},
        },
    }
    doc = api._doc(orjson.dumps(row))
    assert doc is not None and doc["custom_id"] == "q0"
    said = orjson.dumps(doc).decode()
    assert "[redacted]" in said
    for spelling in SPELLINGS:
        assert spelling not in said, spelling

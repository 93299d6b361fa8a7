"""Batch control answers and result rows are bounded as chat answers are (``max_response_bytes``,
README "Reliability"): an enormous or endless control answer fails its call (a create's as
:class:`CreateUncertain`: the batch may exist), a result row over the cap fails that row
(``response_too_large``) and an endless results file stops at its rows' bound (docs/BATCH.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from helpers import serve_app

from runner.batchapi import wire
from runner.batchapi.wire import (
    BatchAPIError,
    BatchView,
    CreateUncertain,
    Row,
    open_batch_api,
)
from runner.config import RunConfig

CAP = 64 << 10
BIG = b"y" * (1 << 20)


def _row(cid: str, text: bytes) -> bytes:
    body = b'{"choices": [{"message": {"content": "' + text + b'"}}]}'
    head = b'{"id": "batch_req_1", "custom_id": "' + cid.encode()
    return head + b'", "response": {"status_code": 200, "body": ' + body + b"}}\n"


async def _stream(
    request: web.Request, parts: list[bytes], endless: bytes = b""
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "application/json"})
    await resp.prepare(request)  # chunked: no declared length
    for p in parts:
        await resp.write(p)
    while endless:  # until the client hangs up
        await resp.write(endless)
    await resp.write_eof()
    return resp


def _app() -> web.Application:
    async def batch(request: web.Request) -> web.StreamResponse:
        doc = {"id": "b1", "status": "in_progress", "metadata": {"pad": BIG.decode()}}
        return await _stream(request, [orjson.dumps(doc)])

    async def endless(request: web.Request) -> web.StreamResponse:
        return await _stream(request, [b'{"id": "b1", "status": "'], endless=b"z" * 65536)

    async def content(request: web.Request) -> web.StreamResponse:
        fid = request.match_info["fid"]
        if fid == "endless":
            return await _stream(request, [_row("ok", b"fine")], endless=_row("again", b"x"))
        rows = [_row("a", b"fine"), _row("huge", BIG), _row("b", b"also fine")]
        return await _stream(request, rows)

    app = web.Application()
    app.router.add_post("/v1/batches", batch)
    app.router.add_get("/v1/batches/b1", endless)
    app.router.add_get("/v1/batches", batch)
    app.router.add_get("/v1/files/{fid}/content", content)
    return app


def _cfg(base: str) -> RunConfig:
    return RunConfig(base_url=base, model="m", max_response_bytes=CAP, poll_interval=0.01)


async def test_control_answers_past_the_cap_fail_their_call(tmp_path: Path) -> None:
    async with serve_app(_app()) as base, aiohttp.ClientSession() as session:
        api = open_batch_api(_cfg(base), session, base_url=base, api_key="sk-test-0123456789")
        with pytest.raises(CreateUncertain, match=f"over the limit of {CAP:,} bytes"):
            await asyncio.wait_for(api.create(file_id="f", path=tmp_path, metadata={}), 20)
        with pytest.raises(BatchAPIError, match=f"over the limit of {CAP:,} bytes") as caught:
            await asyncio.wait_for(api.get("b1"), 20)  # endless: never read whole
        assert type(caught.value) is BatchAPIError  # permanent: not retried, not "not found"
        with pytest.raises(BatchAPIError, match=f"over the limit of {CAP:,} bytes"):
            find = api.find(metadata={"k": "v"}, sent_at=0.0, total=1, known=set())
            await asyncio.wait_for(find, 20)


def _view(fid: str, total: int) -> BatchView:
    return BatchView("b1", "completed", True, total, total, {}, output_file_id=fid)


async def test_a_result_row_past_the_cap_fails_that_row_only() -> None:
    async with serve_app(_app()) as base, aiohttp.ClientSession() as session:
        api = open_batch_api(_cfg(base), session, base_url=base, api_key="sk-test-0123456789")
        # the file bound (20 rows) holds one huge row among small ones
        rows: list[Row] = [r async for r in api.rows(_view("f1", 20))]
    assert [r.sent_id for r in rows] == ["a", "huge", "b"]
    assert rows[0].error is None and rows[2].error is None and rows[2].status == 200
    err = rows[1].error
    assert err is not None and err.code == "response_too_large" and not err.retriable
    assert f"{CAP + wire.ROW_ENVELOPE_BYTES:,} bytes" in err.message and rows[1].body is None


async def test_an_endless_results_file_stops_at_its_rows_bound() -> None:
    async with serve_app(_app()) as base, aiohttp.ClientSession() as session:
        api = open_batch_api(_cfg(base), session, base_url=base, api_key="sk-test-0123456789")

        async def read() -> list[Row]:
            return [r async for r in api.rows(_view("endless", 2))]

        with pytest.raises(BatchAPIError, match="results file over") as caught:
            await asyncio.wait_for(read(), 20)
    assert f"{2 * (CAP + wire.ROW_ENVELOPE_BYTES):,} bytes" in str(caught.value)

"""Gemini ``cachedContents`` answers are read under ``max_response_bytes``, as a chat answer is
(runner/providers/_wire.py, "Bounded"): an enormous or endless answer to a create, list, patch
or delete fails that call with a :class:`CacheAPIError` instead of being read whole into
memory (the group then goes with full prompts, as after any failed create)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from helpers import serve_app

from runner.config import RunConfig
from runner.explicit_cache import CacheAPIError
from runner.models import Job
from runner.providers import GeminiBackend, open_backend

CAP = 64 << 10


def _job() -> Job:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    return Job("q1", 1, msgs, 1, "g1", "doc", None, {}, 8001, 8000)


def _big(name: str) -> bytes:
    """A valid cachedContents resource of 1 MiB: the old code read and used it whole."""
    doc = {"name": name, "displayName": "runner:t:g " + "y" * (1 << 20), "ttl": "300s"}
    return orjson.dumps(doc)


def _app(*, endless: bool, declared: bool) -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        name = "cachedContents/" + request.match_info.get("name", "plain")
        if request.method == "GET":
            body = orjson.dumps({"cachedContents": [orjson.loads(_big(name))]})
        else:
            body = _big(name)
        if declared:  # a Content-Length over the cap: refused before anything is read
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)  # chunked: no declared length
        if endless:
            await resp.write(b'{"name": "cachedContents/plain", "displayName": "')
            while True:  # until the client hangs up
                await resp.write(b"z" * 65536)
        for i in range(0, len(body), 65536):
            await resp.write(body[i : i + 65536])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1beta/cachedContents", answer)
    app.router.add_get("/v1beta/cachedContents", answer)
    app.router.add_patch("/v1beta/cachedContents/{name}", answer)
    app.router.add_delete("/v1beta/cachedContents/{name}", answer)
    return app


@pytest.mark.parametrize(("endless", "declared"), [(False, False), (False, True), (True, False)])
async def test_every_cache_call_fails_cleanly_past_the_cap(endless: bool, declared: bool) -> None:
    async with serve_app(_app(endless=endless, declared=declared), "/v1beta") as base:
        cfg = RunConfig(
            provider="gemini", base_url=base, model="gemini-2.5-flash", max_response_bytes=CAP
        )
        async with open_backend(cfg, base_url=base, api_key="AIza-test-key-0123") as be:
            assert isinstance(be, GeminiBackend)
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "create": lambda: be.create_cache(_job(), ttl_s=300.0, display_name="runner:t:g"),
                "list": be.list_caches,
                "extend": lambda: be.extend_cache("cachedContents/plain", ttl_s=60.0),
                "delete": lambda: be.delete_cache("cachedContents/plain"),
            }
            for what, call in calls.items():
                with pytest.raises(CacheAPIError) as caught:
                    await asyncio.wait_for(call(), 20)
                err = caught.value
                assert f"over the limit of {CAP:,} bytes" in str(err), what
                assert not err.retriable and not err.missing, what
                assert err.status == 200, what

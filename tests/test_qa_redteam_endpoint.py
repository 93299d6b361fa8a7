"""Servers without ``GET /models`` (found by the red team).

An Express or Go shim that speaks Chat Completions but has no ``/models`` answers the probe
with its framework's 404 page ("Cannot GET /v1/models", "404 page not found"): the probe took
that for a wrong base URL and refused the run (exit 2) although every request would succeed.
It now asks the completion URL itself with an empty request before refusing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from helpers import mock_config, serve_app

from runner.api import run
from runner.errors import ConfigError


def no_models_app(*, chat: bool, page: str, ctype: str) -> web.Application:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text=page, content_type=ctype)

    async def chat_completions(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if "messages" not in body:  # what a real endpoint says to the probe's {}
            return web.json_response({"error": {"message": "messages is required"}}, status=400)
        message = {"role": "assistant", "content": "ok"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1}
        return web.json_response({"id": "c", "choices": [{"message": message}], "usage": usage})

    app = web.Application()
    if chat:
        app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


PAGES = {
    "express": ("<!DOCTYPE html><pre>Cannot GET /v1/models</pre>", "text/html"),
    "go": ("404 page not found\n", "text/plain"),
}


@pytest.fixture(params=sorted(PAGES))
async def shim_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    page, ctype = PAGES[request.param]
    async with serve_app(no_models_app(chat=True, page=page, ctype=ctype)) as url:
        yield url


@pytest.fixture(params=sorted(PAGES))
async def wrong_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    page, ctype = PAGES[request.param]
    async with serve_app(no_models_app(chat=False, page=page, ctype=ctype)) as url:
        yield url


def write_jobs(tmp: Path, n: int) -> Path:
    jobs = tmp / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "query": "hi"}) + b"\n" for i in range(n))
    )
    return jobs


async def test_a_server_without_models_that_chats_is_run(tmp_path: Path, shim_url: str) -> None:
    out = await run(write_jobs(tmp_path, 4), mock_config(tmp_path, shim_url))
    assert out.exit_code == 0 and out.summary["jobs"]["ok"] == 4


async def test_a_url_where_neither_answers_is_still_refused_before_anything_is_opened(
    tmp_path: Path, wrong_url: str
) -> None:
    with pytest.raises(ConfigError, match="does it end in /v1"):
        await run(write_jobs(tmp_path, 4), mock_config(tmp_path, wrong_url))
    assert not (tmp_path / "r.jsonl").exists()


# The probe read GET /models whole: a base URL on a server that streams without end there (or
# serves a huge file) filled memory until the probe's 30 s timeout. It reads at most the cap.
async def test_an_endless_models_answer_is_read_only_to_the_cap(tmp_path: Path) -> None:
    import resource

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        piece = b"0," * (1 << 18)
        await resp.write(b"[")
        while True:  # about 50 MB/s: bounded, so the old unbounded read cannot flood memory
            await resp.write(piece)
            await asyncio.sleep(0.01)

    async def chat(request: web.Request) -> web.Response:
        message = {"role": "assistant", "content": "ok"}
        return web.json_response({"choices": [{"message": message}]})

    app = web.Application()
    app.router.add_get("/v1/models", endless)
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as url:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cfg = mock_config(tmp_path, url, max_response_bytes=1 << 20, timeout=1.0)
        out = await run(write_jobs(tmp_path, 2), cfg)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert out.exit_code == 0 and out.summary["jobs"]["ok"] == 2
        assert grown_mb < 200, grown_mb

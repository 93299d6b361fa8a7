"""A request that could not be written on a kept-alive connection the server had closed.

Found against the real llama-server (llama.cpp): it closes the connection after every streamed
answer and sends no ``Connection: close``, so the next request put on that pooled connection
failed within a millisecond (``connection``): ``runner bench``, which sends each request once,
recorded 10-11 of 24 streamed requests as failed, and ``runner run`` retried them after a
backoff. aiohttp reports such a request as ``Can not write request body`` (a ClientOSError whose
cause is the connection reset): it never left, so it is sent again at once on another
connection and is not an attempt of the job. A request the server read before closing or
resetting may have been applied: that stays a failed attempt, retried and counted as before.

The failures are injected where aiohttp raises them (the ``post`` of the session), in front of
the real ``runner mock``, so that which failure happens is exact.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from helpers import mock_config

from runner.api import run
from runner.mock import MockConfig, serve
from runner.providers._http import MAX_RESENDS


def _not_written() -> BaseException:
    """What aiohttp 3.x raises for a body written on a connection already closing."""
    exc = aiohttp.ClientOSError(None, "Can not write request body for http://x/v1/chat")
    exc.__cause__ = aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    return exc


def _read_then_closed() -> BaseException:
    return aiohttp.ServerDisconnectedError()


class _Raises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def __aenter__(self) -> Any:
        raise self.exc

    async def __aexit__(self, *_: object) -> bool:
        return False


def _inject(monkeypatch: pytest.MonkeyPatch, plan: list[Callable[[], BaseException]]) -> None:
    """The next chat POSTs raise ``plan``'s failures in turn; then the real request goes."""
    real = aiohttp.ClientSession.post

    def post(self: aiohttp.ClientSession, url: Any, **kw: Any) -> Any:
        if plan and str(url).endswith("/chat/completions"):
            return _Raises(plan.pop(0)())
        return real(self, url, **kw)

    monkeypatch.setattr(aiohttp.ClientSession, "post", post)


async def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: list[Any], **kw: Any) -> Any:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id": "j{i}", "query": "q{i}"}}\n' for i in range(3)))
    _inject(monkeypatch, plan)
    async with serve(MockConfig(latency="zero", seed=3)) as url:
        config = mock_config(tmp_path, url, concurrency=1, stream=True, **kw)
        outcome = await run(jobs, config)
        async with aiohttp.ClientSession() as s, s.get(url.rsplit("/v1", 1)[0] + "/stats") as r:
            served = (await r.json())["requests"]
    records = [orjson.loads(x) for x in (tmp_path / "l.jsonl").read_bytes().splitlines()]
    return outcome, served, [r["attempts"] for r in records]


async def test_a_request_that_could_not_be_written_is_sent_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = [_not_written] * MAX_RESENDS
    outcome, served, attempts = await _run(tmp_path, monkeypatch, plan)
    assert not plan  # every injected failure was met
    assert outcome.exit_code == 0 and outcome.summary["retries"] == 0
    assert attempts == [1, 1, 1]  # not attempts of the job
    assert served == 3  # the server saw each job once


async def test_a_request_the_server_read_then_dropped_stays_a_counted_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = [_read_then_closed]
    outcome, _, attempts = await _run(tmp_path, monkeypatch, plan)
    assert outcome.exit_code == 0 and outcome.summary["retries"] == 1
    assert sorted(attempts) == [1, 1, 2]  # it may have been applied: an attempt, retried


async def test_the_resends_of_one_attempt_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a connection that never takes a request: each attempt sends 1 + MAX_RESENDS times, then
    # fails as a connection error for the retry policy
    plan = [_not_written] * (2 * (1 + MAX_RESENDS))
    outcome, _, attempts = await _run(tmp_path, monkeypatch, plan, max_attempts=2)
    assert not plan
    assert outcome.summary["jobs"]["failed"] == 1 and attempts[0] == 2
    assert outcome.summary["jobs"]["by_error"] == {"connection": 1}


async def test_a_reset_after_the_server_read_the_request_is_no_hidden_resend(
    tmp_path: Path,
) -> None:
    # A real server (no injection) that reads each request whole, then resets the connection
    # (SO_LINGER 0: a crashing worker, a proxy's reset). aiohttp reports that reset while it
    # awaits the answer as a ClientOSError caused by ConnectionResetError, like the unwritten
    # request; the server may have applied it, so each send is a counted attempt: it saw 8
    # requests for 2 recorded attempts when this was taken for a request that never left.
    seen = 0

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock-1"}]})

    async def chat(request: web.Request) -> web.Response:
        nonlocal seen
        await request.read()
        seen += 1
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    server = web.AppRunner(app)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    try:
        port = server.addresses[0][1]
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text('{"id": "j0", "query": "q"}\n')
        config = mock_config(tmp_path, f"http://127.0.0.1:{port}/v1", max_attempts=2)
        outcome = await run(jobs, config)
    finally:
        await server.cleanup()
    records = [orjson.loads(x) for x in (tmp_path / "l.jsonl").read_bytes().splitlines()]
    assert outcome.summary["jobs"]["by_error"] == {"connection": 1}
    assert [r["attempts"] for r in records] == [2]
    assert seen == 2  # the server saw exactly the attempts the record claims

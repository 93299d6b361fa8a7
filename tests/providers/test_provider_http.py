"""Plumbing shared by the backends: the session, key scrubbing, SSE framing."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from helpers import serve_app

from runner.config import Provider, RunConfig
from runner.models import ErrorInfo, Job
from runner.providers import AnthropicBackend, OpenAIBackend, open_backend
from runner.providers._http import error_from_exception, scrub

KEY = "sk-proj-AbCdEf0123456789xyz"


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {KEY}.",
        f"header was 'Authorization: Bearer {KEY}'",
        "Authorization: Bearer abc.def-ghi",
        'got {"x-api-key": "sk-ant-something-secret"}',
        "x-api-key=whatever-it-was",
    ],
)
def test_scrub_redacts_credentials(text: str) -> None:
    out = scrub(text, KEY)
    assert "[redacted]" in out
    for secret in (KEY, "abc.def-ghi", "sk-ant-something-secret", "whatever-it-was"):
        assert secret not in out


def test_scrub_redacts_a_key_of_any_shape() -> None:
    # self-hosted servers accept arbitrary keys that match no known credential pattern
    assert scrub("unknown key local-key-42 rejected", "local-key-42") == (
        "unknown key [redacted] rejected"
    )


def test_scrub_leaves_ordinary_text() -> None:
    text = "Rate limit reached for gpt-4.1-mini. Please try again in 644ms."
    assert scrub(text, KEY) == text
    assert scrub(text, None) == text


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read timeout"), "timeout"),
        (aiohttp.ServerDisconnectedError(), "connection"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "connection"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection"),
        (aiohttp.ClientOSError(32, "Broken pipe"), "connection"),
    ],
)
def test_transport_failures_are_retriable(exc: BaseException, code: str) -> None:
    info = error_from_exception(exc)
    assert isinstance(info, ErrorInfo)
    assert (info.code, info.retriable, info.fatal) == (code, True, False)


@pytest.mark.parametrize(
    ("provider", "cls"),
    [("openai", OpenAIBackend), ("mock", OpenAIBackend), ("anthropic", AnthropicBackend)],
)
async def test_open_backend_picks_protocol_and_sizes_pool(provider: Provider, cls: type) -> None:
    cfg = RunConfig(provider=provider, base_url="http://h/v1", concurrency=512, timeout=30.0)
    async with open_backend(cfg, base_url="http://h/v1", api_key=None) as backend:
        assert isinstance(backend, OpenAIBackend | AnthropicBackend) and type(backend) is cls
        session = backend._session
        assert session.connector is not None and session.connector.limit == 512
        assert session.timeout.total == 30.0
    assert session.closed


async def test_small_concurrency_keeps_default_pool() -> None:
    cfg = RunConfig(concurrency=4)
    async with open_backend(cfg, base_url="http://h/v1", api_key=None) as backend:
        assert isinstance(backend, OpenAIBackend)
        assert backend._session.connector is not None
        assert backend._session.connector.limit == 100


# -- SSE framing over a real socket -------------------------------------------------------------

BIG = "x" * 300_000  # longer than aiohttp's line-reader buffer


def _chunk(delta: dict[str, Any]) -> bytes:
    payload = {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data:" + orjson.dumps(payload) + b"\r\n\r\n"  # no space after the colon, CRLF


WIRE = b"".join(
    [
        b": comment\n\n",
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": BIG}),
        _chunk({"content": "end"}),
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
        b"data: [DONE]",  # the last line lacks its newline
    ]
)


@asynccontextmanager
async def _sse_server(wire: bytes, step: int) -> AsyncIterator[str]:
    """Serves ``wire`` as an event stream in writes of ``step`` bytes; yields the base URL."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        for i in range(0, len(wire), step):
            await resp.write(wire[i : i + step])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    async with serve_app(app) as url:
        yield url


@pytest.fixture
async def ragged_sse() -> AsyncIterator[str]:
    """Serves WIRE in pieces that split lines at odd places."""
    async with _sse_server(WIRE, 7919) as url:
        yield url


async def test_sse_lines_split_across_reads(ragged_sse: str) -> None:
    cfg = RunConfig(stream=True)
    async with open_backend(cfg, base_url=ragged_sse, api_key=None) as backend:
        att = await backend.send(_job(), cache_key=None)
    assert att.error is None
    assert att.body["choices"][0]["message"]["content"] == BIG + "end"
    assert att.usage is not None and att.usage.completion_tokens == 2
    assert att.ttft_ms is not None and att.itl_ms is not None and len(att.itl_ms) == 1


# SSE ends a line with CRLF, LF or a bare CR: one read may carry an event that ends in a bare CR
# and the next that ends in LF, so a line split on LF can still hold a whole line inside it.
MIXED_WIRE = (
    b"data:" + orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": "a"}}]})
    + b"\r\rdata:"
    + orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": "b"}}]})
    + b"\n\n"
    + b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\r\n\r\n'
    + b"data: [DONE]\n\n"
)  # fmt: skip


async def test_a_bare_cr_inside_a_read_of_lf_lines_ends_its_line() -> None:
    async with _sse_server(MIXED_WIRE, len(MIXED_WIRE)) as url:
        async with open_backend(RunConfig(stream=True), base_url=url, api_key=None) as backend:
            att = await backend.send(_job(), cache_key=None)
    assert att.error is None, att.error
    assert att.body["choices"][0]["message"]["content"] == "ab"
    assert att.usage is not None and att.usage.completion_tokens == 2


def _job() -> Job:
    return Job(
        custom_id="a",
        line=1,
        messages=({"role": "user", "content": "hi"},),
        prefix_len=0,
        group=None,
        cache_id=None,
        model=None,
        params={},
        prompt_chars=2,
        prefix_chars=0,
    )


@pytest.mark.parametrize("module", ["runner.providers", "runner.providers._http",
                                    "runner.providers.openai", "runner.providers.anthropic",
                                    "runner.providers.headers"])  # fmt: skip
def test_all_is_sorted_and_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    # isort order, as ruff keeps it: CONSTANTS, then Classes, then functions
    assert names == sorted(
        names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )
    for name in names:
        assert hasattr(mod, name), name

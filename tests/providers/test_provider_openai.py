"""The OpenAI backend against a loopback server that answers with recorded real-shaped bodies."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from providers.fake_provider import Fake, Handler

from runner.config import RunConfig
from runner.models import Attempt, ErrorInfo, Job, RateInfo, Usage
from runner.providers import OpenAIBackend, open_backend
from runner.providers.openai import OpenAIStream, classify_error, parse_usage

KEY = "sk-test-0123456789abcdefSECRET"


def job(
    messages: list[dict[str, Any]] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    model: str | None = None,
    prefix_len: int = 0,
) -> Job:
    msgs = tuple(messages or [{"role": "user", "content": "Hi"}])
    return Job(
        custom_id="j1",
        line=1,
        messages=msgs,
        prefix_len=prefix_len,
        group=None,
        cache_id=None,
        model=model,
        params=params or {},
        prompt_chars=10,
        prefix_chars=0,
    )


def config(**kw: Any) -> RunConfig:
    base: dict[str, Any] = {"provider": "openai", "base_url": "http://x", "model": "gpt-4.1-mini"}
    return RunConfig(**(base | kw))


async def send(
    fake: Fake,
    handler: Handler,
    the_job: Job | None = None,
    *,
    cfg: RunConfig | None = None,
    api_key: str | None = KEY,
    **kw: Any,
) -> Attempt:
    fake.handler = handler
    async with open_backend(cfg or config(), base_url=fake.url, api_key=api_key) as backend:
        return await backend.send(the_job or job(), cache_key=kw.pop("cache_key", None), **kw)


def reply(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Handler:
    data = body if isinstance(body, bytes) else orjson.dumps(body)

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=data, status=status, headers=headers, content_type="application/json"
        )

    return handle


def sse(events: list[bytes], *, cut: bool = False) -> Handler:
    """Stream ``events`` as SSE; ``cut`` drops the connection instead of ending the body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"x-request-id": "req_stream"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        for event in events:
            await resp.write(event)
        if cut:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    return handle


COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4.1-mini-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2006,
        "completion_tokens": 3,
        "total_tokens": 2009,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


USAGE_CHUNK = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {
                "prompt_tokens": 1100,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 1024},
            },
        }
    )
    + b"\n\n"
)
DONE = b"data: [DONE]\n\n"
STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({"content": "!"}),
    chunk({}, "stop"),
    USAGE_CHUNK,
    DONE,
]


# -- request building ---------------------------------------------------------------------------


async def test_request_body_and_headers(fake: Fake) -> None:
    cfg = config(
        params={"temperature": 0.2, "max_tokens": 100},
        headers={"OpenAI-Organization": "org-1"},
        prompt_cache_retention="24h",
    )
    the_job = job(params={"max_tokens": 7, "seed": 3})
    att = await send(fake, reply(COMPLETION), the_job, cfg=cfg, cache_key="grp:abc:0")
    assert att.error is None
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["OpenAI-Organization"] == "org-1"
    assert seen.json() == {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "max_tokens": 7,  # the job's params win over the config's
        "seed": 3,
        "prompt_cache_key": "grp:abc:0",
        "prompt_cache_retention": "24h",
    }


async def test_request_without_key_or_cache_key(fake: Fake) -> None:
    await send(fake, reply(COMPLETION), job(model="other-model"), api_key=None)
    (seen,) = fake.seen
    assert "Authorization" not in seen.headers
    assert seen.json() == {"model": "other-model", "messages": [{"role": "user", "content": "Hi"}]}


async def test_streaming_request_asks_for_usage(fake: Fake) -> None:
    the_job = job(params={"stream": True, "stream_options": {"continuous_usage_stats": False}})
    await send(fake, sse(STREAM), the_job)
    body = fake.seen[0].json()
    assert body["stream"] is True
    assert body["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}


async def test_config_stream_sets_stream_options(fake: Fake) -> None:
    await send(fake, sse(STREAM), cfg=config(stream=True))
    body = fake.seen[0].json()
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


# -- responses ----------------------------------------------------------------------------------


async def test_json_success(fake: Fake) -> None:
    headers = {
        "x-request-id": "req_123",
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
    }
    calls: list[int] = []
    att = await send(
        fake, reply(COMPLETION, headers=headers), on_first_byte=lambda: calls.append(1)
    )
    assert calls == [1]
    assert att.status == 200 and att.error is None
    assert att.raw == orjson.dumps(COMPLETION)
    assert att.body == COMPLETION
    assert att.request_id == "req_123"
    assert att.usage == Usage(prompt_tokens=2006, cached_tokens=1920, completion_tokens=3)
    assert att.rate == RateInfo(limit_requests=500, remaining_requests=499, reset_requests_s=0.12)
    assert att.latency_ms > 0 and att.ttft_ms is None and att.itl_ms is None


async def test_request_id_falls_back_to_body_id(fake: Fake) -> None:
    att = await send(fake, reply(COMPLETION))
    assert att.request_id == COMPLETION["id"]
    assert att.rate is None


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # OpenAI
        (COMPLETION["usage"], Usage(2006, 1920, 0, 3)),
        (
            {
                "prompt_tokens": 5000,
                "completion_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4096},
            },
            Usage(5000, 0, 4096, 10),
        ),
        # vLLM with --enable-prompt-tokens-details, and without it
        (
            {
                "prompt_tokens": 40,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 32},
            },
            Usage(40, 32, 0, 5),
        ),
        (
            {"prompt_tokens": 40, "completion_tokens": 5, "prompt_tokens_details": None},
            Usage(40, None, 0, 5),
        ),
        # SGLang omits cached_tokens when zero: unknown, not zero
        (
            {"prompt_tokens": 40, "completion_tokens": 5, "prompt_tokens_details": {}},
            Usage(40, None, 0, 5),
        ),
        ({"prompt_tokens": 40, "completion_tokens": 5}, Usage(40, None, 0, 5)),
        # DeepSeek
        (
            {
                "prompt_tokens": 1500,
                "completion_tokens": 20,
                "prompt_cache_hit_tokens": 1280,
                "prompt_cache_miss_tokens": 220,
            },
            Usage(1500, 1280, 0, 20),
        ),
        (
            {"completion_tokens": 20, "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 64},
            Usage(64, 0, 0, 20),
        ),
        (None, None),
        ("weird", None),
    ],
)
def test_usage_normalisation(usage: Any, expected: Usage | None) -> None:
    assert parse_usage(usage) == expected


async def test_stream_assembled(fake: Fake) -> None:
    calls: list[int] = []
    att = await send(
        fake, sse(STREAM), cfg=config(stream=True), on_first_byte=lambda: calls.append(1)
    )
    assert calls == [1]
    assert att.error is None and att.status == 200
    assert att.raw == orjson.dumps(att.body)  # the key check's encoding, reused by the result
    assert att.request_id == "req_stream"
    assert att.usage == Usage(prompt_tokens=1100, cached_tokens=1024, completion_tokens=3)
    assert att.body["object"] == "chat.completion"
    assert att.body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
    ]
    assert att.body["usage"]["prompt_tokens"] == 1100
    assert att.ttft_ms is not None and att.ttft_ms <= att.latency_ms
    assert att.itl_ms is not None and len(att.itl_ms) == 2  # three content chunks


async def test_stream_ignored_by_server_falls_back_to_json(fake: Fake) -> None:
    att = await send(fake, reply(COMPLETION), cfg=config(stream=True))
    assert att.error is None and att.body == COMPLETION and att.ttft_ms is None


def feed(parser: OpenAIStream, events: list[tuple[float, bytes]]) -> None:
    for now, event in events:
        for line in event.split(b"\n"):
            if line:
                parser.feed(line, now)


def test_ttft_skips_role_only_chunk() -> None:
    parser = OpenAIStream(t0=10.0)
    feed(
        parser,
        [
            (10.5, b": keep-alive\n\n"),
            (11.0, chunk({"role": "assistant", "content": ""})),
            (13.0, chunk({"reasoning_content": "thinking"})),
            (13.5, chunk({"content": "A"})),
            (15.0, chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]})),
            (15.0, chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]})),
            (16.0, chunk({}, "tool_calls")),
            (16.0, DONE),
        ],
    )
    assert parser.ttft_ms == pytest.approx(3000.0)
    assert parser.itl_ms == pytest.approx([500.0, 1500.0, 0.0])
    assert parser.done and parser.error is None
    body, usage = parser.result()
    assert usage is None
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "A",
        "reasoning_content": "thinking",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
        ],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_without_content_has_no_ttft() -> None:
    parser = OpenAIStream(t0=0.0)
    feed(parser, [(1.0, chunk({"role": "assistant", "content": ""})), (2.0, chunk({}, "length"))])
    assert parser.ttft_ms is None and parser.itl_ms == []


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        ({"message": "The server had an error", "type": "server_error"}, True),
        ({"message": "Overloaded", "type": "overloaded_error"}, True),
        ({"message": "something broke"}, True),
        ({"message": "bad schema", "type": "invalid_request_error"}, False),
    ],
)
async def test_error_inside_stream(fake: Fake, error: dict[str, Any], retriable: bool) -> None:
    events = [chunk({"content": "Hi"}), b"data: " + orjson.dumps({"error": error}) + b"\n\n"]
    att = await send(fake, sse(events), cfg=config(stream=True))
    assert att.error is not None
    assert (att.error.code, att.error.retriable) == ("stream_error", retriable)
    assert error["message"] in att.error.message
    assert att.status == 200 and att.ttft_ms is not None


async def test_stream_ending_before_its_finish_reason_is_a_connection_error(fake: Fake) -> None:
    att = await send(fake, sse(STREAM[:4]), cfg=config(stream=True))  # clean end, no finish
    assert att.error is not None
    assert (att.error.code, att.error.retriable) == ("connection", True)
    assert "[DONE]" in att.error.message


async def test_stream_without_done_after_every_finish_reason_is_whole(fake: Fake) -> None:
    """Some servers and proxies end the body after the usage chunk and never send [DONE]."""
    att = await send(fake, sse(STREAM[:-1]), cfg=config(stream=True))
    assert att.error is None
    assert att.body["choices"][0]["message"]["content"] == "Hello!"
    assert att.usage == Usage(prompt_tokens=1100, cached_tokens=1024, completion_tokens=3)


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("end", [b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [7, 1 << 16])  # a CR or CRLF split across reads, or not
async def test_stream_with_crlf_or_cr_line_ends(fake: Fake, end: bytes, size: int) -> None:
    """SSE allows CRLF and bare CR line ends beside LF; each must give the same body."""
    want = await send(fake, sse(STREAM), cfg=config(stream=True))
    data = b"".join(STREAM).replace(b"\n", end)
    att = await send(fake, sse(_pieces(data, size)), cfg=config(stream=True))
    assert att.error is None and want.error is None
    assert att.body == want.body and att.usage == want.usage


@pytest.mark.parametrize("size", [5, 1 << 16])
async def test_stream_event_data_over_several_lines(fake: Fake, size: int) -> None:
    """One event's data may span several ``data:`` lines, joined with newlines."""
    pretty = orjson.dumps(orjson.loads(STREAM[1][6:]), option=orjson.OPT_INDENT_2)
    multi = b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"
    events = [STREAM[0], multi, *STREAM[2:]]
    att = await send(fake, sse(_pieces(b"".join(events), size)), cfg=config(stream=True))
    assert att.error is None
    assert att.body["choices"][0]["message"]["content"] == "Hello!"


@pytest.mark.parametrize("tail", [b"\n", b""])  # ended by its blank line, or by the body's end
async def test_stream_event_that_never_parses_is_bad_response(fake: Fake, tail: bytes) -> None:
    events = [STREAM[0], b"data: {not json\ndata: still not}\n" + tail, *STREAM[1:]]
    if not tail:
        events = events[:2]
    att = await send(fake, sse(events), cfg=config(stream=True))
    assert att.error is not None
    assert (att.error.code, att.error.message) == ("bad_response", "invalid JSON in a stream event")


async def test_stream_cut_midway(fake: Fake) -> None:
    att = await send(fake, sse(STREAM[:3], cut=True), cfg=config(stream=True))
    assert att.error is not None
    assert (att.error.code, att.error.retriable) == ("connection", True)


async def test_json_body_after_a_byte_order_mark(fake: Fake) -> None:
    """RFC 8259 lets a parser ignore a UTF-8 BOM; the result line must not carry it."""
    att = await send(fake, reply(b"\xef\xbb\xbf" + orjson.dumps(COMPLETION)))
    assert att.error is None and att.body == COMPLETION
    assert att.raw == orjson.dumps(COMPLETION)  # the line written, without the BOM


async def test_truncated_json_is_bad_response(fake: Fake) -> None:
    att = await send(fake, reply(orjson.dumps(COMPLETION)[:50]))
    assert att.status == 200 and att.error is not None
    assert (att.error.code, att.error.retriable) == ("bad_response", True)
    assert att.body is None and att.usage is None


# -- errors -------------------------------------------------------------------------------------


def err(message: str, etype: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


RATE_MSG = (
    "Rate limit reached for gpt-4.1-mini in organization org-x on tokens per min (TPM): "
    "Limit 200000, Used 199500, Requested 1200. Please try again in 644ms."
)
RESETS = {
    "x-ratelimit-remaining-requests": "10",
    "x-ratelimit-remaining-tokens": "0",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "2s81ms",
}


AUTH = ("auth", False, True, None)
QUOTA = ("insufficient_quota", False, True, None)


def limited(delay: float | None) -> tuple[str, bool, bool, float | None]:
    return ("rate_limited", True, False, delay)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (401, err("Incorrect API key", "invalid_request_error", "invalid_api_key"), {}, AUTH),
        (403, err("Country not supported"), {}, AUTH),
        (429, err("You exceeded your current quota", "insufficient_quota"), {}, QUOTA),
        (429, err("quota", None, "insufficient_quota"), {"retry-after": "1"}, QUOTA),
        (429, err(RATE_MSG, "tokens", "rate_limit_exceeded"),
         {"retry-after-ms": "250", "retry-after": "1", **RESETS}, limited(0.25)),
        (429, err(RATE_MSG, "tokens"), {"retry-after": "3", **RESETS}, limited(3.0)),
        # no retry-after: the reset of the limit the error names
        (429, err(RATE_MSG, "tokens", "rate_limit_exceeded"), RESETS, limited(2.081)),
        (429, err("Rate limit reached on requests per min (RPM)", "requests"), RESETS,
         limited(1.0)),
        # unnamed: the exhausted one
        (429, err("slow down"), RESETS, limited(2.081)),
        # nothing but the hint in the message
        (429, err(RATE_MSG, "tokens", "rate_limit_exceeded"), {}, limited(0.644)),
        (429, err("Please try again in 1m30.5s."), {}, limited(90.5)),
        (429, err("Please try again in 20 seconds."), {}, limited(20.0)),
        (429, err("Too many requests"), {}, limited(None)),
        (408, err("Request timed out"), {}, ("timeout", True, False, None)),
        (409, err("Conflict"), {}, ("http_409", True, False, None)),
        (400, err("Invalid 'messages'", "invalid_request_error"), {},
         ("http_4xx", False, False, None)),
        (404, err("The model `x` does not exist"), {}, ("http_4xx", False, False, None)),
        (422, "Unprocessable", {}, ("http_4xx", False, False, None)),
        (500, err("The server had an error", "server_error"), {}, ("http_5xx", True, False, None)),
        (502, "<html>Bad gateway</html>", {}, ("http_5xx", True, False, None)),
        (503, err("Service unavailable"), {"retry-after": "5"}, ("http_5xx", True, False, 5.0)),
        (529, err("Overloaded"), {}, ("overloaded", True, False, None)),
        # x-should-retry overrides either way, but never makes a fatal error retriable
        (400, err("retry me"), {"x-should-retry": "true"}, ("http_4xx", True, False, None)),
        (500, err("do not"), {"x-should-retry": "false"}, ("http_5xx", False, False, None)),
        (429, err("limit"), {"x-should-retry": "false"}, ("rate_limited", False, False, None)),
        (401, err("bad key"), {"x-should-retry": "true"}, AUTH),
    ],
)  # fmt: skip
def test_classify(
    status: int,
    body: Any,
    headers: dict[str, str],
    expected: tuple[str, bool, bool, float | None],
) -> None:
    got = classify_error(status, body, CIMultiDict(headers))
    code, retriable, fatal, delay = expected
    assert (got.code, got.retriable, got.fatal) == (code, retriable, fatal)
    if delay is None:
        assert got.retry_after_s is None
    else:
        assert got.retry_after_s == pytest.approx(delay)
    assert got.message.startswith(f"HTTP {status}")
    provider_text = body if isinstance(body, str) else body["error"]["message"]
    assert provider_text[:40] in got.message


async def test_http_error_end_to_end(fake: Fake) -> None:
    calls: list[int] = []
    body = err(RATE_MSG, "tokens", "rate_limit_exceeded")
    handler = reply(body, 429, {"retry-after-ms": "644", "x-request-id": "req_429"})
    att = await send(fake, handler, on_first_byte=lambda: calls.append(1))
    assert calls == []  # only a 2xx releases followers
    assert att.status == 429 and att.body == body and att.usage is None
    assert att.request_id == "req_429"
    assert att.error == ErrorInfo("rate_limited", f"HTTP 429: {RATE_MSG}", True, 0.644)


async def test_key_never_leaks_from_echoed_error(fake: Fake) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers["Authorization"]
        message = f"Incorrect API key provided: {KEY}. You sent header Authorization: {auth}"
        return web.json_response(
            err(message, "invalid_request_error", "invalid_api_key"), status=401
        )

    att = await send(fake, echo)
    assert att.error is not None and att.error.code == "auth" and att.error.fatal
    assert "Incorrect API key provided" in att.error.message
    assert KEY not in repr(att)
    assert KEY[:12] not in att.error.message


@pytest.mark.parametrize("key", ["k", "EMPTY"])
async def test_placeholder_key_leaves_bodies_alone(fake: Fake, key: str) -> None:
    # local servers take any key; a one-letter key must not be "redacted" out of the JSON
    att = await send(fake, reply(COMPLETION), api_key=key)
    assert att.raw == orjson.dumps(COMPLETION) and att.body == COMPLETION
    assert att.usage is not None and att.usage.prompt_tokens == 2006
    body = err(RATE_MSG, "tokens", "rate_limit_exceeded")
    att = await send(fake, reply(body, 429), api_key=key)
    assert att.body == body
    assert att.error is not None and att.error.message == f"HTTP 429: {RATE_MSG}"


async def test_echoed_key_removed_from_error_body_keeping_json(fake: Fake) -> None:
    body = {"error": {"message": f"bad key {KEY}", "type": "invalid_request_error"},
            "echo": {"headers": {"Authorization": f"Bearer {KEY}"}}}  # fmt: skip
    att = await send(fake, reply(body, 401))
    assert isinstance(att.body, dict) and att.raw is not None
    assert orjson.loads(att.raw) == att.body
    assert att.body["echo"]["headers"]["Authorization"] == "Bearer [redacted]"
    assert KEY not in repr(att)


async def test_echoed_key_at_the_message_cut_leaves_no_fragment(fake: Fake) -> None:
    key = "local-secret-0123456789abcdef"  # matches no credential pattern
    text = "x" * 270 + key + " rejected"  # the key straddles the message length limit

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=403)

    att = await send(fake, plain, api_key=key)
    assert att.error is not None and att.error.code == "auth"
    assert "xxxx" in att.error.message and "local-se" not in att.error.message
    assert att.body is None and att.raw is None


async def test_timeout(fake: Fake) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await fake.release.wait()
        return web.Response()

    att = await send(fake, stall, cfg=config(timeout=0.2))
    assert att.status is None and att.error is not None
    assert (att.error.code, att.error.retriable) == ("timeout", True)


async def test_connection_reset(fake: Fake) -> None:
    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        await fake.release.wait()
        return web.Response()

    att = await send(fake, reset)
    assert att.status is None and att.error is not None
    assert (att.error.code, att.error.retriable) == ("connection", True)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_connection_refused() -> None:
    async with open_backend(config(), base_url=closed_port_url(), api_key=KEY) as backend:
        att = await backend.send(job(), cache_key=None)
        probe = await backend.probe()
    assert att.status is None and att.error is not None
    assert (att.error.code, att.error.retriable) == ("connection", True)
    assert probe is not None and probe.code == "connection"


async def test_cancellation_propagates(fake: Fake) -> None:
    entered = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        entered.set()
        await fake.release.wait()
        return web.Response()

    fake.handler = stall
    async with open_backend(config(), base_url=fake.url, api_key=KEY) as backend:
        task = asyncio.create_task(backend.send(job(), cache_key=None))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- probe and session --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(200, None), (404, None), (500, None), (401, "auth"), (403, "auth")]
)
async def test_probe(fake: Fake, status: int, code: str | None) -> None:
    fake.handler = reply(err(f"status {status} {KEY}"), status)
    async with open_backend(config(), base_url=fake.url + "/", api_key=KEY) as backend:
        got = await backend.probe()
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("GET", "/v1/models")
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    if code is None:
        assert got is None
    else:
        assert got is not None and (got.code, got.fatal, got.retriable) == (code, True, False)
        assert KEY not in got.message


@pytest.mark.parametrize("provider", ["openai", "mock"])
async def test_open_backend_speaks_openai_and_closes(provider: str) -> None:
    async with open_backend(config(provider=provider), base_url="http://h/v1", api_key=None) as b:
        assert isinstance(b, OpenAIBackend)
        session = b._session
        assert not session.closed
    assert session.closed

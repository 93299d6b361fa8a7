"""The Anthropic backend against a loopback server that answers with recorded real-shaped bodies."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from providers.fake_provider import Fake, Handler

from runner.config import RunConfig
from runner.models import Attempt, Job, Usage
from runner.providers import AnthropicBackend, open_backend
from runner.providers.anthropic import AnthropicStream, classify_error, parse_usage

KEY = "sk-ant-api03-test-KEY-0123456789"

SYSTEM = "You are an expert legal analyst."
SHOTS: list[dict[str, Any]] = [
    {"role": "user", "content": "Example question"},
    {"role": "assistant", "content": [{"type": "text", "text": "Example answer"}]},
]
QUERY: dict[str, Any] = {"role": "user", "content": "Analyze Section 4.2.", "name": "dropped"}


def job(
    messages: list[dict[str, Any]] | None = None,
    *,
    prefix_len: int = 0,
    params: Mapping[str, Any] | None = None,
) -> Job:
    return Job(
        custom_id="q-17",
        line=1,
        messages=tuple(messages or [QUERY]),
        prefix_len=prefix_len,
        group="g" if prefix_len else None,
        cache_id="legal-v2" if prefix_len else None,
        model=None,
        params=params or {},
        prompt_chars=100,
        prefix_chars=50,
    )


def config(**kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "provider": "anthropic",
        "base_url": "http://x",
        "model": "claude-sonnet-4-5",
    }
    return RunConfig(**(base | kw))


MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Section 4.2 allocates..."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2048,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 12,
        "service_tier": "standard",
    },
}


def reply(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handle


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sse(events: list[bytes]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"request-id": "req_011CStream"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        for e in events:
            await resp.write(e)
        await resp.write_eof()
        return resp

    return handle


def delta(index: int, kind: str, **fields: Any) -> bytes:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}},
    )


START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_stream",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 30,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        },
    },
)
STREAM = [
    START,
    event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    event("ping", {"type": "ping"}),
    delta(0, "text_delta", text="Hello"),
    delta(0, "text_delta", text=" world"),
    event("content_block_stop", {"type": "content_block_stop", "index": 0}),
    event(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
        },
    ),
    delta(1, "input_json_delta", partial_json='{"section": '),
    delta(1, "input_json_delta", partial_json='"4.2"}'),
    event("content_block_stop", {"type": "content_block_stop", "index": 1}),
    event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
    ),
    event("message_stop", {"type": "message_stop"}),
]


async def send(
    fake: Fake,
    handler: Handler,
    the_job: Job | None = None,
    *,
    cfg: RunConfig | None = None,
    **kw: Any,
) -> Attempt:
    fake.handler = handler
    async with open_backend(cfg or config(), base_url=fake.url, api_key=KEY) as backend:
        assert isinstance(backend, AnthropicBackend)
        return await backend.send(the_job or job(), cache_key=kw.pop("cache_key", None), **kw)


# -- request building ---------------------------------------------------------------------------


async def test_request_translation(fake: Fake) -> None:
    cfg = config(
        params={"temperature": 0.1, "seed": 1, "n": 1},
        headers={"anthropic-beta": "extended-cache-ttl-2025-04-11"},
        cache="none",
    )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        QUERY,
    ]
    params = {"max_completion_tokens": 300, "stop": "END", "stream_options": {}, "top_k": 5}
    att = await send(fake, reply(MESSAGE), job(messages, params=params), cfg=cfg)
    assert att.error is None
    (seen,) = fake.seen
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "extended-cache-ttl-2025-04-11"
    assert seen.headers["content-type"] == "application/json"
    assert "Authorization" not in seen.headers
    assert seen.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": [{"type": "text", "text": SYSTEM}, {"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "Analyze Section 4.2."}],
        "temperature": 0.1,
        "top_k": 5,
        "stop_sequences": ["END"],
    }


@pytest.mark.parametrize(
    ("params", "cfg_params", "expected"),
    [({}, {}, 1024), ({"max_tokens": 50}, {"max_tokens": 80}, 50), ({}, {"max_tokens": 80}, 80)],
)
async def test_max_tokens_always_sent(
    fake: Fake, params: dict[str, Any], cfg_params: dict[str, Any], expected: int
) -> None:
    await send(fake, reply(MESSAGE), job(params=params), cfg=config(params=cfg_params))
    assert fake.seen[0].json()["max_tokens"] == expected


CC = {"type": "ephemeral"}


async def test_breakpoint_on_last_system_block_when_prefix_is_system(fake: Fake) -> None:
    messages = [{"role": "system", "content": SYSTEM}, QUERY]
    await send(fake, reply(MESSAGE), job(messages, prefix_len=1))
    body = fake.seen[0].json()
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": CC}]
    assert body["messages"] == [{"role": "user", "content": "Analyze Section 4.2."}]


async def test_breakpoint_on_last_prefix_message(fake: Fake) -> None:
    messages = [{"role": "system", "content": SYSTEM}, *SHOTS, QUERY]
    the_job = job(messages, prefix_len=3)
    await send(fake, reply(MESSAGE), the_job, cfg=config(anthropic_cache_ttl="1h"))
    body = fake.seen[0].json()
    assert body["system"] == [{"type": "text", "text": SYSTEM}]
    cc = {"type": "ephemeral", "ttl": "1h"}
    assert body["messages"] == [
        {"role": "user", "content": "Example question"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Example answer", "cache_control": cc}],
        },
        {"role": "user", "content": "Analyze Section 4.2."},
    ]
    # the job's own message dicts are shared, never modified
    assert SHOTS[1]["content"] == [{"type": "text", "text": "Example answer"}]


async def test_breakpoint_converts_string_content(fake: Fake) -> None:
    messages = [SHOTS[0], QUERY]
    await send(fake, reply(MESSAGE), job(messages, prefix_len=1))
    body = fake.seen[0].json()
    assert body["messages"][0] == {
        "role": "user",
        "content": [{"type": "text", "text": "Example question", "cache_control": CC}],
    }
    assert body["messages"][1]["content"] == "Analyze Section 4.2."


@pytest.mark.parametrize(
    ("cache", "cache_key", "prefix_len", "marked"),
    [
        ("warm", None, 1, True),
        ("none", "grp-1", 1, True),
        ("none", None, 1, False),
        ("warm", "grp-1", 0, False),
    ],
)
async def test_breakpoint_only_when_caching(
    fake: Fake, cache: str, cache_key: str | None, prefix_len: int, marked: bool
) -> None:
    messages = [{"role": "system", "content": SYSTEM}, QUERY]
    the_job = job(messages, prefix_len=prefix_len)
    await send(fake, reply(MESSAGE), the_job, cfg=config(cache=cache), cache_key=cache_key)
    body = fake.seen[0].json()
    assert ("cache_control" in body["system"][0]) is marked
    assert "prompt_cache_key" not in body


async def test_prewarm(fake: Fake) -> None:
    messages = [{"role": "system", "content": SYSTEM}, QUERY]
    prewarmed = {**MESSAGE, "content": [], "stop_reason": "max_tokens"}
    att = await send(
        fake, reply(prewarmed), job(messages, prefix_len=1), cfg=config(stream=True), prewarm=True
    )
    body = fake.seen[0].json()
    assert body["max_tokens"] == 0 and "stream" not in body
    assert body["system"][0]["cache_control"] == CC
    assert att.error is None and att.body["content"] == []


async def test_stream_flag(fake: Fake) -> None:
    await send(fake, sse(STREAM), job(params={"stream": True}))
    assert fake.seen[0].json()["stream"] is True


# -- responses ----------------------------------------------------------------------------------


async def test_json_success(fake: Fake) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    headers = {
        "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-requests-reset": reset,
    }
    calls: list[int] = []
    att = await send(fake, reply(MESSAGE, headers=headers), on_first_byte=lambda: calls.append(1))
    assert calls == [1]
    assert att.status == 200 and att.error is None
    assert att.body == MESSAGE and att.raw is not None and orjson.loads(att.raw) == MESSAGE
    assert att.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert att.usage == Usage(
        prompt_tokens=21 + 2048, cached_tokens=2048, cache_write_tokens=0, completion_tokens=12
    )
    assert att.rate is not None and att.rate.remaining_requests == 3999


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (MESSAGE["usage"], Usage(2069, 2048, 0, 12)),
        (
            {
                "input_tokens": 5,
                "cache_creation_input_tokens": 3000,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
            Usage(3005, 0, 3000, 0),
        ),
        # a compatible server that does not report cache reads: unknown, not zero
        ({"input_tokens": 40, "output_tokens": 2}, Usage(40, None, 0, 2)),
        (None, None),
    ],
)
def test_usage_normalisation(usage: Any, expected: Usage | None) -> None:
    assert parse_usage(usage) == expected


async def test_stream_assembled(fake: Fake) -> None:
    att = await send(fake, sse(STREAM), cfg=config(stream=True))
    assert att.error is None and att.status == 200
    assert att.request_id == "req_011CStream"
    assert att.usage == Usage(
        prompt_tokens=2030, cached_tokens=0, cache_write_tokens=2000, completion_tokens=15
    )
    assert att.body["id"] == "msg_stream"
    assert att.body["stop_reason"] == "tool_use"
    assert att.body["content"] == [
        {"type": "text", "text": "Hello world"},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"section": "4.2"}},
    ]
    assert att.ttft_ms is not None and att.ttft_ms <= att.latency_ms
    assert att.itl_ms is not None and len(att.itl_ms) == 3  # four deltas


def test_ttft_at_first_content_block_delta() -> None:
    parser = AnthropicStream(t0=100.0)
    timeline = [
        (100.2, START),
        (100.3, STREAM[1]),
        (100.4, STREAM[2]),  # ping
        (101.0, STREAM[3]),
        (101.25, STREAM[4]),
        *((101.5, e) for e in STREAM[5:]),
    ]
    for now, raw in timeline:
        for line in raw.split(b"\n"):
            if line:
                parser.feed(line, now)
    assert parser.ttft_ms == pytest.approx(1000.0)
    assert parser.itl_ms == pytest.approx([250.0, 250.0, 0.0])
    assert parser.done and parser.error is None


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, True),
        ({"type": "api_error", "message": "Internal server error"}, True),
        ({"type": "rate_limit_error", "message": "Rate limited"}, True),
        ({"type": "invalid_request_error", "message": "prompt is too long"}, False),
    ],
)
async def test_error_event_in_stream(fake: Fake, error: dict[str, Any], retriable: bool) -> None:
    events = [*STREAM[:4], event("error", {"type": "error", "error": error})]
    att = await send(fake, sse(events), cfg=config(stream=True))
    assert att.status == 200 and att.error is not None
    assert (att.error.code, att.error.retriable) == ("stream_error", retriable)
    assert error["message"] in att.error.message


async def test_stream_without_message_stop(fake: Fake) -> None:
    att = await send(fake, sse(STREAM[:-1]), cfg=config(stream=True))
    assert att.error is not None
    assert (att.error.code, att.error.retriable) == ("connection", True)
    assert "message_stop" in att.error.message


# -- errors -------------------------------------------------------------------------------------


def err(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (529, err("overloaded_error", "Overloaded"), {}, ("overloaded", True, False, None)),
        (529, err("overloaded_error", "Overloaded"), {"retry-after": "4"},
         ("overloaded", True, False, 4.0)),
        (429, err("rate_limit_error", "Number of request tokens has exceeded your limit"),
         {"retry-after": "12"}, ("rate_limited", True, False, 12.0)),
        (429, err("rate_limit_error", "This request would exceed the rate limit for your "
                  "organization of 50,000 input tokens per minute"),
         {"anthropic-ratelimit-input-tokens-remaining": "0",
          "anthropic-ratelimit-input-tokens-reset": "2020-01-01T00:00:00Z",
          "anthropic-ratelimit-requests-remaining": "3",
          "anthropic-ratelimit-requests-reset": "2020-01-01T00:00:00Z"},
         ("rate_limited", True, False, 0.0)),
        (401, err("authentication_error", "invalid x-api-key"), {}, ("auth", False, True, None)),
        (403, err("permission_error", "no access to model"), {}, ("auth", False, True, None)),
        (400, err("invalid_request_error", "Your credit balance is too low to access the API"), {},
         ("insufficient_quota", False, True, None)),
        (402, err("billing_error", "payment required"), {},
         ("insufficient_quota", False, True, None)),
        (400, err("invalid_request_error", "max_tokens: Field required"), {},
         ("http_4xx", False, False, None)),
        (413, err("request_too_large", "Request exceeds the maximum size"), {},
         ("http_4xx", False, False, None)),
        (500, err("api_error", "Internal server error"), {}, ("http_5xx", True, False, None)),
        (500, err("api_error", "no"), {"x-should-retry": "false"},
         ("http_5xx", False, False, None)),
        (408, err("timeout_error", "Request timeout"), {}, ("timeout", True, False, None)),
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
    assert (got.code, got.retriable, got.fatal, got.retry_after_s) == (
        code,
        retriable,
        fatal,
        delay,
    )
    assert body["error"]["message"][:40] in got.message


async def test_echoed_key_is_scrubbed(fake: Fake) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        sent = request.headers["x-api-key"]
        body = err("authentication_error", f"invalid x-api-key: {sent}")
        return web.json_response(body, status=401, headers={"request-id": "req_401"})

    att = await send(fake, echo)
    assert att.error is not None and att.error.code == "auth" and att.error.fatal
    assert "invalid x-api-key" in att.error.message
    assert KEY not in repr(att)
    assert att.request_id == "req_401"


async def test_probe_uses_anthropic_auth(fake: Fake) -> None:
    fake.handler = reply({"data": [], "has_more": False})
    async with open_backend(config(), base_url=fake.url, api_key=KEY) as backend:
        assert await backend.probe() is None
    (seen,) = fake.seen
    assert seen.path == "/v1/models" and seen.headers["x-api-key"] == KEY


async def test_cancellation_propagates(fake: Fake) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        entered.set()
        await release.wait()
        return web.Response()

    fake.handler = stall
    async with open_backend(config(), base_url=fake.url, api_key=KEY) as backend:
        task = asyncio.create_task(backend.send(job(), cache_key=None))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    release.set()

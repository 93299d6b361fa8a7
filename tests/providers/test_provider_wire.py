"""What may reach an output from the wire: one line, no key, bounded (``runner.providers._wire``).

Each case answers from a loopback server the way a real one legally may: Go's json.Encoder and
Flask's jsonify end a body with a newline, others pretty-print or use CRLF; a hostile or broken
server echoes the key in every place it can, redirects elsewhere, or never stops sending.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from providers.fake_provider import Fake, Handler, serve_fake

from runner.config import Provider, RunConfig
from runner.models import Attempt, Job
from runner.providers import open_backend
from runner.providers._wire import KeyGuard

KEY = "sk-test-0123456789/abcdef+SECRET"  # a "/" so that the \\/ escape can hide it
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi.\nBye."}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}
ERROR = {"error": {"message": "Overloaded, try again", "type": "server_error", "code": None}}


def job() -> Job:
    msgs = ({"role": "user", "content": "Hi"},)
    return Job("j1", 1, msgs, 0, None, None, None, {}, 2, 0)


def config(provider: Provider = "openai", **kw: Any) -> RunConfig:
    return RunConfig(provider=provider, base_url="http://x", model="m", **kw)


async def send(
    fake: Fake, handler: Handler, *, provider: Provider = "openai", **kw: Any
) -> Attempt:
    fake.handler = handler
    async with open_backend(config(provider, **kw), base_url=fake.url, api_key=KEY) as backend:
        return await asyncio.wait_for(backend.send(job(), cache_key=None), 30)


def raw_reply(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=data, status=status, headers=headers, content_type="application/json"
        )

    return handle


SHAPES = {
    "go_encoder": lambda obj: orjson.dumps(obj) + b"\n",
    "pretty": lambda obj: orjson.dumps(obj, option=orjson.OPT_INDENT_2),
    "crlf": lambda obj: orjson.dumps(obj, option=orjson.OPT_INDENT_2).replace(b"\n", b"\r\n"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(("status", "obj"), [(200, ANSWER), (503, ERROR)])
async def test_body_with_line_breaks_becomes_one_line(
    fake: Fake, shape: str, status: int, obj: dict[str, Any]
) -> None:
    att = await send(fake, raw_reply(SHAPES[shape](obj), status))
    assert att.raw is not None
    assert b"\n" not in att.raw and b"\r" not in att.raw
    assert orjson.loads(att.raw) == obj == att.body


async def test_compact_body_keeps_the_zero_copy_path() -> None:
    raw = orjson.dumps(ANSWER)
    body = orjson.loads(raw)
    out_raw, out_body = KeyGuard(KEY).clean(raw, body)
    assert out_raw is raw and out_body is body


def escaped(text: str, how: str) -> str:
    """``text`` as a JSON string literal body spelled with the given escapes."""
    if how == "slash":
        return text.replace("/", "\\/")
    if how == "unicode":
        return "".join(f"\\u{ord(c):04x}" for c in text)
    return text[:5] + "".join(f"\\u{ord(c):04X}" for c in text[5:9]) + text[9:]  # mixed


def echo_everywhere(how: str, status: int = 200) -> Handler:
    """A server that echoes the key in both request-id headers and in its body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        key = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        key = key or request.headers.get("x-api-key", "")
        spelled = escaped(key, how)
        if status == 200:
            text = f'"you sent {spelled}"'
            body = (
                b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,'
                b'"message":{"role":"assistant","content":' + text.encode() + b"}}],"
                b'"usage":{"prompt_tokens":5,"completion_tokens":2}}'
            )
        else:
            body = b'{"error":{"message":"bad key ' + spelled.encode() + b'","type":"x"}}'
        headers = {"x-request-id": f"req-{key}", "request-id": f"req-{key}"}
        return web.Response(body=body, status=status, headers=headers)

    return handle


@pytest.mark.parametrize("how", ["plain", "slash", "unicode", "mixed"])
@pytest.mark.parametrize("status", [200, 400])
async def test_echoed_key_never_reaches_an_output(fake: Fake, how: str, status: int) -> None:
    att = await send(fake, echo_everywhere(how, status))
    everything = orjson.dumps(
        {"body": att.body, "request_id": att.request_id, "error": str(att.error)}
    )
    assert att.raw is not None
    for blob in (att.raw, everything):
        assert KEY.encode() not in blob
        assert KEY.encode() not in orjson.dumps(orjson.loads(blob))  # escaped spellings too
    assert att.request_id == "req-[redacted]"
    assert b"[redacted]" in att.raw


async def test_echo_in_a_streamed_answer_is_scrubbed(fake: Fake) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"x-request-id": KEY})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        delta = {"choices": [{"index": 0, "delta": {"content": f"key {KEY}"}}]}
        await resp.write(b"data: " + orjson.dumps(delta) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    att = await send(fake, handle, stream=True)
    assert att.error is None
    assert KEY not in orjson.dumps(att.body).decode() and att.request_id == "[redacted]"
    # the encoding made for the key check is the one the result line writes
    assert att.raw == orjson.dumps(att.body)


def test_a_streamed_body_is_encoded_once_for_the_key_check_and_the_result() -> None:
    body = {"choices": [{"message": {"content": "nothing secret"}}]}
    out, raw = KeyGuard(KEY).scrub_body(body)
    assert out is body and raw == orjson.dumps(body)
    out, raw = KeyGuard(None).scrub_body(body)  # no key: nothing encoded here at all
    assert out is body and raw is None
    out, raw = KeyGuard(KEY).scrub_body({"content": f"echo {KEY}"})
    assert raw == orjson.dumps(out) and KEY.encode() not in raw and b"[redacted]" in raw


async def test_200_carrying_an_error_body_is_not_ok(fake: Fake) -> None:
    body = {"object": "error", "error": {"message": f"boom {KEY}", "type": "server_error"}}
    att = await send(fake, raw_reply(orjson.dumps(body)))
    assert att.error is not None and att.error.code == "bad_response"
    assert att.error.retriable and KEY not in att.error.message


@pytest.fixture
async def other_origin() -> AsyncIterator[Fake]:
    async for f in serve_fake():
        yield f


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_redirect_to_another_origin_is_not_followed(
    fake: Fake, other_origin: Fake, provider: Provider
) -> None:
    other_origin.handler = raw_reply(orjson.dumps(ANSWER))

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(other_origin.url + "/chat/completions")

    att = await send(fake, redirect, provider=provider)
    assert other_origin.seen == []  # the key never went there
    assert att.error is not None and att.error.code == "http_3xx"
    assert not att.error.retriable and "another origin" in att.error.message


async def test_redirect_within_the_origin_is_followed(fake: Fake) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/chat/completions":
            raise web.HTTPPermanentRedirect("/v2/chat/completions")
        return web.Response(body=orjson.dumps(ANSWER), content_type="application/json")

    att = await send(fake, handle)
    assert att.error is None and att.body == ANSWER
    assert [s.path for s in fake.seen] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert fake.seen[1].headers["authorization"] == f"Bearer {KEY}"


def endless(content_type: str, piece: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = content_type
        await resp.prepare(request)
        while True:  # the client hanging up ends this with a ConnectionResetError
            await resp.write(piece)

    return handle


@pytest.mark.parametrize(
    ("content_type", "stream", "piece"),
    [
        ("application/json", False, b'{"a":"' + b"x" * 65536),
        ("text/event-stream", True, b"data: " + b"x" * 65536),  # no newline, ever
    ],
)
async def test_endless_body_fails_the_attempt_with_bounded_memory(
    fake: Fake, content_type: str, stream: bool, piece: bytes
) -> None:
    cap = 2 << 20
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    att = await send(fake, endless(content_type, piece), stream=stream, max_response_bytes=cap)
    took = time.perf_counter() - t0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert att.error is not None and att.error.code == "response_too_large", att.error
    assert "max_response_bytes" in att.error.message and not att.error.retriable
    assert took < 10 and grew_mb < 64, (took, grew_mb)


async def test_declared_length_over_the_cap_is_refused_unread(fake: Fake) -> None:
    att = await send(fake, raw_reply(b" " * 5000 + b"{}"), max_response_bytes=4096)
    assert att.error is not None and att.error.code == "response_too_large"
    assert "5,002 bytes declared" in att.error.message

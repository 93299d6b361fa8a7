"""Found by the sixth red team on the wire: awkward but legal answers, and a key's fragments.

Each case is a loopback server (or the pure function behind it) sending what a real server or
gateway may send.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from providers.fake_provider import Fake, Handler

from runner.config import Provider, RunConfig
from runner.models import Attempt, Job
from runner.providers import anthropic, gemini, open_backend, openai
from runner.providers._http import MAX_TEXT_BYTES, _short, scrub

# A key of no recognisable shape (a Gemini or gateway key: no "sk-" for the pattern to catch).
KEY = "AIzaSyD0123456789abcdefSECRETxyz_-ABCDEF"


def job() -> Job:
    return Job("j1", 1, ({"role": "user", "content": "Hi"},), 0, None, None, None, {}, 2, 0)


async def send(
    fake: Fake, handler: Handler, *, provider: Provider = "openai", stream: bool = False
) -> Attempt:
    fake.handler = handler
    config = RunConfig(provider=provider, base_url="http://x", model="m", stream=stream)
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        return await asyncio.wait_for(backend.send(job(), cache_key=None), 30)


def answer(payload: bytes, *, status: int = 200, ctype: str = "application/json") -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if ctype != "text/event-stream":
            return web.Response(body=payload, status=status, content_type=ctype)
        resp = web.StreamResponse()
        resp.content_type = ctype
        await resp.prepare(request)
        await resp.write(payload)
        await resp.write_eof()
        return resp

    return handle


def longest_start_of_key(text: str) -> str:
    """The longest start of KEY (8 characters or more) that ``text`` holds."""
    found = [KEY[:k] for k in range(8, len(KEY) + 1) if KEY[:k] in text]
    return max(found, key=len) if found else ""


# -- a key cut in half by a length limit -------------------------------------------------------
# A message is cut to 300 characters (and a body that is not JSON to its first 4 KiB) before
# the key was searched for: a key the cut went through left its first characters in the
# message, in the results file and on stderr, and the search for the whole key never found them.


@pytest.mark.parametrize("pad", range(240, 300))
def test_a_message_cut_through_the_key_keeps_no_start_of_it(pad: int) -> None:
    message = scrub(_short("error in stream: " + "x" * pad + " " + KEY), KEY)
    assert longest_start_of_key(message) == ""
    assert len(message) <= 300 + len("[redacted]")


async def test_a_stream_error_cut_through_the_key_keeps_no_start_of_it(fake: Fake) -> None:
    err = {"error": {"type": "invalid_request_error", "message": "x" * 240 + " key " + KEY}}
    att = await send(
        fake,
        answer(b"data: " + orjson.dumps(err) + b"\n\n", ctype="text/event-stream"),
        stream=True,
    )
    assert att.error is not None and att.error.code == "stream_error"
    assert longest_start_of_key(att.error.message) == "", att.error.message


async def test_an_anthropic_stream_error_cut_through_the_key_keeps_no_start_of_it(
    fake: Fake,
) -> None:
    err = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "x" * 240 + " " + KEY},
    }
    payload = b"event: error\ndata: " + orjson.dumps(err) + b"\n\n"
    att = await send(
        fake, answer(payload, ctype="text/event-stream"), provider="anthropic", stream=True
    )
    assert att.error is not None
    assert longest_start_of_key(att.error.message) == "", att.error.message


@pytest.mark.parametrize("offset", [MAX_TEXT_BYTES - 30, MAX_TEXT_BYTES - 16, MAX_TEXT_BYTES - 8])
async def test_a_text_body_cut_through_the_key_keeps_no_start_of_it(
    fake: Fake, offset: int
) -> None:
    # padding of blanks: the message collapses them, which brought the cut into view
    body = b" " * offset + KEY.encode() + b" trailing"
    att = await send(fake, answer(body, status=400, ctype="text/plain"))
    assert att.error is not None and att.error.code == "http_4xx"
    assert longest_start_of_key(att.error.message) == "", att.error.message
    assert att.error.message.endswith("..."), "the message says it was cut"


# -- usage counts written as strings or floats -------------------------------------------------
# A count the parsers did not take as an integer was 0 tokens, not unknown: an answer with
# {"prompt_tokens": "1200", "completion_tokens": 3} was billed 3 tokens, so the summary, the
# cache hit ratio and --max-cost all undercounted it (a gateway writing numbers as strings, as
# protobuf's JSON does for 64-bit integers; a server computing counts as floats).


@pytest.mark.parametrize(("prompt", "completion"), [("1200", "3"), (1200.0, 3.0), ("1200", 3)])
async def test_usage_counts_as_strings_or_integral_floats_are_counted(
    fake: Fake, prompt: object, completion: object
) -> None:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    body = {
        "id": "c1",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {**usage, "prompt_tokens_details": {"cached_tokens": "1000"}},
    }
    att = await send(fake, answer(orjson.dumps(body)))
    assert att.error is None and att.usage is not None
    assert (att.usage.prompt_tokens, att.usage.cached_tokens) == (1200, 1000)
    assert att.usage.completion_tokens == 3


def test_every_provider_reads_string_and_float_counts() -> None:
    a = anthropic.parse_usage(
        {
            "input_tokens": "10",
            "output_tokens": 4.0,
            "cache_read_input_tokens": "1000",
            "cache_creation_input_tokens": 5.0,
        }
    )
    assert a is not None
    assert (a.prompt_tokens, a.cached_tokens, a.cache_write_tokens) == (1015, 1000, 5)
    assert a.completion_tokens == 4
    g = gemini.parse_usage(
        {"promptTokenCount": "1200", "cachedContentTokenCount": 1000.0, "candidatesTokenCount": "3"}
    )
    assert g is not None
    assert (g.prompt_tokens, g.cached_tokens, g.completion_tokens) == (1200, 1000, 3)


@pytest.mark.parametrize(
    "odd", [-1, -1.0, 2.5, "12a", "-3", "", "1e3", True, None, 1e300, "9" * 40]
)
def test_what_is_not_a_count_stays_no_count(odd: object) -> None:
    u = openai.parse_usage({"prompt_tokens": odd, "completion_tokens": odd})
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == (0, 0)


# -- a lone surrogate escape -------------------------------------------------------------------
# Python's json.dumps writes half of a split emoji as a lone "\ud83d" escape, which Python's
# json.loads accepts and orjson refuses: the whole (billed) answer was "invalid JSON", retried,
# and failed again on the same bytes. It is now kept with U+FFFD for the lone half, as invalid
# UTF-8 already was.

ANSWER = {"id": "c1", "model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        (rb"\ud83d tail", "\ufffd tail"),  # a high half alone
        (rb"head \ude00", "head \ufffd"),  # a low half alone
        (rb"\ude00\ud83d", "\ufffd\ufffd"),  # a pair in the wrong order
        (rb"\ud83d\ude00 \ud83d", "\U0001f600 \ufffd"),  # a whole pair stays whole
        (rb"\\ud83d \ud83d", "\\ud83d \ufffd"),  # an escaped backslash is no escape
    ],
)
async def test_a_lone_surrogate_escape_keeps_the_answer(
    fake: Fake, escaped: bytes, text: str
) -> None:
    message = {"role": "assistant", "content": "@@"}
    body = orjson.dumps({**ANSWER, "choices": [{"index": 0, "message": message}]})
    att = await send(fake, answer(body.replace(b"@@", escaped)))
    assert att.error is None, att.error
    assert isinstance(att.body, dict)
    assert att.body["choices"][0]["message"]["content"] == text
    assert att.usage is not None and att.usage.completion_tokens == 2
    assert att.raw is not None and orjson.loads(att.raw) == att.body  # valid in the results


async def test_a_lone_surrogate_escape_in_a_streamed_chunk_keeps_the_answer(fake: Fake) -> None:
    def event(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + orjson.dumps({"id": "c1", "model": "m", "choices": [choice]}) + b"\n\n"

    usage = {"id": "c1", "choices": [], "usage": ANSWER["usage"]}
    payload = (
        event({"content": "@@"}).replace(b"@@", rb"smile \ud83d")
        + event({"content": "!"}, "stop")
        + b"data: "
        + orjson.dumps(usage)
        + b"\n\ndata: [DONE]\n\n"
    )
    att = await send(fake, answer(payload, ctype="text/event-stream"), stream=True)
    assert att.error is None, att.error
    assert isinstance(att.body, dict)
    assert att.body["choices"][0]["message"]["content"] == "smile \ufffd!"


async def test_json_broken_beyond_a_surrogate_is_still_refused(fake: Fake) -> None:
    att = await send(fake, answer(rb'{"id": "c1", "x": "\ud83d", '))
    assert att.error is not None and att.error.code == "bad_response"


@pytest.mark.parametrize("offset", [1990, 1980])
async def test_a_batch_control_error_cut_through_the_key_keeps_no_start_of_it(
    fake: Fake, offset: int
) -> None:
    """``--via batch``: a control request's text error body was cut to 2,000 bytes unmarked."""
    from runner.batchapi.wire import BatchAPIError, open_batch_api

    fake.handler = answer(b" " * offset + KEY.encode(), status=400, ctype="text/plain")
    config = RunConfig(provider="openai", base_url="http://x", model="m")
    session = aiohttp.ClientSession()
    try:
        api = open_batch_api(config, session, base_url=fake.url, api_key=KEY)
        with pytest.raises(BatchAPIError) as info:
            await asyncio.wait_for(api.get("batch_1"), 30)
    finally:
        await session.close()
    assert longest_start_of_key(str(info.value)) == "", str(info.value)


@pytest.mark.parametrize("offset", [4090, 4080])
async def test_a_gemini_cache_error_cut_through_the_key_keeps_no_start_of_it(
    fake: Fake, offset: int
) -> None:
    """Gemini's cachedContents calls cut a text error body to 4 KiB unmarked (a Gemini key has
    no "sk-" for the pattern to catch)."""
    from runner.explicit_cache import CacheAPIError
    from runner.providers.gemini import GeminiBackend

    fake.handler = answer(b" " * offset + KEY.encode(), status=400, ctype="text/plain")
    config = RunConfig(provider="gemini", base_url="http://x", model="m")
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        assert isinstance(backend, GeminiBackend)
        with pytest.raises(CacheAPIError) as info:
            await asyncio.wait_for(backend.delete_cache("cachedContents/c1"), 30)
    assert longest_start_of_key(str(info.value)) == "", str(info.value)


# -- a base URL that redirects to another origin -----------------------------------------------
# http:// redirected to https:// (or another host): the pre-flight check said "HTTP 301 with a
# body that is not JSON: this looks like a web server ... does it end in /v1?", pointing at the
# wrong fix, or passed when the redirect carried a JSON body, and then every job failed alone.


def moved(status: int, location: str, body: bytes = b"") -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Location": location}
        return web.Response(status=status, body=body, headers=headers, content_type="text/plain")

    return handle


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("body", [b"", b"{}"])
async def test_a_probe_redirected_to_another_origin_says_where(
    fake: Fake, status: int, body: bytes
) -> None:
    target = fake.url.replace("http://", "https://") + "/models"
    fake.handler = moved(status, target, body)
    config = RunConfig(provider="openai", base_url="http://x", model="m")
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        error = await asyncio.wait_for(backend.probe(), 30)
    assert error is not None and error.code == "endpoint" and not error.retriable
    origin = fake.url.replace("http://", "https://").removesuffix("/v1")
    assert f"redirects to {origin}" in error.message, error.message
    assert "base URL" in error.message


async def test_a_probe_redirected_within_the_origin_is_no_setup_error(fake: Fake) -> None:
    fake.handler = moved(308, "/v1/models/", b'{"data": []}')
    config = RunConfig(provider="openai", base_url="http://x", model="m")
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        assert await asyncio.wait_for(backend.probe(), 30) is None


# -- a JSON-escaped key in a body that is not JSON ---------------------------------------------
# A parsed JSON body is searched in its canonical spelling, but a text body (an HTML error page,
# JSON that orjson refuses: Python's NaN, a cut) goes into the message as it came: the key
# escaped as PHP's json_encode writes it ("\/") or as "\u0067w-..." got past the search.

SLASHED = "gw-0123456789/abcdef+SECRET=="  # a base64-like gateway key


@pytest.mark.parametrize(
    "echo",
    [
        SLASHED.replace("/", "\\/"),
        "\\u0067" + SLASHED[1:],
        "".join(f"\\u{ord(c):04x}" for c in SLASHED),
    ],
)
@pytest.mark.parametrize(
    "template",
    [
        b'{"error": "bad key", "key": "@@", "score": NaN}',  # json.dumps's NaN
        b'<html><script>var cfg = {"key": "@@"};</script></html>',
    ],
)
async def test_a_json_escaped_key_in_a_text_body_is_redacted(
    fake: Fake, echo: str, template: bytes
) -> None:
    fake.handler = answer(template.replace(b"@@", echo.encode()), status=400, ctype="text/html")
    config = RunConfig(provider="openai", base_url="http://x", model="m")
    async with open_backend(config, base_url=fake.url, api_key=SLASHED) as backend:
        att = await asyncio.wait_for(backend.send(job(), cache_key=None), 30)
    assert att.error is not None
    message = att.error.message
    assert "[redacted]" in message, message
    assert echo not in message and SLASHED not in message, message


# -- an SSE stream under another label ---------------------------------------------------------
# A proxy or shim that sends the stream as application/json or text/plain: the SDKs parse a
# stream whatever its label, runner took it for a broken JSON body ("invalid JSON in a 200
# body"), retried, and threw each billed answer away.


def openai_stream() -> bytes:
    def event(obj: object) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "c1", "model": "m", "choices": [choice]}

    return (
        b": keep-alive\n\n"
        + event(chunk({"role": "assistant", "content": "he"}))
        + event(chunk({"content": "llo"}))
        + event(chunk({}, "stop"))
        + event({"id": "c1", "choices": [], "usage": ANSWER["usage"]})
        + b"data: [DONE]"
    )


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", "application/octet-stream"])
async def test_an_unlabelled_openai_stream_is_read_as_one(fake: Fake, ctype: str) -> None:
    att = await send(fake, answer(openai_stream(), ctype=ctype), stream=True)
    assert att.error is None, att.error
    assert isinstance(att.body, dict)
    assert att.body["choices"][0]["message"]["content"] == "hello"
    assert att.usage is not None and att.usage.completion_tokens == 2
    assert att.ttft_ms is None  # the chunks' arrival times are unknown


async def test_an_unlabelled_anthropic_stream_is_read_as_one(fake: Fake) -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]
    payload = b"".join(
        b"event: " + str(e["type"]).encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
        for e in events
    )
    att = await send(fake, answer(b"\xef\xbb\xbf" + payload), provider="anthropic", stream=True)
    assert att.error is None, att.error
    assert isinstance(att.body, dict) and att.body["content"][0]["text"] == "hi"
    assert att.usage is not None and att.usage.completion_tokens == 2


async def test_an_unlabelled_stream_cut_short_is_still_an_error(fake: Fake) -> None:
    cut = openai_stream().split(b"data: [DONE]")[0].rsplit(b"data: ", 2)[0]  # no finish
    att = await send(fake, answer(cut, ctype="text/plain"), stream=True)
    assert att.error is not None and att.error.retriable


async def test_a_text_body_that_is_no_stream_is_still_invalid_json(fake: Fake) -> None:
    att = await send(fake, answer(b"Service temporarily unavailable", ctype="text/plain"))
    assert att.error is not None and att.error.code == "bad_response"


# -- a Content-Encoding that cannot be decoded -------------------------------------------------
# aiohttp asks for br and zstd only when their package is installed; a server that sends one
# anyway gave a retriable "connection" error, so every attempt was answered, billed and thrown
# away again. It is now a bad_response that is not retried, naming the encoding.


@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_an_encoding_not_asked_for_is_not_retried(
    fake: Fake, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where Brotli or zstandard is installed aiohttp asks for (and decodes) that encoding, and
    # no server sends it unasked; the case is a machine without them, which the parser's flags
    # make of this one whatever is installed (both the C and the Python parser read them).
    import aiohttp.http_parser

    monkeypatch.setattr(aiohttp.http_parser, "HAS_BROTLI", False)
    monkeypatch.setattr(aiohttp.http_parser, "HAS_ZSTD", False)

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": encoding}
        return web.Response(body=b"\x00\x01", headers=headers, content_type="application/json")

    att = await send(fake, handle)
    assert att.error is not None
    assert (att.error.code, att.error.retriable) == ("bad_response", False), att.error
    assert "Content-Encoding" in att.error.message

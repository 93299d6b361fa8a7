"""Legal but awkward answers from real servers (found by the red team).

Each case is a loopback server sending what some real server or gateway sends: Azure's
prompt-filter first chunk, OpenAI's streamed ``refusal`` and ``logprobs``, tool-call arguments
sent as an object, a null or string where a chunk's object belongs, OpenRouter's numeric
mid-stream error code, vLLM's ``{"object": "error"}`` with a 200, an error beside an empty
``choices``, Gemini's thought and function-call parts, and a key echoed URL-encoded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiohttp import web
from providers.engine_run import CountingLimiter, plain_job, run_jobs
from providers.fake_provider import Fake, Handler

from runner.config import Provider, RunConfig
from runner.models import Attempt, Job
from runner.providers import open_backend
from runner.providers._wire import key_forms

KEY = "gw-0123456789/abcdef+SECRET=="  # a base64-like gateway key: "/", "+" and "="


def job() -> Job:
    return Job("j1", 1, ({"role": "user", "content": "Hi"},), 0, None, None, None, {}, 2, 0)


async def send(
    fake: Fake, handler: Handler, *, provider: Provider = "openai", stream: bool = False, **kw: Any
) -> Attempt:
    fake.handler = handler
    config = RunConfig(provider=provider, base_url="http://x", model="m", stream=stream, **kw)
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        return await asyncio.wait_for(backend.send(job(), cache_key=None), 30)


def sse(events: Sequence[Any]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        for e in events:
            data = e if isinstance(e, bytes) else orjson.dumps(e)
            await resp.write(b"data: " + data + b"\n\n")
        await resp.write_eof()
        return resp

    return handle


def reply(body: Any, status: int = 200) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(body=data, status=status, content_type="application/json")

    return handle


def chunk(delta: Any, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    c = {"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": delta}], **extra}
    c["choices"][0]["finish_reason"] = finish
    return c


USAGE = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
LAST = [chunk({"content": "ok"}, "stop"), USAGE, b"[DONE]"]


def message(att: Attempt) -> dict[str, Any]:
    assert att.error is None, att.error
    assert isinstance(att.body, dict)
    msg: dict[str, Any] = att.body["choices"][0]["message"]
    return msg


# A chunk of the wrong shape used to raise out of Backend.send and stop the whole run with a
# traceback (exit 1, no summary): every other job lost its turn over one server's odd byte.
@pytest.mark.parametrize(
    "odd",
    [
        {"id": "c1", "choices": [None]},
        {"id": "c1", "choices": {"index": 0}},
        {"id": "c1", "choices": [{"index": 0, "delta": "oops"}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": 7}}]},
        {"id": "c1", "choices": [{"index": [0], "delta": {"content": "x"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"function": "f"}]}}]},
    ],
)
async def test_a_malformed_stream_chunk_is_skipped_not_raised(
    fake: Fake, odd: dict[str, Any]
) -> None:
    att = await send(fake, sse([odd, *LAST]), stream=True)
    assert message(att)["content"].endswith("ok")
    assert att.usage is not None and att.usage.completion_tokens == 2


async def test_tool_call_arguments_sent_as_an_object_are_kept(fake: Fake) -> None:
    call = {"index": 0, "id": "t1", "function": {"name": "f", "arguments": {"a": 1}}}
    events = [chunk({"tool_calls": [call]}), chunk({}, "tool_calls"), b"[DONE]"]
    calls = message(await send(fake, sse(events), stream=True))["tool_calls"]
    assert calls == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]


async def test_an_anthropic_event_of_the_wrong_shape_fails_the_attempt_not_the_run(
    fake: Fake,
) -> None:
    events = [
        {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": "not an object"},
        {"type": "message_stop"},
    ]
    att = await send(fake, sse(events), provider="anthropic", stream=True)
    assert att.error is not None and att.error.code == "bad_response" and att.error.retriable
    assert "malformed stream event" in att.error.message


# OpenAI streams a refusal in delta.refusal and, with logprobs: true, each chunk's logprobs:
# both were dropped from the assembled body (the refusal text lost, content "").
async def test_a_streamed_refusal_and_logprobs_are_kept(fake: Fake) -> None:
    lp = [{"token": "I", "logprob": -0.1}, {"token": " can't", "logprob": -0.2}]

    def piece(text: str, logprobs: list[Any]) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"refusal": text}, "logprobs": {"refusal": logprobs}}
        return {"id": "c1", "choices": [choice]}

    events = [
        {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "refusal": ""}}]},
        piece("I", lp[:1]),
        piece(" can't", lp[1:]),
        chunk({}, "stop"),
        USAGE,
        b"[DONE]",
    ]
    att = await send(fake, sse(events), stream=True)
    assert message(att)["refusal"] == "I can't"
    assert att.body["choices"][0]["logprobs"] == {"refusal": lp}
    assert att.ttft_ms is not None  # a refusal is generated content


async def test_content_logprobs_of_every_chunk_are_concatenated(fake: Fake) -> None:
    events: list[Any] = [chunk({"content": "a"}), chunk({"content": "b"}, "stop"), b"[DONE]"]
    events[0]["choices"][0]["logprobs"] = {"content": [{"token": "a", "logprob": -1.0}]}
    events[1]["choices"][0]["logprobs"] = {"content": [{"token": "b", "logprob": -2.0}]}
    att = await send(fake, sse(events), stream=True)
    assert message(att)["content"] == "ab"
    assert [t["token"] for t in att.body["choices"][0]["logprobs"]["content"]] == ["a", "b"]


async def test_azure_prompt_filter_first_chunk_does_not_blank_the_id_and_model(fake: Fake) -> None:
    first = {"choices": [], "created": 0, "id": "", "model": "", "prompt_filter_results": []}
    att = await send(fake, sse([first, chunk({"content": "hi"}), *LAST]), stream=True)
    assert att.body["id"] == "c1" and att.body["model"] == "gpt-x"
    assert message(att)["content"] == "hiok"


# OpenRouter reports a provider failure mid-stream as {"error": {"code": 502, ...}}: a transient
# status, so the attempt is retried at once rather than failed until --retry-failed.
@pytest.mark.parametrize(("code", "retriable"), [(502, True), (429, True), (400, False)])
async def test_a_numeric_status_code_in_a_stream_error_decides_the_retry(
    fake: Fake, code: int, retriable: bool
) -> None:
    err = {"id": "c1", "error": {"code": code, "message": "Provider disconnected"}}
    att = await send(fake, sse([chunk({"content": "a"}), err]), stream=True)
    assert att.error is not None and att.error.code == "stream_error"
    assert att.error.retriable is retriable


@pytest.mark.parametrize(
    "body",
    [
        {"choices": [], "error": {"message": "upstream failed", "type": "server_error"}},
        {"object": "error", "message": "model not loaded", "type": "server_error", "code": 503},
    ],
)
async def test_a_200_with_an_error_and_no_answer_is_a_failure(
    fake: Fake, body: dict[str, Any]
) -> None:
    att = await send(fake, reply(body))
    assert att.error is not None and att.error.code == "bad_response" and att.error.retriable


async def test_a_200_error_response_of_a_bad_request_is_not_retried(fake: Fake) -> None:
    body = {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}
    att = await send(fake, reply(body))
    assert att.error is not None and att.error.code == "bad_response" and not att.error.retriable


async def test_gemini_streamed_thoughts_and_function_calls_stay_apart(fake: Fake) -> None:
    def part_chunk(*parts: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}}
        if finish:
            cand["finishReason"] = finish
        return {"candidates": [cand], "usageMetadata": {"promptTokenCount": 3}}

    call = {"functionCall": {"name": "lookup", "args": {"q": "x"}}}
    events = [
        part_chunk({"text": "Let me ", "thought": True}),
        part_chunk({"text": "think.", "thought": True}),
        part_chunk({"text": "The answer "}),
        part_chunk({"text": "is"}, call, finish="STOP"),
    ]
    att = await send(fake, sse(events), provider="gemini", stream=True)
    assert att.error is None, att.error
    parts = att.body["candidates"][0]["content"]["parts"]
    assert parts == [
        {"text": "Let me think.", "thought": True},
        {"text": "The answer is"},
        call,
    ]


# A base64-like gateway key changes spelling when a proxy echoes it URL-encoded.
@pytest.mark.parametrize("lower", [False, True])
async def test_a_url_encoded_key_is_redacted_everywhere(fake: Fake, lower: bool) -> None:
    from urllib.parse import quote

    enc = quote(KEY, safe="")
    if lower:
        enc = enc.replace("%2F", "%2f").replace("%2B", "%2b").replace("%3D", "%3d")
    assert enc != KEY
    ok = {"id": "c1", "choices": [{"index": 0, "message": {"content": f"url ?k={enc}"}}]}
    att = await send(fake, reply(ok))
    assert enc.encode() not in (att.raw or b"") and b"[redacted]" in (att.raw or b"")
    att = await send(fake, reply({"error": {"message": f"bad key {enc}"}}, status=400))
    assert att.error is not None and enc not in att.error.message
    assert not any(p in att.error.message for p in enc.split("%") if len(p) > 4)
    half = len(enc) // 2
    events = [chunk({"content": enc[:half]}), chunk({"content": enc[half:]}, "stop"), b"[DONE]"]
    att = await send(fake, sse(events), stream=True)
    assert message(att)["content"] == "[redacted]"


def test_key_forms_skip_the_url_encoding_of_a_url_safe_key() -> None:
    plain = "sk-proj-abc_DEF-0123456789"  # what OpenAI, Anthropic and Gemini keys look like
    assert key_forms(plain).count(plain) == 1 and not any("%" in f for f in key_forms(plain))


# Anthropic streams each citation of a text block as a citations_delta: they were dropped,
# so a streamed answer lost the sources a non-streamed one carries.
async def test_anthropic_streamed_citations_are_kept(fake: Fake) -> None:
    cite = {"type": "char_location", "cited_text": "the sky is blue", "document_index": 0}

    def delta(d: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": 0, "delta": d}

    block = {"type": "text", "text": "", "citations": []}
    events = [
        {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": block},
        delta({"type": "citations_delta", "citation": cite}),
        delta({"type": "text_delta", "text": "Blue."}),
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
        {"type": "message_stop"},
    ]
    att = await send(fake, sse(events), provider="anthropic", stream=True)
    assert att.error is None, att.error
    assert att.body["content"] == [{"type": "text", "text": "Blue.", "citations": [cite]}]


# SSE dispatches no event for an empty data buffer: a proxy's "data: " keep-alive failed the
# attempt as invalid JSON (re-sent, re-billed), on every provider.
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_an_empty_data_keep_alive_is_no_event(fake: Fake, provider: Provider) -> None:
    text_ab = {"type": "text_delta", "text": "ab"}
    events: dict[str, list[Any]] = {
        "openai": [chunk({"content": "a"}), b"", chunk({"content": "b"}, "stop"), b"[DONE]"],
        "anthropic": [
            {"type": "message_start", "message": {"id": "m1"}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            b"",
            {"type": "content_block_delta", "index": 0, "delta": text_ab},
            {"type": "message_stop"},
        ],
        "gemini": [
            {"candidates": [{"content": {"parts": [{"text": "a"}]}}]},
            b"",
            {"candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"}]},
        ],
    }  # fmt: skip
    att = await send(fake, sse(events[provider]), provider=provider, stream=True)
    assert att.error is None, att.error
    assert b'"ab"' in orjson.dumps(att.body)


# The SSE decoder strips one leading byte order mark; unstripped, the first event's line did not
# start with "data:" and was dropped without a word: the answer lost its first words.
async def test_a_byte_order_mark_before_the_stream_loses_no_event(fake: Fake) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in LAST[:2])
        await resp.write(
            b"\xef\xbb\xbfdata: " + orjson.dumps(chunk({"content": "First "})) + b"\n\n"
        )
        await resp.write(body + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    assert message(await send(fake, handle, stream=True))["content"] == "First ok"


# A compressed body declares its size on the wire: 64 KB of gzip declared 64 KB and inflated to
# 64 MB, read whole past max_response_bytes (a real bomb exhausts memory) and kept as an answer.
async def test_a_compressed_body_is_capped_by_its_decoded_size(fake: Fake) -> None:
    import gzip

    inflated = b'{"choices": [{"message": {"content": "' + b"0" * (64 << 20) + b'"}}]}'
    bomb = gzip.compress(inflated, compresslevel=9)
    assert len(bomb) < 1 << 20

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip"}
        return web.Response(body=bomb, headers=headers, content_type="application/json")

    att = await send(fake, handle, max_response_bytes=1 << 20)
    assert att.error is not None and att.error.code == "response_too_large"
    ok = gzip.compress(orjson.dumps({"choices": [{"message": {"content": "fine"}}]}))

    async def small(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip"}
        return web.Response(body=ok, headers=headers, content_type="application/json")

    assert message(await send(fake, small, max_response_bytes=1 << 20))["content"] == "fine"


# Some proxies always stream: an SSE answer to a request that did not ask for one failed every
# attempt as "invalid JSON in a 200 body" (each attempt billed).
async def test_a_stream_nobody_asked_for_is_still_read(fake: Fake) -> None:
    att = await send(fake, sse([chunk({"content": "unasked "}), *LAST]), stream=False)
    assert message(att)["content"] == "unasked ok"
    assert att.usage is not None and att.usage.completion_tokens == 2


# Servers that detokenise byte by byte (llama.cpp and friends) may split a multi-byte character
# across two events, each then invalid UTF-8: orjson refused them and the whole answer failed as
# bad_response, then again on every retry (each billed). The answer is kept, U+FFFD for the bytes.
async def test_invalid_utf8_from_a_split_character_keeps_the_answer(fake: Fake) -> None:
    emoji = "\N{THUMBS UP SIGN}".encode()
    first = orjson.dumps(chunk({"content": "ok XX"})).replace(b"XX", emoji[:2])
    second = orjson.dumps(chunk({"content": "YY!"}, "stop")).replace(b"YY", emoji[2:])
    att = await send(fake, sse([first, second, b"[DONE]"]), stream=True)
    assert re.fullmatch("ok \ufffd+!", message(att)["content"])
    assert att.raw is not None and att.raw.decode()  # what the results file gets is UTF-8

    body = orjson.dumps({"choices": [{"message": {"content": "caf\u00e9"}}]})
    latin1 = body.replace("\u00e9".encode(), b"\xe9")  # a Latin-1 server
    att = await send(fake, reply(latin1))
    assert message(att)["content"] == "caf\ufffd"
    assert att.raw is not None and att.raw.decode()


async def test_json_that_is_broken_beyond_its_encoding_is_still_refused(fake: Fake) -> None:
    att = await send(fake, reply(b'{"choices": [\xe9'))
    assert att.error is not None and att.error.code == "bad_response"


async def test_a_dozen_streamed_tool_calls_keep_their_order(fake: Fake) -> None:
    calls = [
        {"index": i, "id": f"t{i}", "function": {"name": f"f{i}", "arguments": "{}"}}
        for i in range(12)
    ]
    events = [chunk({"tool_calls": [c]}) for c in calls] + [chunk({}, "tool_calls"), b"[DONE]"]
    got = message(await send(fake, sse(events), stream=True))["tool_calls"]
    assert [c["id"] for c in got] == [f"t{i}" for i in range(12)]


# Strict OpenAI-compatible APIs (pydantic "extra inputs are not permitted") refuse the routing
# hint with a 400/422: every job of a warm run failed. The field is dropped for the run instead,
# and the refused request is sent again by the engine's retry loop (tests/providers/
# test_wire_retries.py checks that this re-send is an attempt that passes the limiter).
async def test_a_server_that_refuses_prompt_cache_key_is_asked_without_it(fake: Fake) -> None:
    async def strict(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if "prompt_cache_key" in body:
            detail = [{"type": "extra_forbidden", "loc": ["body", "prompt_cache_key"]}]
            return web.json_response({"detail": detail}, status=422)
        return web.json_response({"choices": [{"message": {"content": "ok"}}]})

    fake.handler = strict
    config = RunConfig(provider="openai", base_url="http://x", model="m", concurrency=1)
    jobs = [plain_job(0, "group-1"), plain_job(1, "group-1")]
    out, sink = await run_jobs(fake, config, jobs, limiter=CountingLimiter())
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None, None]
    keyed = ["prompt_cache_key" in s.json() for s in fake.seen]
    assert keyed == [True, False, False]  # refused once, then never sent again


async def test_other_400s_are_not_resent(fake: Fake) -> None:
    err = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
    fake.handler = reply(err, status=400)
    config = RunConfig(provider="openai", base_url="http://x", model="m")
    async with open_backend(config, base_url=fake.url, api_key=KEY) as backend:
        att = await backend.send(job(), cache_key="group-1")
    assert att.error is not None and att.error.code == "http_4xx" and len(fake.seen) == 1


async def test_a_server_that_refuses_stream_options_streams_without_them(fake: Fake) -> None:
    async def old_azure(request: web.Request) -> web.StreamResponse:
        if "stream_options" in orjson.loads(await request.read()):
            err = {"error": {"message": "Unrecognized request argument supplied: stream_options"}}
            return web.json_response(err, status=400)
        return await sse([chunk({"content": "ok"}, "stop"), b"[DONE]"])(request)

    fake.handler = old_azure
    config = RunConfig(
        provider="openai", base_url="http://x", model="m", stream=True, concurrency=1, cache="none"
    )
    out, sink = await run_jobs(
        fake, config, [plain_job(0), plain_job(1)], limiter=CountingLimiter()
    )
    assert out.exit_code == 0 and [r["error"] for r in sink.results] == [None, None]
    bodies = [orjson.loads(orjson.dumps(r["response"]["body"])) for r in sink.results]
    assert [b["choices"][0]["message"]["content"] for b in bodies] == ["ok", "ok"]
    assert ["stream_options" in s.json() for s in fake.seen] == [True, False, False]


# Mistral's reasoning models stream content as a list of parts, thinking first: a list was a
# TypeError out of the run before, and then silently an empty answer.
async def test_content_streamed_as_a_list_of_parts_is_kept(fake: Fake) -> None:
    thinking = [{"type": "thinking", "thinking": [{"type": "text", "text": "Let me see."}]}]
    events = [
        chunk({"role": "assistant", "content": thinking}),
        chunk({"content": [{"type": "text", "text": "Four"}]}),
        chunk({"content": "."}, "stop"),
        b"[DONE]",
    ]
    msg = message(await send(fake, sse(events), stream=True))
    assert msg["content"] == "Four." and msg["reasoning_content"] == "Let me see."

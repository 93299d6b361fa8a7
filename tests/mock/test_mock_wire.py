"""The simulated provider over loopback, driven by a plain aiohttp client: exact wire shapes."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from runner.mock import MockConfig, MockServer, serve
from runner.mock.tokenizer import openai_text

FIXTURES = Path(__file__).parent / "fixtures"
ZERO: dict[str, Any] = {"latency": "zero"}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def shape(value: Any) -> Any:
    """Keys and value types, recursively; lists by their first element."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) for each event of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((name, "\n".join(data)))
    return out


@asynccontextmanager
async def mock(**options: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with serve(MockConfig(**options)) as url, aiohttp.ClientSession() as session:
        yield url, session


def chat(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": "mock-1", "messages": [{"role": "user", "content": content}], **extra}


def anthropic(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    body = {"model": "mock-1", "max_tokens": 8, "messages": [{"role": "user", "content": content}]}
    return {**body, **extra}


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url.removesuffix("/v1") + "/stats") as r:
        result: dict[str, Any] = await r.json()
        return result


# -- OpenAI -----------------------------------------------------------------------------------


async def test_openai_json_matches_recorded_shape() -> None:
    fixture = orjson.loads((FIXTURES / "openai_chat_completion.json").read_bytes())
    async with mock(**ZERO) as (url, s):
        body = chat("Tell me a story.", max_tokens=7)
        async with s.post(url + "/chat/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["x-request-id"].startswith("req_")
            doc = await r.json()
    assert shape(doc) == shape(fixture)
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-")
    text = openai_text(body["messages"])
    assert doc["usage"]["prompt_tokens"] == math.ceil(len(text) / 4)
    assert doc["usage"]["completion_tokens"] == 7
    assert doc["usage"]["total_tokens"] == doc["usage"]["prompt_tokens"] + 7
    assert len(doc["choices"][0]["message"]["content"]) == 7 * 4
    assert doc["choices"][0]["finish_reason"] == "length"


async def test_openai_without_max_tokens_stops_on_its_own() -> None:
    async with mock(**ZERO, default_max_tokens=5) as (url, s):
        async with s.post(url + "/chat/completions", json=chat()) as r:
            doc = await r.json()
    assert doc["usage"]["completion_tokens"] == 5
    assert doc["choices"][0]["finish_reason"] == "stop"


async def test_openai_stream_matches_recorded_shape_with_usage_chunk() -> None:
    recorded = [
        orjson.loads(d) for _, d in sse((FIXTURES / "openai_chat_stream.txt").read_text())[:-1]
    ]
    async with mock(**ZERO) as (url, s):
        body = chat(max_tokens=3, stream=True, stream_options={"include_usage": True})
        async with s.post(url + "/chat/completions", json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = sse(await r.text())
    assert events[-1] == (None, "[DONE]")
    chunks = [orjson.loads(d) for _, d in events[:-1]]
    assert len(chunks) == 1 + 3 + 1 + 1  # role-only, 3 tokens, finish, usage
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert shape(chunks[0]) == shape(recorded[0])
    assert all(shape(c) == shape(recorded[1]) for c in chunks[1:4])
    assert shape(chunks[4]) == shape(recorded[2])
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    assert shape(chunks[5]) == shape(recorded[3])
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] == 3
    assert all(len(c["choices"][0]["delta"]["content"]) == 4 for c in chunks[1:4])


async def test_openai_stream_without_include_usage_has_no_usage() -> None:
    async with mock(**ZERO) as (url, s):
        async with s.post(url + "/chat/completions", json=chat(max_tokens=2, stream=True)) as r:
            events = sse(await r.text())
    chunks = [orjson.loads(d) for _, d in events[:-1]]
    assert events[-1][1] == "[DONE]" and len(chunks) == 4
    assert all("usage" not in c for c in chunks)


async def test_bad_request_gets_provider_error_shape() -> None:
    async with mock(**ZERO) as (url, s):
        async with s.post(url + "/chat/completions", data=b"{not json") as r:
            assert r.status == 400
            doc = await r.json()
        assert set(doc["error"]) == {"message", "type", "param", "code"}
        assert doc["error"]["type"] == "invalid_request_error"
        async with s.post(url + "/messages", json={"model": "m", "messages": []}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_models_in_each_provider_shape() -> None:
    async with mock(**ZERO, models=["a", "b"]) as (url, s):
        async with s.get(url + "/models") as r:
            doc = await r.json()
        assert doc["object"] == "list" and [m["id"] for m in doc["data"]] == ["a", "b"]
        assert set(doc["data"][0]) == {"id", "object", "created", "owned_by"}
        async with s.get(url + "/models", headers={"anthropic-version": "2023-06-01"}) as r:
            doc = await r.json()
        assert set(doc) == {"data", "has_more", "first_id", "last_id"}
        assert doc["data"][0]["type"] == "model" and doc["last_id"] == "b"


# -- Anthropic --------------------------------------------------------------------------------


async def test_anthropic_json_matches_recorded_shape() -> None:
    fixture = orjson.loads((FIXTURES / "anthropic_message.json").read_bytes())
    async with mock(**ZERO) as (url, s):
        async with s.post(url + "/messages", json=anthropic(max_tokens=5)) as r:
            assert r.status == 200 and r.headers["request-id"].startswith("req_")
            doc = await r.json()
    assert shape(doc) == shape(fixture)
    assert doc["id"].startswith("msg_") and doc["stop_reason"] == "max_tokens"
    assert doc["usage"]["output_tokens"] == 5 and len(doc["content"][0]["text"]) == 20


async def test_anthropic_stream_matches_recorded_events() -> None:
    recorded = sse((FIXTURES / "anthropic_stream.txt").read_text())
    async with mock(**ZERO) as (url, s):
        async with s.post(url + "/messages", json=anthropic(max_tokens=3, stream=True)) as r:
            events = sse(await r.text())
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    by_name = {n: orjson.loads(d) for n, d in recorded}
    for name, data in events:
        assert name is not None
        assert shape(orjson.loads(data)) == shape(by_name[name]), name
    final = orjson.loads(events[-2][1])
    assert final["usage"]["output_tokens"] == 3


async def test_anthropic_prewarm_with_max_tokens_zero() -> None:
    system = [{"type": "text", "text": "r" * 6000, "cache_control": {"type": "ephemeral"}}]
    async with mock(**ZERO) as (url, s):
        body = anthropic(max_tokens=0, system=system)
        async with s.post(url + "/messages", json=body) as r:
            doc = await r.json()
        assert doc["content"] == [] and doc["usage"]["output_tokens"] == 0
        assert doc["usage"]["cache_creation_input_tokens"] > 0
        async with s.post(url + "/messages", json={**body, "stream": True}) as r:
            assert r.status == 400


async def test_anthropic_caches_only_up_to_the_breakpoint() -> None:
    doc_text = "d" * 4400  # 1,100 tokens of document after "...\n"
    system = [
        {"type": "text", "text": doc_text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    body = anthropic("What does it say?", system=system)
    async with mock(**ZERO) as (url, s):
        usages = []
        for _ in range(2):
            async with s.post(url + "/messages", json=body) as r:
                usages.append((await r.json())["usage"])
    first, second = usages
    cached_part = math.ceil((4400 + 1) / 4)  # the block and its separator
    assert first["cache_creation_input_tokens"] == cached_part
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": cached_part,
    }
    assert first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == cached_part
    assert second["cache_creation_input_tokens"] == 0
    # input_tokens is only what follows the breakpoint, the same on both requests
    assert first["input_tokens"] == second["input_tokens"] > 0


async def test_anthropic_top_level_cache_control_and_minimum() -> None:
    long_body = anthropic("q" * 6000, cache_control={"type": "ephemeral"})
    short_body = anthropic("q" * 400, cache_control={"type": "ephemeral"})
    async with mock(**ZERO) as (url, s):
        for _ in range(2):
            async with s.post(url + "/messages", json=long_body) as r:
                long_usage = (await r.json())["usage"]
            async with s.post(url + "/messages", json=short_body) as r:
                short_usage = (await r.json())["usage"]
    # top-level cache_control puts the breakpoint on the last block: everything is cached
    assert long_usage["cache_read_input_tokens"] > 1500 and long_usage["input_tokens"] == 0
    # below the minimum the prompt is silently uncached
    assert short_usage["cache_read_input_tokens"] == 0
    assert short_usage["cache_creation_input_tokens"] == 0


# -- OpenAI prefix cache ----------------------------------------------------------------------


def shared_prefix_chat(i: int, prefix_tokens: int = 2000, **extra: Any) -> dict[str, Any]:
    return {
        "model": "mock-1",
        "messages": [
            {"role": "system", "content": "p" * (prefix_tokens * 4)},
            {"role": "user", "content": f"question {i:04d} " + "u" * 200},
        ],
        "max_tokens": 1,
        **extra,
    }


# canonical text: "system\n" + 8,000 shared bytes + "\nuser\n" ... -> 15 whole 512-byte blocks
SHARED_BLOCK_TOKENS = (7 + 8000 + 6) // 512 * 128


async def test_openai_second_request_hits_whole_blocks() -> None:
    async with mock(**ZERO) as (url, s):
        cached = []
        for i in range(2):
            async with s.post(url + "/chat/completions", json=shared_prefix_chat(i)) as r:
                cached.append((await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"])
        st = await stats(s, url)
    assert cached == [0, SHARED_BLOCK_TOKENS]
    assert st["cached_tokens"] == SHARED_BLOCK_TOKENS and st["cache_write_tokens"] > 0


async def test_cache_off_and_short_prompts_never_hit() -> None:
    async with mock(**ZERO, cache=False) as (url, s):
        for i in range(2):
            async with s.post(url + "/chat/completions", json=shared_prefix_chat(i)) as r:
                doc = await r.json()
        assert doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    async with mock(**ZERO) as (url, s):
        for i in range(2):
            body = shared_prefix_chat(i, prefix_tokens=700)
            async with s.post(url + "/chat/completions", json=body) as r:
                doc = await r.json()
        assert doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def _fan_out(url: str, s: aiohttp.ClientSession, ids: range) -> list[int]:
    async def one(i: int) -> int:
        async with s.post(url + "/chat/completions", json=shared_prefix_chat(i)) as r:
            doc = await r.json()
            cached: int = doc["usage"]["prompt_tokens_details"]["cached_tokens"]
            return cached

    return await asyncio.gather(*(one(i) for i in ids))


# The prefill takes 600 ms, so all 200 requests arrive while the first is still prefilling.
STAMPEDE: dict[str, Any] = {
    "base_ms": 600.0,
    "prefill_ms_per_token": 0.0,
    "decode_ms_per_token": 0.0,
    "jitter": 0,
}


async def test_stampede_cold_fan_out_misses() -> None:
    connector = aiohttp.TCPConnector(limit=200)
    async with serve(MockConfig(**STAMPEDE)) as url:
        async with aiohttp.ClientSession(connector=connector) as s:
            cached = await _fan_out(url, s, range(200))
    assert len(cached) == 200
    # almost no cached tokens: at most a few stragglers that arrived after the first response
    assert sum(cached) <= 0.05 * 200 * SHARED_BLOCK_TOKENS


async def test_primer_then_fan_out_hits_every_cacheable_block() -> None:
    connector = aiohttp.TCPConnector(limit=200)
    async with serve(MockConfig(**STAMPEDE)) as url:
        async with aiohttp.ClientSession(connector=connector) as s:
            primer = await _fan_out(url, s, range(1))
            followers = await _fan_out(url, s, range(1, 200))
    assert primer == [0]
    assert followers == [SHARED_BLOCK_TOKENS] * 199


async def test_replica_overflow_above_key_rate_misses() -> None:
    # key_rpm=2: the route's bucket holds two requests, the third overflows to another replica
    async with mock(**ZERO, replicas=4, key_rpm=2) as (url, s):
        cached = []
        for i in range(3):
            body = shared_prefix_chat(i, prompt_cache_key="tenant-a")
            async with s.post(url + "/chat/completions", json=body) as r:
                cached.append((await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert cached == [0, SHARED_BLOCK_TOKENS, 0]


async def test_report_cache_write_tokens() -> None:
    async with mock(**ZERO, report_cache_write=True) as (url, s):
        async with s.post(url + "/chat/completions", json=shared_prefix_chat(0)) as r:
            details = (await r.json())["usage"]["prompt_tokens_details"]
    # every whole block of the prompt is written: 2,000 + question tokens -> 16 blocks
    assert details["cache_write_tokens"] == 16 * 128 and details["cached_tokens"] == 0


# -- stats ------------------------------------------------------------------------------------


async def test_stats_count_and_reset() -> None:
    async with mock(**ZERO) as (url, s):
        for _ in range(3):
            async with s.post(url + "/chat/completions", json=chat(max_tokens=2)) as r:
                await r.read()
        async with s.post(url + "/chat/completions", data=b"[") as r:
            await r.read()
        st = await stats(s, url)
        assert st["requests"] == 4
        assert st["by_status"] == {"200": 3, "400": 1}
        assert st["completion_tokens"] == 6 and st["prompt_tokens"] > 0
        assert st["open_connections"] == 1 and st["rate_limited"] == 0
        assert set(st["faults"]) >= {"http_500", "reset", "stall", "stream_error"}
        async with s.post(url.removesuffix("/v1") + "/stats/reset") as r:
            assert r.status == 200
        st = await stats(s, url)
        assert st["requests"] == 0 and st["by_status"] == {}


# -- auth, quota, rate limits -----------------------------------------------------------------


async def test_openai_api_key_required() -> None:
    secret = "sk-test-123456"
    async with mock(**ZERO, api_key=secret) as (url, s):
        async with s.post(url + "/chat/completions", json=chat()) as r:
            assert r.status == 401
            missing = await r.json()
        wrong = {"Authorization": "Bearer sk-wrong-999"}
        async with s.post(url + "/chat/completions", json=chat(), headers=wrong) as r:
            assert r.status == 401
            text = await r.text()
        good = {"Authorization": f"Bearer {secret}"}
        async with s.post(url + "/chat/completions", json=chat(), headers=good) as r:
            assert r.status == 200
        async with s.get(url + "/models") as r:
            assert r.status == 401
    assert missing["error"]["code"] is None
    assert orjson.loads(text)["error"]["code"] == "invalid_api_key"
    assert "sk-wrong" not in text and "999" not in text


async def test_anthropic_api_key_required() -> None:
    async with mock(**ZERO, require_api_key=True) as (url, s):
        async with s.post(url + "/messages", json=anthropic()) as r:
            assert r.status == 401
            doc = await r.json()
        async with s.post(url + "/messages", json=anthropic(), headers={"x-api-key": "k"}) as r:
            assert r.status == 200
    assert doc == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }


async def test_insufficient_quota_after_n_requests() -> None:
    async with mock(**ZERO, insufficient_quota_after=1) as (url, s):
        async with s.post(url + "/chat/completions", json=chat()) as r:
            assert r.status == 200
        async with s.post(url + "/chat/completions", json=chat()) as r:
            assert r.status == 429
            doc = await r.json()
        async with s.post(url + "/messages", json=anthropic()) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
    assert doc["error"]["type"] == "insufficient_quota"
    assert doc["error"]["code"] == "insufficient_quota"
    assert set(doc["error"]) == {"message", "type", "param", "code"}


async def test_openai_rpm_limit_headers_and_429() -> None:
    async with mock(**ZERO, rpm=2, tpm=100_000) as (url, s):
        seen = []
        for _ in range(3):
            async with s.post(url + "/chat/completions", json=chat(max_tokens=4)) as r:
                seen.append((r.status, r.headers.copy(), await r.json()))
        st = await stats(s, url)
    (s1, h1, _), (s2, h2, _), (s3, h3, body) = seen
    assert (s1, s2, s3) == (200, 200, 429)
    assert h1["x-ratelimit-limit-requests"] == "2" and h1["x-ratelimit-remaining-requests"] == "1"
    assert h2["x-ratelimit-remaining-requests"] == "0"
    assert h1["x-ratelimit-limit-tokens"] == "100000"
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert GO_DURATION.match(h1[name]), h1[name]
    assert 29_000 <= int(h3["retry-after-ms"]) <= 30_000
    assert h3["retry-after"] == "30"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "requests"
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["param"] is None
    assert "Please try again in" in body["error"]["message"]
    assert st["rate_limited"] == 1 and st["by_status"]["429"] == 1


async def test_openai_tpm_limit_is_of_type_tokens() -> None:
    async with mock(**ZERO, tpm=100) as (url, s):
        async with s.post(url + "/chat/completions", json=chat(max_tokens=90)) as r:
            assert r.status == 200
        async with s.post(url + "/chat/completions", json=chat(max_tokens=90)) as r:
            assert r.status == 429
            body = await r.json()
            assert int(r.headers["retry-after-ms"]) > 0
    assert body["error"]["type"] == "tokens"


async def test_anthropic_rate_limit_headers_and_429() -> None:
    async with mock(**ZERO, rpm=1, tpm=10_000, output_tpm=1000) as (url, s):
        async with s.post(url + "/messages", json=anthropic()) as r:
            headers = r.headers.copy()
        async with s.post(url + "/messages", json=anthropic()) as r:
            assert r.status == 429
            assert r.headers["retry-after"] == "60"
            body = await r.json()
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert f"anthropic-ratelimit-{kind}-limit" in headers
        assert RFC3339.match(headers[f"anthropic-ratelimit-{kind}-reset"])
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


async def test_anthropic_output_tokens_have_a_bucket_of_their_own() -> None:
    # Anthropic charges output to its own bucket, on the reply's length; the input bucket sees
    # the prompt only (OpenAI instead charges prompt + max_tokens to one bucket).
    async with mock(**ZERO, tpm=10_000, output_tpm=100) as (url, s):
        async with s.post(url + "/messages", json=anthropic(max_tokens=60)) as r:
            assert r.status == 200
            headers = r.headers.copy()
            prompt = (await r.json())["usage"]["input_tokens"]
        async with s.post(url + "/messages", json=anthropic(max_tokens=60)) as r:
            assert r.status == 429
            body = await r.json()
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "40"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == str(10_000 - prompt)
    assert "100 output tokens per minute" in body["error"]["message"]


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "endpoint", "status", "error_type"),
    [
        ("fault_http_500", "/chat/completions", 500, "server_error"),
        ("fault_http_502", "/chat/completions", 502, "server_error"),
        ("fault_http_503", "/chat/completions", 503, "server_error"),
        ("fault_http_529", "/chat/completions", 503, "server_error"),
        ("fault_http_500", "/messages", 500, "api_error"),
        ("fault_http_529", "/messages", 529, "overloaded_error"),
    ],
)
async def test_status_faults(fault: str, endpoint: str, status: int, error_type: str) -> None:
    async with mock(**ZERO, **{fault: 1.0}) as (url, s):
        body = anthropic() if endpoint == "/messages" else chat()
        async with s.post(url + endpoint, json=body) as r:
            assert r.status == status
            doc = await r.json()
        st = await stats(s, url)
    assert st["faults"][fault[6:]] == 1
    error = doc["error"]
    assert error["type"] == error_type
    if endpoint == "/messages":
        assert doc["type"] == "error" and set(error) == {"type", "message"}
    else:
        assert set(error) == {"message", "type", "param", "code"}


async def test_faults_are_reproducible_with_a_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        async with mock(**ZERO, seed=seed, fault_http_500=0.5) as (url, s):
            out = []
            for _ in range(24):
                async with s.post(url + "/chat/completions", json=chat()) as r:
                    out.append(r.status)
            return out

    first, again, other = await statuses(7), await statuses(7), await statuses(8)
    assert first == again and first != other
    assert {200, 500} == set(first)


async def test_reset_fault_drops_the_connection() -> None:
    async with mock(**ZERO, fault_reset=1.0) as (url, s):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.post(url + "/chat/completions", json=chat()) as r:
                await r.read()


async def test_truncated_body_fails_the_read() -> None:
    async with mock(**ZERO, fault_truncate=1.0) as (url, s):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(url + "/chat/completions", json=chat(max_tokens=50)) as r:
                assert r.status == 200
                await r.read()


async def test_truncated_stream_fails_the_read() -> None:
    async with mock(**ZERO, fault_truncate=1.0) as (url, s):
        with pytest.raises(aiohttp.ClientPayloadError):
            body = chat(max_tokens=20, stream=True)
            async with s.post(url + "/chat/completions", json=body) as r:
                await r.read()


async def test_malformed_body_is_not_json() -> None:
    async with mock(**ZERO, fault_malformed=1.0) as (url, s):
        async with s.post(url + "/chat/completions", json=chat(max_tokens=10)) as r:
            assert r.status == 200
            raw = await r.read()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        body = chat(max_tokens=10, stream=True)
        async with s.post(url + "/chat/completions", json=body) as r:
            events = sse(await r.text())
    bad = 0
    for _, data in events[:-1]:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            bad += 1
    assert bad == 1 and events[-1][1] == "[DONE]"


async def test_error_event_mid_stream() -> None:
    async with mock(**ZERO, fault_stream_error=1.0) as (url, s):
        body = chat(max_tokens=10, stream=True)
        async with s.post(url + "/chat/completions", json=body) as r:
            assert r.status == 200
            events = sse(await r.text())
        last = orjson.loads(events[-1][1])
        assert set(last) == {"error"} and last["error"]["type"] == "server_error"
        assert any("choices" in orjson.loads(d) for _, d in events[:-1])
        body = anthropic(max_tokens=10, stream=True)
        async with s.post(url + "/messages", json=body) as r:
            events = sse(await r.text())
        assert events[0][0] == "message_start" and events[-1][0] == "error"
        assert orjson.loads(events[-1][1])["error"]["type"] == "overloaded_error"
        # a non-streaming request has no stream to break: it is served normally
        async with s.post(url + "/chat/completions", json=chat()) as r:
            assert r.status == 200


async def test_slow_first_byte_delays_the_reply() -> None:
    loop = asyncio.get_running_loop()
    async with mock(**ZERO, fault_slow_first_byte=1.0, slow_first_byte_ms=80) as (url, s):
        start = loop.time()
        async with s.post(url + "/chat/completions", json=chat()) as r:
            assert r.status == 200
        assert loop.time() - start >= 0.08


async def test_stall_ends_when_the_client_gives_up() -> None:
    async with mock(**ZERO, fault_stall=1.0) as (url, s):
        timeout = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(url + "/chat/completions", json=chat(), timeout=timeout) as r:
                await r.read()
        assert (await stats(s, url))["faults"]["stall"] == 1


async def test_stall_does_not_hold_up_shutdown() -> None:
    server = MockServer(MockConfig(**ZERO, fault_stall=1.0))
    url = await server.start()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:

        async def stalled() -> None:
            async with s.post(url + "/chat/completions", json=chat()) as r:
                await r.read()

        task = asyncio.create_task(stalled())
        for _ in range(10_000):  # yield until the request has reached the server
            if server.stats()["faults"]["stall"]:
                break
            await asyncio.sleep(0)
        assert server.stats()["faults"]["stall"] == 1
        start = loop.time()
        await server.close()
        assert loop.time() - start < 2.0
        with pytest.raises(aiohttp.ClientError):
            await task

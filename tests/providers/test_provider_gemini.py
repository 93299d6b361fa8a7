"""The Gemini backend: translation, usage, errors and streaming, against the simulated Gemini API
(``runner.mock``'s ``/v1beta`` routes) over loopback, plus its ``cachedContents`` store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from runner.config import RunConfig
from runner.explicit_cache import CacheAPIError
from runner.mock import MockConfig, serve
from runner.models import Job, Usage
from runner.providers import GeminiBackend, open_backend
from runner.providers.gemini import classify_error, parse_usage, to_contents

KEY = "gm-secret-key-0123456789"
SYSTEM = "You are a contracts lawyer. " * 200  # ~1,400 tokens: above the 1,024 minimum
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Example question"},
    {"role": "assistant", "content": [{"type": "text", "text": "Example answer"}]},
    {"role": "user", "content": "Analyze Section 4.2."},
]


def job(params: Mapping[str, Any] | None = None, prefix_len: int = 3) -> Job:
    return Job(
        custom_id="q-1",
        line=1,
        messages=tuple(MESSAGES),
        prefix_len=prefix_len,
        group="legal:abc",
        cache_id="legal",
        model=None,
        params=params or {"max_tokens": 5},
        prompt_chars=len(SYSTEM) + 60,
        prefix_chars=len(SYSTEM) + 40,
    )


def config(url: str, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "provider": "gemini",
        "base_url": url.rsplit("/v1", 1)[0] + "/v1beta",
        "model": "gemini-2.5-flash",
    }
    return RunConfig(**(base | kw))


# -- translation (pure) -------------------------------------------------------------------------


def test_messages_translate_to_system_instruction_and_user_model_turns() -> None:
    system, contents = to_contents(MESSAGES)
    assert system == {"parts": [{"text": SYSTEM}]}
    assert contents == [
        {"role": "user", "parts": [{"text": "Example question"}]},
        {"role": "model", "parts": [{"text": "Example answer"}]},
        {"role": "user", "parts": [{"text": "Analyze Section 4.2."}]},
    ]


async def test_body_with_and_without_a_cache() -> None:
    async with serve(MockConfig(latency="zero")) as url:
        cfg = config(url, params={"temperature": 0.2})
        async with open_backend(cfg, base_url=cfg.base_url or "", api_key=KEY) as be:
            assert isinstance(be, GeminiBackend)
            params = {"max_tokens": 7, "stop": "END", "top_p": 0.9, "logprobs": True}
            full, stream = be.build_body(job(params), None)
            cached, _ = be.build_body(job(params), "cachedContents/abc")
    assert not stream
    assert full["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    assert len(full["contents"]) == 3
    gen = {"maxOutputTokens": 7, "stopSequences": ["END"], "topP": 0.9, "temperature": 0.2}
    assert full["generationConfig"] == gen
    assert "logprobs" not in full and "logprobs" not in full["generationConfig"]
    # With a cache: the reference, only the job's own turn, and no system instruction
    # (the API rejects one next to cachedContent).
    assert cached["cachedContent"] == "cachedContents/abc"
    assert "systemInstruction" not in cached
    assert cached["contents"] == [{"role": "user", "parts": [{"text": "Analyze Section 4.2."}]}]


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (
            {"promptTokenCount": 2100, "cachedContentTokenCount": 2048, "candidatesTokenCount": 9},
            Usage(2100, 2048, 0, 9),
        ),
        (
            {"promptTokenCount": 30, "candidatesTokenCount": 5, "thoughtsTokenCount": 40},
            Usage(30, 0, 0, 45),
        ),
        (None, None),
    ],
)
def test_usage_metadata_normalised(meta: Any, expected: Usage | None) -> None:
    assert parse_usage(meta) == expected


def _err(code: int, status: str, message: str, details: list[Any] | None = None) -> Any:
    return {"error": {"code": code, "status": status, "message": message, "details": details or []}}


def test_error_classes() -> None:
    retry = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "19s"},
    ]
    e = classify_error(429, _err(429, "RESOURCE_EXHAUSTED", "quota", retry), {})
    assert (e.code, e.retriable, e.retry_after_s, e.fatal) == ("rate_limited", True, 19.0, False)
    bad_key = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    e = classify_error(400, _err(400, "INVALID_ARGUMENT", "API key not valid.", bad_key), {})
    assert e.code == "auth" and e.fatal
    e = classify_error(
        403, _err(403, "PERMISSION_DENIED", "CachedContent not found (or permission denied)"), {}
    )
    assert e.code == "cache_missing" and e.retriable and not e.fatal
    e = classify_error(403, _err(403, "PERMISSION_DENIED", "no access"), {})
    assert e.code == "auth" and e.fatal
    e = classify_error(503, _err(503, "UNAVAILABLE", "overloaded"), {})
    assert e.retriable and e.code == "overloaded"
    e = classify_error(500, _err(500, "INTERNAL", "oops"), {})
    assert e.retriable and e.code == "http_5xx"
    e = classify_error(400, _err(400, "INVALID_ARGUMENT", "bad field"), {})
    assert not e.retriable and e.code == "http_4xx"


# -- against the simulated Gemini API -----------------------------------------------------------


async def _send(mock: MockConfig, the_job: Job, **kw: Any) -> Any:
    async with serve(mock) as url:
        cfg = config(url, **kw)
        async with open_backend(cfg, base_url=cfg.base_url or "", api_key=KEY) as be:
            return await be.send(the_job, cache_key=None)


async def test_json_reply_and_usage() -> None:
    a = await _send(MockConfig(latency="zero", gemini_implicit_cache=False), job())
    assert a.error is None and a.status == 200
    assert a.body["candidates"][0]["content"]["role"] == "model"
    assert a.usage.completion_tokens == 5 and a.usage.prompt_tokens > 1024
    assert a.usage.cached_tokens == 0
    assert a.request_id


async def test_stream_assembled_with_ttft_and_usage() -> None:
    mock = MockConfig(latency="model", base_ms=20.0, decode_ms_per_token=1.0, jitter=0.0)
    a = await _send(mock, job({"max_tokens": 20}), stream=True)
    assert a.error is None, a.error
    text = a.body["candidates"][0]["content"]["parts"][0]["text"]
    assert len(text) == 80  # 20 four-byte words
    assert a.body["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert a.usage.completion_tokens == 20
    assert a.ttft_ms is not None and a.ttft_ms >= 15.0
    assert a.itl_ms  # several content chunks


async def test_429_resource_exhausted_with_retry_info() -> None:
    mock = MockConfig(latency="zero", fault_http_429=1.0, fault_429_retry_ms=2500.0)
    a = await _send(mock, job())
    assert a.status == 429 and a.error.code == "rate_limited"
    assert a.error.retry_after_s == 3.0  # retryDelay "3s"
    assert a.body["error"]["status"] == "RESOURCE_EXHAUSTED"


async def test_wrong_key_is_fatal_and_never_echoed() -> None:
    a = await _send(MockConfig(latency="zero", api_key="the-right-key-123"), job())
    assert a.status == 400 and a.error.fatal and a.error.code == "auth"
    assert KEY not in a.error.message


async def test_implicit_caching_switchable() -> None:
    for implicit, expect_hit in ((True, True), (False, False)):
        async with serve(MockConfig(latency="zero", gemini_implicit_cache=implicit)) as url:
            cfg = config(url)
            async with open_backend(cfg, base_url=cfg.base_url or "", api_key=KEY) as be:
                await be.send(job(), cache_key=None)
                a = await be.send(job(), cache_key=None)
        assert a.usage is not None
        assert bool(a.usage.cached_tokens) is expect_hit


async def test_cache_store_lifecycle_with_real_expiry() -> None:
    async with serve(MockConfig(latency="zero", gemini_implicit_cache=False)) as url:
        cfg = config(url)
        async with open_backend(cfg, base_url=cfg.base_url or "", api_key=KEY) as be:
            assert isinstance(be, GeminiBackend)
            info = await be.create_cache(job(), ttl_s=0.3, display_name="runner:t:g")
            assert info.name.startswith("cachedContents/") and info.tokens > 1024
            a = await be.send(job(), cache_key=info.name)
            assert a.error is None and a.usage is not None
            assert a.usage.cached_tokens == info.tokens
            assert a.usage.prompt_tokens > info.tokens
            await be.extend_cache(info.name, ttl_s=0.3)
            listed = await be.list_caches()
            assert [c.display_name for c in listed] == ["runner:t:g"]
            await asyncio.sleep(0.4)  # past the TTL: the server drops it on its own clock
            a = await be.send(job(), cache_key=info.name)
            assert a.status == 403 and a.error is not None
            assert a.error.code == "cache_missing"
            assert await be.list_caches() == []
            with pytest.raises(CacheAPIError) as exc:
                await be.extend_cache(info.name, ttl_s=10)
            assert exc.value.missing
            await be.delete_cache(info.name)  # deleting a gone cache is not an error
            small = job(prefix_len=0)
            with pytest.raises(CacheAPIError) as exc:
                await be.create_cache(
                    Job(**{**_fields(small), "prefix_len": 2, "messages": (MESSAGES[1],) * 2}),
                    ttl_s=60,
                    display_name="x",
                )
            assert exc.value.status == 400 and "too small" in str(exc.value)


def _fields(j: Job) -> dict[str, Any]:
    return {f: getattr(j, f) for f in Job.__slots__}


async def test_list_pages_through_many_caches() -> None:
    async with serve(MockConfig(latency="zero")) as url:
        base = url.rsplit("/v1", 1)[0] + "/v1beta"
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                doc = {
                    "model": "models/gemini-2.5-flash",
                    "displayName": f"c{i}",
                    "systemInstruction": {"parts": [{"text": SYSTEM}]},
                }
                async with s.post(base + "/cachedContents", json=doc) as r:
                    assert r.status == 200
            async with s.get(base + "/cachedContents?pageSize=2") as r:
                page = await r.json()
        assert len(page["cachedContents"]) == 2 and page["nextPageToken"]
        cfg = config(url)
        async with open_backend(cfg, base_url=base, api_key=KEY) as be:
            assert isinstance(be, GeminiBackend)
            assert len(await be.list_caches()) == 5

"""Server text that reaches an output without passing the per-request answer path: Gemini's
``cachedContents`` answers (2xx: the name, displayName and times are journaled in the meta file,
printed by ``runner caches`` and put in errors). Found by a red team: a key echoed there was
written verbatim, though README ("Reliability") says the key never reaches any output. Batch
control objects are covered in tests/batchapi/test_qa_batch_secret.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import serve_app

from runner.config import RunConfig
from runner.explicit_cache import CacheAPIError
from runner.models import Job
from runner.providers import GeminiBackend, open_backend

KEY = "AIzaQA-cache-SECRET/0123456789abcdef"
B64 = base64.b64encode(KEY.encode()).decode().rstrip("=")
ESCAPED = KEY.replace("/", "\\/")  # JSON's escaped slash: a byte search for the key misses it


def _job() -> Job:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    return Job("q1", 1, msgs, 1, "g1", "doc", None, {}, 8001, 8000)


def _app(created: str, deleted: list[str]) -> web.Application:
    """A cachedContents server that names a new cache ``created`` and lists one cache whose
    name, displayName and times carry the key (as sent, base64, JSON-escaped)."""

    async def create(request: web.Request) -> web.Response:
        doc = {"name": created, "displayName": "runner:t:g", "ttl": "300s"}
        return web.json_response(doc)

    async def listing(request: web.Request) -> web.Response:
        item = (
            f'{{"name": "cachedContents/k-{B64}", "displayName": "runner:t:g {KEY}",'
            f' "expireTime": "{ESCAPED}", "usageMetadata": {{"totalTokenCount": 9}}}}'
        )
        body = '{"cachedContents": [' + item + "]}"
        return web.Response(text=body, content_type="application/json")

    async def delete(request: web.Request) -> web.Response:
        deleted.append(request.match_info["name"])
        return web.json_response({})

    async def patch(request: web.Request) -> web.Response:
        name = "cachedContents/" + request.match_info["name"]
        return web.json_response({"name": name, "displayName": f"echo {KEY}", "ttl": "300s"})

    app = web.Application()
    app.router.add_post("/v1beta/cachedContents", create)
    app.router.add_get("/v1beta/cachedContents", listing)
    app.router.add_delete("/v1beta/cachedContents/{name}", delete)
    app.router.add_patch("/v1beta/cachedContents/{name}", patch)
    return app


def _cfg(base: str) -> RunConfig:
    return RunConfig(provider="gemini", base_url=base, model="gemini-2.5-flash")


def _no_key(text: str) -> None:
    for form in (KEY, B64, ESCAPED):
        assert form not in text


async def test_a_new_cache_named_with_the_key_is_deleted_by_its_real_name_and_refused() -> None:
    deleted: list[str] = []
    async with serve_app(_app(f"cachedContents/n-{B64}", deleted), "/v1beta") as base:
        async with open_backend(_cfg(base), base_url=base, api_key=KEY) as be:
            assert isinstance(be, GeminiBackend)
            with pytest.raises(CacheAPIError) as caught:
                await be.create_cache(_job(), ttl_s=300.0, display_name="runner:t:g")
    assert deleted == [f"n-{B64}"]  # not left billed under a name nobody can write down
    assert "deleted" in str(caught.value) and caught.value.status == 200
    _no_key(str(caught.value))


async def test_listed_and_extended_caches_carry_no_key_and_a_redacted_name_is_never_sent() -> None:
    deleted: list[str] = []
    async with serve_app(_app("cachedContents/plain", deleted), "/v1beta") as base:
        async with open_backend(_cfg(base), base_url=base, api_key=KEY) as be:
            assert isinstance(be, GeminiBackend)
            (listed,) = await be.list_caches()
            extended = await be.extend_cache("cachedContents/plain", ttl_s=60.0)
            with pytest.raises(CacheAPIError) as caught:
                await be.delete_cache(listed.name)
            created = await be.create_cache(_job(), ttl_s=300.0, display_name="runner:t:g")
    _no_key(repr(listed) + repr(extended) + str(caught.value))
    assert "[redacted]" in listed.name and "[redacted]" in str(listed.expire_time)
    assert listed.tokens == 9 and extended.display_name == "echo [redacted]"
    assert not caught.value.missing  # never read as "already gone": the cache still lives
    assert deleted == [] and created.name == "cachedContents/plain"


async def test_runner_caches_prints_no_key_from_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.caches_cmd import _caches
    from runner.explicit_cache import run_tag

    out = tmp_path / "r.jsonl"
    monkeypatch.setenv("QA_GEMINI_KEY", KEY)
    deleted: list[str] = []

    async def tagged(request: web.Request) -> web.Response:
        item: dict[str, Any] = {
            "name": f"cachedContents/k-{B64}",
            "displayName": f"runner:{run_tag(out)}:g {KEY}",
            "expireTime": KEY,
        }
        return web.json_response({"cachedContents": [item]})

    app = web.Application()
    app.router.add_get("/v1beta/cachedContents", tagged)

    async def delete(request: web.Request) -> web.Response:
        deleted.append(request.match_info["name"])
        return web.json_response({})

    app.router.add_delete("/v1beta/cachedContents/{name}", delete)
    async with serve_app(app, "/v1beta") as base:
        cfg = RunConfig(
            provider="gemini", base_url=base, model="gemini-2.5-flash", api_key_env="QA_GEMINI_KEY"
        )
        code = await _caches([out], [run_tag(out)], cfg, True)
    printed = capsys.readouterr()
    assert "[redacted]" in printed.out  # the listing reached the output: the check means it
    _no_key(printed.out + printed.err)
    assert code == 1 and deleted == []  # a redacted name is reported, never "deleted"
    assert "carried the API key" in printed.err
    for name in os.listdir(tmp_path):
        _no_key((tmp_path / name).read_text())

"""Google Gemini API, native wire format (``POST {base}/models/{model}:generateContent``).

Jobs are written in the OpenAI chat shape (both input shapes end up there); this module
translates them: system/developer messages become ``systemInstruction``, ``assistant`` turns
become ``role: "model"``, text content becomes ``parts``, and ``max_tokens``/``temperature``/
``top_p``/``stop``/``seed`` go into ``generationConfig``. Streaming uses
``:streamGenerateContent?alt=sse``; each event is a whole ``GenerateContentResponse`` chunk and the
last carries ``finishReason`` and the final ``usageMetadata``.

Explicit context caching (``cachedContents``, see docs/GEMINI.md): when the engine passes a
``cache_key`` of the form ``cachedContents/...`` the request carries ``cachedContent`` and only the
job's own turns; the cached prefix already holds the system instruction, which a request using a
cache must not repeat. The backend also implements the cache store the engine's
:class:`~runner.explicit_cache.ExplicitCaches` drives (create / patch / delete / list).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
from yarl import URL

from .._aiohttp import aiohttp
from ..config import RunConfig
from ..explicit_cache import CacheAPIError, CacheInfo
from ..models import ErrorInfo, Job, Usage, token_count, usage_of
from ._http import (
    HELD,
    Headers,
    HTTPBackend,
    StreamParser,
    _text_of,
    error_from_exception,
    http_message,
    scrub,
    sse_data,
    status_error,
    stream_error,
)
from ._wire import REDACTED, BodyTooLarge, read_capped
from .headers import parse_retry_after

__all__ = [
    "CACHE_PREFIX",
    "GeminiBackend",
    "build_headers",
    "classify_error",
    "parse_duration",
    "parse_usage",
    "to_contents",
]

CACHE_PREFIX = "cachedContents/"
LIST_PAGE_SIZE = 1000
# 1,000 pages of 1,000 caches: far beyond any project's cache quota. A server that keeps
# answering with a next page past this (or repeats a token) would otherwise be listed for ever.
LIST_MAX_PAGES = 1000
_RETRY_INFO = "google.rpc.RetryInfo"

# Chat Completions parameter -> generationConfig field. Anything else OpenAI-only is dropped:
# the Gemini API rejects unknown fields.
_GENERATION = {
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "n": "candidateCount",
}
# Native Gemini fields a job may set in its params; passed through untouched.
_NATIVE = frozenset({"generationConfig", "safetySettings", "tools", "toolConfig", "labels"})


def build_headers(config: RunConfig, api_key: str | None) -> dict[str, str]:
    """Headers for every request: JSON, ``x-goog-api-key``, the extras."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["x-goog-api-key"] = api_key
    headers.update(config.headers)
    return headers


def _int(value: Any) -> int:
    # A negative count is no count (README, "Reliability"): it would turn into a negative cost.
    return token_count(value) or 0


def parse_usage(meta: Any) -> Usage | None:
    """Normalise ``usageMetadata``: ``promptTokenCount`` already includes the cached tokens.

    Thinking tokens are billed as output, so they count as completion tokens.
    """
    if not isinstance(meta, dict):
        return None
    return usage_of(
        _int(meta.get("promptTokenCount")),
        _int(meta.get("cachedContentTokenCount")),
        0,
        _int(meta.get("candidatesTokenCount")) + _int(meta.get("thoughtsTokenCount")),
    )


def parse_duration(text: Any) -> float | None:
    """A protobuf Duration in JSON (``"19s"``, ``"0.5s"``) as seconds."""
    if not isinstance(text, str) or not text.endswith("s"):
        return None
    try:
        value = float(text[:-1])
    except ValueError:
        return None
    return value if value >= 0 else None


def _google_error(body: Any) -> tuple[str | None, str, list[Any]]:
    """(status, message, details) of ``{"error": {"code", "message", "status", "details"}}``."""
    if isinstance(body, str):
        return None, body, []
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, list) and err:  # some proxies wrap the error in a list
        err = err[0].get("error") if isinstance(err[0], dict) else None
    if not isinstance(err, dict):
        return None, "", []
    status = err.get("status")
    message = err.get("message")
    details = err.get("details")
    return (
        status if isinstance(status, str) else None,
        message if isinstance(message, str) else "",
        details if isinstance(details, list) else [],
    )


def _detail(details: list[Any], kind: str) -> dict[str, Any] | None:
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind):
            return d
    return None


def is_cache_missing(status: int, message: str) -> bool:
    """A request referenced a cache that expired or was deleted.

    The API answers 403 PERMISSION_DENIED "CachedContent not found (or permission denied)"
    (404 NOT_FOUND on the cachedContents resource itself): a lost cache, not a bad key.
    """
    return status in (403, 404) and "cachedcontent" in message.lower().replace(" ", "")


def classify_error(status: int, body: Any, headers: Headers) -> ErrorInfo:
    """Classify a non-2xx Gemini response (``body``: parsed JSON, or the text)."""
    gstatus, message, details = _google_error(body)
    text = http_message(status, f"{gstatus}: {message}" if gstatus else message)
    if is_cache_missing(status, message):
        return ErrorInfo("cache_missing", text, retriable=True)
    info = _detail(details, "google.rpc.ErrorInfo")
    reason = info.get("reason") if info else None
    # A wrong key arrives as 400 INVALID_ARGUMENT with reason API_KEY_INVALID.
    if reason in ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED") or gstatus in (
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    ):
        return ErrorInfo("auth", text, retriable=False, fatal=True)
    if status == 429 or gstatus == "RESOURCE_EXHAUSTED":
        retry = _detail(details, _RETRY_INFO)
        delay = parse_duration(retry.get("retryDelay")) if retry else None
        if delay is None:
            delay = parse_retry_after(headers)
        return ErrorInfo("rate_limited", text, True, delay)
    if gstatus == "UNAVAILABLE" or gstatus == "DEADLINE_EXCEEDED":
        return ErrorInfo("overloaded" if status == 503 else "timeout", text, True)
    return status_error(status, message if not gstatus else f"{gstatus}: {message}", headers)


def _parts(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or typed blocks) as Gemini ``parts``."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    parts.append({"text": block["text"]})
                elif "text" not in block and "type" not in block:
                    parts.append(block)  # already a native part (inlineData, fileData...)
            elif isinstance(block, str):
                parts.append({"text": block})
    return parts


def to_contents(messages: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(``systemInstruction`` or None, ``contents``) for OpenAI chat messages."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        parts = _parts(m.get("content"))
        if role == "system" or role == "developer":
            system.extend(parts)
        elif parts:
            contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    return ({"parts": system} if system else None), contents


class GeminiStream(StreamParser):
    """Assembles ``streamGenerateContent`` chunks into one ``GenerateContentResponse``."""

    __slots__ = ("_chunk", "_finish", "_meta", "_parts")

    unfinished = "stream ended before a chunk carried finishReason"

    def __init__(self, t0: float) -> None:
        super().__init__(t0)
        self._parts: list[dict[str, Any]] = []
        self._meta: dict[str, Any] = {}
        self._chunk: dict[str, Any] = {}
        self._finish: str | None = None

    def feed(self, line: bytes, now: float) -> bool:
        data = sse_data(line)
        if data is None:
            return False
        chunk = self.event(data)
        if chunk is HELD:
            return False
        if not isinstance(chunk, dict):
            self.error = ErrorInfo("bad_response", "invalid JSON in a stream event", True)
            return True
        if "error" in chunk:
            self.error = stream_error(chunk["error"])
            return True
        self._chunk = chunk
        meta = chunk.get("usageMetadata")
        if isinstance(meta, dict):
            self._meta = meta  # cumulative: the latest wins
        cands = chunk.get("candidates")
        if isinstance(cands, list) and cands and isinstance(cands[0], dict):
            cand = cands[0]
            content = cand.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            if isinstance(parts, list) and self._add_parts(parts):
                self._content_at(now)
            finish = cand.get("finishReason")
            if isinstance(finish, str):
                self._finish = finish
                self.done = True
        return False

    def _add_parts(self, parts: list[Any]) -> bool:
        """Merge a chunk's parts: text continues the last text part of the same kind (answer
        or ``thought``); any other part (``functionCall``, ...) is kept whole. True when any
        carried generated content."""
        assembled = self._parts
        carried = False
        for p in parts:
            if not isinstance(p, dict):
                continue
            text = p.get("text")
            if not isinstance(text, str):
                if p:
                    assembled.append(dict(p))
                    carried = True
                continue
            carried = carried or bool(text)
            last = assembled[-1] if assembled else None
            if (
                last is not None
                and isinstance(last.get("text"), str)
                and bool(last.get("thought")) == bool(p.get("thought"))
            ):
                last["text"] += text
                for k, v in p.items():  # a thoughtSignature on a later piece
                    last.setdefault(k, v)
            else:
                assembled.append(dict(p))
        return carried

    def result(self) -> tuple[dict[str, Any], Usage | None]:
        body = {k: v for k, v in self._chunk.items() if k not in ("candidates", "usageMetadata")}
        body["candidates"] = [
            {
                "content": {"role": "model", "parts": self._parts or [{"text": ""}]},
                "finishReason": self._finish,
                "index": 0,
            }
        ]
        body["usageMetadata"] = self._meta
        return body, parse_usage(self._meta) if self._meta else None


GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


class GeminiBackend(HTTPBackend):
    """``POST {base}/models/{model}:generateContent`` and the ``cachedContents`` store."""

    __slots__ = ("_base", "_caches_url", "_urls")

    usage_field = "usageMetadata"
    id_field = "responseId"

    parse_usage = staticmethod(parse_usage)
    classify = staticmethod(classify_error)
    stream_class = GeminiStream

    def configure(self, config: RunConfig) -> None:
        base = str(self._url).rstrip("/")
        self._base = base
        self._caches_url = URL(base + "/cachedContents")
        self._urls: dict[tuple[str, bool], URL] = {}

    def _endpoint_error(self, status: int, message: str) -> ErrorInfo:
        # The shared hint asks whether the base URL ends in /v1, which Gemini's does not.
        info = super()._endpoint_error(status, message)
        hint = f"(Gemini's ends in /v1beta, e.g. {GEMINI_BASE_URL})"
        return replace(info, message=info.message.replace("(does it end in /v1?)", hint))

    def request_url(self, job: Job, stream: bool) -> URL:
        model = job.model or self._model
        url = self._urls.get((model, stream))
        if url is None:
            name = model if model.startswith("models/") else "models/" + model
            tail = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
            url = self._urls[(model, stream)] = URL(f"{self._base}/{name}{tail}", encoded=True)
        return url

    def build_body(
        self, job: Job, cache_key: str | None, *, prewarm: bool = False
    ) -> tuple[dict[str, Any], bool]:
        cached = cache_key is not None and cache_key.startswith(CACHE_PREFIX)
        messages: Any = job.messages[job.prefix_len :] if cached else job.messages
        system, contents = to_contents(messages)
        body: dict[str, Any] = {}
        if cached:
            body["cachedContent"] = cache_key
        elif system is not None:
            body["systemInstruction"] = system
        body["contents"] = contents
        gen: dict[str, Any] = {}
        stream = self._stream
        for params in (self._params, job.params):
            for k, v in params.items():
                field = _GENERATION.get(k)
                if field is not None:
                    gen[field] = v
                elif k == "stop":
                    gen["stopSequences"] = [v] if isinstance(v, str) else v
                elif k == "stream":
                    stream = stream or v is True
                elif k == "generationConfig" and isinstance(v, dict):
                    gen.update(v)
                elif k in _NATIVE:
                    body[k] = v
        if gen:
            body["generationConfig"] = gen
        return body, stream

    # -- the cachedContents store (runner.explicit_cache.CacheStore) -------------------------

    def cache_body(self, job: Job, *, ttl_s: float, display_name: str) -> dict[str, Any]:
        """The ``cachedContents`` create body for ``job``'s static prefix."""
        system, contents = to_contents(job.messages[: job.prefix_len])
        model = job.model or self._model
        body: dict[str, Any] = {
            "model": model if model.startswith("models/") else "models/" + model,
            "displayName": display_name,
        }
        if system is not None:
            body["systemInstruction"] = system
        if contents:
            body["contents"] = contents
        body["ttl"] = f"{ttl_s:.3f}s"
        return body

    async def _call(self, method: str, url: URL, body: Any = None) -> Any:
        """A ``cachedContents`` request's parsed 2xx answer, with the key removed from every
        string (its name, displayName and times are journaled, printed by ``runner caches``
        and put in errors); a failure as :class:`CacheAPIError` (key-free message)."""
        raw, doc = await self._call_raw(method, url, body)
        if self._guard.leaks(raw, doc):
            doc, _ = self._guard.scrub_body(doc)
        return doc

    async def _call_raw(self, method: str, url: URL, body: Any = None) -> tuple[bytes, Any]:
        data = None if body is None else orjson.dumps(body)
        try:
            async with self._session.request(method, url, data=data) as resp:
                status = resp.status
                # Bounded as a chat answer is (max_response_bytes): an endless or enormous
                # answer fails this call (the group goes with full prompts, as after any
                # failed create) instead of exhausting memory.
                raw = await read_capped(resp, self._cap)
                headers = resp.headers
        except BodyTooLarge as exc:
            raise CacheAPIError(
                scrub(f"{method} {url.path}: {exc}", self._api_key), status=status
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            info = self._scrubbed(error_from_exception(exc))
            raise CacheAPIError(info.message, status=None, retriable=True) from exc
        try:
            doc: Any = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            doc = scrub(_text_of(raw), self._api_key)  # cut and marked: see redact()
        if 200 <= status < 300:
            return raw, doc
        info = self._scrubbed(self.classify(status, doc, headers))
        missing = status == 404 or info.code == "cache_missing"
        raise CacheAPIError(
            scrub(f"{method} {url.path}: {info.message}", self._api_key),
            status=status,
            missing=missing,
            retriable=info.retriable and not missing,
            retry_after_s=info.retry_after_s,
        )

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        raw, doc = await self._call_raw(
            "POST", self._caches_url, self.cache_body(job, ttl_s=ttl_s, display_name=display_name)
        )
        name = doc.get("name") if isinstance(doc, dict) else None
        if isinstance(name, str) and self._guard.text(name) != name:
            # A name that carries the key could be journaled and printed only redacted, and a
            # redacted name no longer names the cache: deleted now, under its real name, and
            # the group goes with full prompts (as after any failed create).
            try:
                await self._call_raw("DELETE", URL(f"{self._base}/{name}", encoded=True))
                fate = "deleted"
            except CacheAPIError:
                fate = "its delete failed: it lives until its TTL ends"
            raise CacheAPIError(
                "cachedContents: the server named the new cache with the API key in it; "
                f"not used ({fate})",
                status=200,
            )
        if self._guard.leaks(raw, doc):
            doc, _ = self._guard.scrub_body(doc)
        return _cache_info(doc, ttl_s, ("createTime", "updateTime"))

    def _named(self, name: str) -> None:
        """Refuses a name whose key was redacted from a listing: it names no cache (a DELETE
        would answer 404, read as "already gone", while the cache lives until its TTL)."""
        if REDACTED in name:
            raise CacheAPIError(
                f"{name}: the server's name for this cache carried the API key, redacted here, "
                "so it cannot be named in a request; it lives until its TTL ends",
                status=None,
            )

    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo:
        self._named(name)
        url = URL(f"{self._base}/{name}?updateMask=ttl", encoded=True)
        doc = await self._call("PATCH", url, {"ttl": f"{ttl_s:.3f}s"})
        return _cache_info(doc, ttl_s, ("updateTime",))

    async def delete_cache(self, name: str) -> None:
        self._named(name)
        try:
            await self._call("DELETE", URL(f"{self._base}/{name}", encoded=True))
        except CacheAPIError as exc:
            if not exc.missing:  # already gone (expired or deleted): nothing left to pay for
                raise

    async def list_caches(self) -> list[CacheInfo]:
        out: list[CacheInfo] = []
        token = ""
        seen: set[str] = set()
        for _ in range(LIST_MAX_PAGES):
            # the token is opaque (base64: "+", "/", "="): sent quoted, or "+" arrives a space
            q = f"?pageSize={LIST_PAGE_SIZE}" + (
                f"&pageToken={quote(token, safe='')}" if token else ""
            )
            doc = await self._call("GET", URL(f"{self._base}/cachedContents{q}", encoded=True))
            for item in doc.get("cachedContents") or [] if isinstance(doc, dict) else []:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    out.append(_cache_info(item, None))
            nxt = doc.get("nextPageToken") if isinstance(doc, dict) else None
            if not nxt or not isinstance(nxt, str):
                return out
            if nxt in seen:
                # A token seen before: the server pages in a cycle, every later page a repeat.
                raise CacheAPIError(
                    f"listing cachedContents: the server repeated nextPageToken {nxt[:40]!r}"
                    f" after {len(seen) + 1} page(s) ({len(out)} caches): stopped",
                    status=200,
                )
            seen.add(nxt)
            token = nxt
        raise CacheAPIError(
            f"listing cachedContents: still a nextPageToken after {LIST_MAX_PAGES} pages"
            f" ({len(out)} caches): stopped",
            status=200,
        )


def _wall(text: Any) -> float | None:
    """An RFC 3339 timestamp (``2026-01-01T00:00:00.123456Z``) as epoch seconds, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _cache_info(doc: Any, ttl_s: float | None, op_times: tuple[str, ...] = ()) -> CacheInfo:
    """``doc`` (a ``cachedContents`` resource) as a :class:`CacheInfo`. ``op_times``: the fields
    that may hold the server's time of the operation it answers (a create's ``createTime`` or
    ``updateTime``; a PATCH's ``updateTime`` only: its ``createTime`` is the cache's, not the
    PATCH's); the expiry is read from these by ``runner.explicit_cache._life``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise CacheAPIError("cachedContents: response without a name", status=200, retriable=True)
    meta = doc.get("usageMetadata")
    tokens = _int(meta.get("totalTokenCount")) if isinstance(meta, dict) else 0
    display = doc.get("displayName")
    return CacheInfo(
        name=doc["name"],
        display_name=display if isinstance(display, str) else "",
        tokens=tokens,
        expire_time=doc.get("expireTime") if isinstance(doc.get("expireTime"), str) else None,
        ttl_s=ttl_s,
        granted_s=parse_duration(doc.get("ttl")),
        created_wall=_wall(doc.get("createTime")),
        expire_wall=_wall(doc.get("expireTime")),
        op_wall=next((w for f in op_times if (w := _wall(doc.get(f))) is not None), None),
    )

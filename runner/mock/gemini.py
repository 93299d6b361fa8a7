"""The simulated Gemini API (``/v1beta``): generateContent and ``cachedContents``.

Routes (the base URL given to clients ends in ``/v1beta``)::

    GET    /v1beta/models                                  model list
    POST   /v1beta/models/{model}:generateContent          JSON
    POST   /v1beta/models/{model}:streamGenerateContent    SSE (``?alt=sse``)
    POST   /v1beta/cachedContents                          create (``ttl`` or ``expireTime``)
    GET    /v1beta/cachedContents                          list (``pageSize``, ``pageToken``)
    GET    /v1beta/cachedContents/{id}                     get
    PATCH  /v1beta/cachedContents/{id}                     new ``ttl`` / ``expireTime``
    DELETE /v1beta/cachedContents/{id}                     delete

Caches expire for real on the server's clock (``gemini_max_ttl_s`` caps every TTL;
``gemini_patch_omit`` leaves times out of PATCH answers; ``gemini_create_delay_ms`` answers a
create late, the cache existing at once). A request naming a missing or expired cache gets
403 PERMISSION_DENIED "CachedContent not found (or permission denied)", as the service answers;
the resource endpoints answer 404 NOT_FOUND. A cache below ``gemini_min_cache_tokens`` is refused
with 400 INVALID_ARGUMENT. Rate limits and the 429 fault answer RESOURCE_EXHAUSTED with a
``google.rpc.RetryInfo`` ``retryDelay``. Storage is accounted per cache as tokens x seconds alive
(until deleted or expired), in ``GET /stats`` under ``gemini``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

from .cache import block_boundaries
from .tokenizer import count_tokens

if TYPE_CHECKING:
    from .server import MockServer

__all__ = ["GeminiAPI", "gemini_error"]

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_TYPE = "type.googleapis.com/google.rpc."
DEFAULT_TTL_S = 3600.0
STREAM_CHUNK_TOKENS = 8


def gemini_error(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return orjson.dumps({"error": err})


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ttl(doc: dict[str, Any], wall_now: float) -> float | None:
    """Seconds from ``ttl`` ("300s") or ``expireTime`` (RFC 3339); None when neither is given."""
    ttl = doc.get("ttl")
    if isinstance(ttl, str) and ttl.endswith("s"):
        try:
            value = float(ttl[:-1])
        except ValueError as exc:
            raise ValueError(f"ttl: invalid duration {ttl!r}") from exc
        if value < 0:
            raise ValueError("ttl: must not be negative")
        return value
    if ttl is not None:
        raise ValueError(f"ttl: invalid duration {ttl!r}")
    expire = doc.get("expireTime")
    if isinstance(expire, str):
        try:
            at = datetime.fromisoformat(expire.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise ValueError(f"expireTime: invalid timestamp {expire!r}") from exc
        return max(0.0, at - wall_now)
    return None


def _text_of(content: Any) -> bytes:
    """Canonical bytes of one ``Content`` (role line, then its parts' text)."""
    if not isinstance(content, dict):
        raise ValueError("contents: each item must be an object")
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise ValueError("contents.parts: expected an array")
    out = [str(content.get("role", "user")).encode(), b"\n"]
    for p in parts:
        if isinstance(p, dict) and isinstance(p.get("text"), str):
            out.append(p["text"].encode())
        else:
            out.append(orjson.dumps(p))
    out.append(b"\n")
    return b"".join(out)


def _prompt_text(doc: dict[str, Any], *, need_contents: bool) -> bytes:
    out: list[bytes] = []
    system = doc.get("systemInstruction")
    if system is not None:
        out.append(b"system\n" + _text_of({**system, "role": "system"}))
    contents = doc.get("contents")
    if contents is None and not need_contents:
        contents = []
    if not isinstance(contents, list) or (need_contents and not contents):
        raise ValueError("contents: expected a non-empty array")
    out.extend(_text_of(c) for c in contents)
    return b"".join(out)


class _Entry:
    __slots__ = ("created_t", "created_wall", "display", "expire_t", "model", "name", "tokens")

    def __init__(self, name: str, model: str, display: str, tokens: int, now: float, ttl: float):
        self.name = name
        self.model = model
        self.display = display
        self.tokens = tokens
        self.created_t = now
        self.created_wall = time.time()
        self.expire_t = now + ttl


class GeminiAPI:
    """The ``/v1beta`` routes of one :class:`~runner.mock.server.MockServer`."""

    def __init__(self, server: MockServer) -> None:
        from .server import latency_s  # the one latency model, shared with the other routes

        self._latency_s = latency_s
        self._server = server
        self._cfg = server.config
        self._caches: dict[str, _Entry] = {}
        self._next = 0
        self.created = 0
        self.deleted = 0
        self.expired = 0
        self.storage_token_s = 0.0  # tokens x seconds, over every cache that has ended
        self.lifetimes: list[tuple[str, float, float]] = []  # (display name, start, end) mono
        self.requests_with_cache = 0

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self._sweep()
        now = self._server._clock()
        live = sum(e.tokens * (now - e.created_t) for e in self._caches.values())
        return {
            "caches_alive": len(self._caches),
            "caches_created": self.created,
            "caches_deleted": self.deleted,
            "caches_expired": self.expired,
            "storage_token_s": round(self.storage_token_s + live, 3),
            "requests_with_cache": self.requests_with_cache,
            "lifetimes": [{"display_name": d, "start": s, "end": e} for d, s, e in self.lifetimes],
        }

    # -- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: BaseRequest, path: str, query: str) -> web.StreamResponse:
        method = request.method
        headers = {"Content-Type": _JSON}
        if self._server._auth and (denied := self._auth(request, headers)):
            return denied
        rest = path[len("/v1beta/") :]
        try:
            if rest.startswith("models/") and method == "POST":
                model, _, verb = rest[len("models/") :].partition(":")
                if verb == "generateContent":
                    return await self._generate(request, model, False, headers)
                if verb == "streamGenerateContent":
                    return await self._generate(request, model, "alt=sse" in query, headers)
            elif rest == "models" and method == "GET":
                models = [{"name": "models/" + m} for m in self._cfg.models]
                return self._reply(200, orjson.dumps({"models": models}), headers)
            elif rest == "cachedContents":
                if method == "POST":
                    return await self._create(request, headers)
                if method == "GET":
                    return self._list(query, headers)
            elif rest.startswith("cachedContents/"):
                return await self._resource(request, rest, headers)
        except ValueError as exc:
            return self._reply(400, gemini_error(400, "INVALID_ARGUMENT", str(exc)), headers)
        body = gemini_error(404, "NOT_FOUND", f"Unknown request URL: {method} {path}.")
        return self._reply(404, body, headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> web.Response:
        return self._server._respond(status, body, headers)

    def _auth(self, request: BaseRequest, headers: dict[str, str]) -> web.Response | None:
        key = request.headers.get("x-goog-api-key", "")
        want = self._cfg.api_key
        if key and (want is None or key == want):
            return None
        body = gemini_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            [{"@type": _TYPE + "ErrorInfo", "reason": "API_KEY_INVALID"}],
        )
        return self._reply(400, body, headers)

    # -- cachedContents ------------------------------------------------------------------------

    def _sweep(self) -> None:
        now = self._server._clock()
        for name in [n for n, e in self._caches.items() if e.expire_t <= now]:
            self._end(name, expired=True)

    def _end(self, name: str, *, expired: bool) -> None:
        e = self._caches.pop(name)
        end = e.expire_t if expired else self._server._clock()
        self.storage_token_s += e.tokens * max(0.0, end - e.created_t)
        self.lifetimes.append((e.display, e.created_t, end))
        if expired:
            self.expired += 1
        else:
            self.deleted += 1

    def _live(self, name: str) -> _Entry | None:
        e = self._caches.get(name)
        if e is not None and e.expire_t <= self._server._clock():
            self._end(name, expired=True)
            return None
        return e

    def _ttl(self, ttl: float | None) -> float:
        ttl = DEFAULT_TTL_S if ttl is None else ttl
        cap = self._cfg.gemini_max_ttl_s
        return ttl if cap is None else min(ttl, cap)

    def _doc(self, e: _Entry) -> dict[str, Any]:
        wall = e.created_wall
        return {
            "name": e.name,
            "displayName": e.display,
            "model": e.model,
            "createTime": _rfc3339(wall),
            "updateTime": _rfc3339(time.time()),
            "expireTime": _rfc3339(wall + (e.expire_t - e.created_t)),
            "usageMetadata": {"totalTokenCount": e.tokens},
        }

    async def _json(self, request: BaseRequest) -> dict[str, Any]:
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise ValueError("Invalid JSON payload received.") from exc
        if not isinstance(doc, dict):
            raise ValueError("Invalid JSON payload received: expected an object.")
        return doc

    async def _create(self, request: BaseRequest, headers: dict[str, str]) -> web.Response:
        doc = await self._json(request)
        model = doc.get("model")
        if not isinstance(model, str) or not model.startswith("models/"):
            raise ValueError("model: expected models/{model}")
        display = doc.get("displayName", "")
        if not isinstance(display, str) or len(display) > 128:
            raise ValueError("displayName: at most 128 characters")
        tokens = count_tokens(len(_prompt_text(doc, need_contents=False)))
        low = self._cfg.gemini_min_cache_tokens
        if tokens < low:
            raise ValueError(
                f"Cached content is too small. total_token_count={tokens}, "
                f"min_total_token_count={low}"
            )
        ttl = self._ttl(_parse_ttl(doc, time.time()))
        self._next += 1
        name = f"cachedContents/{os.urandom(6).hex()}{self._next:06x}"
        e = self._caches[name] = _Entry(name, model, display, tokens, self._server._clock(), ttl)
        self.created += 1
        if self._cfg.gemini_create_delay_ms:  # created (and billed) now, answered late
            await asyncio.sleep(self._cfg.gemini_create_delay_ms / 1000.0)
        return self._reply(200, orjson.dumps(self._doc(e)), headers)

    def _list(self, query: str, headers: dict[str, str]) -> web.Response:
        self._sweep()
        q = parse_qs(query)
        size = int(q.get("pageSize", ["50"])[0] or 50)
        start = int(q.get("pageToken", ["0"])[0] or 0)
        names = sorted(self._caches)
        page = names[start : start + max(1, min(size, 1000))]
        doc: dict[str, Any] = {"cachedContents": [self._doc(self._caches[n]) for n in page]}
        if start + len(page) < len(names):
            doc["nextPageToken"] = str(start + len(page))
        return self._reply(200, orjson.dumps(doc), headers)

    async def _resource(
        self, request: BaseRequest, name: str, headers: dict[str, str]
    ) -> web.Response:
        e = self._live(name)
        if e is None:
            body = gemini_error(404, "NOT_FOUND", f"CachedContent not found: {name}")
            return self._reply(404, body, headers)
        method = request.method
        if method == "GET":
            return self._reply(200, orjson.dumps(self._doc(e)), headers)
        if method == "DELETE":
            self._end(name, expired=False)
            return self._reply(200, b"{}", headers)
        if method == "PATCH":
            ttl = _parse_ttl(await self._json(request), time.time())
            if ttl is None:
                raise ValueError("update_mask: ttl or expire_time required")
            now = self._server._clock()
            e.expire_t = now + self._ttl(ttl)
            doc = self._doc(e)
            for f in self._cfg.gemini_patch_omit.split(","):
                doc.pop(f, None)
            return self._reply(200, orjson.dumps(doc), headers)
        body = gemini_error(405, "UNIMPLEMENTED", f"{method} is not supported here")
        return self._reply(405, body, headers)

    # -- generateContent -----------------------------------------------------------------------

    def _rate_wait(self, tokens: int) -> float:
        """Charge the server's request/token buckets; seconds to wait when one cannot pay."""
        srv = self._server
        req, tok = srv._rpm, srv._tpm
        if req is None and tok is None:
            return 0.0
        now = srv._clock()
        wait = max(req.wait_for(1, now) if req else 0.0, tok.wait_for(tokens, now) if tok else 0.0)
        if wait <= 0:
            if req:
                req.take(1)
            if tok:
                tok.take(tokens)
        else:
            srv._stats.rate_limited += 1
        return wait

    def _fault(self) -> str | None:
        """The seeded fault draw; Gemini answers the 429 and 5xx kinds, others pass unharmed."""
        srv = self._server
        if not srv._faults:
            return None
        kind = srv._draw_fault(False)
        if kind not in ("http_429", "http_500", "http_502", "http_503"):
            return None
        srv._stats.faults[kind] += 1
        return kind

    def _timing(self, uncached: int, cached: int) -> tuple[float, float]:
        srv = self._server
        if srv._zero:
            return 0.0, 0.0
        cfg = self._cfg
        factor = 1.0 + cfg.jitter * (2.0 * srv._rng.random() - 1.0) if cfg.jitter else 1.0
        return self._latency_s(cfg, uncached, cached, factor)

    def _refusal(self, prompt_tokens: int, headers: dict[str, str]) -> web.Response | None:
        """Rate limits and the 429/5xx faults, Gemini-shaped."""
        wait = self._rate_wait(prompt_tokens)
        fault = self._fault()
        if wait <= 0 and fault is None:
            return None
        if wait > 0 or fault == "http_429":
            delay = wait if wait > 0 else self._cfg.fault_429_retry_ms / 1000.0
            retry = f"{max(1, math.ceil(delay))}s"
            body = gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details."
                f" Please retry in {delay:.3f}s.",
                [
                    {
                        "@type": _TYPE + "QuotaFailure",
                        "violations": [
                            {"quotaMetric": "generate_content_requests", "quotaValue": "mock"}
                        ],
                    },
                    {"@type": _TYPE + "RetryInfo", "retryDelay": retry},
                ],
            )
            return self._reply(429, body, headers)
        status, gstatus, message = {
            "http_500": (500, "INTERNAL", "An internal error has occurred."),
            "http_502": (502, "UNAVAILABLE", "Bad gateway."),
            "http_503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        }[fault or "http_500"]
        return self._reply(status, gemini_error(status, gstatus, message), headers)

    async def _generate(
        self, request: BaseRequest, model: str, stream: bool, headers: dict[str, str]
    ) -> web.StreamResponse:
        srv = self._server
        doc = await self._json(request)
        srv._stats.requests += 1
        gen = doc.get("generationConfig") or {}
        if not isinstance(gen, dict):
            raise ValueError("generationConfig: expected an object")
        max_out = gen.get("maxOutputTokens", self._cfg.default_max_tokens)
        if not isinstance(max_out, int) or max_out < 1:
            raise ValueError("generationConfig.maxOutputTokens: expected an integer >= 1")
        cache_name = doc.get("cachedContent")
        own = _prompt_text(doc, need_contents=True)
        cached = 0
        pending: list[Any] = []
        if cache_name is not None:
            if not isinstance(cache_name, str):
                raise ValueError("cachedContent: expected a resource name")
            if "systemInstruction" in doc or "tools" in doc or "toolConfig" in doc:
                raise ValueError(
                    "CachedContent can not be used with GenerateContent request setting "
                    "system_instruction, tools or tool_config."
                )
            entry = self._live(cache_name)
            if entry is None:
                body = gemini_error(
                    403, "PERMISSION_DENIED", "CachedContent not found (or permission denied)"
                )
                return self._reply(403, body, headers)
            if entry.model != "models/" + model:
                raise ValueError(
                    f"Model used by GenerateContent request ({model}) and CachedContent "
                    f"({entry.model}) has to be the same."
                )
            self.requests_with_cache += 1
            cached = entry.tokens
            prompt = cached + count_tokens(len(own))
        else:
            prompt = count_tokens(len(own))
            cfg = self._cfg
            if cfg.cache and cfg.gemini_implicit_cache and prompt >= cfg.gemini_min_cache_tokens:
                bounds = block_boundaries(model, own, cfg.cache_block_tokens, cfg.cache_ttl_s)
                now = srv._clock()
                hits = srv._caches[0].lookup(bounds, now)
                got = bounds[hits - 1][1] if hits else 0
                cached = got if got >= cfg.gemini_min_cache_tokens else 0
                pending = bounds[hits:]
        if refused := self._refusal(prompt - cached, headers):
            return refused
        n_out, early = srv._outputs(max_out)
        ttft_s, decode_s = self._timing(prompt - cached, cached)
        st = srv._stats
        st.prompt_tokens += prompt
        st.cached_tokens += cached
        st.completion_tokens += n_out
        srv._next_id += 1
        ident = f"{srv._id_prefix}{srv._next_id:016x}"
        headers["x-request-id"] = "req_" + ident
        if ttft_s:
            await asyncio.sleep(ttft_s)
        if pending:
            srv._caches[0].commit(pending, srv._clock())
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": n_out,
            "totalTokenCount": prompt + n_out,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if cached:
            usage["cachedContentTokenCount"] = cached
        finish = "STOP" if early else "MAX_TOKENS"
        text = srv._text(n_out)
        if not stream:
            if decode_s and n_out > 1:
                await asyncio.sleep(decode_s * (n_out - 1))
            doc_out: dict[str, Any] = {
                "candidates": [
                    {
                        "content": {"parts": [{"text": text}], "role": "model"},
                        "finishReason": finish,
                        "index": 0,
                    }
                ],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": ident,
            }
            return self._reply(200, orjson.dumps(doc_out), headers)
        return await self._stream(request, text, n_out, decode_s, usage, finish, model, ident)

    async def _stream(
        self,
        request: BaseRequest,
        text: str,
        n_out: int,
        decode_s: float,
        usage: dict[str, Any],
        finish: str,
        model: str,
        ident: str,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": _SSE, "x-request-id": "req_" + ident}
        )
        by = self._server._stats.by_status
        by[200] = by.get(200, 0) + 1
        await resp.prepare(request)
        step = STREAM_CHUNK_TOKENS * 4  # the reply's words are 4 bytes, one token each
        pieces = [text[i : i + step] for i in range(0, len(text), step)] or [""]
        sent = 0
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            tokens = len(piece) // 4 if not last else n_out - sent
            sent += tokens
            if i and decode_s:
                await asyncio.sleep(decode_s * tokens)
            cand: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}}
            if last:
                cand["finishReason"] = finish
            cand["index"] = 0
            chunk = {
                "candidates": [cand],
                "usageMetadata": {
                    **usage,
                    "candidatesTokenCount": sent,
                    "totalTokenCount": usage["promptTokenCount"] + sent,
                },
                "modelVersion": model,
                "responseId": ident,
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        await resp.write_eof()
        return resp

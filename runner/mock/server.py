"""The simulated provider's HTTP server: OpenAI and Anthropic chat endpoints over aiohttp.

It runs on aiohttp's low-level ``Server`` with one raw handler (no router, no middleware) because
the mock must cost far less CPU per request than the client driving it. Per request it does only
what the configuration asks for: with the cache off or a short prompt no hashing happens, with no
limits no buckets are touched, with no fault rates no fault is drawn, with ``latency="zero"`` no
timer is armed.

Routes (the base URL given to clients ends in ``/v1``)::

    POST /v1/chat/completions   OpenAI Chat Completions, JSON or SSE
    POST /v1/messages           Anthropic Messages, JSON or SSE
    /v1beta/...                 the Gemini API and its cachedContents (runner/mock/gemini.py)
    GET  /v1/models             model list (Anthropic shape when anthropic-version is sent)
    GET  /stats                 counters as JSON
    POST /stats/reset           zero the counters (``?cache=1`` also empties the caches)
    /v1/files, /v1/batches, /v1/messages/batches   batch APIs (see runner/mock/batch.py)
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from .batch import BatchMockConfig, BatchService
from .cache import Boundary, PrefixCache, ReplicaRouter, anthropic_boundaries, block_boundaries
from .config import FAULT_KINDS, MockConfig
from .gemini import GeminiAPI
from .limits import Bucket, go_duration, rfc3339_after
from .slots import SlotPool
from .tokenizer import anthropic_text, count_tokens, openai_text
from .wire import (
    ANTHROPIC_STATUS_ERRORS,
    OPENAI_STATUS_ERRORS,
    anthropic_error,
    anthropic_usage,
    openai_error,
    openai_usage,
    reply_pool,
)

__all__ = ["MockServer", "latency_s", "serve"]

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_SHUTDOWN_GRACE_S = 0.5
# The --slots slot the current request holds (each request is handled in a task of its own).
_SLOT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("slot")


class _Stats:
    """Counters behind ``GET /stats``; plain ints so counting costs next to nothing."""

    __slots__ = (
        "by_status",
        "cache_write_tokens",
        "cached_tokens",
        "completion_tokens",
        "faults",
        "prompt_tokens",
        "rate_limited",
        "requests",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.completion_tokens = 0
        self.rate_limited = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)


class _Reply:
    """What one chat request will get, settled before any waiting starts."""

    __slots__ = (
        "cached",
        "decode_s",
        "fault",
        "finish_early",
        "include_usage",
        "input_tokens",
        "max_tokens",
        "n_out",
        "pending",
        "prompt_tokens",
        "replica",
        "ttft_s",
        "write_1h",
        "write_5m",
    )

    def __init__(self, prompt_tokens: int, max_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.input_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_out = max_tokens
        self.include_usage = False
        self.finish_early = False  # stopped before max_tokens: "stop" / "end_turn"
        self.cached = 0
        self.write_5m = 0
        self.write_1h = 0
        self.pending: list[Boundary] = []
        self.replica = 0
        self.fault: str | None = None
        self.ttft_s = 0.0
        self.decode_s = 0.0


class _BadRequest(Exception):
    """A request body the provider would reject with 400."""


class MockServer:
    """One simulated provider; ``start`` binds it, ``close`` stops it and any stalled request."""

    def __init__(
        self, config: MockConfig | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        cfg = self.config = config or MockConfig()
        self._clock = clock or time.monotonic
        self._rng = random.Random(cfg.seed)
        self._pool = reply_pool(cfg.seed)
        self._id_prefix = os.urandom(4).hex()
        self._next_id = 0
        self._stats = _Stats()
        self._zero = cfg.latency == "zero"
        self._caches = [PrefixCache(cfg.cache_capacity_tokens) for _ in range(cfg.replicas)]
        self._router = ReplicaRouter(cfg.replicas, cfg.key_rpm) if cfg.replicas > 1 else None
        self._slots = SlotPool(cfg.slots) if cfg.slots else None  # llama.cpp-like, OpenAI only
        self._faults = [(k, r) for k, r in cfg.fault_rates().items() if r > 0]
        self._auth = cfg.api_key is not None or cfg.require_api_key
        now = self._clock()
        self._rpm = Bucket(cfg.rpm, now) if cfg.rpm else None
        self._tpm = Bucket(cfg.tpm, now) if cfg.tpm else None
        self._otpm = Bucket(cfg.output_tpm, now) if cfg.output_tpm else None
        self._limited = bool(self._rpm or self._tpm or self._otpm)
        self._quota_left = cfg.insufficient_quota_after
        self._stalled: set[asyncio.Future[None]] = set()
        self._gemini = GeminiAPI(self)  # the /v1beta routes
        self._batch = BatchService(self, BatchMockConfig(**dict(cfg.batch)), self._clock)
        self._server: Server | None = None
        self._listener: asyncio.AbstractServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); returns the base URL ending in /v1."""
        loop = asyncio.get_running_loop()
        # handler_cancellation: a client that gives up cancels its handler, ending any stall
        # or latency wait at once instead of holding a task until the reply is due.
        self._server = Server(self._handle, handler_cancellation=True, access_log=None)
        self._listener = await loop.create_server(self._server, host, port, backlog=4096)
        bound = self._listener.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        return f"http://{shown}:{bound[1]}/v1"

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for fut in self._stalled:
            if not fut.done():
                fut.set_result(None)
        if self._server is not None:
            self._server.pre_shutdown()
            await self._server.shutdown(_SHUTDOWN_GRACE_S)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    # -- stats -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "requests": s.requests,
            "by_status": {str(k): v for k, v in sorted(s.by_status.items())},
            "prompt_tokens": s.prompt_tokens,
            "cached_tokens": s.cached_tokens,
            "cache_write_tokens": s.cache_write_tokens,
            "completion_tokens": s.completion_tokens,
            "rate_limited": s.rate_limited,
            "open_connections": len(self._server.connections) if self._server else 0,
            "faults": dict(s.faults),
            "batch": self._batch.stats(),
            "cache": {
                "entries": sum(len(c) for c in self._caches),
                "tokens": sum(c.used_tokens for c in self._caches),
            },
            "gemini": self._gemini.stats(),
        }

    def reset_stats(self, *, clear_cache: bool = False) -> None:
        self._stats = _Stats()
        if clear_cache:
            for c in self._caches:
                c.clear()
            if self._slots is not None:
                self._slots.clear()

    # -- dispatch --------------------------------------------------------------------------

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        method = request.method
        if path.startswith("/v1beta/"):
            return await self._gemini.handle(request, path, query)
        if method == "POST":
            if path == "/v1/chat/completions":
                if self._slots is not None:
                    return await self._slotted(request)
                return await self._chat(request, anthropic=False)
            if path == "/v1/messages":
                return await self._chat(request, anthropic=True)
            if path == "/stats/reset":
                self.reset_stats(clear_cache="cache=1" in query or "cache=true" in query)
                return web.Response(body=b'{"ok":true}', content_type=_JSON)
        elif method == "GET":
            if path == "/v1/models":
                return self._models(request)
            if path == "/stats":
                return web.Response(body=orjson.dumps(self.stats()), content_type=_JSON)
        if (batch := await self._batch.handle(request, path, query)) is not None:
            return batch  # the batch endpoints (runner/mock/batch.py)
        body = openai_error(f"Unknown request URL: {method} {path}.", "invalid_request_error", None)
        return web.Response(status=404, body=body, content_type=_JSON)

    def _models(self, request: BaseRequest) -> web.StreamResponse:
        anthropic = "anthropic-version" in request.headers or "x-api-key" in request.headers
        if self._auth and (denied := self._auth_error(request, anthropic, {})):
            return denied
        if anthropic:
            data = [
                {
                    "type": "model",
                    "id": m,
                    "display_name": m,
                    "created_at": "2025-01-01T00:00:00Z",
                }
                for m in self.config.models
            ]
            models = self.config.models
            doc = {"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]}
        else:
            doc = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1735689600, "owned_by": "runner-mock"}
                    for m in self.config.models
                ],
            }
        return web.Response(body=orjson.dumps(doc), content_type=_JSON)

    def _respond(self, status: int, body: bytes, headers: dict[str, str]) -> web.Response:
        by = self._stats.by_status
        by[status] = by.get(status, 0) + 1
        return web.Response(status=status, body=body, headers=headers)

    # -- the chat endpoints ----------------------------------------------------------------

    async def _chat(self, request: BaseRequest, *, anthropic: bool) -> web.StreamResponse:
        self._stats.requests += 1
        self._next_id += 1
        ident = f"{self._id_prefix}{self._next_id:016x}"
        headers = {
            "Content-Type": _JSON,
            ("request-id" if anthropic else "x-request-id"): "req_" + ident,
        }
        if self._auth and (denied := self._auth_error(request, anthropic, headers)):
            return denied
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, dict):
                raise _BadRequest("request body must be a JSON object")
            model = data.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("model: field required")
            stream = data.get("stream") is True
            reply, text = (
                self._plan_anthropic(data, model, stream)
                if anthropic
                else self._plan_openai(data, model)
            )
        except (orjson.JSONDecodeError, _BadRequest, ValueError, TypeError) as exc:
            message = str(exc) if isinstance(exc, _BadRequest | ValueError) else "invalid JSON body"
            body = (
                anthropic_error("invalid_request_error", message)
                if anthropic
                else openai_error(message, "invalid_request_error", None)
            )
            return self._respond(400, body, headers)
        if self._quota_left is not None:
            if self._quota_left <= 0:
                return self._quota_error(anthropic, headers)
            self._quota_left -= 1
        if self._limited and (limited := self._limit(reply, model, anthropic, headers)):
            return limited
        if self._faults:
            reply.fault = self._draw_fault(anthropic, stream)
            if reply.fault is not None:
                self._stats.faults[reply.fault] += 1
                if early := await self._early_fault(request, reply.fault, anthropic, headers):
                    return early
        if self._slots is not None and not anthropic:
            await self._take_slot(reply)
        self._timing(reply)
        s = self._stats
        s.prompt_tokens += reply.prompt_tokens
        s.cached_tokens += reply.cached
        s.cache_write_tokens += reply.write_5m + reply.write_1h
        s.completion_tokens += reply.n_out
        if stream:
            return await self._stream(request, reply, model, ident, anthropic, headers)
        if reply.ttft_s:
            await asyncio.sleep(reply.ttft_s)
        self._commit(reply)
        if reply.decode_s and reply.n_out > 1:
            await asyncio.sleep(reply.decode_s * (reply.n_out - 1))
        body = (
            self._anthropic_body(reply, model, ident, text)
            if anthropic
            else self._openai_body(reply, model, ident, text)
        )
        if reply.fault == "truncate":
            return await self._truncated(request, body, headers)
        if reply.fault == "malformed":
            body = body[: len(body) // 2]
        return self._respond(200, body, headers)

    def _outputs(self, max_tokens: int) -> tuple[int, bool]:
        """Reply length: ``max_tokens``, or a seeded shorter stop at ``stop_rate``."""
        if self.config.stop_rate and max_tokens > 1 and self._rng.random() < self.config.stop_rate:
            return self._rng.randrange(1, max_tokens), True
        return max_tokens, False

    def _plan_openai(self, data: dict[str, Any], model: str) -> tuple[_Reply, bytes]:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages: expected a non-empty array")
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        defaulted = max_tokens is None
        if max_tokens is None:
            max_tokens = self.config.default_max_tokens
        elif not isinstance(max_tokens, int) or max_tokens < 1:
            raise _BadRequest("max_tokens: expected an integer >= 1")
        text = openai_text(messages, data.get("tools"))
        reply = _Reply(count_tokens(len(text)), max_tokens)
        reply.n_out, reply.finish_early = self._outputs(max_tokens)
        # A request without a limit ends on its own: finish_reason "stop", never "length".
        reply.finish_early |= defaulted
        options = data.get("stream_options")
        reply.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        cfg = self.config
        if cfg.cache and reply.prompt_tokens >= cfg.cache_min_prefix_tokens:
            ttl = self._openai_ttl(data)
            bounds = block_boundaries(model, text, cfg.cache_block_tokens, ttl)
            now = self._clock()
            replica = 0
            if self._slots is not None:
                reply.pending = bounds  # matched against the slots once one is free
                return reply, text
            if self._router is not None:
                key = data.get("prompt_cache_key")
                replica = self._router.route(text, key if isinstance(key, str) else None, now)
            hits = self._caches[replica].lookup(bounds, now)
            cached = bounds[hits - 1][1] if hits else 0
            # Like the real service, nothing below the minimum prefix is ever reported cached.
            reply.cached = cached if cached >= cfg.cache_min_prefix_tokens else 0
            reply.pending = bounds[hits:]
            reply.write_5m = sum(b[2] for b in reply.pending)
            reply.replica = replica
        return reply, text

    def _openai_ttl(self, data: dict[str, Any]) -> float:
        if data.get("prompt_cache_retention") == "24h":
            return 86400.0
        return self.config.cache_ttl_s

    def _plan_anthropic(
        self, data: dict[str, Any], model: str, stream: bool
    ) -> tuple[_Reply, bytes]:
        max_tokens = data.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise _BadRequest("max_tokens: Field required")
        if max_tokens == 0 and stream:
            raise _BadRequest("max_tokens: 0 is not supported with streaming")
        text, marks = anthropic_text(data)
        reply = _Reply(count_tokens(len(text)), max_tokens)
        if max_tokens:
            reply.n_out, reply.finish_early = self._outputs(max_tokens)
        cfg = self.config
        if cfg.cache and marks:
            bounds = anthropic_boundaries(model, text, marks, cfg.cache_min_prefix_tokens)
            if bounds:
                now = self._clock()
                hits = self._caches[0].lookup(bounds, now)
                reply.cached = bounds[hits - 1][1] if hits else 0
                reply.pending = bounds[hits:]
                for _, _, cost, ttl_s in reply.pending:
                    if ttl_s > 300.0:
                        reply.write_1h += cost
                    else:
                        reply.write_5m += cost
                reply.input_tokens = reply.prompt_tokens - bounds[-1][1]
        return reply, text

    # -- refusals: auth, quota, rate limits, faults ----------------------------------------

    def _auth_error(
        self, request: BaseRequest, anthropic: bool, headers: dict[str, str]
    ) -> web.Response | None:
        cfg = self.config
        if anthropic:
            key = request.headers.get("x-api-key")
        else:
            auth = request.headers.get("Authorization", "")
            key = auth[7:] if auth[:7].lower() == "bearer " else None
        if key and (cfg.api_key is None or hmac.compare_digest(key, cfg.api_key)):
            return None
        if anthropic:
            body = anthropic_error("authentication_error", "invalid x-api-key")
        elif not key:
            body = openai_error(
                "You didn't provide an API key. You need to provide your API key in an"
                " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        else:
            # Never echo the key, not even masked: the client's logs may keep this message.
            body = openai_error(
                "Incorrect API key provided. You can find your API key at"
                " https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        return self._respond(401, body, headers or {"Content-Type": _JSON})

    def _quota_error(self, anthropic: bool, headers: dict[str, str]) -> web.Response:
        if anthropic:
            body = anthropic_error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API."
                " Please go to Plans & Billing to upgrade or purchase credits.",
            )
            return self._respond(400, body, headers)
        body = openai_error(
            "You exceeded your current quota, please check your plan and billing details."
            " For more information on this error, read the docs:"
            " https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
        )
        return self._respond(429, body, headers)

    def _limit(
        self, reply: _Reply, model: str, anthropic: bool, headers: dict[str, str]
    ) -> web.Response | None:
        """Charge the buckets, or answer 429 when one cannot pay; rate headers either way."""
        now = self._clock()
        req, tok, out = self._rpm, self._tpm, self._otpm
        # OpenAI charges prompt + max_tokens up front; Anthropic's input bucket ignores cache
        # reads and output has its own bucket.
        if anthropic:
            tok_cost = reply.prompt_tokens - reply.cached
            out_cost = reply.max_tokens
        else:
            tok_cost = reply.prompt_tokens + reply.max_tokens
            out_cost = 0
        w_req = req.wait_for(1, now) if req else 0.0
        w_tok = tok.wait_for(tok_cost, now) if tok else 0.0
        w_out = out.wait_for(out_cost, now) if out and anthropic else 0.0
        wait = max(w_req, w_tok, w_out)
        if wait <= 0:
            if req:
                req.take(1)
            if tok:
                tok.take(tok_cost)
                if not anthropic:
                    # Settle now on the actual reply length, as the service corrects after.
                    tok.put_back(reply.max_tokens - reply.n_out)
            if out and anthropic:
                out.take(reply.n_out)
            self._rate_headers(anthropic, headers)
            return None
        self._stats.rate_limited += 1
        self._rate_headers(anthropic, headers)
        if w_req == wait:
            bucket, cost, unit = req, 1, "requests"
        elif w_tok == wait:
            bucket, cost, unit = tok, tok_cost, "tokens"
        else:
            bucket, cost, unit = out, out_cost, "output tokens"
        assert bucket is not None
        if wait != float("inf"):
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            if not anthropic:
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        if anthropic:
            unit = "input tokens" if unit == "tokens" else unit
            body = anthropic_error(
                "rate_limit_error",
                f"This request would exceed the rate limit for your organization of"
                f" {int(bucket.limit)} {unit} per minute. For details, refer to:"
                " https://docs.anthropic.com/en/api/rate-limits. You can see the response"
                " headers for current usage. Please reduce the prompt length or the maximum"
                " tokens requested, or try again later.",
            )
        else:
            per = "requests per min (RPM)" if unit == "requests" else "tokens per min (TPM)"
            if wait == float("inf"):
                message = (
                    f"Request too large for {model} in organization org-mock on {per}:"
                    f" Limit {int(bucket.limit)}, Requested {cost}. The input or output tokens"
                    " must be reduced in order to run successfully."
                )
            else:
                message = (
                    f"Rate limit reached for {model} in organization org-mock on {per}:"
                    f" Limit {int(bucket.limit)}, Used {bucket.used()}, Requested {cost}."
                    f" Please try again in {go_duration(wait)}."
                )
            body = openai_error(
                message + " Visit https://platform.openai.com/account/rate-limits to learn more.",
                unit,
                "rate_limit_exceeded",
            )
        return self._respond(429, body, headers)

    def _rate_headers(self, anthropic: bool, headers: dict[str, str]) -> None:
        if anthropic:
            wall = time.time()
            named = (
                ("requests", self._rpm),
                ("tokens", self._tpm),
                ("input-tokens", self._tpm),
                ("output-tokens", self._otpm),
            )
            for name, b in named:
                if b is not None:
                    p = "anthropic-ratelimit-" + name
                    headers[p + "-limit"] = str(int(b.limit))
                    headers[p + "-remaining"] = str(b.remaining())
                    headers[p + "-reset"] = rfc3339_after(b.reset_s(), wall)
            return
        for name, b in (("requests", self._rpm), ("tokens", self._tpm)):
            if b is not None:
                headers["x-ratelimit-limit-" + name] = str(int(b.limit))
                headers["x-ratelimit-remaining-" + name] = str(b.remaining())
                headers["x-ratelimit-reset-" + name] = go_duration(b.reset_s())

    def _draw_fault(self, anthropic: bool, stream: bool) -> str | None:
        """One seeded draw per request, so the n-th request meets the same fault every run."""
        u = self._rng.random()
        for kind, rate in self._faults:
            if u < rate:
                # An error event needs a stream to happen in; other requests go unharmed.
                return None if kind == "stream_error" and not stream else kind
            u -= rate
        return None

    async def _early_fault(
        self, request: BaseRequest, fault: str, anthropic: bool, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        if fault == "http_429":
            self._stats.rate_limited += 1
            wait_s = self.config.fault_429_retry_ms / 1000.0
            headers["retry-after"] = str(max(1, math.ceil(wait_s)))
            if anthropic:
                body = anthropic_error(
                    "rate_limit_error", "Number of requests has exceeded your rate limit."
                )
            else:
                headers["retry-after-ms"] = str(math.ceil(wait_s * 1000))
                body = openai_error(
                    f"Rate limit reached for requests. Please try again in {go_duration(wait_s)}.",
                    "requests",
                    "rate_limit_exceeded",
                )
            return self._respond(429, body, headers)
        if fault.startswith("http_"):
            status = int(fault[5:])
            if status == 529 and not anthropic:
                status = 503  # 529 is Anthropic's; an OpenAI-shaped client sees an overload 503
            if anthropic:
                message, type_ = ANTHROPIC_STATUS_ERRORS[status]
                body = anthropic_error(type_, message)
            else:
                message, type_ = OPENAI_STATUS_ERRORS[status]
                body = openai_error(message, type_, None)
            return self._respond(status, body, headers)
        if fault == "reset":
            _abort(request)
            return web.Response()
        if fault == "stall":
            fut = asyncio.get_running_loop().create_future()
            self._stalled.add(fut)
            try:
                # Ends when the client gives up (the handler is cancelled) or at shutdown.
                await fut
            finally:
                self._stalled.discard(fut)
            _abort(request)
            return web.Response()
        return None

    # -- per-slot cache (--slots) ----------------------------------------------------------

    async def _slotted(self, request: BaseRequest) -> web.StreamResponse:
        held: list[int] = []
        _SLOT.set(held)
        try:
            return await self._chat(request, anthropic=False)
        finally:
            if held and self._slots is not None:
                self._slots.release(held[0])

    async def _take_slot(self, reply: _Reply) -> None:
        """Wait for a slot; what it held of this prompt is cached, the rest is written."""
        assert self._slots is not None
        bounds = reply.pending
        slot, hits = await self._slots.acquire([b[0] for b in bounds])
        _SLOT.get().append(slot)
        cached = bounds[hits - 1][1] if hits else 0
        reply.cached = cached if cached >= self.config.cache_min_prefix_tokens else 0
        reply.write_5m = sum(b[2] for b in bounds[hits:])
        reply.pending = []

    # -- replies ---------------------------------------------------------------------------

    def _timing(self, reply: _Reply) -> None:
        cfg = self.config
        if not self._zero:
            factor = 1.0 + cfg.jitter * (2.0 * self._rng.random() - 1.0) if cfg.jitter else 1.0
            uncached = reply.prompt_tokens - reply.cached
            reply.ttft_s, reply.decode_s = latency_s(cfg, uncached, reply.cached, factor)
        if reply.fault == "slow_first_byte":
            reply.ttft_s += cfg.slow_first_byte_ms / 1000.0

    def _commit(self, reply: _Reply) -> None:
        """The request starts responding: what it wrote becomes visible to others."""
        if reply.pending:
            self._caches[reply.replica].commit(reply.pending, self._clock())
            reply.pending = []

    def _text(self, n: int) -> str:
        pool = self._pool
        need = 4 * n
        start = (self._next_id * 52) % len(pool)  # 52: a step of 13 whole words
        if start + need <= len(pool):
            return pool[start : start + need]
        return (pool * ((start + need) // len(pool) + 1))[start : start + need]

    def _openai_body(self, reply: _Reply, model: str, ident: str, _text: bytes) -> bytes:
        doc = {
            "id": "chatcmpl-" + ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self._text(reply.n_out),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop" if reply.finish_early else "length",
                }
            ],
            "usage": self._openai_usage(reply),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
        return orjson.dumps(doc)

    def _openai_usage(self, reply: _Reply) -> dict[str, Any]:
        write = reply.write_5m if self.config.report_cache_write else None
        return openai_usage(reply.prompt_tokens, reply.cached, reply.n_out, write)

    def _anthropic_usage(self, reply: _Reply, output: int) -> dict[str, Any]:
        return anthropic_usage(
            reply.input_tokens, reply.cached, reply.write_5m, reply.write_1h, output
        )

    def _anthropic_body(self, reply: _Reply, model: str, ident: str, _text: bytes) -> bytes:
        content = [{"type": "text", "text": self._text(reply.n_out)}] if reply.n_out else []
        doc = {
            "id": "msg_" + ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "end_turn" if reply.finish_early else "max_tokens",
            "stop_sequence": None,
            "usage": self._anthropic_usage(reply, reply.n_out),
        }
        return orjson.dumps(doc)

    async def _truncated(
        self, request: BaseRequest, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Promise the whole body, send half, drop the connection."""
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = len(body)
        by = self._stats.by_status
        by[200] = by.get(200, 0) + 1
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        _abort(request)
        return resp

    async def _stream(
        self,
        request: BaseRequest,
        reply: _Reply,
        model: str,
        ident: str,
        anthropic: bool,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        if reply.ttft_s:
            await asyncio.sleep(reply.ttft_s)
        self._commit(reply)
        words = self._text(reply.n_out)
        frames = (
            self._anthropic_frames(reply, model, ident, words)
            if anthropic
            else self._openai_frames(reply, model, ident, words)
        )
        abort = False
        fault = reply.fault
        if fault is not None and len(frames) > 2:
            cut = len(frames) // 2
            if fault == "truncate":
                frames, abort = frames[:cut], True
            elif fault == "stream_error":
                if anthropic:
                    err = b"event: error\ndata: " + anthropic_error(
                        "overloaded_error", "Overloaded"
                    )
                else:
                    message, type_ = OPENAI_STATUS_ERRORS[500]
                    err = b"data: " + openai_error(message, type_, None)
                frames = [*frames[:cut], err + b"\n\n"]
            elif fault == "malformed":
                frames[cut] = frames[cut][: len(frames[cut]) // 2] + b"\n\n"
        headers["Content-Type"] = _SSE
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        by = self._stats.by_status
        by[200] = by.get(200, 0) + 1
        await resp.prepare(request)
        if not reply.decode_s:
            await resp.write(b"".join(frames))
        else:
            # The first frame carries the first token; the rest follow at the decode pace.
            await resp.write(frames[0])
            for frame in frames[1:-1]:
                await asyncio.sleep(reply.decode_s)
                await resp.write(frame)
            if len(frames) > 1:
                await resp.write(frames[-1])
        if abort:
            _abort(request)
        return resp

    def _openai_frames(self, reply: _Reply, model: str, ident: str, words: str) -> list[bytes]:
        options = reply.include_usage
        created = int(time.time())
        envelope: dict[str, Any] = {
            "id": "chatcmpl-" + ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}],
        }
        if options:
            envelope["usage"] = None
        choice = envelope["choices"][0]
        choice["delta"] = {"role": "assistant", "content": "", "refusal": None}
        head = b"data: " + orjson.dumps(envelope) + b"\n\n"
        # Every content chunk is the same envelope around a 4-byte word that needs no
        # escaping: render it once and splice, instead of serialising each chunk.
        choice["delta"] = {"content": "\x01"}
        parts = orjson.dumps(envelope).split(b"\\u0001")
        if len(parts) == 2:
            pre, post = b"data: " + parts[0], parts[1] + b"\n\n"
            frames = [pre + words[i : i + 4].encode() + post for i in range(0, len(words), 4)]
        else:  # the model name itself holds the marker
            frames = []
            for i in range(0, len(words), 4):
                choice["delta"] = {"content": words[i : i + 4]}
                frames.append(b"data: " + orjson.dumps(envelope) + b"\n\n")
        frames[0] = head + frames[0]
        choice["delta"] = {}
        choice["finish_reason"] = "stop" if reply.finish_early else "length"
        tail = [b"data: ", orjson.dumps(envelope), b"\n\n"]
        if options:
            del envelope["choices"]
            envelope["choices"] = []
            envelope["usage"] = self._openai_usage(reply)
            tail += [b"data: ", orjson.dumps(envelope), b"\n\n"]
        tail.append(b"data: [DONE]\n\n")
        frames.append(b"".join(tail))
        return frames

    def _anthropic_frames(self, reply: _Reply, model: str, ident: str, words: str) -> list[bytes]:
        def event(name: str, doc: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"

        message: dict[str, Any] = {
            "id": "msg_" + ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._anthropic_usage(reply, 1),
        }
        head = b"".join(
            (
                event("message_start", {"type": "message_start", "message": message}),
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                event("ping", {"type": "ping"}),
            )
        )
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
        frames = []
        for i in range(0, len(words), 4):
            delta["delta"] = {"type": "text_delta", "text": words[i : i + 4]}
            frames.append(event("content_block_delta", delta))
        frames[0] = head + frames[0]
        usage = self._anthropic_usage(reply, reply.n_out)
        del usage["cache_creation"], usage["service_tier"]
        tail = b"".join(
            (
                event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": "end_turn" if reply.finish_early else "max_tokens",
                            "stop_sequence": None,
                        },
                        "usage": usage,
                    },
                ),
                event("message_stop", {"type": "message_stop"}),
            )
        )
        frames.append(tail)
        return frames


def latency_s(cfg: MockConfig, uncached: int, cached: int, factor: float) -> tuple[float, float]:
    """(time to first token, time per further token) in seconds, scaled by the jitter factor."""
    ttft_ms = (
        cfg.base_ms + cfg.prefill_ms_per_token * uncached + cfg.cached_prefill_ms_per_token * cached
    )
    return ttft_ms * factor / 1000.0, cfg.decode_ms_per_token * factor / 1000.0


def _abort(request: BaseRequest) -> None:
    """Drop the connection with no more bytes (the client sees a reset or a short body)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


@asynccontextmanager
async def serve(
    config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run a simulated provider for the duration of the block; yields its base URL (``.../v1``).

    :param config: behaviour; the defaults give a realistic latency and cache model.
    :param port: 0 picks a free port.
    """
    server = MockServer(config)
    url = await server.start(host, port)
    try:
        yield url
    finally:
        await server.close()

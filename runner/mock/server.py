"""The simulated provider's HTTP server: OpenAI and Anthropic chat endpoints over aiohttp.

It runs on aiohttp's low-level ``Server`` with one raw handler (no router, no middleware) because
the mock must cost far less CPU per request than the client driving it. Per request it does only
what the configuration asks for: with the cache off or a short prompt no hashing happens, with no
limits no buckets are touched, with no fault rates no fault is drawn, with ``latency="zero"`` no
timer is armed.

The server is the protocol-neutral core (counters, prefix caches, rate buckets, fault draws,
timing); what each protocol says on the wire (parsing, bodies, stream frames, errors, headers)
is one object per protocol in runner/mock/chat.py (``OpenAIWire``, ``AnthropicWire``).

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
from .cache import Boundary, PrefixCache, ReplicaRouter
from .chat import AnthropicWire, BadRequest, ChatWire, OpenAIWire, Reply
from .config import FAULT_KINDS, MockConfig
from .gemini import GeminiAPI
from .limits import Bucket
from .slots import SlotPool
from .wire import openai_error, reply_pool

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
        self._openai = OpenAIWire(self)  # /v1/chat/completions
        self._anthropic = AnthropicWire(self)  # /v1/messages
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
                return await self._chat(request, self._openai)
            if path == "/v1/messages":
                return await self._chat(request, self._anthropic)
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
        wire = self._anthropic if anthropic else self._openai
        if self._auth and (denied := self._auth_error(request, wire, {})):
            return denied
        doc = wire.models_doc(self.config.models)
        return web.Response(body=orjson.dumps(doc), content_type=_JSON)

    def _respond(self, status: int, body: bytes, headers: dict[str, str]) -> web.Response:
        by = self._stats.by_status
        by[status] = by.get(status, 0) + 1
        return web.Response(status=status, body=body, headers=headers)

    # -- the chat endpoints ----------------------------------------------------------------

    async def _chat(self, request: BaseRequest, wire: ChatWire) -> web.StreamResponse:
        self._stats.requests += 1
        self._next_id += 1
        ident = f"{self._id_prefix}{self._next_id:016x}"
        headers = {"Content-Type": _JSON, wire.id_header: "req_" + ident}
        if self._auth and (denied := self._auth_error(request, wire, headers)):
            return denied
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, dict):
                raise BadRequest("request body must be a JSON object")
            model = data.get("model")
            if not isinstance(model, str) or not model:
                raise BadRequest("model: field required")
            stream = data.get("stream") is True
            reply, _ = wire.plan(data, model, stream)
        except (orjson.JSONDecodeError, BadRequest, ValueError, TypeError) as exc:
            message = str(exc) if isinstance(exc, BadRequest | ValueError) else "invalid JSON body"
            return self._respond(400, wire.bad_request(message), headers)
        if self._quota_left is not None:
            if self._quota_left <= 0:
                status, body = wire.quota_error()
                return self._respond(status, body, headers)
            self._quota_left -= 1
        if self._limited and (limited := self._limit(reply, model, wire, headers)):
            return limited
        if self._faults:
            reply.fault = self._draw_fault(stream)
            if reply.fault is not None:
                self._stats.faults[reply.fault] += 1
                if early := await self._early_fault(request, reply.fault, wire, headers):
                    return early
        if self._slots is not None and wire is self._openai:  # llama.cpp-like: OpenAI only
            await self._take_slot(reply)
        self._timing(reply)
        s = self._stats
        s.prompt_tokens += reply.prompt_tokens
        s.cached_tokens += reply.cached
        s.cache_write_tokens += reply.write_5m + reply.write_1h
        s.completion_tokens += reply.n_out
        if stream:
            return await self._stream(request, reply, model, ident, wire, headers)
        if reply.ttft_s:
            await asyncio.sleep(reply.ttft_s)
        self._commit(reply)
        if reply.decode_s and reply.n_out > 1:
            await asyncio.sleep(reply.decode_s * (reply.n_out - 1))
        body = wire.body(reply, model, ident)
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

    def _cache_blocks(
        self, reply: Reply, text: bytes, bounds: list[Boundary], key: str | None
    ) -> None:
        """Look whole cache blocks up on the replica the prompt routes to (or keep them for
        the slot the request will get, with ``--slots``)."""
        if self._slots is not None:
            reply.pending = bounds  # matched against the slots once one is free
            return
        now = self._clock()
        replica = self._router.route(text, key, now) if self._router is not None else 0
        hits = self._caches[replica].lookup(bounds, now)
        cached = bounds[hits - 1][1] if hits else 0
        # Like the real service, nothing below the minimum prefix is ever reported cached.
        reply.cached = cached if cached >= self.config.cache_min_prefix_tokens else 0
        reply.pending = bounds[hits:]
        reply.write_5m = sum(b[2] for b in reply.pending)
        reply.replica = replica

    # -- refusals: auth, quota, rate limits, faults ----------------------------------------

    def _auth_error(
        self, request: BaseRequest, wire: ChatWire, headers: dict[str, str]
    ) -> web.Response | None:
        cfg = self.config
        key = wire.api_key(request)
        if key and (cfg.api_key is None or hmac.compare_digest(key, cfg.api_key)):
            return None
        return self._respond(401, wire.auth_error(key), headers or {"Content-Type": _JSON})

    def _limit(
        self, reply: Reply, model: str, wire: ChatWire, headers: dict[str, str]
    ) -> web.Response | None:
        """Charge the buckets, or answer 429 when one cannot pay; rate headers either way."""
        now = self._clock()
        req, tok, out = self._rpm, self._tpm, self._otpm
        split = wire.separate_output
        tok_cost = wire.input_cost(reply)
        out_cost = reply.max_tokens if split else 0
        w_req = req.wait_for(1, now) if req else 0.0
        w_tok = tok.wait_for(tok_cost, now) if tok else 0.0
        w_out = out.wait_for(out_cost, now) if out and split else 0.0
        wait = max(w_req, w_tok, w_out)
        if wait <= 0:
            if req:
                req.take(1)
            if tok:
                tok.take(tok_cost)
                if not split:
                    # Settle now on the actual reply length, as the service corrects after.
                    tok.put_back(reply.max_tokens - reply.n_out)
            if out and split:
                out.take(reply.n_out)
            wire.rate_headers(headers, self._rpm, self._tpm, self._otpm)
            return None
        self._stats.rate_limited += 1
        wire.rate_headers(headers, self._rpm, self._tpm, self._otpm)
        if w_req == wait:
            bucket, cost, unit = req, 1, "requests"
        elif w_tok == wait:
            bucket, cost, unit = tok, tok_cost, "tokens"
        else:
            bucket, cost, unit = out, out_cost, "output tokens"
        assert bucket is not None
        if wait != float("inf"):
            wire.retry_headers(wait, headers)
        return self._respond(429, wire.rate_limit_error(model, unit, bucket, wait, cost), headers)

    def _draw_fault(self, stream: bool) -> str | None:
        """One seeded draw per request, so the n-th request meets the same fault every run."""
        u = self._rng.random()
        for kind, rate in self._faults:
            if u < rate:
                # An error event needs a stream to happen in; other requests go unharmed.
                return None if kind == "stream_error" and not stream else kind
            u -= rate
        return None

    async def _early_fault(
        self, request: BaseRequest, fault: str, wire: ChatWire, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        if fault == "http_429":
            self._stats.rate_limited += 1
            wait_s = self.config.fault_429_retry_ms / 1000.0
            wire.retry_headers(wait_s, headers)
            return self._respond(429, wire.fault_429(wait_s), headers)
        if fault.startswith("http_"):
            status, body = wire.status_error(int(fault[5:]))
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
            return await self._chat(request, self._openai)
        finally:
            if held and self._slots is not None:
                self._slots.release(held[0])

    async def _take_slot(self, reply: Reply) -> None:
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

    def _timing(self, reply: Reply) -> None:
        cfg = self.config
        if not self._zero:
            factor = 1.0 + cfg.jitter * (2.0 * self._rng.random() - 1.0) if cfg.jitter else 1.0
            uncached = reply.prompt_tokens - reply.cached
            reply.ttft_s, reply.decode_s = latency_s(cfg, uncached, reply.cached, factor)
        if reply.fault == "slow_first_byte":
            reply.ttft_s += cfg.slow_first_byte_ms / 1000.0

    def _commit(self, reply: Reply) -> None:
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
        reply: Reply,
        model: str,
        ident: str,
        wire: ChatWire,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        if reply.ttft_s:
            await asyncio.sleep(reply.ttft_s)
        self._commit(reply)
        frames = wire.frames(reply, model, ident, self._text(reply.n_out))
        abort = False
        fault = reply.fault
        if fault is not None and len(frames) > 2:
            cut = len(frames) // 2
            if fault == "truncate":
                frames, abort = frames[:cut], True
            elif fault == "stream_error":
                frames = [*frames[:cut], wire.stream_error() + b"\n\n"]
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
